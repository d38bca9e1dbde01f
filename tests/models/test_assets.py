"""Device blocks against enumeration and hand-computed optima.

Every solve is read back from the result tables, and every result's energy balance
is checked from those tables (``assert_balanced``).
"""

import itertools
import math

import numpy as np
import pytest

from gridmarkets.case import validate
from gridmarkets.errors import CaseError, InputError
from gridmarkets.models import prosumer
from gridmarkets.models.assets import (
    ApplianceSpec,
    BatterySpec,
    CsvProfile,
    EVSpec,
    HeatPumpSpec,
    PVSpec,
    StaySpec,
    profile_values,
)
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec

TOL = 1e-6


def assert_balanced(result):
    """Device power, grid and shed sum to zero in every period of every home."""
    net = result.power.groupby(["prosumer", "period"])["p_kw"].sum()
    assert np.abs(net.to_numpy()).max() < 1e-6, net[np.abs(net) >= 1e-6]
    grid = result.power[result.power["device"] == "grid"].set_index(["prosumer", "period"])
    table = result.grid.set_index(["prosumer", "period"])
    np.testing.assert_allclose(grid["p_kw"], table["import_kw"] - table["export_kw"], atol=1e-9)


def bill(net_load_kw, import_price, export_price, hours=1.0):
    """A home's energy bill for a net load (kW, + = import), computed directly."""
    net = np.asarray(net_load_kw, dtype=float)
    buy = np.clip(net, 0, None) * np.asarray(import_price)
    sell = np.clip(-net, 0, None) * np.asarray(export_price)
    return float((buy - sell).sum() * hours / 1000.0)


# --- specs (no solver) ------------------------------------------------------------------


def case_with(**home):
    return {
        "model": "prosumer",
        "horizon": {"periods": 4},
        "prices": {"import_price": 100},
        "prosumers": {"h3": {"load_kw": 1.0, **home}},
    }


BATTERY = {"capacity_kwh": 10, "p_charge_max_kw": 5}
STAY = {"arrival": 0, "departure": 2, "soc_arrival_kwh": 1, "soc_departure_kwh": 5}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("home", "path"),
    [
        ({"battery": {**BATTERY, "eta_charge": 1.2}}, "prosumers.h3.battery.eta_charge"),
        ({"battery": {**BATTERY, "capacity_kwh": -1}}, "prosumers.h3.battery.capacity_kwh"),
        ({"battery": {**BATTERY, "soc_max_kwh": 12}}, "soc_max_kwh: 12.0 is above"),
        ({"battery": {**BATTERY, "soc_initial_kwh": 11}}, "soc_initial_kwh: 11.0 is outside"),
        (
            {"ev": {"capacity_kwh": 40, "p_charge_max_kw": 7, "stays": [{**STAY, "departure": 0}]}},
            "departure: 0 is not after arrival 0",
        ),
        (
            {"ev": {"capacity_kwh": 4, "p_charge_max_kw": 7, "stays": [STAY]}},
            "stays.0.soc_departure_kwh: above capacity_kwh",
        ),
        (
            {"appliances": {"wm": {"profile_kw": [1, 1, 1], "earliest_start": 2, "latest_end": 4}}},
            "shorter than the run of 3 periods",
        ),
        ({"load_kw": [1.0, 2.0]}, "prosumers.h3.load_kw: 2 values for 4 periods"),
        (
            {
                "heat_pump": {
                    "p_max_kw": 2,
                    "capacitance_kwh_per_k": 3,
                    "resistance_k_per_kw": 5,
                    "t_outdoor_c": 0,
                    "t_initial_c": 20,
                    "t_min_c": 22,
                    "t_max_c": 21,
                }
            },
            "t_min_c: 22.0 is above t_max_c",
        ),
    ],
)
def test_impossible_values_name_their_field(home, path):
    with pytest.raises(CaseError, match=path):
        validate(case_with(**home), "case.yaml")


