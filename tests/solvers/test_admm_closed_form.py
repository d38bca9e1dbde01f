"""The closed-form local step against the local problem minimised independently, and the
distributed run (Dask actors) against the in-process one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from gridmarkets.errors import InputError
from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream
from gridmarkets.solvers.admm import (
    ClosedFormStep,
    Curves,
    ExchangeProblem,
    LocalPart,
    consensus_admm,
)


def random_problem(rng: np.random.Generator, unlimited: bool) -> ExchangeProblem:
    """2-4 agents on a complete graph, 1-2 periods, 0-3 items per unit, a quadratic curve
    in about half the units; integer prices and costs (so breakpoints tie), and with
    ``unlimited`` an uncapped grid per unit."""
    n, n_t = int(rng.integers(2, 5)), int(rng.integers(1, 3))
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    units, supply, threshold, quantity = [], [], [], []
    for unit in range(n * n_t):
        for _ in range(int(rng.integers(0, 4))):
            units.append(unit)
            supply.append(bool(rng.integers(0, 2)))
            threshold.append(float(rng.integers(0, 12)))
            quantity.append(float(rng.integers(1, 6)))
        if unlimited:
            export = float(rng.integers(0, 6))
            units += [unit, unit]
            supply += [True, False]
            threshold += [export + float(rng.integers(0, 6)), export]
            quantity += [np.inf, np.inf]
    costs = rng.integers(0, 4, (len(pairs), n_t)).astype(float)
    curve_unit = np.flatnonzero(rng.random(n * n_t) < 0.5)
    low = rng.integers(0, 3, curve_unit.size).astype(float)
    curves = Curves(
        unit=curve_unit,
        supply=rng.random(curve_unit.size) < 0.5,
        a=rng.choice([0.25, 1.0, 2.0], curve_unit.size),
        b=rng.integers(0, 12, curve_unit.size).astype(float),
        p_min_kw=low,
        p_max_kw=low + rng.integers(0, 5, curve_unit.size),
    )
    return ExchangeProblem(
        n_agents=n,
        n_periods=n_t,
        item_unit=np.array(units, dtype=int),
        item_supply=np.array(supply, dtype=bool),
        item_threshold=np.array(threshold),
        item_quantity_kw=np.array(quantity),
        pair_from=np.array([a for a, _ in pairs]),
        pair_to=np.array([b for _, b in pairs]),
        pair_cost=costs,
        pair_buy_cost=rng.integers(0, 4, (len(pairs), n_t)).astype(float),
        quadratic=float(rng.choice([0.0, 0.5])),
        curves=curves,
    )


def curve_term(p: float, supply: bool, a: float, b: float) -> float:
    """A supply curve's cost, or minus a demand curve's utility ((currency/MWh) kW)."""
    return a * p**2 + b * p if supply else a * p**2 - b * p


def trade_term(x: float, sell: float, buy: float, gamma: float, rho: float, a: float) -> float:
    return sell * max(x, 0) + buy * max(-x, 0) + gamma / 2 * x**2 + rho / 2 * (x - a) ** 2


def dual_value(mu: float, terms: list, items: list, curves: list = ()) -> float:
    """min over the unit's trades, items and curves of its objective plus ``mu *
    balance``: each trade's and curve's by a bounded scalar minimisation (and a curve's
    bounds), each item's at 0 or its quantity."""
    value = 0.0
    for supply, a, b, low, high in curves:
        sign = -1.0 if supply else 1.0  # supply -p, demand +p in the balance

        def term(p, supply=supply, a=a, b=b, sign=sign):
            return curve_term(p, supply, a, b) + mu * sign * p

        found = minimize_scalar(term, bounds=(low, high), method="bounded") if high > low else None
        value += min(term(low), term(high), found.fun if found else np.inf)
    for sell, buy, gamma, rho, a in terms:
        lo, hi = -abs(a) - abs(mu) - 50, abs(a) + abs(mu) + 50
        found = minimize_scalar(
            lambda x: trade_term(x, sell, buy, gamma, rho, a) + mu * x,  # noqa: B023
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-10},
        )
        value += found.fun
    for is_supply, threshold, quantity in items:
        coef = (threshold - mu) if is_supply else (mu - threshold)
        value += min(0.0, coef * quantity) if np.isfinite(quantity) else min(0.0, coef) * 1e9
    return value


