"""Building LinDistFlow (Pyomo) over 96 periods for growing feeders: time and peak memory.

Each row builds the network block alone, with a constant injection per bus and period
(the market's expressions would add their own cost). Build time should grow linearly in
buses x periods. Build seconds from a plain run, peak memory from a second, traced run.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandapower as pp
import pandas as pd
import pyomo.environ as pyo


def synthetic_net(buses: int, seed: int = 0):
    """A random radial 20 kV feeder of ``buses`` buses, each with a 20 kW load."""
    rng = np.random.default_rng(seed)
    net = pp.create_empty_network()
    index = pp.create_buses(net, buses, vn_kv=20.0)
    pp.create_ext_grid(net, index[0])
    parents = [int(rng.integers(max(0, k - 5), k)) for k in range(1, buses)]
    pp.create_lines_from_parameters(
        net,
        index[parents],
        index[1:],
        length_km=0.3,
        r_ohm_per_km=0.3,
        x_ohm_per_km=0.35,
        c_nf_per_km=0.0,
        max_i_ka=0.4,
    )
    pp.create_loads(net, index[1:], p_mw=0.02)
    return net


def build(feeder, periods: int) -> float:
    """Seconds to add LinDistFlow to an empty model."""
    from gridmarkets.networks import LinDistFlow

    p_kw = {(bus, t): -20.0 for bus in feeder.buses.index for t in range(periods)}
    started = time.perf_counter()
    model = pyo.ConcreteModel()
    model.net = pyo.Block()
    LinDistFlow().add(model.net, feeder, range(periods), p_kw, {})
    return time.perf_counter() - started


def time_build(feeder, periods: int) -> dict:
    """Build seconds from a plain run, peak MiB from a second, traced run (the garbage of
    earlier builds is collected first, so no build pays for freeing another's model)."""
    gc.collect()
    seconds = build(feeder, periods)
    gc.collect()
    tracemalloc.start()
    build(feeder, periods)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {
        "feeder": feeder.name,
        "buses": len(feeder.buses),
        "periods": periods,
        "bus_periods": len(feeder.buses) * periods,
        "build_s": seconds,
        "peak_mib": peak,
        "us_per_bus_period": 1e6 * seconds / (len(feeder.buses) * periods),
    }


def run(quick: bool = True) -> list[dict]:
    """Time the build for case33bw, SimBench MV urban and synthetic feeders."""
    from gridmarkets.networks import feeder_from_net, load

    feeders = [load("case33bw"), load("1-MV-urban--0-sw")]
    sizes = [250, 500] if quick else [250, 500, 1000]
    feeders += [feeder_from_net(synthetic_net(n), name=f"synthetic_{n}") for n in sizes]
    periods = 24 if quick else 96
    return [time_build(feeder, periods) for feeder in feeders]


def plot(rows: list[dict], path: Path) -> None:
    """Build seconds against buses x periods."""
    from benchmarks.plotting import scaling_plot

    table = pd.DataFrame(rows)
    series = {"LinDistFlow build": (table["bus_periods"], table["build_s"])}
    scaling_plot(series, "buses x periods", "build seconds", path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(pd.DataFrame(run(quick="--full" not in sys.argv)).to_string(index=False))
