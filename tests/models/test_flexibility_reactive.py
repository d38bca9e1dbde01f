"""Flexibility market: kvar of active-power offers (q_kvar / power_factor), against
lossless LinDistFlow and pandapower's AC power flow run here on injections built by hand."""

from __future__ import annotations

import copy
import math

import pandapower as pp
import pandas as pd
import pytest

from gridmarkets.errors import InputError
from gridmarkets.models import flexibility as fx
from gridmarkets.networks import feeder_from_net, linear_power_flow
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve

PF = 0.9
RATIO = math.tan(math.acos(PF))  # kvar per kW, about 0.484
PV_KW = 1150.0


@pytest.fixture(scope="module")
def weak_spur():
    """Root 0 - 1 - 2 (strong), 1 - 3 a weak spur (about 1039 kVA), 20 kV, 1 MVA base."""
    net = pp.create_empty_network(sn_mva=1.0)
    buses = [pp.create_bus(net, vn_kv=20.0, min_vm_pu=0.95, max_vm_pu=1.05) for _ in range(4)]
    pp.create_ext_grid(net, buses[0], vm_pu=1.0)
    for a, b, max_i_ka in ((0, 1, 0.4), (1, 2, 0.4), (1, 3, 0.03)):
        pp.create_line_from_parameters(
            net, buses[a], buses[b], 5.0, 0.4, 0.4, c_nf_per_km=0.0, max_i_ka=max_i_ka
        )
    return feeder_from_net(net, name="weak_spur")


def offers_table(rows, **extra) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=fx.OFFER_COLUMNS).assign(**extra)


def spur_offers(**extra) -> pd.DataFrame:
    """PV behind the overloaded spur offers curtailment (down) to the DSO."""
    return offers_table([("pv3", 3, 0, "dso", "down", 600.0, 0.0, 50.0)], **extra)


def baseline(feeder) -> pd.DataFrame:
    return pd.DataFrame({0: [0.0, 0.0, -300.0, PV_KW]}, index=feeder.buses.index)


def pool(feeder, offers):
    base = baseline(feeder)
    needs = fx.dso_needs(feeder, base)
    m = fx.build(offers, network=feeder, baseline_p_kw=base, needs=needs)
    return m, fx.results(m, solve(m))


def by_hand(feeder, curtailed_kw: float, ratio: float):
    """Baseline plus the activated down offer at bus 3: P and ratio x P less."""
    p = baseline(feeder)
    q = 0.0 * p
    p.at[3, 0] -= curtailed_kw
    q.at[3, 0] -= ratio * curtailed_kw
    return p, q


def pandapower_run(feeder, p: pd.DataFrame, q: pd.DataFrame):
    """pandapower's AC power flow with one static generator per non-root bus."""
    net = copy.deepcopy(feeder.net)
    for bus in feeder.buses.index:
        if bus != feeder.root:
            pp.create_sgen(net, bus, p_mw=p.at[bus, 0] / 1000.0, q_mvar=q.at[bus, 0] / 1000.0)
    pp.runpp(net, numba=False)
    return net


# --- (a) the pool's grids carry the offer's kvar -------------------------------------------


def test_pool_branch_flows_include_the_kvar_of_an_offer_with_a_power_factor(weak_spur):
    m, result = pool(weak_spur, spur_offers(power_factor=PF))
    x = result.accepted.set_index("seller").at["pv3", "accepted_kw"]
    assert x > 0
    p, q = by_hand(weak_spur, x, RATIO)
    _, flows = linear_power_flow(weak_spur, p, q)
    handles = m.scenario["dispatch"].handles
    s_base = weak_spur.s_base_kva
    for branch, row in flows.iterrows():
        assert pyo_value(handles.q_flow[branch, 0]) * s_base == pytest.approx(
            row["q_kvar"], rel=1e-7, abs=1e-6
        )
        assert pyo_value(handles.p_flow[branch, 0]) * s_base == pytest.approx(
            row["p_kw"], rel=1e-7, abs=1e-6
        )
    spur = flows.index[flows["to_bus"] == 3][0]
    # the kvar is really there: lossless, the spur carries the offer's ratio x kvar
    assert abs(flows.at[spur, "q_kvar"]) == pytest.approx(RATIO * x, rel=1e-9)
    injections = result.tables["injections"].set_index(["scenario", "bus"]).loc["dispatch"]
    assert injections.at[3, "q_kvar"] == pytest.approx(-RATIO * x, rel=1e-9)