def finite_dual(items: list) -> tuple[float, float]:
    """Where the dual function is finite: an unlimited supply caps mu, an unlimited
    demand floors it."""
    low, high = -100.0, 100.0
    for is_supply, threshold, quantity in items:
        if not np.isfinite(quantity):
            low, high = (low, min(high, threshold)) if is_supply else (max(low, threshold), high)
    return low, high


@pytest.mark.unit
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), unlimited=st.booleans())
def test_closed_form_step_solves_the_local_problem(seed, unlimited):
    # blocks, quadratic curves, trades (with their proximal terms): every unit's step
    # is feasible (balance, item and curve bounds) and its objective equals the
    # maximum over mu of the dual function, each part of it minimised by scipy
    # (weak duality: no feasible point does better); mu is that maximiser
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, unlimited)
    rho = float(rng.choice([0.5, 1.0, 5.0]))
    target = rng.integers(-6, 7, (len(problem.pair_from), problem.n_periods)).astype(float)
    step = ClosedFormStep(LocalPart.of(problem, range(problem.n_agents)))
    x, taken, mu, curve_kw = step.step(target, rho)
    curves = problem.curves
    assert np.all(curve_kw >= curves.p_min_kw - 1e-12) and np.all(curve_kw <= curves.p_max_kw)
    assert np.all(taken >= -1e-12) and np.all(taken <= problem.item_quantity_kw + 1e-12)
    n_t = problem.n_periods
    for unit in range(problem.n_units):
        agent, t = divmod(unit, n_t)
        rows = np.flatnonzero(problem.pair_from == agent)
        mine = np.flatnonzero(problem.item_unit == unit)
        sign = np.where(problem.item_supply[mine], 1.0, -1.0)
        own = np.flatnonzero(curves.unit == unit)
        curve_sign = np.where(curves.supply[own], 1.0, -1.0)
        supplied = sign @ taken[mine] + curve_sign @ curve_kw[own]
        assert supplied == pytest.approx(x[rows, t].sum(), abs=1e-9)
        unit_curves = [
            (curves.supply[c], curves.a[c], curves.b[c], curves.p_min_kw[c], curves.p_max_kw[c])
            for c in own
        ]
        terms = [
            (
                problem.pair_cost[r, t],
                problem.pair_buy_cost[r, t],
                problem.quadratic,
                rho,
                target[r, t],
            )
            for r in rows
        ]
        items = [
            (problem.item_supply[i], problem.item_threshold[i], problem.item_quantity_kw[i])
            for i in mine
        ]
        primal = sum(trade_term(x[r, t], *term) for r, term in zip(rows, terms, strict=True))
        primal += float(sign @ (problem.item_threshold[mine] * taken[mine]))
        primal += sum(
            curve_term(curve_kw[c], *spec[:3]) for c, spec in zip(own, unit_curves, strict=True)
        )
        bounds = finite_dual(items)
        found = minimize_scalar(
            lambda m: -dual_value(m, terms, items, unit_curves),  # noqa: B023
            bounds=bounds,
            method="bounded",
            options={"xatol": 1e-10},
        )
        best = max(-found.fun, *(dual_value(m, terms, items, unit_curves) for m in bounds))
        assert primal == pytest.approx(best, abs=1e-6)
        assert dual_value(mu[unit], terms, items, unit_curves) == pytest.approx(best, abs=1e-6)


@pytest.mark.unit
def test_unlimited_supply_below_unlimited_demand_is_refused_naming_the_agent():
    with pytest.raises(InputError, match="agent 1, period position 0"):
        ExchangeProblem(
            n_agents=2,
            n_periods=1,
            item_unit=np.array([1, 1]),
            item_supply=np.array([True, False]),
            item_threshold=np.array([20.0, 30.0]),
            item_quantity_kw=np.array([np.inf, np.inf]),
            pair_from=np.array([0, 1]),
            pair_to=np.array([1, 0]),
            pair_cost=np.array([0.0, 0.0]),
        )


