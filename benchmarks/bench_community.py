"""Energy communities: one schedule of 50 members, and the exact Shapley value of 10.

The community is :func:`gridmarkets.models.community.sample_community`: homes with the
SimBench household load of ``data/profiles`` (a different day each), rooftop PV in about
40 % and a battery in 20 % of them, a shared battery and a shared PV plant, an
evening-peak tariff, over a day at 15 minutes (96 periods).

Rows: ``schedule`` builds, solves and reports the whole community (50 members; quick
mode 20). ``shapley`` solves every coalition of 10 members (1023 solves; quick mode 6
members and 63 solves) with one model re-solved per coalition, and ``rebuild`` solves a
sample of the same coalitions with a fresh build each, to show what the reuse saves.
Times are wall seconds.
"""

from __future__ import annotations

import time

from gridmarkets.models import allocation, community
from gridmarkets.solvers import solve

PERIODS = 96
HOURS = 0.25


def run_schedule(n: int) -> dict:
    members, shared, prices = community.sample_community(n, periods=PERIODS, period_hours=HOURS)
    started = time.perf_counter()
    model = community.build(members, shared, prices, periods=PERIODS, period_hours=HOURS)
    built = time.perf_counter()
    solution = solve(model)
    solved = time.perf_counter()
    result = community.results(model, solution)
    return {
        "case": "schedule",
        "members": n,
        "periods": PERIODS,
        "coalitions": 1,
        "variables": solution.n_variables,
        "constraints": solution.n_constraints,
        "build_s": built - started,
        "solve_s": solved - built,
        "results_s": time.perf_counter() - solved,
        "total_s": time.perf_counter() - started,
        "self_sufficiency": result.kpis["self_sufficiency"],
    }


def run_shapley(n: int) -> list[dict]:
    members, shared, prices = community.sample_community(n, periods=PERIODS, period_hours=HOURS)
    options = {"periods": PERIODS, "period_hours": HOURS}
    game = community.CommunityGame(members, shared, prices, build_options=options)
    started = time.perf_counter()
    game.evaluate_all()
    shapley = allocation.shapley(game)
    seconds = time.perf_counter() - started
    in_core = allocation.core_check(shapley, game).in_core
    rows = [
        {
            "case": "shapley",
            "members": n,
            "periods": PERIODS,
            "coalitions": len(game.values) - 1,
            "total_s": seconds,
            "per_coalition_s": seconds / (len(game.values) - 1),
            "in_core": in_core,
        }
    ]
    sample = game.coalitions()[:: max(1, len(game.values) // 40)]
    started = time.perf_counter()
    for coalition in sample:
        community.coalition_value(members, shared, prices, coalition, build_options=options)
    seconds = time.perf_counter() - started
    rows.append(
        {
            "case": "rebuild",
            "members": n,
            "periods": PERIODS,
            "coalitions": len(sample),
            "total_s": seconds,
            "per_coalition_s": seconds / len(sample),
        }
    )
    return rows


def run(quick: bool = True) -> list[dict]:
    """The benchmark rows (quick: 20-member schedule, 6-member Shapley)."""
    return [run_schedule(20 if quick else 50), *run_shapley(6 if quick else 10)]


if __name__ == "__main__":
    import pandas as pd

    print(pd.DataFrame(run(quick=False)).to_string(index=False))
