"""Feeders loaded once per session, and a tiny welfare-maximising market to clear on them."""

from __future__ import annotations

import pyomo.environ as pyo
import pytest
from radial import radial_net

from gridmarkets.networks import feeder_from_net, load, nodal_prices
from gridmarkets.solvers import solve


@pytest.fixture(scope="session")
def case33():
    return load("case33bw")


@pytest.fixture(scope="session")
def cigre_mv():
    return load("cigre_mv")


@pytest.fixture(scope="session")
def simbench_lv():
    return load("1-LV-rural1--0-sw")


@pytest.fixture(scope="session")
def small_net():
    """20 kV: root 0 - 1 - 2 - 3 (long chain to a big buyer), 1 - 4 (weak line to a seller)."""
    lines = [(0, 1, 0.4), (1, 2, 0.4), (2, 3, 0.4), (1, 4, 0.03)]
    return radial_net(
        20.0, lines, length_km=5.0, r_ohm_per_km=0.4, x_ohm_per_km=0.4, vmin_pu=0.95, vmax_pu=1.05
    )


@pytest.fixture(scope="session")
def small_feeder(small_net):
    return feeder_from_net(small_net, name="small")


@pytest.fixture(scope="session")
def clear_market():
    """The market clearing below, as a fixture."""
    return clear


def clear(feeder, formulation, offers, bids, *, periods=(0, 1), extra_demand=None):
    """Maximise welfare: offers and bids are (bus, price per MWh, kW); import at the root.

    Returns (model, handles, solution, prices).
    """
    m = pyo.ConcreteModel()
    m.T = pyo.Set(initialize=list(periods))
    m.sell = pyo.Var(range(len(offers)), m.T, bounds=lambda m, k, t: (0, offers[k][2]))
    m.buy = pyo.Var(range(len(bids)), m.T, bounds=lambda m, k, t: (0, bids[k][2]))
    m.imp = pyo.Var(m.T, bounds=(0, 5000.0))
    root = feeder.root if feeder is not None else None
    p_kw: dict = {}
    for t in m.T:
        p_kw[(root, t)] = m.imp[t]
        for k, (bus, _, _) in enumerate(offers):
            p_kw[(bus, t)] = p_kw.get((bus, t), 0) + m.sell[k, t]
        for k, (bus, _, _) in enumerate(bids):
            p_kw[(bus, t)] = p_kw.get((bus, t), 0) - m.buy[k, t]
    for (bus, t), kw in (extra_demand or {}).items():
        p_kw[(bus, t)] = p_kw.get((bus, t), 0) - kw
    m.net = pyo.Block()
    handles = formulation.add(m.net, feeder, list(periods), p_kw, {})
    welfare = sum(
        price / 1000 * m.buy[k, t] for k, (_, price, _) in enumerate(bids) for t in m.T
    ) - sum(price / 1000 * m.sell[k, t] for k, (_, price, _) in enumerate(offers) for t in m.T)
    m.welfare = pyo.Objective(
        expr=welfare - sum(50 / 1000 * m.imp[t] for t in m.T), sense=pyo.maximize
    )
    solution = solve(m)
    return m, handles, solution, nodal_prices(handles, solution)
