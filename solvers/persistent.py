"""A linear model compiled to HiGHS arrays once and re-solved as its data change.

:class:`PersistentLP` keeps the :class:`~gridmarkets.solvers.highs.StandardForm` of a
Pyomo LP. Before each solve it reads the objective's coefficients and the variables'
bounds back from the model into the arrays, so a caller that changes only those (a
market's bid prices and quantities) skips building and compiling the model again.
Everything else must be as compiled: the same constraints with the same
coefficients and right-hand sides, and the objective over the compiled columns.

Each solve is a fresh HiGHS run on the arrays, exactly as :func:`~gridmarkets.solvers.
highs.solve` runs a newly compiled model: the answer does not depend on what was
solved before. A warm start from the previous basis was measured 5-10 times faster
per HiGHS run, but on a degenerate market (a bid and an offer at the same price) it
lands on another optimal vertex than a cold solve, so a sweep's rows would depend on
the order its scenarios reach a worker (benchmarks/bench_batch.py).

Results, errors and diagnoses are those of :func:`~gridmarkets.solvers.highs.solve`
(both end in :func:`~gridmarkets.solvers.highs.solve_as_marked`: a model marked by
:func:`~gridmarkets.solvers.highs.solve_apart` is solved by its independent parts on
either path), so a scenario reads the same whichever path it took.
"""

from __future__ import annotations

import operator
import time
from typing import Any

import numpy as np
import pyomo.environ as pyo

from gridmarkets.errors import InputError
from gridmarkets.solvers.highs import (
    Solution,
    StandardForm,
    column_bounds,
    compile_model,
    highs_options,
    linear_pairs,
    solve_as_marked,
)

_FIXED = operator.attrgetter("fixed")


class PersistentLP:
    """An LP compiled once; :meth:`solve` re-reads its costs and bounds (see the module).

    Parameters
    ----------
    model : a linear Pyomo model without integer variables and with a linear
        objective of numeric coefficients.

    Raises
    ------
    InputError : the model has integer variables, a quadratic objective, or an
        objective the arrays cannot be refreshed from.
    """

    def __init__(self, model: pyo.Block):
        self.model = model
        self.form: StandardForm = compile_model(model)
        if self.form.is_mip:
            raise InputError(f"model {model.name}: a persistent LP cannot hold a MILP")
        if self.form.hessian is not None:
            raise InputError(
                f"model {model.name}: a persistent LP cannot hold a quadratic objective"
            )
        (self.objective,) = model.component_data_objects(pyo.Objective, active=True)
        self.position = {id(var): k for k, var in enumerate(self.form.columns)}
        self._refresh()

    def solve(
        self,
        *,
        time_limit: float | None = None,
        mip_gap: float | None = None,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Solution:
        """Solve with the model's current costs and bounds and load the solution.

        Parameters
        ----------
        time_limit, mip_gap, threads, options : as :func:`~gridmarkets.solvers.highs.solve`.

        Returns
        -------
        Solution, as :func:`~gridmarkets.solvers.highs.solve` returns it; its
        ``translate_seconds`` is the time to refresh the arrays.
        """
        started = time.perf_counter()
        self._refresh()
        refresh = time.perf_counter() - started
        merged = highs_options(time_limit, mip_gap, threads, options)
        return solve_as_marked(self.model, self.form, refresh, merged)

    def _refresh(self) -> None:
        """Copy the objective's coefficients and the variables' bounds into the arrays."""
        columns, lp = self.form.columns, self.form.lp
        if any(map(_FIXED, columns)):
            raise InputError(f"model {self.model.name}: a variable was fixed after compiling")
        parts = linear_pairs(self.objective.expr)
        if parts is None:
            raise InputError(f"model {self.model.name}: the objective is no longer linear")
        offset, pairs = parts
        cost = np.zeros(len(columns))
        for coef, var in pairs:
            column = self.position.get(id(var))
            if column is None or var.fixed:
                raise InputError(f"model {self.model.name}: {var.name} is not a compiled column")
            cost[column] += coef
        lp.col_cost_ = cost
        lp.col_lower_, lp.col_upper_ = column_bounds(columns)
        lp.offset_ = offset
        self.form.objective_offset = offset
