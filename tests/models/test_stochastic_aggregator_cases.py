"""The stochastic aggregator's case: the shipped one's value KPIs; ``scenarios:`` and
``offer:`` validated naming the field."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.errors import CaseError

CASES = shipped_cases_dir()
SHIPPED = CASES / "aggregator_stochastic.yaml"


@pytest.mark.slow
def test_shipped_case_orders_ws_rp_eev_and_beats_the_expected_value_commitment_out_of_sample():
    case = load_case(SHIPPED)
    result = pipeline.run_case(case, {"mip_gap": 1e-9})  # identities hold at optimality
    k = result.kpis
    tol = 1e-7 * (1 + abs(k["eev"]))
    assert k["ws"] <= k["objective"] + tol
    assert k["objective"] <= k["eev"] + tol
    assert k["evpi"] >= -tol and k["vss"] >= -tol
    costs = result.tables["scenarios"]
    p, rp = costs["probability"].to_numpy(), costs["rp"].to_numpy()
    assert len(costs) == case.scenarios.n
    assert k["expected_cost"] == pytest.approx(p @ rp, abs=1e-9)
    assert k["evpi"] == pytest.approx(p @ rp - p @ costs["ws"].to_numpy(), abs=1e-9)
    assert k["vss"] == pytest.approx(p @ costs["eev"].to_numpy() - p @ rp, abs=1e-9)
    assert (costs["ws"] <= costs["rp"] + tol).all()  # each scenario at its own best
    # the first stage: a level of the menu per hour, a commitment within the offer
    first = result.tables["first_stage"]
    assert set(first["incentive_per_mwh"]) <= set(case.incentive.levels)
    assert first["commitment_kw"].between(case.offer.min_kw, case.offer.max_kw).all()
    # every home in every scenario answers with its own optimum at that incentive
    assert k["max_follower_gap"] < 1e-6
    held_out = result.tables["out_of_sample"]
    assert len(held_out) == case.scenarios.out_of_sample
    assert k["out_of_sample_mean"] == pytest.approx(
        float(np.dot(held_out["probability"], held_out["rp"])), abs=1e-9
    )
    assert k["out_of_sample_mean"] <= k["out_of_sample_mean_eev"]


def _case(tmp_path, replace: dict[str, str]) -> str:
    """The shipped case with top-level sections replaced (value None: removed)."""
    text = SHIPPED.read_text()
    sections, key = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key = line.split(":")[0]
            sections[key] = [line]
        else:
            sections[key].append(line)
    for name, value in replace.items():
        sections.pop(name, None)
        if value is not None:
            sections[name] = [value]
    path = tmp_path / "case.yaml"
    path.write_text("\n".join(line for lines in sections.values() for line in lines) + "\n")
    return str(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("replace", "match"),
    [
        ({"scenarios": None}, "offer: needs scenarios"),
        ({"offer": None}, "commitment_kw: required"),
        (
            {"scenarios": "scenarios: {std_kw: {load_kw: 1}, imbalance: {up_per_mwh: 600}}"},
            "scenarios.imbalance",
        ),
        (
            {"scenarios": "scenarios: {source: simbench}"},
            "'simbench' is for prosumer cases",
        ),
        (
            {"network": "network: {source: simbench, code: 1-LV-rural1--0-sw}"},
            "scenarios: the stochastic aggregator has no network limits",
        ),
        ({"offer": "offer: {price_per_mwh: 150, min_kw: 5, max_kw: 1}"}, "min_kw: 5.0"),
    ],
)
def test_bad_sections_name_the_field(tmp_path, replace, match):
    with pytest.raises(CaseError, match=match):
        load_case(_case(tmp_path, replace))


@pytest.mark.solve
def test_the_cli_refuses_a_scenario_profile_of_no_home_with_exit_2(tmp_path):
    bad = tmp_path / "scenarios.csv"
    rows = ["scenario,period,profile,value"]
    rows += [f"s{k},{t},z.load_kw,1" for k in range(2) for t in range(4)]
    bad.write_text("\n".join(rows) + "\n")
    path = _case(tmp_path, {"scenarios": f"scenarios: {{source: csv, csv: {bad}}}"})
    command = [sys.executable, "-m", "gridmarkets", "solve", path, "--out", tmp_path / "out"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "'z.load_kw'" in run.stderr and "Traceback" not in run.stderr
