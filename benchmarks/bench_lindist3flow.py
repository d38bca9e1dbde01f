"""Building LinDist3Flow (Pyomo) for the 907-bus IEEE European LV feeder and growing
synthetic feeders: time against buses x phases x periods.

Each row builds the network block alone, with the feeder's own per-phase loads (or a
4 kW load on one phase of each bus of a synthetic feeder) as constants in every period.
Build time should grow linearly in buses x phases x periods; ``lindistflow_s`` is the
single-phase LinDistFlow build of the same feeder and periods, for scale.

What it shows (full mode, two runs on the shared 2-core machine at a load average of
6-8, so single rows are noisy: the first run's 48-period European row took 14 s): the
907-bus European feeder over 96 periods builds in 11-12 s (2.9-3.1 s for LinDistFlow).
The work is linear, the time not quite: profiled at 250 and 1000 synthetic buses (48
periods) the build makes 1.30 and 5.15 million Python calls (3.97 times for 4 times
the size), every family's array assembly in proportion, while the time per call grows
1.15-1.65 times (1.23 overall; dictionary look-ups 1.65): a memory-bound slowdown as
the model outgrows the caches, no quadratic step. So the time per bus, phase and
period rises from 24-31 us at 65 000-72 000 to 61 us at 576 000 (build time about
size^1.3-1.4 over that range); LinDistFlow's rises less (29 to 39 us per bus and period).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

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


def injections(feeder, periods: int) -> tuple[dict, dict]:
    """Per-phase constants keyed (bus, phase, period): the net's own, or one phase each."""
    from gridmarkets.networks.three_phase import PHASES, phase_injections

    p, q = phase_injections(feeder)
    if not p.to_numpy().any():
        for k, bus in enumerate(feeder.buses.index[1:]):
            p.at[bus, PHASES[k % 3]] = -4.0
    tables = []
    for table in (p, q):
        stacked = table.stack()
        stacked = stacked[stacked != 0]
        tables.append({(b, ph, t): v for (b, ph), v in stacked.items() for t in range(periods)})
    return tables[0], tables[1]


def build(formulation, feeder, periods: int, p_kw: dict, q_kvar: dict) -> float:
    """Seconds to add the formulation to an empty model (garbage of earlier builds
    collected first)."""
    gc.collect()
    started = time.perf_counter()
    model = pyo.ConcreteModel()
    model.net = pyo.Block()
    formulation.add(model.net, feeder, range(periods), p_kw, q_kvar)
    return time.perf_counter() - started


def time_build(feeder, periods: int) -> dict:
    """LinDist3Flow's build seconds and rows, with LinDistFlow's for the same feeder."""
    from gridmarkets.networks import LinDistFlow
    from gridmarkets.networks.three_phase import LinDist3Flow

    p_kw, q_kvar = injections(feeder, periods)
    seconds = build(LinDist3Flow(), feeder, periods, p_kw, q_kvar)
    single = {(b, t): v for (b, _, t), v in p_kw.items()}
    size = len(feeder.buses) * 3 * periods
    return {
        "feeder": feeder.name,
        "buses": len(feeder.buses),
        "periods": periods,
        "bus_phase_periods": size,
        "build_s": seconds,
        "us_per_bus_phase_period": 1e6 * seconds / size,
        "lindistflow_s": build(LinDistFlow(), feeder, periods, single, {}),
    }


def run(quick: bool = True) -> list[dict]:
    """The European LV feeder over growing periods, then synthetic feeders."""
    from gridmarkets.networks.three_phase import three_phase_feeder

    european = three_phase_feeder("ieee_european_lv_asymmetric", vmin_pu=0.9, vmax_pu=1.1)
    periods = [6, 24] if quick else [24, 48, 96]
    rows = [time_build(european, n) for n in periods]
    sizes = [250, 500] if quick else [250, 500, 1000, 2000]
    rows += [time_build(synthetic_feeder(n), periods[-1]) for n in sizes]
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Build seconds against buses x phases x periods."""
    from benchmarks.plotting import scaling_plot

    table = pd.DataFrame(rows)
    series = {"LinDist3Flow build": (table["bus_phase_periods"], table["build_s"])}
    scaling_plot(series, "buses x phases x periods", "build seconds", path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(pd.DataFrame(run(quick="--full" not in sys.argv)).to_string(index=False))
