"""P2P trading: the central LP against consensus ADMM, up to 100 peers x 24 periods.

Random peers (alternately sellers and buyers, one block per period) on a complete
trading graph with distinct preference costs per pair (so the LP's trades are unique)
and a grid at 250/30 currency/MWh. ADMM runs with its default stopping tolerances
(1e-6). Each row: sizes, central build/solve times, ADMM iterations and time, and how
far ADMM is from the LP (welfare, largest trade error as a share of the largest trade;
the issue asks for at most 0.1 % and 1 %). Quick mode runs 10 and 50 peers x 4
periods; ``--full`` adds 100 x 24.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream

UPSTREAM = Upstream(import_price=250.0, export_price=30.0)


def random_market(n: int, periods: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    who = np.repeat(np.arange(n), periods)
    sell = who % 2 == 0
    bids = pd.DataFrame(
        {
            "participant": [f"p{i:03d}" for i in who],
            "side": np.where(sell, "sell", "buy"),
            "quantity_kw": rng.uniform(1, 10, who.size),
            "price": np.where(sell, rng.uniform(0, 150, who.size), rng.uniform(50, 300, who.size)),
            "period": np.tile(np.arange(periods), n),
        }
    )
    peers = [f"p{i:03d}" for i in range(n)]
    prefs = [(a, b, rng.uniform(1, 20)) for a in peers for b in peers if a != b]
    return bids, pd.DataFrame(prefs, columns=["peer", "partner", "cost"])


def run_one(n: int, periods: int, max_iterations: int) -> dict:
    bids, prefs = random_market(n, periods)
    started = time.perf_counter()
    central = p2p.clear(bids, upstream=UPSTREAM, preferences=prefs)
    central_s = time.perf_counter() - started
    started = time.perf_counter()
    admm = p2p.clear(
        bids,
        upstream=UPSTREAM,
        preferences=prefs,
        method="admm",
        admm={"rho": 5.0, "max_iterations": max_iterations},
    )
    admm_s = time.perf_counter() - started
    both = central.trades.merge(admm.trades, on=["seller", "buyer", "period"], how="outer")
    error = (both["traded_kw_x"].fillna(0) - both["traded_kw_y"].fillna(0)).abs().max()
    w_lp, w_admm = central.kpis["social_welfare"], admm.kpis["social_welfare"]
    return {
        "peers": n,
        "periods": periods,
        "pairs": n * (n - 1),
        "central_build_s": central.solution.build_seconds,
        "central_solve_s": central.solution.solve_seconds,
        "central_total_s": central_s,
        "admm_iterations": admm.kpis["iterations"],
        "admm_converged": bool(admm.kpis["converged"]),
        "admm_s": admm.solution.solve_seconds,
        "admm_total_s": admm_s,
        "welfare_error": abs(w_admm - w_lp) / abs(w_lp),
        "trade_error": error / central.trades["traded_kw"].max(),
    }


def run(quick: bool = True) -> list[dict]:
    sizes = [(10, 4), (50, 4)] if quick else [(10, 4), (50, 4), (100, 24)]
    return [run_one(n, periods, 5000 if quick else 20000) for n, periods in sizes]


if __name__ == "__main__":
    print(pd.DataFrame(run(quick=False)).to_string())
