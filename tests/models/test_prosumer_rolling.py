"""Rolling-horizon (model-predictive) operation of one home.

References: the single full-horizon solve (perfect foresight), a greedy schedule
computed by hand, and the pinned states read back from the realised tables.
"""

import numpy as np
import pytest
from test_assets import assert_balanced, bill

from gridmarkets import pipeline
from gridmarkets.case import validate
from gridmarkets.errors import CaseError, InputError
from gridmarkets.models import prosumer
from gridmarkets.models.assets import (
    ApplianceSpec,
    BatterySpec,
    EVSpec,
    HeatPumpSpec,
    PVSpec,
    StaySpec,
)
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec

pytestmark = pytest.mark.solve

TOL = 1e-6
EXACT = {"mip_gap": 0.0}
N = 16
PRICE = [220, 200, 210, 300, 320, 280, 150, 120, 260, 300, 420, 450, 400, 300, 230, 210]
PRICES = PricesSpec(import_price=PRICE, export_price=60)
LOAD = np.array([0.5, 0.4, 0.4, 0.6, 0.8, 0.7, 0.9, 1.1, 1.3, 0.9, 1.5, 1.8, 1.6, 1.1, 0.7, 0.5])
PV = np.array([0, 0, 0, 0.2, 0.8, 1.8, 2.6, 3.0, 2.5, 1.6, 0.6, 0.1, 0, 0, 0, 0])


def full_home(**update) -> ProsumerSpec:
    home = ProsumerSpec(
        pv=PVSpec(profile_kw=0.0),
        battery=BatterySpec(capacity_kwh=4, p_charge_max_kw=2, soc_initial_kwh=1),
        ev=EVSpec(
            capacity_kwh=40,
            p_charge_max_kw=7,
            stays=[
                StaySpec(arrival=0, departure=5, soc_arrival_kwh=12, soc_departure_kwh=25),
                StaySpec(arrival=11, departure=16, soc_arrival_kwh=20, soc_departure_kwh=30),
            ],
        ),
        appliances={
            "washer": ApplianceSpec(profile_kw=[2.0, 1.0, 0.5, 1.5], earliest_start=2),
            "dryer": ApplianceSpec(profile_kw=[2.5, 2.5], earliest_start=6, latest_end=14),
        },
        heat_pump=HeatPumpSpec(
            p_max_kw=3.0,
            capacitance_kwh_per_k=3.0,
            resistance_k_per_kw=6.0,
            t_outdoor_c=[2.0 + 0.5 * t for t in range(N)],
            t_initial_c=20.5,
            t_min_c=20.0,
            t_max_c=23.0,
        ),
        demand_charge_per_kw=2.0,
    )
    return home.model_copy(update=update)


def test_perfect_forecast_and_a_window_to_the_end_equal_the_full_horizon_solve():
    actual = {"load_kw": LOAD, "pv_kw": PV}
    home = full_home()
    rolling = prosumer.rolling_horizon(home, PRICES, actual, actual, window=N, solve_options=EXACT)
    assert_balanced(rolling)
    known = full_home(load_kw=list(LOAD), pv=PVSpec(profile_kw=list(PV)))
    reference = prosumer.schedule(known, PRICES, periods=N, solve_options=EXACT)
    assert rolling.kpis["cost"] == pytest.approx(reference.kpis["cost"], abs=1e-6)
    assert rolling.kpis["regret"] == pytest.approx(0.0, abs=1e-6)
    assert rolling.kpis["replans"] == N


def test_a_one_period_window_without_storage_is_greedy():
    # Seeing one period, the EMS never starts the appliance early (starting costs at
    # least the export price now, and the saving is out of sight): it starts at its
    # latest start, 12 - 3 = 9, and everything else follows the actual profiles.
    appliance = ApplianceSpec(profile_kw=[2.0, 1.0, 3.0], earliest_start=1, latest_end=12)
    home = ProsumerSpec(pv=PVSpec(profile_kw=0.0), appliances={"dishwasher": appliance})
    actual = {"load_kw": LOAD, "pv_kw": PV}
    forecast = {"load_kw": np.zeros(N), "pv_kw": np.zeros(N)}  # never used with window 1
    rolling = prosumer.rolling_horizon(home, PRICES, forecast, actual, window=1)
    assert_balanced(rolling)
    net = LOAD - PV
    net[9:12] += [2.0, 1.0, 3.0]
    assert rolling.kpis["cost"] == pytest.approx(bill(net, PRICE, 60), abs=TOL)
    assert rolling.appliances["start_period"].tolist() == [9]


