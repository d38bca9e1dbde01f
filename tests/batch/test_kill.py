"""A study killed with SIGKILL (parent, pool and workers) loses no stored row, and the
re-run computes every other scenario once and never a stored one again."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from batch_fakes import PRICE, LinearRunner, ledger_counts

from gridmarkets import batch
from gridmarkets.study import make_study

pytestmark = pytest.mark.unit

PRICES = [float(p) for p in range(20, 32)]
STUDY = {"base": "lem_copperplate", "parameters": {PRICE: {"values": PRICES}}}

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from batch_fakes import LinearRunner
from gridmarkets import batch
from gridmarkets.study import make_study

if __name__ == "__main__":
    runner = LinearRunner({ledger!r}, sleep=0.3)
    batch.run(make_study({study!r}), workers=2, out={out!r}, progress=False, runner=runner)
"""


def stored_prices(out: Path) -> list[float]:
    with sqlite3.connect(out / batch.STORE_NAME) as db:
        rows = db.execute("SELECT parameters FROM scenarios").fetchall()
    return [float(text.split(":")[1].strip(" }")) for (text,) in rows]


def wait_for_rows(out: Path, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(stored_prices(out)) >= n:
                return
        except sqlite3.OperationalError:  # the file exists before its table does
            pass
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n} rows after {timeout} s")


def test_a_killed_study_resumes_without_loss_or_repeat(tmp_path):
    out, ledger = tmp_path / "out", tmp_path / "ledger.txt"
    script = tmp_path / "sweep.py"
    tests = str(Path(__file__).parent)
    script.write_text(
        textwrap.dedent(SCRIPT).format(tests=tests, ledger=str(ledger), study=STUDY, out=str(out))
    )
    process = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        wait_for_rows(out, 3)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the study's own process group only
        process.wait()
    before = stored_prices(out)
    assert 3 <= len(before) < len(PRICES)
    frame = batch.run(
        make_study(STUDY), workers=2, out=out, progress=False, runner=LinearRunner(ledger)
    )
    assert sorted(stored_prices(out)) == PRICES and (frame["status"] == "optimal").all()
    counts = ledger_counts(ledger)
    assert all(counts[p] == 1 for p in before)
    assert set(counts) == set(PRICES)
