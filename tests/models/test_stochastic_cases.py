"""Stochastic cases: the shipped ones keep WS <= RP <= EEV; ``scenarios:`` is validated."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.errors import CaseError, InputError

CASES = shipped_cases_dir()


def _tail_mean(costs: np.ndarray, p: np.ndarray, alpha: float) -> float:
    """CVaR by sorting: the mean of the worst 1 - alpha of the probability."""
    order = np.argsort(-costs)
    left, total = 1.0 - alpha, 0.0
    for c, q in zip(costs[order], p[order], strict=True):
        take = min(q, left)
        total, left = total + take * c, left - take
    return total / (1.0 - alpha)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prosumer_stochastic", "community_stochastic"])
def test_shipped_stochastic_cases_order_ws_rp_eev_and_their_kpis_add_up(name):
    case = load_case(CASES / f"{name}.yaml")
    result = pipeline.run_case(case)
    k = result.kpis
    tol = 1e-7 * (1 + abs(k["eev"]))
    assert k["ws"] <= k["objective"] + tol <= k["eev"] + 2 * tol
    assert k["evpi"] >= -tol and k["vss"] >= -tol
    costs = result.tables["scenarios"]
    p = costs["probability"].to_numpy()
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(costs) == case.scenarios.reduce_to
    rp = costs["rp"].to_numpy()
    alpha, weight = case.scenarios.cvar_alpha, case.scenarios.cvar_weight
    assert k["expected_cost"] == pytest.approx(p @ rp, abs=1e-9)
    assert k["cvar"] == pytest.approx(_tail_mean(rp, p, alpha), abs=1e-7)
    assert k["objective"] == pytest.approx(p @ rp + weight * _tail_mean(rp, p, alpha), abs=1e-7)
    assert (costs["ws"] <= costs["rp"] + 1e-7).all()  # each scenario at its least cost
    held_out = result.tables["out_of_sample"]
    assert len(held_out) == case.scenarios.out_of_sample
    assert k["out_of_sample_mean"] == pytest.approx(held_out["rp"].mean(), abs=1e-9)
    # the stochastic commitment does better out of sample than the expected-value one
    assert k["out_of_sample_mean"] <= k["out_of_sample_mean_eev"]


def _case(tmp_path, text: str) -> str:
    """The shipped prosumer case with ``text`` for its scenarios section (and any other
    top-level keys it sets in place of the shipped ones)."""
    path = tmp_path / "case.yaml"
    lines = (CASES / "prosumer_stochastic.yaml").read_text().split("scenarios:")[0].splitlines()
    keys = {line.split(":")[0] for line in text.splitlines()}
    kept = [line for line in lines if line.split(":")[0] not in keys]
    path.write_text("\n".join(kept) + "\n" + text + "\n")
    return str(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("scenarios", "match"),
    [
        (
            "scenarios: {source: csv, imbalance: {up_per_mwh: 600}}",
            "csv: given exactly when source is 'csv'",
        ),
        ("scenarios: {imbalance: {up_per_mwh: 600}}", "std_kw or std_fraction"),
        (
            "scenarios: {std_kw: {load_kw: 1}, rho: 1.0, imbalance: {up_per_mwh: 600}}",
            "scenarios.rho",
        ),
        ("scenarios: {std_kw: {heat_kw: 1}, imbalance: {up_per_mwh: 600}}", "heat_kw"),
        (
            "mode: islanded\nscenarios: {std_kw: {load_kw: 1}, imbalance: {up_per_mwh: 600}}",
            "needs mode: grid",
        ),
    ],
)
def test_bad_scenarios_sections_name_the_field(tmp_path, scenarios, match):
    with pytest.raises(CaseError, match=match):
        load_case(_case(tmp_path, scenarios))


@pytest.mark.solve
def test_a_scenario_file_with_a_bad_value_names_file_and_line(tmp_path):
    bad = tmp_path / "bad_scenarios.csv"
    bad.write_text("scenario,period,profile,value\na,0,home.load_kw,1\na,1,home.load_kw,oops\n")
    path = _case(
        tmp_path, f"scenarios: {{source: csv, csv: {bad}, imbalance: {{up_per_mwh: 600}}}}"
    )
    with pytest.raises(InputError, match="bad_scenarios.csv: line 3: value: 'oops'"):
        pipeline.run_case(load_case(path))
    command = [sys.executable, "-m", "gridmarkets", "solve", path, "--out", tmp_path / "out"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "line 3" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.solve
def test_a_scenario_file_with_the_wrong_horizon_is_refused(tmp_path):
    rows = ["scenario,period,profile,value"] + [f"a,{t},home.load_kw,1" for t in range(5)]
    good = tmp_path / "short.csv"
    good.write_text("\n".join(rows) + "\n")
    path = _case(
        tmp_path, f"scenarios: {{source: csv, csv: {good}, imbalance: {{up_per_mwh: 600}}}}"
    )
    with pytest.raises(InputError, match="5 periods per scenario, the horizon has 24"):
        pipeline.run_case(load_case(path))


@pytest.mark.slow
def test_simbench_scenarios_are_the_homes_feeder_profiles_of_neighbouring_days():
    from gridmarkets.case import read_yaml, validate
    from gridmarkets.models.prosumer import resolve_feeder_profiles
    from gridmarkets.specs.scenarios import case_scenarios

    data = read_yaml(CASES / "prosumer_feeder.yaml")
    data["scenarios"] = {"source": "simbench", "n": 3, "imbalance": {"up_per_mwh": 600}}
    case = validate(data)
    feeder = pipeline.load_feeder(case)
    deciding, held_out = case_scenarios(case.scenarios, case.prosumers, case.horizon, feeder)
    assert deciding.names() == ["d-1", "d+0", "d+1"] and held_out is None
    for name, days in (("d-1", -1), ("d+0", 0), ("d+1", 1)):
        horizon = case.horizon.model_copy(
            update={"start": case.horizon.start + timedelta(days=days)}
        )
        homes = resolve_feeder_profiles(case.prosumers, feeder, horizon)
        for pid, home in homes.items():
            got = deciding.profile(name)[f"{pid}.load_kw"].to_numpy()
            assert got == pytest.approx(home.load_kw, abs=1e-9)
    result = pipeline.run_case(case)
    k = result.kpis
    assert k["ws"] <= k["objective"] + 1e-6 <= k["eev"] + 2e-6
