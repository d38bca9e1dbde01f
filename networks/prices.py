"""Nodal prices (DLMPs) from the balances' duals, and their decomposition.

For LinDistFlow the stationarity conditions of the flows and voltages link the duals:
for a branch l from bus i to bus j, with loss coefficients ell = a P + b Q + c,

    (1 - r a) lam_j - x a kap_j = lam_i - nu_l (2 r - z^2 a) - sum_k cos_k mu_lk
    -r b lam_j + (1 - x b) kap_j = kap_i - nu_l (2 x - z^2 b) - sum_k sin_k mu_lk
    nu_l = sum_{children c of j} nu_c / n_c^2 - (alpha_j + beta_j)

(lam, kap: active and reactive balance duals; nu: voltage-drop duals; mu: thermal
duals; alpha, beta: voltage-limit duals). The equations are linear, so the DLMP at every
bus is the sum of what each source alone produces: the root's prices (energy; with
losses, the part beyond the root price is the loss part), the thermal duals
(congestion) and the voltage-limit duals (voltage).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gridmarkets.networks.handles import NetworkHandles, value_array
from gridmarkets.networks.lindistflow import branch_arrays

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
    a, b = _loss_slopes(handles, branches, periods)
    zero_b, zero_n = np.zeros((len(buses), len(periods))), np.zeros((len(branches), len(periods)))
    nu = _voltage_drop_duals(feeder, limits)
    energy = _propagate(feeder, a, b, lam[0], kap[0], zero_n, zero_n, zero_n)
    parts = {
        "energy": (np.broadcast_to(lam[0], lam.shape), np.broadcast_to(kap[0], kap.shape)),
        "losses": (energy[0] - lam[0], energy[1] - kap[0]),
        "congestion": _propagate(feeder, a, b, zero_b[0], zero_b[0], zero_n, mu_p, mu_q),
        "voltage": _propagate(feeder, a, b, zero_b[0], zero_b[0], nu, zero_n, zero_n),
    }
    scale = handles.per_mwh()
    columns = {"bus": np.repeat(buses, len(periods)), "period": np.tile(periods, len(buses))}
    columns["price"] = lam.ravel() * scale
    columns.update({name: p.ravel() * scale for name, (p, _) in parts.items()})
    columns["price_q"] = kap.ravel() * scale
    columns.update({f"{name}_q": q.ravel() * scale for name, (_, q) in parts.items()})
    return pd.DataFrame(columns)


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


def _loss_slopes(handles: NetworkHandles, branches: list, periods: list):
    if handles.losses is None:
        zero = np.zeros((len(branches), len(periods)))
        return zero, zero
    return tuple(value_array(handles.losses[k], branches, periods) for k in ("a", "b"))


def _voltage_drop_duals(feeder, limits: np.ndarray) -> np.ndarray:
    """nu per branch from the voltage-limit duals, accumulated from the leaves up."""
    n2 = branch_arrays(feeder)["n2"]
    below = np.zeros_like(limits)
    nu = np.zeros((len(feeder.branches), limits.shape[1]))
    for k in range(len(feeder.branches) - 1, -1, -1):
        j = feeder.to_pos[k]
        nu[k] = below[j] - limits[j]
        below[feeder.from_pos[k]] += nu[k] / n2[k]
    return nu


def _propagate(feeder, a, b, lam_root, kap_root, nu, mu_p, mu_q):
    """Solve the branch stationarity conditions from the root down for (lam, kap)."""
    k = branch_arrays(feeder)
    lam = np.zeros((len(feeder.buses), len(lam_root)))
    kap = np.zeros_like(lam)
    lam[0], kap[0] = lam_root, kap_root
    for line in range(len(feeder.branches)):
        i, j = feeder.from_pos[line], feeder.to_pos[line]
        r, x, z2 = k["r"][line], k["x"][line], k["z2"][line]
        al, bl = a[line], b[line]
        rhs_p = lam[i] - nu[line] * (2 * r - z2 * al) - mu_p[line]
        rhs_q = kap[i] - nu[line] * (2 * x - z2 * bl) - mu_q[line]
        det = (1 - r * al) * (1 - x * bl) - x * al * r * bl
        lam[j] = ((1 - x * bl) * rhs_p + x * al * rhs_q) / det
        kap[j] = (r * bl * rhs_p + (1 - r * al) * rhs_q) / det
    return lam, kap
