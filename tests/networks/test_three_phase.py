"""LinDist3Flow against pandapower's runpp_3ph, against LinDistFlow on a balanced feeder,
and its per-phase prices against finite-difference re-solves."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandapower as pp
import pandas as pd
import pyomo.environ as pyo
import pytest
from radial import lv_net

from gridmarkets.errors import NetworkError
from gridmarkets.networks import LinDistFlow, attach_grid, linear_power_flow, nodal_prices
from gridmarkets.networks.handles import LinearInjections
from gridmarkets.networks.three_phase import (
    PHASES,
    PRICE_PARTS,
    LinDist3Flow,
    ac_check_3ph,
    nodal_prices_3ph,
    phase_arrays,
    phase_injections,
    sequence_to_phase,
    solve_linear_3ph,
    three_phase_feeder,
)
from gridmarkets.solvers import solve

IMPORT_PRICE = 50.0  # currency/MWh at the root


@pytest.fixture(scope="module")
def european():
    """Voltage limits wide enough for its own loads (phase c reaches 1.068 pu)."""
    return three_phase_feeder("ieee_european_lv_asymmetric", vmin_pu=0.9, vmax_pu=1.1)


# ---------------------------------------------------------------------------- AC accuracy


@pytest.mark.solve
def test_european_lv_at_its_own_loads_within_10_mpu_of_runpp_3ph(european):
    """The formulation's own voltages (an LP with the net's loads fixed) against
    pandapower's three-phase AC power flow of the untouched net; a balanced
    single-phase model of the same loads misses by more than the tolerance."""
    p, q = phase_injections(european)
    m = pyo.ConcreteModel()
    m.import_kw = pyo.Var()
    p_kw = {(bus, phase, 0): p.at[bus, phase] for bus in p.index for phase in PHASES}
    q_kvar = {(bus, phase, 0): q.at[bus, phase] for bus in q.index for phase in PHASES}
    p_kw[(european.root, 0)] = m.import_kw
    m.net = pyo.Block()
    handles = LinDist3Flow().add(m.net, european, [0], p_kw, q_kvar)
    m.cost = pyo.Objective(expr=m.import_kw)
    solve(m)
    net = copy.deepcopy(european.net)
    pp.runpp_3ph(net, numba=False)
    buses = list(european.buses.index)
    v_ac = net.res_bus_3ph.loc[buses, [f"vm_{phase}_pu" for phase in PHASES]].to_numpy()
    v_lin = np.sqrt([[handles.voltage_sq[b, phase, 0].value for phase in PHASES] for b in buses])
    error = np.abs(v_lin - v_ac).max(axis=0)
    assert (error <= 0.01).all(), error
    assert m.import_kw.value == pytest.approx(-p.to_numpy().sum(), rel=1e-9)
    v_single = linear_power_flow(european, p.sum(axis=1), q.sum(axis=1))[0]["v_pu"].to_numpy()
    assert np.abs(v_single[:, None] - v_ac).max() > 0.01


@pytest.mark.unit
def test_ac_check_3ph_reproduces_runpp_3ph_of_the_nets_own_elements(european):
    """ac_check_3ph replaces the net's asymmetric loads with one asymmetric sgen per bus:
    its AC side must be runpp_3ph of the untouched net; its linear side is within 0.01 pu
    and tracks the phase voltage unbalance (PVUR, up to 3.8 %) within 0.2 points."""
    check = ac_check_3ph(european)
    net = copy.deepcopy(european.net)
    pp.runpp_3ph(net, numba=False)
    table = check.buses.pivot(index="bus", columns="phase", values="v_pu_ac")
    expected = net.res_bus_3ph.loc[table.index, [f"vm_{phase}_pu" for phase in PHASES]]
    np.testing.assert_allclose(table.to_numpy(), expected.to_numpy(), atol=1e-8)
    assert (check.max_voltage_error_pu <= 0.01).all()
    pvur = check.unbalance[["pvur_percent_linear", "pvur_percent_ac"]].to_numpy()
    assert pvur[:, 1].max() > 3 and np.abs(pvur[:, 0] - pvur[:, 1]).max() < 0.2
    vuf = check.unbalance.set_index("bus")["vuf_percent_ac"]
    np.testing.assert_allclose(vuf, net.res_bus_3ph.loc[vuf.index, "unbalance_percent"], atol=1e-8)
    lines = check.branches[check.branches["kind"] == "line"]
    p_ac = lines.pivot(index="element", columns="phase", values="p_kw_ac")
    expected = net.res_line_3ph.loc[p_ac.index, [f"p_{phase}_from_mw" for phase in PHASES]]
    # both solved to runpp_3ph's tolerance (1e-8 MVA)
    np.testing.assert_allclose(p_ac.to_numpy(), expected.to_numpy() * 1000, atol=1e-4)


@pytest.mark.unit
def test_ac_check_3ph_branch_reactive_flows_and_losses_are_runpp_3phs(european):
    """q per phase at the sending end (whichever end of the line that is) and the
    per-phase losses of every line and the transformer are runpp_3ph's of the untouched
    net."""
    check = ac_check_3ph(european)
    net = copy.deepcopy(european.net)
    pp.runpp_3ph(net, numba=False)
    lines = check.branches[check.branches["kind"] == "line"]
    q_ac = lines.pivot(index="element", columns="phase", values="q_kvar_ac")
    forward = (
        net.line.loc[q_ac.index, "from_bus"].map(european.merged).to_numpy()
        == (
            lines.drop_duplicates("element").set_index("element").loc[q_ac.index, "from_bus"]
        ).to_numpy()
    )
    columns = {end: [f"q_{phase}_{end}_mvar" for phase in PHASES] for end in ("from", "to")}
    sending = np.where(
        forward[:, None],
        net.res_line_3ph.loc[q_ac.index, columns["from"]].to_numpy(),
        net.res_line_3ph.loc[q_ac.index, columns["to"]].to_numpy(),
    )
    np.testing.assert_allclose(q_ac.to_numpy(), sending * 1000, atol=1e-4)
    assert np.abs(q_ac.to_numpy()).max() > 1  # reactive flows to compare
    for kind, result in (("line", net.res_line_3ph), ("trafo", net.res_trafo_3ph)):
        rows = check.branches[check.branches["kind"] == kind]
        loss = rows.pivot(index="element", columns="phase", values="loss_kw_ac")
        expected = result.loc[loss.index, [f"pl_{phase}_mw" for phase in PHASES]].to_numpy()
        np.testing.assert_allclose(loss.to_numpy(), expected * 1000, atol=1e-6)
    assert check.branches["loss_kw_ac"].sum() > 1  # the feeder has losses to read


@pytest.mark.unit
@pytest.mark.parametrize("vector_group", ["Dyn", "YNyn"])
def test_single_phase_load_at_the_transformer_matches_runpp_3ph(vector_group):
    """15 kW on phase a right at the tapped transformer's LV bus: the zero sequence the
    transformer presents (pandapower's T model, HV side earthed) sets the three phase
    voltages there, within 0.1 mpu of runpp_3ph (the transformer's full zero-sequence
    leakage alone would miss by about 1 mpu)."""
    net = lv_net()
    net.trafo["vector_group"] = vector_group
    feeder = three_phase_feeder(net)
    check = ac_check_3ph(feeder, {(1, "a", 0): -15.0}, {})
    at_1 = check.buses[check.buses["bus"] == 1]
    assert at_1["error_pu"].abs().max() < 1e-4
    assert at_1["v_pu_ac"].max() - at_1["v_pu_ac"].min() > 2e-3  # visibly unbalanced
    assert at_1["v_pu_ac"].mean() == pytest.approx(1.02 / 1.025, abs=0.005)  # one tap step


# ------------------------------------------------------------------- balanced: LinDistFlow


def _balanced_table(feeder, m) -> pd.DataFrame:
    """The net's balanced loads, two buyers and the import, as attach_grid's long table."""
    loads = feeder.net.load
    rows = [("import", feeder.root, 0, m.import_kw, 0.0)]
    rows += [
        (f"load {k}", bus, 0, -1000 * p, -1000 * q)
        for k, (bus, p, q) in loads[["bus", "p_mw", "q_mvar"]].iterrows()
    ]
    rows += [(f"buyer {b}", b, 0, -m.buy_kw[b, p], -0.3 * m.buy_kw[b, p]) for b, p in m.BUYERS]
    return pd.DataFrame(rows, columns=["owner", "bus", "period", "p_kw", "q_kvar"])


BIDS = {(4, "abc"): (200.0, 120.0), (5, "abc"): (90.0, 60.0)}  # (currency/MWh, kW)


def _buyers_model(bids_by_key):
    m = pyo.ConcreteModel()
    m.BUYERS = pyo.Set(initialize=list(bids_by_key), doc="(bus, phases) of each buyer")
    m.buy_kw = pyo.Var(m.BUYERS, bounds=lambda _, *key: (0, bids_by_key[key][1]))
    m.import_kw = pyo.Var(bounds=(-1e4, 1e4))
    return m


def _welfare(m, bids_by_key):
    cost = IMPORT_PRICE / 1000 * m.import_kw
    cost -= sum(price / 1000 * m.buy_kw[key] for key, (price, _) in bids_by_key.items())
    m.cost = pyo.Objective(expr=cost)


@pytest.fixture(scope="module")
def balanced():
    """A balanced feeder (charging, a tapped Dyn transformer, balanced loads) cleared
    with LinDistFlow through attach_grid."""
    net = lv_net(max_i_ka=0.12, vmin_pu=0.9, charging_nf=300.0)
    for bus, kw in ((3, 20.0), (4, 15.0), (5, 25.0)):
        pp.create_load(net, bus, p_mw=kw / 1000, q_mvar=kw / 3000)
    feeder = three_phase_feeder(net)
    m = _buyers_model(BIDS)
    attach_grid(m, feeder, [0], _balanced_table(feeder, m), formulation=LinDistFlow())
    _welfare(m, BIDS)
    solution = solve(m)
    return feeder, m, nodal_prices(m.handles, solution)


def _compare_with_single_phase(single, m3, prices3):
    feeder, m1, prices1 = single
    h1, h3 = m1.handles, m3.handles
    for j in feeder.buses.index:
        for phase in PHASES:
            assert h3.voltage_sq[j, phase, 0].value == pytest.approx(
                h1.voltage_sq[j, 0].value, abs=1e-9
            )
    for branch in feeder.branches.index:
        for phase in PHASES:
            for flow in ("p_flow", "q_flow"):
                three = getattr(h3, flow)[branch, phase, 0].value
                assert three == pytest.approx(getattr(h1, flow)[branch, 0].value, abs=1e-9)
    assert pyo.value(m3.cost) == pytest.approx(pyo.value(m1.cost), abs=1e-9)
    by_bus = prices1.set_index("bus")
    for column in ("price", "energy", "congestion", "voltage", "price_q"):
        three = prices3.groupby("bus")[column]
        np.testing.assert_allclose(three.mean(), by_bus.loc[three.mean().index, column], atol=1e-9)
    return by_bus


@pytest.mark.solve
def test_balanced_feeder_through_attach_grid_gives_lindistflow(balanced):
    """The same long table through attach_grid: every phase has the single-phase voltage
    and flow; a balanced participant's price (the phases' mean) is the single-phase one.
    (With only balanced participants the split of a binding limit's dual over three
    identical phase rows is not unique; the per-phase test below has a price per phase.)"""
    feeder = balanced[0]
    assert balanced[2]["congestion"].abs().max() > 10  # the line 2-3 binds
    assert balanced[2]["voltage"].abs().max() > 10  # and bus 4's voltage
    m = _buyers_model(BIDS)
    attach_grid(m, feeder, [0], _balanced_table(feeder, m), formulation=LinDist3Flow())
    _welfare(m, BIDS)
    solution = solve(m)
    _compare_with_single_phase(balanced, m, _nodal_of(m.handles, solution))


@pytest.mark.solve
def test_balanced_feeder_with_a_buyer_per_phase_gives_lindistflow_prices_per_phase(balanced):
    """Each buyer split into three single-phase buyers of a third: each phase's price is
    the single-phase price (1e-9)."""
    feeder = balanced[0]
    bids = {(bus, p): (price, kw / 3) for (bus, _), (price, kw) in BIDS.items() for p in PHASES}
    m = _buyers_model(bids)
    table = _balanced_table(feeder, _buyers_model(BIDS))
    fixed = table[table["owner"].str.startswith("load")]
    p_kw = {(feeder.root, 0): m.import_kw}
    q_kvar: dict = {}
    for bus, p, q in fixed[["bus", "p_kw", "q_kvar"]].itertuples(index=False):
        p_kw[(bus, 0)] = p_kw.get((bus, 0), 0.0) + p
        q_kvar[(bus, 0)] = q_kvar.get((bus, 0), 0.0) + q
    for bus, phase in bids:
        p_kw[(bus, phase, 0)] = -m.buy_kw[bus, phase]
        q_kvar[(bus, phase, 0)] = -0.3 * m.buy_kw[bus, phase]
    m.net = pyo.Block()
    m.handles = LinDist3Flow().add(m.net, feeder, [0], p_kw, q_kvar)
    _welfare(m, bids)
    prices3 = _nodal_of(m.handles, solve(m))
    by_bus = _compare_with_single_phase(balanced, m, prices3)
    for column in ("price", "congestion", "voltage", "price_q"):
        expected = by_bus.loc[prices3["bus"], column].to_numpy()
        np.testing.assert_allclose(prices3[column], expected, atol=1e-9)


# -------------------------------------------------------- per-phase prices and their parts


def _phase_market(feeder, loads, sellers, buyers, formulation):
    """Minimise cost: import at the root, sellers and buyers (bus, phases, price, kW),
    fixed loads {(bus, phases): kW}; one period."""
    m = pyo.ConcreteModel()
    m.import_kw = pyo.Var(bounds=(-1e4, 1e4))
    m.sell_kw = pyo.Var(range(len(sellers)), bounds=lambda _, k: (0, sellers[k][3]))
    m.buy_kw = pyo.Var(range(len(buyers)), bounds=lambda _, k: (0, buyers[k][3]))
    p_kw: dict = {(feeder.root, 0): m.import_kw}
    for (bus, phases), kw in loads.items():
        p_kw[(bus, phases, 0)] = p_kw.get((bus, phases, 0), 0.0) - kw
    for k, (bus, phases, _, _) in enumerate(sellers):
        p_kw[(bus, phases, 0)] = p_kw.get((bus, phases, 0), 0.0) + m.sell_kw[k]
    for k, (bus, phases, _, _) in enumerate(buyers):
        p_kw[(bus, phases, 0)] = p_kw.get((bus, phases, 0), 0.0) - m.buy_kw[k]
    m.net = pyo.Block()
    handles = formulation.add(m.net, feeder, [0], p_kw, {})
    cost = IMPORT_PRICE / 1000 * m.import_kw
    cost += sum(s[2] / 1000 * m.sell_kw[k] for k, s in enumerate(sellers))
    cost -= sum(b[2] / 1000 * m.buy_kw[k] for k, b in enumerate(buyers))
    m.cost = pyo.Objective(expr=cost)
    solution = solve(m)
    return pyo.value(m.cost), handles, solution


SCENARIOS = {
    # phase a's limit on line 2-3 (about 24 kW per phase) binds; a phase-a seller at bus 4
    "congestion": dict(
        net={"max_i_ka": 0.108},
        loads={(4, "a"): 40.0, (4, "b"): 10.0, (4, "c"): 10.0},
        sellers=[(4, "a", 120.0, 30.0)],
        buyers=[],
        formulation={},
    ),
    # phase a's voltage at bus 4 binds; a phase-a buyer is marginal
    "voltage": dict(
        net={"vmin_pu": 0.95},
        loads={(4, "b"): 10.0, (4, "c"): 5.0},
        sellers=[],
        buyers=[(4, "a", 300.0, 80.0)],
        formulation={},
    ),
    # |V_a - V_avg| <= 0.01 binds at bus 4; a phase-a buyer is marginal
    "unbalance": dict(
        net={},
        loads={(4, "b"): 2.0},
        sellers=[],
        buyers=[(4, "a", 300.0, 80.0)],
        formulation={"max_unbalance_pu": 0.01},
    ),
}


@pytest.mark.solve
@pytest.mark.parametrize("part", list(SCENARIOS))
def test_a_binding_phase_limit_prices_phases_apart_as_finite_differences_say(part):
    """Every per-phase price at buses 3 and 4 is the cost of one more kW of demand on that
    phase (a re-solve); the energy part is the root's; the limit's part is what the
    re-solve adds to the root's, the other parts are zero; and the phases differ."""
    case = SCENARIOS[part]
    feeder = three_phase_feeder(lv_net(**case["net"]))
    formulation = LinDist3Flow(**case["formulation"])
    args = (case["sellers"], case["buyers"], formulation)
    base, handles, solution = _phase_market(feeder, case["loads"], *args)
    prices = _nodal_of(handles, solution).set_index(["bus", "phase"])

    def marginal(bus, phase, eps=0.01):
        loads = dict(case["loads"])
        loads[(bus, phase)] = loads.get((bus, phase), 0.0) + eps
        return (_phase_market(feeder, loads, *args)[0] - base) / eps * 1000

    root = marginal(feeder.root, "abc")
    assert root == pytest.approx(IMPORT_PRICE, rel=1e-6)
    for bus in (3, 4):
        for phase in PHASES:
            row = prices.loc[(bus, phase)]
            fd = marginal(bus, phase)
            assert row["price"] == pytest.approx(fd, rel=1e-6, abs=1e-6)
            assert row["energy"] == pytest.approx(root, rel=1e-6)
            assert row[part] == pytest.approx(fd - root, rel=1e-6, abs=1e-6)
            others = [p for p in PRICE_PARTS if p not in ("energy", part)]
            assert row[others].abs().max() < 1e-9
    at_4 = prices.loc[4, "price"]
    assert at_4.max() - at_4.min() > 20


