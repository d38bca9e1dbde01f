"""Flexibility market: against a merit order, pandapower's AC power flow and hand sums."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pandapower as pp
import pandas as pd
import pytest

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.errors import InputError
from gridmarkets.models import flexibility as fx
from gridmarkets.models.assets import BatterySpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec, schedule
from gridmarkets.networks import ac_check, feeder_from_net, linear_power_flow

pytestmark = pytest.mark.solve

PRODUCTS = fx.load_products()
ISSUE_PRODUCTS = {
    "fcr_n",
    "fcr_d_up",
    "fcr_d_down",
    "afrr_up",
    "afrr_down",
    "mfrr_up",
    "mfrr_down",
    "ffr",
}


def offers_table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=fx.OFFER_COLUMNS)


def chain_feeder(spans, *, km=5.0, r=0.4, x=0.4, name="chain"):
    """A 20 kV radial feeder from (from, to, max_i_ka) spans; bus 0 is the root (1 MVA base)."""
    net = pp.create_empty_network(sn_mva=1.0)
    n = 1 + max(max(a, b) for a, b, _ in spans)
    buses = [pp.create_bus(net, vn_kv=20.0, min_vm_pu=0.95, max_vm_pu=1.05) for _ in range(n)]
    pp.create_ext_grid(net, buses[0], vm_pu=1.0)
    for a, b, max_i_ka in spans:
        pp.create_line_from_parameters(
            net, buses[a], buses[b], km, r, x, c_nf_per_km=0.0, max_i_ka=max_i_ka
        )
    return feeder_from_net(net, name=name)


@pytest.fixture(scope="module")
def weak_spur():
    """Root 0 - 1 - 2 (strong), 1 - 3 a weak spur (about 1039 kVA)."""
    return chain_feeder([(0, 1, 0.4), (1, 2, 0.4), (1, 3, 0.03)], name="weak_spur")


@pytest.fixture(scope="module")
def noon_case():
    """The shipped SimBench high-PV case, cleared in pool and bilateral mode."""
    case = load_case(shipped_cases_dir() / "flexibility_lv_noon.yaml")
    return case, pipeline.run_case(case, {})


# --- products ---------------------------------------------------------------------------


@pytest.mark.unit
def test_products_file_has_every_product_of_the_issue_each_with_a_source():
    assert set(PRODUCTS.index) == ISSUE_PRODUCTS
    for product, row in PRODUCTS.iterrows():
        assert row["sources"], product
        assert set(row["illustrative"]) <= set(PRODUCTS.columns), product
        # no published per-feeder requirement or capacity price cap exists: say so
        assert {"requirement_kw", "price_cap_per_mwh"} <= set(row["illustrative"]), product
    assert PRODUCTS.at["fcr_n", "direction"] == "symmetric"


@pytest.mark.unit
def test_products_activate_in_the_order_of_the_reserve_hierarchy():
    """FFR acts before FCR-D, FCR-D before FCR-N, FCR before aFRR, aFRR before mFRR."""
    t = PRODUCTS["activation_time_s"]
    assert t["ffr"] < t["fcr_d_up"] < t["fcr_n"] < t["afrr_up"] < t["mfrr_up"]
    assert t["fcr_d_up"] == t["fcr_d_down"] and t["afrr_up"] == t["afrr_down"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("tso_requirements.fcr_x", 5.0, "tso_requirements.fcr_x: not a product"),
        ("sellers.battery_9.offers.0.product", "fcrd", "offers.0.product: 'fcrd' unknown"),
        ("tso_requirements.fcr_d_up", [1.0, 2.0], "2 values for 4 periods"),
    ],
)
def test_case_errors_name_the_field(path, value, message):
    from gridmarkets.case import read_yaml, set_path, validate
    from gridmarkets.errors import CaseError

    data = read_yaml(shipped_cases_dir() / "flexibility_lv_noon.yaml")
    if path.startswith("tso_requirements.fcr_x"):
        data["tso_requirements"]["fcr_x"] = value
    else:
        data = set_path(data, path, value)
    with pytest.raises(CaseError, match=re.escape(message)):
        validate(data, "case.yaml")


# --- TSO only, no network: a merit order per product ------------------------------------


def merit_order(offers: pd.DataFrame, need_kw: float, cap: float) -> dict[int, float]:
    """Accept offers cheapest first up to the need; offers above the cap are left out."""
    accepted, left = {}, need_kw
    for o, row in offers.sort_values("capacity_price").iterrows():
        take = min(row["quantity_kw"], left) if row["capacity_price"] <= cap else 0.0
        accepted[o] = take
        left -= take
    return accepted


def test_tso_only_without_network_equals_a_merit_order_per_product():
    rng = np.random.default_rng(7)
    products = ["fcr_n", "fcr_d_up", "mfrr_down"]
    rows = [
        (f"s{k}", None, t, product, "symmetric" if product == "fcr_n" else "up", q, p, 0.0)
        for k, (product, t) in enumerate((p, t) for p in products for t in (0, 1) for _ in range(6))
        for q, p in [(rng.uniform(1, 10), rng.uniform(1, 140))]
    ]
    offers = offers_table(rows).assign(
        direction=lambda d: np.where(d["product"] == "mfrr_down", "down", d["direction"])
    )
    need = {"fcr_n": [12.0, 20.0], "fcr_d_up": [15.0, 5.0], "mfrr_down": [9.0, 30.0]}
    result = fx.clear(offers, requirements=fx.tso_requirements(PRODUCTS, [0, 1], need))
    for (product, t), group in offers.groupby(["product", "period"]):
        cap = PRODUCTS.at[product, "price_cap_per_mwh"]
        expected = merit_order(group, need[product][t], cap)
        got = result.accepted.loc[group.index, "accepted_kw"]
        np.testing.assert_allclose(got, pd.Series(expected)[group.index], atol=1e-6)
    unmet = sum(need[k][t] for k in need for t in (0, 1)) - result.accepted["accepted_kw"].sum()
    assert result.kpis["shortfall_kw"] == pytest.approx(unmet, abs=1e-6)
    paid = (result.accepted["capacity_price"] * result.accepted["accepted_kw"]).sum() / 1000
    assert result.kpis["procurement_cost"] == pytest.approx(paid + 10_000 * unmet / 1000)


def test_uniform_price_is_the_marginal_offer_and_pays_at_least_the_bids():
    offers = offers_table(
        [
            ("a", None, 0, "fcr_d_up", "up", 10.0, 10.0, 0.0),
            ("b", None, 0, "fcr_d_up", "up", 10.0, 25.0, 0.0),
            ("c", None, 0, "fcr_d_up", "up", 10.0, 40.0, 0.0),
        ]
    )
    req = fx.tso_requirements(PRODUCTS, [0], {"fcr_d_up": 15.0})
    uniform = fx.clear(offers, requirements=req, pricing="uniform")
    bid = fx.clear(offers, requirements=req, pricing="pay_as_bid")
    price = uniform.prices.set_index("product").loc["fcr_d_up"]
    assert price["price"] == 25.0  # b is partly accepted: it sets the price
    dual = uniform.requirements.set_index("product").at["fcr_d_up", "marginal_price"]
    assert dual == pytest.approx(25.0)  # and the LP dual agrees
    assert uniform.kpis["tso_cost"] == pytest.approx(15.0 * 25.0 / 1000)
    assert bid.kpis["tso_cost"] == pytest.approx((10 * 10.0 + 5 * 25.0) / 1000)


def test_offer_above_the_price_cap_is_refused_and_the_gap_is_a_shortfall():
    cap = PRODUCTS.at["ffr", "price_cap_per_mwh"]
    offers = offers_table(
        [
            ("cheap", None, 0, "ffr", "up", 4.0, cap - 1, 0.0),
            ("dear", None, 0, "ffr", "up", 50.0, cap + 1, 0.0),
        ]
    )
    result = fx.clear(offers, requirements=fx.tso_requirements(PRODUCTS, [0], {"ffr": 10.0}))
    assert result.accepted.set_index("seller")["accepted_kw"].to_dict() == {
        "cheap": 4.0,
        "dear": 0.0,
    }
    assert result.kpis["shortfall_kw"] == pytest.approx(6.0)


def test_a_sellers_headroom_is_shared_by_every_product_it_offers():
    offers = offers_table(
        [
            ("bat", None, 0, "fcr_n", "symmetric", 10.0, 1.0, 0.0),
            ("bat", None, 0, "afrr_down", "down", 10.0, 1.0, 0.0),
            ("other", None, 0, "fcr_n", "symmetric", 20.0, 50.0, 0.0),
            ("other", None, 0, "afrr_down", "down", 20.0, 50.0, 0.0),
        ]
    )
    resources = pd.DataFrame(
        [("bat", 0, 0.0, 0.0, 10.0, 12.0, np.nan)], columns=fx.RESOURCE_COLUMNS
    )
    req = fx.tso_requirements(PRODUCTS, [0], {"fcr_n": 10.0, "afrr_down": 10.0})
    result = fx.clear(offers, requirements=req, resources=resources)
    bat = result.accepted[result.accepted["seller"] == "bat"]
    assert bat["accepted_kw"].sum() == pytest.approx(12.0)  # down headroom binds
    assert result.kpis["tso_cost"] == pytest.approx((12 * 1.0 + 8 * 50.0) / 1000)


# --- with the network ------------------------------------------------------------------


def test_tso_offer_whose_activation_would_overload_the_weak_spur_is_not_accepted(weak_spur):
    """Seller 'spur_battery' at bus 3 is the cheapest FCR-D offer; its activation would
    push the spur (already at the edge of its polygon) over its rating, so the pool
    takes the dearer offer at bus 2 instead; without the network it takes the cheap one."""
    rating = weak_spur.branches.set_index("to_bus").at[3, "rating_kva"]
    edge = rating * math.cos(math.pi / 12)  # LinDistFlow's polygon, side facing P
    baseline = pd.DataFrame({0: [0.0, 0.0, -400.0, edge]}, index=weak_spur.buses.index)
    offers = offers_table(
        [
            ("spur_battery", 3, 0, "fcr_d_up", "up", 200.0, 5.0, 0.0),
            ("home_2", 2, 0, "fcr_d_up", "up", 200.0, 20.0, 0.0),
        ]
    )
    req = fx.tso_requirements(PRODUCTS, [0], {"fcr_d_up": 150.0})
    alone = fx.clear(offers, requirements=req)
    assert alone.accepted.set_index("seller").at["spur_battery", "accepted_kw"] == 150.0

    pooled = fx.clear(offers, requirements=req, network=weak_spur, baseline_p_kw=baseline)
    accepted = pooled.accepted.set_index("seller")["accepted_kw"]
    assert accepted["spur_battery"] == pytest.approx(0.0, abs=1e-6)
    assert accepted["home_2"] == pytest.approx(150.0)
    # the reason, by pandapower: activating the rejected offer overloads the spur
    activated = baseline.copy()
    activated.at[3, 0] += 150.0
    assert not ac_check(weak_spur, activated, 0.0 * activated).violations().empty
    assert pooled.kpis["violations_tso_up"] == 0


def test_uniform_prices_are_set_per_zone_where_the_spur_is_congested(weak_spur):
    """The spur has room for 40 kW of FCR-D activation: its cheap offer fills it and
    sets the spur zone's price; the rest comes from bus 2, whose offer sets the price
    of the unconstrained zone. Without zones the spur's seller would be paid 20."""
    rating = weak_spur.branches.set_index("to_bus").at[3, "rating_kva"]
    edge = rating * math.cos(math.pi / 12)
    baseline = pd.DataFrame({0: [0.0, 0.0, -400.0, edge - 40.0]}, index=weak_spur.buses.index)
    offers = offers_table(
        [
            ("spur_battery", 3, 0, "fcr_d_up", "up", 200.0, 5.0, 0.0),
            ("home_2", 2, 0, "fcr_d_up", "up", 200.0, 20.0, 0.0),
        ]
    )
    req = fx.tso_requirements(PRODUCTS, [0], {"fcr_d_up": 150.0})
    result = fx.clear(
        offers, requirements=req, network=weak_spur, baseline_p_kw=baseline, pricing="uniform"
    )
    acc = result.accepted.set_index("seller")
    spur_line = weak_spur.parent_branch[3]
    assert acc.at["spur_battery", "accepted_kw"] == pytest.approx(40.0, abs=1e-6)
    assert acc.at["spur_battery", "zone"] == str(spur_line)
    assert acc.at["home_2", "zone"] == "-"
    assert acc.at["spur_battery", "price"] == 5.0 and acc.at["home_2", "price"] == 20.0
    dual = result.requirements.at[0, "marginal_price"]
    assert dual == pytest.approx(20.0)  # the system's marginal offer


