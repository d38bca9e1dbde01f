"""The one place that talks to HiGHS.

A Pyomo model is compiled to arrays with Pyomo's own ``LinearStandardFormCompiler``
(``mixed_form``: one row per constraint bound, original orientation kept) and handed
to ``highspy`` as a :class:`highspy.HighsLp`. Compiling to arrays is several times
faster than Pyomo's per-constraint persistent interfaces on the models gridmarkets
builds (benchmarks/), and it gives the row map needed to read prices back.

A convex quadratic objective (continuous models only) is read with Pyomo's
``QuadraticRepnVisitor`` as ``constant + c'x + sum_k q_k x_i(k) x_j(k)`` and handed to
HiGHS as a :class:`highspy.HighsModel`: the LP plus the Hessian ``Q`` of
``0.5 x'Qx``, so ``Q_ii = 2 q`` for a term ``q x_i^2`` and ``Q_ij = Q_ji = q`` for
``q x_i x_j`` (i != j), given as its lower triangle. When maximising, HiGHS takes the
objective's own ``Q``, which must then be negative semidefinite. The row duals of the
QP are the Lagrange multipliers of its KKT conditions and follow the convention below.

Sign convention for prices (one place, here): ``solution.dual(c)`` is the change of
the *cost* per unit increase of the right-hand side ``b`` of ``c``, read as Pyomo
normalises it (``lower <= body <= upper``, constants moved to the bounds); cost is
the objective when minimising and minus the objective when maximising. Written as
``supply - demand == fixed demand``, a balance's dual is what one more kW of demand
costs: the price of energy at that balance.
"""

from __future__ import annotations

import gc
import itertools
import logging
import operator
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np
import pandas as pd
import pyomo.environ as pyo
import scipy.sparse as sp
from pyomo.common.errors import InvalidExpressionError
from pyomo.common.numeric_types import native_numeric_types
from pyomo.core.base.constraint import ConstraintData, IndexedConstraint
from pyomo.core.base.var import VarData
from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression
from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler
from pyomo.repn.quadratic import QuadraticRepnVisitor
from pyomo.repn.util import OrderedVarRecorder
from scipy.sparse.csgraph import connected_components

from gridmarkets.errors import (
    InfeasibleError,
    InputError,
    LimitReachedError,
    SolverOptionError,
    UnboundedError,
)
from gridmarkets.solvers.arrays import RowArrays, array_constraints, array_rows

INF = highspy.kHighsInf
_FIXED, _BOUNDS = operator.attrgetter("fixed"), operator.attrgetter("bounds")
_ARGS, _DOMAIN = operator.attrgetter("args"), operator.attrgetter("domain")
BUILD_SECONDS_ATTR = "_gridmarkets_build_seconds"
MILP_PRICES_ATTR = "_gridmarkets_milp_prices"
SOLVE_APART_ATTR = "_gridmarkets_solve_apart"
OBJECTIVE_SCALE_ATTR = "_gridmarkets_objective_scale"
MILP_PRICES = ("fixed_integer", "convex_hull")
CONVEXITY_CHECK_MAX = 2000  # columns of one coupled block of the Hessian checked densely
# HiGHS's QP solver adds qp_regularization_value (default 1e-7) to every diagonal entry of
# the Hessian, which moves the point by about 1e-7 / curvature: 3.5e-3 kW and 5e-5 of price
# on tests/solvers/test_qp.py's market. QPs are solved as stated unless the caller asks.
QP_OPTIONS = {"qp_regularization_value": 0.0}
# HiGHS 1.16's QP solver reads a column bound that is nonzero but tiny as zero ("Problem has
# some excessively small bounds"): measured, a lower bound of 1e-7 .. 1e-4 kW on one curve of
# a four-participant market ends in "Solve error", its own KKT check finding the balance off
# by the bound (tests/solvers/test_qp.py). A QP's columns with a bound this small are handed
# to HiGHS shifted to start at zero (x = shift + y); the multipliers are the same.
QP_TINY_BOUND = 1e-3

_LIMIT_STATUSES = {
    highspy.HighsModelStatus.kTimeLimit: "time_limit",
    highspy.HighsModelStatus.kIterationLimit: "iteration_limit",
    highspy.HighsModelStatus.kSolutionLimit: "solution_limit",
    highspy.HighsModelStatus.kInterrupt: "interrupted",
    highspy.HighsModelStatus.kObjectiveBound: "objective_bound",
    highspy.HighsModelStatus.kObjectiveTarget: "objective_target",
}


@dataclass
class StandardForm:
    """A Pyomo model as HiGHS arrays, with the maps back to Pyomo components."""

    lp: highspy.HighsLp
    columns: list  # VarData per column
    rows: list  # ConstraintData per row
    integer: np.ndarray  # bool per column
    maximize: bool
    objective_offset: float
    n_constraints: int  # Pyomo constraints (Pyomo's compiler splits a ranged one in two rows)
    n_nonzeros: int
    hessian: sp.csc_array | None = None  # symmetric Q of 0.5 x'Qx (objective's sense); None: LP

    @property
    def is_mip(self) -> bool:
        return bool(self.integer.any())

    def objective_value(self, x: np.ndarray) -> float:
        """``c'x + 0.5 x'Qx + offset`` at the point ``x`` (columns' values)."""
        value = float(np.dot(self.lp.col_cost_, x)) + self.objective_offset
        if self.hessian is not None:
            value += 0.5 * float(x @ (self.hessian @ x))
        return value


def linear_pairs(expr: Any) -> tuple[float, list] | None:
    """(constant, [(coefficient, variable), ...]) of a linear expression with numeric
    coefficients, read from its LinearExpression / monomial structure without a walk;
    None for anything else (Pyomo's compiler then handles it)."""
    if expr.__class__ in native_numeric_types:
        return float(expr), []
    if isinstance(expr, VarData):
        return 0.0, [(1.0, expr)]
    if expr.__class__ is MonomialTermExpression:
        coef, var = expr.args
        numeric = coef.__class__ in native_numeric_types and isinstance(var, VarData)
        return (0.0, [(coef, var)]) if numeric else None
    if expr.__class__ is not LinearExpression:
        return None
    monomials = monomial_pairs(expr.args)
    if monomials is not None:
        return 0.0, monomials
    constant, pairs = 0.0, []
    for arg in expr.args:
        part = linear_pairs(arg)
        if part is None:
            return None
        constant += part[0]
        pairs += part[1]
    return constant, pairs


