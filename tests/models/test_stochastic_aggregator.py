"""The two-stage stochastic aggregator: incentive and commitment first, homes per scenario."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridmarkets.case import load_case
from gridmarkets.errors import InputError
from gridmarkets.models import aggregator, prosumer
from gridmarkets.models import stochastic_aggregator as sa
from gridmarkets.models.aggregator import IncentiveSpec
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.models.stochastic import Risk, extensive_form
from gridmarkets.scenarios import Scenarios
from gridmarkets.solvers import solve
from gridmarkets.specs.aggregator import leader_options

pytestmark = pytest.mark.solve

EXACT = {"mip_gap": 1e-9}  # the value identities hold at optimality: close the MIP gap
THREE_HOMES = "data/cases/aggregator_three_homes.yaml"


def _own_profiles(homes: dict[str, ProsumerSpec]) -> pd.DataFrame:
    columns = {f"{h}.load_kw": spec.load_kw for h, spec in homes.items()}
    columns |= {f"{h}.pv_kw": spec.pv.profile_kw for h, spec in homes.items() if spec.pv}
    return pd.DataFrame(columns)


@pytest.mark.parametrize("control", ["incentive", "full"])
def test_one_scenario_of_probability_one_is_the_deterministic_aggregator(control):
    case = load_case(THREE_HOMES)
    options = leader_options(case) | {"control": control}
    problem = sa.two_stage(case.prosumers, case.prices, commitment_kw=case.commitment_kw, **options)
    model = extensive_form(problem, Scenarios.deterministic(_own_profiles(case.prosumers)))
    solve(model, warm_start=True, **EXACT)
    # the stochastic model bounds multipliers by big_m alone: so does this reference (with
    # derived bounds the tied incentives of a period may take another optimal value)
    deterministic = aggregator.build(
        case.prosumers, case.prices, case.commitment_kw, derive_big_m=False, **options
    )
    solve(deterministic, warm_start=True, **EXACT)
    expected = pyo.value(deterministic.leader_cost)
    assert pyo.value(model.objective) == pytest.approx(expected, rel=1e-7, abs=1e-7)
    if control == "incentive":
        block = model.scenario["base"]
        incentives = [pyo.value(block.incentive_per_mwh[t]) for t in block.PERIODS]
        wanted = [pyo.value(deterministic.incentive_per_mwh[t]) for t in deterministic.PERIODS]
        assert incentives == pytest.approx(wanted, abs=1e-6)


# --- brute force over the leader's menu, each home solved alone -------------------------

LEVELS_PER_MWH = [0.0, 150.0, 300.0]
COMMITMENT_LEVELS_KW = [-1.0, 1.5, 4.0]
PENALTY_PER_MWH = 400.0


def _small_portfolio() -> tuple[dict[str, ProsumerSpec], PricesSpec, Scenarios]:
    homes = {
        "a": ProsumerSpec(
            load_kw=[1.5, 2.5],
            pv=PVSpec(profile_kw=[2.0, 0.5]),
            battery=BatterySpec(
                capacity_kwh=3.0,
                p_charge_max_kw=2.0,
                soc_initial_kwh=1.0,
                degradation_cost_per_mwh=6.0,
                relaxed=True,
            ),
            import_limit_kw=8,
            export_limit_kw=8,
        ),
        "b": ProsumerSpec(
            load_kw=[1.0, 2.0],
            pv=PVSpec(profile_kw=[1.0, 0.0]),
            import_limit_kw=8,
            export_limit_kw=8,
        ),
    }
    prices = PricesSpec(import_price=[250.0, 320.0], export_price=[60.0, 40.0])
    varied = {
        "sunny": {"a.pv_kw": [3.0, 1.0], "b.pv_kw": [2.0, 0.2]},
        "cloudy": {"a.pv_kw": [0.5, 0.0], "b.load_kw": [1.8, 2.6]},
        "busy": {"a.load_kw": [2.5, 3.5], "b.load_kw": [1.5, 3.0]},
    }
    tables = [_own_profiles(homes).assign(**changes) for changes in varied.values()]
    scenarios = Scenarios.from_array(
        np.stack([t.to_numpy() for t in tables]),
        list(tables[0].columns),
        probability=[0.5, 0.3, 0.2],
        names=list(varied),
    )
    return homes, prices, scenarios


def _home_optimum(spec: ProsumerSpec, prices: PricesSpec) -> float:
    """The home's EMS alone, as its own LP: its least cost at these prices."""
    ems = prosumer.build({"h": spec}, prices, periods=2)
    solve(ems)
    return float(pyo.value(ems.home["h"].cost))


