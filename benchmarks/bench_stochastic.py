"""Two-stage community: the extensive form's size and time against scenarios x homes x periods.

The community is :func:`gridmarkets.models.community.sample_community` (relaxed
batteries: an LP) committing its exchange a day ahead
(:func:`gridmarkets.models.community.two_stage`, imbalance prices 1.5x the tariff
short, 0.2x surplus); scenarios are forecast errors on every member's load (15 %) and
PV (30 %), AR(1) rho 0.7 (:meth:`gridmarkets.scenarios.Scenarios.from_forecast`).

Columns: ``ef_build_s`` builds the extensive form (one block per scenario: the
deterministic builder run S times and moved into blocks), ``ef_solve_s`` compiles and
solves it with HiGHS; ``per_scenario_s`` is their sum over S. ``ws_s`` solves every
scenario alone (the wait-and-see KPI: what a scenario-parallel evaluation does, in this
process), ``ws_dask_s`` the same through a local ``dask.distributed`` cluster of 2
worker processes (full mode only). Quick mode: 5 homes, 24 hourly periods, 2 and 8
scenarios. Full mode: 5 homes x 24 periods, 5 x 96 and 20 x 96, with 4, 16 and 64 scenarios.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from gridmarkets.models import community, stochastic
from gridmarkets.models.assets import profile_values
from gridmarkets.models.prosumer import ImbalanceSpec
from gridmarkets.scenarios import Scenarios
from gridmarkets.solvers import solve


def problem(homes: int, periods: int) -> tuple[stochastic.TwoStage, pd.DataFrame]:
    """The two-stage community and its forecast (period x "<member>.load_kw"/".pv_kw")."""
    hours = 24.0 / periods
    members, shared, prices = community.sample_community(homes, periods=periods, period_hours=hours)
    buy = profile_values(prices.import_price, periods, hours)
    imbalance = ImbalanceSpec(up_per_mwh=list(1.5 * buy), down_per_mwh=12.0)
    forecast = {}
    for mid, home in members.items():
        forecast[f"{mid}.load_kw"] = profile_values(home.load_kw, periods, hours)
        if home.pv is not None:
            forecast[f"{mid}.pv_kw"] = profile_values(home.pv.profile_kw, periods, hours)
    two = community.two_stage(
        members, shared, prices, imbalance, periods=periods, period_hours=hours
    )
    return two, pd.DataFrame(forecast)


def run_one(homes: int, periods: int, n: int, dask_client=None) -> dict:
    two, forecast = problem(homes, periods)
    fraction = {c: 0.3 if c.endswith("pv_kw") else 0.15 for c in forecast}
    scenarios = Scenarios.from_forecast(
        forecast, n, seed=0, std_fraction=fraction, rho=0.7, lower=0.0
    )
    started = time.perf_counter()
    model = stochastic.extensive_form(two, scenarios)
    built = time.perf_counter()
    solution = solve(model)
    solved = time.perf_counter()
    stochastic.evaluate(two, scenarios)
    row = {
        "homes": homes,
        "periods": periods,
        "scenarios": n,
        "variables": solution.n_variables,
        "constraints": solution.n_constraints,
        "ef_build_s": built - started,
        "ef_solve_s": solved - built,
        "per_scenario_s": (solved - started) / n,
        "ws_s": time.perf_counter() - solved,
    }
    if dask_client is not None:
        started = time.perf_counter()
        stochastic.evaluate(two, scenarios, client=dask_client)
        row["ws_dask_s"] = time.perf_counter() - started
    return row


def run(quick: bool = True) -> list[dict]:
    """The benchmark rows (quick: 5 homes, 24 periods, 2 and 8 scenarios)."""
    if quick:
        return [run_one(5, 24, n) for n in (2, 8)]
    from distributed import Client, LocalCluster

    rows = []
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    with cluster, Client(cluster) as client:
        for homes, periods in ((5, 24), (5, 96), (20, 96)):
            for n in (4, 16, 64):
                rows.append(run_one(homes, periods, n, client))
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Extensive-form seconds (build + solve) against scenarios, per homes x periods."""
    from benchmarks.plotting import scaling_plot

    table = pd.DataFrame(rows)
    series = {}
    for (homes, periods), part in table.groupby(["homes", "periods"]):
        total = part["ef_build_s"] + part["ef_solve_s"]
        series[f"extensive form, {homes} homes x {periods} periods"] = (part["scenarios"], total)
        series[f"wait-and-see in process, {homes} x {periods}"] = (part["scenarios"], part["ws_s"])
    scaling_plot(series, "scenarios", "seconds", path)


if __name__ == "__main__":
    print(pd.DataFrame(run(quick=True)).to_string(index=False))
