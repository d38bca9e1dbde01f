"""Elements the feeder does not model as pandapower has them: read as balanced
equivalents with a warning that names them, or refused with an error that names them."""

from __future__ import annotations

import copy
import math

import pandapower as pp
import pandapower.networks as pn
import pytest
from radial import radial_net

from gridmarkets.errors import NetworkError
from gridmarkets.networks import ac_check, feeder_from_net, net_injections, operating_point

pytestmark = pytest.mark.unit

PHASES_P = ["p_a_mw", "p_b_mw", "p_c_mw"]
PHASES_Q = ["q_a_mvar", "q_b_mvar", "q_c_mvar"]


def test_asymmetric_loads_carry_pandapowers_total_and_are_named():
    """ieee_european_lv_asymmetric: 55 asymmetric loads and nothing else."""
    net = pn.ieee_european_lv_asymmetric()
    loads = net.asymmetric_load
    with pytest.warns(UserWarning, match=r"asymmetric_load 0, 1, 2, 3, 4 and 50 more: read as"):
        feeder = feeder_from_net(net, name="eu_lv")
    p_kw, q_kvar = net_injections(feeder)
    scaling = loads["scaling"].to_numpy()[:, None]
    assert p_kw.sum() == pytest.approx(-(loads[PHASES_P] * scaling).to_numpy().sum() * 1000)
    assert q_kvar.sum() == pytest.approx(-(loads[PHASES_Q] * scaling).to_numpy().sum() * 1000)
    assert p_kw.sum() < -50.0  # the loads are there (57 kW)


@pytest.fixture
def mixed_net():
    """A 20 kV chain with a balanced load, an asymmetric load and sgen, and a motor."""
    net = radial_net(
        20.0,
        [(0, 1, 0.4), (1, 2, 0.4), (2, 3, 0.4)],
        length_km=3.0,
        r_ohm_per_km=0.3,
        x_ohm_per_km=0.35,
    )
    pp.create_load(net, 1, p_mw=0.4, q_mvar=0.1)
    pp.create_asymmetric_load(
        net, 2, p_a_mw=0.3, p_b_mw=0.1, p_c_mw=0.05, q_a_mvar=0.05, q_b_mvar=0.02, scaling=0.9
    )
    pp.create_asymmetric_sgen(net, 3, p_a_mw=0.05, p_b_mw=0.05, p_c_mw=0.1, q_a_mvar=0.01)
    pp.create_motor(
        net, 3, pn_mech_mw=0.2, cos_phi=0.85, efficiency_percent=92.0, loading_percent=80.0
    )
    return net


def test_the_ac_check_of_the_nets_own_injections_is_pandapowers_power_flow(mixed_net):
    """pandapower's balanced power flow reads asymmetric elements as the sum of their
    phases and motors as constant power: the feeder's injections, put back by the AC check
    (which switches the net's own elements off), give the same voltages and losses."""
    with pytest.warns(UserWarning) as record:
        feeder = feeder_from_net(mixed_net)
    messages = " | ".join(str(w.message) for w in record)
    assert "asymmetric_load 0:" in messages and "asymmetric_sgen 0:" in messages
    assert "motor" not in messages  # read exactly as pandapower reads it
    p_kw, q_kvar = net_injections(feeder)
    check = ac_check(feeder, p_kw, q_kvar)
    reference = copy.deepcopy(mixed_net)
    pp.runpp(reference, numba=False)
    vm = reference.res_bus.loc[feeder.buses.index, "vm_pu"].to_numpy()
    assert check.buses["v_pu_ac"].to_numpy() == pytest.approx(vm, abs=1e-9)
    assert check.losses["loss_kw_ac"].iloc[0] == pytest.approx(
        reference.res_line["pl_mw"].sum() * 1000, rel=1e-6
    )
    motor_kw = 200.0 / 0.92 * 0.8
    assert p_kw.sum() == pytest.approx(-(400.0 + 0.9 * 450.0 + motor_kw) + 200.0)
    motor_kvar = motor_kw * (1 / 0.85**2 - 1) ** 0.5
    assert q_kvar.sum() == pytest.approx(-(100.0 + 0.9 * 70.0 + motor_kvar) + 10.0)


