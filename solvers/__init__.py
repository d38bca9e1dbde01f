"""Solver layer: HiGHS through compiled arrays, infeasibility diagnosis, KKT, ADMM."""

from gridmarkets.solvers.diagnose import Conflict, Diagnosis, diagnose
from gridmarkets.solvers.highs import Solution, compile_model, record_build_time, solve
from gridmarkets.solvers.kkt import reformulate, verify

__all__ = [
    "Conflict",
    "Diagnosis",
    "Solution",
    "compile_model",
    "diagnose",
    "record_build_time",
    "reformulate",
    "solve",
    "verify",
]
