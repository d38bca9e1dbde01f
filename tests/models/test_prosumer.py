"""The prosumer EMS: islanded shedding, objectives, many homes, case files."""

from pathlib import Path

import numpy as np
import pyomo.environ as pyo
import pytest
from test_assets import assert_balanced

from gridmarkets import pipeline
from gridmarkets.case import load_case
from gridmarkets.errors import InputError
from gridmarkets.models import prosumer
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec

pytestmark = pytest.mark.solve

CASES = Path(__file__).resolve().parents[2] / "data" / "cases"
TOL = 1e-6


def test_islanded_shortfall_is_shed_and_reported():
    # 2 kW for 4 h = 8 kWh; the battery holds 3 kWh (lossless out) and PV covers 1 kW
    # in period 1 only: 4 kWh cannot be served and must appear as shed.
    battery = BatterySpec(
        capacity_kwh=3, p_charge_max_kw=5, eta_discharge=1.0, soc_initial_kwh=3, soc_final_kwh=0
    )
    home = ProsumerSpec(load_kw=2.0, pv=PVSpec(profile_kw=[0, 1, 0, 0]), battery=battery)
    result = prosumer.schedule(home, periods=4, mode="islanded")
    assert_balanced(result)
    assert result.kpis["shed_kwh"] == pytest.approx(4.0, abs=TOL)
    assert result.grid["shed_kw"].sum() == pytest.approx(4.0, abs=TOL)
    assert (result.grid["shed_kw"] <= result.grid["load_kw"] + TOL).all()
    assert result.kpis["import_kwh"] == 0 and result.kpis["export_kwh"] == 0
    assert result.kpis["cost"] == pytest.approx(10_000 * 4.0 / 1000, abs=TOL)


def test_islanded_surplus_is_curtailed_even_if_pv_is_not_curtailable():
    home = ProsumerSpec(load_kw=1.0, pv=PVSpec(profile_kw=[3.0, 0.5], curtailable=False))
    result = prosumer.schedule(home, periods=2, mode="islanded")
    assert_balanced(result)
    assert result.grid["curtailed_kw"].tolist() == pytest.approx([2.0, 0.0], abs=TOL)
    assert result.grid["shed_kw"].tolist() == pytest.approx([0.0, 0.5], abs=TOL)


def test_grid_connected_home_pays_the_tariff_and_prices_its_balance():
    prices = PricesSpec(import_price=[100, 200, 300], export_price=[50, 50, 50])
    home = ProsumerSpec(load_kw=[1.0, 2.0, 0.0], pv=PVSpec(profile_kw=[0, 0, 4.0]))
    result = prosumer.schedule(home, prices, periods=3, period_hours=0.5)
    assert_balanced(result)
    assert result.kpis["cost"] == pytest.approx((100 * 1 + 200 * 2 - 50 * 4) * 0.5 / 1000)
    # one more kW of demand costs the import price when importing, and the lost
    # export revenue when exporting
    assert result.grid["marginal_price"].tolist() == pytest.approx([100, 200, 50])


def test_many_homes_are_independent():
    prices = PricesSpec(import_price=[100, 300, 200, 400], export_price=40)
    homes = {
        "a": ProsumerSpec(
            load_kw=[1, 2, 1, 3], battery=BatterySpec(capacity_kwh=4, p_charge_max_kw=2)
        ),
        "b": ProsumerSpec(load_kw=0.5, pv=PVSpec(profile_kw=[0, 3, 3, 0])),
    }
    together = prosumer.schedule(homes, prices, periods=4)
    assert_balanced(together)
    alone = {pid: prosumer.schedule(home, prices, periods=4) for pid, home in homes.items()}
    for pid, result in alone.items():
        assert_balanced(result)
        row = together.prosumers.set_index("prosumer").loc[pid]
        assert row["cost"] == pytest.approx(result.kpis["cost"], abs=TOL)
    assert together.kpis["cost"] == pytest.approx(sum(r.kpis["cost"] for r in alone.values()))


def test_self_sufficiency_imports_less_than_least_cost():
    # Exporting PV at a high feed-in tariff and buying back cheap at night is cheapest;
    # self-sufficiency stores the PV instead.
    prices = PricesSpec(import_price=[300, 300, 100, 100], export_price=[250, 250, 0, 0])
    home = ProsumerSpec(
        load_kw=[0, 0, 2, 2],
        pv=PVSpec(profile_kw=[2, 2, 0, 0]),
        battery=BatterySpec(capacity_kwh=4, p_charge_max_kw=2, eta_charge=1, eta_discharge=1),
    )
    cheapest = prosumer.schedule(home, prices, periods=4, objective="cost")
    selfish = prosumer.schedule(home, prices, periods=4, objective="self_sufficiency")
    mixed = prosumer.schedule(
        home, prices, periods=4, objective={"cost": 1.0, "self_sufficiency": 1.0}
    )
    for result in (cheapest, selfish, mixed):
        assert_balanced(result)
    assert cheapest.kpis["import_kwh"] == pytest.approx(4.0)
    assert selfish.kpis["import_kwh"] == pytest.approx(0.0, abs=TOL)
    assert selfish.kpis["self_sufficiency"] == pytest.approx(1.0)
    assert mixed.kpis["import_kwh"] == pytest.approx(0.0, abs=TOL)  # 1/kWh > 0.15/kWh gain


