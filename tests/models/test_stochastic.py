"""The shared two-stage machinery on a newsvendor, whose answers have closed forms.

Buy x at price c before demand d is known; a shortfall is bought at q > c afterwards,
a surplus is worth nothing. cost(x, d) = c x + q max(d - x, 0). The risk-neutral
optimum is the smallest demand whose cumulative probability reaches (q - c) / q (the
critical fractile); wait-and-see buys exactly d.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridmarkets.models.stochastic import (
    Risk,
    TwoStage,
    cvar,
    evaluate,
    extensive_form,
    solve_two_stage,
)
from gridmarkets.scenarios import Scenarios
from gridmarkets.solvers import solve

BUY, SHORTFALL = 1.0, 3.0


def _newsvendor(buy: float = BUY, shortfall: float = SHORTFALL) -> TwoStage:
    def build(profile: pd.DataFrame) -> pyo.ConcreteModel:
        m = pyo.ConcreteModel()
        m.x_kw = pyo.Var(bounds=(0.0, None))
        m.short_kw = pyo.Var(bounds=(0.0, None))
        m.cover = pyo.Constraint(expr=m.x_kw + m.short_kw >= float(profile["demand"].iloc[0]))
        m.cost = pyo.Expression(expr=buy * m.x_kw + shortfall * m.short_kw)
        m.objective = pyo.Objective(expr=m.cost)
        return m

    return TwoStage(build, lambda b: [b.x_kw], lambda b: b.cost)


def _demands(demand, probability=None) -> Scenarios:
    array = np.asarray(demand, float)[:, None, None]
    return Scenarios.from_array(array, ["demand"], probability)


def _cost(x: float, d: np.ndarray, buy=BUY, shortfall=SHORTFALL) -> np.ndarray:
    return buy * x + shortfall * np.maximum(d - x, 0.0)


def _fractile(d: np.ndarray, p: np.ndarray, buy=BUY, shortfall=SHORTFALL) -> float:
    order = np.argsort(d)
    cumulative = np.cumsum(p[order])
    return float(d[order][np.searchsorted(cumulative, (shortfall - buy) / shortfall - 1e-12)])


def _tail_mean(costs: np.ndarray, p: np.ndarray, alpha: float) -> float:
    """CVaR by sorting: the mean of the worst 1 - alpha of the probability."""
    order = np.argsort(-costs)
    left, total = 1.0 - alpha, 0.0
    for c, q in zip(costs[order], p[order], strict=True):
        take = min(q, left)
        total += take * c
        left -= take
        if left <= 1e-15:
            break
    return total / (1.0 - alpha)


@pytest.mark.solve
def test_newsvendor_kpis_match_the_closed_forms():
    d = np.array([2.0, 5.0, 7.0, 11.0])
    p = np.array([0.3, 0.2, 0.3, 0.2])
    result = solve_two_stage(_newsvendor(), _demands(d, p), out_of_sample=_demands([4.0, 9.0]))
    x = _fractile(d, p)
    rp = float(p @ _cost(x, d))
    mean = float(p @ d)
    eev = float(p @ _cost(mean, d))
    k = result.kpis
    assert result.first_stage.loc[0, "rp"] == pytest.approx(x, abs=1e-9)
    assert result.first_stage.loc[0, "eev"] == pytest.approx(mean, abs=1e-9)
    assert k["expected_cost"] == pytest.approx(rp, abs=1e-9)
    assert k["ws"] == pytest.approx(BUY * mean, abs=1e-9)
    assert k["eev"] == pytest.approx(eev, abs=1e-9)
    assert k["evpi"] == pytest.approx(rp - BUY * mean, abs=1e-9)
    assert k["vss"] == pytest.approx(eev - rp, abs=1e-9)
    assert k["out_of_sample_mean"] == pytest.approx(_cost(x, np.array([4.0, 9.0])).mean())
    assert k["out_of_sample_mean_eev"] == pytest.approx(_cost(mean, np.array([4.0, 9.0])).mean())


@pytest.mark.solve
@pytest.mark.parametrize(("weight", "alpha"), [(0.5, 0.8), (2.0, 0.5), (1.0, 0.9)])
def test_cvar_term_equals_the_sorted_tail_at_a_fixed_first_stage(weight, alpha):
    d = np.array([1.0, 4.0, 6.0, 9.0, 3.0])
    p = np.array([0.1, 0.25, 0.2, 0.15, 0.3])
    m = extensive_form(_newsvendor(), _demands(d, p), Risk(weight, alpha))
    m.x_first[0].fix(3.5)
    solve(m)
    costs = _cost(3.5, d)
    assert pyo.value(m.cvar) == pytest.approx(_tail_mean(costs, p, alpha), abs=1e-9)
    expected = p @ costs + weight * _tail_mean(costs, p, alpha)
    assert pyo.value(m.objective) == pytest.approx(expected, abs=1e-9)


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-50, 50), min_size=1, max_size=8),
    st.floats(0.0, 0.97),
    st.integers(0, 2**31),
)
def test_cvar_closed_form_equals_the_sorted_tail(costs, alpha, seed):
    p = np.random.default_rng(seed).uniform(0.05, 1.0, len(costs))
    p /= p.sum()
    c = np.asarray(costs)
    assert cvar(c, p, alpha) == pytest.approx(_tail_mean(c, p, alpha), abs=1e-9)


@pytest.mark.solve
def test_a_risk_averse_buyer_buys_at_least_as_much():
    d = np.array([2.0, 5.0, 7.0, 11.0])
    neutral = solve_two_stage(_newsvendor(), _demands(d))
    averse = solve_two_stage(_newsvendor(), _demands(d), Risk(5.0, 0.75))
    assert averse.first_stage.loc[0, "rp"] >= neutral.first_stage.loc[0, "rp"] - 1e-9
    # brute force over the decision grid (every demand is a candidate optimum)
    p = np.full(4, 0.25)
    best = min(p @ _cost(x, d) + 5.0 * _tail_mean(_cost(x, d), p, 0.75) for x in d)
    assert averse.kpis["objective"] == pytest.approx(best, abs=1e-9)
    assert averse.kpis["ws"] <= averse.kpis["objective"] <= averse.kpis["eev"] + 1e-9


@pytest.mark.solve
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.floats(0, 20), min_size=1, max_size=5),
    st.floats(0.1, 5.0),
    st.floats(0.0, 5.0),
    st.floats(0.0, 3.0),
    st.floats(0.0, 0.9),
    st.integers(0, 2**31),
)
def test_ws_rp_eev_order_on_random_newsvendors(demand, buy, extra, weight, alpha, seed):
    p = np.random.default_rng(seed).uniform(0.05, 1.0, len(demand))
    problem = _newsvendor(buy, buy + extra)
    k = solve_two_stage(problem, _demands(demand, p / p.sum()), Risk(weight, alpha)).kpis
    tol = 1e-7 * (1 + abs(k["eev"]))
    assert k["ws"] <= k["objective"] + tol
    assert k["objective"] <= k["eev"] + tol
    assert k["evpi"] >= -tol and k["vss"] >= -tol


@pytest.mark.solve
def test_one_scenario_is_the_deterministic_model():
    scenarios = _demands([6.0])
    result = solve_two_stage(_newsvendor(), scenarios)
    alone = _newsvendor().build(scenarios.profile("s0"))
    solve(alone)
    assert result.kpis["objective"] == pytest.approx(pyo.value(alone.objective), abs=1e-9)
    assert result.first_stage.loc[0, "rp"] == pytest.approx(pyo.value(alone.x_kw), abs=1e-9)
    assert result.kpis["evpi"] == pytest.approx(0.0, abs=1e-9)
    assert result.kpis["vss"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.solve
def test_dask_evaluation_equals_in_process():
    distributed = pytest.importorskip("distributed")
    d = np.array([2.0, 5.0, 7.0, 11.0, 3.0])
    scenarios = _demands(d)
    local = evaluate(_newsvendor(), scenarios, np.array([4.0]))
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        remote = evaluate(_newsvendor(), scenarios, np.array([4.0]), client=client)
    pd.testing.assert_series_equal(local, remote)
    assert local.to_numpy() == pytest.approx(_cost(4.0, d))
