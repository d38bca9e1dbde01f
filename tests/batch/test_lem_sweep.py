"""The real LEM through the batch runner, the Dask path and the ``sweep`` command.

Each row is checked against the same case solved directly in this process with a
``--set`` override (load_case + run_case): another path to the same numbers.
"""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from gridmarkets import batch, pipeline
from gridmarkets.case import load_case
from gridmarkets.cli import app
from gridmarkets.study import make_study

pytestmark = pytest.mark.solve

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / "data" / "cases" / "lem_copperplate.yaml"
CHP = "participants.chp_c.blocks.0.price"
KPIS = ["social_welfare", "traded_kwh", "unserved_kwh"]


def chp_study():
    parameters = {CHP: {"values": [30.0, 100.0, 200.0]}}
    return make_study({"base": str(CASE), "parameters": parameters, "kpis": KPIS}, source="t.yaml")


def test_each_row_equals_the_case_solved_directly(tmp_path):
    frame = batch.run(chp_study(), workers=2, out=tmp_path, progress=False)
    assert (frame["status"] == "optimal").all()
    for _, row in frame.iterrows():
        direct = pipeline.run_case(load_case(CASE, [f"{CHP}={row[CHP]}"]), {})
        assert [row[k] for k in KPIS] == pytest.approx([direct.kpis[k] for k in KPIS], abs=1e-9)
    assert frame["social_welfare"].is_monotonic_decreasing  # a dearer CHP never helps
    assert frame["highs_version"].notna().all() and (frame["gap"] == 0).all()


def test_dask_gives_the_same_rows_as_the_local_pool():
    distributed = pytest.importorskip("distributed")
    local = batch.run(chp_study(), workers=2, progress=False)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        remote = batch.run(chp_study(), scheduler=cluster.scheduler_address, progress=False)
    same = ["scenario", CHP, "status", *KPIS, "objective", "case_hash"]
    pd.testing.assert_frame_equal(local[same], remote[same])


def test_the_sweep_command_writes_the_store_the_table_and_the_plots(tmp_path):
    study = ROOT / "data" / "studies" / "lem_chp_price.yaml"
    result = CliRunner().invoke(
        app, ["sweep", str(study), "--workers", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "scenarios.csv")
    assert len(table) == 18 and (table["status"] == "optimal").all()
    assert (tmp_path / batch.STORE_NAME).is_file()
    assert {p.stem for p in (tmp_path / "plots").glob("*.png")} == set(
        batch.load_study(study).spec.kpis
    )
    assert "social_welfare" in result.output


def test_a_bad_study_exits_2_naming_the_file_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {CASE}\nparameters: {{{CHP}: {{values: [1]}}}}\ndesign: spiral\n")
    result = CliRunner().invoke(app, ["sweep", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{bad}: design: Input should be" in " ".join(result.output.split())
    assert "Traceback" not in result.output