def monomial_pairs(args: list) -> list | None:
    """The (coefficient, variable) pairs of a sum of numeric monomials, read in bulk (the
    objectives and injections of large markets); None if any term is something else."""
    if set(map(type, args)) != {MonomialTermExpression}:
        return None
    pairs = list(map(_ARGS, args))
    coefs, variables = zip(*pairs, strict=True)
    numeric = set(map(type, coefs)) <= native_numeric_types
    return (
        pairs
        if numeric and all(issubclass(t, VarData) for t in set(map(type, variables)))
        else None
    )


def quadratic_terms(objective: Any) -> tuple[float, list, list] | None:
    """Read an objective as ``constant + sum c v + sum q v w`` with Pyomo's
    ``QuadraticRepnVisitor`` (fixed variables and parameters become numbers).

    Returns (constant, [(c, v), ...], [(q, v, w), ...]) when the objective has
    quadratic terms, None when it is linear. Raises InputError for anything else.
    """
    visitor = QuadraticRepnVisitor({}, var_recorder=OrderedVarRecorder({}, {}, None))
    repn = visitor.walk_expression(objective.expr)
    if repn.nonlinear is not None:
        raise InputError(
            f"objective {objective.name} is neither linear nor quadratic "
            f"(a term like {str(repn.nonlinear)[:80]}); HiGHS solves LPs, MILPs and convex QPs"
        )
    if not repn.quadratic:
        return None
    var = visitor.var_map
    pairs = [(float(c), var[v]) for v, c in repn.linear.items() if c]
    terms = [(float(q), var[v], var[w]) for (v, w), q in repn.quadratic.items() if q]
    return float(repn.constant), pairs, terms


@dataclass
class Solution:
    """What a solve returns: status, objective, bound, prices, timings and size.

    Attributes
    ----------
    status : "optimal", or the limit that stopped the solver with an incumbent
        ("time_limit", "iteration_limit", ...); ``optimal`` says whether it is proven.
    objective : objective value of the loaded solution (model's own sense).
    best_bound : proven bound on the objective (MIPs); equals ``objective`` for LPs and QPs.
    gap : relative MIP gap |objective - bound| / |objective| (0 for LPs and QPs).
    duals_from : "lp" (the model is an LP), "qp" (a convex QP: the multipliers of
        its KKT conditions), "fixed_integer_lp" (a MILP whose
        integers were fixed and the LP re-solved to price it), "relaxed_lp" (a MILP
        priced by its LP relaxation, see :func:`price_milp_by`), or None (no duals: a
        MILP stopped by a limit).
    """

    status: str
    optimal: bool
    objective: float
    best_bound: float
    gap: float
    is_mip: bool
    duals_from: str | None
    build_seconds: float | None
    translate_seconds: float
    solve_seconds: float
    n_variables: int
    n_binaries: int
    n_constraints: int
    n_nonzeros: int
    highs_version: str
    _duals: dict[int, float] | Callable[[], dict[int, float]] = field(
        default_factory=dict, repr=False
    )
    parts: int = 1  # LPs solved: above 1 when solved by independent parts (solve_apart)

    def _dual_map(self) -> dict[int, float]:
        if callable(self._duals):
            self._duals = self._duals()
        return self._duals

    def dual(self, constraint: Any) -> float | pd.Series:
        """Price of ``constraint``: the cost of one more unit of its right-hand side.

        A ``ConstraintData`` gives a float; an indexed constraint gives a Series over
        its index. Constraints that were trivially satisfied (no variables) price at 0.
        """
        if self.duals_from is None:
            raise InputError("this solution has no duals: a MILP stopped before optimality")
        if isinstance(constraint, IndexedConstraint):
            keys = list(constraint.keys())
            duals = self._dual_map()
            ids = map(id, constraint.values())
            values = np.fromiter(map(duals.get, ids, itertools.repeat(0.0)), float, len(keys))
            index = pd.MultiIndex.from_tuples(keys) if keys and isinstance(keys[0], tuple) else keys
            return pd.Series(values, index=index, name=constraint.name)
        if not isinstance(constraint, ConstraintData):
            raise InputError(f"dual(): {constraint!r} is not a Pyomo constraint")
        return self._dual_map().get(id(constraint), 0.0)

    def summary(self) -> dict[str, Any]:
        """The solution's facts as plain JSON-able values."""
        return {
            "status": self.status,
            "optimal": self.optimal,
            "objective": self.objective,
            "best_bound": self.best_bound,
            "gap": self.gap,
            "is_mip": self.is_mip,
            "duals_from": self.duals_from,
            "build_seconds": self.build_seconds,
            "translate_seconds": self.translate_seconds,
            "solve_seconds": self.solve_seconds,
            "variables": self.n_variables,
            "binaries": self.n_binaries,
            "constraints": self.n_constraints,
            "nonzeros": self.n_nonzeros,
            "highs_version": self.highs_version,
        }


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large model is built or compiled.

    A Pyomo model is hundreds of thousands of small objects, all still referenced while
    they are created; the collector would re-scan them again and again (two to four
    times the build time of the LEM on a feeder, benchmarks/) without freeing any.
    Usable as a decorator. On the way out the new objects join the oldest generation
    unscanned (freeze + unfreeze), so switching the collector back on does not scan
    them all at once; cyclic garbage among them is still found by the next full
    collection. Skipped when something else has frozen objects.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def record_build_time(model: pyo.Block, seconds: float) -> None:
    """Remember how long a builder took, so the Solution can report it."""
    setattr(model, BUILD_SECONDS_ATTR, seconds)


def scale_objective_by(model: pyo.Block, factor: float) -> None:
    """Have HiGHS solve ``model`` with its objective multiplied by ``factor``, rounded to
    a power of two (HiGHS's ``user_objective_scale``); the objective, point and duals
    come back unscaled.

    For objectives whose natural unit makes every coefficient tiny against HiGHS's
    tolerances: a market's welfare in currency with prices per MWh and powers in kW has
    coefficients price dt / 1000. Measured on HiGHS 1.16: its QP solver cycles without
    end (or ends in "Solve error") on small markets of identical quadratic curves whose
    Hessian entries are 2 a dt / 1000 ~ 1e-5, and solves them in a few iterations with
    the objective per MWh (factor 1000 / dt); its dual tolerance 1e-7 also holds the
    prices to 1e-7 per MWh instead of 1e-4. Options given to :func:`solve` win.
    """
    if not (np.isfinite(factor) and factor > 0):
        raise InputError(f"objective scale: {factor!r} is not a positive number")
    setattr(model, OBJECTIVE_SCALE_ATTR, int(round(np.log2(factor))))


