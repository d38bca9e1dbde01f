"""Where gridmarkets spends its time on the LEM with LinDistFlow (bench_lem's network case).

One build + solve under cProfile (which inflates Python time about 1.5x, so read the
shares, not the seconds). Each row is a step of ``lem.build`` or ``solvers.solve``
with its cumulative seconds and its share of the whole. Quick: 100 participants x 24
periods; full: 1,000 x 96.

What the profile motivated, on 1,000 x 96, in two rounds. First: build 4.0 s,
translate 1.4 s, HiGHS 0.8 s, against 0.9 s for raw highspy (6.9x), down to build
0.9 s, translate 0.3 s:

- The LinDistFlow families and the LEM's injections and welfare were written by
  operator overloading, term by term; they became LinearExpressions built from numpy
  arrays.
- Python's cyclic garbage collector re-scanned the growing model again and again (two
  to four times the build time); it is paused while the model is built and compiled,
  and the new objects then join its oldest generation unscanned.
- Pyomo's LinearStandardFormCompiler walked every row (1.3 s); the solve layer reads
  the network's rows from arrays instead, and a linear objective straight from its
  LinearExpression. Duals and the solution are read back with numpy.

Second round (this table and RESULTS-full.md's lem section): what was left was
creating the Pyomo objects themselves, a ConstraintData, a relational expression, a
LinearExpression and its monomials for each of 225,408 rows (build 0.9 s):

- The network families are ``ArrayConstraint``s (solvers/arrays.py): the rows stay
  arrays and each index gets one light data object whose expression is built only
  when read, the pattern of Pyomo's own templated constraints; the solve layer reads
  the arrays. Build 0.9 s -> 0.25 s.
- Voltage limits and each pair of opposite polygon sides are one ranged row each
  (HiGHS has ranged rows): 225,408 rows -> 132,672, the same feasible set; HiGHS
  itself is faster on it, and the raw-highspy reference uses the same rows.
- The LEM hands its injections over as arrays (``LinearInjections``) instead of
  expressions to be parsed back; columns are placed in bulk, bounds read in one pass,
  integrality asked once per domain, and duals mapped to constraints only when read.
- Benchmarks collect the garbage of earlier runs first: freeing a 2-million-object
  Pyomo model took up to 1.5 s and used to fall inside whichever run came next.

What is left (about 0.5 s against 0.05 s for the numpy arrays of the same LP): one
VarData per column (136,032; creating them, setting the bids' bounds, reading the
bounds back and loading the solution into them), one data object per row, the
market's objective as a LinearExpression read back by the compiler, and mapping each
variable to its column through a dictionary. Each is a few hundredths of a second;
below that, variables would also have to live in arrays, which Pyomo does not offer.
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