def test_dso_activation_removes_the_baselines_violations_in_ac(noon_case):
    _, result = noon_case
    before = result.ac_check["before"]
    assert before["violations_count"] > 0  # the transformer is overloaded at noon
    assert result.ac_check["dispatch"]["violations_count"] == 0
    assert result.ac_check["dispatch"]["max_loading_percent"] <= 100.0
    assert result.needs["binding"].any()


def test_activating_the_tso_reserve_keeps_the_feeder_within_its_limits(noon_case):
    case, result = noon_case
    assert result.ac_check["tso_up"]["violations_count"] == 0
    req = result.requirements
    np.testing.assert_allclose(req["procured_kw"], case.tso_requirements["fcr_d_up"])


def test_fcr_d_costs_the_curtailment_it_needs_where_the_transformer_is_congested(noon_case):
    """Each extra kW of FCR-D upwards adds a kW of reverse flow through the congested
    transformer, which a kW of PV curtailment (60 per MWh) must make room for: the
    requirement's marginal price is the marginal FCR-D offer (18) plus 60 there."""
    case, result = noon_case
    congested = set(result.needs["period"])
    ev_price = case.sellers["ev_aggregator_13"].offers[0].capacity_price
    curtail = case.pv_offers.curtailment_price
    req = result.requirements.set_index("period")
    for t, row in req.iterrows():
        expected = ev_price + (curtail if t in congested else 0.0)
        assert row["marginal_price"] == pytest.approx(expected, abs=1e-6)