def price_milp_by(model: pyo.Block, rule: str) -> None:
    """How :func:`solve` prices the model when it is a MILP.

    ``"fixed_integer"`` (the default): the LP with the integers fixed at the solution.
    ``"convex_hull"``: the duals of the LP relaxation. They are the convex-hull
    (minimum-uplift) prices of Gribik, Hogan and Pope (2007) when each participant's
    relaxed constraints are the convex hull of its integer choices, as for block bids
    with ``r q u <= x <= q u``: the Lagrangian dual of the balances is then the
    relaxation's dual.
    """
    if rule not in MILP_PRICES:
        raise InputError(f"MILP prices: {rule!r} is not one of {', '.join(MILP_PRICES)}")
    setattr(model, MILP_PRICES_ATTR, rule)


@gc_paused()
def compile_model(model: pyo.Block) -> StandardForm:
    """Compile the active model to HiGHS arrays (fixed variables become data).

    :class:`~gridmarkets.solvers.arrays.ArrayConstraint` rows are read from their arrays
    (except rows given an expression of their own); the rest of the model goes through
    Pyomo's ``LinearStandardFormCompiler``. An objective with quadratic terms becomes
    the Hessian ``Q`` of ``c'x + 0.5 x'Qx`` (see the module docstring); it must be
    convex (``Q`` positive semidefinite when minimising, negative when maximising) and
    the model continuous, else InputError names the objective and the variables.
    """
    objectives = list(model.component_data_objects(pyo.Objective, active=True))
    if len(objectives) != 1:
        raise InputError(f"model {model.name} has {len(objectives)} active objectives; need 1")
    families = [(c, *array_rows(c)) for c in array_constraints(model)]
    objective = linear_pairs(objectives[0].expr)
    quadratic = None
    try:
        info = _standard_form(model, families, objectives[0] if objective is not None else None)
    except InvalidExpressionError:
        # Pyomo's compiler reads the objective before any constraint and stops at a
        # quadratic one: only then is it read again, as quadratic (the LP path pays nothing)
        quadratic = quadratic_terms(objectives[0]) if objective is None else None
        if quadratic is None:
            raise
        objective = quadratic[:2]
        info = _standard_form(model, families, objectives[0])
    rhs = np.asarray(info.rhs, dtype=float)
    sense = np.array([r.bound_type for r in info.rows], dtype=int)
    parts = _Parts(
        columns=list(info.columns),
        position={id(v): k for k, v in enumerate(info.columns)},
        entries=[info.A.tocoo()],
        row_lower=[np.where(sense >= 0, np.where(sense == 0, rhs, -INF), rhs)],
        row_upper=[np.where(sense <= 0, np.where(sense == 0, rhs, INF), rhs)],
        rows=[r.constraint for r in info.rows],
    )
    for constraint, rows, data, _ in families:
        parts.add(constraint.arrays, rows, data)
    if objective is None:
        cost = info.c.toarray()[0] if info.c.shape[0] else np.zeros(len(info.columns))
        offset = float(info.c_offset[0]) if len(info.c_offset) else 0.0
    else:
        cost, offset = parts.objective(*objective)
    hessian = parts.hessian(quadratic[2]) if quadratic is not None else None
    columns = parts.columns
    lower, upper = column_bounds(columns)
    integer = _integer(columns)
    cost = np.concatenate([cost, np.zeros(len(columns) - len(cost))])
    a = parts.matrix()
    maximize = objectives[0].sense == pyo.maximize
    if hessian is not None:
        _check_quadratic(objectives[0], hessian, columns, integer, maximize)

    lp = highspy.HighsLp()
    lp.num_col_ = len(columns)
    lp.num_row_ = a.shape[0]
    lp.col_cost_ = cost
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = np.concatenate(parts.row_lower)
    lp.row_upper_ = np.concatenate(parts.row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr.astype(np.int32)
    lp.a_matrix_.index_ = a.indices.astype(np.int32)
    lp.a_matrix_.value_ = a.data.astype(float)
    lp.sense_ = highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize
    lp.offset_ = offset
    if integer.any():
        lp.integrality_ = [
            highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
            for i in integer
        ]
    n_constraints = len(set(map(id, parts.rows[: len(info.rows)]))) + sum(
        len(rows) for _, rows, _, _ in families
    )
    return StandardForm(
        lp, columns, parts.rows, integer, maximize, offset, n_constraints, a.nnz, hessian
    )


def _check_quadratic(
    objective: Any, hessian: sp.csc_array, columns: list, integer: np.ndarray, maximize: bool
) -> None:
    """Refuse a quadratic objective in a model with integers, or one that is not convex.

    Convexity: ``Q`` (``-Q`` when maximising) must be positive semidefinite. ``Q`` is
    block diagonal over the connected components of its sparsity graph, so each block
    is checked on its own: a single column by the sign of its diagonal, a block of up
    to ``CONVEXITY_CHECK_MAX`` columns by its smallest eigenvalue (dense), with the
    relative tolerance ``1e-9 max(1, max |eigenvalue|)``. Larger blocks are left to
    HiGHS, which itself refuses negative diagonal entries.
    """
    if integer.any():
        names = [columns[k].name for k in np.flatnonzero(integer)[:5]]
        more = f" and {int(integer.sum()) - len(names)} more" if integer.sum() > len(names) else ""
        raise InputError(
            f"objective {objective.name} is quadratic and the model has integer variables "
            f"({', '.join(names)}{more}); HiGHS solves quadratic objectives for "
            "continuous models only"
        )
    q = -hessian if maximize else hessian
    used = np.flatnonzero(np.diff(hessian.indptr))
    block = q[used][:, used]
    n_blocks, label = connected_components(block, directed=False)
    for b in range(n_blocks):
        members = np.flatnonzero(label == b)
        if len(members) > CONVEXITY_CHECK_MAX:
            continue
        eigenvalues = np.linalg.eigvalsh(block[members][:, members].toarray())
        if eigenvalues[0] < -1e-9 * max(1.0, float(np.abs(eigenvalues).max())):
            names = ", ".join(columns[used[k]].name for k in members[:5])
            shape = "concave" if maximize else "convex"
            raise InputError(
                f"objective {objective.name} is not {shape} in {names}"
                f"{' ...' if len(members) > 5 else ''} (its Hessian has the eigenvalue "
                f"{(-1 if maximize else 1) * eigenvalues[0]:.3g}); HiGHS solves convex QPs only"
            )


def _standard_form(model: pyo.Block, families: list, objective: Any) -> Any:
    """Pyomo's standard form of what the arrays and ``objective`` (if given) leave."""
    with _hidden(families, objective):
        return LinearStandardFormCompiler().write(model, mixed_form=True, set_sense=None)


@contextmanager
def _hidden(families: list, objective) -> Iterator[None]:
    """Hide what the arrays (and a linear objective) already give from Pyomo's compiler.

    By the components' own flags: (de)activate() would visit every row, and the rows'
    flags must stay as the user set them. A family with rows of their own keeps those
    visible and hides only its array rows.
    """
    hidden = [c for c, _, _, own in families if not own]
    rows = [d for _, _, data, own in families if own for d in data]
    hidden += [objective] if objective is not None else []
    for item in (*hidden, *rows):
        item._active = False
    try:
        yield
    finally:
        for item in (*hidden, *rows):
            item._active = True


def column_bounds(columns: list) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the variables, +-INF where they have none."""
    pairs = itertools.chain.from_iterable(map(_BOUNDS, columns))
    flat = np.fromiter((np.nan if b is None else b for b in pairs), float, 2 * len(columns))
    lower, upper = flat[0::2], flat[1::2]
    return np.nan_to_num(lower, nan=-INF), np.nan_to_num(upper, nan=INF)


def _integer(columns: list) -> np.ndarray:
    """Whether each column is integer, asked once per domain (columns share a few)."""
    domains = list(map(_DOMAIN, columns))
    last = dict(zip(map(id, domains), range(len(columns)), strict=True))
    kind = {key: columns[k].is_integer() for key, k in last.items()}
    return np.fromiter(map(kind.__getitem__, map(id, domains)), dtype=bool, count=len(columns))


@dataclass
class _Parts:
    """Columns, COO blocks, row bounds and row owners gathered for one HighsLp."""

    columns: list
    position: dict[int, int]
    entries: list
    row_lower: list
    row_upper: list
    rows: list

    def add(self, arrays: RowArrays, rows: np.ndarray, data: list) -> None:
        """Append the given rows of an array family: new columns, fixed variables as data."""
        variables = arrays.variables
        fixed = np.fromiter(map(_FIXED, variables), dtype=bool, count=len(variables))
        value = np.zeros(len(fixed))
        value[fixed] = [variables[k].value for k in np.flatnonzero(fixed)]
        position_in_rows, columns, values = arrays.entries(rows)
        shift = np.bincount(position_in_rows, weights=values * value[columns], minlength=len(rows))
        where = self.place(variables, fixed)
        keep = ~fixed[columns]
        first = sum(len(lower) for lower in self.row_lower)
        self.entries.append((first + position_in_rows[keep], where[columns[keep]], values[keep]))
        self.row_lower.append(arrays.lower[rows] - shift)
        self.row_upper.append(arrays.upper[rows] - shift)
        self.rows.extend(data)

    def place(self, variables: list | tuple, fixed: np.ndarray) -> np.ndarray:
        """Column of each variable, -1 where fixed; new ones become columns in order."""
        ids = list(map(id, variables))
        where = np.fromiter(map(self.position.get, ids, itertools.repeat(-1)), np.int64, len(ids))
        new = np.flatnonzero((where < 0) & ~fixed).tolist()
        fresh = dict(zip(map(ids.__getitem__, new), new, strict=True))  # once each, by first use
        first = len(self.columns)
        self.position.update(zip(fresh, itertools.count(first)))
        self.columns.extend(map(variables.__getitem__, fresh.values()))
        if len(fresh) == len(new):
            where[new] = np.arange(first, first + len(new))
            return where
        return np.fromiter(map(self.position.get, ids, itertools.repeat(-1)), np.int64, len(ids))

    def objective(self, constant: float, pairs: list) -> tuple[np.ndarray, float]:
        """Cost per column and offset of a linear objective (fixed variables as data)."""
        if not pairs:
            return np.zeros(len(self.columns)), constant
        coefs, variables = zip(*pairs, strict=True)
        fixed = np.fromiter(map(_FIXED, variables), dtype=bool, count=len(variables))
        coefs = np.asarray(coefs, dtype=float)
        values = [variables[k].value for k in np.flatnonzero(fixed)]
        constant += float(np.dot(coefs[fixed], values)) if values else 0.0
        where = self.place(variables, fixed)
        cost = np.bincount(where[~fixed], weights=coefs[~fixed], minlength=len(self.columns))
        return cost, constant

    def hessian(self, terms: list) -> sp.csc_array:
        """Symmetric ``Q`` over all columns with ``0.5 x'Qx = sum q v w`` (new columns
        for variables only in quadratic terms); called after every other placement."""
        coefs, first, second = zip(*terms, strict=True)
        where = self.place([*first, *second], np.zeros(2 * len(terms), dtype=bool))
        i, j = where[: len(terms)], where[len(terms) :]
        q = np.asarray(coefs, dtype=float)
        off = i != j
        rows = np.concatenate([i, j[off]])
        cols = np.concatenate([j, i[off]])
        values = np.concatenate([np.where(off, q, 2.0 * q), q[off]])
        n = len(self.columns)
        return sp.csc_array((values, (rows, cols)), shape=(n, n))

    def matrix(self) -> sp.csc_array:
        """All entries as one column-wise matrix."""
        base = self.entries[0]
        rows = [base.row, *(e[0] for e in self.entries[1:])]
        cols = [base.col, *(e[1] for e in self.entries[1:])]
        values = [base.data, *(e[2] for e in self.entries[1:])]
        shape = (sum(len(lower) for lower in self.row_lower), len(self.columns))
        data = (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols)))
        return sp.csc_array(data, shape=shape)


logger = logging.getLogger(__name__)
_banner_lock = threading.Lock()
_banner_shown = False


def new_highs() -> highspy.Highs:
    """A Highs instance that writes nothing to stdout.

    HiGHS prints its banner on stdout (file descriptor 1, from C) when the first instance
    of a process is created; that one creation runs with descriptor 1 pointed at a
    temporary file, and the banner goes to this module's logger at DEBUG. The instance's
    own log is off, or, when this logger is enabled for DEBUG (``gridmarkets --verbose``),
    routed through it by HiGHS's logging callback instead of the console.
    """
    highs = _first_highs() if not _banner_shown else highspy.Highs()
    verbose = logger.isEnabledFor(logging.DEBUG)
    highs.setOptionValue("output_flag", verbose)
    highs.setOptionValue("log_to_console", False)
    if verbose:
        highs.cbLogging.subscribe(_log_highs_message)
    return highs


def _first_highs() -> highspy.Highs:
    global _banner_shown
    with _banner_lock:
        if _banner_shown:
            return highspy.Highs()
        sys.stdout.flush()
        saved = os.dup(1)
        with tempfile.TemporaryFile(mode="w+") as banner:
            os.dup2(banner.fileno(), 1)
            try:
                highs = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
            banner.seek(0)
            for line in banner.read().splitlines():
                logger.debug("%s", line)
        _banner_shown = True
    return highs


def _log_highs_message(event: Any) -> None:
    message = event.message.rstrip()
    if message:
        logger.debug("%s", message)


def _new_highs(options: dict[str, Any]) -> highspy.Highs:
    highs = new_highs()
    for name, value in options.items():
        if highs.setOptionValue(name, value) != highspy.HighsStatus.kOk:
            raise SolverOptionError(f"HiGHS option {name}={value!r} is not accepted")
    _fit_scheduler(options.get("threads"))
    return highs


_SCHEDULER = threading.local()


def _fit_scheduler(threads: int | None) -> None:
    """HiGHS sizes a thread's task scheduler at its first run and then refuses any other
    ``threads`` (the run ends with status "Not Set"): restart this thread's scheduler
    when a solve asks for another number than the one it was started with."""
    if threads is not None and getattr(_SCHEDULER, "threads", None) != threads:
        highspy.Highs.resetThreadScheduler(True)
        _SCHEDULER.threads = threads
    elif not hasattr(_SCHEDULER, "threads"):
        _SCHEDULER.threads = "default"


def highs_options(time_limit=None, mip_gap=None, threads=None, options=None) -> dict[str, Any]:
    """:func:`solve`'s keyword arguments as HiGHS options by their HiGHS names."""
    merged: dict[str, Any] = {}
    if time_limit is not None:
        merged["time_limit"] = float(time_limit)
    if mip_gap is not None:
        merged["mip_rel_gap"] = float(mip_gap)
    if threads is not None:
        merged["threads"] = int(threads)
    merged.update(options or {})
    return merged


