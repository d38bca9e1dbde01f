"""Consensus ADMM for bilateral exchange.

The problem (the peer-to-peer market of :mod:`gridmarkets.models.p2p`, and any market
of agents that trade bilaterally and otherwise only face their own price-quantity
steps): for every agent ``i`` and period ``t``, minimise over its own decisions

    sum_items side * threshold * taken
        + sum_j (s_ij max(x_ij, 0) + b_ij max(-x_ij, 0) + gamma/2 x_ij^2)
    s.t.  sum_supply taken - sum_demand taken = sum_j x_ij        (energy balance, kW)
          0 <= taken <= quantity                                  (kW)

where ``x_ij`` is what i sells to j (negative: buys), supply items (sell blocks, grid
import) cost their threshold and demand items (buy blocks, grid export) earn theirs
(currency/MWh), and ``s_ij``, ``b_ij`` (per period) are what i pays per MWh it sells to
/ buys from j. The agents are coupled only by reciprocity, ``x_ij + x_ji = 0``.

Consensus ADMM (Boyd et al. 2011, section 7; the P2P form of Sorin, Bobo and Pinson,
IEEE TPWRS 34(2) 2019) copies every trade into a consensus variable ``z`` with
``z_ij = -z_ji`` and iterates

    x^{k+1}_i = argmin local_i(x_i) + rho/2 sum_j (x_ij - z_ij^k + u_ij^k)^2   (per agent)
    z^{k+1}_ij = (x_ij^{k+1} - x_ji^{k+1}) / 2                                   (exchange)
    u^{k+1}_ij = u_ij^k + (x_ij^{k+1} + x_ji^{k+1}) / 2                          (prices)

(with over-relaxation, ``alpha x + (1 - alpha) z^k`` in place of ``x`` in the last two)

Each agent's step is solved exactly in closed form (:class:`ClosedFormStep`): for a
multiplier ``mu`` of its energy balance every trade is a soft threshold, ``x_ij =
(max(w - s_ij, 0) + min(w + b_ij, 0)) / (gamma + rho)`` with ``w = rho a_ij - mu``,
and every item is taken when its threshold is on the right side of ``mu``; the balance
is a non-increasing piecewise-linear function of ``mu`` whose root is found exactly by
sorting its breakpoints (all agents and periods at once, numpy), and items whose
threshold is ``mu`` close the balance. The bilateral price of the trade i -> j is
``-rho u_ij`` (currency/MWh); ``z`` is reciprocal exactly, and the stopping test is
Boyd's on the primal residual ``||x - z||`` and the dual residual ``rho ||z^{k+1} -
z^k||``, with a bounded number of residual-balancing changes of ``rho``.

Distribution: the agents are split into groups (:class:`PeerGroup`, one peer each at
the finest), each holding only its own data (:class:`LocalPart`). Per iteration the
coordinator sends every group its rows of ``z - u`` and ``rho`` and receives its
trades, taken items and multipliers; the exchange and price steps are the
coordinator's. With a ``dask.distributed`` client the groups are Dask actors on the
cluster's workers (a DSO's machines, or one per aggregator), and the run is the same
as in one process.

Agents whose own problem is not a set of steps -- quadratic costs, storage, an energy
budget coupling their periods -- are :class:`ModelAgent`: their own decisions are a
Pyomo model, and their step is that model plus their trades and the penalty above,
a convex QP solved with :func:`gridmarkets.solvers.solve` (the same layer as every
central model); their balance multipliers are the duals of its balances.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import scipy.sparse as sp

from gridmarkets.errors import InputError
from gridmarkets.log import track
from gridmarkets.solvers.highs import compile_model, highs_options, solve_compiled


class ModelAgent:
    """An agent whose own problem is a Pyomo model, stepped as a QP through the solve layer.

    Parameters
    ----------
    model : a Pyomo model of the agent's own decisions, with no objective.
    injection_kw : per period (in order), the expression of what the agent injects
        into its trades (kW): its own supply minus demand, grid trade included.
    welfare : the agent's own welfare (currency), maximised.
    period_hours : length of a period (h), which turns welfare into the step's units.

    :meth:`attach` (called by :class:`ExchangeProblem`) adds its trades ``admm_sell_kw``,
    ``admm_buy_kw`` (kW >= 0) with its partners, the balance ``trade_balance[k]``:
    ``injection_kw[k] - sum_p (sell_kw[p,k] - buy_kw[p,k]) = 0``, whose duals are its
    balance multipliers (currency/MWh), and the objective ``own_step``; the model is
    compiled once (:func:`~gridmarkets.solvers.highs.compile_model`). Each
    :meth:`step` adds the penalty ``rho/2 (x - a)^2`` to the compiled arrays (it changes
    every iteration; ``x = sell - buy``) and solves them with
    :func:`~gridmarkets.solvers.highs.solve_compiled`, which loads the point into the
    model: after the run the model holds the agent's last step.
    """

    def __init__(
        self, model: pyo.ConcreteModel, injection_kw: list, welfare: Any, period_hours: float
    ) -> None:
        self.model = model
        self.injection_kw = injection_kw
        self.welfare = welfare
        self.per_mwh = 1000.0 / period_hours

    def attach(self, rows: np.ndarray, sell: np.ndarray, buy: np.ndarray, quadratic: float) -> None:
        """Add trades over ``rows`` (the agent's pairs) with their costs, the balance and
        the objective without the penalty, and compile."""
        m, n_t = self.model, sell.shape[1]
        self.rows = rows
        m.ADMM_PAIRS = pyo.RangeSet(0, len(rows) - 1, doc="the agent's trading pairs")
        m.ADMM_PERIODS = pyo.RangeSet(0, n_t - 1, doc="period positions")
        index = (m.ADMM_PAIRS, m.ADMM_PERIODS)
        m.admm_sell_kw = pyo.Var(*index, bounds=(0, None), doc="sold to partner p  (kW)")
        m.admm_buy_kw = pyo.Var(*index, bounds=(0, None), doc="bought from partner p  (kW)")
        m.trade_balance = pyo.Constraint(
            m.ADMM_PERIODS,
            rule=lambda m, k: (
                self.injection_kw[k]
                - sum(m.admm_sell_kw[p, k] - m.admm_buy_kw[p, k] for p in m.ADMM_PAIRS)
                == 0
            ),
            doc="injection[k] - sum_p (sell[p,k] - buy[p,k]) = 0  (kW); dual: the agent's "
            "balance multiplier (currency/MWh)",
        )

        def trade_cost(m, p, k):
            x = m.admm_sell_kw[p, k] - m.admm_buy_kw[p, k]
            paid = sell[p, k] * m.admm_sell_kw[p, k] + buy[p, k] * m.admm_buy_kw[p, k]
            return paid + quadratic / 2 * x**2 if quadratic else paid

        m.own_step = pyo.Objective(
            expr=-self.per_mwh * self.welfare
            + sum(trade_cost(m, p, k) for p in m.ADMM_PAIRS for k in m.ADMM_PERIODS),
            doc="-welfare 1000/dt + sum s sell + b buy + gamma/2 x^2  ((currency/MWh) kW); "
            "each step adds rho/2 (x - a)^2",
        )
        self._compile()

    def _compile(self) -> None:
        m = self.model
        self.form = compile_model(m)
        self.cost = np.asarray(self.form.lp.col_cost_, dtype=float).copy()
        self.offset = self.form.objective_offset
        n = len(self.form.columns)
        self.base_hessian = sp.csc_array((n, n)) if self.form.hessian is None else self.form.hessian
        where = {id(v): k for k, v in enumerate(self.form.columns)}
        shape = (len(m.ADMM_PAIRS), len(m.ADMM_PERIODS))
        self.sell_col = np.array([where[id(m.admm_sell_kw[i])] for i in m.admm_sell_kw])
        self.buy_col = np.array([where[id(m.admm_buy_kw[i])] for i in m.admm_buy_kw])
        self.sell_col, self.buy_col = self.sell_col.reshape(shape), self.buy_col.reshape(shape)
        s, b = self.sell_col.ravel(), self.buy_col.ravel()
        rows, cols = np.concatenate([s, b, s, b]), np.concatenate([s, b, b, s])
        values = np.repeat([1.0, 1.0, -1.0, -1.0], s.size)
        self.penalty_hessian = sp.csc_array((values, (rows, cols)), shape=(n, n))  # (s - b)^2

    def step(self, target_kw: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
        """The agent's trades (its pairs x periods) and balance multipliers (periods):
        the compiled objective plus ``rho/2 (sell - buy - a)^2``."""
        form, lp = self.form, self.form.lp
        cost = self.cost.copy()
        np.add.at(cost, self.sell_col.ravel(), -rho * target_kw.ravel())
        np.add.at(cost, self.buy_col.ravel(), rho * target_kw.ravel())
        lp.col_cost_ = cost
        form.hessian = self.base_hessian + rho * self.penalty_hessian
        form.objective_offset = self.offset + rho / 2 * float(np.sum(target_kw**2))
        lp.offset_ = form.objective_offset
        self.solution = solve_compiled(self.model, form, 0.0, highs_options())
        value = np.array([v.value for v in form.columns])
        x = value[self.sell_col] - value[self.buy_col]
        mu = self.solution.dual(self.model.trade_balance).to_numpy()
        return x, mu


@dataclass
class Curves:
    """Quadratic curves in closed-form agents' own problems, one entry per unit.

    A supply curve costs ``a p^2 + b p`` and a demand curve is worth ``b p - a p^2``
    ((currency/MWh) kW) for ``p_min <= p <= p_max`` (kW); at a balance multiplier
    ``mu`` a supply curve gives ``p = clip((mu - b) / 2a, p_min, p_max)`` and a demand
    curve takes ``p = clip((b - mu) / 2a, p_min, p_max)``: two kinks each in the
    balance, ``mu = b + 2a p_min`` and ``b + 2a p_max`` (supply) or ``b - 2a p_max``
    and ``b - 2a p_min`` (demand). ``a > 0`` (a flat curve is a block).
    """

    unit: np.ndarray
    supply: np.ndarray
    a: np.ndarray
    b: np.ndarray
    p_min_kw: np.ndarray
    p_max_kw: np.ndarray

    @classmethod
    def none(cls) -> Curves:
        empty = np.zeros(0)
        return cls(np.zeros(0, dtype=int), np.zeros(0, dtype=bool), empty, empty, empty, empty)

    def __post_init__(self) -> None:
        if (np.asarray(self.a) <= 0).any():
            raise InputError("ADMM curves: a must be > 0 (a flat curve is a block item)")
        if (np.asarray(self.p_max_kw) < np.asarray(self.p_min_kw)).any():
            raise InputError("ADMM curves: p_max_kw below p_min_kw")

    def take(self, rows: np.ndarray, unit: np.ndarray) -> Curves:
        """The entries ``rows``, renumbered to ``unit``."""
        return Curves(
            unit, *(getattr(self, n)[rows] for n in ("supply", "a", "b", "p_min_kw", "p_max_kw"))
        )

    def kinks(self) -> tuple[np.ndarray, np.ndarray]:
        """The two kinks of every curve in the balance (currency/MWh), ascending."""
        two_a = 2 * self.a
        low = np.where(self.supply, self.b + two_a * self.p_min_kw, self.b - two_a * self.p_max_kw)
        high = np.where(self.supply, self.b + two_a * self.p_max_kw, self.b - two_a * self.p_min_kw)
        return low, high

    def power_kw(self, mu: np.ndarray) -> np.ndarray:
        """Each curve's output or consumption at its unit's multiplier (kW)."""
        free = np.where(self.supply, mu - self.b, self.b - mu) / (2 * self.a)
        return np.clip(free, self.p_min_kw, self.p_max_kw)


@dataclass
class ExchangeProblem:
    """Every agent's local problem as flat arrays (see the module docstring).

    A *unit* is one agent in one period, numbered ``agent * n_periods + period``.

    Attributes
    ----------
    n_agents, n_periods : sizes.
    item_unit : (items,) unit of each price-quantity step.
    item_supply : (items,) True for supply (taken when the balance price is above
        its threshold), False for demand (taken when below).
    item_threshold : (items,) price of the step (currency/MWh).
    item_quantity_kw : (items,) size of the step (kW); ``inf`` for an unlimited grid.
    pair_from, pair_to : (pairs,) agents of each ordered trading pair; both
        directions of every edge are present.
    pair_cost : (pairs,) or (pairs x periods): what ``pair_from`` pays per MWh it
        sells to ``pair_to`` (currency/MWh, >= 0), and per MWh it buys unless
        ``pair_buy_cost`` is given.
    pair_buy_cost : like ``pair_cost``: what ``pair_from`` pays per MWh it buys from
        ``pair_to``; None: ``pair_cost``.
    model_agents : agents (by number) stepped by their own model instead of the closed
        form; their items, if any, are ignored.
    curves : quadratic curves (:class:`Curves`) of closed-form agents, or None.
    quadratic : ``gamma``: the strictly convex trade term ((currency/MWh)/kW, >= 0).
    """

    n_agents: int
    n_periods: int
    item_unit: np.ndarray
    item_supply: np.ndarray
    item_threshold: np.ndarray
    item_quantity_kw: np.ndarray
    pair_from: np.ndarray
    pair_to: np.ndarray
    pair_cost: np.ndarray
    quadratic: float = 0.0
    pair_buy_cost: np.ndarray | None = None
    model_agents: dict[int, ModelAgent] = field(default_factory=dict)
    curves: Curves | None = None
    reverse: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        position = {
            (a, b): k for k, (a, b) in enumerate(zip(self.pair_from, self.pair_to, strict=True))
        }
        missing = [(a, b) for a, b in position if (b, a) not in position]
        if missing:
            raise InputError(f"ADMM pairs: {missing[0]} has no reverse pair")
        shape = (len(self.pair_from), self.n_periods)
        buy = self.pair_cost if self.pair_buy_cost is None else self.pair_buy_cost
        for name, cost in (("pair_cost", self.pair_cost), ("pair_buy_cost", buy)):
            cost = np.asarray(cost, dtype=float)
            if cost.shape not in (shape, shape[:1]):
                raise InputError(
                    f"ADMM {name}: shape {cost.shape}, expected {shape} or {shape[:1]}"
                )
            if (cost < 0).any():
                raise InputError(f"ADMM {name}: negative costs")
        if self.quadratic < 0:
            raise InputError("ADMM quadratic term: must not be negative")
        self._check_unlimited()
        if self.curves is None:
            self.curves = Curves.none()
        self.pair_cost = _per_period(self.pair_cost, shape)
        self.pair_buy_cost = _per_period(buy, shape)
        for agent, model in self.model_agents.items():
            rows = np.flatnonzero(self.pair_from == agent)
            model.attach(rows, self.pair_cost[rows], self.pair_buy_cost[rows], self.quadratic)
        self.reverse = np.array([position[(b, a)] for a, b in position], dtype=int)

    def _check_unlimited(self) -> None:
        """An unlimited supply below an unlimited demand of the same unit is an
        unbounded arbitrage (buy from one, sell to the other without end)."""
        unlimited = ~np.isfinite(self.item_quantity_kw)
        for supply, reduce, fill in ((True, np.minimum, np.inf), (False, np.maximum, -np.inf)):
            mask = unlimited & (self.item_supply == supply)
            bound = np.full(self.n_units, fill)
            reduce.at(bound, self.item_unit[mask], self.item_threshold[mask])
            if supply:
                cheapest = bound
        unit = np.flatnonzero(bound > cheapest)
        if unit.size:
            agent, period = divmod(int(unit[0]), self.n_periods)
            raise InputError(
                f"ADMM items: agent {agent}, period position {period}: an unlimited supply "
                "is priced below an unlimited demand (unbounded)"
            )

    @property
    def n_units(self) -> int:
        return self.n_agents * self.n_periods


@dataclass
class ADMMResult:
    """What :func:`consensus_admm` returns.

    Attributes
    ----------
    trade_kw : (pairs x periods) consensus trades ``z`` (what ``pair_from`` sells to
        ``pair_to``), reciprocal exactly: ``trade_kw[p] == -trade_kw[reverse[p]]``.
    proposal_kw : (pairs x periods) the agents' last own proposals ``x``.
    price : (pairs x periods) bilateral prices ``-rho u`` (currency/MWh).
    taken_kw : (items,) the items' taken quantities at the last local step.
    curve_kw : (curves,) the curves' output or consumption at the last local step.
    balance_price : (agents x periods) each agent's balance multiplier (currency/MWh).
    log : one row per iteration: iteration, primal_residual, dual_residual,
        primal_tolerance, dual_tolerance, rho (kW, kW-scaled and (currency/MWh)/kW).
    converged, iterations, seconds : how it ended.
    """

    trade_kw: np.ndarray
    proposal_kw: np.ndarray
    price: np.ndarray
    taken_kw: np.ndarray
    curve_kw: np.ndarray
    balance_price: np.ndarray
    log: pd.DataFrame
    converged: bool
    iterations: int
    seconds: float


def _per_period(cost: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    cost = np.asarray(cost, dtype=float)
    return np.broadcast_to(cost[:, None] if cost.ndim == 1 else cost, shape).copy()


def _soft(w: np.ndarray, sell: np.ndarray, buy: np.ndarray) -> np.ndarray:
    """Asymmetric soft threshold ``max(w - sell, 0) + min(w + buy, 0)`` (costs >= 0)."""
    return np.maximum(w - sell, 0.0) + np.minimum(w + buy, 0.0)


@dataclass
class LocalPart:
    """What a group of agents needs for its own steps, and nothing else (picklable).

    ``rows`` are the group's trading pairs (those its agents sell on) and ``items`` its
    closed-form agents' items, as positions in the :class:`ExchangeProblem`. A *local
    unit* is one closed-form agent of the group in one period, numbered ``position in
    closed * n_periods + period``; ``row_unit`` (per closed row: rows whose owner is
    not a model agent) and ``item_unit`` are its number.
    """

    n_periods: int
    agents: np.ndarray
    closed: np.ndarray
    rows: np.ndarray
    closed_rows: np.ndarray
    row_unit: np.ndarray
    sell_cost: np.ndarray
    buy_cost: np.ndarray
    items: np.ndarray
    item_unit: np.ndarray
    item_supply: np.ndarray
    item_threshold: np.ndarray
    item_quantity_kw: np.ndarray
    quadratic: float
    model_agents: dict[int, ModelAgent]
    curve_rows: np.ndarray
    curves: Curves

    @classmethod
    def of(cls, problem: ExchangeProblem, agents) -> LocalPart:
        """The part of ``problem`` that the ``agents`` hold."""
        n_t = problem.n_periods
        agents = np.unique(np.asarray(agents, dtype=int))
        closed = np.array([a for a in agents if a not in problem.model_agents], dtype=int)
        local = np.full(problem.n_agents, -1)
        local[closed] = np.arange(closed.size)
        rows = np.flatnonzero(np.isin(problem.pair_from, agents))
        closed_rows = local[problem.pair_from[rows]] >= 0
        mine = rows[closed_rows]
        items = np.flatnonzero(np.isin(problem.item_unit // n_t, closed))
        item_agent, item_period = np.divmod(problem.item_unit[items], n_t)
        curve_rows = np.flatnonzero(np.isin(problem.curves.unit // n_t, closed))
        curve_agent, curve_period = np.divmod(problem.curves.unit[curve_rows], n_t)
        return cls(
            n_periods=n_t,
            agents=agents,
            closed=closed,
            rows=rows,
            closed_rows=closed_rows,
            row_unit=local[problem.pair_from[mine]],
            sell_cost=problem.pair_cost[mine],
            buy_cost=problem.pair_buy_cost[mine],
            items=items,
            item_unit=local[item_agent] * n_t + item_period,
            item_supply=problem.item_supply[items],
            item_threshold=problem.item_threshold[items],
            item_quantity_kw=problem.item_quantity_kw[items],
            quadratic=problem.quadratic,
            model_agents={int(a): problem.model_agents[a] for a in agents if a not in closed},
            curve_rows=curve_rows,
            curves=problem.curves.take(curve_rows, local[curve_agent] * n_t + curve_period),
        )


class ClosedFormStep:
    """The exact local steps of closed-form agents, vectorised over their units.

    For a balance multiplier ``mu`` every trade is a soft threshold of ``rho a - mu``
    and every item is whole or nothing, so the balance ``g(mu) = sum_j x_j(mu) +
    demand(mu) - supply(mu)`` (kW) is non-increasing and piecewise linear in ``mu``,
    with kinks at ``rho a_j - s_j`` and ``rho a_j + b_j`` (a trade starts / stops being
    zero) and downward jumps of ``quantity`` at item thresholds. The step sorts every
    unit's breakpoints (one padded row per unit), accumulates ``g``'s intercept, slope
    and jumps along them (cumulative sums), and finds the root exactly: the first
    breakpoint where ``g`` from the right is <= 0 is the root when ``g`` from its left
    is >= 0 (a jump or kink crosses zero), else the root is the zero of the linear
    piece before it, ``mu = -intercept / slope``. Unlimited items (an uncapped grid)
    count as infinite jumps. Items exactly at ``mu`` then share what closes the balance.
    """

    def __init__(self, part: LocalPart):
        self.part = part
        n_t = part.n_periods
        self.n_units = n_units = part.closed.size * n_t
        t = np.arange(n_t)
        self.pair_unit = (part.row_unit[:, None] * n_t + t[None, :]).ravel()
        curves = part.curves
        units = np.concatenate(
            [self.pair_unit, self.pair_unit, part.item_unit, curves.unit, curves.unit]
        )
        counts = np.bincount(units, minlength=n_units)
        self.width = int(counts.max(initial=0)) + 1  # at least one padding slot per unit
        order = np.argsort(units, kind="stable")
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.empty(units.size, dtype=np.int64)
        slot[order] = units[order] * self.width + np.arange(units.size) - start[units[order]]
        n_pairs = self.pair_unit.size
        self.sell_slot, self.buy_slot = slot[:n_pairs], slot[n_pairs : 2 * n_pairs]
        self.item_slot, curve_slot = np.split(slot[2 * n_pairs :], [part.item_unit.size])
        self.curve_low_slot, self.curve_high_slot = np.split(curve_slot, 2)
        # a curve's balance term: constant below its low kink and above its high one,
        # b/2a - mu/2a between (supply -p, demand +p)
        self.curve_low = np.where(curves.supply, -curves.p_min_kw, curves.p_max_kw)
        self.curve_high = np.where(curves.supply, -curves.p_max_kw, curves.p_min_kw)
        self.unlimited = ~np.isfinite(part.item_quantity_kw)
        self.finite_q = np.where(self.unlimited, 0.0, part.item_quantity_kw)
        self.sign = np.where(part.item_supply, -1.0, 1.0)  # contribution to g when taken
        demand = ~part.item_supply
        self.base_jump = np.bincount(part.item_unit, self.finite_q * demand, n_units).astype(float)
        self.base_jump += np.bincount(curves.unit, self.curve_low, n_units)
        self.base_infinite = np.bincount(part.item_unit, self.unlimited & demand, n_units)
        self.base_infinite = self.base_infinite.astype(float)
        self.pairs_per_unit = np.bincount(self.pair_unit, minlength=n_units)

    def _layout(self, v_sell, v_buy, c):
        """Breakpoints and what ``g`` gains at each (intercept, slope, infinite count)."""
        part, size = self.part, self.n_units * self.width
        value = np.full(size, np.inf)
        gain = np.zeros((3, size))
        value[self.sell_slot], value[self.buy_slot] = v_sell, v_buy
        gain[0, self.sell_slot], gain[0, self.buy_slot] = -c * v_sell, c * v_buy
        gain[1, self.sell_slot], gain[1, self.buy_slot] = c, -c
        value[self.item_slot] = part.item_threshold
        gain[0, self.item_slot] = -self.finite_q
        gain[2, self.item_slot] = -1.0 * self.unlimited
        curves = part.curves
        value[self.curve_low_slot], value[self.curve_high_slot] = curves.kinks()
        free = curves.b / (2 * curves.a)
        gain[0, self.curve_low_slot] = free - self.curve_low
        gain[0, self.curve_high_slot] = self.curve_high - free
        gain[1, self.curve_low_slot] = -1 / (2 * curves.a)
        gain[1, self.curve_high_slot] = 1 / (2 * curves.a)
        return value.reshape(self.n_units, self.width), gain

    def root(self, target_kw: np.ndarray, rho: float) -> np.ndarray:
        """Every unit's balance multiplier ``mu`` (currency/MWh) for targets ``a``.

        The state of ``g`` on a piece is its intercept, slope and infinite count (the
        unlimited demand still taken minus the unlimited supply already taken: > 0,
        ``g = +inf``; < 0, ``g = -inf``).
        """
        part, c = self.part, 1.0 / (self.part.quadratic + rho)
        w = (rho * target_kw).ravel()
        v_sell, v_buy = w - part.sell_cost.ravel(), w + part.buy_cost.ravel()
        value, gain = self._layout(v_sell, v_buy, c)
        order = np.argsort(value, axis=1, kind="stable")
        value = np.take_along_axis(value, order, axis=1)
        flat = order + (np.arange(self.n_units) * self.width)[:, None]
        base = np.stack(
            [
                np.bincount(self.pair_unit, c * v_sell, self.n_units) + self.base_jump,
                -c * self.pairs_per_unit,
                self.base_infinite,
            ]
        )[:, :, None]
        state = base + np.cumsum(gain[:, flat], axis=2)
        right = np.where(np.isfinite(value), _g(state, value), -np.inf)
        k = np.argmax(right <= 0, axis=1)
        rows = np.arange(self.n_units)
        before = np.where(k > 0, state[:, rows, np.maximum(k - 1, 0)], base[:, :, 0])
        at = value[rows, k]
        intercept, slope = before[0], before[1]
        left = np.where(np.isfinite(at), _g(before, at), np.where(slope < 0, -np.inf, intercept))
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = np.where(left >= 0, at, -intercept / slope)
        return np.where(np.isfinite(mu), mu, 0.0)  # a unit with nothing to decide: 0

    def step(self, target_kw: np.ndarray, rho: float):
        """Trades (rows x periods), taken items, multipliers (units) and curves' power."""
        part = self.part
        mu = self.root(target_kw, rho)
        w = rho * target_kw - mu[self.pair_unit].reshape(target_kw.shape)
        x = _soft(w, part.sell_cost, part.buy_cost) / (part.quadratic + rho)
        m = mu[part.item_unit]
        flex = part.item_threshold == m
        firm = np.where(part.item_supply, m > part.item_threshold, m < part.item_threshold)
        taken = np.where(firm, self.finite_q, 0.0)
        residual = np.bincount(self.pair_unit, x.ravel(), self.n_units)
        residual += np.bincount(part.item_unit, self.sign * taken, self.n_units)
        curve_kw = part.curves.power_kw(mu[part.curves.unit])
        curve_sign = np.where(part.curves.supply, -1.0, 1.0)
        residual += np.bincount(part.curves.unit, curve_sign * curve_kw, self.n_units)
        taken += self._fill(flex, residual)
        return x, taken, mu, curve_kw

    def _fill(self, flex: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """Share each unit's residual among its flexible items on the side that closes it."""
        part, n = self.part, self.n_units
        need = residual[part.item_unit]  # > 0: supply must rise (or demand fall)
        useful = flex & np.where(part.item_supply, need > 0, need < 0)
        unlimited = useful & self.unlimited
        has_unlimited = np.bincount(part.item_unit, unlimited, n) > 0
        room = np.where(useful & ~self.unlimited, self.finite_q, 0.0)
        total = np.bincount(part.item_unit, room, n)[part.item_unit]
        share = np.where(total > 0, room / np.maximum(total, 1e-300), 0.0)
        amount = np.minimum(np.abs(need), total) * share
        return np.where(has_unlimited[part.item_unit], np.where(unlimited, np.abs(need), 0), amount)


def _g(state: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """The balance at ``mu`` on a piece of state (intercept, slope, infinite count)."""
    with np.errstate(invalid="ignore"):
        finite = state[0] + state[1] * mu
    return np.where(state[2] > 0, np.inf, np.where(state[2] < 0, -np.inf, finite))


class PeerGroup:
    """A group of agents stepping on their own: the unit a DSO would place on a machine.

    It holds only its :class:`LocalPart` (its agents' items, its trading pairs' costs,
    its model agents) and exchanges with the coordinator only arrays: it receives its
    rows of ``z - u`` and ``rho`` and returns its trades, taken items and multipliers.
    As a Dask actor (:func:`dask_groups`) each group lives on a worker.
    """

    def __init__(self, part: LocalPart):
        self.part = part
        self.closed = ClosedFormStep(part)

    def step(self, target_kw: np.ndarray, rho: float):
        """This group's trades (its rows x periods), taken items, multipliers (its
        agents x periods, model agents included) and curves' power (kW)."""
        part, n_t = self.part, self.part.n_periods
        x = np.zeros_like(target_kw)
        step = self.closed.step(target_kw[part.closed_rows], rho)
        x[part.closed_rows], taken, mu_closed, curve_kw = step
        mu = np.zeros((part.agents.size, n_t))
        mu[np.isin(part.agents, part.closed)] = mu_closed.reshape(-1, n_t)
        for agent, model in part.model_agents.items():
            at = np.searchsorted(part.rows, model.rows)
            x[at], mu[np.searchsorted(part.agents, agent)] = model.step(target_kw[at], rho)
        return x, taken, mu, curve_kw


def dask_groups(client: Any, parts: list[LocalPart]) -> list[Any]:
    """One Dask actor per part (:class:`PeerGroup`), created on the cluster's workers.

    Each actor keeps its part on its worker; every iteration the coordinator sends it
    only its rows of ``z - u`` and ``rho`` and receives its trades, taken items and
    multipliers.
    """
    return [client.submit(PeerGroup, part, actor=True).result() for part in parts]


def _step_all(groups: list[Any], parts: list[LocalPart], target: np.ndarray, rho: float, out):
    """Every group's step; actors' calls are all sent before any answer is awaited."""
    x, taken, mu, curve_kw = out
    calls = [g.step(target[part.rows], rho) for g, part in zip(groups, parts, strict=True)]
    for call, part in zip(calls, parts, strict=True):
        x[part.rows], taken[part.items], mu[part.agents], curve_kw[part.curve_rows] = (
            call.result() if hasattr(call, "result") else call
        )


def consensus_admm(
    problem: ExchangeProblem,
    *,
    rho: float = 1.0,
    max_iterations: int = 5000,
    eps_abs: float = 1e-6,
    eps_rel: float = 1e-6,
    adapt_rho: bool = True,
    max_rho_changes: int = 30,
    relaxation: float = 1.0,
    groups: Sequence[Sequence[int]] | None = None,
    client: Any = None,
    time_limit: float | None = None,
) -> ADMMResult:
    """Solve an :class:`ExchangeProblem` by consensus ADMM (see the module docstring).

    Parameters
    ----------
    problem : the agents' local problems and their trading pairs.
    rho : initial penalty ((currency/MWh)/kW).
    max_iterations : stop here when not converged (``converged=False``).
    eps_abs, eps_rel : the stopping tolerances (Boyd et al. 2011, section 3.3.1): stop
        when ``||x - z|| <= eps_abs sqrt(n) + eps_rel max(||x||, ||z||)`` (kW) and
        ``rho ||z - z_prev|| <= eps_abs sqrt(n) + eps_rel ||rho u||`` (currency/MWh),
        ``n`` the number of trades. An LP's welfare is flat along cycles of trades whose
        preference costs nearly cancel, so trades settle long after welfare does.
    adapt_rho : residual balancing (Boyd et al. 2011, section 3.4.1, with mu = 10 and
        tau = 2): every 10 iterations, double ``rho`` when the primal residual exceeds
        ten times the dual one, halve it in the reverse case, rescaling ``u``.
    max_rho_changes : residual balancing stops after this many changes. ADMM converges
        for any fixed ``rho`` > 0 (Boyd et al. 2011, section 3.2), and the convergence
        proof carries over to a varying ``rho`` once it stays fixed after finitely
        many iterations (section 3.4.1), which this bound guarantees.
    relaxation : over-relaxation ``alpha`` in [1, 2) (Boyd et al. 2011, section 3.4.3):
        the exchange and price steps use ``alpha x + (1 - alpha) z``. 1 (none) by
        default: with 1.6 and residual balancing a 6-peer market settled into constant
        residuals above its tolerance (rho = 160) for 20,000 iterations, while each
        local step was exact; with 1 it converged in about 1,100.
    groups : a partition of the agents (by number; in a P2P market the positions in
        ``Market.agents``): each group steps on its own (:class:`PeerGroup`); None: one
        group of all.
    client : a ``dask.distributed.Client``: each group is a Dask actor on its workers
        (:func:`dask_groups`), the coordinator here exchanging arrays with them; the
        iterates are those of the in-process run.
    time_limit : stop after this many seconds when not converged (``converged=False``).

    Returns
    -------
    ADMMResult
    """
    started = time.perf_counter()
    parts = [LocalPart.of(problem, g) for g in (groups or [range(problem.n_agents)])]
    _check_partition(problem, parts)
    steppers = dask_groups(client, parts) if client is not None else [PeerGroup(p) for p in parts]
    shape = (len(problem.pair_from), problem.n_periods)
    z, u = np.zeros(shape), np.zeros(shape)
    x, taken = np.zeros(shape), np.zeros(len(problem.item_unit))
    mu = np.zeros((problem.n_agents, problem.n_periods))
    curve_kw = np.zeros(len(problem.curves.unit))
    rev = problem.reverse
    sqrt_n = np.sqrt(max(z.size, 1))
    rows: list[dict[str, float]] = []
    converged, changes = False, 0
    for k in track(range(1, max_iterations + 1), "ADMM iterations (at most)"):
        _step_all(steppers, parts, z - u, rho, (x, taken, mu, curve_kw))
        relaxed = relaxation * x + (1.0 - relaxation) * z
        z_new = 0.5 * (relaxed - relaxed[rev])
        u = u + 0.5 * (relaxed + relaxed[rev])
        primal = _norm(x - z_new)
        dual = rho * _norm(z_new - z)
        primal_tol = eps_abs * sqrt_n + eps_rel * max(_norm(x), _norm(z_new))
        dual_tol = eps_abs * sqrt_n + eps_rel * rho * _norm(u)
        rows.append(
            {
                "iteration": k,
                "primal_residual": primal,
                "dual_residual": dual,
                "primal_tolerance": primal_tol,
                "dual_tolerance": dual_tol,
                "rho": rho,
            }
        )
        z = z_new
        if primal <= primal_tol and dual <= dual_tol:
            converged = True
            break
        if time_limit is not None and time.perf_counter() - started > time_limit:
            break
        if adapt_rho and changes < max_rho_changes and k % 10 == 0:
            ratio = primal * dual_tol / max(dual * primal_tol, 1e-300)
            scale = 2.0 if ratio > 10 else 0.5 if ratio < 0.1 else 1.0
            if scale != 1.0:
                rho, u, changes = rho * scale, u / scale, changes + 1
    return ADMMResult(
        trade_kw=z,
        proposal_kw=x.copy(),
        price=-rho * u,
        taken_kw=taken,
        curve_kw=curve_kw,
        balance_price=mu,
        log=pd.DataFrame(rows),
        converged=converged,
        iterations=len(rows),
        seconds=time.perf_counter() - started,
    )


def _norm(a: np.ndarray) -> float:
    """Euclidean norm without BLAS (whose threads stall on a busy machine)."""
    return float(np.sqrt(np.einsum("ij,ij->", a, a)))


def _check_partition(problem: ExchangeProblem, parts: list[LocalPart]) -> None:
    owned = np.concatenate([p.agents for p in parts])
    if owned.size != problem.n_agents or set(owned.tolist()) != set(range(problem.n_agents)):
        raise InputError("ADMM groups: every agent must be in exactly one group")
