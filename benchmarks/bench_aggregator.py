"""The aggregator's bilevel problem: homes x hourly periods vs time, big-M vs strong duality.

Portfolios from :func:`gridmarkets.models.aggregator.example_portfolio` (evening-peaked
loads, PV on two homes in three, a relaxed battery on every other, a time-of-use tariff,
an evening commitment to export 1 kW per home), fairness weight 0.05, deviation penalty
1000 currency/MWh, multipliers bounded by 1.5 currency per kW and period. Three forms:

- ``bigm``: a continuous incentive in [0, 250] currency/MWh, KKT with big-M;
- ``levels bigm`` and ``levels strong duality``: the incentive chosen per period from
  six levels (0, 50, ..., 250), where both methods apply;
- ``full control``: the single-level comparison (an LP).

Solved to a 1 % MIP gap with a time limit (quick 30 s, full 300 s); ``max gap`` is the
largest follower gap :func:`gridmarkets.solvers.kkt.verify` found (0 when every home's
response is optimal). Quick mode: up to 10 homes x 24 periods; full: up to 40 x 24.
"""

from __future__ import annotations

import time

from gridmarkets.errors import LimitReachedError
from gridmarkets.models import aggregator
from gridmarkets.solvers import solve

MIP_GAP = 0.01
LEVELS = aggregator.IncentiveSpec(levels=[0, 50, 100, 150, 200, 250])
CONTINUOUS = aggregator.IncentiveSpec(max_per_mwh=250)
FORMS = {
    "bigm": {"incentive": CONTINUOUS, "method": "bigm"},
    "levels bigm": {"incentive": LEVELS, "method": "bigm"},
    "levels strong duality": {"incentive": LEVELS, "method": "strong_duality"},
    "full control": {"control": "full"},
}


def run_one(homes: int, periods: int, form: str, time_limit: float) -> dict:
    """Build, solve and verify one portfolio in one form."""
    specs, prices, commitment = aggregator.example_portfolio(homes, periods)
    started = time.perf_counter()
    model = aggregator.build(
        specs,
        prices,
        commitment,
        periods=periods,
        fairness_weight=0.05,
        deviation_penalty_per_mwh=1000.0,
        big_m=1.5,
        **FORMS[form],
    )
    row = {"homes": homes, "periods": periods, "form": form}
    try:
        solution = solve(model, mip_gap=MIP_GAP, time_limit=time_limit)
    except LimitReachedError:
        return {**row, "status": "no incumbent", "total_s": time.perf_counter() - started}
    result = aggregator.results(model, solution)
    return {
        **row,
        "status": solution.status,
        "gap": solution.gap,
        "leader_cost": solution.objective,
        "build_s": solution.build_seconds,
        "solve_s": solution.solve_seconds,
        "total_s": time.perf_counter() - started,
        "binaries": solution.n_binaries,
        "constraints": solution.n_constraints,
        "max gap": result.kpis["max_follower_gap"],
    }


def run(quick: bool = True) -> list[dict]:
    sizes = [(3, 4), (5, 8)] if quick else [(3, 4), (5, 24), (10, 24), (20, 24), (40, 24)]
    time_limit = 10.0 if quick else 300.0
    return [run_one(h, t, form, time_limit) for h, t in sizes for form in FORMS]