def _highs_model(form: StandardForm) -> highspy.HighsLp | highspy.HighsModel:
    """The LP, or for a QP the LP with the lower triangle of ``Q`` (column-wise)."""
    if form.hessian is None:
        return form.lp
    lower = sp.tril(form.hessian, format="csc")
    lower.sum_duplicates()
    hessian = highspy.HighsHessian()
    hessian.dim_ = form.lp.num_col_
    hessian.format_ = highspy.HessianFormat.kTriangular
    hessian.start_ = lower.indptr.astype(np.int32)
    hessian.index_ = lower.indices.astype(np.int32)
    hessian.value_ = lower.data.astype(float)
    model = highspy.HighsModel()
    model.lp_ = form.lp
    model.hessian_ = hessian
    return model


def qp_column_shift(form: StandardForm) -> np.ndarray:
    """Per column, what a QP is shifted by before HiGHS sees it (``QP_TINY_BOUND``): its
    lower bound when that is nonzero and tiny, its upper bound when it has no lower bound
    and that is nonzero and tiny; else 0 (and 0 everywhere for an LP or a MILP)."""
    if form.hessian is None:
        return np.zeros(form.lp.num_col_)
    lower, upper = np.asarray(form.lp.col_lower_), np.asarray(form.lp.col_upper_)
    tiny_lower = np.isfinite(lower) & (lower != 0) & (np.abs(lower) <= QP_TINY_BOUND)
    tiny_upper = ~np.isfinite(lower) & (upper != 0) & (np.abs(upper) <= QP_TINY_BOUND)
    return np.where(tiny_lower, lower, np.where(tiny_upper, upper, 0.0))