def test_replans_pin_the_realised_state():
    # A poor forecast makes every plan change its mind; the windows (3 periods) are
    # shorter than the washer's run (4), so its rest must be carried across re-plans.
    home = full_home()
    actual = {"load_kw": LOAD, "pv_kw": PV}
    forecast = {"load_kw": LOAD[::-1] * 1.5, "pv_kw": np.roll(PV, 4)}
    rolling = prosumer.rolling_horizon(home, PRICES, forecast, actual, window=3)
    assert_balanced(rolling)
    storage, plans = rolling.storage, rolling.rolling
    battery = storage[storage["device"] == "battery"]["soc_kwh"].to_numpy()
    # every plan starts from the SoC realised at the end of the previous period
    np.testing.assert_allclose(plans["battery_soc_start_kwh"], np.r_[1.0, battery[:-1]], atol=TOL)
    temperature = rolling.thermal["temperature_c"].to_numpy()
    np.testing.assert_allclose(
        plans["temperature_start_c"], np.r_[20.5, temperature[:-1]], atol=TOL
    )
    peak = np.maximum.accumulate(rolling.grid["import_kw"].to_numpy())
    np.testing.assert_allclose(plans["peak_import_start_kw"], np.r_[0.0, peak[:-1]], atol=TOL)
    # the EV: pinned at its energy so far within a stay, charged only when plugged,
    # and it leaves with what each stay needs
    ev = storage[storage["device"] == "ev"].set_index("period")
    plugged = list(range(0, 5)) + list(range(11, 16))
    for t in range(1, N):
        if t in plugged and t - 1 in plugged:
            assert plans["ev_soc_start_kwh"][t] == pytest.approx(ev["soc_kwh"][t - 1], abs=TOL)
    away = [t for t in range(N) if t not in plugged]
    assert ev.loc[away, "p_charge_kw"].abs().max() < TOL
    assert ev["soc_kwh"][4] >= 25 - TOL and ev["soc_kwh"][15] >= 30 - TOL
    # each appliance runs once, uninterrupted: its power is its profile from its start
    power = rolling.power
    for name, spec in home.appliances.items():
        series = power[power["device"] == f"appliance:{name}"]["p_kw"].to_numpy()
        start = int(rolling.appliances.set_index("appliance").loc[name, "start_period"])
        expected = np.zeros(N)
        expected[start : start + len(spec.profile_kw)] = spec.profile_kw
        np.testing.assert_allclose(-series, expected, atol=TOL)
    # a forecast error can only cost: the realised cost is at least the optimum
    assert rolling.kpis["cost"] >= rolling.kpis["cost_perfect_foresight"] - TOL


def test_profiles_are_checked():
    home = ProsumerSpec(pv=PVSpec(profile_kw=0.0))
    with pytest.raises(InputError, match="actual.pv_kw: required"):
        prosumer.rolling_horizon(home, PRICES, {"load_kw": LOAD}, {"load_kw": LOAD}, window=2)
    with pytest.raises(InputError, match="forecast: 3 periods, actual has 16"):
        prosumer.rolling_horizon(
            ProsumerSpec(), PRICES, {"load_kw": LOAD[:3]}, {"load_kw": LOAD}, window=2
        )


def rolling_case(**rolling):
    return {
        "model": "prosumer",
        "horizon": {"periods": N},
        "prices": {"import_price": PRICE, "export_price": 60},
        "rolling": {"window": 4, "forecast_load_kw": list(LOAD[::-1]), **rolling},
        "prosumers": {
            "h1": {
                "load_kw": list(LOAD),
                "battery": {"capacity_kwh": 4, "p_charge_max_kw": 2, "soc_initial_kwh": 1},
            }
        },
    }


def test_a_rolling_case_runs_its_home_with_its_forecast():
    case = validate(rolling_case(), "case.yaml")
    result = pipeline.run_case(case, {})
    assert_balanced(result)
    assert set(result.grid["prosumer"]) == {"h1"}
    np.testing.assert_allclose(result.rolling["load_kw_forecast"], LOAD[::-1])
    reference = prosumer.schedule(
        ProsumerSpec(load_kw=list(LOAD), battery=case.prosumers["h1"].battery),
        PRICES,
        periods=N,
    )
    assert result.kpis["cost_perfect_foresight"] == pytest.approx(reference.kpis["cost"])


@pytest.mark.unit
def test_a_rolling_case_needs_one_home_and_a_pv_forecast():
    two = rolling_case()
    two["prosumers"]["h2"] = {"load_kw": 1.0}
    with pytest.raises(CaseError, match="rolling: needs one grid-connected home"):
        validate(two, "case.yaml")
    pv = rolling_case()
    pv["prosumers"]["h1"]["pv"] = {"profile_kw": list(PV)}
    with pytest.raises(CaseError, match="rolling.forecast_pv_kw: required"):
        validate(pv, "case.yaml")