def test_reactive_power_fixes_an_overvoltage_where_active_power_would_cost_more():
    feeder = chain_feeder([(0, 1, 0.4), (1, 2, 0.4)], km=10.0, name="long")
    pv_kw, s_max = 3000.0, 3400.0
    baseline = pd.DataFrame({0: [0.0, 0.0, pv_kw]}, index=feeder.buses.index)
    needs = fx.dso_needs(feeder, baseline)
    assert set(needs["limit_kind"]) == {"voltage_upper"}
    q_room = math.sqrt(s_max**2 - pv_kw**2)
    active = ("pv", 2, 0, "dso", "down", pv_kw, 0.0, 50.0)
    reactive = ("pv", 2, 0, "reactive", "down", q_room, 0.0, 5.0)
    resources = pd.DataFrame(
        [("pv", 0, pv_kw, 0.0, np.nan, pv_kw, s_max)], columns=fx.RESOURCE_COLUMNS
    )
    options = {"network": feeder, "baseline_p_kw": baseline, "needs": needs, "resources": resources}
    both = fx.clear(offers_table([active, reactive]), **options)
    only_p = fx.clear(offers_table([active]), **options)
    taken = both.accepted.set_index("product")["accepted_kw"]
    assert taken["reactive"] > 0 and taken["dso"] == pytest.approx(0.0, abs=1e-6)
    assert only_p.kpis["dso_cost"] > both.kpis["dso_cost"] > 0
    for result in (both, only_p):
        assert result.ac_check["before"]["violations_count"] > 0
        assert result.ac_check["dispatch"]["violations_count"] == 0