@pytest.mark.parametrize(
    ("element", "create"),
    [
        ("impedance", lambda n: pp.create_impedance(n, 2, 3, rft_pu=0.01, xft_pu=0.02, sn_mva=1)),
        ("ward", lambda n: pp.create_ward(n, 2, ps_mw=0.1, qs_mvar=0.0, pz_mw=0.0, qz_mvar=0.0)),
        (
            "xward",
            lambda n: pp.create_xward(
                n, 2, ps_mw=0.1, qs_mvar=0, pz_mw=0, qz_mvar=0, r_ohm=0.1, x_ohm=1, vm_pu=1
            ),
        ),
    ],
)
def test_unmodelled_elements_in_service_are_refused_by_name(mixed_net, element, create):
    index = create(mixed_net)
    with pytest.raises(NetworkError, match=rf"cannot represent: {element} {index}; take"):
        feeder_from_net(mixed_net)
    mixed_net[element].loc[index, "in_service"] = False
    with pytest.warns(UserWarning):
        assert len(feeder_from_net(mixed_net).buses) == 4


def test_generators_are_named_as_active_power_only():
    net = radial_net(20.0, [(0, 1, 0.4)], length_km=3.0, r_ohm_per_km=0.3, x_ohm_per_km=0.35)
    pp.create_load(net, 1, p_mw=0.4, q_mvar=0.1)
    pp.create_gen(net, 1, p_mw=0.2, vm_pu=1.0)
    with pytest.warns(UserWarning, match=r"gen 0: read as active power injections with Q = 0"):
        feeder = feeder_from_net(net)
    p_kw, q_kvar = net_injections(feeder)
    assert p_kw[1] == pytest.approx(200.0 - 400.0) and q_kvar[1] == pytest.approx(-100.0)


def test_line_charging_and_conductance_are_bus_shunts_as_in_the_pi_model():
    """At pandapower's AC point of the loads, LinDistFlow with losses linear reproduces the
    AC voltages only if both halves of each line's shunt admittance sit at the right buses
    and the AC flows are read at the series impedance."""
    net = radial_net(
        20.0,
        [(0, 1, 0.4), (1, 2, 0.4), (1, 3, 0.4)],
        length_km=8.0,
        r_ohm_per_km=0.3,
        x_ohm_per_km=0.35,
    )
    net.line["c_nf_per_km"] = 300.0
    net.line["g_us_per_km"] = 40.0
    pp.create_loads(net, [1, 2, 3], p_mw=[0.5, 1.0, 0.8], q_mvar=[0.1, 0.3, 0.2])
    feeder = feeder_from_net(net)
    g_siemens, b_siemens = 40e-6 * 8.0, 2 * math.pi * 50 * 300e-9 * 8.0
    z_base = 20.0**2 / net.sn_mva
    assert feeder.buses.at[1, "g_pu"] == pytest.approx(3 * g_siemens / 2 * z_base)
    assert feeder.buses.at[2, "b_pu"] == pytest.approx(b_siemens / 2 * z_base)
    p_kw, q_kvar = net_injections(feeder)
    check = ac_check(feeder, p_kw, q_kvar, point=operating_point(feeder, p_kw, q_kvar))
    assert check.max_voltage_error_pu <= 1e-7
    assert ac_check(feeder, p_kw, q_kvar).max_voltage_error_pu > 1e-4  # lossless misses


def test_a_line_open_at_one_end_keeps_its_charging_at_the_other(cigre_mv):
    """CIGRE MV's switches S1-S3 open lines 12-14 at one end; pandapower keeps them
    energised from the other. Their input admittance as a bus shunt makes the linear
    model at the AC point pandapower's AC power flow (2.9e-4 pu off without it)."""
    opened = cigre_mv.net.switch.query("et == 'l' and not closed")
    assert set(opened["element"]) == {12, 13, 14}
    assert not set(opened["element"]) & set(cigre_mv.branches["element"])  # not branches
    p_kw, q_kvar = net_injections(cigre_mv)
    check = ac_check(cigre_mv, p_kw, q_kvar, point=operating_point(cigre_mv, p_kw, q_kvar))
    assert check.max_voltage_error_pu <= 1e-9