def _nodal_of(handles, solution):
    """Per-phase prices, after checking that their parts add up to them."""
    prices = nodal_prices_3ph(handles, solution)
    parts = prices[list(PRICE_PARTS)].sum(axis=1)
    np.testing.assert_allclose(parts, prices["price"], atol=1e-9)
    return prices[prices["period"] == 0]


PV_OFFER = 5.0  # currency/MWh


def _european_pv_market(feeder, pv_buses, extra_demand=None):
    """The feeder's own loads, single-phase PV (up to 12 kW, on phase c) at ``pv_buses``
    and the import; minimise cost. Returns (cost, handles, solution, model)."""
    p, q = phase_injections(feeder)
    loaded = p.index[(p != 0).any(axis=1)]
    m = pyo.ConcreteModel()
    m.import_kw = pyo.Var()
    m.pv_kw = pyo.Var(pv_buses, bounds=(0, 12.0))
    p_kw = {(b, phase, 0): p.at[b, phase] for b in loaded for phase in PHASES}
    q_kvar = {(b, phase, 0): q.at[b, phase] for b in loaded for phase in PHASES}
    p_kw[(feeder.root, 0)] = m.import_kw
    for b in pv_buses:
        p_kw[(b, "c", 0)] = p_kw[(b, "c", 0)] + m.pv_kw[b]
    if extra_demand is not None:
        p_kw[extra_demand] = p_kw.get(extra_demand, 0.0) - 0.01
    m.net = pyo.Block()
    handles = LinDist3Flow().add(m.net, feeder, [0], p_kw, q_kvar)
    m.cost = pyo.Objective(
        expr=IMPORT_PRICE / 1000 * m.import_kw + sum(PV_OFFER / 1000 * m.pv_kw[b] for b in pv_buses)
    )
    solution = solve(m)
    return pyo.value(m.cost), handles, solution, m


