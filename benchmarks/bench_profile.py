"""Where gridmarkets spends its time on the LEM with LinDistFlow (bench_lem's network case).

One build + solve under cProfile (which inflates Python time about 1.5x, so read the
shares, not the seconds). Each row is a step of ``lem.build`` or ``solvers.solve``
with its cumulative seconds and its share of the whole. Quick: 100 participants x 24
periods; full: 1,000 x 96.

What the profile motivated, on 1,000 x 96. Before: build 4.0 s, translate 1.4 s,
HiGHS 0.8 s, against 0.9 s for raw highspy (6.9x). After (RESULTS-full.md): build
0.9 s, translate 0.3 s, HiGHS 0.9 s.

- The LinDistFlow families and the LEM's injections and welfare were written by
  operator overloading, term by term; they are now LinearExpressions built from numpy
  arrays.
- Python's cyclic garbage collector re-scanned the growing model again and again (two
  to four times the build time); it is paused while the model is built and compiled,
  and the new objects then join its oldest generation unscanned.
- Pyomo's LinearStandardFormCompiler walked every row (1.3 s). LinDistFlow now records
  each family's rows as arrays next to the constraint; the solve layer reads the
  arrays of every family whose rows are intact (each row still holds the expression
  it was built with and is active), reads a linear objective straight from its
  LinearExpression, and compiles only the rest with Pyomo.
- Duals and the solution are read back with numpy instead of per-row Python loops.

What is left: creating the Pyomo objects themselves, a ConstraintData, a relational
expression, a LinearExpression and its monomials for each of the 225,408 rows and a
VarData for each of the 136,032 columns (build 0.9 s against 0.1 s for the numpy
arrays of the same LP). The thermal polygon alone is 70 % of the rows. Below this,
rows would have to be created lazily (on first access), which Pyomo's public API does
not offer for indexed constraints with tuple keys.
"""

from __future__ import annotations

import cProfile
import pstats

from benchmarks.bench_lem import CAPACITY_KW, EXPORT_PRICE, FEEDER, IMPORT_PRICE, feeder_bids
from gridmarkets.models import lem
from gridmarkets.networks import load
from gridmarkets.solvers import solve

STEPS = [
    ("build", "lem.py", "build"),
    ("build", "lem.py", "prepare_bids"),
    ("build", "lem.py", "_add_acceptance"),
    ("build", "lem.py", "_injections"),
    ("build", "lindistflow.py", "add"),
    ("build", "lindistflow.py", "_add_variables"),
    ("build", "lindistflow.py", "_add_balances"),
    ("build", "lindistflow.py", "_add_voltage"),
    ("build", "lindistflow.py", "_add_voltage_limits"),
    ("build", "lindistflow.py", "_add_thermal"),
    ("build", "lem.py", "_add_welfare"),
    ("build", "arrays.py", "construct"),
    ("build", "var.py", "construct"),
    ("translate", "highs.py", "compile_model"),
    ("translate", "standard_form.py", "write"),
    ("translate", "highs.py", "add"),
    ("translate", "highs.py", "objective"),
    ("translate", "var.py", "bounds"),
    ("solve", "highs.py", "solve_compiled"),
    ("solve", "highs.py", "_run"),
]


def profile(participants: int, periods: int) -> pstats.Stats:
    feeder = load(FEEDER)
    bids = feeder_bids(feeder, participants, periods)
    upstream = lem.Upstream(IMPORT_PRICE, EXPORT_PRICE, CAPACITY_KW)
    profiler = cProfile.Profile()
    profiler.enable()
    solve(lem.build(bids, upstream=upstream, network=feeder))
    profiler.disable()
    return pstats.Stats(profiler)


def run(quick: bool = True) -> list[dict]:
    participants, periods = (100, 24) if quick else (1000, 96)
    stats = profile(participants, periods).stats
    cumulative: dict[tuple[str, str], float] = {}
    for (path, _, function), (_, _, _, seconds, _) in stats.items():
        key = (path.rsplit("/", 1)[-1], function)
        cumulative[key] = cumulative.get(key, 0.0) + seconds
    total = sum(
        cumulative.get((f, n), 0.0) for f, n in [("lem.py", "build"), ("highs.py", "solve")]
    )
    return [
        {
            "participants": participants,
            "periods": periods,
            "phase": phase,
            "step": f"{file}:{function}",
            "profiled_s": cumulative.get((file, function), 0.0),
            "share": cumulative.get((file, function), 0.0) / total,
        }
        for phase, file, function in STEPS
    ]


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(run(quick=True)).to_string(index=False))
