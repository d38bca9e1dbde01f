"""The flexibility pool: TSO-only merit order, and the pool on LinDistFlow with scenarios.

``tso_only``: random offers to FCR-N, FCR-D up and mFRR down with no network, cleared
by gridmarkets (Pyomo + HiGHS) and by a merit order per product in numpy (the
reference; both must reach the same cost, checked). ``pool``: the same kind of offers
plus DSO curtailment offers at the load buses of the SimBench MV feeder
``1-MV-urban--0-sw`` (its own loads and generators as the baseline), cleared with one
LinDistFlow per scenario (dispatch, TSO up, TSO down: three copies of the network's
constraints). ``*_s`` columns are build, translate and HiGHS seconds; ``total_s``
includes the result tables (no AC check); ``merit_order_s`` is the numpy reference.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from gridmarkets.models import flexibility as fx
from gridmarkets.networks import load, net_injections
from gridmarkets.solvers import solve

FEEDER = "1-MV-urban--0-sw"
PRODUCTS = ("fcr_n", "fcr_d_up", "mfrr_down")
DIRECTION = {"fcr_n": "symmetric", "fcr_d_up": "up", "mfrr_down": "down"}


def random_offers(sellers: int, periods: int, buses=None, seed: int = 0) -> pd.DataFrame:
    """Each seller offers each product in each period a random quantity at a random price."""
    rng = np.random.default_rng(seed)
    rows = []
    where = rng.choice(buses, sellers) if buses is not None else [None] * sellers
    for s in range(sellers):
        for t in range(periods):
            for k in PRODUCTS:
                q, p = rng.uniform(10, 200), rng.uniform(1, 45)
                rows.append((f"s{s}", where[s], t, k, DIRECTION[k], q, p, 0.0))
            if buses is not None:
                q, p = rng.uniform(10, 200), rng.uniform(30, 90)
                rows.append((f"s{s}", where[s], t, "dso", "down", q, 0.0, p))
    return pd.DataFrame(rows, columns=fx.OFFER_COLUMNS)


def merit_order_cost(offers: pd.DataFrame, requirement_kw: float) -> float:
    """Cheapest capacity per product and period, in numpy (currency for 1-hour periods)."""
    total = 0.0
    for _, group in offers.groupby(["product", "period"]):
        order = np.argsort(group["capacity_price"].to_numpy())
        q = group["quantity_kw"].to_numpy()[order]
        p = group["capacity_price"].to_numpy()[order]
        taken = np.clip(requirement_kw - np.concatenate([[0.0], np.cumsum(q)[:-1]]), 0.0, q)
        total += float(taken @ p) / 1000.0
    return total


def _row(case: str, started: float, solution, **extra) -> dict:
    return {
        "case": case,
        **extra,
        "status": solution.status,
        "objective": solution.objective,
        "build_s": solution.build_seconds,
        "translate_s": solution.translate_seconds,
        "solve_s": solution.solve_seconds,
        "total_s": time.perf_counter() - started,
        "variables": solution.n_variables,
        "constraints": solution.n_constraints,
    }


def run(quick: bool = True) -> list[dict]:
    rows = []
    products = fx.load_products()
    for sellers, periods in [(200, 24)] if quick else [(200, 24), (2000, 24), (2000, 96)]:
        offers = random_offers(sellers, periods)
        need = 0.25 * sellers * 100.0  # a quarter of the mean offered capacity
        req = fx.tso_requirements(products, list(range(periods)), dict.fromkeys(PRODUCTS, need))
        started = time.perf_counter()
        m = fx.build(offers, products=products, requirements=req)
        solution = solve(m)
        fx.results(m, solution)
        t0 = time.perf_counter()
        reference = merit_order_cost(offers, need)
        merit_s = time.perf_counter() - t0
        if not np.isclose(solution.objective, reference, rtol=1e-7):
            raise AssertionError(f"pool {solution.objective} != merit order {reference}")
        rows.append(_row("tso_only", started, solution, offers=len(offers), merit_order_s=merit_s))
    feeder = load(FEEDER)
    p, q = net_injections(feeder)
    load_buses = sorted({feeder.merged[b] for b in feeder.net.load["bus"]} - {feeder.root})
    for sellers, periods in [(50, 4)] if quick else [(50, 4), (200, 24)]:
        offers = random_offers(sellers, periods, buses=np.array(load_buses), seed=1)
        req = fx.tso_requirements(
            products, list(range(periods)), dict.fromkeys(PRODUCTS, 0.25 * sellers * 100.0)
        )
        base_p = pd.concat([p] * periods, axis=1, keys=range(periods))
        base_q = pd.concat([q] * periods, axis=1, keys=range(periods))
        started = time.perf_counter()
        m = fx.build(
            offers,
            products=products,
            requirements=req,
            network=feeder,
            baseline_p_kw=base_p,
            baseline_q_kvar=base_q,
        )
        solution = solve(m)
        fx.results(m, solution, ac=False)
        rows.append(
            _row(
                "pool_lindistflow",
                started,
                solution,
                offers=len(offers),
                buses=len(feeder.buses),
                periods=periods,
            )
        )
    return rows
