"""Every shipped feeder case with ``network.losses: iterate``: the AC check's summary
names every violation of a limit LinDistFlow enforced (none remain on these cases).

The reference is pandapower's AC power flow run here, period by period, on the
injections the model's own network formulation holds (P and Q): the test's own
element-by-element comparison of voltages and loadings with the limits, independent of
:mod:`gridmarkets.networks.ac_check` and of the pipeline's summary code. Cases whose
model cannot iterate (no LinDistFlow in their solve, or several grids in one model) run
the mode their adapter supports, and asking them for ``iterate`` is a CaseError naming
``network.losses``.
"""

import copy

import pandapower as pp
import pytest

from gridmarkets import pipeline
from gridmarkets.case import load_case, read_yaml, shipped_cases_dir
from gridmarkets.errors import CaseError

pytestmark = pytest.mark.slow

FEEDER_CASES = sorted(
    path.stem for path in shipped_cases_dir().glob("*.yaml") if read_yaml(path).get("network")
)


def pandapower_violations(feeder, injections) -> set[tuple]:
    """(element, index, period) of every bus the AC flow puts outside [vmin, vmax] among
    the buses LinDistFlow held, and every rated branch above 100 % loading."""
    handles = injections.handles
    held_buses = {bus for bus, _ in handles.voltage_limit}
    rated = feeder.branches.loc[list(handles.block.RATED_BRANCHES)]
    net = copy.deepcopy(feeder.net)
    for table in ("load", "sgen", "gen", "storage"):
        net[table]["in_service"] = False
    buses = [bus for bus in feeder.buses.index if bus != feeder.root]
    sgens = {bus: pp.create_sgen(net, bus, p_mw=0.0) for bus in buses}
    found = set()
    for t in injections.p_kw.columns:
        for bus, sgen in sgens.items():
            net.sgen.at[sgen, "p_mw"] = injections.p_kw.at[bus, t] / 1000
            net.sgen.at[sgen, "q_mvar"] = injections.q_kvar.at[bus, t] / 1000
        pp.runpp(net)
        v = net.res_bus.vm_pu
        for bus in held_buses:
            if not feeder.buses.at[bus, "vmin_pu"] <= v.at[bus] <= feeder.buses.at[bus, "vmax_pu"]:
                found.add(("bus", bus, t))
        for kind, element in zip(rated["kind"], rated["element"], strict=True):
            if net[f"res_{kind}"].at[element, "loading_percent"] > 100.0:
                found.add((kind, int(element), t))
    return found


def named_violations(summary: dict) -> set[tuple]:
    return {(v["element"], v["index"], v["period"]) for v in summary["enforced_violations"]}


@pytest.mark.parametrize("name", FEEDER_CASES)
def test_iterated_losses_leave_no_unnamed_violation_of_an_enforced_limit(name):
    path = shipped_cases_dir() / f"{name}.yaml"
    run = pipeline.CaseRun.start(load_case(path))
    if "iterate" not in run.adapter.losses(run.case):
        with pytest.raises(CaseError, match=r"network\.losses: 'iterate'.*" + run.case.model):
            pipeline.CaseRun.start(load_case(path, ["network.losses=iterate"]))
    assert run.losses == ("iterate" if "iterate" in run.adapter.losses(run.case) else "none")

    built = run.build()
    result, iteration = run.solve(built, {})
    run.complete(built, result, iteration, {})
    summary = result.ac_check
    assert summary["losses"] == run.losses
    if run.losses == "iterate":
        rounds = summary["loss_iterations"]
        # the pipeline starts lossless (the flat point): at least one round must follow
        # at an AC point, and the last one model losses
        assert len(rounds) >= 2
        assert rounds[0]["loss_kw_linear"] == 0.0 < rounds[-1]["loss_kw_linear"]
        assert summary["losses_converged"] is True
        assert rounds[-1]["max_voltage_error_pu"] <= run.case.network.losses_tolerance_pu

    checks = built.checks(result)
    by_name = {"": summary} if set(checks) == {""} else summary
    for check_name, injections in checks.items():
        named = named_violations(by_name[check_name])
        if injections.handles is None or injections.handles.voltage_limit is None:
            assert named == set(), check_name  # no linear model enforced anything here
            continue
        if injections.handles.formulation == "lindist3flow":
            # per phase against runpp_3ph: tests/models/test_lem_three_phase.py
            assert by_name[check_name]["enforced_violations_count"] == len(named) == 0
            continue
        assert named == pandapower_violations(run.feeder, injections), check_name
        assert by_name[check_name]["enforced_violations_count"] == len(named) == 0