@pytest.mark.solve
def test_pv_on_phase_c_of_the_european_feeder_is_curtailed_by_that_phase_and_priced_per_phase(
    european,
):
    """Ten single-phase PV units at the last loaded buses raise phase c (already the
    highest) to 1.1 pu: PV is curtailed, a partly dispatched unit's phase c price is its
    own offer (merit order), phases a and b there are worth more than the import (more
    demand on them lets phase c take more PV through the mutual impedance); all three
    as finite differences say, and all beyond the import price is the voltage part."""
    p, _ = phase_injections(european)
    pv_buses = list(p.index[(p != 0).any(axis=1)][-10:])
    cost, handles, solution, m = _european_pv_market(european, pv_buses)
    prices = _nodal_of(handles, solution).set_index(["bus", "phase"])
    dispatched = {b: m.pv_kw[b].value for b in pv_buses}
    partly = [b for b, kw in dispatched.items() if 1e-6 < kw < 12.0 - 1e-6]
    assert partly and sum(dispatched.values()) < 100
    v_c = max(handles.voltage_sq[b, "c", 0].value for b in european.buses.index)
    assert math.sqrt(v_c) == pytest.approx(1.1, abs=1e-9)
    for b in partly:
        assert prices.loc[(b, "c"), "price"] == pytest.approx(PV_OFFER, rel=1e-9)
    bus = partly[-1]
    for phase in PHASES:
        fd = (_european_pv_market(european, pv_buses, (bus, phase, 0))[0] - cost) / 0.01 * 1000
        assert prices.loc[(bus, phase), "price"] == pytest.approx(fd, rel=1e-6)
    assert (prices.loc[bus, "price"].loc[["a", "b"]] > IMPORT_PRICE + 1).all()
    explained = prices["energy"] + prices["voltage"]
    np.testing.assert_allclose(explained, prices["price"], atol=1e-9)


