"""Nodal prices (DLMPs) from the balances' duals, and their decomposition.

For LinDistFlow the duals satisfy the stationarity of the flows and voltages. For a
branch l from bus i to bus j, with ell = a P + b Q + d v_i + c (module
:mod:`~gridmarkets.networks.lindistflow`; a = b = d = 0 without losses)::

    (1 - r a) lam_j - x a kap_j + (2 r - z^2 a) nu_l = lam_i - sum_k cos_k mu_lk     (P_l)
    -r b lam_j + (1 - x b) kap_j + (2 x - z^2 b) nu_l = kap_i - sum_k sin_k mu_lk    (Q_l)
    nu_l - sum_{c from j} [(1/n_c^2 + z_c^2 d_c) nu_c + d_c (r_c lam_k + x_c kap_k)]
        = -alpha_j                                                                     (v_j)

(lam, kap: active and reactive balance duals; nu: voltage-drop duals; mu: thermal
duals; alpha: voltage-limit duals; k the bus branch c feeds). This is ``M^T y = s`` for
the matrix M of the power flow itself
(:func:`~gridmarkets.networks.lindistflow.flow_matrix`), solved with one sparse LU
factor per distinct set of loss coefficients. The d-terms couple each bus's voltage to
its children's balances, so no single sweep from the root solves it. The system is
linear, so the DLMP at every bus is the sum of what each source alone produces: the
root's prices (energy; with losses, the part beyond the root price is the loss part),
the thermal duals (congestion) and the voltage-limit duals (voltage).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gridmarkets.networks.handles import NetworkHandles, value_array
from gridmarkets.networks.lindistflow import period_factors, upstream_branch

PARTS = ("energy", "losses", "congestion", "voltage")


def nodal_prices(handles: NetworkHandles, solution) -> pd.DataFrame:
    """DLMPs per bus and period in currency/MWh (reactive: currency/Mvarh), decomposed.

    Parameters
    ----------
    handles : what the network formulation's ``add`` returned.
    solution : the :class:`~gridmarkets.solvers.Solution` of the model.

    Returns
    -------
    Tidy table with columns bus, period, price (the active balance's dual, what one
    more kW of demand at the bus costs), energy, losses, congestion, voltage (the
    parts, which sum to price), and for LinDistFlow price_q with its parts energy_q,
    losses_q, congestion_q, voltage_q. CopperPlate gives one price per period, repeated
    for every bus of the feeder if there is one (bus None otherwise), all energy.
    """
    if handles.formulation == "copperplate":
        return _copperplate_prices(handles, solution)
    if handles.formulation == "lindist3flow":
        from gridmarkets.networks.three_phase import nodal_prices_3ph

        return nodal_prices_3ph(handles, solution)
    return _lindistflow_prices(handles, solution)


def _copperplate_prices(handles: NetworkHandles, solution) -> pd.DataFrame:
    dual = solution.dual(handles.active_power_balance).reindex(handles.periods).fillna(0.0)
    price = dual.to_numpy() * 1000.0 / handles.period_hours  # currency per kW and period
    buses = [None] if handles.feeder is None else list(handles.feeder.buses.index)
    table = pd.DataFrame(
        {
            "bus": np.repeat(np.array(buses, dtype=object), len(price)),
            "period": np.tile(handles.periods, len(buses)),
            "price": np.tile(price, len(buses)),
        }
    )
    return table.assign(energy=table["price"], losses=0.0, congestion=0.0, voltage=0.0)


def _duals(solution, constraint, rows: list, periods: list) -> np.ndarray:
    """A (rows x periods) array of an indexed constraint's duals (0 where absent)."""
    series = solution.dual(constraint)
    index = pd.MultiIndex.from_product([rows, periods])
    return series.reindex(index).fillna(0.0).to_numpy().reshape(len(rows), len(periods))