def _shift_columns(form: StandardForm, highs: highspy.Highs, shift: np.ndarray) -> None:
    """Pose the QP in y = x - shift: bounds and row activities move by the shift, the
    cost gains ``Q shift`` (the constant left out, as :func:`solve_compiled` evaluates the
    objective at x)."""
    n, m = form.lp.num_col_, form.lp.num_row_
    columns, rows = np.arange(n, dtype=np.int32), np.arange(m, dtype=np.int32)
    lp = form.lp
    a = sp.csc_array((lp.a_matrix_.value_, lp.a_matrix_.index_, lp.a_matrix_.start_), shape=(m, n))
    moved = a @ shift
    highs.changeColsBounds(
        n, columns, np.asarray(lp.col_lower_) - shift, np.asarray(lp.col_upper_) - shift
    )
    highs.changeRowsBounds(
        m, rows, np.asarray(lp.row_lower_) - moved, np.asarray(lp.row_upper_) - moved
    )
    highs.changeColsCost(n, columns, np.asarray(lp.col_cost_) + form.hessian @ shift)


def _run(form: StandardForm, options: dict[str, Any], warm_start: bool = False) -> highspy.Highs:
    highs = _new_highs(options if form.hessian is None else {**QP_OPTIONS, **options})
    if highs.passModel(_highs_model(form)) == highspy.HighsStatus.kError:
        largest = np.abs(np.asarray(form.lp.a_matrix_.value_, dtype=float)).max(initial=0.0)
        raise InputError(
            "HiGHS rejected the model: a coefficient or bound is out of its range "
            f"(largest |coefficient| {largest:.3g}; HiGHS reads 1e15 and above as infinite) "
            "- look for an impossibly large quantity, price or capacity"
        )
    if warm_start and form.is_mip:
        _set_start(form, highs)
    shift = qp_column_shift(form)
    if shift.any():
        _shift_columns(form, highs, shift)
    highs.run()
    return highs