# ------------------------------------------------------------------------ model and data


@pytest.mark.solve
def test_every_key_form_is_the_evaluators_power_flow():
    """Fixed injections given as (bus, period), (bus, phase, period), two phases, as
    LinearInjections and symbolically (a mutable parameter): the LP's voltages and flows
    are those of the array evaluator."""
    feeder = three_phase_feeder(lv_net(charging_nf=300.0))
    injections = {(3, 0): -30.0, (4, "a", 0): -12.0, (5, "bc", 0): 8.0, (4, "ca", 0): -6.0}
    m = pyo.ConcreteModel()
    m.import_kw = pyo.Var()
    m.one = pyo.Var(bounds=(1, 1))
    keys = list(injections)
    p_kw = LinearInjections(keys, [injections[k] for k in keys], [m.one] * len(keys))
    q_kvar = {key: 0.4 * kw for key, kw in injections.items()}
    q_kvar[(feeder.root, 0)] = 0.0
    m.minus_twelve = pyo.Param(initialize=-12.0, mutable=True)  # a symbolic injection
    p_kw = {**dict(p_kw.items()), (feeder.root, 0): m.import_kw}
    p_kw[(4, "a", 0)] = m.minus_twelve * m.one
    m.net = pyo.Block()
    handles = LinDist3Flow().add(m.net, feeder, [0], p_kw, q_kvar)
    m.cost = pyo.Objective(expr=m.import_kw)
    solve(m)
    p = phase_arrays(feeder, injections, [0])
    assert p[feeder.position([5])[0], :, 0] == pytest.approx([0.0, 4.0, 4.0])
    assert p[feeder.position([4])[0], :, 0] == pytest.approx([-15.0, 0.0, -3.0])
    expected = solve_linear_3ph(feeder, p, 0.4 * p)
    buses, branches = feeder.buses.index, feeder.branches.index
    v = [[handles.voltage_sq[b, phase, 0].value for phase in PHASES] for b in buses]
    flows = [[handles.p_flow[k, phase, 0].value for phase in PHASES] for k in branches]
    np.testing.assert_allclose(v, expected["v_sq"][:, :, 0], atol=1e-10)
    np.testing.assert_allclose(flows, expected["p"][:, :, 0], atol=1e-10)
    solved, _ = handles.phase_injection_values()
    np.testing.assert_allclose(solved[1:], p[1:], atol=1e-12)
    assert solved[0, :, 0].sum() == pytest.approx(-p.sum())  # the import serves them all


