"""With or without the grid is one argument: on a feeder whose limits do not bind, each
model clears the same with LinDistFlow (``network=feeder``) and with CopperPlate
(``network=feeder, formulation=CopperPlate()``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest
from test_aggregator import bilevel, reactive_homes
from test_community import small_community
from test_flexibility import chain_feeder, offers_table

from gridmarkets.errors import InputError
from gridmarkets.models import aggregator, community, prosumer
from gridmarkets.models import flexibility as fx
from gridmarkets.models.assets import BatterySpec, EVSpec, PVSpec, StaySpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.networks import CopperPlate, load
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve

TOL = 1e-6
PRICES = PricesSpec(
    import_price=[200, 210, 300, 310, 400, 420], export_price=[50, 45, 60, 55, 70, 40]
)


@pytest.fixture(scope="module")
def case33():
    return load({"source": "pandapower", "name": "case33bw"})


def both(build, **options):
    """The model built and solved on LinDistFlow and on CopperPlate."""
    out = {}
    for name, formulation in (("lindistflow", None), ("copperplate", CopperPlate())):
        m = build(formulation=formulation, **options)
        out[name] = (m, solve(m))
    assert out["lindistflow"][0].handles.formulation == "lindistflow"
    assert out["copperplate"][0].handles.formulation == "copperplate"
    return out


def assert_same_tables(a: pd.DataFrame, b: pd.DataFrame, columns: list[str]) -> None:
    for column in columns:
        np.testing.assert_allclose(a[column], b[column], atol=TOL, err_msg=column)


def test_prosumer_homes_on_a_feeder_schedule_the_same_on_both(case33):
    # distinct prices and lossy storage: one optimal schedule, which the slack feeder
    # (kW-scale homes on a MW-scale feeder) does not change
    stay = StaySpec(arrival=0, departure=6, soc_arrival_kwh=5, soc_departure_kwh=15)
    battery = BatterySpec(capacity_kwh=6, p_charge_max_kw=3, eta_charge=0.9, relaxed=True)
    homes = {
        "ev": ProsumerSpec(
            bus=17, load_kw=1.0, ev=EVSpec(capacity_kwh=40, p_charge_max_kw=7, stays=[stay])
        ),
        "pv": ProsumerSpec(
            bus=24, load_kw=0.8, pv=PVSpec(profile_kw=[0, 2, 5, 4, 1, 0]), battery=battery
        ),
        "plain": ProsumerSpec(bus=32, load_kw=[1, 2, 1, 3, 2, 1]),
    }
    prices = PricesSpec(
        import_price=[310, 120, 180, 90, 260, 400], export_price=[40, 30, 20, 10, 35, 50]
    )
    solved = both(prosumer.build, prosumers=homes, prices=prices, periods=6, network=case33)
    (lin, lin_sol), (plate, plate_sol) = solved["lindistflow"], solved["copperplate"]
    assert lin_sol.objective == pytest.approx(plate_sol.objective, abs=TOL)
    lin_result, plate_result = prosumer.results(lin, lin_sol), prosumer.results(plate, plate_sol)
    assert_same_tables(lin_result.grid, plate_result.grid, ["import_kw", "export_kw"])
    assert_same_tables(lin_result.storage, plate_result.storage, ["soc_kwh"])
    # no limit binds: the feeder prices are zero on both (the homes pay their tariffs)
    for result in (lin_result, plate_result):
        assert result.feeder_prices["price"].abs().max() < TOL
    # and the schedule is the uncoordinated one
    alone = prosumer.schedule(homes, prices, periods=6)
    assert alone.kpis["cost"] == pytest.approx(lin_sol.objective, abs=TOL)


def lossy(spec):
    """A member or shared asset with its battery (if any) at 90 % charging efficiency."""
    if spec.battery is None:
        return spec
    return spec.model_copy(update={"battery": spec.battery.model_copy(update={"eta_charge": 0.9})})


def test_community_on_a_feeder_clears_the_same_on_both(case33):
    # lossy batteries and distinct prices: one optimal schedule
    members, shared = small_community()
    members = {i: lossy(spec) for i, spec in members.items()}
    shared = {a: lossy(spec) for a, spec in shared.items()}
    buses = {"sunny": 5, "evening": 12, "storage": 20, "plain": 30}
    members = {i: spec.model_copy(update={"bus": buses[i]}) for i, spec in members.items()}
    shared = {a: spec.model_copy(update={"bus": 16}) for a, spec in shared.items()}
    options = {"members": members, "shared": shared, "prices": PRICES, "periods": 6}
    solved = both(community.build, network=case33, **options)
    results = {name: community.results(m, sol) for name, (m, sol) in solved.items()}
    lin, plate = results["lindistflow"], results["copperplate"]
    assert lin.kpis["cost"] == pytest.approx(plate.kpis["cost"], abs=TOL)
    columns = ["grid_import_kw", "grid_export_kw", "internal_price"]
    assert_same_tables(lin.exchange, plate.exchange, columns)
    # without a network at all: the same balance and price, through the same path
    alone = community.schedule(members, shared, PRICES, periods=6)
    assert alone.kpis["cost"] == pytest.approx(lin.kpis["cost"], abs=TOL)
    assert_same_tables(alone.exchange, lin.exchange, ["internal_price"])


def test_aggregator_on_a_feeder_clears_the_same_on_both():
    feeder = load("1-LV-rural1--0-sw")
    buses = dict(zip(reactive_homes(), [7, 9, 13], strict=True))
    placed = {h: s.model_copy(update={"bus": buses[h]}) for h, s in reactive_homes().items()}
    solved = {}
    for name, formulation in (("lindistflow", None), ("copperplate", CopperPlate())):
        m = bilevel(
            placed,
            commitment_kvar=[2.0, 2.0, float("nan"), -6.0],
            network=feeder,
            formulation=formulation,
        )
        solved[name] = (m, solve(m))
    (lin, lin_sol), (plate, plate_sol) = solved["lindistflow"], solved["copperplate"]
    assert lin.handles.formulation == "lindistflow" and plate.handles.formulation == "copperplate"
    assert lin_sol.objective == pytest.approx(plate_sol.objective, abs=TOL)
    lin_result, plate_result = (
        aggregator.results(lin, lin_sol),
        aggregator.results(plate, plate_sol),
    )
    assert_same_tables(lin_result.portfolio, plate_result.portfolio, ["p_net_kw"])
    # (an incentive in a period where no home moves is not unique, nor is its split
    # between homes where one is indifferent between schedules (gain 0 either way);
    # each home's gain and the total paid are)
    assert_same_tables(lin_result.prosumers, plate_result.prosumers, ["gain"])
    assert lin_result.kpis["incentive_paid"] == pytest.approx(
        plate_result.kpis["incentive_paid"], abs=TOL
    )
    # the followers are the homes alone: no network component inside their KKT blocks
    for h in lin.PROSUMERS:
        inside = {v.parent_block().name for v in lin.home[h].component_data_objects(pyo.Var)}
        assert not any("network" in name for name in inside)


def test_flexibility_pool_without_dso_needs_clears_the_same_on_both():
    # what is compared: the TSO's reserve and a DSO offer that no need asks for, on a
    # feeder whose ratings the activations stay far from; with no DSO need, both grids
    # leave the merit order per product (computed here) unchanged
    feeder = chain_feeder([(0, 1, 0.4), (1, 2, 0.4), (1, 3, 0.4)], name="strong")
    baseline = pd.DataFrame({0: [0.0, -200.0, 100.0, -150.0]}, index=feeder.buses.index)
    offers = offers_table(
        [
            ("a", 2, 0, "fcr_d_up", "up", 300.0, 12.0, 0.0),
            ("b", 3, 0, "fcr_d_up", "up", 300.0, 8.0, 0.0),
            ("c", 3, 0, "fcr_d_down", "down", 200.0, 5.0, 0.0),
            ("d", 2, 0, "fcr_d_down", "down", 200.0, 9.0, 0.0),
        ]
    )
    products = fx.load_products()
    requirements = pd.DataFrame(
        [("fcr_d_up", 0, 400.0), ("fcr_d_down", 0, 250.0)],
        columns=["product", "period", "requirement_kw"],
    )
    options = {
        "products": products,
        "requirements": requirements,
        "network": feeder,
        "baseline_p_kw": baseline,
    }
    results = {
        name: fx.clear(offers, formulation=formulation, **options)
        for name, formulation in (("lindistflow", None), ("copperplate", CopperPlate()))
    }
    lin, plate = results["lindistflow"], results["copperplate"]
    np.testing.assert_allclose(lin.accepted["accepted_kw"], plate.accepted["accepted_kw"], atol=TOL)
    assert lin.kpis["procurement_cost"] == pytest.approx(plate.kpis["procurement_cost"], abs=TOL)
    # the merit order: b (8) then a (12) for 400 kW up; c (5) then d (9) for 250 kW down
    expected = [100.0, 300.0, 200.0, 50.0]
    np.testing.assert_allclose(lin.accepted["accepted_kw"], expected, atol=TOL)
    assert lin.ac_check["tso_up"]["violations_count"] == 0
    # DSO needs bound flows and voltages, which CopperPlate has not: refused by name
    needs = pd.DataFrame(
        [("branch", 0, 0, "thermal", 120.0, 120.0, 100.0, 20.0, 98.0)],
        columns=[
            "element",
            "index",
            "period",
            "limit_kind",
            "value_linear",
            "value_ac",
            "limit",
            "excess",
            "target_linear",
        ],
    )
    with pytest.raises(InputError, match="needs: .*'copperplate'"):
        fx.build(offers, formulation=CopperPlate(), needs=needs, **options)


def test_lem_on_a_feeder_clears_the_same_on_both(case33):
    """Bids with their kvar at buses across the feeder, two periods, an upstream grid:
    the same acceptances, prices and settlement on both, and without a network."""
    from gridmarkets.models import lem

    rows = [
        ("pv5", "sell", 5, 30.0, 200.0, 0.0),
        ("chp18", "sell", 18, 80.0, 300.0, 50.0),
        ("home12", "buy", 12, 120.0, 250.0, 80.0),
        ("shop30", "buy", 30, 90.0, 400.0, 100.0),
        ("pump25", "buy", 25, 60.0, 150.0, 40.0),
    ]
    bids = pd.DataFrame(
        [
            (pid, side, bus, price + 3 * t, kw * (1 + 0.2 * t), kvar, t)
            for pid, side, bus, price, kw, kvar in rows
            for t in (0, 1)
        ],
        columns=["participant", "side", "bus", "price", "quantity_kw", "q_kvar", "period"],
    )
    upstream = lem.Upstream(import_price=[100.0, 70.0], export_price=20.0)
    solved = both(lem.build, bids=bids, upstream=upstream, network=case33)
    results = {name: lem.results(m, sol) for name, (m, sol) in solved.items()}
    lin, plate = results["lindistflow"], results["copperplate"]
    assert_same_tables(lin.accepted, plate.accepted, ["accepted_kw", "q_kvar"])
    assert_same_tables(lin.prices, plate.prices, ["price"])
    assert_same_tables(lin.settlement, plate.settlement, ["payment", "surplus"])
    alone = lem.clear(bids, upstream=upstream)
    assert_same_tables(alone.accepted, lin.accepted, ["accepted_kw"])
    assert alone.kpis["social_welfare"] == pytest.approx(lin.kpis["social_welfare"], abs=TOL)