def test_demand_charge_flattens_the_peak():
    battery = BatterySpec(capacity_kwh=6, p_charge_max_kw=3, eta_charge=1, eta_discharge=1)
    home = ProsumerSpec(load_kw=[1, 1, 5, 1], battery=battery)
    prices = PricesSpec(import_price=100)
    flat = home.model_copy(update={"demand_charge_per_kw": 10.0})
    without = prosumer.schedule(home, prices, periods=4)
    with_charge = prosumer.schedule(flat, prices, periods=4)
    assert without.kpis["peak_import_kw"] == pytest.approx(5.0)
    # the battery starts empty: the 7 kWh of periods 0..2 set the least peak, 7 / 3 kW
    assert with_charge.prosumers["peak_import_kw"].iloc[0] == pytest.approx(7 / 3)
    assert with_charge.kpis["demand_charge"] == pytest.approx(10.0 * 7 / 3)


def test_extra_hook_adds_user_constraints():
    def no_import_in_period_1(m):
        m.user_cap = pyo.Constraint(expr=m.home["home"].p_import_kw[1] <= 0.5)

    home = ProsumerSpec(load_kw=1.0, battery=BatterySpec(capacity_kwh=2, p_charge_max_kw=2))
    result = prosumer.schedule(
        home, PricesSpec(import_price=100), periods=2, extra=no_import_in_period_1
    )
    assert_balanced(result)
    assert result.grid["import_kw"].iloc[1] <= 0.5 + TOL


def test_export_price_above_import_price_is_refused():
    with pytest.raises(InputError, match="export_price: above import_price in period 1"):
        prosumer.build(
            ProsumerSpec(load_kw=1.0),
            PricesSpec(import_price=[100, 100], export_price=[50, 150]),
            periods=2,
        )


@pytest.mark.parametrize("name", ["prosumer_home", "prosumer_islanded"])
def test_case_files_run_and_balance(name):
    case = load_case(CASES / f"{name}.yaml")
    result = pipeline.run_case(case, {})
    assert_balanced(result)
    assert result.grid["timestamp"].iloc[0].isoformat() == case.horizon.start.isoformat()
    if case.mode == "islanded":
        assert result.kpis["shed_kwh"] > 0
        assert result.kpis["shed_kwh"] == pytest.approx(result.grid["shed_kw"].sum())
    else:
        assert np.isclose(result.kpis["shed_kwh"], 0.0)


def test_bid_curves_step_at_the_batterys_cost():
    # 2 kW of load; a full 1 kWh battery discharges only when the price beats its
    # 50/MWh degradation cost: net import is 2 kW below 50 and 1 kW above.
    battery = BatterySpec(
        capacity_kwh=1,
        p_charge_max_kw=1,
        eta_discharge=1.0,
        soc_initial_kwh=1,
        soc_final_kwh=0,
        degradation_cost_per_mwh=50,
    )
    home = ProsumerSpec(load_kw=2.0, battery=battery, bus=7)
    bids = prosumer.bid_curves(
        home, PricesSpec(import_price=0.0), [100, 0, 40, 60], participant="h", periods=1
    )
    assert list(bids.columns) == [
        "participant",
        "side",
        "quantity_kw",
        "price",
        "period",
        "block",
        "bus",
    ]
    assert bids[["side", "quantity_kw", "price"]].values.tolist() == [
        ["buy", 1.0, 40.0],
        ["buy", 1.0, 100.0],
    ]
    assert set(bids["bus"]) == {7} and set(bids["participant"]) == {"h"}


def test_bid_curves_accept_what_the_ems_would_choose():
    battery = BatterySpec(capacity_kwh=4, p_charge_max_kw=2, soc_initial_kwh=2)
    home = ProsumerSpec(load_kw=[1, 0.5, 1], pv=PVSpec(profile_kw=[0, 3, 0]), battery=battery)
    base = PricesSpec(import_price=[200, 100, 300], export_price=[200, 100, 300])
    ladder = [0, 150, 250, 400]
    bids = prosumer.bid_curves(home, base, ladder, periods=3)
    # the battery links the periods: the bids keep it at its plan for the base tariff
    # (deliverable whatever is accepted), so the EMS's choice is with that plan pinned
    plan = prosumer.schedule(home, base, periods=3).tables["storage"]
    plan = plan.set_index("period")["p_discharge_kw"] - plan.set_index("period")["p_charge_kw"]

    def pin(m):
        battery = m.home["home"].battery
        m.plan = pyo.Constraint(m.PERIODS, rule=lambda m, t: battery.p_net_kw[t] == plan[t])

    for t in range(3):
        for price in ladder:
            tried = [200, 100, 300]
            tried[t] = price
            own = prosumer.schedule(
                {"home": home},
                PricesSpec(import_price=tried, export_price=tried),
                periods=3,
                extra=pin,
            )
            row = own.grid.iloc[t]
            period = bids[bids["period"] == t]
            bought = period[(period["side"] == "buy") & (period["price"] >= price)]
            sold = period[(period["side"] == "sell") & (period["price"] <= price)]
            accepted = bought["quantity_kw"].sum() - sold["quantity_kw"].sum()
            assert accepted == pytest.approx(row["import_kw"] - row["export_kw"], abs=1e-6)


@pytest.mark.slow
def test_feeder_case_through_the_cli_reports_the_ac_check(tmp_path):
    # Through the CLI in a subprocess: its written tables must balance, and the homes'
    # injections reach pandapower's AC power flow.
    import json
    import subprocess

    import pandas as pd

    out = tmp_path / "out"
    done = subprocess.run(
        ["gridmarkets", "solve", str(CASES / "prosumer_feeder.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ac_check"]["max_voltage_error_pu"] < 0.01
    assert summary["ac_check"]["mean_loss_kw_ac"] > 0
    power = pd.read_csv(out / "power.csv")
    assert power.groupby(["prosumer", "period"])["p_kw"].sum().abs().max() < 1e-6
    assert set(pd.read_csv(out / "grid.csv")["bus"]) == {4, 7, 9, 11, 12, 13}
