"""Solver layer: HiGHS through compiled arrays, infeasibility diagnosis, KKT, ADMM."""

from gridmarkets.solvers.diagnose import Conflict, Diagnosis, diagnose
from gridmarkets.solvers.highs import (
    Solution,
    compile_model,
    price_milp_by,
    record_build_time,
    scale_objective_by,
    solve,
)
from gridmarkets.solvers.kkt import reformulate, verify

__all__ = [
    "Conflict",
    "Diagnosis",
    "Solution",
    "compile_model",
    "diagnose",
    "price_milp_by",
    "record_build_time",
    "reformulate",
    "scale_objective_by",
    "solve",
    "verify",
]