# --- bilateral -------------------------------------------------------------------------


def loading(feeder, p, q, line: int) -> float:
    """Lossless LinDistFlow's loading (%) of one branch in period 0."""
    _, flows = linear_power_flow(feeder, p, q)
    return float(flows.loc[line, "loading_percent"])


def test_thermal_sensitivity_is_the_loadings_response_in_p_and_q(weak_spur):
    # the spur carries reverse P and Q, so active and reactive offers both move its
    # loading; each sensitivity must be the loading's fall per kW (kvar), a central
    # finite difference of lossless LinDistFlow
    baseline = pd.DataFrame({0: [0.0, 0.0, -300.0, 1000.0]}, index=weak_spur.buses.index)
    baseline_q = pd.DataFrame({0: [0.0, 0.0, 0.0, 400.0]}, index=weak_spur.buses.index)
    needs = fx.dso_needs(weak_spur, baseline, baseline_q)
    needs = fx.baseline_flows(weak_spur, needs, baseline, baseline_q)
    rows = [(f"p{b}", b, 0, "dso", "down", 100.0, 0.0, 10.0) for b in (1, 2, 3)]
    rows += [
        (f"q{b}{d}", b, 0, "reactive", d, 100.0, 0.0, 1.0) for b in (2, 3) for d in ("up", "down")
    ]
    offers = offers_table(rows)
    sens = fx.sensitivities(weak_spur, needs, offers)
    spur = needs.index[needs["limit_kind"] == "thermal"][0]
    line = int(needs.at[spur, "index"])
    step = 1e-3
    for o, row in offers.iterrows():
        moved = {}
        for h in (step, -step):
            p, q = baseline.copy(), baseline_q.copy()
            target = q if row["product"] == "reactive" else p
            target.at[row["bus"], 0] += h * (1.0 if row["direction"] == "up" else -1.0)
            moved[h] = loading(weak_spur, p, q, line)
        relief = (moved[-step] - moved[step]) / (2 * step)
        got = sens[(sens["need"] == spur) & (sens["offer"] == o)]["sensitivity"].sum()
        assert got == pytest.approx(relief, rel=1e-6, abs=1e-12)
    # the spur carries 400 kvar towards the root: injecting more behind it (q3up) adds
    # to that (a negative relief), absorbing (q3down) relieves it
    on_spur = sens[sens["need"] == spur].set_index("offer")["sensitivity"]
    assert on_spur[offers.index[offers["seller"] == "q3up"][0]] < 0
    assert on_spur[offers.index[offers["seller"] == "q3down"][0]] > 0


