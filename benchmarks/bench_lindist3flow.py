"""Building LinDist3Flow (Pyomo) for the 907-bus IEEE European LV feeder and growing
synthetic feeders: time against buses x phases x periods.

Each row builds the network block alone, with the feeder's own per-phase loads (or a
4 kW load on one phase of each bus of a synthetic feeder) as a (buses x 3 x periods)
array of constants. Two series, each spanning 8x in size: the European feeder over 12
to 96 periods, and synthetic feeders of 250 to 2000 buses over 96 periods. Build time
should grow linearly in buses x phases x periods: ``exponent`` is the log-log slope of
build time against size over the row's series (1.0 is linear), ``us_per_bus_phase_period``
the wall time per unit and ``cpu_us_per_bus_phase_period`` the process's CPU time per
unit (the less noisy figure on a shared machine; ``cpu_exponent`` its slope).
``lindistflow_s`` is the single-phase LinDistFlow build of the same feeder and periods
(its injections keyed (bus, period)), for scale.

What it shows (full mode, once, on a quiet machine: load average 0.00 before the run,
0.39 after, 2026-12-02 20:05): the 907-bus European feeder over 96 periods builds in
2.0 s (was 3.4 s before the families named variables by integer position). Over
periods (12 to 96, 8x) the build is about linear: exponent 1.10, 6.2 to 7.7 us per bus,
phase and period (+23 %). Over buses (synthetic 250 to 2000 at 96 periods, 8x) it is
**not yet linear**: exponent 1.32, 4.9 to 9.0 us (1.85x, as before the change: 9.4 to
17.4). Profiled (cProfile and per-step CPU times at 250 and 2000 buses), the calls are
linear; what grows is the per-row Pyomo data (one object and one dict entry keyed by a
tuple per row, in ArrayConstraint.construct, and Pyomo's own Var construction): a
micro-benchmark of only that (dict of slotted objects) grows 0.44 to 0.58 us per row
over 8x, cache misses of hash tables that outgrow the caches.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyomo.environ as pyo


def synthetic_feeder(buses: int):
    """bench_lindistflow's random radial feeder with zero-sequence data (r0 = 3 r,
    x0 = 3 x) and a 4 kW load on phase a, b or c of each bus in turn."""
    from benchmarks.bench_lindistflow import synthetic_net
    from gridmarkets.networks.three_phase import three_phase_feeder

    net = synthetic_net(buses)
    net.line["r0_ohm_per_km"] = 3 * net.line["r_ohm_per_km"]
    net.line["x0_ohm_per_km"] = 3 * net.line["x_ohm_per_km"]
    net.load["in_service"] = False
    return three_phase_feeder(net, name=f"synthetic_{buses}")


def injections(feeder, periods: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-phase constants (buses x 3 x periods, kW and kvar): the net's own, or one
    phase each."""
    from gridmarkets.networks.three_phase import PHASES, phase_injections

    p, q = (
        table.reindex(feeder.buses.index)[list(PHASES)].to_numpy()
        for table in phase_injections(feeder)
    )
    if not p.any():
        below = np.arange(1, len(feeder.buses))
        p[below, (below - 1) % 3] = -4.0
    return tuple(np.repeat(table[:, :, None], periods, axis=2) for table in (p, q))


def build(formulation, feeder, periods: int, p_kw, q_kvar) -> tuple[float, float]:
    """Wall and CPU seconds to add the formulation to an empty model (garbage of earlier
    builds collected first)."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    model = pyo.ConcreteModel()
    model.net = pyo.Block()
    formulation.add(model.net, feeder, range(periods), p_kw, q_kvar)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_build(feeder, periods: int, series: str) -> dict:
    """LinDist3Flow's build seconds, with LinDistFlow's for the same feeder."""
    from gridmarkets.networks import LinDistFlow
    from gridmarkets.networks.three_phase import LinDist3Flow

    p_kw, q_kvar = injections(feeder, periods)
    wall, cpu = build(LinDist3Flow(), feeder, periods, p_kw, q_kvar)
    buses = feeder.buses.index
    total = p_kw.sum(axis=1)
    single = {(b, t): total[k, t] for k, b in enumerate(buses) for t in range(periods)}
    size = len(buses) * 3 * periods
    return {
        "series": series,
        "feeder": feeder.name,
        "buses": len(buses),
        "periods": periods,
        "bus_phase_periods": size,
        "build_s": wall,
        "cpu_s": cpu,
        "us_per_bus_phase_period": 1e6 * wall / size,
        "cpu_us_per_bus_phase_period": 1e6 * cpu / size,
        "lindistflow_s": build(LinDistFlow(), feeder, periods, single, {})[0],
    }


def with_exponents(rows: list[dict]) -> list[dict]:
    """Each row with the log-log slopes of build time (wall: ``exponent``, CPU:
    ``cpu_exponent``) against size over its series (least squares through its rows)."""
    table = pd.DataFrame(rows)
    for _, part in table.groupby("series"):
        size = np.log(part["bus_phase_periods"])
        for seconds, name in (("build_s", "exponent"), ("cpu_s", "cpu_exponent")):
            table.loc[part.index, name] = np.polyfit(size, np.log(part[seconds]), 1)[0]
    return table.to_dict(orient="records")


def run(quick: bool = True) -> list[dict]:
    """The European LV feeder over growing periods, then growing synthetic feeders."""
    from gridmarkets.networks.three_phase import three_phase_feeder

    european = three_phase_feeder("ieee_european_lv_asymmetric", vmin_pu=0.9, vmax_pu=1.1)
    periods = [3, 6, 12, 24] if quick else [12, 24, 48, 96]
    rows = [time_build(european, n, "periods") for n in periods]
    sizes = [63, 125, 250, 500] if quick else [250, 500, 1000, 2000]
    rows += [time_build(synthetic_feeder(n), periods[-1], "buses") for n in sizes]
    return with_exponents(rows)


def plot(rows: list[dict], path: Path) -> None:
    """Build seconds against buses x phases x periods, one line per series."""
    from benchmarks.plotting import scaling_plot

    table = pd.DataFrame(rows)
    series = {
        f"LinDist3Flow build, {name}": (part["bus_phase_periods"], part["build_s"])
        for name, part in table.groupby("series", sort=False)
    }
    scaling_plot(series, "buses x phases x periods", "build seconds", path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(pd.DataFrame(run(quick="--full" not in sys.argv)).to_string(index=False))
