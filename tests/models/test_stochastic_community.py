"""The two-stage community: the exchange at the connection day-ahead, the inside in real time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridmarkets.errors import InputError
from gridmarkets.models import community
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.community import SharedAssetSpec
from gridmarkets.models.prosumer import ImbalanceSpec, PricesSpec, ProsumerSpec
from gridmarkets.models.stochastic import Risk
from gridmarkets.scenarios import Scenarios

pytestmark = pytest.mark.solve


def _community(periods: int, rng: np.random.Generator):
    members = {
        f"m{i}": ProsumerSpec(
            load_kw=list(rng.uniform(0.5, 3.0, periods)),
            pv=PVSpec(profile_kw=list(rng.uniform(0.0, 3.0, periods))) if i else None,
        )
        for i in range(2)
    }
    shared = {
        "store": SharedAssetSpec(
            pv=PVSpec(profile_kw=list(rng.uniform(0.0, 5.0, periods))),
            battery=BatterySpec(
                capacity_kwh=5.0, p_charge_max_kw=2.5, eta_charge=0.92, relaxed=True
            ),
        )
    }
    return members, shared


def _profile(members, shared) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "m0.load_kw": members["m0"].load_kw,
            "m1.pv_kw": members["m1"].pv.profile_kw,
            "store.pv_kw": shared["store"].pv.profile_kw,
        }
    )


def test_one_scenario_equals_the_deterministic_community():
    rng = np.random.default_rng(8)
    periods = 5
    members, shared = _community(periods, rng)
    buy = list(180.0 + 35.0 * np.arange(periods) + rng.uniform(0, 5, periods))
    prices = PricesSpec(import_price=buy, export_price=40.0)
    imbalance = ImbalanceSpec(up_per_mwh=[b + 80 for b in buy], down_per_mwh=5.0)
    one = Scenarios.deterministic(_profile(members, shared))
    result = community.schedule_stochastic(members, shared, prices, one, imbalance, periods=periods)
    alone = community.schedule(members, shared, prices, periods=periods)
    assert result.kpis["objective"] == pytest.approx(alone.kpis["cost"], rel=1e-9, abs=1e-9)
    exchange = alone.tables["exchange"]
    day_ahead = result.tables["day_ahead"]
    assert day_ahead["rp_import_kw"].to_numpy() == pytest.approx(
        exchange["grid_import_kw"], abs=1e-9
    )
    assert day_ahead["rp_export_kw"].to_numpy() == pytest.approx(
        exchange["grid_export_kw"], abs=1e-9
    )


def test_total_load_sets_the_commitment_by_the_critical_fractile():
    """Two members without devices, loads (1, 1), (1, 2) or (2, 3) kW with probabilities
    0.2, 0.5, 0.3: the community buys the total (2, 3 or 5 kW) day-ahead at 100/MWh or
    short at 250, surplus back at 0. Fractile (250 - 100) / 250 = 0.6: F(3) = 0.7 is the
    first to reach it, so 3 kW."""
    members = {"a": ProsumerSpec(load_kw=0.0), "b": ProsumerSpec(load_kw=0.0)}
    array = np.array([[[1.0, 1.0]], [[1.0, 2.0]], [[2.0, 3.0]]])
    scenarios = Scenarios.from_array(array, ["a.load_kw", "b.load_kw"], [0.2, 0.5, 0.3])
    result = community.schedule_stochastic(
        members,
        None,
        PricesSpec(import_price=100.0, export_price=0.0),
        scenarios,
        ImbalanceSpec(up_per_mwh=250.0, down_per_mwh=0.0),
        periods=1,
    )
    assert result.tables["day_ahead"]["rp_import_kw"].iloc[0] == pytest.approx(3.0, abs=1e-9)
    expected = 3 * 0.1 + 0.3 * 2 * 0.25  # kWh x currency/kWh: commitment + shortfall
    assert result.kpis["expected_cost"] == pytest.approx(expected, abs=1e-12)
    mean = 0.2 * 2 + 0.5 * 3 + 0.3 * 5
    eev = mean * 0.1 + 0.3 * (5 - mean) * 0.25
    assert result.kpis["eev"] == pytest.approx(eev, abs=1e-12)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.integers(0, 2**31), st.floats(0.0, 1.5))
def test_ws_rp_eev_order_on_random_communities(n, seed, weight):
    rng = np.random.default_rng(seed)
    periods = 3
    members, shared = _community(periods, rng)
    base = _profile(members, shared).to_numpy()
    array = base[None] * rng.uniform(0.5, 1.5, (n, periods, base.shape[1]))
    scenarios = Scenarios.from_array(array, ["m0.load_kw", "m1.pv_kw", "store.pv_kw"])
    buy = rng.uniform(100, 300, periods)
    result = community.schedule_stochastic(
        members,
        shared,
        PricesSpec(import_price=list(buy), export_price=list(buy * 0.3)),
        scenarios,
        ImbalanceSpec(up_per_mwh=list(buy * 1.5), down_per_mwh=list(buy * 0.1)),
        risk=Risk(weight, 0.8),
        periods=periods,
    )
    k = result.kpis
    tol = 1e-7 * (1.0 + abs(k["eev"]))
    assert k["ws"] <= k["objective"] + tol <= k["eev"] + 2 * tol


def test_a_profile_for_a_shared_asset_without_pv_is_named():
    members = {"a": ProsumerSpec(load_kw=1.0)}
    shared = {"b": SharedAssetSpec(battery=BatterySpec(capacity_kwh=1.0, p_charge_max_kw=1.0))}
    scenarios = Scenarios.from_array(np.ones((1, 2, 1)), ["b.pv_kw"])
    with pytest.raises(InputError, match="shared.b has no PV"):
        community.schedule_stochastic(
            members,
            shared,
            PricesSpec(import_price=100.0),
            scenarios,
            ImbalanceSpec(up_per_mwh=120.0),
            periods=2,
        )