def _scenario_leader_cost(homes, prices, incentive, commitment, baseline) -> float:
    """The aggregator's cost in one scenario at a given incentive and commitment: each
    home's optimal value from its own LP, then (optimistic bilevel) the homes' optimal
    schedules that suit the aggregator best."""
    paid = PricesSpec(
        import_price=[c + pi for c, pi in zip(prices.import_price, incentive, strict=True)],
        export_price=[c + pi for c, pi in zip(prices.export_price, incentive, strict=True)],
    )  # cost - income = the bill at tariff + incentive, up to the baseline's constant
    optimum = {h: _home_optimum(spec, paid) for h, spec in homes.items()}
    m = prosumer.build(homes, paid, periods=2)
    m.objective.deactivate()
    m.optimal = pyo.Constraint(list(homes), rule=lambda m, h: m.home[h].cost <= optimum[h] + 1e-9)
    net = {
        (h, t): m.home[h].p_export_kw[t] - m.home[h].p_import_kw[t] for h in homes for t in (0, 1)
    }
    m.up = pyo.Var([0, 1], bounds=(0, None))
    m.down = pyo.Var([0, 1], bounds=(0, None))
    m.balance = pyo.Constraint(
        [0, 1],
        rule=lambda m, t: sum(net[h, t] for h in homes) - commitment[t] == m.up[t] - m.down[t],
    )
    income = sum(
        incentive[t] * (net[h, t] - baseline[h, t]) / 1000.0 for h in homes for t in (0, 1)
    )
    deviation = PENALTY_PER_MWH * sum(m.up[t] + m.down[t] for t in (0, 1)) / 1000.0
    m.leader = pyo.Objective(expr=income + deviation)
    solve(m)
    return float(pyo.value(m.leader))


@pytest.mark.parametrize("method", ["strong_duality", pytest.param("bigm", marks=pytest.mark.slow)])
def test_stochastic_bilevel_agrees_with_brute_force_over_the_leaders_menu(method):
    homes, prices, scenarios = _small_portfolio()
    price_per_mwh = [300.0, 450.0]  # paid per committed MWh (a committed import pays)
    offer = sa.CommitmentOfferSpec(price_per_mwh=price_per_mwh, levels=COMMITMENT_LEVELS_KW)
    problem = sa.two_stage(
        homes,
        prices,
        offer=offer,
        periods=2,
        incentive=IncentiveSpec(levels=LEVELS_PER_MWH),
        deviation_penalty_per_mwh=PENALTY_PER_MWH,
        method=method,
        big_m=50.0,
    )
    model = extensive_form(problem, scenarios)
    solve(model, warm_start=True, **EXACT)

    # the baseline is data of the model (each home's stand-alone schedule per scenario)
    baselines = {
        s: {k: pyo.value(v) for k, v in model.scenario[s].recourse.baseline_kw.items()}
        for s in scenarios.names()
    }
    scenario_homes = {
        s: sa.scenario_homes(homes, scenarios.profile(s), 2, 1.0) for s in scenarios.names()
    }
    best = np.inf
    for incentive in itertools.product(LEVELS_PER_MWH, repeat=2):
        for commitment in itertools.product(COMMITMENT_LEVELS_KW, repeat=2):
            revenue = sum(r * c / 1000.0 for r, c in zip(price_per_mwh, commitment, strict=True))
            expected = sum(
                scenarios.probability[s]
                * _scenario_leader_cost(
                    scenario_homes[s], prices, incentive, commitment, baselines[s]
                )
                for s in scenarios.names()
            )
            best = min(best, expected - revenue)
    assert pyo.value(model.objective) == pytest.approx(best, rel=1e-7, abs=1e-7)