def _set_start(form: StandardForm, highs: highspy.Highs) -> None:
    """Hand HiGHS the columns' current values as a MIP start; columns without a value are
    left out, and HiGHS completes the partial start where it can."""
    values = [v.value for v in form.columns]
    given = [k for k, value in enumerate(values) if value is not None]
    start = np.array([values[k] for k in given], dtype=float)
    highs.setSolution(len(given), np.array(given, dtype=np.int32), start)


def _row_duals(form: StandardForm, highs: highspy.Highs) -> Callable[[], dict[int, float]]:
    """Row duals summed per constraint, in the cost-per-unit-of-rhs convention: read from
    HiGHS now, mapped to the constraints when first asked for."""
    return _duals_by_constraint(form, np.asarray(highs.getSolution().row_dual, dtype=float))


def _duals_by_constraint(
    form: StandardForm, row_dual: np.ndarray
) -> Callable[[], dict[int, float]]:
    """HiGHS's row duals of ``form`` (its own sign), mapped as :func:`_row_duals` maps them."""
    if form.maximize:
        row_dual = -row_dual

    def by_constraint() -> dict[int, float]:
        ids = np.fromiter(map(id, form.rows), dtype=np.int64, count=len(form.rows))
        owners, row_owner = np.unique(ids, return_inverse=True)
        sums = np.bincount(row_owner.ravel(), weights=row_dual, minlength=len(owners))
        return dict(zip(owners.tolist(), sums.tolist(), strict=True))

    return by_constraint


def _milp_duals(form: StandardForm, x: np.ndarray, rule: str, options) -> Any:
    """Price a MILP by an LP: its integers fixed at the solution (``fixed_integer``) or
    relaxed (``convex_hull``); re-solve and read the duals (None: the LP reached the
    time limit, which covers MILP and pricing together)."""
    lp = form.lp
    lower = np.array(lp.col_lower_, dtype=float)
    upper = np.array(lp.col_upper_, dtype=float)
    if rule == "fixed_integer":
        lower[form.integer] = upper[form.integer] = np.round(x[form.integer])
    highs = _new_highs({k: v for k, v in options.items() if k != "mip_rel_gap"})
    highs.passModel(lp)
    highs.changeColsIntegrality(
        len(x),
        np.arange(len(x), dtype=np.int32),
        np.full(len(x), highspy.HighsVarType.kContinuous),
    )
    highs.changeColsBounds(len(x), np.arange(len(x), dtype=np.int32), lower, upper)
    highs.run()
    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kTimeLimit:
        return None  # the time limit covers the pricing too: the MILP stays unpriced
    if status != highspy.HighsModelStatus.kOptimal:
        raise InfeasibleError(f"the {rule} LP used to price the MILP did not solve")
    return _row_duals(form, highs)


def _time_left(options: dict[str, Any], spent: float) -> dict[str, Any]:
    """``options`` with the time limit cut by the seconds already spent (at least 0.1 s)."""
    if "time_limit" not in options:
        return options
    return {**options, "time_limit": max(float(options["time_limit"]) - spent, 0.1)}


def _raise_for_status(model, form: StandardForm, highs: highspy.Highs, status, options) -> None:
    from gridmarkets.solvers.diagnose import diagnose

    Status = highspy.HighsModelStatus
    limit = {k: v for k, v in options.items() if k == "time_limit"}  # the diagnosis obeys it
    if status == Status.kInfeasible:
        raise InfeasibleError(f"model {model.name} is infeasible", diagnose(form, limit))
    if status == Status.kUnboundedOrInfeasible:
        retry = _run(form, {**limit, "presolve": "off"})
        if retry.getModelStatus() == Status.kInfeasible:
            raise InfeasibleError(f"model {model.name} is infeasible", diagnose(form, limit))
        status = Status.kUnbounded
    if status == Status.kUnbounded:
        raise UnboundedError(
            f"model {model.name} is unbounded: some variable can grow without limit "
            "while improving the objective (a missing bound, price or capacity)"
        )
    if status in _LIMIT_STATUSES:
        raise LimitReachedError(
            f"HiGHS stopped at its {_LIMIT_STATUSES[status].replace('_', ' ')} "
            f"before finding a feasible solution of model {model.name}"
        )
    raise LimitReachedError(f"HiGHS ended with status {highs.modelStatusToString(status)}")


def solve(
    model: pyo.Block,
    *,
    time_limit: float | None = None,
    mip_gap: float | None = None,
    threads: int | None = None,
    options: dict[str, Any] | None = None,
    warm_start: bool = False,
) -> Solution:
    """Solve a Pyomo model (LP, MILP or convex QP) with HiGHS and load the solution.

    A QP minimises ``c'x + 0.5 x'Qx`` (``Q`` positive semidefinite), or maximises it
    with ``Q`` negative semidefinite, subject to linear constraints and bounds, over
    continuous variables; its duals (``duals_from == "qp"``) are the multipliers of
    its KKT conditions, priced as for an LP (module docstring). HiGHS's Hessian
    regularisation is off for QPs (``QP_OPTIONS``) unless ``options`` sets it.

    Parameters
    ----------
    model : the Pyomo model (one active objective, linear or quadratic; linear
        constraints).
    time_limit : seconds; at the limit the incumbent is loaded and returned with
        ``status="time_limit"`` and ``optimal=False``.
    mip_gap : relative MIP gap at which HiGHS stops (HiGHS default 1e-4).
    threads : HiGHS threads.
    options : any further HiGHS options by their HiGHS names.
    warm_start : start a MILP's search from the variables' current values (those that
        have one; HiGHS completes a partial start), e.g. a known feasible schedule.

    Returns
    -------
    Solution, with the variable values also loaded into ``model``.

    Raises
    ------
    InfeasibleError (with a diagnosis naming the conflicting constraints),
    UnboundedError, LimitReachedError (a limit without incumbent),
    SolverOptionError (an option HiGHS rejects), InputError (a quadratic objective
    with integer variables, or one that is not convex; an objective that is neither
    linear nor quadratic).
    """
    started = time.perf_counter()
    form = compile_model(model)
    translate = time.perf_counter() - started
    merged = highs_options(time_limit, mip_gap, threads, options)
    if hasattr(model, OBJECTIVE_SCALE_ATTR):
        merged = {"user_objective_scale": getattr(model, OBJECTIVE_SCALE_ATTR), **merged}
    return solve_as_marked(model, form, translate, merged, warm_start)