@pytest.mark.unit
def test_csv_profile_is_averaged_to_the_horizon(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text(
        "# made up\ntimestamp,x\n"
        + "\n".join(f"2020-01-01 00:{15 * k:02d}:00,{k}" for k in range(4))
        + "\n2020-01-01 01:00:00,10\n2020-01-01 01:15:00,20\n"
    )
    values = profile_values(CsvProfile(csv=str(csv), column="x", scale=2.0), 1, 0.5)
    assert values.tolist() == [1.0]  # (0 + 1) / 2 * 2
    assert profile_values(CsvProfile(csv=str(csv), column="x"), 3, 0.5).tolist() == [0.5, 2.5, 15.0]
    with pytest.raises(InputError, match="too few rows"):
        profile_values(CsvProfile(csv=str(csv), column="x"), 2, 1.0)


# --- shiftable appliance: against every feasible start ---------------------------------

PRICES = [310, 250, 120, 90, 140, 280, 330, 200, 60, 180, 240, 300]
PV = [0, 0, 0.5, 2.0, 3.0, 3.5, 3.0, 2.0, 0.5, 0, 0, 0]
LOAD = [0.4, 0.3, 0.3, 0.5, 0.6, 0.8, 0.7, 0.9, 1.2, 1.0, 0.8, 0.5]
EXPORT = 50.0


def run_profile(start, profile, periods):
    power = np.zeros(periods)
    power[start : start + len(profile)] = profile
    return power


@pytest.mark.solve
def test_appliances_start_at_the_best_of_all_feasible_starts():
    washer = ApplianceSpec(profile_kw=[2.0, 1.0, 0.5], earliest_start=1, latest_end=11)
    dryer = ApplianceSpec(profile_kw=[2.5, 2.5], earliest_start=4)
    home = ProsumerSpec(
        load_kw=LOAD, pv=PVSpec(profile_kw=PV), appliances={"washer": washer, "dryer": dryer}
    )
    result = prosumer.schedule(
        home, PricesSpec(import_price=PRICES, export_price=EXPORT), periods=12
    )
    assert_balanced(result)
    costs = {
        (a, b): bill(
            np.array(LOAD)
            - PV
            + run_profile(a, washer.profile_kw, 12)
            + run_profile(b, dryer.profile_kw, 12),
            PRICES,
            EXPORT,
        )
        for a, b in itertools.product(range(1, 9), range(4, 11))
    }
    best = min(costs.values())
    starts = result.appliances.set_index("appliance")["start_period"]
    assert result.kpis["cost"] == pytest.approx(best, abs=TOL)
    assert costs[(starts["washer"], starts["dryer"])] == pytest.approx(best, abs=TOL)


# --- battery: two-price day -------------------------------------------------------------


@pytest.mark.solve
@pytest.mark.parametrize("degradation", [0.0, 10.0])
def test_battery_arbitrage_on_a_two_price_day(degradation):
    low, high, eta_c, eta_d = 100.0, 300.0, 0.9, 0.8
    battery = BatterySpec(
        capacity_kwh=10,
        p_charge_max_kw=5,
        eta_charge=eta_c,
        eta_discharge=eta_d,
        degradation_cost_per_mwh=degradation,
    )
    prices = [low] * 12 + [high] * 12
    result = prosumer.schedule(
        ProsumerSpec(battery=battery), PricesSpec(import_price=prices, export_price=prices)
    )
    assert_balanced(result)
    bought_kwh, sold_kwh = 10 / eta_c, 10 * eta_d
    profit = (high * sold_kwh - low * bought_kwh - degradation * (bought_kwh + sold_kwh)) / 1000
    assert -result.kpis["cost"] == pytest.approx(profit, abs=TOL)
    soc = result.storage.set_index("period")["soc_kwh"]
    assert soc[11] == pytest.approx(10.0) and soc[23] == pytest.approx(0.0, abs=TOL)


@pytest.mark.solve
def test_battery_never_charges_and_discharges_at_once_unless_relaxed():
    # Negative prices pay the home to consume: burning energy through the battery's
    # losses by charging and discharging at once would earn money.
    prices = PricesSpec(import_price=[-50.0] * 4, export_price=[-80.0] * 4)
    battery = BatterySpec(capacity_kwh=4, p_charge_max_kw=2, eta_charge=0.8, soc_initial_kwh=2)
    strict = prosumer.schedule(ProsumerSpec(battery=battery), prices, periods=4)
    relaxed_battery = battery.model_copy(update={"relaxed": True})
    relaxed = prosumer.schedule(ProsumerSpec(battery=relaxed_battery), prices, periods=4)
    for result in (strict, relaxed):
        assert_balanced(result)
    both = strict.storage["p_charge_kw"] * strict.storage["p_discharge_kw"]
    assert (both.abs() < TOL).all()
    assert relaxed.kpis["cost"] < strict.kpis["cost"] - 1e-3


# --- EV -----------------------------------------------------------------------------------


def ev(**update):
    spec = {
        "capacity_kwh": 40.0,
        "p_charge_max_kw": 7.0,
        "p_charge_min_kw": 2.0,
        "eta_charge": 0.9,
        "stays": [
            StaySpec(arrival=1, departure=4, soc_arrival_kwh=10, soc_departure_kwh=20),
            StaySpec(arrival=7, departure=11, soc_arrival_kwh=5, soc_departure_kwh=12),
        ],
    }
    return EVSpec(**{**spec, **update})


@pytest.mark.solve
@pytest.mark.parametrize("v2g", [False, True])
def test_ev_meets_departure_energy_and_charges_only_when_plugged(v2g):
    # Cheapest periods (0, 5, 6, 11) are outside the stays: charging there would pay.
    # With V2G, serving the 3 kW load of period 7 (400) from the EV and recharging at
    # 100-120 pays.
    prices = [10, 300, 200, 250, 150, 10, 10, 400, 100, 120, 500, 10]
    spec = ev(v2g=v2g, p_discharge_max_kw=3.0)
    load = [0.0] * 7 + [3.0] + [0.0] * 4
    result = prosumer.schedule(
        ProsumerSpec(ev=spec, load_kw=load),
        PricesSpec(import_price=prices, export_price=0.5 * np.array(prices).min()),
        periods=12,
    )
    assert_balanced(result)
    table = result.storage.set_index("period")
    plugged = {t for s in spec.stays for t in range(s.arrival, s.departure)}
    outside = table.loc[sorted(set(range(12)) - plugged)]
    assert (outside[["p_charge_kw", "p_discharge_kw"]].abs() < TOL).all(axis=None)
    for stay in spec.stays:
        assert table.loc[stay.departure - 1, "soc_kwh"] >= stay.soc_departure_kwh - TOL
    charging = table["p_charge_kw"][table["p_charge_kw"] > TOL]
    assert (charging >= spec.p_charge_min_kw - TOL).all()
    assert (table["p_discharge_kw"].max() > TOL) == v2g


@pytest.mark.solve
def test_ev_energy_is_charged_at_the_cheapest_hours_of_each_stay():
    # Without a minimum power the least-cost schedule is the greedy one: fill the
    # cheapest plugged-in hours first, stay by stay.
    prices = [10, 300, 200, 250, 150, 10, 10, 400, 100, 120, 500, 10]
    spec = ev(p_charge_min_kw=0.0)
    result = prosumer.schedule(ProsumerSpec(ev=spec), PricesSpec(import_price=prices), periods=12)
    expected = 0.0
    for stay in spec.stays:
        need = (stay.soc_departure_kwh - stay.soc_arrival_kwh) / spec.eta_charge
        for price in sorted(prices[stay.arrival : stay.departure]):
            kwh = min(need, spec.p_charge_max_kw)
            expected += price * kwh / 1000
            need -= kwh
    assert result.kpis["cost"] == pytest.approx(expected, abs=TOL)


# --- heat pump ----------------------------------------------------------------------------


@pytest.mark.solve
def test_heat_pump_follows_its_thermal_model_and_stays_in_band():
    outdoor = [2.0, 1.0, 0.0, 0.0, 1.0, 3.0, 5.0, 6.0]
    spec = HeatPumpSpec(
        p_max_kw=3.0,
        cop=3.0,
        capacitance_kwh_per_k=2.0,
        resistance_k_per_kw=4.0,
        t_outdoor_c=outdoor,
        t_initial_c=20.0,
        t_min_c=19.0,
        t_max_c=22.0,
    )
    prices = [100, 100, 400, 400, 400, 100, 100, 100]
    result = prosumer.schedule(
        ProsumerSpec(heat_pump=spec), PricesSpec(import_price=prices), periods=8, period_hours=0.5
    )
    assert_balanced(result)
    table = result.thermal
    a = math.exp(-0.5 / (4.0 * 2.0))
    temperature = 20.0
    for p, t_out, reported in zip(table["p_kw"], outdoor, table["temperature_c"], strict=True):
        temperature = a * temperature + (1 - a) * (t_out + 4.0 * 3.0 * p)
        assert reported == pytest.approx(temperature, abs=1e-6)
    assert table["temperature_c"].between(19.0 - TOL, 22.0 + TOL).all()
    # pre-heating: it heats in the cheap hours before the expensive ones
    assert table["p_kw"][:2].sum() > table["p_kw"][2:5].sum()
