"""Feasibility pre-checks: impossible homes fail before the solver, naming the field.

Each message is checked, and each check is shown to be tight: the instance just on
the feasible side solves, and its solution sits exactly on the bound the check uses.
"""

import math

import numpy as np
import pytest

from gridmarkets import pipeline
from gridmarkets.case import validate
from gridmarkets.errors import CaseError, InputError
from gridmarkets.models import prosumer
from gridmarkets.models.assets import BatterySpec, HeatPumpSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec

TOL = 1e-6


def case_with(periods=4, resolution=60, **home):
    return {
        "model": "prosumer",
        "horizon": {"periods": periods, "resolution_minutes": resolution},
        "prices": {"import_price": 100},
        "prosumers": {"h3": {"load_kw": 1.0, **home}},
    }


def ev(need_kwh, departure=3, p_kw=7.0):
    stay = {"arrival": 0, "departure": departure, "soc_arrival_kwh": 0.0}
    return {
        "capacity_kwh": 60,
        "p_charge_max_kw": p_kw,
        "eta_charge": 1.0,
        "stays": [{**stay, "soc_departure_kwh": need_kwh}],
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            case_with(ev=ev(40)),
            "prosumers.h3.ev.stays.0.soc_departure_kwh: 40 kWh cannot be charged in 3 h at 7 kW",
        ),
        (  # 30-minute periods: 3 periods are 1.5 h
            case_with(resolution=30, ev=ev(11)),
            "stays.0.soc_departure_kwh: 11 kWh cannot be charged in 1.5 h at 7 kW",
        ),
        (
            case_with(ev=ev(10, departure=6)),
            "prosumers.h3.ev.stays.0.departure: 6 is after the horizon's 4 periods",
        ),
        (
            case_with(
                battery={
                    "capacity_kwh": 10,
                    "p_charge_max_kw": 1,
                    "eta_charge": 0.9,
                    "soc_final_kwh": 4,
                }
            ),
            "prosumers.h3.battery.soc_final_kwh: 4 kWh cannot be reached from 0 kWh in 4 h",
        ),
        (
            case_with(appliances={"wm": {"profile_kw": [1.0], "latest_end": 6}}),
            "prosumers.h3.appliances.wm.latest_end: 6 is after the horizon's 4 periods",
        ),
    ],
)
def test_impossible_homes_name_their_field(case, message):
    with pytest.raises(CaseError, match=message.replace(".", r"\.")):
        validate(case, "case.yaml")


@pytest.mark.solve
def test_an_ev_at_the_limit_solves_at_full_power():
    # 21 kWh in 3 h at 7 kW, lossless: feasible only by charging flat out throughout
    case = validate(case_with(ev=ev(21)), "case.yaml")
    result = pipeline.run_case(case, {})
    charge = result.storage[result.storage["device"] == "ev"]["p_charge_kw"].to_numpy()
    np.testing.assert_allclose(charge[:3], 7.0, atol=TOL)


@pytest.mark.solve
def test_import_limit_that_cannot_cover_the_load_is_named():
    home = ProsumerSpec(load_kw=[2.0, 5.0], import_limit_kw=3.0)
    with pytest.raises(InputError, match="prosumers.home.import_limit_kw: 3 kW cannot cover"):
        prosumer.build(home, PricesSpec(import_price=100), periods=2)
    # with a 2 kW battery to help (and the energy for it), the same limit is feasible
    battery = BatterySpec(
        capacity_kwh=2, p_charge_max_kw=2, eta_discharge=1.0, soc_initial_kwh=2, soc_final_kwh=0
    )
    helped = home.model_copy(update={"battery": battery})
    result = prosumer.schedule(helped, PricesSpec(import_price=100), periods=2)
    assert result.grid["import_kw"].max() <= 3.0 + TOL


def heat_pump(p_max_kw: float) -> HeatPumpSpec:
    return HeatPumpSpec(
        p_max_kw=p_max_kw,
        cop=3.0,
        capacitance_kwh_per_k=2.0,
        resistance_k_per_kw=5.0,
        t_outdoor_c=0.0,
        t_initial_c=18.0,
        t_min_c=20.0,
        t_max_c=24.0,
    )


@pytest.mark.solve
def test_heat_pump_that_cannot_reach_the_band_is_named():
    # T[0] = a 18 + (1 - a) 15 p with a = exp(-1/10): reaching 20 needs
    # p >= (20 - 18 a) / (15 (1 - a)), computed here by hand
    a = math.exp(-1 / 10)
    least = (20 - 18 * a) / (15 * (1 - a))
    prices = PricesSpec(import_price=100)
    with pytest.raises(InputError, match="prosumers.home.heat_pump.p_max_kw: .* period 0"):
        prosumer.build(ProsumerSpec(heat_pump=heat_pump(0.99 * least)), prices, periods=3)
    result = prosumer.schedule(ProsumerSpec(heat_pump=heat_pump(least * 1.0001)), prices, periods=3)
    assert result.thermal["p_kw"].iloc[0] == pytest.approx(least, rel=1e-3)
