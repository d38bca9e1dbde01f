"""Sweeps that fail loudly and safely: an unreachable scheduler, a cluster without
workers, two sweeps into one folder, and an exit code that says when scenarios failed.

The runner is the fake of batch_fakes (welfare = 1000 - price, price 13 raises, a
negative price is infeasible), so each row and each count is checked against that rule.
"""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from batch_fakes import PRICE, LinearRunner, ledger_counts
from typer.testing import CliRunner

from gridmarkets import batch, pipeline
from gridmarkets.cli import app
from gridmarkets.study import make_study

pytestmark = pytest.mark.unit
distributed = pytest.importorskip("distributed")

PRICES = [float(p) for p in range(20, 30)]
HOLDER = """
import sys, time
sys.path.insert(0, {tests!r})
from batch_fakes import LinearRunner
from gridmarkets import batch
from gridmarkets.study import make_study

if __name__ == "__main__":
    runner = LinearRunner({ledger!r}, sleep=0.3)
    batch.run(make_study({study!r}), workers=1, out={out!r}, progress=False, runner=runner)
"""


def study_data(prices, **fields):
    return {"base": "lem_copperplate", "parameters": {PRICE: {"values": prices}}, **fields}


def stored_prices(out: Path) -> list[float]:
    try:
        with sqlite3.connect(out / batch.STORE_NAME) as db:
            rows = db.execute("SELECT parameters FROM scenarios").fetchall()
    except sqlite3.OperationalError:  # the file exists before its table does
        return []
    return [float(text.split(":")[1].strip(" }")) for (text,) in rows]


