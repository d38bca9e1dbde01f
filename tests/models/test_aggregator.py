"""The aggregator's bilevel model against brute force over incentives, and its variants."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyomo.environ as pyo
import pytest

from gridmarkets.case import load_case
from gridmarkets.errors import InputError
from gridmarkets.models import aggregator, prosumer
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.registry import model_module
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve

CASES = Path(__file__).resolve().parents[2] / "data" / "cases"
LEVELS = [0.0, 50.0, 100.0]
PERIODS = 4
COMMITMENT = [-5.0, -3.0, -1.0, -5.0]
PENALTY = 500.0
FAIRNESS = 0.1


def homes() -> dict[str, ProsumerSpec]:
    """Three homes: PV + battery, a lossy battery, PV only (no flexibility but curtailment)."""
    limits = {"import_limit_kw": 10.0, "export_limit_kw": 10.0}
    return {
        "a": ProsumerSpec(
            load_kw=[2, 3, 4, 2],
            pv=PVSpec(profile_kw=[0, 3, 1, 0]),
            battery=BatterySpec(
                capacity_kwh=4, p_charge_max_kw=2, degradation_cost_per_mwh=5, relaxed=True
            ),
            **limits,
        ),
        "b": ProsumerSpec(
            load_kw=[1, 2, 3, 3],
            battery=BatterySpec(
                capacity_kwh=6,
                p_charge_max_kw=3,
                eta_charge=0.9,
                degradation_cost_per_mwh=5,
                relaxed=True,
            ),
            **limits,
        ),
        "c": ProsumerSpec(load_kw=[3, 1, 2, 4], pv=PVSpec(profile_kw=[1, 4, 2, 0]), **limits),
    }


PRICES = PricesSpec(import_price=[300, 350, 400, 350], export_price=50)


def bilevel(**options) -> pyo.ConcreteModel:
    options = {
        "incentive": aggregator.IncentiveSpec(levels=LEVELS),
        "deviation_penalty_per_mwh": PENALTY,
        "fairness_weight": FAIRNESS,
        **options,
    }
    return aggregator.build(homes(), PRICES, COMMITMENT, periods=PERIODS, **options)


class Reference:
    """The leader's cost at a fixed incentive schedule, from the homes' own EMS.

    The prosumer model of the three homes, with the incentive folded into its tariff
    (cost - pi p_net = (import price + pi) import - (export price + pi) export), gives
    each home's optimal cost; the leader's best point among the homes' optimal
    schedules (optimistic) is then one LP.
    """

    def __init__(self, baseline: dict, standalone: dict):
        self.m = m = prosumer.build(homes(), PRICES, periods=PERIODS)
        self.base_import = [pyo.value(m.import_price_per_mwh[t]) for t in m.PERIODS]
        self.base_export = [pyo.value(m.export_price_per_mwh[t]) for t in m.PERIODS]
        m.pi = pyo.Param(m.PERIODS, mutable=True, initialize=0.0)
        m.phi = pyo.Param(m.PROSUMERS, mutable=True, initialize=0.0)
        dt = m.period_hours / 1000.0

        def net(h, t):
            return m.home[h].p_export_kw[t] - m.home[h].p_import_kw[t]

        def income(h):
            return sum(m.pi[t] * (net(h, t) - baseline[h, t]) for t in m.PERIODS) * dt

        def gain(h):
            tariff_cost = m.home[h].cost + sum(m.pi[t] * net(h, t) for t in m.PERIODS) * dt
            return standalone[h] - tariff_cost + income(h)

        m.optimal = pyo.Constraint(m.PROSUMERS, rule=lambda m, h: m.home[h].cost <= m.phi[h])
        m.dev = pyo.Var(m.PERIODS, bounds=(0, None))
        m.dev_def = pyo.Constraint(
            m.PERIODS,
            rule=lambda m, t: m.dev[t] >= sum(net(h, t) for h in m.PROSUMERS) - COMMITMENT[t],
        )
        m.dev_def2 = pyo.Constraint(
            m.PERIODS,
            rule=lambda m, t: m.dev[t] >= COMMITMENT[t] - sum(net(h, t) for h in m.PROSUMERS),
        )
        m.gmax, m.gmin = pyo.Var(), pyo.Var()
        m.gmax_def = pyo.Constraint(m.PROSUMERS, rule=lambda m, h: m.gmax >= gain(h))
        m.gmin_def = pyo.Constraint(m.PROSUMERS, rule=lambda m, h: m.gmin <= gain(h))
        m.leader = pyo.Objective(
            expr=sum(income(h) for h in m.PROSUMERS)
            + PENALTY * dt * sum(m.dev.values())
            + FAIRNESS * (m.gmax - m.gmin)
        )

    def leader_cost(self, incentive) -> float:
        m = self.m
        for t, pi in enumerate(incentive):
            m.pi[t] = pi
            m.import_price_per_mwh[t] = self.base_import[t] + pi
            m.export_price_per_mwh[t] = self.base_export[t] + pi
        leader_parts = (m.optimal, m.dev_def, m.dev_def2, m.gmax_def, m.gmin_def, m.leader)
        for c in leader_parts:
            c.deactivate()
        m.objective.activate()
        solve(m)  # the homes' own EMS at this incentive (separable: one LP for three)
        for h in m.PROSUMERS:
            m.phi[h] = pyo.value(m.home[h].cost) + 1e-9
        for c in leader_parts:
            c.activate()
        m.objective.deactivate()
        return solve(m).objective


@pytest.fixture(scope="module")
def solved():
    m = bilevel()
    solution = solve(m)
    return m, solution, aggregator.results(m, solution)


def test_bilevel_optimum_equals_brute_force_over_incentive_grid(solved):
    m, solution, result = solved
    baseline = {k: pyo.value(v) for k, v in m.baseline_kw.items()}
    reference = Reference(baseline, m.standalone_cost)
    costs = {
        schedule: reference.leader_cost(schedule)
        for schedule in itertools.product(LEVELS, repeat=PERIODS)
    }
    best = min(costs.values())
    assert solution.objective == pytest.approx(best, abs=1e-6)
    found = tuple(result.incentives["incentive_per_mwh"].round(6))
    assert costs[found] == pytest.approx(best, abs=1e-6)
    assert len(set(np.round(list(costs.values()), 6))) > 1  # the incentive matters


def test_verify_reports_zero_follower_gap(solved):
    _, _, result = solved
    assert (result.verify["gap"].abs() < 1e-7).all()
    assert result.kpis["multipliers_at_big_m"] == 0
    assert len(result.verify) == 3


def test_strong_duality_and_bigm_agree(solved):
    m = bilevel(method="strong_duality")
    result = aggregator.results(m, solve(m))
    assert result.kpis["leader_cost"] == pytest.approx(solved[2].kpis["leader_cost"], abs=1e-6)
    assert result.kpis["max_follower_gap"] < 1e-7


def test_gains_are_never_negative_and_full_control_is_cheaper(solved):
    _, _, result = solved
    assert (result.prosumers["gain"] >= -1e-7).all()  # a home can always keep its baseline
    no_fairness = {"fairness_weight": 0.0}
    continuous = aggregator.schedule(
        homes(),
        PRICES,
        COMMITMENT,
        periods=PERIODS,
        deviation_penalty_per_mwh=PENALTY,
        **no_fairness,
    )
    full = aggregator.schedule(
        homes(),
        PRICES,
        COMMITMENT,
        periods=PERIODS,
        deviation_penalty_per_mwh=PENALTY,
        control="full",
    )
    menu = aggregator.results(*_solved(bilevel(**no_fairness)))
    # direct control <= any incentive scheme; a continuous incentive <= a menu inside it
    assert full.kpis["leader_cost"] <= continuous.kpis["leader_cost"] + 1e-6
    assert continuous.kpis["leader_cost"] <= menu.kpis["leader_cost"] + 1e-6
    assert continuous.kpis["max_follower_gap"] < 1e-7


def _solved(m):
    return m, solve(m)


def test_too_small_big_m_is_caught_by_verify(solved):
    # multipliers here are prices of kWh (~0.3-0.5 currency); M = 0.4 cuts the optimum off
    m = bilevel(big_m=0.4)
    result = aggregator.results(m, solve(m))
    assert result.kpis["leader_cost"] > solved[2].kpis["leader_cost"] + 1e-3
    assert result.kpis["multipliers_at_big_m"] > 0
    assert result.verify["at_bound"].str.contains("at M_dual").any()


def test_follower_with_an_appliance_is_refused_by_name():
    from gridmarkets.models.assets import ApplianceSpec

    bad = homes()
    bad["a"] = bad["a"].model_copy(
        update={"appliances": {"washer": ApplianceSpec(profile_kw=[1.0], earliest_start=0)}}
    )
    with pytest.raises(InputError, match=r"prosumers\.a\.appliances"):
        aggregator.build(bad, PRICES, COMMITMENT, periods=PERIODS)


def test_case_file_runs_through_the_registry():
    case = load_case(CASES / "aggregator_three_homes.yaml")
    result = model_module("aggregator").run_case(case, {})
    assert result.kpis["max_follower_gap"] < 1e-7
    assert set(result.tables) >= {"incentives", "portfolio", "prosumers", "verify"}


def test_on_a_feeder_the_network_is_a_leader_constraint(solved):
    from gridmarkets.networks import load

    feeder = load("1-LV-rural1--0-sw")
    buses = dict(zip(homes(), [7, 9, 13], strict=True))
    placed = {h: s.model_copy(update={"bus": buses[h]}) for h, s in homes().items()}
    m = aggregator.build(
        placed,
        PRICES,
        COMMITMENT,
        periods=PERIODS,
        incentive=aggregator.IncentiveSpec(levels=LEVELS),
        deviation_penalty_per_mwh=PENALTY,
        fairness_weight=FAIRNESS,
        network=feeder,
    )
    result = aggregator.results(m, solve(m))
    assert result.kpis["max_follower_gap"] < 1e-7
    # network limits are leader constraints: they can only raise the leader's cost
    assert result.kpis["leader_cost"] >= solved[2].kpis["leader_cost"] - 1e-7