def test_an_offer_off_the_feeder_is_named_by_seller_and_bus(weak_spur):
    baseline = pd.DataFrame({0: [0.0, 0.0, 0.0, 100.0]}, index=weak_spur.buses.index)
    offers = offers_table([("seller_x", 99, 0, "dso", "down", 10.0, 0.0, 10.0)])
    with pytest.raises(InputError, match=r"offers\.seller_x: bus 99 is not a bus of feeder"):
        fx.build(offers, network=weak_spur, baseline_p_kw=baseline)
    needs = fx.dso_needs(weak_spur, baseline)
    with pytest.raises(InputError, match=r"offers\.seller_x: bus 99 is not a bus of feeder"):
        fx.bilateral(weak_spur, offers, needs, baseline)


def test_bilateral_buys_only_from_buses_behind_the_congestion_and_pays_their_bids(weak_spur):
    baseline = pd.DataFrame({0: [0.0, 0.0, -300.0, 1150.0]}, index=weak_spur.buses.index)
    offers = offers_table(
        [
            ("behind", 3, 0, "dso", "down", 400.0, 0.0, 80.0),
            ("cheap_elsewhere", 2, 0, "dso", "down", 400.0, 0.0, 10.0),
        ]
    )
    needs = fx.dso_needs(weak_spur, baseline)
    deal = fx.bilateral(weak_spur, offers, needs, baseline)
    taken = deal.accepted.set_index("seller")["accepted_kw"]
    assert "cheap_elsewhere" not in taken.index or taken["cheap_elsewhere"] == 0.0
    assert taken["behind"] > 0
    assert deal.kpis["dso_cost"] == pytest.approx(taken["behind"] * 80.0 / 1000)
    assert deal.ac_check["before"]["violations_count"] > 0
    assert deal.ac_check["dispatch"]["violations_count"] == 0
    pool = fx.clear(offers, network=weak_spur, baseline_p_kw=baseline, needs=needs)
    table = fx.compare(pool, deal)
    # the pool's polygon on the spur's flow (a side facing the P axis) lies inside the
    # bilateral one (a vertex on the baseline flow): the pool is never cheaper here
    assert table.set_index("mode").at["pool", "dso_cost"] >= deal.kpis["dso_cost"] - 1e-9


