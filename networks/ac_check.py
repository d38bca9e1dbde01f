"""pandapower's AC power flow of the same injections, next to the linear model's answer."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from gridmarkets.errors import NetworkError
from gridmarkets.log import track
from gridmarkets.networks.feeder import INJECTION_SIGNS, Feeder
from gridmarkets.networks.lindistflow import (
    OperatingPoint,
    flow_tables,
    injections_pu,
    solve_linear,
)

AC_OPTIONS = {"lightsim2grid": True, "numba": False}
"""pandapower's accelerators for :func:`run_ac`, chosen by measurement
(``benchmarks/RESULTS.md``): lightsim2grid's Newton-Raphson, and after the first period the
time-series runner's recycling of the admittance matrices (:data:`RECYCLE`: only the
buses' P and Q change). Not numba: compiling pandapower's functions in every new process
costs more than it saves over a day's periods."""

RECYCLE = {"bus_pq": True, "trafo": False, "gen": False}


def run_ac(
    feeder: Feeder, p_pu: np.ndarray, q_pu: np.ndarray, *, accelerated: bool = True
) -> dict[str, np.ndarray]:
    """Run pandapower's AC power flow once per period (columns) of the injections.

    The net's own injections (every table :func:`~gridmarkets.networks.net_injections`
    reads, asymmetric loads and motors included) are switched off and one static
    generator per bus carries the injection; the external grid is the slack, so the
    root's entry is ignored.

    Parameters
    ----------
    accelerated : with :data:`AC_OPTIONS` and :data:`RECYCLE` (the same answers to
        pandapower's tolerance); False: plain ``runpp`` in every period.

    Returns
    -------
    dict of arrays: vm_pu (buses x periods); p_pu, q_pu (series flow at each branch's
    sending end), loading_percent and loss_kw (branches x periods); losses_kw (periods).
    """
    import pandapower as pp

    net = copy.deepcopy(feeder.net)
    for table in INJECTION_SIGNS:
        if table in net:
            net[table]["in_service"] = False
    buses = feeder.buses.index.to_numpy()
    sgens = pp.create_sgens(net, buses, p_mw=0.0, q_mvar=0.0)
    at_root = (buses == feeder.root)[:, None]
    scale = feeder.s_base_kva / 1000.0
    p_mw, q_mvar = (np.where(at_root, 0.0, x * scale) for x in (p_pu, q_pu))
    options = AC_OPTIONS if accelerated else {"lightsim2grid": False, "numba": False}
    reader = _PeriodReader(feeder, net)
    out = reader.empty(p_pu.shape[1])
    for t in track(range(p_pu.shape[1]), f"AC power flow of {feeder.name}"):
        net.sgen.loc[sgens, "p_mw"] = p_mw[:, t]
        net.sgen.loc[sgens, "q_mvar"] = q_mvar[:, t]
        recycle = RECYCLE if accelerated and t else None
        try:
            pp.runpp(net, init="auto" if t == 0 else "results", recycle=recycle, **options)
        except pp.LoadflowNotConverged as err:
            raise NetworkError(
                f"AC power flow of {feeder.name} did not converge in period {t}"
            ) from err
        reader.read(net, out, t)
    return out


class _PeriodReader:
    """Reads one period's results from the net's result tables into the output arrays,
    with the rows, ends and shunts of every branch looked up once."""

    def __init__(self, feeder: Feeder, net) -> None:
        br = feeder.branches
        self.bus_rows = net.bus.index.get_indexer(feeder.buses.index)
        self.kinds = []
        for kind, ends in (
            ("line", ("from_bus", "p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar")),
            ("trafo", ("hv_bus", "p_hv_mw", "q_hv_mvar", "p_lv_mw", "q_lv_mvar")),
        ):
            rows = np.flatnonzero(br["kind"].to_numpy() == kind)
            element = br["element"].to_numpy()[rows]
            first = (
                net[kind].loc[element, ends[0]].map(feeder.merged).to_numpy()
                == br["from_bus"].to_numpy()[rows]
            )
            self.kinds.append(
                (f"res_{kind}", rows, net[kind].index.get_indexer(element), first, ends[1:])
            )
        self.from_pos = feeder.from_pos
        self.half_g = br["g_pu"].to_numpy() / 2
        self.half_b = br["b_pu"].to_numpy() / 2
        self.scale = 1000.0 / feeder.s_base_kva
        self.sizes = (len(feeder.buses), len(br))

    def empty(self, periods: int) -> dict[str, np.ndarray]:
        buses, branches = self.sizes
        out = {"vm_pu": np.empty((buses, periods)), "losses_kw": np.empty(periods)}
        for name in ("p_pu", "q_pu", "loading_percent", "loss_kw"):
            out[name] = np.empty((branches, periods))
        return out

    def read(self, net, out: dict[str, np.ndarray], t: int) -> None:
        vm = net.res_bus["vm_pu"].to_numpy()[self.bus_rows]
        out["vm_pu"][:, t] = vm
        for table, rows, positions, first, (p_from, q_from, p_to, q_to) in self.kinds:
            if not len(rows):
                continue
            res = net[table]
            column = {c: res[c].to_numpy()[positions] for c in (p_from, q_from, p_to, q_to)}
            p = np.where(first, column[p_from], column[p_to]) * self.scale
            q = np.where(first, column[q_from], column[q_to]) * self.scale
            # the sending end's half of the pi model's shunt is the feeder's bus shunt
            v_sq = vm[self.from_pos[rows]] ** 2
            out["p_pu"][rows, t] = p - self.half_g[rows] * v_sq
            out["q_pu"][rows, t] = q + self.half_b[rows] * v_sq
            out["loading_percent"][rows, t] = res["loading_percent"].to_numpy()[positions]
            out["loss_kw"][rows, t] = res["pl_mw"].to_numpy()[positions] * 1000.0
        out["losses_kw"][t] = out["loss_kw"][:, t].sum()


