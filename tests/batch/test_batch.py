"""Running studies: rows match the runner, failures are rows, nothing runs twice or is lost.

The runner is a fake (batch_fakes.LinearRunner) whose KPIs are formulas of one price,
so each row is checked against the formula, and whose ledger counts computations.
"""

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from batch_fakes import PRICE, LinearRunner, ledger_counts

from gridmarkets import batch
from gridmarkets.errors import CaseError
from gridmarkets.study import make_study

pytestmark = pytest.mark.unit

HOME = "participants.home_1.blocks.0.price"
PRICES = [10.0, 13.0, -1.0, 50.0, 90.0, 120.0]


def study(prices=PRICES, kpis=("welfare", "double_price"), **fields):
    parameters = {PRICE: {"values": list(prices)}, HOME: {"values": [200, 300]}}
    data = {"base": "lem_copperplate", "parameters": parameters, "kpis": list(kpis), **fields}
    return make_study(data, source="fake.yaml")


def stored(out: Path) -> int:
    with sqlite3.connect(out / batch.STORE_NAME) as db:
        return db.execute("SELECT count(*) FROM scenarios").fetchone()[0]


@pytest.fixture
def ledger(tmp_path):
    return tmp_path / "ledger.txt"


def test_rows_follow_the_runner_and_failures_are_rows(tmp_path, ledger):
    s = study()
    frame = batch.run(s, workers=2, out=tmp_path, progress=False, runner=LinearRunner(ledger))
    assert list(frame["scenario"]) == list(range(12))
    assert list(frame.columns[:6]) == ["scenario", PRICE, HOME, "status", "welfare", "double_price"]
    ok = frame[frame["status"] == "optimal"]
    assert (ok["welfare"] == 1000 - ok[PRICE]).all() and (ok["double_price"] == 2 * ok[PRICE]).all()
    by_price = frame.groupby(PRICE)["status"].unique().map(list).to_dict()
    assert by_price[-1.0] == ["infeasible"] and by_price[13.0] == ["error"]
    assert frame.loc[frame[PRICE] == 13.0, "message"].str.contains("unlucky thirteen").all()
    assert frame.loc[frame[PRICE] < 0, "welfare"].isna().all()
    assert frame["ac_check.max_voltage_error_pu"].notna().sum() == len(ok)
    assert frame[["case_hash", "pyomo_version", "highs_version", "finished_at"]].notna().all().all()
    assert stored(tmp_path) == 12
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "double_price.png",
        "welfare.png",
    ]


def test_a_rerun_computes_nothing_and_returns_the_same_table(tmp_path, ledger):
    runner = LinearRunner(ledger)
    first = batch.run(study(), workers=2, out=tmp_path, progress=False, runner=runner)
    computed = ledger_counts(ledger)
    again = batch.run(study(), workers=2, out=tmp_path, progress=False, runner=runner)
    assert ledger_counts(ledger) == computed
    pd.testing.assert_frame_equal(first, again)


def test_a_grown_study_computes_only_its_new_scenarios(tmp_path, ledger):
    runner = LinearRunner(ledger)
    batch.run(study([10.0, 50.0]), workers=1, out=tmp_path, progress=False, runner=runner)
    batch.run(study([10.0, 50.0, 70.0]), workers=1, out=tmp_path, progress=False, runner=runner)
    assert ledger_counts(ledger) == {10.0: 2, 50.0: 2, 70.0: 2}  # two home prices each


def test_an_unknown_kpi_stops_the_study_naming_it(tmp_path):
    with pytest.raises(CaseError, match=r"fake.yaml: kpis.1: 'welfair' is not a KPI of model lem"):
        batch.run(
            study(kpis=["welfare", "welfair"]), workers=1, progress=False, runner=LinearRunner()
        )


def test_without_kpis_every_kpi_of_the_model_is_a_column():
    frame = batch.run(study([10.0], kpis=()), workers=1, progress=False, runner=LinearRunner())
    assert list(frame.columns[3:6]) == ["status", "welfare", "double_price"]


@pytest.mark.parametrize("mode", ["interrupt", "exit"])
def test_an_interrupted_study_resumes_without_computing_anything_twice(tmp_path, ledger, mode):
    trap = tmp_path / "trap"
    trap.touch()
    runner = LinearRunner(ledger, trap=trap, trap_price=50.0, trap_mode=mode)
    s = study()
    if mode == "interrupt":  # Ctrl-C in the middle of the study
        with pytest.raises(KeyboardInterrupt):
            batch.run(s, workers=1, out=tmp_path, progress=False, runner=runner)
        assert 0 < stored(tmp_path) < 12
    frame = batch.run(s, workers=1, out=tmp_path, progress=False, runner=runner)
    assert not trap.exists()  # the trap did fire
    assert stored(tmp_path) == 12 and (frame["status"] != "not_run").all()
    solved = [p for p in PRICES if p >= 0 and p != 13.0]
    assert ledger_counts(ledger) == dict.fromkeys(solved, 2)  # two home prices each


def test_workers_and_a_scheduler_are_exclusive():
    with pytest.raises(Exception, match="workers"):
        batch.run(study(), workers=2, scheduler="tcp://127.0.0.1:1", runner=LinearRunner())