def pyo_value(component) -> float:
    import pyomo.environ as pyo

    return float(pyo.value(component))


def test_tso_offer_with_q_kvar_moves_q_with_p_in_its_activation(weak_spur):
    # an up offer injecting x kW more injects q_kvar x / quantity_kw kvar more
    offers = offers_table([("bat2", 2, 0, "fcr_d_up", "up", 200.0, 5.0, 0.0)], q_kvar=[50.0])
    req = fx.tso_requirements(fx.load_products(), [0], {"fcr_d_up": 150.0})
    base = pd.DataFrame({0: [0.0, 0.0, -100.0, 0.0]}, index=weak_spur.buses.index)
    result = fx.clear(offers, requirements=req, network=weak_spur, baseline_p_kw=base)
    x = result.accepted.at[0, "accepted_kw"]
    assert x == pytest.approx(150.0)
    inj = result.tables["injections"].set_index(["scenario", "bus"])
    assert inj.at[("tso_up", 2), "p_kw"] == pytest.approx(-100.0 + x)
    assert inj.at[("tso_up", 2), "q_kvar"] == pytest.approx(50.0 / 200.0 * x)
    assert inj.at[("dispatch", 2), "q_kvar"] == pytest.approx(0.0, abs=1e-9)


# --- (b) the AC check after activation includes the kvar -------------------------------------


def test_ac_check_after_activation_is_pandapowers_flow_with_the_kvar(weak_spur):
    m, result = pool(weak_spur, spur_offers(power_factor=PF))
    x = result.accepted.at[0, "accepted_kw"]
    net = pandapower_run(weak_spur, *by_hand(weak_spur, x, RATIO))
    check = m.ac_checks["dispatch"]
    buses = check.buses.set_index("bus")["v_pu_ac"]
    for bus in weak_spur.buses.index:
        assert buses[bus] == pytest.approx(net.res_bus.at[bus, "vm_pu"], abs=1e-8)
    lines = check.branches.set_index("element")["loading_percent_ac"]
    for line in net.line.index:
        assert lines[line] == pytest.approx(net.res_line.at[line, "loading_percent"], rel=1e-6)
    # without the kvar the spur would be less loaded: the check saw the kvar
    p_only = pandapower_run(weak_spur, *by_hand(weak_spur, x, 0.0))
    spur = net.line.index[net.line["to_bus"] == 3][0]
    assert net.res_line.at[spur, "loading_percent"] > (
        p_only.res_line.at[spur, "loading_percent"] + 0.1
    )
    assert result.ac_check["dispatch"]["max_loading_percent"] == pytest.approx(
        net.res_line["loading_percent"].max(), rel=1e-6
    )


def test_bilateral_activation_and_ac_check_include_the_kvar(weak_spur):
    base = baseline(weak_spur)
    needs = fx.dso_needs(weak_spur, base)
    deal = fx.bilateral(weak_spur, spur_offers(power_factor=PF), needs, base)
    x = deal.accepted.at[0, "accepted_kw"]
    assert x > 0
    net = pandapower_run(weak_spur, *by_hand(weak_spur, x, RATIO))
    assert deal.ac_check["dispatch"]["max_loading_percent"] == pytest.approx(
        net.res_line["loading_percent"].max(), rel=1e-6
    )
    assert deal.ac_check["dispatch"]["violations_count"] == 0
    # the thermal polygon saw the kvar: the spur's lossless loading after the purchase,
    # P and Q, is within the need's target
    _, flows = linear_power_flow(weak_spur, *by_hand(weak_spur, x, RATIO))
    need = needs[needs["limit_kind"] == "thermal"].iloc[0]
    assert flows.loc[int(need["index"]), "loading_percent"] <= need["target_linear"] + 1e-6
    unity = fx.bilateral(weak_spur, spur_offers(), needs, base)
    # the kvar the curtailment withdraws loads the spur: the DSO buys more than at unity
    assert x > unity.accepted.at[0, "accepted_kw"] + 0.1


