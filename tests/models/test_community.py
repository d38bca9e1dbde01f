"""The energy community: balances, coalitions, fair split, bids, objectives, case files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gridmarkets import pipeline, registry
from gridmarkets.case import load_case
from gridmarkets.errors import CaseError, InputError
from gridmarkets.models import allocation, community, lem, prosumer
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.community import ConnectionSpec, SharedAssetSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.specs import community as community_case

pytestmark = pytest.mark.solve

CASES = Path(__file__).resolve().parents[2] / "data" / "cases"
TOL = 1e-6
SUN = [0.0, 0.0, 3.0, 5.0, 3.0, 0.0]
EVENING = [0.5, 0.5, 0.5, 0.5, 2.0, 2.0]
PRICES = PricesSpec(import_price=[200, 200, 300, 300, 400, 400], export_price=50)


def small_community():
    members = {
        "sunny": ProsumerSpec(load_kw=0.5, pv=PVSpec(profile_kw=SUN)),
        "evening": ProsumerSpec(load_kw=EVENING),
        "storage": ProsumerSpec(
            load_kw=1.0, battery=BatterySpec(capacity_kwh=4, p_charge_max_kw=2, relaxed=True)
        ),
        "plain": ProsumerSpec(load_kw=[1.0, 1.0, 0.2, 0.2, 1.5, 1.5]),
    }
    shared = {
        "battery": SharedAssetSpec(
            battery=BatterySpec(capacity_kwh=6, p_charge_max_kw=3, relaxed=True)
        ),
        "pv": SharedAssetSpec(
            pv=PVSpec(profile_kw=[2 * p for p in SUN]), owners={"evening": 0.7, "plain": 0.3}
        ),
    }
    return members, shared


def game_of(members, shared, prices=PRICES, **build):
    return community.CommunityGame(members, shared, prices, build_options={"periods": 6, **build})


def test_community_balance_closes_every_period():
    members, shared = small_community()
    result = community.schedule(members, shared, PRICES, periods=6)
    x = result.exchange
    residual = (
        x["grid_import_kw"]
        - x["grid_export_kw"]
        + x["shared_kw"]
        + x["members_export_kw"]
        - x["members_import_kw"]
    )
    assert np.abs(residual).max() < TOL
    power = result.power.groupby(["member", "period"])["p_kw"].sum()
    assert np.abs(power).max() < TOL  # every home balances behind its meter
    assert result.kpis["cost"] == pytest.approx(result.solution.objective)


def test_grid_cost_and_internal_price_follow_the_tariff():
    members, shared = small_community()
    result = community.schedule(members, shared, PRICES, periods=6)
    x = result.exchange
    bill = (x["grid_import_kw"] * x["import_price"] - x["grid_export_kw"] * x["export_price"]).sum()
    assert result.kpis["grid_cost"] == pytest.approx(bill / 1000)
    importing = x["grid_import_kw"] > TOL
    # one more kW of demand is bought from the grid when the community imports
    np.testing.assert_allclose(x.loc[importing, "internal_price"], x.loc[importing, "import_price"])


def test_a_member_alone_pays_what_the_prosumer_ems_charges():
    home = ProsumerSpec(
        load_kw=EVENING,
        pv=PVSpec(profile_kw=SUN),
        battery=BatterySpec(capacity_kwh=3, p_charge_max_kw=1.5, degradation_cost_per_mwh=10),
    )
    alone = community.coalition_value({"h": home}, {}, PRICES, ["h"], build_options={"periods": 6})
    ems = prosumer.schedule(home, PRICES, periods=6)
    assert alone == pytest.approx(ems.kpis["cost"], abs=TOL)


def test_one_reused_model_gives_every_coalition_what_a_fresh_build_gives():
    members, shared = small_community()
    game = game_of(members, shared)
    for coalition in game.coalitions():
        fresh = community.coalition_value(
            members, shared, PRICES, coalition, build_options={"periods": 6}
        )
        assert game(coalition) == pytest.approx(fresh, abs=TOL), coalition


def test_a_share_of_a_shared_battery_is_a_battery_of_that_size():
    battery = BatterySpec(capacity_kwh=8, p_charge_max_kw=4, soc_initial_kwh=2, relaxed=True)
    half = BatterySpec(capacity_kwh=4, p_charge_max_kw=2, soc_initial_kwh=1, relaxed=True)
    home = ProsumerSpec(load_kw=EVENING, pv=PVSpec(profile_kw=SUN))
    shared = {"battery": SharedAssetSpec(battery=battery, owners={"a": 0.5, "b": 0.5})}
    alone = community.coalition_value(
        {"a": home, "b": home}, shared, PRICES, ["a"], build_options={"periods": 6}
    )
    with_half = home.model_copy(update={"battery": half})
    assert alone == pytest.approx(prosumer.schedule(with_half, PRICES, periods=6).kpis["cost"])


def test_community_value_is_never_negative_and_the_game_is_subadditive():
    members, shared = small_community()
    game = game_of(members, shared)
    values = game.evaluate_all()
    assert sum(game({i}) for i in members) >= game(game.grand) - TOL
    for s in values:
        for t in values:
            if not s & t:
                assert game(s | t) <= game(s) + game(t) + TOL, (s, t)


def test_shapley_shares_of_a_community_are_efficient_symmetric_and_null():
    twin = ProsumerSpec(load_kw=EVENING, pv=PVSpec(profile_kw=SUN))
    members = {
        "twin1": twin,
        "twin2": twin,
        "other": ProsumerSpec(load_kw=1.0),
        "null": ProsumerSpec(load_kw=0.0),
    }
    owners = {"twin1": 0.3, "twin2": 0.3, "other": 0.4}
    shared = {
        "battery": SharedAssetSpec(
            battery=BatterySpec(capacity_kwh=4, p_charge_max_kw=2, relaxed=True), owners=owners
        )
    }
    connection = ConnectionSpec(capacity_kw=6, shares=owners)
    game = game_of(members, shared, connection=connection)
    shapley = allocation.shapley(game)
    assert shapley.sum() == pytest.approx(game(game.grand), abs=TOL)
    assert shapley["twin1"] == pytest.approx(shapley["twin2"], abs=TOL)
    assert shapley["null"] == pytest.approx(0.0, abs=TOL)


def test_exact_and_sampled_shapley_agree_on_eight_members():
    members, shared, prices = community.sample_community(8, periods=24, period_hours=1.0, seed=4)
    game = community.CommunityGame(
        members, shared, prices, build_options={"periods": 24, "period_hours": 1.0}
    )
    exact = community.split(game, ["shapley"]).table.set_index("member")["shapley"]
    sampled = community.split(game, ["shapley"], exact_up_to=4, samples=300, seed=2)
    table = sampled.table.set_index("member")
    z = (table["shapley"] - exact).abs() / table["shapley_stderr"].clip(lower=1e-9)
    assert (z < 4).all(), z


def test_core_check_names_the_members_an_equal_split_overcharges():
    # one big consumer and two small ones: an equal split makes the small ones pay for
    # the big one's energy, and they would do better on their own
    members = {
        "big": ProsumerSpec(load_kw=10.0),
        "small1": ProsumerSpec(load_kw=0.2),
        "small2": ProsumerSpec(load_kw=0.2),
    }
    game = game_of(members, {})
    outcome = community.split(game, ["equal", "shapley"])
    check = outcome.core["equal"]
    assert not check.in_core
    blocking = check.coalition
    assert "big" not in blocking
    bills = outcome.table.set_index("member")["equal"]
    alone = community.coalition_value(members, {}, PRICES, blocking, build_options={"periods": 6})
    assert bills[list(blocking)].sum() > alone + 1.0
    assert outcome.core["shapley"].in_core


def test_split_table_puts_each_bill_next_to_the_standalone_bill():
    members, shared = small_community()
    outcome = community.split(game_of(members, shared))
    table = outcome.table.set_index("member")
    for rule in ("shapley", "nucleolus", "proportional", "equal"):
        assert table[rule].sum() == pytest.approx(outcome.game(outcome.game.grand), abs=1e-5)
        np.testing.assert_allclose(table[f"savings_{rule}"], table["standalone_cost"] - table[rule])
    assert outcome.value == pytest.approx(
        table["standalone_cost"].sum() - table["shapley"].sum(), abs=1e-5
    )
    assert outcome.core["nucleolus"].in_core


def test_islanded_community_serves_a_neighbour_from_shared_pv():
    members = {"a": ProsumerSpec(load_kw=1.0), "b": ProsumerSpec(load_kw=1.0)}
    shared = {"pv": SharedAssetSpec(pv=PVSpec(profile_kw=[2.0, 0.0]), owners={"a": 1.0})}
    together = community.schedule(members, shared, periods=2, mode="islanded")
    assert together.kpis["import_kwh"] == 0
    assert together.kpis["shed_kwh"] == pytest.approx(2.0)  # nobody has power in period 1
    game = community.CommunityGame(
        members, shared, None, build_options={"periods": 2, "mode": "islanded"}
    )
    # b alone sheds 2 kWh, a alone 1 kWh (its PV covers period 0); together 2 kWh
    assert game({"b"}) == pytest.approx(10.0 * 2)
    assert game({"a"}) == pytest.approx(10.0 * 1)
    assert game(game.grand) == pytest.approx(10.0 * 2)


def test_a_coalition_without_a_share_of_an_asset_reports_it_idle():
    members, shared = small_community()
    result = community.schedule(members, shared, PRICES, periods=6, coalition=["sunny"])
    pv = result.shared[result.shared["asset"] == "pv"]
    assert len(pv) == 6 and (pv["p_kw"] == 0).all()
    battery = result.shared[result.shared["asset"] == "battery"]
    assert battery["soc_kwh"].max() <= 6 / 4 + TOL  # a quarter of the shared battery


def test_connection_capacity_binds_and_is_shared_among_coalitions():
    members = {"a": ProsumerSpec(load_kw=3.0), "b": ProsumerSpec(load_kw=3.0)}
    shared = {"battery": SharedAssetSpec(battery=BatterySpec(capacity_kwh=20, p_charge_max_kw=10))}
    prices = PricesSpec(import_price=[100, 500], export_price=0)
    connection = ConnectionSpec(capacity_kw=8.0, shares={"a": 0.75, "b": 0.25})
    result = community.schedule(members, shared, prices, periods=2, connection=connection)
    # cheap period: 6 kW of load and 2 kW into the battery at the 8 kW limit; dear
    # period: the battery returns 2 x 0.95 x 0.95 kW
    assert result.exchange["grid_import_kw"].tolist() == pytest.approx(
        [8.0, 6.0 - 2.0 * 0.95 * 0.95]
    )
    model = community.build(
        members, shared, prices, periods=2, connection=connection, coalition=["b"]
    )
    assert model.p_grid_import_kw[0].ub == pytest.approx(2.0)
    with pytest.raises(Exception, match="infeasible"):
        community.schedule(
            members, {}, prices, periods=2, connection=ConnectionSpec(capacity_kw=5.0)
        )


def test_emissions_and_self_sufficiency_objectives_trade_off_cost():
    members = {
        "a": ProsumerSpec(load_kw=[0.0, 2.0, 2.0], pv=PVSpec(profile_kw=[3.0, 0.0, 0.0])),
    }
    shared = {"battery": SharedAssetSpec(battery=BatterySpec(capacity_kwh=4, p_charge_max_kw=4))}
    prices = PricesSpec(import_price=[300, 100, 300], export_price=[290, 50, 50])
    carbon = [50.0, 800.0, 50.0]
    options = {"periods": 3, "carbon_kg_per_mwh": carbon}
    cost = community.schedule(members, shared, prices, objective="cost", **options)
    green = community.schedule(members, shared, prices, objective="emissions", **options)
    local = community.schedule(members, shared, prices, objective="self_sufficiency", **options)
    # cost: sell the PV at 290 rather than store it (0.95^2 x 300 = 271); emissions:
    # store it for the dirty period 1; self-sufficiency: store it
    assert green.kpis["emissions_kg"] < cost.kpis["emissions_kg"] - 0.5
    assert green.kpis["cost"] > cost.kpis["cost"]
    assert local.kpis["self_sufficiency"] >= cost.kpis["self_sufficiency"] + 0.3
    assert cost.kpis["emissions_kg"] == pytest.approx(
        (cost.exchange["grid_import_kw"] * np.array(carbon)).sum() / 1000
    )


def test_exchange_bids_clear_in_the_local_market():
    members, shared = small_community()
    result = community.schedule(members, shared, PRICES, periods=6)
    bids = community.exchange_bids(result, participant="ec")
    assert list(bids.columns) == community.BID_COLUMNS
    x = result.exchange
    net = (x["grid_import_kw"] - x["grid_export_kw"]).to_numpy()
    signed = bids.assign(q=np.where(bids["side"] == "buy", 1, -1) * bids["quantity_kw"])
    np.testing.assert_allclose(
        signed.groupby("period")["q"].sum().reindex(range(6), fill_value=0), net, atol=TOL
    )
    # a cheap local seller where the community buys, a dear local buyer where it
    # sells: its bids and offers are all accepted
    other = [
        {"participant": "local", "side": "sell" if side == "buy" else "buy", "quantity_kw": 50.0}
        | {"price": 10.0 if side == "buy" else 900.0, "period": t}
        for side, t in zip(bids["side"], bids["period"], strict=True)
    ]
    extra = pd.DataFrame(other)
    cleared = lem.clear(pd.concat([bids, extra], ignore_index=True))
    accepted = cleared.accepted[cleared.accepted["participant"] == "ec"]
    assert accepted["accepted_kw"].sum() == pytest.approx(bids["quantity_kw"].sum())


def test_case_files_run_with_allocation():
    case = load_case(CASES / "community_village.yaml")
    result = pipeline.run_case(case, {})
    table = result.allocation
    assert set(table["member"]) == set(case.members)
    assert table["shapley"].sum() == pytest.approx(result.kpis["objective"], abs=1e-5)
    assert result.kpis["community_value"] >= -TOL
    assert result.kpis["in_core_nucleolus"] == 1.0


def test_islanded_case_splits_the_energy_not_served():
    case = load_case(CASES / "community_islanded.yaml")
    assert registry.case_class("community") is community_case.CaseSpec
    result = pipeline.run_case(case, {})
    assert result.kpis["import_kwh"] == 0 and result.kpis["export_kwh"] == 0
    assert result.kpis["objective"] == pytest.approx(result.kpis["shed_kwh"])
    table = result.allocation.set_index("member")
    assert table["nucleolus"].sum() == pytest.approx(result.kpis["shed_kwh"], abs=1e-5)
    assert result.kpis["community_value"] == pytest.approx(
        table["standalone_cost"].sum() - result.kpis["shed_kwh"], abs=1e-6
    )


def test_case_errors_name_the_field():
    data = {
        "model": "community",
        "prices": {"import_price": 300},
        "members": {"a": {"load_kw": 1.0}},
        "shared": {"pv": {"pv": {"profile_kw": 1.0}, "owners": {"zz": 1.0}}},
    }
    from gridmarkets.case import validate

    with pytest.raises(CaseError, match="shared.pv.owners"):
        validate(data)
    data["shared"]["pv"]["owners"] = {"a": 0.5}
    with pytest.raises(CaseError, match="sum to 0.5"):
        validate(data)
    with pytest.raises(InputError, match="coalition"):
        community.build({"a": ProsumerSpec(load_kw=1.0)}, None, PRICES, periods=6, coalition=["b"])


def test_on_a_feeder_with_slack_limits_the_community_pays_the_copper_plate_cost():
    from gridmarkets.networks import load

    feeder = load({"source": "pandapower", "name": "case33bw"})
    members, shared = small_community()
    buses = {"sunny": 5, "evening": 12, "storage": 20, "plain": 30}
    members = {i: spec.model_copy(update={"bus": buses[i]}) for i, spec in members.items()}
    shared = {a: spec.model_copy(update={"bus": 16}) for a, spec in shared.items()}
    plate = community.schedule(members, shared, PRICES, periods=6)
    grid = community.schedule(members, shared, PRICES, periods=6, network=feeder)
    assert grid.kpis["cost"] == pytest.approx(plate.kpis["cost"], abs=1e-6)
    # the root's nodal price is the internal price: the tariff while importing
    importing = grid.exchange["grid_import_kw"] > TOL
    np.testing.assert_allclose(
        grid.exchange.loc[importing, "internal_price"],
        grid.exchange.loc[importing, "import_price"],
        rtol=1e-6,
    )
    with pytest.raises(InputError, match=r"members\.sunny: bus \(none\) is not a bus of feeder"):
        community.build(small_community()[0], None, PRICES, periods=6, network=feeder)
    off = {"battery": shared["battery"].model_copy(update={"bus": 99})}
    with pytest.raises(InputError, match=r"shared\.battery: bus 99 is not a bus of feeder"):
        community.build(members, off, PRICES, periods=6, network=feeder)


def test_bid_curves_accept_what_the_community_would_choose():
    members, shared = small_community()
    tariff = [200, 200, 300, 300, 400, 400]
    base = PricesSpec(import_price=tariff, export_price=tariff)
    ladder = [0, 150, 250, 350, 500]
    model = community.build(members, shared, base, periods=6)
    bids = community.bid_curves(model, ladder, participant="ec")
    assert set(bids["participant"]) == {"ec"} and list(bids.columns) == community.BID_COLUMNS
    for t in (0, 3, 5):
        for price in ladder:
            tried = list(tariff)
            tried[t] = price
            own = community.schedule(
                members, shared, PricesSpec(import_price=tried, export_price=tried), periods=6
            )
            row = own.exchange.iloc[t]
            period = bids[bids["period"] == t]
            bought = period[(period["side"] == "buy") & (period["price"] >= price)]
            sold = period[(period["side"] == "sell") & (period["price"] <= price)]
            accepted = bought["quantity_kw"].sum() - sold["quantity_kw"].sum()
            expected = row["grid_import_kw"] - row["grid_export_kw"]
            assert accepted == pytest.approx(expected, abs=1e-6), (t, price)


def test_exchange_bids_trade_in_the_p2p_market():
    """The community as one peer: a P2P clearing against counterparts that undercut
    the grid trades exactly its exchange, reciprocally."""
    from gridmarkets.models import p2p

    members, shared = small_community()
    result = community.schedule(members, shared, PRICES, periods=6)
    bids = community.exchange_bids(result, participant="ec")
    other = [
        {"participant": "peer", "side": "sell" if side == "buy" else "buy", "quantity_kw": 50.0}
        | {"price": 10.0 if side == "buy" else 900.0, "period": t}
        for side, t in zip(bids["side"], bids["period"], strict=True)
    ]
    cleared = p2p.clear(pd.concat([bids, pd.DataFrame(other)], ignore_index=True))
    trades = cleared.trades
    with_ec = trades[(trades["seller"] == "ec") | (trades["buyer"] == "ec")]
    assert with_ec["traded_kw"].sum() == pytest.approx(bids["quantity_kw"].sum(), rel=1e-6)