def solve_as_marked(
    model: pyo.Block,
    form: StandardForm,
    translate_seconds: float,
    options: dict[str, Any],
    warm_start: bool = False,
) -> Solution:
    """:func:`solve_parts` when the model is marked by :func:`solve_apart` and has no
    integer variables, else :func:`solve_compiled`: the one choice every path that
    solves a compiled model makes, so that it answers as :func:`solve` does."""
    workers = getattr(model, SOLVE_APART_ATTR, None)
    if workers is not None and not form.is_mip:
        return solve_parts(model, form, translate_seconds, options, workers)
    return solve_compiled(model, form, translate_seconds, options, warm_start)


def solve_compiled(
    model: pyo.Block,
    form: StandardForm,
    translate_seconds: float,
    options: dict[str, Any],
    warm_start: bool = False,
) -> Solution:
    """Run HiGHS on a compiled model, load the point into ``model``, describe the result.

    ``options`` are HiGHS options by their HiGHS names; raises as :func:`solve` does.
    """
    started = time.perf_counter()
    highs = _run(form, options, warm_start)
    solve_seconds = time.perf_counter() - started

    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kModelEmpty and not form.lp.num_col_:  # all fixed
        status = highspy.HighsModelStatus.kOptimal
    has_point = highs.getInfo().primal_solution_status == 2  # feasible
    if status != highspy.HighsModelStatus.kOptimal and not (
        status in _LIMIT_STATUSES and has_point
    ):
        _raise_for_status(model, form, highs, status, options)

    x = np.asarray(highs.getSolution().col_value, dtype=float) + qp_column_shift(form)
    values = np.where(form.integer, np.round(x), x).tolist()
    for var, value in zip(form.columns, values, strict=True):
        var.set_value(value, skip_validation=True)

    optimal = status == highspy.HighsModelStatus.kOptimal
    info = highs.getInfo()
    # from the loaded point: HiGHS leaves the offset out of an empty model's objective
    objective = form.objective_value(x)
    if form.is_mip:
        bound, gap = float(info.mip_dual_bound), float(info.mip_gap)
        rule = getattr(model, MILP_PRICES_ATTR, "fixed_integer")
        duals_from = {"fixed_integer": "fixed_integer_lp", "convex_hull": "relaxed_lp"}[rule]
        duals = _milp_duals(form, x, rule, _time_left(options, solve_seconds)) if optimal else None
        duals_from = duals_from if duals is not None else None
    else:
        bound, gap, duals_from = objective, 0.0, "lp" if form.hessian is None else "qp"
        duals = _row_duals(form, highs)
    return Solution(
        status="optimal" if optimal else _LIMIT_STATUSES[status],
        optimal=optimal,
        objective=objective,
        best_bound=bound,
        gap=gap,
        is_mip=form.is_mip,
        duals_from=duals_from,
        build_seconds=getattr(model, BUILD_SECONDS_ATTR, None),
        translate_seconds=translate_seconds,
        solve_seconds=solve_seconds,
        n_variables=form.lp.num_col_,
        n_binaries=int(form.integer.sum()),
        n_constraints=form.n_constraints,
        n_nonzeros=form.n_nonzeros,
        highs_version=highs.version(),
        _duals=duals or {},
    )


def solve_apart(model: pyo.Block, workers: int | None = None) -> None:
    """Have :func:`solve` solve a continuous model's independent parts apart, in parallel.

    The parts are the connected components of the constraint matrix and the Hessian
    (:func:`independent_parts`): for a market that nothing links across time, its
    periods. Each is handed to HiGHS as an LP (or QP) of its own: the parts are split
    into ``workers`` runs of consecutive parts (default: one per core), each run solved
    by one HiGHS instance on a thread of its own -- the threads run at once because
    HiGHS releases Python's GIL while it solves -- and an LP part shaped as the one
    before starts from that one's optimal basis. Each instance uses one HiGHS thread
    unless the options say otherwise (the workers already fill the cores). The point and
    the duals are those of a solve of the whole model wherever they are unique; the
    Solution's ``parts`` says how many LPs were solved. A model with integer
    variables is solved whole. :func:`solve`'s options apply to each part (a time limit
    is each part's); a part that does not solve to optimality sends the whole model to
    :func:`solve_compiled`, which reports it as a solve of the whole would.
    """
    setattr(model, SOLVE_APART_ATTR, max(1, int(workers or os.cpu_count() or 1)))