# --- the value identities ---------------------------------------------------------------


def _random_instance(seed: int, n_scenarios: int):
    rng = np.random.default_rng(seed)
    homes = {
        f"h{k}": ProsumerSpec(
            load_kw=list(np.round(rng.uniform(0.5, 3.0, 2), 2)),
            pv=PVSpec(profile_kw=list(np.round(rng.uniform(0.0, 3.0, 2), 2))),
            battery=BatterySpec(
                capacity_kwh=2.0,
                p_charge_max_kw=1.5,
                soc_initial_kwh=float(np.round(rng.uniform(0, 2), 2)),
                degradation_cost_per_mwh=5.0,
                relaxed=True,
            )
            if k == 0
            else None,
            import_limit_kw=8,
            export_limit_kw=8,
        )
        for k in range(2)
    }
    forecast = _own_profiles(homes)
    scenarios = Scenarios.from_forecast(
        forecast, n_scenarios, seed, std_fraction=0.4, rho=0.3, lower=0.0
    )
    prices = PricesSpec(import_price=list(rng.uniform(200, 400, 2)), export_price=50.0)
    offer = sa.CommitmentOfferSpec(
        price_per_mwh=list(rng.uniform(100, 450, 2)), min_kw=-4, max_kw=4
    )
    return homes, prices, scenarios, offer


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31), st.integers(2, 3), st.sampled_from([0.0, 0.5]))
def test_wait_and_see_below_stochastic_below_expected_value_solution(seed, n, cvar_weight):
    homes, prices, scenarios, offer = _random_instance(seed, n)
    result = sa.schedule(
        homes,
        prices,
        scenarios,
        risk=Risk(cvar_weight, 0.5),
        offer=offer,
        periods=2,
        incentive=IncentiveSpec(levels=LEVELS_PER_MWH),
        method="strong_duality",
        solve_options=EXACT,
    )
    k = result.kpis
    tol = 1e-7 * max(1.0, abs(k["objective"]))
    assert k["ws"] <= k["objective"] + tol
    assert k["objective"] <= k["eev"] + tol
    assert k["evpi"] >= -tol
    assert k["vss"] >= -tol
    costs = result.tables["scenarios"]
    assert (costs["ws"] <= costs["rp"] + tol).all()  # each scenario's own best first stage
    p, rp = costs["probability"].to_numpy(), costs["rp"].to_numpy()
    assert k["objective"] == pytest.approx(
        p @ rp + cvar_weight * _tail_mean(rp, p, 0.5), rel=1e-7, abs=1e-7
    )


def _tail_mean(costs: np.ndarray, p: np.ndarray, alpha: float) -> float:
    """CVaR by sorting: the mean cost over the worst 1 - alpha of the probability."""
    left, total = 1.0 - alpha, 0.0
    for k in np.argsort(-costs):
        take = min(p[k], left)
        total, left = total + take * costs[k], left - take
    return total / (1.0 - alpha)


# --- bad input --------------------------------------------------------------------------


def test_a_profile_of_no_home_is_refused_naming_it():
    homes, prices, _ = _small_portfolio()
    profile = pd.DataFrame({"a.load_kw": [1.0, 1.0], "z.pv_kw": [1.0, 1.0]})
    with pytest.raises(InputError, match="'z.pv_kw'"):
        sa.build(homes, prices, profile, periods=2)


def test_pv_scenarios_for_a_home_without_pv_are_refused():
    homes, prices, _ = _small_portfolio()
    homes["b"] = homes["b"].model_copy(update={"pv": None})
    with pytest.raises(InputError, match=r"'b.pv_kw'.*prosumers.b has no pv"):
        sa.build(homes, prices, pd.DataFrame({"b.pv_kw": [1.0, 1.0]}), periods=2)


def test_a_period_with_both_a_fixed_and_an_offered_commitment_is_refused():
    homes, prices, _ = _small_portfolio()
    offer = sa.CommitmentOfferSpec(price_per_mwh=[np.nan, 300.0])
    with pytest.raises(InputError, match="offer.price_per_mwh: period 1"):
        sa.build(homes, prices, commitment_kw=[1.0, 1.0], offer=offer, periods=2)
