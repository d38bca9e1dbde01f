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

The column order of a compile is not a function of the model alone: the first model
built on a newly loaded Feeder compiles its columns in another order than later builds
on the same Feeder. Where a market is degenerate (its prices not unique), two compiles
may therefore report different prices from the set of supporting prices, with or
without reuse; where they are unique, the answers agree to the last digits.

Only a proven optimum is answered here. Any other outcome (infeasible, unbounded, a
limit) is handed to :func:`~gridmarkets.solvers.highs.solve` on the model itself,
which compiles it afresh and raises with its diagnosis, so a failing scenario reads
the same whichever path it took.
"""

from __future__ import annotations

import operator
import time
from typing import Any

import highspy
import numpy as np
import pyomo.environ as pyo

from gridmarkets.errors import InputError
from gridmarkets.solvers.highs import (
    BUILD_SECONDS_ATTR,
    INF,
    Solution,
    StandardForm,
    _options,
    _row_duals,
    _run,
    compile_model,
    linear_pairs,
    solve,
)

_BOUNDS, _FIXED = operator.attrgetter("bounds"), operator.attrgetter("fixed")


class PersistentLP:
    """An LP compiled once; :meth:`solve` re-reads its costs and bounds (see the module).

    Parameters
    ----------
    model : a linear Pyomo model without integer variables and with a linear
        objective of numeric coefficients.

    Raises
    ------
    InputError : the model has integer variables, or an objective the arrays cannot
        be refreshed from.
    """

    def __init__(self, model: pyo.Block):
        self.model = model
        self.form: StandardForm = compile_model(model)
        if self.form.is_mip:
            raise InputError(f"model {model.name}: a persistent LP cannot hold a MILP")
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
        refreshed = time.perf_counter()
        highs = _run(self.form, _options(time_limit, mip_gap, threads, options))
        solved = time.perf_counter()
        if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return solve(
                self.model, time_limit=time_limit, mip_gap=mip_gap, threads=threads, options=options
            )
        return self._solution(highs, refreshed - started, solved - refreshed)

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
        bounds = np.array(list(map(_BOUNDS, columns)), dtype=float).reshape(len(columns), 2)
        lp.col_cost_ = cost
        lp.col_lower_ = np.nan_to_num(bounds[:, 0], nan=-INF)  # None (no bound) became nan
        lp.col_upper_ = np.nan_to_num(bounds[:, 1], nan=INF)
        lp.offset_ = offset
        self.form.objective_offset = offset

    def _solution(self, highs: highspy.Highs, refresh_s: float, solve_s: float) -> Solution:
        """Load the optimal point into the model and describe it as ``solve`` does."""
        form = self.form
        x = np.asarray(highs.getSolution().col_value, dtype=float)
        for var, value in zip(form.columns, x.tolist(), strict=True):
            var.set_value(value, skip_validation=True)
        objective = float(np.dot(form.lp.col_cost_, x)) + form.objective_offset
        return Solution(
            status="optimal",
            optimal=True,
            objective=objective,
            best_bound=objective,
            gap=0.0,
            is_mip=False,
            duals_from="lp",
            build_seconds=getattr(self.model, BUILD_SECONDS_ATTR, None),
            translate_seconds=refresh_s,
            solve_seconds=solve_s,
            n_variables=form.lp.num_col_,
            n_binaries=0,
            n_constraints=len({id(c) for c in form.rows}),
            n_nonzeros=len(form.lp.a_matrix_.value_),
            highs_version=highs.version(),
            _duals=_row_duals(form, highs),
        )