def operating_point(feeder: Feeder, p_kw, q_kvar) -> OperatingPoint:
    """The AC power flow's flows and voltages at these injections, to linearise losses at."""
    p, q, _ = injections_pu(feeder, p_kw, q_kvar)
    ac = run_ac(feeder, p, q)
    return OperatingPoint(ac["p_pu"], ac["q_pu"], ac["vm_pu"] ** 2)


@dataclass
class ACCheck:
    """The AC power flow next to the linear one, per period and element.

    Attributes
    ----------
    buses : bus, period, v_pu_linear, v_pu_ac, error_pu, vmin_pu, vmax_pu.
    branches : branch, period, from_bus, to_bus, kind, element, p_kw_linear, p_kw_ac,
        q_kvar_linear, q_kvar_ac (series flows at the sending end), loading_percent_linear,
        loading_percent_ac, loss_kw_linear, loss_kw_ac.
    losses : period, loss_kw_linear, loss_kw_ac.
    """

    buses: pd.DataFrame
    branches: pd.DataFrame
    losses: pd.DataFrame

    @property
    def max_voltage_error_pu(self) -> float:
        """max over buses and periods of |V_linear - V_ac| (pu)."""
        return float(self.buses["error_pu"].abs().max())

    @property
    def max_loading_percent(self) -> float:
        """Largest AC branch loading (%)."""
        return float(self.branches["loading_percent_ac"].max())

    def violations(self) -> pd.DataFrame:
        """AC limit violations: buses outside [vmin, vmax], branches above 100 %."""
        b = self.buses
        low, high = b["v_pu_ac"] < b["vmin_pu"], b["v_pu_ac"] > b["vmax_pu"]
        bad = b[low | high]
        voltage = pd.DataFrame(
            {
                "element": "bus",
                "index": bad["bus"],
                "period": bad["period"],
                "value": bad["v_pu_ac"],
                "limit": np.where(low[low | high], bad["vmin_pu"], bad["vmax_pu"]),
            }
        )
        over = self.branches[self.branches["loading_percent_ac"] > 100.0]
        thermal = over.assign(element=over["kind"], index=over["element"], limit=100.0)
        thermal = thermal.assign(value=over["loading_percent_ac"])
        columns = ["element", "index", "period", "value", "limit"]
        return pd.concat([voltage[columns], thermal[columns]], ignore_index=True)

    def summary(self) -> dict[str, Any]:
        """Plain JSON-able facts: largest errors and loading, and the violations."""
        violations = self.violations()
        return {
            "max_voltage_error_pu": self.max_voltage_error_pu,
            "max_loading_percent": self.max_loading_percent,
            "mean_loss_kw_linear": float(self.losses["loss_kw_linear"].mean()),
            "mean_loss_kw_ac": float(self.losses["loss_kw_ac"].mean()),
            "violations_count": len(violations),
            "violations": violations.head(50).to_dict(orient="records"),
        }


#: The branch quantities an :class:`ACCheck` reports twice, ``_linear`` and ``_ac``.
AC_COLUMNS = ("p_kw", "q_kvar", "loading_percent", "loss_kw")


def ac_check(
    feeder: Feeder,
    p_kw,
    q_kvar,
    *,
    point: OperatingPoint | None = None,
    loss_voltage: str = "linear",
) -> ACCheck:
    """Compare the linear power flow of these injections with pandapower's AC one.

    Parameters
    ----------
    feeder : the feeder.
    p_kw, q_kvar : net injections in kW / kvar, positive into the grid, in any form
        :func:`~gridmarkets.networks.lindistflow.injection_matrix` accepts (typically a
        DataFrame with buses as rows and periods as columns). The root is the slack.
    point : the linear model's loss linearisation, if it had losses on.
    loss_voltage : that linearisation's variant, "linear" or "frozen".

    Returns
    -------
    ACCheck
    """
    p, q, periods = injections_pu(feeder, p_kw, q_kvar)
    linear = solve_linear(feeder, p, q, point, loss_voltage)
    ac = run_ac(feeder, p, q)
    lin_buses, lin_branches = flow_tables(feeder, periods, linear)
    ac_buses, ac_branches = flow_tables(
        feeder, periods, {**linear, "p": ac["p_pu"], "q": ac["q_pu"]}
    )
    buses = lin_buses.rename(columns={"v_pu": "v_pu_linear"})
    buses["v_pu_ac"] = ac["vm_pu"].ravel()
    buses["error_pu"] = buses["v_pu_linear"] - buses["v_pu_ac"]
    buses = buses.join(feeder.buses[["vmin_pu", "vmax_pu"]], on="bus")
    branches = lin_branches.rename(columns=lambda c: f"{c}_linear" if c in AC_COLUMNS else c)
    branches["p_kw_ac"] = ac_branches["p_kw"].to_numpy()
    branches["q_kvar_ac"] = ac_branches["q_kvar"].to_numpy()
    branches["loading_percent_ac"] = ac["loading_percent"].ravel()
    branches["loss_kw_ac"] = ac["loss_kw"].ravel()
    order = [f"{c}_{side}" for c in AC_COLUMNS for side in ("linear", "ac")]
    branches = branches[[*branches.columns.drop(order), *order]]
    loss_linear = (linear["ell"] * feeder.branches["r_pu"].to_numpy()[:, None]).sum(axis=0)
    losses = pd.DataFrame(
        {
            "period": periods,
            "loss_kw_linear": loss_linear * feeder.s_base_kva,
            "loss_kw_ac": ac["losses_kw"],
        }
    )
    return ACCheck(buses.reset_index(drop=True), branches.reset_index(), losses)