def test_bilateral_sensitivity_of_an_offer_with_a_power_factor_moves_p_and_q(weak_spur):
    # central finite difference of lossless LinDistFlow's loading, the offer moving P by
    # h and Q by ratio h
    base = pd.DataFrame({0: [0.0, 0.0, -300.0, 1000.0]}, index=weak_spur.buses.index)
    base_q = pd.DataFrame({0: [0.0, 0.0, 0.0, 400.0]}, index=weak_spur.buses.index)
    needs = fx.baseline_flows(weak_spur, fx.dso_needs(weak_spur, base, base_q), base, base_q)
    offers = offers_table(
        [("a", 3, 0, "dso", "down", 100.0, 0.0, 10.0), ("b", 3, 0, "dso", "up", 100.0, 0.0, 10.0)],
        power_factor=[PF, 0.8],
    )
    sens = fx.sensitivities(weak_spur, needs, offers)
    spur = needs.index[needs["limit_kind"] == "thermal"][0]
    line = int(needs.at[spur, "index"])
    step = 1e-3
    for o, pf in zip(offers.index, (PF, 0.8), strict=True):
        sign = 1.0 if offers.at[o, "direction"] == "up" else -1.0
        ratio = math.tan(math.acos(pf))
        moved = {}
        for h in (step, -step):
            p, q = base.copy(), base_q.copy()
            p.at[3, 0] += sign * h
            q.at[3, 0] += sign * ratio * h
            _, flows = linear_power_flow(weak_spur, p, q)
            moved[h] = flows.loc[line, "loading_percent"]
        relief = (moved[-step] - moved[step]) / (2 * step)
        got = sens[(sens["need"] == spur) & (sens["offer"] == o)]["sensitivity"].sum()
        assert got == pytest.approx(relief, rel=1e-6)


# --- (c) unity power factor clears exactly as before -------------------------------------


@pytest.mark.parametrize(
    "extra", [{"power_factor": 1.0}, {"q_kvar": 0.0}, {"power_factor": float("nan")}]
)
def test_unity_power_factor_clears_as_without_the_column(weak_spur, extra):
    _, before = pool(weak_spur, spur_offers())
    _, after = pool(weak_spur, spur_offers(**extra))
    columns = ["seller", "accepted_kw", "price", "payment"]
    pd.testing.assert_frame_equal(after.accepted[columns], before.accepted[columns])
    pd.testing.assert_frame_equal(after.tables["injections"], before.tables["injections"])
    assert after.kpis["procurement_cost"] == before.kpis["procurement_cost"]
    assert after.ac_check["dispatch"] == before.ac_check["dispatch"]
    base = baseline(weak_spur)
    needs = fx.dso_needs(weak_spur, base)
    deal_before = fx.bilateral(weak_spur, spur_offers(), needs, base)
    deal_after = fx.bilateral(weak_spur, spur_offers(**extra), needs, base)
    assert deal_after.accepted.at[0, "accepted_kw"] == deal_before.accepted.at[0, "accepted_kw"]
    assert deal_after.ac_check == deal_before.ac_check


# --- (d) bad input ----------------------------------------------------------------------


def two_offers(**extra) -> pd.DataFrame:
    rows = [
        ("ok", 2, 0, "dso", "down", 100.0, 0.0, 10.0),
        ("bad", 3, 0, "dso", "down", 100.0, 0.0, 10.0),
    ]
    return offers_table(rows, **extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"q_kvar": [None, 20.0], "power_factor": [None, 0.9]},
            r"offers row 1 \(seller 'bad'\): power_factor 0\.9 and q_kvar are both given",
        ),
        (
            {"power_factor": [None, 0.0]},
            r"offers row 1 \(seller 'bad'\): power_factor 0\.0 must "
            r"be in \(0, 1\]",
        ),
        (
            {"power_factor": [None, 1.2]},
            r"offers row 1 \(seller 'bad'\): power_factor 1\.2 must "
            r"be in \(0, 1\]",
        ),
        (
            {"q_kvar": [None, "lots"]},
            r"offers row 1 \(seller 'bad'\): q_kvar 'lots' must be a "
            r"number",
        ),
    ],
)
def test_bad_reactive_columns_are_named_by_row_and_column(extra, message):
    with pytest.raises(InputError, match=message):
        fx.prepare_offers(two_offers(**extra), fx.load_products())


@pytest.mark.parametrize("column", ["q_kvar", "power_factor"])
def test_a_reactive_offer_takes_no_q_kvar_or_power_factor(column):
    offers = offers_table(
        [
            ("ok", 2, 0, "dso", "down", 100.0, 0.0, 10.0),
            ("var", 3, 0, "reactive", "down", 100.0, 0.0, 1.0),
        ],
        **{column: [None, 0.9]},
    )
    with pytest.raises(
        InputError,
        match=rf"offers row 1 \(seller 'var'\): {column} 0\.9 is for active-power offers",
    ):
        fx.prepare_offers(offers, fx.load_products())
