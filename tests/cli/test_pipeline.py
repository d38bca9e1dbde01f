"""The one case pipeline: which losses mode runs, and what the AC check summary names.

References: designed cases whose answer is obvious (a mode the model lacks), and
pandapower's AC power flow run here on the same injections, independently of
:mod:`gridmarkets.networks.ac_check`.
"""

import copy

import numpy as np
import pandapower as pp
import pandas as pd
import pyomo.environ as pyo
import pytest
from radial import radial_net

from gridmarkets import pipeline
from gridmarkets.case import validate
from gridmarkets.errors import CaseError
from gridmarkets.networks import LinDistFlow, feeder_from_net
from gridmarkets.specs.adapter import Injections, handles_injections

LEM_ON_A_FEEDER = {
    "model": "lem",
    "network": {"source": "pandapower", "name": "case33bw"},
    "upstream": {"import_price": 100, "export_price": 10},
    "participants": {"a": {"side": "buy", "bus": 5, "blocks": [{"quantity_kw": 1, "price": 50}]}},
}


class Supports:
    """An adapter that supports the given losses modes (nothing else is asked here)."""

    def __init__(self, *modes):
        self.modes = modes

    def losses(self, case):
        return self.modes


def lem_case(**network):
    data = copy.deepcopy(LEM_ON_A_FEEDER)
    data["network"].update(network)
    return validate(data)


@pytest.mark.unit
def test_the_case_files_mode_runs_where_the_model_supports_it():
    for mode in ("none", "linear", "iterate"):
        case = lem_case(losses=mode)
        assert pipeline.loss_mode(case, Supports("none", "linear", "iterate")) == mode


@pytest.mark.unit
def test_a_mode_the_model_lacks_is_an_error_naming_the_field_and_the_model():
    case = lem_case(losses="iterate")
    with pytest.raises(CaseError) as err:
        pipeline.loss_mode(case, Supports("none", "linear"))
    message = str(err.value)
    assert "network.losses" in message and "'iterate'" in message and "lem" in message


@pytest.mark.unit
def test_the_default_is_iterate_where_the_model_has_it_else_lossless():
    case = lem_case()  # no losses in the file: the default, iterate
    assert "losses" not in case.network.model_fields_set
    assert case.network.losses == "iterate"
    assert pipeline.loss_mode(case, Supports("none", "linear", "iterate")) == "iterate"
    assert pipeline.loss_mode(case, Supports("none", "linear")) == "none"
    assert pipeline.loss_mode(case, Supports("none")) == "none"


@pytest.mark.unit
def test_no_network_no_losses_mode():
    data = {k: v for k, v in LEM_ON_A_FEEDER.items() if k != "network"}
    data["participants"] = {"a": {"side": "buy", "blocks": [{"quantity_kw": 1, "price": 50}]}}
    assert pipeline.loss_mode(validate(data), Supports("none", "linear", "iterate")) is None


# --- the AC check summary ----------------------------------------------------------------


@pytest.fixture(scope="module")
def feeder():
    """Buses 0-1-2 at 0.4 kV; line 0 rated 0.2 kA, line 1 (1-2) 1 kA; limits 0.95-1.05."""
    net = radial_net(
        0.4,
        [(0, 1, 0.2), (1, 2, 1.0)],
        length_km=0.3,
        r_ohm_per_km=0.2,
        x_ohm_per_km=0.2,
        vmin_pu=0.95,
        vmax_pu=1.05,
    )
    return feeder_from_net(net, name="three buses")


def pandapower_flow(feeder, p_kw: float, q_kvar: float):
    """pandapower's solved net with a load of (p, q) at bus 2."""
    net = copy.deepcopy(feeder.net)
    pp.create_load(net, 2, p_mw=p_kw / 1000, q_mvar=q_kvar / 1000)
    pp.runpp(net)
    return net


def pandapower_violations(feeder, p_kw: float, q_kvar: float) -> dict[tuple, float]:
    """Every limit pandapower's flow violates: (element, index) -> V (pu) or loading (%)."""
    net = pandapower_flow(feeder, p_kw, q_kvar)
    vm, buses = net.res_bus.vm_pu, net.bus
    low = vm[(vm < buses.min_vm_pu) | (vm > buses.max_vm_pu)]
    loading = net.res_line.loading_percent
    over = loading[loading > 100]
    return {("bus", b): v for b, v in low.items()} | {("line", k): v for k, v in over.items()}


