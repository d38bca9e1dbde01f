"""The gridmarkets command: exit codes, messages without tracebacks, what it writes."""

import json
from pathlib import Path

import pytest
import yaml
from cli_run import gridmarkets

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "data" / "cases"

pytestmark = pytest.mark.solve


def write_case(tmp_path, data, name="case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_solve_writes_summary_tables_and_plots(tmp_path):
    run = gridmarkets("solve", CASES / "lem_copperplate.yaml", "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["case"] == "lem_copperplate" and summary["model"] == "lem"
    assert summary["status"] == "optimal"
    for key in ("objective", "build_seconds", "translate_seconds", "solve_seconds"):
        assert isinstance(summary[key], float)
    assert summary["variables"] > 0 and summary["constraints"] > 0
    accepted = (tmp_path / "out" / "accepted.csv").read_text().splitlines()
    assert accepted[0].startswith("participant,side,period")
    assert (tmp_path / "out" / "plots" / "prices.png").stat().st_size > 0
    # the KPIs written are the ones the result's tables imply
    assert summary["kpis"]["social_welfare"] == pytest.approx(summary["objective"])


def test_set_overrides_a_value(tmp_path):
    run = gridmarkets(
        "solve",
        CASES / "lem_copperplate.yaml",
        "--out",
        tmp_path,
        "--set",
        "participants.home_1.blocks.0.quantity_kw=0",
        "--set",
        "participants.home_1.blocks.1.quantity_kw=0",
    )
    assert run.returncode == 0, run.stderr
    settlement = (tmp_path / "settlement.csv").read_text()
    home_1 = next(line for line in settlement.splitlines() if line.startswith("home_1,"))
    assert float(home_1.split(",")[1]) == 0.0  # no energy bought


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"horizon": {"periods": -3}}, "horizon.periods"),
        ({"participants": {"x": {"side": "buy", "blocks": []}}}, "participants.x.blocks"),
        ({"pricing": "lottery"}, "pricing"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_input_exits_2_naming_the_field_without_traceback(tmp_path, change, expected):
    data = yaml.safe_load((CASES / "lem_copperplate.yaml").read_text())
    data.update(change)
    run = gridmarkets("solve", write_case(tmp_path, data))
    assert run.returncode == 2
    assert expected in run.stderr and "case.yaml" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_missing_file_and_bad_override_exit_2(tmp_path):
    run = gridmarkets("solve", tmp_path / "nothing.yaml")
    assert run.returncode == 2 and "no such file" in run.stderr
    run = gridmarkets("solve", CASES / "lem_copperplate.yaml", "--set", "pricing")
    assert run.returncode == 2 and "path.to.field=value" in run.stderr
    assert "Traceback" not in run.stderr


def test_cases_lists_every_shipped_case():
    run = gridmarkets("cases")
    assert run.returncode == 0
    for path in CASES.glob("*.yaml"):
        assert path.stem in run.stdout


def test_a_shipped_case_solves_by_name_from_anywhere(tmp_path):
    run = gridmarkets("solve", "lem_copperplate", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "results" / "lem_copperplate" / "summary.json").is_file()


def test_schema_is_json_with_every_model():
    run = gridmarkets("schema")
    assert run.returncode == 0
    schema = json.loads(run.stdout)
    text = json.dumps(schema)
    assert '"lem"' in text and "participants" in text


def test_an_infeasible_market_exits_1_naming_the_conflicting_constraints(tmp_path):
    """Bus 5 asks for at least 1.02 pu while the root is held at 1.0 pu and nobody can
    inject power to lift it: no clearing satisfies the voltage limit."""
    import pandapower
    import pandapower.networks as pn

    net = pn.case33bw()
    net.bus.loc[5, "min_vm_pu"] = 1.02
    pandapower.to_json(net, str(tmp_path / "net.json"))
    case = {
        "model": "lem",
        "horizon": {"periods": 1},
        "network": {"source": "file", "path": str(tmp_path / "net.json")},
        "participants": {
            "shop": {"side": "buy", "bus": 5, "blocks": [{"quantity_kw": 10, "price": 90}]}
        },
    }
    run = gridmarkets("solve", write_case(tmp_path, case), "--out", tmp_path / "out")
    assert run.returncode == 1, run.stderr
    assert "infeasible" in run.stderr
    assert "voltage_limit[5,0]" in run.stderr
    assert "Traceback" not in run.stderr
