"""Many homes on a feeder: uncoordinated schedules against pandapower's AC power flow,
the coordinated (LinDistFlow-constrained) schedule, and SimBench profiles by date."""

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from radial import radial_net
from test_assets import assert_balanced

from gridmarkets import pipeline
from gridmarkets.case import Horizon, load_case
from gridmarkets.errors import InputError
from gridmarkets.models import prosumer
from gridmarkets.models.assets import EVSpec, FeederProfile, PVSpec, StaySpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.networks import ac_check, feeder_from_net, load

CASES = Path(__file__).resolve().parents[2] / "data" / "cases"
PROFILES = Path(__file__).resolve().parents[2] / "data" / "profiles"
PRICE = [300, 300, 100, 100, 200, 300]
EV_NEED_KWH = 20.0


@pytest.fixture(scope="module")
def weak_feeder():
    """0.4 kV: root 0 - 1 (a 45 A line), then 1 - 2 and 1 - 3 (100 A lines)."""
    lines = [(0, 1, 0.045), (1, 2, 0.1), (1, 3, 0.1)]
    net = radial_net(0.4, lines, length_km=0.1, r_ohm_per_km=0.2, x_ohm_per_km=0.08, sn_mva=0.1)
    return feeder_from_net(net, name="weak")


def ev_home(bus: int) -> ProsumerSpec:
    stay = StaySpec(arrival=0, departure=6, soc_arrival_kwh=10, soc_departure_kwh=30)
    ev = EVSpec(capacity_kwh=40, p_charge_max_kw=11, eta_charge=0.95, stays=[stay])
    return ProsumerSpec(bus=bus, load_kw=1.0, ev=ev)


@pytest.mark.solve
def test_coordination_keeps_the_line_within_its_rating_at_a_cost(weak_feeder):
    homes = {"a": ev_home(2), "b": ev_home(2), "c": ev_home(3)}
    prices = PricesSpec(import_price=PRICE, export_price=0)
    alone = prosumer.schedule(homes, prices, periods=6)
    together = prosumer.schedule(homes, prices, periods=6, network=weak_feeder)
    assert_balanced(alone)
    assert_balanced(together)
    # uncoordinated: every EV charges in the two cheap hours and overloads line 0 in AC
    injections = prosumer.bus_injections(alone)
    before = ac_check(weak_feeder, injections, 0.0 * injections)
    overloaded = before.violations()
    assert set(overloaded["index"]) == {0} and set(overloaded["period"]) == {2, 3}
    # coordinated: within the rating in pandapower's AC power flow (losses are the
    # linearisation error, covered by the inscribed polygon's margin)
    injections = prosumer.bus_injections(together)
    after = ac_check(weak_feeder, injections, 0.0 * injections)
    assert after.violations().empty
    assert after.max_loading_percent <= 100.0
    assert together.kpis["cost"] >= alone.kpis["cost"] - 1e-9
    # by hand: line 0 carries at most S cos(pi/12) (12-sided polygon, lossless); the
    # 3 kW of load take their share, the EVs fill the rest of the cheap hours and buy
    # what is left at the next cheapest price (200)
    cap = math.sqrt(3) * 0.4 * 45.0 * math.cos(math.pi / 12)
    energy = 3 * EV_NEED_KWH / 0.95
    cheap = 2 * (cap - 3.0)
    ev_cost = (cheap * 100 + (energy - cheap) * 200) / 1000
    load_cost = 3.0 * sum(PRICE) / 1000
    assert together.kpis["cost"] == pytest.approx(load_cost + ev_cost, rel=1e-6)
    upstream = together.grid.groupby("period")["import_kw"].sum()
    assert upstream.max() == pytest.approx(cap, rel=1e-6)
    # the feeder's shadow prices: one more kW of demand below line 0 in a congested hour
    # displaces 1 kW of EV charging from 100 to 200 (100/MWh); nothing elsewhere
    prices = together.feeder_prices.set_index(["bus", "period"])
    for (bus, t), row in prices.iterrows():
        expected = 100.0 if bus != 0 and t in (2, 3) else 0.0
        assert row["price"] == pytest.approx(expected, abs=1e-6)
        assert row["congestion"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.solve
def test_without_binding_limits_coordination_changes_nothing(weak_feeder):
    homes = {"a": ev_home(2)}
    prices = PricesSpec(import_price=PRICE, export_price=0)
    alone = prosumer.schedule(homes, prices, periods=6)
    together = prosumer.schedule(homes, prices, periods=6, network=weak_feeder)
    assert together.kpis["cost"] == pytest.approx(alone.kpis["cost"], rel=1e-9)


@pytest.mark.solve
def test_a_home_off_the_feeder_is_named(weak_feeder):
    with pytest.raises(InputError, match="prosumers.x: bus 17 is not a bus of feeder weak"):
        prosumer.build(
            {"x": ProsumerSpec(bus=17, load_kw=1.0)},
            PricesSpec(import_price=100),
            periods=2,
            network=weak_feeder,
        )


@pytest.fixture(scope="module")
def rural1():
    return load("1-LV-rural1--0-sw")


def test_feeder_profiles_follow_the_case_dates(rural1):
    # The shipped CSV was cut from the same SimBench profiles (load 1 and sgen 2, both
    # at bus 7, from 2016-05-30, rounded to 4 decimals): the feeder profile of bus 7
    # on 2016-06-02 10:00 must be the CSV's rows of that date.
    horizon = Horizon(start=dt.datetime(2016, 6, 2, 10), periods=8, resolution_minutes=15)
    home = ProsumerSpec(
        bus=7,
        load_kw=FeederProfile(feeder="load", scale=2.0),
        pv=PVSpec(profile_kw=FeederProfile(feeder="sgen", scale=1 / 19.0)),  # 19 kWp
    )
    resolved = prosumer.resolve_feeder_profiles({"h7": home}, rural1, horizon)["h7"]
    csv = pd.read_csv(PROFILES / "simbench_rural1_household.csv", comment="#")
    rows = csv[pd.to_datetime(csv["timestamp"]) >= horizon.start].head(8)
    np.testing.assert_allclose(resolved.load_kw, 2.0 * rows["load_kw"], atol=2e-4)
    np.testing.assert_allclose(resolved.pv.profile_kw, rows["pv_kw_per_kwp"], atol=1e-4)
    assert np.ptp(resolved.load_kw) > 0


def test_a_bus_without_the_profile_is_named(rural1):
    home = ProsumerSpec(bus=3, load_kw=FeederProfile(feeder="load"))
    with pytest.raises(InputError, match="prosumers.h3.load_kw: bus 3 has no SimBench load"):
        prosumer.resolve_feeder_profiles({"h3": home}, rural1, Horizon(periods=4))


@pytest.mark.solve
def test_coordinated_feeder_case_respects_the_ac_limits():
    case = load_case(CASES / "prosumer_feeder_coordinated.yaml")
    result = pipeline.run_case(case, {})
    assert_balanced(result)
    assert result.kpis["cost"] >= result.kpis["cost_uncoordinated"] - 1e-9
    assert result.ac_check["violations_count"] == 0
    assert result.ac_check["max_loading_percent"] <= 100.0
    before = result.ac_check["uncoordinated"]
    assert {v["element"] for v in before["violations"]} == {"trafo"}
    assert before["max_loading_percent"] > 100.0
