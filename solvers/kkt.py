"""Bilevel problems as single-level MILPs: a follower's LP replaced by its KKT conditions.

A *follower* is a Pyomo block holding exactly one active objective and the follower's
constraints. Its decisions are the Vars declared on the block (sub-blocks included);
every other Var that appears in it is a leader decision, data to the follower. The
follower must be an LP in its own variables: its constraint coefficients are numbers,
its right-hand sides and its objective coefficients may be linear in leader variables.

:func:`reformulate` writes, in place on ``block.kkt``, with the follower in minimising
form ``min f(y) = sum_j (c_j + q_j . x) y_j``, rows ``lo_i <= a_i y + g_i(x) <= up_i`` and
bounds ``l_j <= y_j <= u_j``:

- primal feasibility: the follower's own constraints and bounds, kept as they are;
- dual feasibility: ``lam >= 0`` on every ``>=`` side, ``mu >= 0`` on every ``<=`` side,
  ``nu`` free on equalities;
- stationarity: ``c_j + q_j . x - sum_i (lam_i - mu_i + nu_i) a_ij - lam_j + mu_j = 0``;
- complementarity (``method="bigm"``): per inequality side one binary ``u``, with
  ``lam <= M_dual u`` and ``slack <= M_primal (1 - u)``, or (``method="strong_duality"``)
  one inequality ``f(y) <= dual objective``, which with weak duality makes both equal.

Pyomo's ``core.kkt`` transformation builds the same conditions as ``mpec``
complementarities; they are written here directly because the big-M values, the
leader/follower split and the dual map need the row-by-row bookkeeping anyway.

Where the big-Ms come from: ``M_primal`` is the upper bound of the slack over the
variables' bounds, tightened by Pyomo's FBBT (``pyomo.contrib.fbbt``) over the whole
model when the bounds alone give none; every such M is valid for any feasible point of
the single-level model. A multiplier has no primal source of bounds: ``M_dual`` comes
from ``dual_bounds`` (per side, derived by the caller from the follower's economics, e.g.
:func:`gridmarkets.models.aggregator.multiplier_bounds`) or else from ``big_m``. A side
whose ``M_dual`` is 0 keeps its primal constraint but no binary: its multiplier is fixed
at 0 (valid when dropping the side never changes the follower's optimal value, so some
optimal dual has it at 0). Where no finite M exists and none is given,
:class:`KKTError` names the constraint. :func:`verify` re-solves each follower at the
leader's decision and lists the multipliers and slacks sitting at their M (a sign an M
was too small); a too-small M that cuts off a leader decision far from the solution
found is invisible to it, and to any check at one point (see :func:`verify`).

Dual map: ``follower.dual[c]`` is an expression equal to ``d(cost)/d(rhs)`` of follower
constraint ``c``, in the sign convention of :meth:`gridmarkets.solvers.Solution.dual`
(cost = the follower's objective when it minimises, minus it when it maximises).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap, ComponentSet
from pyomo.contrib.fbbt.fbbt import compute_bounds_on_expr, fbbt
from pyomo.core.base.constraint import ConstraintData
from pyomo.core.base.var import VarData
from pyomo.core.expr.visitor import identify_variables
from pyomo.repn.standard_repn import generate_standard_repn

from gridmarkets.errors import InputError

Method = Literal["bigm", "strong_duality"]
BigM = float | Mapping[Any, float | tuple[float, float]] | None
AT_BOUND_TOL = 1e-6


@dataclass(frozen=True)
class DualBound:
    """Bounds on the multipliers of a constraint's or variable's two sides.

    ``lower``: of its ``>=`` side (or lower bound), ``upper``: of its ``<=`` side (or upper
    bound), in follower cost per unit of the row; None: not given (``big_m`` applies);
    0: the side's multiplier is fixed at 0 and it gets no binary.
    """

    lower: float | None = None
    upper: float | None = None


class KKTError(InputError):
    """A follower cannot be reformulated: not an LP, an unknown leader var, no big-M."""


@dataclass
class Side:
    """One inequality side of a follower row (a constraint or a variable bound).

    ``slack >= 0`` is the side's primal slack, ``multiplier >= 0`` its multiplier;
    ``binary`` (big-M only) is 1 when the multiplier may be positive.
    """

    label: str
    component: Any  # ConstraintData or VarData
    sense: Literal["lower", "upper"]
    slack: Any  # Pyomo expression
    multiplier: VarData
    m_primal: float | None = None
    m_dual: float | None = None
    m_primal_given: bool = False
    m_dual_derived: bool = False
    binary: VarData | None = None


@dataclass
class Follower:
    """The KKT reformulation of one follower block, kept for duals and :func:`verify`.

    Attributes
    ----------
    block : the follower's block; ``block.kkt`` holds the new variables and constraints.
    objective : the follower's objective (deactivated by :func:`reformulate`).
    variables : the follower's decisions.
    leader_variables : the leader's Vars that appear in the follower.
    sides : one :class:`Side` per inequality side.
    dual : constraint -> expression of its dual, ``d(cost)/d(rhs)``.
    cost : the follower's cost (its objective in minimising form).
    dual_objective : the LP dual's objective; equal to ``cost`` at a KKT point.
    method : "bigm" or "strong_duality".
    """

    block: pyo.Block
    objective: Any
    variables: list
    leader_variables: list
    sides: list[Side] = field(default_factory=list)
    dual: ComponentMap = field(default_factory=ComponentMap)
    cost: Any = None
    dual_objective: Any = None
    method: str = "bigm"
    _rhs_has_leader: bool = False
    _in_products: ComponentSet = field(default_factory=ComponentSet, repr=False)
    _gradient: dict = field(default_factory=dict, repr=False)
    _rows: list = field(default_factory=list, repr=False)


# --- public API ---------------------------------------------------------------------


def reformulate(
    model: pyo.Block,
    lower: pyo.Block | Sequence[pyo.Block],
    *,
    upper_vars: Iterable[Any] | None = None,
    method: Method = "bigm",
    big_m: BigM = None,
    dual_bounds: Mapping[Any, DualBound] | None = None,
) -> Follower | list[Follower]:
    """Replace each follower's objective by its KKT conditions, in place.

    Parameters
    ----------
    model : the single-level model (the leader's objective and constraints).
    lower : the follower block, or a list of blocks (one per follower).
    upper_vars : the leader's Vars (components or data). When given, a Var that appears
        in a follower but is neither declared on it nor listed is a :class:`KKTError`.
    method : "bigm" (one binary per inequality side) or "strong_duality" (primal and
        dual feasibility plus ``cost <= dual objective``). Strong duality is exact and
        linear when leader variables meet follower quantities (objective terms
        ``x * y``, right-hand-side terms ``x * multiplier``) only as binaries; those
        products are linearised exactly (McCormick over binary x).
    big_m : a number (the bound of every multiplier, and of every slack bounds do not
        bound), or a mapping ``{constraint or var or its indexed parent: M}`` where M is
        a number (both sides) or ``(M_primal, M_dual)``; a given value overrides the one
        derived from bounds. Scalar components are not hashable: key a mapping that
        names them with a ``pyomo.common.collections.ComponentMap``.
    dual_bounds : ``{constraint or var (data or indexed parent): DualBound}`` (a
        ``ComponentMap``): ``M_dual`` of each side, overriding ``big_m``'s; valid when
        some optimal dual of the follower lies within them for every leader decision.

    Returns
    -------
    The :class:`Follower` (a list when ``lower`` is a list). ``follower.dual[c]`` is the
    expression of constraint ``c``'s dual.

    Raises
    ------
    KKTError : a follower with a non-LP term, an unlisted leader Var, or a side for
        which no finite big-M exists (the message names the constraint).
    """
    if method not in ("bigm", "strong_duality"):
        raise KKTError(f"method: {method!r} is not 'bigm' or 'strong_duality'")
    blocks = [lower] if isinstance(lower, pyo.Block) else list(lower)
    allowed = None if upper_vars is None else _var_set(upper_vars)
    followers = [_analyse(b, allowed) for b in blocks]
    bounds = _SlackBounds(model)
    try:
        for follower in followers:
            _write(follower, method, _MBounds(big_m, dual_bounds), bounds)
    finally:
        bounds.restore()
    model._gridmarkets_kkt = getattr(model, "_gridmarkets_kkt", []) + followers
    return followers[0] if isinstance(lower, pyo.Block) else followers


@dataclass
class FollowerCheck:
    """:func:`verify`'s finding for one follower.

    Attributes
    ----------
    name : the follower block's name.
    value : the follower's cost at the single-level solution.
    optimum : its optimal cost re-solved alone with the leader's decision fixed.
    gap : ``value - optimum`` (>= 0 up to tolerance; > 0: not a follower optimum).
    at_bound : labels of sides whose multiplier or given slack M is reached.
    at_derived_bound : labels of sides whose multiplier is at its ``dual_bounds`` value
        (proven valid: information, not a warning).
    checked : False when :func:`verify`'s time limit came before this follower's
        re-solve (``optimum`` and ``gap`` are then NaN).
    """

    name: str
    value: float
    optimum: float
    gap: float
    at_bound: list[str]
    at_derived_bound: list[str] = field(default_factory=list)
    checked: bool = True

    @property
    def ok(self) -> bool:
        return (
            self.checked
            and abs(self.gap) <= 1e-6 * max(1.0, abs(self.optimum))
            and not self.at_bound
        )


def verify(
    model: pyo.Block, lower=None, *, tol: float = 1e-6, time_limit: float | None = None
) -> list[FollowerCheck]:
    """Check a solved single-level model against each follower re-solved alone.

    The leader's values are fixed, each follower's original objective is restored and
    its LP solved with :func:`gridmarkets.solvers.solve`; the model's values and the
    reformulation are left as they were.

    What it certifies, at the solution found and per follower:

    - ``gap``: whether the follower's response is its own optimum at the leader's
      decision. A multiplier bound ``M_dual`` can never make it positive (a point of
      the KKT system with ``lam <= M_dual`` is a KKT point of the LP, hence optimal);
      a given ``M_primal`` too small can (``slack <= M_primal`` removed the follower's
      better responses), and so can solver tolerances. Ms derived from bounds or FBBT
      hold for every feasible point and remove nothing.
    - ``at_bound``: the multipliers at a ``big_m`` ``M_dual`` and the slacks at a given
      ``M_primal``. An M that is reached restricts the single-level model at this
      point; a larger one may let the leader do better. A multiplier at its
      ``dual_bounds`` value is not listed: those bounds are the caller's proof that some
      optimal dual lies within them, and a tight one is reached wherever the dual is
      at its extreme (e.g. a home exporting values energy at the export price).

    What it cannot see: a too-small M also removes every *other* leader decision whose
    follower needs a multiplier above ``M_dual`` (or a slack above a given
    ``M_primal``). When the solution found needs none near its M, every check passes —
    the point is bilevel feasible, its followers optimal — although a better leader
    decision was cut off (``tests/solvers/test_kkt.py`` builds such a case with a
    binary leader). No check at one point can: deciding whether a big-M is valid for
    all leader decisions is as hard as the bilevel problem itself (Kleinert, Labbé,
    Plein & Schmidt (2020), There's no free lunch: on the hardness of choosing a
    correct big-M in bilevel optimization, Operations Research 68(6), 1716-1721).
    Derive ``M_dual`` from the follower's economics (its largest marginal cost), or
    re-solve with a larger M and compare the leader's objective.

    Parameters
    ----------
    model : a model reformulated by :func:`reformulate` and solved.
    lower : a follower block or list of blocks (default: every reformulated follower).
    tol : relative tolerance for "at its bound".
    time_limit : seconds for all re-solves; followers not reached in time are returned
        with ``checked=False`` (their bound checks still made).

    Returns
    -------
    One :class:`FollowerCheck` per follower.
    """
    followers = _followers_of(model, lower)
    deadline = math.inf if time_limit is None else time.perf_counter() + time_limit
    return [_check(f, tol, time.perf_counter() < deadline) for f in followers]


def bilinear_cost(follower: Follower) -> Any:
    """Linear expression of the leader-dependent part of a follower's cost, at optimum.

    For a follower ``min sum_j (c_j + q_j . x) y_j`` whose right-hand sides do not
    depend on the leader, strong duality gives ``sum_j (q_j . x) y_j = D(duals) -
    sum_j c_j y_j``, linear in the follower's variables and multipliers: the standard
    exact linearisation of a leader-price x follower-quantity term (an incentive paid,
    a tariff collected) in the leader's objective.

    Parameters
    ----------
    follower : a :class:`Follower` from :func:`reformulate`.

    Returns
    -------
    A Pyomo expression (follower cost units).
    """
    if follower._rhs_has_leader:
        raise KKTError(
            f"{follower.block.name}: right-hand sides depend on leader variables; "
            "the strong-duality linearisation of x * y terms needs constant ones"
        )
    constant_part = sum(follower._gradient[id(y)][0] * y for y in follower.variables)
    return follower.dual_objective - constant_part


# --- analysis of a follower ---------------------------------------------------------


def _var_set(upper_vars: Iterable[Any]) -> ComponentSet:
    result = ComponentSet()
    items = [upper_vars] if isinstance(upper_vars, pyo.Var) else upper_vars
    for v in items:
        if isinstance(v, VarData):
            result.add(v)
        else:
            result.update(v.values())
    return result


def _analyse(block: pyo.Block, allowed: ComponentSet | None) -> Follower:
    """Objective, variables and linear rows of one follower."""
    objectives = list(block.component_data_objects(pyo.Objective, active=True))
    if len(objectives) != 1:
        raise KKTError(f"follower {block.name} has {len(objectives)} active objectives; need 1")
    own = ComponentSet(
        v for v in block.component_data_objects(pyo.Var, descend_into=True) if not v.fixed
    )
    discrete = [v.name for v in own if not v.is_continuous()]
    if discrete:
        raise KKTError(
            f"follower {block.name}: {discrete[0]} is integer; the follower must be an LP "
            "(use the continuous form of its devices, e.g. a relaxed battery)"
        )
    follower = Follower(block, objectives[0], [], [])
    leader = ComponentSet()
    for con in block.component_data_objects(pyo.Constraint, active=True, descend_into=True):
        follower._rows.append(_row(con, own, leader))
    follower._gradient = _gradient(objectives[0], own, leader)
    used = ComponentSet(y for row in follower._rows for y in row[1])
    used.update(v for v in own if id(v) in follower._gradient)
    follower.variables = [v for v in own if v in used or v.has_lb() or v.has_ub()]
    for y in follower.variables:
        follower._gradient.setdefault(id(y), (0.0, 0))
    for expr in [objectives[0].expr] + [row[0].body for row in follower._rows]:
        leader.update(v for v in identify_variables(expr, include_fixed=False) if v not in own)
    if allowed is not None:
        for x in leader:
            if x not in allowed:
                raise KKTError(
                    f"follower {block.name}: variable {x.name} is neither declared on the "
                    "follower's block nor listed in upper_vars"
                )
    follower.leader_variables = list(leader)
    follower._rhs_has_leader = any(row[2] is not None for row in follower._rows)
    return follower


def _row(con: ConstraintData, own: ComponentSet, leader: ComponentSet):
    """(constraint, {y: a}, leader part g(x) or None, constant) of one constraint."""
    repn = generate_standard_repn(con.body, compute_values=True, quadratic=False)
    if repn.nonlinear_expr is not None:
        raise KKTError(f"follower constraint {con.name} is not linear")
    coefs: ComponentMap = ComponentMap()
    leader_terms = []
    for v, a in zip(repn.linear_vars, repn.linear_coefs, strict=True):
        if v in own:
            coefs[v] = coefs.get(v, 0.0) + float(a)
        else:
            leader.add(v)
            leader_terms.append(float(a) * v)
    g = sum(leader_terms) if leader_terms else None
    return con, coefs, g, float(repn.constant)


def _gradient(objective, own: ComponentSet, leader: ComponentSet) -> dict:
    """id(y) -> (c_j, leader expression q_j . x or 0), minimising form."""
    sign = 1.0 if objective.sense == pyo.minimize else -1.0
    repn = generate_standard_repn(objective.expr, compute_values=True, quadratic=True)
    if repn.nonlinear_expr is not None:
        raise KKTError(f"follower objective {objective.name} is not linear or bilinear")
    grad: dict = {}

    def add(y, c=0.0, q=0):
        c0, q0 = grad.get(id(y), (0.0, 0))
        grad[id(y)] = (c0 + sign * c, q0 + sign * q)

    for v, c in zip(repn.linear_vars, repn.linear_coefs, strict=True):
        if v in own:
            add(v, c=float(c))
        else:
            leader.add(v)
    for (v, w), c in zip(repn.quadratic_vars, repn.quadratic_coefs, strict=True):
        if v in own and w in own:
            raise KKTError(
                f"follower objective {objective.name}: term {v.name}*{w.name} is quadratic "
                "in the follower's variables; the follower must be an LP"
            )
        if v in own or w in own:
            y, x = (v, w) if v in own else (w, v)
            leader.add(x)
            add(y, q=float(c) * x)
        else:
            leader.update((v, w))
    return grad


# --- big-M values -------------------------------------------------------------------


class _SlackBounds:
    """Bounds of slack expressions: variable bounds first, FBBT over the model if need be.

    FBBT tightens variable bounds in place; they are restored once the reformulation is
    written, so the model keeps the bounds its author gave.
    """

    def __init__(self, model: pyo.Block):
        self.model = model
        self.saved: ComponentMap | None = None

    def upper(self, expr) -> float | None:
        ub = compute_bounds_on_expr(expr)[1]
        if ub is None or not math.isfinite(ub):
            self._tighten()
            ub = compute_bounds_on_expr(expr)[1]
        return None if ub is None or not math.isfinite(ub) else float(ub)

    def _tighten(self) -> None:
        if self.saved is not None:
            return
        self.saved = ComponentMap(
            (v, (v.lb, v.ub)) for v in self.model.component_data_objects(pyo.Var)
        )
        fbbt(self.model, deactivate_satisfied_constraints=False)

    def restore(self) -> None:
        if self.saved is not None:
            for v, (lb, ub) in self.saved.items():
                v.setlb(lb)
                v.setub(ub)
            self.saved = None


@dataclass
class _MBounds:
    """The Ms given for a side: ``big_m`` (both Ms) and ``dual_bounds`` (M_dual per side)."""

    big_m: BigM
    dual_bounds: Mapping[Any, DualBound] | None

    def given(self, component, sense: str) -> tuple[float | None, float | None]:
        """(M_primal, M_dual) given for one side of a constraint or variable, if any."""
        m_primal, m_dual = _given_m(self.big_m, component)
        derived = _lookup(self.dual_bounds, component)
        side = None if derived is None else getattr(derived, sense)
        return m_primal, m_dual if side is None else float(side)

    def derived(self, component, sense: str) -> bool:
        """Whether ``dual_bounds`` gives this side's M_dual."""
        derived = _lookup(self.dual_bounds, component)
        return derived is not None and getattr(derived, sense) is not None

    def fallback_primal(self) -> float | None:
        big_m = self.big_m
        return float(big_m) if big_m is not None and not isinstance(big_m, Mapping) else None


def _lookup(mapping: Mapping | None, component) -> Any:
    """The value a mapping gives a component or, failing that, its indexed parent."""
    if not mapping:
        return None
    for key in (component, component.parent_component()):
        if isinstance(mapping, ComponentMap):
            if key in mapping:
                return mapping[key]
            continue
        for k, value in mapping.items():
            if k is key:
                return value
    return None


def _given_m(big_m: BigM, component) -> tuple[float | None, float | None]:
    """(M_primal, M_dual) the user gave for a constraint or variable, if any."""
    if big_m is None:
        return None, None
    if not isinstance(big_m, Mapping):
        return None, float(big_m)
    value = _lookup(big_m, component)
    if value is None:
        return None, None
    if isinstance(value, tuple):
        return float(value[0]), float(value[1])
    return float(value), float(value)


# --- writing the conditions ---------------------------------------------------------


def _write(follower: Follower, method: str, big_m: _MBounds, bounds: _SlackBounds) -> None:
    b = follower.block
    b.kkt = pyo.Block(doc=f"KKT conditions of follower {b.name} ({method})")
    k = b.kkt
    k.SIDES = pyo.Set(initialize=[], ordered=True, doc="inequality sides")
    k.multiplier = pyo.VarList(domain=pyo.NonNegativeReals, doc="lam, mu >= 0 per side")
    k.equality_dual = pyo.VarList(domain=pyo.Reals, doc="nu (free) per equality")
    follower.method = method
    dual_terms = {id(y): [] for y in follower.variables}
    dual_objective = []
    for con, coefs, g, constant in follower._rows:
        _add_row(follower, con, coefs, g, constant, dual_terms, dual_objective)
    for y in follower.variables:
        _add_bounds(follower, y, dual_terms, dual_objective)
    k.stationarity = pyo.ConstraintList(
        doc="c_j + q_j.x - sum_i (lam_i - mu_i + nu_i) a_ij - lam_lb_j + mu_ub_j = 0"
    )
    for y in follower.variables:
        c, q = follower._gradient[id(y)]
        k.stationarity.add(c + q - sum(dual_terms[id(y)]) == 0)
    follower.objective.deactivate()
    follower.cost = sum(
        (c + q) * y for y in follower.variables for c, q in [follower._gradient[id(y)]]
    )
    follower.dual_objective = sum(dual_objective)
    k.cost = pyo.Expression(expr=follower.cost, doc="f(y) = sum_j (c_j + q_j.x) y_j")
    k.dual_cost = pyo.Expression(
        expr=follower.dual_objective, doc="D = sum_i dual_i rhs_i (LP dual objective)"
    )
    if method == "bigm":
        _add_bigm(follower, big_m, bounds)
    else:
        _add_strong_duality(follower, big_m, bounds)


def _add_row(follower, con, coefs, g, constant, dual_terms, dual_objective) -> None:
    """Multipliers of one constraint, its dual-map entry and its dual-objective terms."""
    k = follower.block.kkt
    body_y = sum(a * y for y, a in coefs.items())
    leader_part = 0 if g is None else g
    lo = None if con.lower is None else pyo.value(con.lower)
    up = None if con.upper is None else pyo.value(con.upper)
    if con.equality:
        nu = k.equality_dual.add()
        for y, a in coefs.items():
            dual_terms[id(y)].append(a * nu)
        dual_objective.append(nu * (lo - constant - leader_part))
        follower.dual[con] = nu
        return
    dual = 0
    if lo is not None:
        lam = _side(
            follower, f"{con.name} (lower)", con, "lower", body_y + leader_part + constant - lo
        )
        for y, a in coefs.items():
            dual_terms[id(y)].append(a * lam)
        dual_objective.append(lam * (lo - constant - leader_part))
        dual = dual + lam
    if up is not None:
        mu = _side(
            follower, f"{con.name} (upper)", con, "upper", up - body_y - leader_part - constant
        )
        for y, a in coefs.items():
            dual_terms[id(y)].append(-a * mu)
        dual_objective.append(-mu * (up - constant - leader_part))
        dual = dual - mu
    follower.dual[con] = dual


def _add_bounds(follower, y, dual_terms, dual_objective) -> None:
    if y.has_lb():
        lam = _side(follower, f"{y.name} >= {y.lb:g}", y, "lower", y - y.lb)
        dual_terms[id(y)].append(lam)
        dual_objective.append(lam * y.lb)
    if y.has_ub():
        mu = _side(follower, f"{y.name} <= {y.ub:g}", y, "upper", y.ub - y)
        dual_terms[id(y)].append(-mu)
        dual_objective.append(-mu * y.ub)


def _side(follower, label, component, sense, slack) -> VarData:
    multiplier = follower.block.kkt.multiplier.add()
    follower.sides.append(Side(label, component, sense, slack, multiplier))
    return multiplier


def _add_bigm(follower: Follower, big_m: _MBounds, bounds: _SlackBounds) -> None:
    k = follower.block.kkt
    k.active_side = pyo.VarList(domain=pyo.Binary, doc="u = 1: multiplier may be > 0")
    k.multiplier_bigm = pyo.ConstraintList(doc="lam <= M_dual u")
    k.slack_bigm = pyo.ConstraintList(doc="slack <= M_primal (1 - u)")
    for side in follower.sides:
        m_primal, m_dual = big_m.given(side.component, side.sense)
        side.m_primal_given = m_primal is not None
        side.m_dual_derived = big_m.derived(side.component, side.sense)
        if m_dual == 0.0:  # some optimal dual has it at 0: no complementarity to write
            side.m_dual = 0.0
            side.multiplier.fix(0.0)
            continue
        if m_primal is None:
            m_primal = bounds.upper(side.slack)
            if m_primal is None:
                m_primal = big_m.fallback_primal()
                side.m_primal_given = m_primal is not None
        if m_primal is None:
            raise KKTError(
                f"follower {follower.block.name}: no finite big-M for {side.label}: its "
                "slack is unbounded even after FBBT; bound the variables in it or pass "
                f"big_m={{{side.component.name}: M}}"
            )
        side.m_primal = m_primal
        if m_primal <= 1e-9:  # the side is always tight: complementarity holds anyway
            continue
        if m_dual is None:
            raise KKTError(
                f"follower {follower.block.name}: no bound on the multiplier of "
                f"{side.label}; pass big_m=M (all multipliers) or "
                f"big_m={{{side.component.name}: (M_primal, M_dual)}}"
            )
        side.m_dual = m_dual
        side.binary = k.active_side.add()
        k.multiplier_bigm.add(side.multiplier <= m_dual * side.binary)
        k.slack_bigm.add(side.slack <= m_primal * (1 - side.binary))


def _add_strong_duality(follower: Follower, big_m: _MBounds, bounds: _SlackBounds) -> None:
    """cost <= dual objective, with binary-leader products linearised exactly."""
    k = follower.block.kkt
    k.product = pyo.VarList(doc="w = x z for a binary leader x (McCormick, exact)")
    k.product_envelope = pyo.ConstraintList(
        doc="zL x <= w <= zU x;  z - zU (1 - x) <= w <= z - zL (1 - x)"
    )
    given = ComponentMap(
        (s.multiplier, big_m.given(s.component, s.sense)[1]) for s in follower.sides
    )
    for side in follower.sides:  # some optimal dual has it at 0 (see dual_bounds)
        if given[side.multiplier] == 0.0:
            side.multiplier.fix(0.0)
    bounds_of = ComponentMap((y, (0.0, m)) for y, m in given.items())
    primal = _linearise(follower, follower.cost, bounds_of, bounds)
    dual = _linearise(follower, follower.dual_objective, bounds_of, bounds)
    for side in follower.sides:  # only multipliers in a product are bounded by their M
        if side.multiplier in follower._in_products:
            side.m_dual = given[side.multiplier]
    k.strong_duality = pyo.Constraint(
        expr=primal <= dual, doc="sum_j (c_j + q_j.x) y_j <= sum_i dual_i rhs_i(x)"
    )


def _linearise(follower, expr, bounds_of: ComponentMap, bounds: _SlackBounds):
    """Replace each product (binary leader x) * (follower y or multiplier) by w."""
    repn = generate_standard_repn(expr, compute_values=True, quadratic=True)
    if repn.nonlinear_expr is not None:
        raise KKTError(f"follower {follower.block.name}: strong duality term is not bilinear")
    leader = ComponentSet(follower.leader_variables)
    terms = [repn.constant]
    terms += [c * v for v, c in zip(repn.linear_vars, repn.linear_coefs, strict=True)]
    for (v, w), c in zip(repn.quadratic_vars, repn.quadratic_coefs, strict=True):
        x, z = (v, w) if v in leader else (w, v)
        if not x.is_binary():
            raise KKTError(
                f"follower {follower.block.name}: strong duality multiplies leader variable "
                f"{x.name} by {z.name}; it is exact and linear only for a binary leader "
                "variable; use method='bigm'"
            )
        terms.append(c * _product(follower, x, z, bounds_of, bounds))
    return sum(terms)


def _product(follower, x, z, bounds_of: ComponentMap, bounds: _SlackBounds):
    k = follower.block.kkt
    lo, hi = bounds_of.get(z, (None, None))
    if z not in bounds_of:
        lo = -bounds.upper(-z) if bounds.upper(-z) is not None else None
        hi = bounds.upper(z)
    if lo is None or hi is None:
        raise KKTError(
            f"follower {follower.block.name}: {z.name} needs finite bounds to linearise "
            f"{x.name} * {z.name}; bound it or pass big_m"
        )
    follower._in_products.add(z)
    w = k.product.add()
    k.product_envelope.add(w >= lo * x)
    k.product_envelope.add(w <= hi * x)
    k.product_envelope.add(w <= z - lo * (1 - x))
    k.product_envelope.add(w >= z - hi * (1 - x))
    return w


# --- verification -------------------------------------------------------------------


def _followers_of(model: pyo.Block, lower) -> list[Follower]:
    known = getattr(model, "_gridmarkets_kkt", [])
    if lower is None:
        return list(known)
    blocks = [lower] if isinstance(lower, pyo.Block) else list(lower)
    by_block = {id(f.block): f for f in known}
    missing = [b.name for b in blocks if id(b) not in by_block]
    if missing:
        raise KKTError(f"verify: {', '.join(missing)} were not reformulated by reformulate()")
    return [by_block[id(b)] for b in blocks]


def _check(follower: Follower, tol: float, resolve: bool = True) -> FollowerCheck:
    """Re-solve one follower with the leader fixed; compare costs; list sides at M."""
    from gridmarkets.solvers.highs import solve

    value = float(pyo.value(follower.cost))
    at_bound, at_derived = _sides_at_bound(follower, tol)
    if not resolve:
        name = follower.block.name
        return FollowerCheck(name, value, math.nan, math.nan, at_bound, at_derived, False)
    snapshot = ComponentMap((v, v.value) for v in follower.block.component_data_objects(pyo.Var))
    leader_fixed = [x for x in follower.leader_variables if not x.fixed]
    kkt = follower.block.kkt
    try:
        for x in leader_fixed:  # at its value, clipped into its bounds (solver round-off)
            at = x.value if x.lb is None else max(x.value, x.lb)
            x.fix(at if x.ub is None else min(at, x.ub))
        kkt.deactivate()
        follower.objective.activate()
        if follower._rows:
            solve(follower.block)
        else:  # bounds only (HiGHS reports an empty model): each y at its cheaper bound
            _solve_box(follower)
        optimum = float(pyo.value(follower.cost))
    finally:
        follower.objective.deactivate()
        kkt.activate()
        for x in leader_fixed:
            x.unfix()
        for v, val in snapshot.items():
            v.set_value(val, skip_validation=True)
    return FollowerCheck(follower.block.name, value, optimum, value - optimum, at_bound, at_derived)


def _solve_box(follower: Follower) -> None:
    for y in follower.variables:
        c, q = follower._gradient[id(y)]
        slope = c + pyo.value(q)
        bound = y.lb if slope > 0 else y.ub if slope < 0 else (y.lb if y.has_lb() else y.ub)
        if bound is None:
            raise KKTError(f"follower {follower.block.name} is unbounded in {y.name}")
        y.set_value(bound)


def _sides_at_bound(follower: Follower, tol: float) -> tuple[list[str], list[str]]:
    """(sides at a given M, sides whose multiplier is at its derived bound)."""
    flagged, derived = [], []
    for side in follower.sides:
        lam = side.multiplier.value or 0.0
        if side.m_dual is not None and side.m_dual > 0 and lam >= side.m_dual * (1 - tol):
            label = f"{side.label}: multiplier {lam:g} at M_dual {side.m_dual:g}"
            (derived if side.m_dual_derived else flagged).append(label)
        slack = pyo.value(side.slack)
        if side.m_primal_given and side.m_primal and slack >= side.m_primal * (1 - tol):
            flagged.append(f"{side.label}: slack {slack:g} at given M_primal {side.m_primal:g}")
    return flagged, derived
