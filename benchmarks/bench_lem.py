"""The LEM clearing built three ways in one run: gridmarkets (Pyomo), raw highspy, linopy.

Random block bids (half sellers, half buyers, one block per participant and period)
with an upstream grid, on a copper plate. ``ratio_*`` columns divide each total by
the raw-highspy total measured in the same run (numpy/scipy build + HiGHS solve), the
reference lower bound. All three must reach the same welfare (checked).
"""

from __future__ import annotations

import time
import tracemalloc

import highspy
import numpy as np
import pandas as pd
import scipy.sparse as sp

from gridmarkets.models import lem
from gridmarkets.solvers import solve

IMPORT_PRICE, EXPORT_PRICE, CAPACITY_KW = 200.0, 20.0, 500.0


def random_bids(participants: int, periods: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    who = np.repeat(np.arange(participants), periods)
    return pd.DataFrame(
        {
            "participant": who.astype(str),
            "side": np.where(who % 2 == 0, "sell", "buy"),
            "quantity_kw": rng.uniform(0, 10, who.size),
            "price": rng.uniform(0, 300, who.size),
            "period": np.tile(np.arange(periods), participants),
        }
    )


def with_gridmarkets(bids: pd.DataFrame) -> dict:
    started = time.perf_counter()
    m = lem.build(bids, upstream=lem.Upstream(IMPORT_PRICE, EXPORT_PRICE, CAPACITY_KW))
    solution = solve(m)
    return {
        "welfare": solution.objective,
        "build_s": solution.build_seconds,
        "translate_s": solution.translate_seconds,
        "solve_s": solution.solve_seconds,
        "total_s": time.perf_counter() - started,
        "variables": solution.n_variables,
        "constraints": solution.n_constraints,
        "nonzeros": solution.n_nonzeros,
    }


def with_highspy(bids: pd.DataFrame) -> dict:
    started = time.perf_counter()
    n, periods = len(bids), int(bids["period"].max()) + 1
    sign = np.where(bids["side"].to_numpy() == "sell", 1.0, -1.0)
    value = -sign * bids["price"].to_numpy() / 1000.0
    rows = np.concatenate([bids["period"].to_numpy(), np.arange(periods), np.arange(periods)])
    cols = np.arange(n + 2 * periods)
    coef = np.concatenate([sign, np.ones(periods), -np.ones(periods)])
    a = sp.csc_array((coef, (rows, cols)), shape=(periods, n + 2 * periods))
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n + 2 * periods, periods
    lp.col_cost_ = np.concatenate(
        [value, np.full(periods, -IMPORT_PRICE / 1000), np.full(periods, EXPORT_PRICE / 1000)]
    )
    lp.col_lower_ = np.zeros(n + 2 * periods)
    lp.col_upper_ = np.concatenate(
        [bids["quantity_kw"].to_numpy(), np.full(2 * periods, CAPACITY_KW)]
    )
    lp.row_lower_ = lp.row_upper_ = np.zeros(periods)
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    built = time.perf_counter()
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.passModel(lp)
    highs.run()
    done = time.perf_counter()
    return {
        "welfare": highs.getObjectiveValue(),
        "build_s": built - started,
        "solve_s": done - built,
        "total_s": done - started,
    }


def with_linopy(bids: pd.DataFrame) -> dict:
    import linopy
    import xarray as xr

    started = time.perf_counter()
    m = linopy.Model()
    index = pd.RangeIndex(len(bids), name="bid")
    periods = pd.RangeIndex(int(bids["period"].max()) + 1, name="period")
    accepted = m.add_variables(
        lower=0, upper=xr.DataArray(bids["quantity_kw"].to_numpy(), coords=[index]), name="accepted"
    )
    imp = m.add_variables(lower=0, upper=CAPACITY_KW, coords=[periods], name="import")
    exp = m.add_variables(lower=0, upper=CAPACITY_KW, coords=[periods], name="export")
    sign = xr.DataArray(np.where(bids["side"] == "sell", 1.0, -1.0), coords=[index])
    period = xr.DataArray(bids["period"].to_numpy(), coords=[index], name="period")
    m.add_constraints((sign * accepted).groupby(period).sum() + imp - exp == 0, name="balance")
    price = xr.DataArray(bids["price"].to_numpy() / 1000.0, coords=[index])
    m.add_objective(
        (-sign * price * accepted).sum()
        - IMPORT_PRICE / 1000 * imp.sum()
        + EXPORT_PRICE / 1000 * exp.sum(),
        sense="max",
    )
    m.solve(solver_name="highs", output_flag=False)
    return {"welfare": m.objective.value, "total_s": time.perf_counter() - started}


def measure(fn, bids) -> tuple[dict, float]:
    """Times from a plain run; peak Python memory from a second, traced run
    (tracemalloc slows allocation, so it never touches the timed run)."""
    out = fn(bids)
    tracemalloc.start()
    fn(bids)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, peak


def run(quick: bool = True) -> list[dict]:
    sizes = [(10, 96), (100, 96)] if quick else [(10, 96), (100, 96), (300, 96), (1000, 96)]
    rows = []
    for participants, periods in sizes:
        bids = random_bids(participants, periods)
        ours, ours_mb = measure(with_gridmarkets, bids)
        raw, _ = measure(with_highspy, bids)
        lin, lin_mb = measure(with_linopy, bids)
        for other in (raw, lin):
            if not np.isclose(other["welfare"], ours["welfare"], rtol=1e-7, atol=1e-6):
                raise AssertionError(f"welfare differs: {ours['welfare']} vs {other['welfare']}")
        rows.append(
            {
                "participants": participants,
                "periods": periods,
                **{k: v for k, v in ours.items() if k != "welfare"},
                "peak_mb": ours_mb,
                "highspy_total_s": raw["total_s"],
                "linopy_total_s": lin["total_s"],
                "linopy_peak_mb": lin_mb,
                "ratio_gridmarkets": ours["total_s"] / raw["total_s"],
                "ratio_linopy": lin["total_s"] / raw["total_s"],
            }
        )
    return rows


if __name__ == "__main__":
    print(pd.DataFrame(run(quick=True)).to_string())