@pytest.mark.unit
def test_phase_impedance_matrix_is_self_and_mutual_of_the_sequences():
    """Z = A diag(z0, z1, z1) A^-1 has (z0 + 2 z1)/3 on the diagonal and (z0 - z1)/3 off it
    (a symmetric circulant matrix)."""
    z0, z1 = np.array([0.8 + 0.32j]), np.array([0.2 + 0.08j])
    z = sequence_to_phase(z0, z1)[0]
    expected = np.full((3, 3), (z0[0] - z1[0]) / 3) + np.eye(3) * z1[0]
    np.testing.assert_allclose(z, expected, atol=1e-14)


@pytest.mark.unit
def test_feeder_impedances_follow_pandapower_sequence_data():
    net = lv_net()
    feeder = three_phase_feeder(net)
    line = feeder.branches.index[feeder.branches["kind"] == "line"][0]
    z_base = 0.4**2 / 0.5
    z1, z0 = (0.2 + 0.08j) * 0.2 / z_base, (0.8 + 0.32j) * 0.2 / z_base
    np.testing.assert_allclose(np.diag(feeder.z_pu[line]), (z0 + 2 * z1) / 3)
    np.testing.assert_allclose(feeder.z_pu[line][0, 1], (z0 - z1) / 3)
    assert feeder.branches["kind"].iloc[0] == "trafo"
    assert feeder.branches["ratio"].iloc[0] == pytest.approx(1.025)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda net: net.trafo.__setitem__("vector_group", "YNd"), r"trafo 0 has vector group YNd"),
        (lambda net: net.line.__setitem__("r0_ohm_per_km", math.nan), r"line 0 has no zero-seq"),
        (lambda net: net.trafo.__setitem__("mag0_rx", math.nan), r"trafo 0 has no zero-seq"),
        (
            lambda net: pp.create_asymmetric_load(net, 3, p_a_mw=0.01, type="delta"),
            r"asymmetric_load 0 is delta-connected",
        ),
    ],
)
def test_what_the_three_phase_feeder_cannot_model_is_refused_by_name(change, message):
    net = lv_net()
    change(net)
    with pytest.raises(NetworkError, match=message):
        phase_injections(three_phase_feeder(net))


