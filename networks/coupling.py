"""The one market-grid coupling every model calls.

A market states its injections as one long table, one row per owner, bus and period
(positive into the grid, kW and kvar), and :func:`attach_grid` validates the buses once,
adds them up per bus and period and hands them to a network formulation: LinDistFlow
on a feeder, CopperPlate (one balance per period) without one. "With or without the
grid" is the one argument ``formulation``; the handles always live on the block that
was passed, as ``block.network`` (the formulation's components) and ``block.handles``.

Two forms of the table:

- expressions: a DataFrame with columns owner, bus, period, p_kw and optionally q_kvar,
  whose cells are numbers or Pyomo expressions (a home's ``p_export - p_import``);
- terms, for markets with a hundred thousand blocks: columns owner, bus, period,
  variable, p_coef and optionally q_coef; row k injects ``p_coef[k] * variable[k]`` kW
  and ``q_coef[k] * variable[k]`` kvar, and LinDistFlow reads the arrays directly.

Either form may carry a column ``phase`` ("a", "bc", "abc", ...; missing means "abc"):
a three-phase formulation (LinDist3Flow) splits the row equally over those phases; a
single-phase one reads every row as balanced, which is the sum over phases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from gridmarkets.errors import InputError, NetworkError
from gridmarkets.networks.feeder import Feeder
from gridmarkets.networks.handles import LinearInjections, NetworkHandles

INJECTION_COLUMNS = ("owner", "bus", "period")


@runtime_checkable
class NetworkFormulation(Protocol):
    """What a network formulation implements (LinDistFlow, CopperPlate)."""

    name: str

    def add(
        self,
        block: pyo.Block,
        feeder: Feeder | None,
        periods: Sequence,
        p_kw: Mapping,
        q_kvar: Mapping,
        *,
        period_hours: float = 1.0,
    ) -> NetworkHandles:
        """Add the network's variables and constraints for these injections to ``block``."""
        ...


def default_formulation(feeder: Feeder | None) -> NetworkFormulation:
    """LinDistFlow on a feeder, CopperPlate without one."""
    from gridmarkets.networks.copperplate import CopperPlate
    from gridmarkets.networks.lindistflow import LinDistFlow

    return CopperPlate() if feeder is None else LinDistFlow()


def attach_grid(
    block: pyo.Block,
    feeder: Feeder | None,
    periods: Sequence,
    injections: pd.DataFrame,
    *,
    formulation: NetworkFormulation | None = None,
    period_hours: float = 1.0,
) -> NetworkHandles:
    """Couple a market's injections to the grid; the one path from a model to a network.

    Parameters
    ----------
    block : the model (or scenario block) the network belongs to; receives
        ``block.network`` (a Pyomo block with the formulation's components) and
        ``block.handles``.
    feeder : the radial feeder, or None for a market without a grid.
    periods : the market's periods.
    injections : the long table of injections (see the module docstring); ``bus`` is a
        bus of the feeder (buses merged by bus-bus switches are accepted) or None
        without a feeder; the upstream grid is an owner at ``feeder.root``.
    formulation : a :class:`NetworkFormulation`; default LinDistFlow on a feeder and
        CopperPlate without one.
    period_hours : length of a period (h), for prices in currency/MWh.

    Returns
    -------
    NetworkHandles, also stored as ``block.handles``.
    """
    check_formulation(formulation)
    formulation = formulation or default_formulation(feeder)
    if feeder is None and formulation.name != "copperplate":
        raise InputError(f"formulation {formulation.name!r} needs a feeder (network)")
    table = placed(injections, feeder, periods)
    p_kw, q_kvar = bus_injections(table, phased=formulation.name == "lindist3flow")
    block.network = pyo.Block(doc=f"the grid ({formulation.name}) the market's injections meet")
    handles = formulation.add(
        block.network, feeder, periods, p_kw, q_kvar, period_hours=period_hours
    )
    handles.injections = table
    block.handles = handles
    return handles


def placed(injections: pd.DataFrame, feeder: Feeder | None, periods: Sequence) -> pd.DataFrame:
    """The table with every bus checked and mapped to the feeder's own bus labels.

    Without a feeder the bus is dropped (None); with one, a bus that is not on it is an
    error naming the first owner and bus, and how many rows share the problem.
    """
    missing = [c for c in INJECTION_COLUMNS if c not in injections]
    if missing:
        raise InputError(f"injections: missing column(s) {', '.join(missing)}")
    table = injections.reset_index(drop=True)
    unknown_period = ~table["period"].isin(list(periods))
    if unknown_period.any():
        row = table[unknown_period].iloc[0]
        raise InputError(
            f"{row['owner']}: injection in period {_label(row['period'])}, not a market period"
        )
    if "phase" in table:
        table = table.assign(phase=_phases(table))
    if feeder is None:
        return table.assign(bus=None)
    bus = table["bus"].map(feeder.merged)
    if bus.isna().any():
        bad = table[bus.isna()]
        row = bad.iloc[0]
        more = f" ({len(bad['owner'].unique())} owners in all)" if len(bad) > 1 else ""
        raise InputError(
            f"{row['owner']}: bus {_label(row['bus'])} is not a bus of feeder {feeder.name}{more}"
        )
    return table.assign(bus=bus.astype(feeder.buses.index.dtype))


def _label(bus) -> str:
    if bus is None or (isinstance(bus, float) and np.isnan(bus)):
        return "(none)"
    return repr(bus.item() if isinstance(bus, np.generic) else bus)


def _phases(table: pd.DataFrame) -> pd.Series:
    """The phase column with "abc" where missing; an unknown label names its owner."""
    from gridmarkets.networks.three_phase import connection

    phase = table["phase"].map(connection)
    bad = phase.isna()
    if bad.any():
        row = table[bad].iloc[0]
        raise InputError(
            f"{row['owner']}: phase {row['phase']!r} is not a, b, c or a combination of them"
        )
    return phase


def bus_injections(table: pd.DataFrame, *, phased: bool = False) -> tuple[Mapping, Mapping]:
    """P (kW) and Q (kvar) per (bus, period), or per (bus, phase, period) when ``phased``
    and the table has phases: sums of expressions, or arrays of terms."""
    columns = ["bus", "phase", "period"] if phased and "phase" in table else ["bus", "period"]
    keys = list(zip(*(table[c].tolist() for c in columns), strict=True))
    if "variable" in table:
        variables = table["variable"].tolist()
        q_coef = table.get("q_coef")
        p = LinearInjections(keys, table["p_coef"].to_numpy(float), variables)
        if q_coef is None or not np.any(q_coef.to_numpy(float)):
            return p, {}
        used = np.flatnonzero(q_coef.to_numpy(float))
        q = LinearInjections(
            [keys[k] for k in used], q_coef.to_numpy(float)[used], [variables[k] for k in used]
        )
        return p, q
    return _summed(keys, table["p_kw"]), _summed(keys, table.get("q_kvar"))


def _summed(keys: list, values: pd.Series | None) -> dict:
    out: dict = {}
    if values is None:
        return out
    for key, value in zip(keys, values.tolist(), strict=True):
        if isinstance(value, int | float) and value == 0:
            continue
        out[key] = value if key not in out else out[key] + value
    return out


def check_formulation(formulation: object) -> None:
    """A clear error for an object that does not implement :class:`NetworkFormulation`."""
    if formulation is not None and not isinstance(formulation, NetworkFormulation):
        raise NetworkError(
            f"formulation: {type(formulation).__name__} is not a network formulation "
            "(it needs a name and add(block, feeder, periods, p_kw, q_kvar))"
        )