def _lindistflow_prices(handles: NetworkHandles, solution) -> pd.DataFrame:
    feeder, periods = handles.feeder, handles.periods
    buses, branches = list(feeder.buses.index), list(feeder.branches.index)
    lam = _duals(solution, handles.active_power_balance, buses, periods)
    kap = _duals(solution, handles.reactive_power_balance, buses, periods)
    limits = _duals(solution, handles.voltage_limit, buses, periods)
    mu_p, mu_q = _thermal(handles, solution, branches, periods)
    root = upstream_branch(feeder)[:, None] < 0
    zero = np.zeros_like(mu_p)
    sources = {
        "root": (np.where(root, lam[0], 0.0), np.where(root, kap[0], 0.0), zero),
        "congestion": (-mu_p, -mu_q, zero),
        "voltage": (zero, zero, -limits[feeder.to_pos]),
    }
    solved = _stationarity(handles, sources)
    root_lam, root_kap = solved["root"]
    root_lam[0], root_kap[0] = lam[0], kap[0]  # at the root itself: its own price, no losses
    energy = (np.broadcast_to(lam[0], lam.shape), np.broadcast_to(kap[0], kap.shape))
    parts = {
        "energy": energy,
        "losses": (solved["root"][0] - energy[0], solved["root"][1] - energy[1]),
        "congestion": solved["congestion"],
        "voltage": solved["voltage"],
    }
    scale = handles.per_mwh()
    columns = {"bus": np.repeat(buses, len(periods)), "period": np.tile(periods, len(buses))}
    columns["price"] = lam.ravel() * scale
    columns.update({name: p.ravel() * scale for name, (p, _) in parts.items()})
    columns["price_q"] = kap.ravel() * scale
    columns.update({f"{name}_q": q.ravel() * scale for name, (_, q) in parts.items()})
    return pd.DataFrame(columns)


def _stationarity(handles: NetworkHandles, sources: dict) -> dict:
    """Solve ``M^T y = s`` for each source's right-hand side (three branches x periods
    arrays: the P, Q and v rows); return each source's (lam, kap) by bus and period, the
    root's entry 0."""
    feeder, n = handles.feeder, len(handles.feeder.branches)
    names = list(sources)
    rhs = np.stack([np.vstack(sources[name]) for name in names])  # source x 3n x periods
    terms = None
    if handles.losses is not None:
        terms = {
            k: value_array(handles.losses[k], list(feeder.branches.index), handles.periods)
            for k in "abd"
        }
    y = np.empty_like(rhs)
    for columns, factor in period_factors(feeder, terms, len(handles.periods)):
        block = rhs[:, :, columns].transpose(1, 0, 2).reshape(3 * n, -1)
        solved = factor.solve(block, trans="T").reshape(3 * n, len(names), len(columns))
        y[:, :, columns] = solved.transpose(1, 0, 2)
    out = {}
    for k, name in enumerate(names):
        lam, kap = (np.zeros((len(feeder.buses), y.shape[2])) for _ in range(2))
        lam[feeder.to_pos], kap[feeder.to_pos] = y[k, :n], y[k, n : 2 * n]
        out[name] = (lam, kap)
    return out


def _thermal(handles: NetworkHandles, solution, branches: list, periods: list):
    """Thermal duals projected on P and Q: sum_k cos_k mu_lk and sum_k sin_k mu_lk (a
    ranged row's dual is signed by the side that binds, so one sum covers both sides)."""
    directions = len(handles.polygon)
    series = solution.dual(handles.thermal_limit)
    index = pd.MultiIndex.from_product([branches, range(directions), periods])
    shape = (len(branches), directions, len(periods))
    mu = series.reindex(index).fillna(0.0).to_numpy().reshape(shape)
    cos, sin = handles.polygon[:, 0], handles.polygon[:, 1]
    return np.einsum("lkt,k->lt", mu, cos), np.einsum("lkt,k->lt", mu, sin)