def test_bilateral_reactive_purchase_keeps_the_branch_it_loads_within_its_rating():
    # PV at the end of a feeder overloads the first line (reverse flow) and lifts the far
    # voltage above 1.03 pu; absorbing kvar is the cheap cure for the voltage, but the
    # kvar flow through the first line adds to its loading, so the DSO must curtail
    # more than the active power alone asks for
    feeder = chain_feeder([(0, 1, 0.1), (1, 2, 0.4)], km=7.5, name="pv_end")
    feeder = dataclasses.replace(feeder, buses=feeder.buses.assign(vmax_pu=1.03))
    pv_kw = 4000.0
    baseline = pd.DataFrame({0: [0.0, 0.0, pv_kw]}, index=feeder.buses.index)
    needs = fx.dso_needs(feeder, baseline)
    assert set(needs["limit_kind"]) == {"thermal", "voltage_upper"}
    offers = offers_table(
        [
            ("pv", 2, 0, "dso", "down", pv_kw, 0.0, 60.0),
            ("pv", 2, 0, "reactive", "down", 3000.0, 0.0, 5.0),
        ]
    )
    deal = fx.bilateral(feeder, offers, needs, baseline)
    taken = deal.accepted.set_index("product")["accepted_kw"]
    assert taken["reactive"] > 100.0
    # the curtailment that would meet the thermal need if the kvar did not flow
    thermal = needs[needs["limit_kind"] == "thermal"].iloc[0]
    line = int(thermal["index"])
    rating = feeder.branches.at[line, "rating_kva"]
    p_only = (thermal["value_linear"] - thermal["target_linear"]) / 100.0 * rating
    assert taken["dso"] > p_only + 1.0
    # after the purchase (built here from the accepted table): pandapower's AC loading
    # of the need's branch within 100 %, lossless LinDistFlow's within its target, and
    # the voltage need met in AC
    p, q = baseline.copy(), 0.0 * baseline
    p.at[2, 0] -= taken["dso"]
    q.at[2, 0] -= taken["reactive"]
    after = ac_check(feeder, p, q)
    branch = after.branches.set_index("branch").loc[line]
    assert branch["loading_percent_ac"] <= 100.0
    assert branch["loading_percent_linear"] <= thermal["target_linear"] + 1e-6
    assert after.buses.set_index("bus").at[2, "v_pu_ac"] <= 1.03
    assert after.violations().empty
    assert deal.kpis["violations_dispatch"] == 0