def independent_parts(
    form: StandardForm, a: sp.csc_array | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(columns, rows) of each independent part of ``form``, in order of first column.

    Parts are the connected components of the graph whose nodes are the rows and the
    columns, with an edge for every nonzero of A and of the Hessian. Components without
    a row (a free-standing column) or without a column (a row of constants) are put
    together in one last part, so that none of them costs a solve of its own. ``a``:
    the form's matrix, when the caller has it already.
    """
    a = (_a_matrix(form) if a is None else a).tocoo()
    m, n = a.shape
    if not (m and n):
        return [(np.arange(n), np.arange(m))]
    # rows are nodes 0..m-1, columns m..m+n-1; an edge per nonzero (direction ignored)
    tail, head = [a.row], [m + a.col]
    if form.hessian is not None:
        q = form.hessian.tocoo()
        tail, head = [*tail, m + q.row], [*head, m + q.col]
    tail, head = np.concatenate(tail), np.concatenate(head)
    graph = sp.csr_array((np.ones(len(tail)), (tail, head)), shape=(m + n, m + n))
    _, label = connected_components(graph, directed=False)
    row_label, col_label = label[:m], label[m:]
    alone = (np.bincount(row_label, minlength=m + n) == 0) | (
        np.bincount(col_label, minlength=m + n) == 0
    )
    rows, cols = (
        _groups(np.where(alone[row_label], -1, row_label)),
        _groups(np.where(alone[col_label], -1, col_label)),
    )
    none = np.arange(0)
    parts = [(cols.get(k, none), rows.get(k, none)) for k in set(rows) | set(cols)]
    return sorted(parts, key=lambda part: part[0][0] if len(part[0]) else n)


def _groups(label: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of each label, ascending."""
    order = np.argsort(label, kind="stable")
    keys, starts = np.unique(label[order], return_index=True)
    return dict(zip(keys.tolist(), np.split(order, starts[1:]), strict=True))


def _a_matrix(form: StandardForm) -> sp.csc_array:
    lp = form.lp
    return sp.csc_array(
        (lp.a_matrix_.value_, lp.a_matrix_.index_, lp.a_matrix_.start_),
        shape=(lp.num_row_, lp.num_col_),
    )


def _part_forms(form: StandardForm, a: sp.csc_array, pieces: list) -> Iterator[StandardForm]:
    """The LP (QP) of each part, one by one: its columns and rows of ``form`` (matrix
    ``a``), without the offset.

    A with the parts' columns and rows side by side is block diagonal, so each part's
    columns are a contiguous run of its compressed columns (rows renumbered)."""
    cols = np.concatenate([c for c, _ in pieces])
    rows = np.concatenate([r for _, r in pieces])
    renumber = np.empty(a.shape[0], dtype=np.int64)
    renumber[rows] = np.arange(len(rows))
    a = a[:, cols]
    a = sp.csc_array((a.data, renumber[a.indices], a.indptr), shape=a.shape)
    a.sort_indices()
    hessian = None if form.hessian is None else sp.csc_array(form.hessian[cols][:, cols])
    col_start = np.cumsum([0, *(len(c) for c, _ in pieces)])
    row_start = np.cumsum([0, *(len(r) for _, r in pieces)])
    lp = form.lp
    cost, lower, upper = (np.asarray(v)[cols] for v in (lp.col_cost_, lp.col_lower_, lp.col_upper_))
    row_lower, row_upper = (np.asarray(v)[rows] for v in (lp.row_lower_, lp.row_upper_))
    for k in range(len(pieces)):
        c, r = slice(col_start[k], col_start[k + 1]), slice(row_start[k], row_start[k + 1])
        first, last = a.indptr[c.start], a.indptr[c.stop]
        part = highspy.HighsLp()
        part.num_col_, part.num_row_ = c.stop - c.start, r.stop - r.start
        part.col_cost_, part.col_lower_, part.col_upper_ = cost[c], lower[c], upper[c]
        part.row_lower_, part.row_upper_ = row_lower[r], row_upper[r]
        part.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        part.a_matrix_.start_ = (a.indptr[c.start : c.stop + 1] - first).astype(np.int32)
        part.a_matrix_.index_ = (a.indices[first:last] - r.start).astype(np.int32)
        part.a_matrix_.value_ = a.data[first:last]
        part.sense_ = lp.sense_
        q = None if hessian is None else sp.csc_array(hessian[c][:, c])
        integer = np.zeros(part.num_col_, dtype=bool)
        yield StandardForm(
            part, [], [], integer, form.maximize, 0.0, part.num_row_, last - first, q
        )


def _solve_chain(form: StandardForm, a: sp.csc_array, pieces: list, options: dict) -> list:
    """(optimal, point, row duals in HiGHS's sign) of each of these parts, solved one
    after the other by one HiGHS instance. An LP part shaped as the one before starts
    from that one's optimal basis (the periods of a market share their network, so
    its basis is a good start: measured on the LEM's periods on SimBench's
    1-MV-urban--0-sw, 9 ms a period against 20 ms cold with 1,000 participants, 6.4
    against 12.9 ms with 100); a QP starts cold."""
    highs = _new_highs(options)
    solved, basis, shape = [], None, None
    for part in _part_forms(form, a, pieces):
        if highs.passModel(_highs_model(part)) == highspy.HighsStatus.kError:
            return [*solved, (False, None, None)]
        shift = qp_column_shift(part)
        if shift.any():
            _shift_columns(part, highs, shift)
        if basis is not None and shape == (part.lp.num_row_, part.lp.num_col_):
            highs.setBasis(basis)
        highs.run()
        status = highs.getModelStatus()
        optimal = status == highspy.HighsModelStatus.kOptimal or (
            status == highspy.HighsModelStatus.kModelEmpty and not part.lp.num_col_
        )
        solution = highs.getSolution()
        x = np.asarray(solution.col_value, dtype=float) + shift
        solved.append((optimal, x, np.asarray(solution.row_dual, dtype=float)))
        if not optimal:
            return solved
        warm = part.hessian is None and highs.getBasis().valid
        basis, shape = (
            (highs.getBasis(), (part.lp.num_row_, part.lp.num_col_)) if warm else (None, None)
        )
    return solved


def solve_parts(
    model: pyo.Block,
    form: StandardForm,
    translate_seconds: float,
    options: dict[str, Any],
    workers: int,
) -> Solution:
    """:func:`solve_compiled` by independent parts (:func:`solve_apart`), ``workers``
    at a time. A part that is not solved to optimality (infeasible, unbounded, a limit)
    sends the whole model to :func:`solve_compiled`, which reports it as usual."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    a = _a_matrix(form)
    pieces = independent_parts(form, a)
    one_thread = {"threads": 1, **options}
    if form.hessian is not None:
        one_thread = {**QP_OPTIONS, **one_thread}
    x, row_dual = np.zeros(form.lp.num_col_), np.zeros(form.lp.num_row_)
    chains = [c for c in np.array_split(np.arange(len(pieces)), workers) if len(c)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(_solve_chain, form, a, [pieces[k] for k in chain], one_thread)
            for chain in chains
        ]
        for chain, future in zip(chains, futures, strict=True):  # loaded while others solve
            for k, (optimal, x_part, dual_part) in zip(chain, future.result(), strict=False):
                if not optimal:
                    pool.shutdown(cancel_futures=True)
                    return solve_compiled(model, form, translate_seconds, options)
                cols, rows = pieces[k]
                x[cols], row_dual[rows] = x_part, dual_part
                for column, value in zip(cols.tolist(), x_part.tolist(), strict=True):
                    form.columns[column].set_value(value, skip_validation=True)
    solve_seconds = time.perf_counter() - started
    objective = form.objective_value(x)
    return Solution(
        status="optimal",
        optimal=True,
        objective=objective,
        best_bound=objective,
        gap=0.0,
        is_mip=False,
        duals_from="lp" if form.hessian is None else "qp",
        build_seconds=getattr(model, BUILD_SECONDS_ATTR, None),
        translate_seconds=translate_seconds,
        solve_seconds=solve_seconds,
        n_variables=form.lp.num_col_,
        n_binaries=0,
        n_constraints=form.n_constraints,
        n_nonzeros=form.n_nonzeros,
        highs_version=new_highs().version(),
        _duals=_duals_by_constraint(form, row_dual),
        parts=len(pieces),
    )