def small_market(seed: int, n: int = 6, periods: int = 2):
    rng = np.random.default_rng(seed)
    who = np.repeat(np.arange(n), periods)
    sell = who % 2 == 0
    bids = p2p.pd.DataFrame(
        {
            "participant": [f"p{i}" for i in who],
            "side": np.where(sell, "sell", "buy"),
            "quantity_kw": rng.uniform(1, 10, who.size),
            "price": np.where(sell, rng.uniform(0, 150, who.size), rng.uniform(50, 300, who.size)),
            "period": np.tile(np.arange(periods), n),
        }
    )
    peers = [f"p{i}" for i in range(n)]
    prefs = [(a, b, rng.uniform(1, 20)) for a in peers for b in peers if a != b]
    return bids, p2p.pd.DataFrame(prefs, columns=["peer", "partner", "cost"])


@pytest.mark.solve
def test_dask_actors_return_the_in_process_iterates():
    # three groups of two peers, each a Dask actor holding its own part; the
    # coordinator exchanges only z - u and the groups' steps; same run as in process
    distributed = pytest.importorskip("distributed")
    bids, prefs = small_market(3)
    market = p2p.prepare(bids, upstream=Upstream(250.0, 30.0), preferences=prefs)
    problem = p2p.exchange_problem(market)
    options = {"rho": 5.0, "max_iterations": 300}
    here = consensus_admm(problem, **options)
    with distributed.Client(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        there = consensus_admm(problem, groups=[[0, 1], [2, 3], [4, 5]], client=client, **options)
    assert there.iterations == here.iterations == 300
    for name in ("trade_kw", "proposal_kw", "price", "taken_kw", "balance_price"):
        np.testing.assert_allclose(getattr(there, name), getattr(here, name), rtol=0, atol=1e-12)
    np.testing.assert_allclose(there.log["rho"], here.log["rho"], rtol=0, atol=0)


@pytest.mark.unit
def test_groups_must_partition_the_agents():
    bids, prefs = small_market(4, n=4, periods=1)
    problem = p2p.exchange_problem(p2p.prepare(bids, preferences=prefs))
    with pytest.raises(InputError, match="exactly one group"):
        consensus_admm(problem, groups=[[0, 1], [1, 2, 3]], max_iterations=1)


@pytest.mark.solve
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 6),
    periods=st.integers(1, 2),
    capped=st.booleans(),
)
@example(seed=750052, n=6, periods=1, capped=False)  # cycled with over-relaxation 1.6
def test_admm_converges_to_its_tolerance_and_matches_the_central_lp(seed, n, periods, capped):
    # random block markets with distinct preference costs (unique LP trades), a grid
    # capped or not: ADMM stops on its own residual test, at the central LP's welfare
    # (HiGHS, the independent reference) and trades
    bids, prefs = small_market(seed, n, periods)
    upstream = Upstream(250.0, 30.0, capacity_kw=5.0 if capped else None)
    central = p2p.clear(bids, upstream=upstream, preferences=prefs)
    admm = p2p.clear(
        bids,
        upstream=upstream,
        preferences=prefs,
        method="admm",
        admm={"rho": 5.0, "max_iterations": 20000},
    )
    assert admm.kpis["converged"] == 1.0
    log = admm.tables["admm_log"].iloc[-1]
    assert log["primal_residual"] <= log["primal_tolerance"]
    assert log["dual_residual"] <= log["dual_tolerance"]
    welfare = central.kpis["social_welfare"]
    assert admm.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-4, abs=1e-6)
    both = central.trades.merge(admm.trades, on=["seller", "buyer", "period"], how="outer")
    error = (both["traded_kw_x"].fillna(0) - both["traded_kw_y"].fillna(0)).abs().to_numpy()
    largest = central.trades["traded_kw"].to_numpy(dtype=float)
    assert np.max(error, initial=0.0) <= 0.01 * max(np.max(largest, initial=0.0), 1.0)