def wait_for_rows(out: Path, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(stored_prices(out)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} rows after {timeout} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- an unreachable scheduler ------------------------------------------------------------


def test_an_unreachable_scheduler_exits_2_naming_it_within_the_timeout(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    study = tmp_path / "s.yaml"
    study.write_text(f"base: lem_copperplate\nparameters: {{{PRICE}: {{values: [30.0]}}}}\n")
    started = time.monotonic()
    result = CliRunner().invoke(
        app, ["sweep", str(study), "--scheduler", address, "--out", str(tmp_path / "out")]
    )
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert address in result.output and "Traceback" not in result.output
    assert len(result.output.splitlines()) <= 5
    assert elapsed < batch.CONNECT_TIMEOUT_S + 20
    assert stored_prices(tmp_path / "out") == []


def test_a_malformed_scheduler_address_exits_2_without_a_traceback(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(f"base: lem_copperplate\nparameters: {{{PRICE}: {{values: [30.0]}}}}\n")
    gridmarkets = str(Path(sys.executable).with_name("gridmarkets"))
    done = subprocess.run(  # a subprocess: a half-built Client once printed at exit
        [gridmarkets, "sweep", str(study), "--scheduler", "nonsense", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--scheduler nonsense" in done.stderr and "missing port" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


# --- a cluster without workers -------------------------------------------------------------


def test_a_cluster_without_workers_stops_the_study_after_the_timeout():
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        started = time.monotonic()
        with pytest.raises(batch.WorkerError, match="no worker for 2 s") as raised:
            batch.run(
                make_study(study_data(PRICES)),
                scheduler=cluster.scheduler_address,
                progress=False,
                runner=LinearRunner(),
                no_workers_timeout_s=2.0,
            )
        elapsed = time.monotonic() - started
    assert f"{len(PRICES)} scenario(s) did not finish" in str(raised.value)
    assert cluster.scheduler_address in str(raised.value)
    assert 2.0 <= elapsed < 20.0


def test_when_every_worker_dies_the_finished_rows_stay_and_a_rerun_completes(tmp_path):
    ledger = tmp_path / "ledger.txt"
    runner = LinearRunner(ledger, sleep=0.3)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:

        def retire_after_three_rows():
            wait_for_rows(tmp_path, 3)
            cluster.scale(0)

        killer = threading.Thread(target=retire_after_three_rows, daemon=True)
        killer.start()
        with pytest.raises(batch.WorkerError, match="no worker"):
            batch.run(
                make_study(study_data(PRICES)),
                scheduler=cluster.scheduler_address,
                out=tmp_path,
                progress=False,
                runner=runner,
                no_workers_timeout_s=2.0,
            )
        killer.join()
    before = stored_prices(tmp_path)
    assert 3 <= len(before) < len(PRICES)
    frame = batch.run(
        make_study(study_data(PRICES)), workers=1, out=tmp_path, progress=False, runner=runner
    )
    assert sorted(stored_prices(tmp_path)) == PRICES
    assert frame["welfare"].tolist() == [1000.0 - p for p in PRICES]
    counts = ledger_counts(ledger)
    assert all(counts[p] == 1 for p in before) and set(counts) == set(PRICES)


# --- one sweep per output folder --------------------------------------------------------


def test_a_second_sweep_into_a_busy_folder_is_refused_and_a_dead_ones_lock_taken_over(
    tmp_path,
):
    out, ledger = tmp_path / "out", tmp_path / "ledger.txt"
    script = tmp_path / "holder.py"
    tests = str(Path(__file__).parent)
    data = study_data(PRICES)
    script.write_text(
        textwrap.dedent(HOLDER).format(tests=tests, ledger=str(ledger), study=data, out=str(out))
    )
    first = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        wait_for_rows(out, 1)
        with pytest.raises(batch.FolderLockedError) as refused:
            batch.run(make_study(data), workers=1, out=out, progress=False, runner=LinearRunner())
        study_file = tmp_path / "s.yaml"
        study_file.write_text(f"base: lem_copperplate\nparameters: {{{PRICE}: {{values: [1]}}}}")
        result = CliRunner().invoke(app, ["sweep", str(study_file), "--out", str(out)])
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the first sweep's own process group only
        first.wait()
    assert str(out) in str(refused.value) and f":{first.pid}," in str(refused.value)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(first.pid) in result.output and str(out.name) in result.output
    assert not (out / "scenarios.csv").exists()  # the refused sweeps wrote nothing
    before = stored_prices(out)
    assert 1 <= len(before) < len(PRICES)
    frame = batch.run(
        make_study(data), workers=1, out=out, progress=False, runner=LinearRunner(ledger)
    )
    assert sorted(stored_prices(out)) == PRICES
    assert pd.read_csv(out / "scenarios.csv")["welfare"].tolist() == [1000.0 - p for p in PRICES]
    assert frame["status"].eq("optimal").all()
    assert all(ledger_counts(ledger)[p] == 1 for p in before)
    assert not (out / f"{batch.LOCK_NAME}.holder").exists()


# --- the exit code ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as local:
        yield local


def always_raises(case, solve_options):
    raise RuntimeError("broken on purpose")


@pytest.mark.parametrize(
    ("prices", "runner", "exit_code", "words"),
    [
        ([10.0, 50.0, 90.0], LinearRunner(), 0, None),
        ([10.0, 13.0, -1.0, 50.0], LinearRunner(), 1, "1 of 4 scenarios failed"),
        ([10.0, 50.0], always_raises, 1, "2 of 2 scenarios failed"),
        ([-1.0, -2.0], LinearRunner(), 1, "no scenario of 2 has a solution"),
    ],
    ids=["all-solved", "one-raises", "all-raise", "none-solved"],
)
def test_the_sweep_exit_code_says_when_scenarios_failed(
    cluster, tmp_path, monkeypatch, prices, runner, exit_code, words
):
    # in-process Dask workers see the patched pipeline; reuse: false calls run_case
    monkeypatch.setattr(pipeline, "run_case", runner)
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        f"base: lem_copperplate\nreuse: false\nparameters: {{{PRICE}: {{values: {prices}}}}}\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            str(study_file),
            "--scheduler",
            cluster.scheduler_address,
            "--out",
            str(tmp_path),
        ],
    )
    table = pd.read_csv(tmp_path / "scenarios.csv")
    raising = [p for p in prices if runner is always_raises or p == 13.0]
    assert table["status"].eq("error").sum() == len(raising)
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    if words:
        assert words in " ".join(result.output.split())
