"""Where the loss linearisation sits: at the lossless solution (one re-linearisation,
LinDistFlow's own flows), or iterated at pandapower's AC solution until they agree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from gridmarkets.errors import NetworkError
from gridmarkets.log import track
from gridmarkets.networks.ac_check import run_ac
from gridmarkets.networks.handles import NetworkHandles, value_array
from gridmarkets.networks.lindistflow import OperatingPoint, linear_operating_point


@dataclass
class LossIteration:
    """The last solution and one row per iteration.

    Attributes
    ----------
    solution : the Solution of the last solve (its values are loaded in the model).
    iterations : iteration, max_voltage_error_pu, loss_kw_linear, loss_kw_ac.
    converged : the voltage error fell to the tolerance.
    """

    solution: Any
    iterations: pd.DataFrame
    converged: bool


def iterate_losses(
    model: pyo.Block,
    handles: NetworkHandles,
    *,
    tolerance_pu: float = 1e-3,
    max_iterations: int = 10,
    solve_options: dict[str, Any] | None = None,
) -> LossIteration:
    """Solve, and re-linearise losses at the AC power flow of the solution until they agree.

    Each round solves the model and runs pandapower's AC power flow of the cleared net
    injections (P and Q); the next round first sets the loss parameters to the
    linearisation at that flow's branch flows and voltages (in the handles'
    ``loss_voltage`` variant). A model built around the flat point (lossless at first)
    is re-linearised at least once, whatever its first voltages. On return the
    parameters are those of the last solve, so :func:`~gridmarkets.networks.nodal_prices`
    decomposes its duals.

    Parameters
    ----------
    model : the market model holding a LinDistFlow built with ``losses="linear"``.
    handles : what that LinDistFlow's ``add`` returned.
    tolerance_pu : stop when max |V_linear - V_ac| over buses and periods is below it.
    max_iterations : solves at most.
    solve_options : passed to :func:`gridmarkets.solvers.solve`.

    Returns
    -------
    LossIteration
    """
    from gridmarkets.solvers import solve

    _require_losses(handles)
    feeder = handles.feeder
    rows, point = [], None
    # a start at the flat point solves lossless: agreeing voltages then say nothing of
    # the losses, so at least one round at an AC point follows
    lossless = all(not any(param.extract_values().values()) for param in handles.losses.values())
    for iteration in track(range(1, max_iterations + 1), "loss iterations (at most)"):
        if point is not None:  # only before another solve: the parameters stay the solution's
            _relinearise(handles, point)
        solution = solve(model, **(solve_options or {}))
        p_kw, q_kvar = handles.injection_values()
        ac = run_ac(feeder, p_kw / feeder.s_base_kva, q_kvar / feeder.s_base_kva)
        rows.append({"iteration": iteration, **_compare(handles, ac)})
        if rows[-1]["max_voltage_error_pu"] <= tolerance_pu and not lossless:
            break
        lossless = False
        point = OperatingPoint(ac["p_pu"], ac["q_pu"], ac["vm_pu"] ** 2)
    table = pd.DataFrame(rows)
    return LossIteration(
        solution, table, bool(table["max_voltage_error_pu"].iloc[-1] <= tolerance_pu)
    )


def linearise_at_lossless(
    model: pyo.Block,
    handles: NetworkHandles | Sequence[NetworkHandles],
    *,
    solve_options: dict[str, Any] | None = None,
):
    """Solve lossless, linearise the losses around that solution, solve again.

    The operating point is the lossless LinDistFlow's flows and voltages at the cleared
    injections (no AC power flow), so the losses are priced around what the market
    itself does rather than around the net's own loads. The model must hold
    LinDistFlows built with ``losses="linear"`` around the flat point
    (``OperatingPoint.flat``), where the loss terms vanish: its first solve is the
    lossless one. ``handles``: the model's grid, or its grids (one per scenario), each
    re-linearised at its own injections. Returns the second solve's Solution (values
    loaded in the model).
    """
    from gridmarkets.solvers import solve

    grids = [handles] if isinstance(handles, NetworkHandles) else list(handles)
    for grid in grids:
        _require_losses(grid)
    solve(model, **(solve_options or {}))
    for grid in grids:
        feeder, periods = grid.feeder, grid.periods
        p_kw, q_kvar = (
            pd.DataFrame(values, index=feeder.buses.index, columns=periods)
            for values in grid.injection_values()
        )
        _relinearise(grid, linear_operating_point(feeder, p_kw, q_kvar))
    return solve(model, **(solve_options or {}))


def _require_losses(handles: NetworkHandles) -> None:
    if handles.losses is None:
        raise NetworkError(
            f"the losses need a LinDistFlow built with losses='linear'; this network "
            f"({handles.formulation}) has no loss parameters"
        )


def _compare(handles: NetworkHandles, ac: dict) -> dict[str, float]:
    feeder, periods = handles.feeder, handles.periods
    buses, branches = list(feeder.buses.index), list(feeder.branches.index)
    v = np.sqrt(value_array(handles.voltage_sq, buses, periods))
    ell = value_array(handles.block.current_sq_pu, branches, periods)
    r = feeder.branches["r_pu"].to_numpy()[:, None]
    return {
        "max_voltage_error_pu": float(np.abs(v - ac["vm_pu"]).max()),
        "loss_kw_linear": float((r * ell).sum() * feeder.s_base_kva),
        "loss_kw_ac": float(ac["losses_kw"].sum()),
    }


def _relinearise(handles: NetworkHandles, point: OperatingPoint) -> None:
    feeder, periods = handles.feeder, handles.periods
    for name, array in point.current_terms(feeder, handles.loss_voltage).items():
        _set(handles.losses[name], feeder.branches.index, periods, array)


def _set(param: pyo.Param, rows, periods: list, array: np.ndarray) -> None:
    for i, row in enumerate(rows):
        for k, t in enumerate(periods):
            param[row, t] = float(array[i, k])
