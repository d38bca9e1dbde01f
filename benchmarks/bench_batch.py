"""Batch studies: the speedup of 2 local workers over 1, and what model reuse could save.

A CPU-bound study: a copper-plate LEM case of random block bids with an upstream grid
(``participants`` x 96 periods, written to a temporary case file) swept over the import
price, every scenario a full ``run_case`` (build, compile, solve, results). Each row
runs the same study into a fresh results store with 1 and 2 worker processes
(``batch.run``, local forkserver pool, worker start-up included); ``speedup`` is the
1-worker wall time over the 2-worker one.

``build_share`` is the median over scenarios of the model build time over the
scenario's wall time on its worker: the most that reusing a built model (mutable
parameters, a persistent solver) could save when only data change, since the compile
to HiGHS arrays and the solve are paid either way.

Measured on the project's 2-core VM (shared with other jobs, so times are noisy): 200
participants x 16 scenarios, 8.5 s on 1 worker and 5.0 s on 2 (speedup 1.69; worker
start-up and the parent's bookkeeping are the rest); build_share 0.6-0.7 (0.28 s of a
0.40 s scenario at 200 participants, 0.52 s of 0.82 s at 400). Reuse would therefore
pay for the LEM; it needs the model builder to expose its prices and quantities as
mutable parameters, which ``batch`` cannot add from outside (see gridmarkets.batch).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
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


def timed_run(study, workers: int, out: Path) -> tuple[float, object]:
    started = time.perf_counter()
    frame = batch.run(study, workers=workers, out=out, progress=False)
    return time.perf_counter() - started, frame


def measure(participants: int, scenarios: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = sweep(folder, participants, scenarios)
        one, frame = timed_run(study, 1, folder / "one")
        two, again = timed_run(study, 2, folder / "two")
    if not (frame["status"] == "optimal").all():
        raise AssertionError(f"unsolved scenarios: {frame['status'].value_counts().to_dict()}")
    if not np.allclose(frame["social_welfare"], again["social_welfare"], rtol=1e-9):
        raise AssertionError("1 and 2 workers disagree on social welfare")
    share = frame["build_seconds"] / frame["wall_seconds"]
    return {
        "participants": participants,
        "periods": PERIODS,
        "scenarios": scenarios,
        "wall_1_worker_s": one,
        "wall_2_workers_s": two,
        "speedup": one / two,
        "scenario_wall_s": float(frame["wall_seconds"].median()),
        "build_s": float(frame["build_seconds"].median()),
        "translate_s": float(frame["translate_seconds"].median()),
        "solve_s": float(frame["solve_seconds"].median()),
        "build_share": float(share.median()),
    }


def run(quick: bool = True) -> list[dict]:
    """One row per study size (quick: a minute or so on 2 cores)."""
    sizes = [(200, 8)] if quick else [(40, 8), (200, 16), (400, 16), (400, 32)]
    return [measure(participants, scenarios) for participants, scenarios in sizes]


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(run(quick=True)).to_string())