def lindistflow_voltages(feeder, p_kw: float, q_kvar: float) -> dict[int, float]:
    """LinDistFlow's squared voltages (pu^2) with a load of (p, q) at bus 2, closed form:
    v_j = v_i - 2 (r P + x Q) down the path 0-1-2, both lines carrying the load."""
    r, x = (feeder.branches[c].to_numpy() for c in ("r_pu", "x_pu"))
    p_pu, q_pu = p_kw / feeder.s_base_kva, q_kvar / feeder.s_base_kva
    v_sq = {0: 1.0}
    v_sq[1] = 1.0 - 2 * (r[0] * p_pu + x[0] * q_pu)
    v_sq[2] = v_sq[1] - 2 * (r[1] * p_pu + x[1] * q_pu)
    return v_sq


def lindistflow_handles(feeder, p_kw: float, q_kvar: float):
    """LinDistFlow's handles holding a fixed injection of -(p, q) at bus 2, one period,
    with its voltages at their values for that injection."""
    block = pyo.ConcreteModel()
    handles = LinDistFlow().add(block, feeder, [0], {(2, 0): -p_kw}, {(2, 0): -q_kvar})
    for bus, value in lindistflow_voltages(feeder, p_kw, q_kvar).items():
        handles.voltage_sq[bus, 0].value = value
    return handles


@pytest.mark.unit
def test_reactive_power_reaches_the_ac_check_and_each_enforced_violation_is_named(feeder):
    p_kw, q_kvar = 50.0, 130.0
    expected = pandapower_violations(feeder, p_kw, q_kvar)
    assert ("line", 0) in expected and ("bus", 2) in expected  # the design: with Q both
    assert pandapower_violations(feeder, p_kw, 0.0) == {}  # and without Q neither

    handles = lindistflow_handles(feeder, p_kw, q_kvar)
    summary = pipeline.check_summary(feeder, handles_injections(handles))
    named = {(v["element"], v["index"]): v["value"] for v in summary["enforced_violations"]}
    assert set(named) == set(expected)
    assert summary["enforced_violations_count"] == len(expected)
    for key, value in expected.items():
        assert named[key] == pytest.approx(value, rel=1e-6)
    limits = summary["enforced_limits"]
    assert limits["formulation"] == "lindistflow"
    assert limits["voltage_buses"] == [1, 2] and limits["thermal_branches"] == ["line 0", "line 1"]

    without_q = pipeline.check_summary(
        feeder, handles_injections(lindistflow_handles(feeder, p_kw, 0))
    )
    assert without_q["violations_count"] == 0 and without_q["enforced_violations"] == []


@pytest.mark.unit
def test_violations_no_linear_model_enforced_are_not_called_enforced(feeder):
    p = pd.DataFrame({0: [0.0, 0.0, -50.0]}, index=feeder.buses.index)
    q = pd.DataFrame({0: [0.0, 0.0, -130.0]}, index=feeder.buses.index)
    summary = pipeline.check_summary(feeder, Injections(p, q))
    assert summary["violations_count"] == len(pandapower_violations(feeder, 50.0, 130.0)) > 0
    assert (
        summary["enforced_violations"] == [] and summary["enforced_limits"]["voltage_buses"] == []
    )
    assert "model_voltage_error_pu" not in summary


@pytest.mark.unit
def test_the_model_voltage_error_is_the_models_own_against_pandapower(feeder):
    p_kw, q_kvar = 20.0, 10.0
    handles = lindistflow_handles(feeder, p_kw, q_kvar)
    v_model = np.sqrt(lindistflow_voltages(feeder, p_kw, q_kvar)[2])
    v_ac = pandapower_flow(feeder, p_kw, q_kvar).res_bus.vm_pu.at[2]
    summary = pipeline.check_summary(feeder, handles_injections(handles))
    assert summary["model_voltage_error_pu"] == pytest.approx(abs(v_model - v_ac), rel=1e-6)
    assert summary["model_voltage_error_pu"] > 1e-4  # LinDistFlow drops the losses