def test_noon_case_compares_the_pool_with_bilateral_procurement(noon_case):
    _, result = noon_case
    table = result.comparison.set_index("mode")
    assert table.at["bilateral", "violations_after"] == 0
    # the pool also curtails to make room for FCR-D activation; bilateral ignores the TSO
    assert table.at["pool", "dso_accepted_kw"] > table.at["bilateral", "dso_accepted_kw"]


# --- offers from a prosumer ------------------------------------------------------------


def test_battery_offers_are_limited_by_the_energy_each_product_lasts():
    battery = BatterySpec(
        capacity_kwh=10.0, p_charge_max_kw=5.0, soc_initial_kwh=5.0, degradation_cost_per_mwh=10.0
    )
    home = ProsumerSpec(bus=3, load_kw=1.0, battery=battery)
    prices = PricesSpec(import_price=200.0, export_price=50.0)
    baseline = schedule({"h": home}, prices, periods=2)
    offers, resources = fx.offers_from_prosumer(
        baseline, {"h": home}, {"fcr_n": (20.0, 0.0), "fcr_d_up": (30.0, 0.0)}
    )
    first = offers[offers["period"] == 0].set_index(["product", "direction"])["quantity_kw"]
    # idle battery at 5 kWh: FCR-N lasts 1 h -> 5 kWh x 0.95 = 4.75 kW up;
    # FCR-D lasts 20 min -> the 5 kW rating binds; down: (10 - 5) / 0.95 kWh over 1 h
    # FCR-N is symmetric: the smaller of 4.75 up and 5 down
    assert first[("fcr_n", "symmetric")] == pytest.approx(4.75)
    assert first[("fcr_d_up", "up")] == pytest.approx(5.0)
    assert ("fcr_d_up", "down") not in first.index
    assert resources.set_index("period").at[0, "up_kw"] == pytest.approx(5.0)


def test_pv_adds_curtailment_but_no_energy_to_the_battery():
    """PV producing 3 kW may be curtailed by 3 kW (down) at any duration; it does not
    let the battery sustain FCR-N upwards for longer than its 4.75 kWh allow."""
    battery = BatterySpec(
        capacity_kwh=10.0, p_charge_max_kw=5.0, soc_initial_kwh=5.0, degradation_cost_per_mwh=10.0
    )
    home = ProsumerSpec(bus=3, load_kw=1.0, battery=battery, pv={"profile_kw": 3.0})
    prices = PricesSpec(import_price=200.0, export_price=50.0)
    baseline = schedule({"h": home}, prices, periods=2)
    assert baseline.storage["p_charge_kw"].max() == pytest.approx(0.0, abs=1e-6)
    offers, _ = fx.offers_from_prosumer(
        baseline, {"h": home}, {"fcr_n": (20.0, 0.0), "fcr_d_down": (30.0, 0.0)}
    )
    first = offers[offers["period"] == 0].set_index(["product", "direction"])["quantity_kw"]
    assert first[("fcr_n", "symmetric")] == pytest.approx(4.75)  # min(4.75 up, 3 + 5 down)
    assert first[("fcr_d_down", "down")] == pytest.approx(3.0 + 5.0)


def test_written_results_balance_buyers_payments_with_sellers_revenue(noon_case, tmp_path):
    import json

    from gridmarkets.results import write

    _, result = noon_case
    out = write(result, tmp_path, "flexibility_lv_noon")
    kpis = json.loads((out / "summary.json").read_text())["kpis"]
    assert kpis["dso_cost"] + kpis["tso_cost"] == pytest.approx(kpis["sellers_revenue"])
    sellers = pd.read_csv(out / "sellers.csv")
    assert sellers["revenue_eur"].sum() == pytest.approx(kpis["sellers_revenue"])
    assert (out / "plots" / "accepted.png").stat().st_size > 0
