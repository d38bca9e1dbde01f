"""HiGHS options on the largest LP: the LEM with LinDistFlow (bench_lem's network case).

The model is built and compiled once; each row solves the same ``HighsLp`` with one
set of options (a time limit of 60 s each). ``objective_gap`` is the relative
difference to the default's objective (PDLP stops at its own, looser tolerance).
gridmarkets passes no options by default, so HiGHS picks dual simplex with presolve:
the first row.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import highspy
import pandas as pd

from benchmarks.bench_lem import CAPACITY_KW, EXPORT_PRICE, FEEDER, IMPORT_PRICE, feeder_bids
from gridmarkets.models import lem
from gridmarkets.networks import load
from gridmarkets.solvers import compile_model

OPTIONS = {
    "default (dual simplex, presolve)": {},
    "dual simplex, no presolve": {"solver": "simplex", "presolve": "off"},
    "primal simplex": {"solver": "simplex", "simplex_strategy": 4},
    "parallel dual simplex (PAMI)": {"solver": "simplex", "simplex_strategy": 3, "parallel": "on"},
    "interior point + crossover": {"solver": "ipm"},
    "interior point, no crossover": {"solver": "ipm", "run_crossover": "off"},
    "PDLP (first order)": {"solver": "pdlp"},
    "threads=1 (fresh process)": {"threads": 1},
    "threads=2 (fresh process)": {"threads": 2},
}


def solve_with(lp: highspy.HighsLp | str, options: dict) -> dict:
    """Solve ``lp`` (or the model file at that path) with ``options``; time HiGHS alone."""
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("time_limit", 60.0)
    for name, value in options.items():
        highs.setOptionValue(name, value)
    if isinstance(lp, str):
        highs.readModel(lp)
    else:
        highs.passModel(lp)
    started = time.perf_counter()
    highs.run()
    seconds = time.perf_counter() - started
    info = highs.getInfo()
    return {
        "status": highs.modelStatusToString(highs.getModelStatus()),
        "solve_s": seconds,
        "objective": highs.getObjectiveValue(),
        "simplex_iterations": info.simplex_iteration_count,
        "ipm_iterations": info.ipm_iteration_count,
        "pdlp_iterations": info.pdlp_iteration_count,
    }


def solve_in_fresh_process(lp: highspy.HighsLp, options: dict) -> dict:
    """HiGHS sizes its thread pool once per process, so ``threads`` needs a new one."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "lem.mps")
        highs = highspy.Highs()
        highs.setOptionValue("output_flag", False)
        highs.passModel(lp)
        highs.writeModel(path)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(solve_with, path, options).result()


def run(quick: bool = True) -> list[dict]:
    participants, periods = (50, 12) if quick else (1000, 96)
    feeder = load(FEEDER)
    bids = feeder_bids(feeder, participants, periods)
    upstream = lem.Upstream(IMPORT_PRICE, EXPORT_PRICE, CAPACITY_KW)
    lp = compile_model(lem.build(bids, upstream=upstream, network=feeder)).lp
    rows, reference = [], None
    for label, options in OPTIONS.items():
        solver = solve_in_fresh_process if "threads" in options else solve_with
        result = solver(lp, options)
        reference = result["objective"] if reference is None else reference
        gap = abs(result["objective"] - reference) / max(1.0, abs(reference))
        rows.append(
            {
                "options": label,
                "participants": participants,
                "periods": periods,
                "rows": lp.num_row_,
                "columns": lp.num_col_,
                **result,
                "objective_gap": gap,
            }
        )
    return rows


if __name__ == "__main__":
    print(pd.DataFrame(run(quick=True)).to_string(index=False))
