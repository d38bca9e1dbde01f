"""The LEM clearing built three ways in one run: gridmarkets (Pyomo), raw highspy, linopy.

Random block bids (half sellers, half buyers, one block per participant and period)
with an upstream grid at the root, on a copper plate (``network`` = copperplate) and
with LinDistFlow on the SimBench MV feeder ``1-MV-urban--0-sw`` (139 buses; the
participants sit on its load buses; ``network`` = lindistflow: nodal balances, voltage
drops, voltage limits and the 12-sided thermal polygons). The raw-highspy LP is the
same LP assembled from numpy/scipy arrays (the reference lower bound for building),
with the same ranged rows (voltage limits; one row per pair of opposite polygon
sides); linopy, which has no ranged rows, writes each side as its own row, the way a
linopy user does, and fixes the root's squared voltage by bounds where the others
leave it out.
``*_s`` columns are gridmarkets' build, translate (Pyomo -> HiGHS arrays) and HiGHS
seconds of the whole LP (``decompose="none"``); ``ratio_gridmarkets`` and
``ratio_linopy`` divide each total wall time by the raw-highspy total measured in the
same run, and ``vs_linopy`` divides gridmarkets' total by linopy's. Peak memory
(Python allocations, MiB) comes from a second, traced run. All three must reach the
same welfare (checked).

``clear_s`` is ``lem.clear()`` as a user calls it, everything from the bids to the
Result (tables, prices, certificates), with its default ``decompose="auto"``: the
market's periods solved apart on one thread per core (``clear_build_s``,
``clear_translate_s``, ``clear_highs_s`` -- cutting the parts, HiGHS on them and
loading the point -- and ``clear_results_s``); ``clear_serial_s`` the same with one
worker, which measures what the threads gain. ``ratio_clear`` divides ``clear_s`` by
the raw-highspy total of the whole LP, ``clear_vs_linopy`` by linopy's. Its welfare
must be raw highspy's to 1e-9 relative (checked).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import highspy
import numpy as np
import pandas as pd
import scipy.sparse as sp

from gridmarkets.models import lem
from gridmarkets.networks import Feeder, load
from gridmarkets.networks.lindistflow import polygon_directions
from gridmarkets.solvers import solve
from gridmarkets.solvers.highs import solve_apart

IMPORT_PRICE, EXPORT_PRICE, CAPACITY_KW = 200.0, 20.0, 5000.0
FEEDER = "1-MV-urban--0-sw"
SIDES = 12
INF = highspy.kHighsInf


def random_bids(participants: int, periods: int, seed: int = 0) -> pd.DataFrame:
    """One block per participant and period; even participants sell, odd ones buy."""
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


def feeder_bids(feeder: Feeder, participants: int, periods: int, seed: int = 0) -> pd.DataFrame:
    """:func:`random_bids` with each participant at a random load bus of ``feeder``."""
    load_buses = sorted({feeder.merged[b] for b in feeder.net.load["bus"]})
    where = np.random.default_rng(seed + 1).choice(load_buses, participants)
    bids = random_bids(participants, periods, seed)
    return bids.assign(bus=where[bids["participant"].astype(int)])


def with_gridmarkets(bids: pd.DataFrame, feeder: Feeder | None) -> dict:
    started = time.perf_counter()
    upstream = lem.Upstream(IMPORT_PRICE, EXPORT_PRICE, CAPACITY_KW)
    m = lem.build(bids, upstream=upstream, network=feeder, decompose="none")
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


def with_clear(bids: pd.DataFrame, feeder: Feeder | None, workers: int | None = None) -> dict:
    """``lem.clear()`` from the bids to the Result, by its steps (``workers`` threads
    for the periods; None: its default, one per core)."""
    started = time.perf_counter()
    upstream = lem.Upstream(IMPORT_PRICE, EXPORT_PRICE, CAPACITY_KW)
    m = lem.build(bids, upstream=upstream, network=feeder)
    if workers is not None:
        solve_apart(m, workers)
    solution = solve(m)
    solved = time.perf_counter()
    result = lem.results(m, solution)
    done = time.perf_counter()
    return {
        "welfare": result.kpis["social_welfare"],
        "parts": solution.parts,
        "build_s": solution.build_seconds,
        "translate_s": solution.translate_seconds,
        "highs_s": solution.solve_seconds,
        "results_s": done - solved,
        "total_s": done - started,
    }


class ArrayLP:
    """An LP assembled block by block: column ranges, row ranges and COO entries."""

    def __init__(self) -> None:
        self.cost, self.lower, self.upper = [], [], []
        self.row_lower, self.row_upper = [], []
        self.entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_cols = self.n_rows = 0

    def columns(self, n: int, cost=0.0, lower=-INF, upper=INF) -> np.ndarray:
        """Add ``n`` columns; returns their indices."""
        for target, value in ((self.cost, cost), (self.lower, lower), (self.upper, upper)):
            target.append(np.broadcast_to(np.asarray(value, dtype=float), (n,)))
        self.n_cols += n
        return np.arange(self.n_cols - n, self.n_cols)

    def rows(self, n: int, lower, upper) -> np.ndarray:
        """Add ``n`` rows with bounds; returns their indices."""
        self.row_lower.append(np.broadcast_to(np.asarray(lower, dtype=float), (n,)))
        self.row_upper.append(np.broadcast_to(np.asarray(upper, dtype=float), (n,)))
        self.n_rows += n
        return np.arange(self.n_rows - n, self.n_rows)

    def add(self, rows, cols, values) -> None:
        """Coefficients at (rows, cols), broadcast together."""
        rows, cols, values = np.broadcast_arrays(rows, cols, np.asarray(values, dtype=float))
        self.entries.append((rows.ravel(), cols.ravel(), values.ravel()))

    def highs_lp(self) -> highspy.HighsLp:
        rows, cols, values = (np.concatenate(part) for part in zip(*self.entries, strict=True))
        a = sp.csc_array((values, (rows, cols)), shape=(self.n_rows, self.n_cols))
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n_cols, self.n_rows
        lp.col_cost_ = np.concatenate(self.cost)
        lp.col_lower_, lp.col_upper_ = np.concatenate(self.lower), np.concatenate(self.upper)
        lp.row_lower_ = np.concatenate(self.row_lower)
        lp.row_upper_ = np.concatenate(self.row_upper)
        lp.sense_ = highspy.ObjSense.kMaximize
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_ = a.indptr, a.indices
        lp.a_matrix_.value_ = a.data
        return lp


def _market_columns(lp: ArrayLP, bids: pd.DataFrame, periods: int):
    """Acceptance, import and export columns with their welfare coefficients."""
    sign = np.where(bids["side"].to_numpy() == "sell", 1.0, -1.0)
    accepted = lp.columns(
        len(bids), -sign * bids["price"].to_numpy() / 1000, 0.0, bids["quantity_kw"].to_numpy()
    )
    imp = lp.columns(periods, -IMPORT_PRICE / 1000, 0.0, CAPACITY_KW)
    exp = lp.columns(periods, EXPORT_PRICE / 1000, 0.0, CAPACITY_KW)
    return sign, accepted, imp, exp


def _copperplate_arrays(lp: ArrayLP, bids: pd.DataFrame, periods: int) -> None:
    sign, accepted, imp, exp = _market_columns(lp, bids, periods)
    balance = lp.rows(periods, 0.0, 0.0)
    lp.add(balance[bids["period"].to_numpy()], accepted, sign)
    lp.add(balance, imp, 1.0)
    lp.add(balance, exp, -1.0)


def _lindistflow_arrays(lp: ArrayLP, bids: pd.DataFrame, periods: int, feeder: Feeder) -> None:
    """LinDistFlow without losses, as networks/lindistflow.py writes it (flat start)."""
    sign, accepted, imp, exp = _market_columns(lp, bids, periods)
    s, v_root = feeder.s_base_kva, feeder.root_vm_pu**2
    buses, br = feeder.buses, feeder.branches
    n_bus, n_br, root = len(buses), len(br), buses.index.get_loc(feeder.root)
    t = np.arange(periods)
    p_flow = lp.columns(n_br * periods).reshape(n_br, periods)
    q_flow = lp.columns(n_br * periods).reshape(n_br, periods)
    q_up = lp.columns(periods)
    below = np.flatnonzero(np.arange(n_bus) != root)
    v = np.full((n_bus, periods), -1)
    v[below] = lp.columns(len(below) * periods).reshape(len(below), periods)
    shunt_p = np.repeat(buses["g_pu"].to_numpy() * v_root, periods)
    shunt_q = np.repeat(-buses["b_pu"].to_numpy() * v_root, periods)
    active = lp.rows(n_bus * periods, shunt_p, shunt_p).reshape(n_bus, periods)
    reactive = lp.rows(n_bus * periods, shunt_q, shunt_q).reshape(n_bus, periods)
    at = buses.index.get_indexer(bids["bus"])
    lp.add(active[at, bids["period"].to_numpy()], accepted, sign / s)
    lp.add(active[root], imp, 1 / s)
    lp.add(active[root], exp, -1 / s)
    lp.add(reactive[root], q_up, 1 / s)
    frm, to = feeder.from_pos[:, None], feeder.to_pos[:, None]
    for balance, flow in ((active, p_flow), (reactive, q_flow)):
        lp.add(balance[to, t], flow, 1.0)
        lp.add(balance[frm, t], flow, -1.0)
    r, x = br["r_pu"].to_numpy()[:, None], br["x_pu"].to_numpy()[:, None]
    n2 = br["ratio"].to_numpy()[:, None] ** 2
    from_root = np.broadcast_to(frm == root, (n_br, periods))
    rhs = np.where(from_root, v_root / n2, 0.0).ravel()
    drop = lp.rows(n_br * periods, rhs, rhs).reshape(n_br, periods)
    lp.add(drop, v[to, t], 1.0)
    lp.add(
        drop[~from_root], v[frm, t][~from_root], np.broadcast_to(-1 / n2, drop.shape)[~from_root]
    )
    lp.add(drop, p_flow, 2 * r)
    lp.add(drop, q_flow, 2 * x)
    vmin, vmax = buses["vmin_pu"].to_numpy() ** 2, buses["vmax_pu"].to_numpy() ** 2
    limits = lp.rows(
        len(below) * periods, np.repeat(vmin[below], periods), np.repeat(vmax[below], periods)
    )
    lp.add(limits, v[below].ravel(), 1.0)
    _thermal_arrays(lp, feeder, p_flow, q_flow)


def _thermal_arrays(lp: ArrayLP, feeder: Feeder, p_flow: np.ndarray, q_flow: np.ndarray) -> None:
    """One ranged row per pair of opposite polygon sides, as LinDistFlow writes them."""
    rating = feeder.branches["rating_kva"].to_numpy()
    rated = np.flatnonzero(np.isfinite(rating) & (rating > 0))
    periods = p_flow.shape[1]
    directions = polygon_directions(SIDES)
    cap = rating[rated] / feeder.s_base_kva * np.cos(np.pi / SIDES)
    upper = np.broadcast_to(cap[:, None, None], (len(rated), len(directions), periods)).ravel()
    rows = lp.rows(upper.size, -upper, upper).reshape(len(rated), len(directions), periods)
    lp.add(rows, p_flow[rated][:, None, :], directions[None, :, 0, None])
    nonzero = directions[:, 1] != 0
    lp.add(rows[:, nonzero], q_flow[rated][:, None, :], directions[None, nonzero, 1, None])


def with_highspy(bids: pd.DataFrame, feeder: Feeder | None) -> dict:
    started = time.perf_counter()
    periods = int(bids["period"].max()) + 1
    lp = ArrayLP()
    if feeder is None:
        _copperplate_arrays(lp, bids, periods)
    else:
        _lindistflow_arrays(lp, bids, periods, feeder)
    model = lp.highs_lp()
    built = time.perf_counter()
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.passModel(model)
    highs.run()
    done = time.perf_counter()
    return {
        "welfare": highs.getObjectiveValue(),
        "build_s": built - started,
        "solve_s": done - built,
        "total_s": done - started,
        "rows": model.num_row_,
    }


def with_linopy(bids: pd.DataFrame, feeder: Feeder | None) -> dict:
    """The LP the way a linopy user writes it: variables over (participant, period)."""
    import linopy

    started = time.perf_counter()
    m = linopy.Model()
    table = bids.assign(participant=bids["participant"].astype(int))
    frame = table.set_index(["participant", "period"]).sort_index()
    sign = _participant_array(frame, np.where(frame["side"] == "sell", 1.0, -1.0))
    accepted = m.add_variables(
        lower=0, upper=_participant_array(frame, frame["quantity_kw"]), name="accepted"
    )
    periods = accepted.indexes["period"]
    imp = m.add_variables(lower=0, upper=CAPACITY_KW, coords=[periods], name="import")
    exp = m.add_variables(lower=0, upper=CAPACITY_KW, coords=[periods], name="export")
    price = _participant_array(frame, frame["price"]) / 1000.0
    m.add_objective(
        (-sign * price * accepted).sum()
        - IMPORT_PRICE / 1000 * imp.sum()
        + EXPORT_PRICE / 1000 * exp.sum(),
        sense="max",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # linopy's notes on outer-joined coordinates
        if feeder is None:
            m.add_constraints((sign * accepted).sum("participant") + imp - exp == 0, name="balance")
        else:
            bus = frame.groupby(level="participant")["bus"].first()
            _linopy_lindistflow(m, feeder, sign * accepted, bus, imp - exp)
    m.solve(solver_name="highs", progress=False, output_flag=False)
    return {"welfare": m.objective.value, "total_s": time.perf_counter() - started}


def _participant_array(frame: pd.DataFrame, values):
    import xarray as xr

    series = pd.Series(np.asarray(values, dtype=float), index=frame.index)
    return xr.DataArray.from_series(series)


def _linopy_lindistflow(m, feeder: Feeder, injection, participant_bus, exchange) -> None:
    import xarray as xr

    s, v_root = feeder.s_base_kva, feeder.root_vm_pu**2
    buses, br = feeder.buses, feeder.branches
    bus_index = pd.Index(buses.index, name="bus")
    branch_index = pd.Index(br.index, name="branch")
    periods = injection.indexes["period"]
    p = m.add_variables(coords=[branch_index, periods], name="p_flow")
    q = m.add_variables(coords=[branch_index, periods], name="q_flow")
    q_up = m.add_variables(coords=[periods], name="q_upstream")
    fixed = xr.DataArray(np.where(bus_index == feeder.root, v_root, -np.inf), coords=[bus_index])
    upper = fixed.where(bus_index == feeder.root, np.inf)
    v = m.add_variables(lower=fixed, upper=upper, coords=[bus_index, periods], name="v")
    frm = xr.DataArray(br["from_bus"].to_numpy(), coords=[branch_index], name="bus")
    to = xr.DataArray(br["to_bus"].to_numpy(), coords=[branch_index], name="bus")
    at = xr.DataArray.from_series(participant_bus.rename("bus"))
    root = xr.DataArray([1.0 / s], coords=[pd.Index([feeder.root], name="bus")])
    g, b = (
        xr.DataArray(buses[c].to_numpy() * v_root, coords=[bus_index]) for c in ("g_pu", "b_pu")
    )
    m.add_constraints(
        injection.groupby(at).sum() / s
        + root * exchange
        + p.groupby(to).sum()
        - p.groupby(frm).sum()
        == g.broadcast_like(v.lower),
        name="active_power_balance",
    )
    m.add_constraints(
        root * q_up + q.groupby(to).sum() - q.groupby(frm).sum() == -b.broadcast_like(v.lower),
        name="reactive_power_balance",
    )
    r, x, n2 = (
        xr.DataArray(a, coords=[branch_index]) for a in (br["r_pu"], br["x_pu"], br["ratio"] ** 2)
    )
    v_to, v_from = v.sel(bus=to), v.sel(bus=frm)
    m.add_constraints(v_to - v_from / n2 + 2 * (r * p + x * q) == 0, name="voltage_drop")
    below = bus_index[bus_index != feeder.root]
    vmin = xr.DataArray(buses.loc[below, "vmin_pu"] ** 2, coords=[below])
    vmax = xr.DataArray(buses.loc[below, "vmax_pu"] ** 2, coords=[below])
    m.add_constraints(v.sel(bus=below) >= vmin, name="voltage_lower")
    m.add_constraints(v.sel(bus=below) <= vmax, name="voltage_upper")
    rating = br["rating_kva"]
    rated = branch_index[np.isfinite(rating) & (rating > 0)]
    side = pd.RangeIndex(SIDES, name="side")
    angles = 2 * np.pi * np.arange(SIDES) / SIDES
    cos, sin = (xr.DataArray(f(angles), coords=[side]) for f in (np.cos, np.sin))
    cap = xr.DataArray(rating[rated] / s * np.cos(np.pi / SIDES), coords=[rated])
    m.add_constraints(
        cos * p.sel(branch=rated) + sin * q.sel(branch=rated) <= cap, name="thermal_limit"
    )


def measure(fn: Callable, *args) -> tuple[dict, float]:
    """Times from a plain run; peak Python memory from a second, traced run
    (tracemalloc slows allocation, so it never touches the timed run). The garbage of
    earlier runs is collected first, so no run pays for freeing another's model."""
    gc.collect()
    out = fn(*args)
    gc.collect()
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, peak


