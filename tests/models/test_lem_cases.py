"""The shipped LEM cases of issue 17's participant kinds, run as the CLI runs them, each
participant's profit against its best response computed in the test (linprog or closed
form, tests/models/test_lem_participants.py), the homes' schedules against their own
EMS; and the case spec's errors, which name the field."""

import numpy as np
import pytest
from test_lem_participants import BEST

from gridmarkets import pipeline
from gridmarkets.case import load_case, read_yaml, shipped_cases_dir, validate
from gridmarkets.errors import CaseError
from gridmarkets.models import prosumer
from gridmarkets.models.prosumer import PricesSpec
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve

CASES = {
    "lem_quadratic": "curves",
    "lem_storage": "storage",
    "lem_flexible_load": "flexible_loads",
    "lem_device_bids": "devices",
}


def run(name: str):
    case = load_case(shipped_cases_dir() / f"{name}.yaml")
    return case, pipeline.run_case(case, {})


@pytest.mark.parametrize("name", ["lem_quadratic", "lem_storage", "lem_flexible_load"])
def test_each_participant_of_a_shipped_case_best_responds(name):
    case, result = run(name)
    hours = case.horizon.period_hours
    price = result.prices.set_index("period")["price"].to_numpy()
    responses = result.tables["best_responses"].set_index("participant")
    specs = case.own_models()
    assert {s.participant for s in specs} == set(getattr(case, CASES[name]))
    for spec in specs:
        best = BEST[spec.kind](spec, price, hours)
        assert responses.loc[spec.participant, "profit"] == pytest.approx(best, abs=1e-6)
    assert result.kpis["participants_best_response"] == 1.0
    assert abs(result.kpis["reconciliation_error"]) <= 1e-9


def test_the_shipped_device_bids_are_delivered_by_the_homes_own_ems():
    case, result = run("lem_device_bids")
    schedules = result.tables["schedules"]
    n = case.horizon.periods
    for name, device in case.devices.items():
        net = schedules[schedules["participant"] == name]["p_net_kw"].to_numpy()

        def pin(m, net=net):
            b = m.home["home"]
            for t in m.PERIODS:
                b.p_import_kw[t].fix(max(-net[t], 0.0))
                b.p_export_kw[t].fix(max(net[t], 0.0))

        ems = prosumer.build(
            {"home": device.home}, PricesSpec(import_price=100.0), periods=n, extra=pin
        )
        assert solve(ems).optimal
        grid = np.array([ems.home["home"].p_import_kw[t].value for t in range(n)])
        assert grid == pytest.approx(np.maximum(-net, 0.0))
    assert result.kpis["participants_best_response"] == 1.0


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("storage", {"capacity_kwh": -1}, r"storage\.community_battery\.capacity_kwh"),
        ("storage", {"soc_initial_kwh": 50}, r"storage\.community_battery"),
        ("flexible_loads", {"end": 40}, r"flexible_loads\.ev_1\.end: 40 is after"),
        ("flexible_loads", {"utility_per_mwh": [1, 2]}, r"flexible_loads\.ev_1\.utility_per_mwh"),
        ("curves", {"a": -0.5}, r"curves\.chp\.a"),
        ("curves", {"side": "both"}, r"curves\.chp\.side"),
        ("devices", {"home": {"load_kw": 1.0, "cat": 3}}, r"devices\.home_a\.home\.cat"),
    ],
)
def test_case_errors_name_the_field(section, change, message):
    source = {
        "storage": "lem_storage",
        "flexible_loads": "lem_flexible_load",
        "curves": "lem_quadratic",
        "devices": "lem_device_bids",
    }[section]
    data = read_yaml(shipped_cases_dir() / f"{source}.yaml")
    name = next(iter(data[section]))
    data[section][name] = {**data[section][name], **change}
    with pytest.raises(CaseError, match=message):
        validate(data, source)


def test_a_name_in_two_sections_is_refused():
    data = read_yaml(shipped_cases_dir() / "lem_storage.yaml")
    data["flexible_loads"] = {"homes": {"energy_kwh": 4.0, "p_max_kw": 2.0}}
    with pytest.raises(CaseError, match=r"flexible_loads\.homes: the name 'homes' is already"):
        validate(data, "lem_storage")
