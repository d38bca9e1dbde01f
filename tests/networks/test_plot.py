"""The feeder plot draws every bus and branch."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from gridmarkets.networks import linear_power_flow
from gridmarkets.networks.plot import plot_feeder

pytestmark = pytest.mark.unit


def test_plot_by_voltage_and_by_loading(case33, simbench_lv):
    buses, _ = linear_power_flow(case33)
    ax = plot_feeder(case33, buses.set_index("bus")["v_pu"], label="v_pu")
    assert len(ax.collections[1].get_offsets()) == len(case33.buses)
    loading = pd.Series(range(len(simbench_lv.branches)), dtype=float)
    ax = plot_feeder(simbench_lv, loading, on="branch", label="loading_percent")
    assert len(ax.collections[0].get_paths()) == len(simbench_lv.branches)
    assert len({tuple(c) for c in ax.collections[0].get_edgecolor()}) > 1
