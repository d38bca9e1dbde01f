"""LinDistFlow: the linearised branch-flow model of a radial feeder.

For a branch l from bus i to bus j (away from the root), in per unit, with an off-nominal
transformer ratio n (1 for lines)::

    p_j + P_l - r ell_l - sum_{children c} P_c = 0                 (active balance)
    q_j + Q_l - x ell_l - sum_{children c} Q_c = 0                 (reactive balance)
    v_j = v_i / n^2 - 2 (r P_l + x Q_l) + (r^2 + x^2) ell_l         (voltage drop)

where p_j, q_j are the net injections (the market's, plus the shunts' ``-g_j v_j`` and
``b_j v_j``; without losses at the flat voltage), v the squared voltage magnitudes and
ell the squared branch
current, ``ell = (P^2 + Q^2) / w`` with ``w = v_i / n^2`` the sending-end squared voltage
on the branch's own side. Losses choose how ell enters:

- "none": ell = 0, the equations of Baran and Wu's simplified DistFlow;
- "linear": the tangent plane at an operating point (P0, Q0, v0),
  ``ell = a P + b Q + d v_i + c`` with a = 2 P0 / w0, b = 2 Q0 / w0,
  d = -ell0 / v0_i (and c = 0: ell is homogeneous of degree one, so its tangent plane
  passes through the origin); "frozen" holds the voltage at the point (d = 0,
  c = -ell0), the older variant kept for comparison.

With losses the shunts follow v (exact: their power is linear in v). At the point itself
ell equals its exact value, so at an AC power flow's point the linear model reproduces
that power flow and, with "linear", its sensitivities (the DLMPs) to first order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from gridmarkets.errors import NetworkError
from gridmarkets.networks.feeder import Feeder, net_injections
from gridmarkets.networks.handles import NetworkHandles, kept
from gridmarkets.networks.rows import (
    Rows,
    add_family,
    check_keys,
    keys_of,
    market_terms,
    merge_extra,
    var_array,
)
from gridmarkets.solvers.highs import gc_paused

LOSSES = ("none", "linear")
LOSS_VOLTAGES = ("linear", "frozen")


def check_choice(field: str, value, choices: tuple[str, ...]) -> None:
    """A NetworkError naming ``field`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise NetworkError(f"{field}: {value!r} is not one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class OperatingPoint:
    """Where losses are linearised, per period (columns of every array).

    Attributes
    ----------
    p_pu, q_pu : (branches x periods) flows at the sending end of each branch.
    v_sq_pu : (buses x periods) squared voltages.
    """

    p_pu: np.ndarray
    q_pu: np.ndarray
    v_sq_pu: np.ndarray

    @classmethod
    def flat(cls, feeder: Feeder, periods: int) -> OperatingPoint:
        """No flow, every bus at the root's voltage: the lossless linearisation."""
        n_branch, n_bus = len(feeder.branches), len(feeder.buses)
        v = np.full((n_bus, periods), feeder.root_vm_pu**2)
        return cls(np.zeros((n_branch, periods)), np.zeros((n_branch, periods)), v)

    def current_terms(self, feeder: Feeder, loss_voltage: str = "linear") -> dict[str, np.ndarray]:
        """a, b, c, d of ``ell = a P + b Q + d v_from + c``, the squared current linearised
        here (branches x periods); ``loss_voltage="frozen"`` holds v_from (d = 0)."""
        check_choice("loss_voltage", loss_voltage, LOSS_VOLTAGES)
        v_from = self.v_sq_pu[feeder.from_pos]
        w = v_from / feeder.branches["ratio"].to_numpy()[:, None] ** 2
        p, q = self.p_pu, self.q_pu
        ell = (p**2 + q**2) / w
        a, b = 2 * p / w, 2 * q / w
        d = -ell / v_from if loss_voltage == "linear" else np.zeros_like(ell)
        return {"a": a, "b": b, "c": ell - a * p - b * q - d * v_from, "d": d}


def branch_arrays(feeder: Feeder) -> dict[str, np.ndarray]:
    """Branch parameters as column vectors (branches x 1) for broadcasting over periods."""
    br = feeder.branches
    r, x = br["r_pu"].to_numpy()[:, None], br["x_pu"].to_numpy()[:, None]
    return {"r": r, "x": x, "z2": r**2 + x**2, "n2": br["ratio"].to_numpy()[:, None] ** 2}


def upstream_branch(feeder: Feeder) -> np.ndarray:
    """For each branch, the branch feeding its sending bus (-1 for branches at the root)."""
    feeding = np.full(len(feeder.buses), -1)
    feeding[feeder.to_pos] = np.arange(len(feeder.branches))
    return feeding[feeder.from_pos]


def flow_matrix(feeder: Feeder, a, b, d, shunts_at_v: bool = False) -> sp.csc_matrix:
    """The LinDistFlow equations of one period as a sparse matrix M, with ell substituted.

    Unknowns, in order: P_l, Q_l and v_{j(l)} of every branch l (v of the bus it feeds);
    rows: the active and reactive balances at j(l) and the voltage drop of l (module
    docstring). ``M x = rhs`` is the power flow; ``M^T y = s`` is the stationarity of the
    same unknowns, whose solution y are the balances' and voltage drops' duals.
    ``a, b, d`` are the period's loss coefficients (one per branch; zeros without losses);
    ``shunts_at_v`` puts the shunts' ``-g v`` and ``b v`` in the matrix (else they are
    constants of the right-hand side).
    """
    k = {name: value[:, 0] for name, value in branch_arrays(feeder).items()}
    r, x, z2 = k["r"], k["x"], k["z2"]
    n = len(feeder.branches)
    line = np.arange(n)
    up = upstream_branch(feeder)
    below = up >= 0
    p_col, q_col, v_col = line, n + line, 2 * n + line
    entries = [
        (line, p_col, 1 - r * a),
        (line, q_col, -r * b),
        (line[below], v_col[up[below]], -r[below] * d[below]),
        (up[below], p_col[below], -1.0),
        (n + line, p_col, -x * a),
        (n + line, q_col, 1 - x * b),
        (n + line[below], v_col[up[below]], -x[below] * d[below]),
        (n + up[below], q_col[below], -1.0),
        (2 * n + line, p_col, 2 * r - z2 * a),
        (2 * n + line, q_col, 2 * x - z2 * b),
        (2 * n + line, v_col, 1.0),
        (2 * n + line[below], v_col[up[below]], -(1 / k["n2"][below] + z2[below] * d[below])),
    ]
    if shunts_at_v:
        shunt = feeder.buses[["g_pu", "b_pu"]].to_numpy()[feeder.to_pos]
        entries += [(line, v_col, -shunt[:, 0]), (n + line, v_col, shunt[:, 1])]
    rows, cols, values = (
        np.concatenate([np.broadcast_to(e[i], np.shape(e[0])) for e in entries]) for i in range(3)
    )
    return sp.csc_matrix((values, (rows, cols)), shape=(3 * n, 3 * n))


def period_factors(feeder: Feeder, terms: dict[str, np.ndarray] | None, periods: int):
    """Yield (period columns, LU factor of :func:`flow_matrix`), one factor per distinct
    set of loss coefficients (one for every period without losses, ``terms`` None; with
    losses the shunts follow v)."""
    if terms is None:
        zero = np.zeros(len(feeder.branches))
        yield np.arange(periods), splu(flow_matrix(feeder, zero, zero, zero))
        return
    stacked = np.vstack([terms["a"], terms["b"], terms["d"]])
    distinct, group = np.unique(stacked, axis=1, return_inverse=True)
    n = len(feeder.branches)
    for k in range(distinct.shape[1]):
        a, b, d = distinct[:n, k], distinct[n : 2 * n, k], distinct[2 * n :, k]
        yield np.flatnonzero(group.ravel() == k), splu(flow_matrix(feeder, a, b, d, True))


def solve_linear(
    feeder: Feeder,
    p_pu: np.ndarray,
    q_pu: np.ndarray,
    point: OperatingPoint | None = None,
    loss_voltage: str = "linear",
) -> dict[str, np.ndarray]:
    """Evaluate the LinDistFlow equations for given injections (no optimisation).

    Parameters
    ----------
    p_pu, q_pu : (buses x periods) net injections in feeder bus order, without shunts;
        the root's entry is ignored (the root is the slack).
    point : the losses' operating point; None evaluates the lossless equations.
    loss_voltage : "linear" or "frozen" (see :meth:`OperatingPoint.current_terms`).

    Returns
    -------
    dict of arrays: v_sq (buses x periods), p, q, ell (branches x periods).
    """
    periods, n = p_pu.shape[1], len(feeder.branches)
    j = feeder.to_pos
    if point is None:  # lossless: shunts at the flat voltage
        terms, a = None, np.zeros((n, periods))
        b = c = d = a
        shunts = feeder.buses[["g_pu", "b_pu"]].to_numpy()[j] * feeder.root_vm_pu**2
    else:  # shunts follow v, in the matrix
        terms, shunts = point.current_terms(feeder, loss_voltage), np.zeros((n, 2))
        a, b, c, d = (terms[k] for k in "abcd")
    k = branch_arrays(feeder)
    v_root = np.where(upstream_branch(feeder)[:, None] < 0, feeder.root_vm_pu**2, 0.0)
    rhs = np.vstack(
        [
            -p_pu[j] + shunts[:, [0]] + k["r"] * (c + d * v_root),
            -q_pu[j] - shunts[:, [1]] + k["x"] * (c + d * v_root),
            k["z2"] * c + (1 / k["n2"] + k["z2"] * d) * v_root,
        ]
    )
    x = np.empty_like(rhs)
    for columns, factor in period_factors(feeder, terms, periods):
        x[:, columns] = factor.solve(rhs[:, columns])
    v_sq = np.empty((len(feeder.buses), periods))
    v_sq[0], v_sq[j] = feeder.root_vm_pu**2, x[2 * n :]
    p, q = x[:n], x[n : 2 * n]
    ell = a * p + b * q + d * v_sq[feeder.from_pos] + c
    return {"v_sq": v_sq, "p": p, "q": q, "ell": ell}


def injection_matrix(
    feeder: Feeder, values, periods: list | None = None
) -> tuple[np.ndarray, list]:
    """Injections in kW as a (buses x periods) array in feeder order.

    ``values`` may be a number, a Series by bus (one period), a Series by (bus, period),
    a DataFrame with buses as rows and periods as columns, or a dict {(bus, period): kW}.
    Buses merged by a bus-bus switch are added to the bus they merged into.
    """
    if isinstance(values, dict):
        values = pd.Series(values, dtype=float)
    if isinstance(values, pd.Series):
        values = values.unstack() if values.index.nlevels == 2 else values.to_frame(0)
    if not isinstance(values, pd.DataFrame):
        columns = periods if periods is not None else [0]
        return np.full((len(feeder.buses), len(columns)), float(values)), list(columns)
    unknown = [b for b in values.index if b not in feeder.merged]
    if unknown:
        raise NetworkError(f"injections at bus {unknown[0]}, which is not a bus of the feeder")
    grouped = values.fillna(0.0).groupby(values.index.map(feeder.merged)).sum()
    grouped = grouped.reindex(feeder.buses.index, fill_value=0.0)
    if periods is not None:
        grouped = grouped.reindex(columns=periods, fill_value=0.0)
    return grouped.to_numpy(dtype=float), list(grouped.columns)


def injections_pu(feeder: Feeder, p_kw, q_kvar) -> tuple[np.ndarray, np.ndarray, list]:
    """Both injections as per-unit arrays over the same periods (defaults: the net's own)."""
    if p_kw is None and q_kvar is None:
        p_kw, q_kvar = net_injections(feeder)
    p, periods = injection_matrix(feeder, 0.0 if p_kw is None else p_kw)
    if q_kvar is None or np.isscalar(q_kvar):
        q, _ = injection_matrix(feeder, q_kvar or 0.0, periods)
    else:
        q, periods_q = injection_matrix(feeder, q_kvar)
        if len(periods_q) != len(periods) and len(periods) == 1 and np.isscalar(p_kw):
            p, periods = injection_matrix(feeder, p_kw, periods_q)
        q, _ = injection_matrix(feeder, q_kvar, periods)
    return p / feeder.s_base_kva, q / feeder.s_base_kva, periods


def flow_tables(
    feeder: Feeder, periods: list, result: dict[str, np.ndarray]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy bus and branch tables (kW, kvar, v_pu, loading_percent) from per-unit arrays."""
    s = feeder.s_base_kva
    n_bus, n_branch = len(feeder.buses), len(feeder.branches)
    buses = pd.DataFrame(
        {
            "bus": np.repeat(feeder.buses.index.to_numpy(), len(periods)),
            "period": np.tile(periods, n_bus),
            "v_pu": np.sqrt(np.maximum(result["v_sq"], 0.0)).ravel(),
        }
    )
    br = feeder.branches
    p_kw, q_kvar = result["p"] * s, result["q"] * s
    rating = br["rating_kva"].to_numpy()[:, None]
    loss = result["ell"] * br["r_pu"].to_numpy()[:, None] * s
    branches = pd.DataFrame(
        {
            "branch": np.repeat(br.index.to_numpy(), len(periods)),
            "period": np.tile(periods, n_branch),
            "p_kw": p_kw.ravel(),
            "q_kvar": q_kvar.ravel(),
            "loading_percent": (100 * np.hypot(p_kw, q_kvar) / rating).ravel(),
            "loss_kw": loss.ravel(),
        }
    )
    labels = br[["from_bus", "to_bus", "kind", "element"]]
    return buses, labels.join(branches.set_index("branch"), how="right").rename_axis("branch")


def linear_power_flow(
    feeder: Feeder,
    p_kw=None,
    q_kvar=None,
    *,
    point: OperatingPoint | None = None,
    loss_voltage: str = "linear",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate LinDistFlow for given injections, with no market on top.

    Parameters
    ----------
    feeder : the feeder.
    p_kw, q_kvar : net injections (positive into the grid) in kW / kvar, in any form
        :func:`injection_matrix` accepts; a DataFrame with buses as rows and periods as
        columns gives one solution per period. Defaults (both None): the net's own
        loads, static generators and storage. The root is the slack: its entry is
        ignored.
    point : linearise losses around this operating point (None: lossless).
    loss_voltage : "linear" (in P, Q and v) or "frozen" (in P and Q only).

    Returns
    -------
    (buses, branches) : tidy tables; buses with columns bus, period, v_pu; branches
    indexed by branch with from_bus, to_bus, kind, element, period, p_kw, q_kvar
    (at the sending end), loading_percent and loss_kw.
    """
    p, q, periods = injections_pu(feeder, p_kw, q_kvar)
    return flow_tables(feeder, periods, solve_linear(feeder, p, q, point, loss_voltage))


class LinDistFlow:
    """The LinDistFlow network formulation (see the module docstring for the equations).

    Parameters
    ----------
    polygon_sides : sides of the regular polygon inscribed in the apparent-power circle
        that approximates each branch's thermal limit from inside (even, at least 4).
    losses : "none" (lossless) or "linear": the squared current linearised around
        ``point`` (module docstring); :func:`~gridmarkets.networks.iterate_losses`
        re-linearises at the AC power flow of the cleared market. True and False are
        read as "linear" and "none".
    point : the operating point for losses; None takes pandapower's AC power flow at
        the net's own loads for every period. ``linear_operating_point(feeder, p, q)``
        gives one from the lossless model itself, with no AC power flow: on CIGRE MV at
        its own loads (its 110/20 kV transformer at 101 %, where the lossless model
        misses (r^2 + x^2) ell) that takes the largest voltage error against AC from
        0.014 pu to 0.0002 pu (tests/networks/test_accuracy.py).
    upstream_reactive : let the root draw reactive power from the upstream grid at no
        cost (a free variable ``q_upstream_kvar``); False for an islanded feeder, whose
        reactive balance must then close within the market.
    loss_voltage : "linear" linearises ell in P, Q and the sending-end voltage; "frozen"
        holds the voltage at the point (in P and Q only). On case33bw at its own loads,
        linearised at their AC power flow, the DLMPs of "linear" are pandapower's
        marginal-loss prices to 1e-5 currency/MWh; "frozen" misses by up to 0.42
        (tests/networks/test_loss_prices.py).
    """

    name = "lindistflow"

    def __init__(
        self,
        polygon_sides: int = 12,
        losses: str = "none",
        point: OperatingPoint | None = None,
        upstream_reactive: bool = True,
        loss_voltage: str = "linear",
    ):
        if polygon_sides < 4 or polygon_sides % 2:
            raise NetworkError(
                f"polygon_sides: {polygon_sides} must be an even number of at least 4 "
                "(opposite sides share one ranged row)"
            )
        losses = {True: "linear", False: "none"}.get(losses, losses)  # the older booleans
        check_choice("losses", losses, LOSSES)
        check_choice("loss_voltage", loss_voltage, LOSS_VOLTAGES)
        self.polygon_sides = polygon_sides
        self.losses = losses
        self.point = point
        self.upstream_reactive = upstream_reactive
        self.loss_voltage = loss_voltage

    @gc_paused()
    def add(
        self,
        block: pyo.Block,
        feeder: Feeder,
        periods,
        p_kw: dict,
        q_kvar: dict,
        *,
        period_hours: float = 1.0,
    ) -> NetworkHandles:
        """Add flows, squared voltages, balances and limits to ``block``.

        Parameters
        ----------
        block : an empty Pyomo block of the market model.
        feeder : the radial feeder.
        periods : the market's periods.
        p_kw, q_kvar : the market's net injection into the grid at (bus, period) in kW
            and kvar, as Pyomo expressions or numbers; missing keys are 0. The upstream
            grid, if any, is the market's injection at ``feeder.root``.
        period_hours : length of a period, to convert duals to currency/MWh.

        Returns
        -------
        NetworkHandles naming every component added.
        """
        if feeder is None:
            raise NetworkError("LinDistFlow needs a feeder; use CopperPlate for no grid")
        periods = list(periods)
        check_keys(feeder.buses.index, periods, p_kw, q_kvar)
        _add_sets(block, feeder, periods, self.polygon_sides)
        _add_variables(block, feeder, self.upstream_reactive)
        point = self._point(feeder, periods)
        with_losses = self.losses == "linear"
        losses = None
        if with_losses:
            losses = _add_losses(block, feeder, periods, point, self.loss_voltage)
        _add_balances(block, feeder, p_kw, q_kvar, point, losses)
        _add_voltage(block, feeder, losses)
        polygon = _add_thermal(block, feeder, self.polygon_sides)
        return NetworkHandles(
            formulation=self.name,
            feeder=feeder,
            periods=periods,
            s_base_kva=feeder.s_base_kva,
            period_hours=period_hours,
            block=block,
            active_power_balance=block.active_power_balance,
            reactive_power_balance=block.reactive_power_balance,
            voltage_sq=block.v_sq_pu,
            p_flow=block.p_flow_pu,
            q_flow=block.q_flow_pu,
            voltage_limit=block.voltage_limit,
            thermal_limit=block.thermal_limit,
            polygon=polygon,
            polygon_sides=self.polygon_sides,
            losses=losses,
            loss_voltage=self.loss_voltage if with_losses else None,
            p_kw=kept(p_kw),
            q_kvar=kept(q_kvar),
        )

    def _point(self, feeder: Feeder, periods: list) -> OperatingPoint:
        if self.losses == "none":
            return OperatingPoint.flat(feeder, len(periods))
        if self.point is not None:
            return _fit_periods(self.point, len(periods))
        from gridmarkets.networks.ac_check import operating_point

        p, q = net_injections(feeder)
        return _fit_periods(operating_point(feeder, p.to_frame(0), q.to_frame(0)), len(periods))


def _fit_periods(point: OperatingPoint, periods: int) -> OperatingPoint:
    """Repeat a one-period operating point over every period."""
    if point.p_pu.shape[1] == periods:
        return point
    if point.p_pu.shape[1] != 1:
        raise NetworkError(f"operating point has {point.p_pu.shape[1]} periods, need {periods}")
    return OperatingPoint(*(np.repeat(a, periods, axis=1) for a in vars(point).values()))


def _add_sets(block, feeder: Feeder, periods: list, sides: int) -> None:
    br = feeder.branches
    block.BUSES = pyo.Set(initialize=list(feeder.buses.index), doc="feeder buses")
    block.BUSES_BELOW_ROOT = pyo.Set(initialize=feeder.order[1:], doc="buses except the root")
    block.BRANCHES = pyo.Set(initialize=list(br.index), doc="branches, away from the root")
    rated = br.index[np.isfinite(br["rating_kva"]) & (br["rating_kva"] > 0)]
    block.RATED_BRANCHES = pyo.Set(initialize=list(rated), doc="branches with a rating")
    block.PERIODS = pyo.Set(initialize=periods, doc="market periods")
    block.DIRECTIONS = pyo.Set(
        initialize=range(sides // 2), doc="directions of the thermal polygon's pairs of sides"
    )


def _add_variables(block, feeder: Feeder, upstream_reactive: bool) -> None:
    block.p_flow_pu = pyo.Var(
        block.BRANCHES,
        block.PERIODS,
        doc="P[l,t]: active power into branch l at its sending end (pu)",
    )
    block.q_flow_pu = pyo.Var(
        block.BRANCHES,
        block.PERIODS,
        doc="Q[l,t]: reactive power into branch l at its sending end (pu)",
    )
    block.v_sq_pu = pyo.Var(
        block.BUSES, block.PERIODS, doc="v[j,t]: squared voltage magnitude (pu^2)"
    )
    for t in block.PERIODS:
        block.v_sq_pu[feeder.root, t].fix(feeder.root_vm_pu**2)
    if upstream_reactive:
        block.q_upstream_kvar = pyo.Var(
            block.PERIODS, doc="reactive power drawn from the upstream grid at the root (kvar)"
        )


def _add_losses(
    block, feeder: Feeder, periods: list, point: OperatingPoint, loss_voltage: str
) -> dict:
    """Mutable parameters of the linearised squared current, so a re-linearisation is cheap."""
    params = {}
    for name, array in point.current_terms(feeder, loss_voltage).items():
        param = pyo.Param(
            block.BRANCHES,
            block.PERIODS,
            mutable=True,
            initialize=_indexed(feeder.branches.index, periods, array),
            doc=f"{name}[l,t] of ell[l,t] = a P + b Q + d v[i] + c, squared current linearised",
        )
        block.add_component(f"loss_{name}", param)
        params[name] = param
    sending = feeder.branches["from_bus"].to_dict()

    @block.Expression(block.BRANCHES, block.PERIODS)
    def current_sq_pu(b, k, t):
        flows = b.loss_a[k, t] * b.p_flow_pu[k, t] + b.loss_b[k, t] * b.q_flow_pu[k, t]
        return flows + b.loss_d[k, t] * b.v_sq_pu[sending[k], t] + b.loss_c[k, t]

    block.current_sq_pu.doc = (
        "ell[l,t] = a P[l,t] + b Q[l,t] + d v[i,t] + c  (pu, squared current of branch l "
        "from bus i)"
    )
    return params


def _indexed(rows, periods: list, array: np.ndarray) -> dict:
    return {(r, t): float(array[i, k]) for i, r in enumerate(rows) for k, t in enumerate(periods)}


def _add_balances(block, feeder: Feeder, p_kw, q_kvar, point: OperatingPoint, losses) -> None:
    """Active and reactive balances; shunts at the flat voltage without losses, at the
    variable v with them."""
    s = feeder.s_base_kva
    n_bus, n_br, n_t = len(feeder.buses), len(feeder.branches), len(block.PERIODS)
    keys = keys_of(block.BUSES, block.PERIODS)
    row_of = dict(zip(keys, range(len(keys)), strict=True))
    shunts = feeder.buses[["g_pu", "b_pu"]].to_numpy() * 1.0
    balance = np.arange(n_bus * n_t).reshape(n_bus, n_t)
    root = feeder.buses.index.get_loc(feeder.root)
    up_q = getattr(block, "q_upstream_kvar", None)
    families = (
        ("active", block.p_flow_pu, p_kw, -shunts[:, [0]], "r_pu", None),
        ("reactive", block.q_flow_pu, q_kvar, shunts[:, [1]], "x_pu", up_q),
    )
    for name, flow, injections, shunt, impedance, upstream in families:
        flows = var_array(flow, (n_br, n_t))
        terms, constants, extra = market_terms(injections, row_of.__getitem__, len(keys), 1 / s)
        parts = [
            terms,
            (balance[feeder.to_pos], 1.0, flows),
            (balance[feeder.from_pos], -1.0, flows),
        ]
        if upstream is not None:
            parts.append((balance[root], 1 / s, var_array(upstream, (n_t,))))
        if losses is None:
            constants = constants + (shunt * point.v_sq_pu).ravel()
        else:
            at = np.flatnonzero(shunt[:, 0])
            parts.append((balance[at], shunt[at], var_array(block.v_sq_pu, (n_bus, n_t))[at]))
        rows = Rows.of(n_bus * n_t, parts, constants)
        loss = _loss_terms(block, feeder, keys, impedance) if losses else None
        add_family(
            block,
            f"{name}_power_balance",
            (block.BUSES, block.PERIODS),
            rows,
            0.0,
            0.0,
            _BALANCE_DOCS[name],
            merge_extra(extra, loss),
        )


_BALANCE_DOCS = {
    "active": "p[j,t]/S - g v[j,t] + P[in] - r ell[in] - sum P[out] = 0  (pu; v = the flat "
    "voltage without losses); dual: price of demand",
    "reactive": "q[j,t]/S + b v[j,t] + Q[in] - x ell[in] - sum Q[out] = 0  (pu; v = the flat "
    "voltage without losses)",
}


def _loss_terms(block, feeder: Feeder, keys: list, impedance: str) -> list:
    """-r ell (or -x ell) of the branch feeding each bus (mutable parameters: symbolic)."""
    parent = feeder.parent_branch
    z = feeder.branches[impedance].to_dict()
    ell = block.current_sq_pu
    return [None if j == feeder.root else -z[parent[j]] * ell[parent[j], t] for j, t in keys]


def _add_voltage(block, feeder: Feeder, losses) -> None:
    k = branch_arrays(feeder)
    n_br, n_t = len(feeder.branches), len(block.PERIODS)
    v = var_array(block.v_sq_pu, (len(feeder.buses), n_t))
    drop = np.arange(n_br * n_t).reshape(n_br, n_t)
    rows = Rows.of(
        n_br * n_t,
        [
            (drop, 1.0, v[feeder.to_pos]),
            (drop, -1 / k["n2"], v[feeder.from_pos]),
            (drop, 2 * k["r"], var_array(block.p_flow_pu, (n_br, n_t))),
            (drop, 2 * k["x"], var_array(block.q_flow_pu, (n_br, n_t))),
        ],
    )
    extra = None
    if losses:
        z2 = dict(zip(feeder.branches.index, k["z2"][:, 0], strict=True))
        keys = keys_of(block.BRANCHES, block.PERIODS)
        extra = [-z2[line] * block.current_sq_pu[line, t] for line, t in keys]
    add_family(
        block,
        "voltage_drop",
        (block.BRANCHES, block.PERIODS),
        rows,
        0.0,
        0.0,
        "v[j,t] = v[i,t]/n^2 - 2 (r P[l,t] + x Q[l,t]) + (r^2 + x^2) ell[l,t]  (pu^2)",
        extra,
    )
    _add_voltage_limits(block, feeder, v[feeder.to_pos])


def _add_voltage_limits(block, feeder: Feeder, v: np.ndarray) -> None:
    """Bounds on the squared voltages below the root (``v`` in ``feeder.order[1:]`` order)."""
    buses = feeder.buses.loc[feeder.order[1:]]
    lower, upper = (np.repeat(buses[c].to_numpy() ** 2, v.shape[1]) for c in ("vmin_pu", "vmax_pu"))
    add_family(
        block,
        "voltage_limit",
        (block.BUSES_BELOW_ROOT, block.PERIODS),
        Rows.of(v.size, [(np.arange(v.size), 1.0, v.ravel())]),
        lower,
        upper,
        "vmin_pu[j]^2 <= v[j,t] <= vmax_pu[j]^2  (pu^2)",
    )


def polygon_directions(sides: int) -> np.ndarray:
    """(sides/2 x 2) normals (cos, sin) of a regular polygon's pairs of opposite sides."""
    angles = 2 * math.pi * np.arange(sides // 2) / sides
    return np.column_stack([np.cos(angles), np.sin(angles)])


def _add_thermal(block, feeder: Feeder, sides: int) -> np.ndarray:
    directions = polygon_directions(sides)
    br = feeder.branches
    n_t = len(block.PERIODS)
    rated = np.flatnonzero(np.isfinite(br["rating_kva"]) & (br["rating_kva"] > 0))
    shape = (len(rated), len(directions), n_t)
    index = np.arange(math.prod(shape)).reshape(shape)
    parts = []
    for k, flow in enumerate((block.p_flow_pu, block.q_flow_pu)):
        used = directions[:, k] != 0  # sin 0 = 0: no Q term in the first direction
        flows = var_array(flow, (len(br), n_t))[rated][:, None, :]
        parts.append((index[:, used], directions[used, k][None, :, None], flows))
    cap = br["rating_kva"].to_numpy()[rated] / feeder.s_base_kva * math.cos(math.pi / sides)
    cap = np.broadcast_to(cap[:, None, None], shape).ravel()
    add_family(
        block,
        "thermal_limit",
        (block.RATED_BRANCHES, block.DIRECTIONS, block.PERIODS),
        Rows.of(index.size, parts),
        -cap,
        cap,
        "-S_l cos(pi/N) <= cos(2 pi k/N) P[l,t] + sin(2 pi k/N) Q[l,t] <= S_l cos(pi/N)  (pu): "
        "the N-sided polygon inscribed in the apparent-power circle, one pair of opposite "
        "sides per direction k < N/2",
    )
    return directions


def linear_operating_point(feeder: Feeder, p_kw=None, q_kvar=None) -> OperatingPoint:
    """The lossless LinDistFlow solution as an operating point (no AC power flow needed).

    Linearising losses around it captures most of what the lossless model leaves out
    (the losses and the (r^2 + x^2) ell term of heavily loaded transformers).
    """
    p, q, _ = injections_pu(feeder, p_kw, q_kvar)
    flat = solve_linear(feeder, p, q)
    return OperatingPoint(flat["p"], flat["q"], flat["v_sq"])