@pytest.mark.unit
def test_a_transformer_inside_the_feeder_is_refused_by_name():
    net = lv_net()
    mv2 = pp.create_bus(net, vn_kv=10.0)
    pp.create_line_from_parameters(
        net, 0, mv2, length_km=1.0, r_ohm_per_km=0.2, x_ohm_per_km=0.1, c_nf_per_km=0.0,
        max_i_ka=0.3, r0_ohm_per_km=0.6, x0_ohm_per_km=0.3, c0_nf_per_km=0.0,
    )  # fmt: skip
    net.trafo.at[0, "hv_bus"] = mv2
    with pytest.raises(NetworkError, match=r"trafo 0 \(Dyn\) between buses 6 and 1 is inside"):
        three_phase_feeder(net)


@pytest.mark.unit
def test_a_bad_phase_is_an_error_naming_the_key():
    feeder = three_phase_feeder(lv_net())
    with pytest.raises(NetworkError, match=r"injection key \(3, 'd', 0\)"):
        LinDist3Flow().add(pyo.ConcreteModel(), feeder, [0], {(3, "d", 0): 1.0}, {})
    with pytest.raises(NetworkError, match=r"bus 99 is not a bus of the feeder"):
        LinDist3Flow().add(pyo.ConcreteModel(), feeder, [0], {(99, "a", 0): 1.0}, {})
