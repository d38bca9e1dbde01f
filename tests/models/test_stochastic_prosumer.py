"""The two-stage prosumer EMS: day-ahead exchange, real-time recourse at imbalance prices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridmarkets.errors import InputError
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.prosumer import (
    ImbalanceSpec,
    PricesSpec,
    ProsumerSpec,
    schedule,
    schedule_stochastic,
)
from gridmarkets.models.stochastic import Risk
from gridmarkets.scenarios import Scenarios

pytestmark = pytest.mark.solve


def _home(periods: int, rng: np.random.Generator, battery: bool = True) -> ProsumerSpec:
    return ProsumerSpec(
        load_kw=list(rng.uniform(0.5, 3.0, periods)),
        pv=PVSpec(profile_kw=list(rng.uniform(0.0, 4.0, periods))),
        battery=BatterySpec(
            capacity_kwh=4.0,
            p_charge_max_kw=2.0,
            eta_charge=0.93,
            eta_discharge=0.9,
            soc_initial_kwh=1.0,
            degradation_cost_per_mwh=7.0,
            relaxed=True,
        )
        if battery
        else None,
    )


def test_one_scenario_equals_the_deterministic_schedule():
    rng = np.random.default_rng(4)
    periods = 6
    home = _home(periods, rng)
    buy = list(200.0 + 40.0 * np.arange(periods) + rng.uniform(0, 10, periods))
    prices = PricesSpec(import_price=buy, export_price=50.0)
    imbalance = ImbalanceSpec(up_per_mwh=[b + 100 for b in buy], down_per_mwh=10.0)
    profile = pd.DataFrame({"load_kw": home.load_kw, "pv_kw": home.pv.profile_kw})
    stochastic = schedule_stochastic(
        {"h": home}, prices, Scenarios.deterministic(profile), imbalance, periods=periods
    )
    alone = schedule({"h": home}, prices, periods=periods)
    assert stochastic.kpis["objective"] == pytest.approx(alone.kpis["cost"], rel=1e-9, abs=1e-9)
    day_ahead = stochastic.tables["day_ahead"]
    grid = alone.tables["grid"]
    assert day_ahead["rp_import_kw"].to_numpy() == pytest.approx(grid["import_kw"], abs=1e-9)
    assert day_ahead["rp_export_kw"].to_numpy() == pytest.approx(grid["export_kw"], abs=1e-9)
    assert stochastic.kpis["evpi"] == pytest.approx(0.0, abs=1e-9)
    assert stochastic.kpis["vss"] == pytest.approx(0.0, abs=1e-9)


def test_imbalance_settlement_is_the_newsvendor():
    """No devices: the load is 1 or 3 kW (even odds) and must be met. Day-ahead import x
    at 100/MWh, a shortfall at 300, a surplus is sold back at 0: the critical fractile
    (300 - 100) / 300 = 2/3 > 1/2 puts x at 3 kW; cost per hour 0.3."""
    home = ProsumerSpec(load_kw=0.0)
    scenarios = Scenarios.from_array(np.array([[[1.0]], [[3.0]]]), ["load_kw"])
    result = schedule_stochastic(
        {"h": home},
        PricesSpec(import_price=100.0, export_price=0.0),
        scenarios,
        ImbalanceSpec(up_per_mwh=300.0, down_per_mwh=0.0),
        periods=1,
    )
    assert result.tables["day_ahead"]["rp_import_kw"].iloc[0] == pytest.approx(3.0, abs=1e-9)
    assert result.kpis["expected_cost"] == pytest.approx(0.3, abs=1e-12)
    # expected value: x = 2, cost 0.2 + 0.5 * 0.3 (1 kW short at 300)
    assert result.kpis["eev"] == pytest.approx(0.2 + 0.5 * 0.3, abs=1e-12)
    assert result.kpis["ws"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.3, abs=1e-12)
    grid = result.tables["grid"].set_index("scenario")
    assert grid.loc["s0", "surplus_kw"] == pytest.approx(2.0, abs=1e-9)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4), st.integers(0, 2**31), st.floats(0.0, 2.0), st.floats(0.5, 0.95))
def test_ws_rp_eev_order_on_random_homes(n, seed, weight, alpha):
    rng = np.random.default_rng(seed)
    periods = 4
    home = _home(periods, rng, battery=bool(rng.integers(2)))
    buy = rng.uniform(100, 300, periods)
    sell = buy * rng.uniform(0, 1, periods)
    p = rng.uniform(0.1, 1.0, n)
    scenarios = Scenarios.from_array(
        rng.uniform(0.0, 4.0, (n, periods, 2)), ["load_kw", "pv_kw"], p / p.sum()
    )
    imbalance = ImbalanceSpec(
        up_per_mwh=list(buy * rng.uniform(1, 2, periods)),
        down_per_mwh=list(sell * rng.uniform(0, 1, periods)),
    )
    prices = PricesSpec(import_price=list(buy), export_price=list(sell))
    k = schedule_stochastic(
        {"h": home}, prices, scenarios, imbalance, risk=Risk(weight, alpha), periods=periods
    ).kpis
    tol = 1e-7 * (1.0 + abs(k["eev"]))
    assert k["ws"] <= k["objective"] + tol <= k["eev"] + 2 * tol
    assert k["evpi"] >= -tol and k["vss"] >= -tol


def test_imbalance_prices_that_pay_for_deviating_are_refused():
    home = ProsumerSpec(load_kw=1.0)
    scenarios = Scenarios.from_array(np.ones((1, 2, 1)), ["load_kw"])
    with pytest.raises(InputError, match="period 1: up 90"):
        schedule_stochastic(
            {"h": home},
            PricesSpec(import_price=100.0),
            scenarios,
            ImbalanceSpec(up_per_mwh=[150.0, 90.0]),
            periods=2,
        )


def test_an_unknown_scenario_profile_is_named():
    scenarios = Scenarios.from_array(np.ones((1, 2, 1)), ["x.load_kw"])
    with pytest.raises(InputError, match="'x.load_kw'"):
        schedule_stochastic(
            {"h": ProsumerSpec(load_kw=1.0)},
            PricesSpec(import_price=100.0),
            scenarios,
            ImbalanceSpec(up_per_mwh=150.0),
            periods=2,
        )
