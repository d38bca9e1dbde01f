"""Batch studies: the speedup of 2 local workers over 1, and of model reuse over rebuilds.

A CPU-bound study: a copper-plate LEM case of random block bids with an upstream grid
(``participants`` x 96 periods, written to a temporary case file) swept over the import
price. Each row runs the same study into a fresh results store three times (``batch.run``,
local forkserver pool, worker start-up included): 1 worker without reuse (every
scenario a full ``run_case``: build, compile, solve, results), 1 worker with reuse (the
default: the worker keeps the built LP and its HiGHS arrays and changes only costs and
bounds), and 2 workers with reuse. ``reuse_ratio`` is the 1-worker wall time without
reuse over the one with it, ``speedup`` the 1-worker over the 2-worker wall time (both
with reuse); quick mode runs the scenarios in process instead, without a pool.
``scenario_ratio`` compares the median wall time of a rebuilt scenario
with that of a reused one (worker start-up and first builds left out). Full mode adds
a row on a feeder: the shipped ``lem_lv_grid`` (SimBench LV rural1, 96 periods,
LinDistFlow and the AC check) over 4 import prices, where reuse also keeps the loaded
Feeder.

Where a scenario's time goes without reuse (cProfile and the rows' timings, 200
participants x 96 periods, 0.36 s): validating the case and making its bids table
0.03 s, the build 0.07 s, compiling to HiGHS arrays 0.08 s, HiGHS 0.07 s, results
0.07-0.08 s; on a shipped study (lem_copperplate, 7 participants x 4 periods, 15 ms)
the build is 3 ms and compile and solve 1 ms each, the rest is validation and the
pandas of the results; on ``lem_lv_grid`` (4.7 s) loading the SimBench feeder takes
3.2 s and the AC check 1.3 s, build, compile and solve 0.25 s together.

Measured on the project's 2-core VM (shared with other jobs, so times are noisy): at
200 participants reuse replaces the build and the compile (0.15 s) by an update of
the model and a refresh of the arrays (0.06 s): scenario_ratio about 1.3, and the
results are the same (the same LP solved cold). A warm start from the previous basis
cuts HiGHS's 0.07 s to about 0.01 s but was not shipped: on a market with ties it
returns another optimum than a cold solve (60 participants with prices on a 50-step
grid: 6 of 7 scenarios differ in traded and imported energy at the same welfare), so
rows would depend on scenario order. On ``lem_lv_grid`` keeping the Feeder makes a
scenario about 3 times faster (9 s to 3 s per scenario on the loaded VM).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from gridmarkets import batch
from gridmarkets.study import make_study

PERIODS = 96


def base_case(participants: int, seed: int = 0) -> dict:
    """A LEM case with random sellers and buyers, one block each, per-period quantities."""
    rng = np.random.default_rng(seed)
    people = {}
    for k in range(participants):
        quantity = rng.uniform(0, 10, PERIODS).round(3).tolist()
        price = round(float(rng.uniform(0, 300)), 2)
        side = "sell" if k % 2 == 0 else "buy"
        people[f"p{k}"] = {"side": side, "blocks": [{"quantity_kw": quantity, "price": price}]}
    return {
        "model": "lem",
        "name": f"random_{participants}",
        "horizon": {"periods": PERIODS, "resolution_minutes": 15},
        "upstream": {"import_price": 200.0, "export_price": 20.0, "capacity_kw": 500.0},
        "participants": people,
    }


def sweep(folder: Path, participants: int, scenarios: int):
    """The study: the import price at ``scenarios`` values."""
    (folder / "base.yaml").write_text(yaml.safe_dump(base_case(participants)))
    prices = np.linspace(100.0, 300.0, scenarios).round(2).tolist()
    data = {
        "base": "base.yaml",
        "parameters": {"upstream.import_price": {"values": prices}},
        "kpis": ["social_welfare", "import_kwh"],
        "solve_options": {"threads": 1},  # one HiGHS thread per worker process
    }
    return make_study(data, source="bench_batch", root=folder)


def timed_run(study, workers: int, out: Path, reuse: bool) -> tuple[float, pd.DataFrame]:
    started = time.perf_counter()
    frame = batch.run(study, workers=workers, out=out, progress=False, reuse=reuse)
    return time.perf_counter() - started, frame


def compare(study, folder: Path, two_workers: bool) -> dict:
    """Wall times of ``study`` rebuilt and reused on 1 worker (and reused on 2)."""
    rebuilt_s, rebuilt = timed_run(study, 1, folder / "rebuilt", reuse=False)
    reused_s, reused = timed_run(study, 1, folder / "reused", reuse=True)
    frames = [rebuilt, reused]
    row = {"scenarios": len(study.scenarios), "wall_rebuild_s": rebuilt_s, "wall_reuse_s": reused_s}
    if two_workers:
        row["wall_reuse_2_workers_s"], again = timed_run(study, 2, folder / "two", reuse=True)
        row["speedup"] = reused_s / row["wall_reuse_2_workers_s"]
        frames.append(again)
    check_same(frames)
    scenario = rebuilt["wall_seconds"].iloc[1:].median()
    row["reuse_ratio"] = rebuilt_s / reused_s
    row["scenario_ratio"] = scenario / reused.loc[reused["reused"] == 1, "wall_seconds"].median()
    return row


def check_same(frames: list[pd.DataFrame]) -> None:
    for frame in frames:
        if not (frame["status"] == "optimal").all():
            raise AssertionError(f"unsolved: {frame['status'].value_counts().to_dict()}")
        if not np.allclose(frame["social_welfare"], frames[0]["social_welfare"], rtol=1e-9):
            raise AssertionError("reuse, rebuild or the number of workers change the welfare")


def measure(participants: int, scenarios: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        row = compare(sweep(folder, participants, scenarios), folder, two_workers=True)
    return {"study": f"random {participants} x {PERIODS}", **row}


def measure_feeder(scenarios: int) -> dict:
    prices = np.linspace(120.0, 300.0, scenarios).round(2).tolist()
    data = {
        "base": "lem_lv_grid",
        "parameters": {"upstream.import_price": {"values": prices}},
        "kpis": ["social_welfare"],
        "solve_options": {"threads": 1},
    }
    with tempfile.TemporaryDirectory() as tmp:
        row = compare(make_study(data, source="bench_batch"), Path(tmp), two_workers=False)
    return {"study": "lem_lv_grid", **row}


def in_process(participants: int, scenarios: int) -> dict:
    """Quick mode: the scenarios one after the other in this process, rebuilt then
    reused (no worker pool to start; one scenario first to warm the imports)."""
    with tempfile.TemporaryDirectory() as tmp:
        study = sweep(Path(tmp), participants, scenarios)
    batch.run_scenario(study.scenarios[0].case, study.solve_options)
    walls, frames = {}, []
    for reuse in (False, True):
        started = time.perf_counter()
        rows = [
            batch.run_scenario(s.case, study.solve_options, None, reuse) for s in study.scenarios
        ]
        walls[reuse] = time.perf_counter() - started
        frames.append(pd.DataFrame(rows).rename(columns={"objective": "social_welfare"}))
    check_same(frames)
    return {
        "study": f"random {participants} x {PERIODS} (in process)",
        "scenarios": scenarios,
        "wall_rebuild_s": walls[False],
        "wall_reuse_s": walls[True],
        "reuse_ratio": walls[False] / walls[True],
    }


def run(quick: bool = True) -> list[dict]:
    """One row per study (quick: a few seconds, in process, without the pool)."""
    if quick:
        return [in_process(100, 6)]
    rows = [measure(p, n) for p, n in [(40, 8), (200, 16), (400, 16), (400, 32)]]
    return [*rows, measure_feeder(4)]


if __name__ == "__main__":
    print(pd.DataFrame(run(quick=True)).to_string())