def compare(bids: pd.DataFrame, feeder: Feeder | None) -> dict:
    """One row: the three builds of one LP, same welfare, times and ratios."""
    ours, ours_mb = measure(with_gridmarkets, bids, feeder)
    raw, raw_mb = measure(with_highspy, bids, feeder)
    lin, lin_mb = measure(with_linopy, bids, feeder)
    clear, clear_mb = measure(with_clear, bids, feeder)
    gc.collect()
    serial = with_clear(bids, feeder, workers=1)
    for name, other in (("highspy", raw), ("linopy", lin)):
        if not np.isclose(other["welfare"], ours["welfare"], rtol=1e-6, atol=1e-6):
            raise AssertionError(f"{name} welfare {other['welfare']} != {ours['welfare']}")
    if not np.isclose(clear["welfare"], raw["welfare"], rtol=1e-9, atol=0):
        raise AssertionError(f"clear() welfare {clear['welfare']} != highspy {raw['welfare']}")
    return {
        "network": "copperplate" if feeder is None else "lindistflow",
        "participants": bids["participant"].nunique(),
        "periods": bids["period"].nunique(),
        **{k: v for k, v in ours.items() if k != "welfare"},
        "peak_mib": ours_mb,
        "highspy_build_s": raw["build_s"],
        "highspy_solve_s": raw["solve_s"],
        "highspy_total_s": raw["total_s"],
        "highspy_peak_mib": raw_mb,
        "linopy_total_s": lin["total_s"],
        "linopy_peak_mib": lin_mb,
        "ratio_gridmarkets": ours["total_s"] / raw["total_s"],
        "ratio_linopy": lin["total_s"] / raw["total_s"],
        "vs_linopy": ours["total_s"] / lin["total_s"],
        "clear_parts": clear["parts"],
        **{f"clear_{k}": clear[k] for k in ("build_s", "translate_s", "highs_s", "results_s")},
        "clear_s": clear["total_s"],
        "clear_serial_s": serial["total_s"],
        "clear_peak_mib": clear_mb,
        "ratio_clear": clear["total_s"] / raw["total_s"],
        "clear_vs_linopy": clear["total_s"] / lin["total_s"],
    }


def run(quick: bool = True) -> list[dict]:
    """Quick: a smoke test (the feeder over 24 periods); full: up to 1,000 x 96."""
    copper = [10, 100] if quick else [10, 100, 1000]
    grid = [(10, 24), (100, 24)] if quick else [(10, 96), (100, 96), (300, 96), (1000, 96)]
    rows = [compare(random_bids(n, 96), None) for n in copper]
    feeder = load(FEEDER)
    rows += [compare(feeder_bids(feeder, n, periods), feeder) for n, periods in grid]
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Total seconds against bids (participants x periods), per builder and network."""
    from benchmarks.plotting import scaling_plot

    table = pd.DataFrame(rows)
    series = {}
    for network, part in table.groupby("network"):
        x = part["participants"] * part["periods"]
        series[f"gridmarkets, {network}"] = (x, part["total_s"])
        series[f"gridmarkets clear(), periods apart, {network}"] = (x, part["clear_s"])
        series[f"raw highspy, {network}"] = (x, part["highspy_total_s"])
        series[f"linopy, {network}"] = (x, part["linopy_total_s"])
    scaling_plot(series, "bids (participants x periods)", "total seconds", path)


if __name__ == "__main__":
    print(pd.DataFrame(run(quick=True)).to_string())
