"""What a network formulation hands back to the market that called it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression

from gridmarkets.networks.feeder import Feeder


class LinearInjections(Mapping):
    """Injections (kW or kvar) at (bus, period) given as terms, the way large markets have
    them: term k adds ``coefs[k] * variables[k]`` to the injection at ``keys[k]``.

    A network formulation may read the arrays (LinDistFlow does); to everything else
    this is a mapping from (bus, period) to a LinearExpression, built when read.

    Parameters
    ----------
    keys : the (bus, period) of each term.
    coefs : the coefficient of each term.
    variables : the Pyomo variable of each term.
    """

    def __init__(self, keys: list, coefs, variables: list):
        self.index: dict = {}
        self.rows = np.fromiter(
            (self.index.setdefault(key, len(self.index)) for key in keys), np.int64, len(keys)
        )
        self.coefs = np.asarray(coefs, dtype=float)
        self.variables = np.empty(len(variables), dtype=object)
        self.variables[:] = variables
        self._order = np.argsort(self.rows, kind="stable")
        self._ends = np.cumsum(np.bincount(self.rows, minlength=len(self.index)))

    def __getitem__(self, key) -> LinearExpression:
        k = self.index[key]
        terms = self._order[(self._ends[k - 1] if k else 0) : self._ends[k]]
        return LinearExpression(
            [MonomialTermExpression((float(self.coefs[t]), self.variables[t])) for t in terms]
        )

    def __iter__(self) -> Iterator:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def values_by_key(self) -> np.ndarray:
        """The injections' values at the variables' current values, in key order."""
        values = np.array([v.value for v in self.variables], dtype=float)
        return np.bincount(self.rows, weights=self.coefs * values, minlength=len(self.index))


@dataclass
class NetworkHandles:
    """The components a network formulation added, by meaning.

    Attributes
    ----------
    formulation : "lindistflow" or "copperplate".
    block : the Pyomo block the components live on.
    active_power_balance : indexed by (bus, period) (LinDistFlow) or period
        (CopperPlate); ``net injections + inflow - outflow == 0``, so its dual is the
        cost of one more unit of demand at the bus.
    reactive_power_balance, voltage_sq, p_flow, q_flow, voltage_limit, thermal_limit :
        LinDistFlow's components (None for CopperPlate); flows and squared voltages in
        per unit; ``voltage_limit`` (bus, period) and ``thermal_limit`` (branch,
        direction, period) are ranged rows, so the sign of a dual says which side binds.
    polygon : (sides/2 x 2) array of the (cos, sin) normals of the thermal polygon's
        pairs of opposite sides (direction k of ``thermal_limit``).
    polygon_sides : the polygon's number of sides N (its rows are S cos(pi/N) out).
    losses : the loss linearisation's mutable parameters by name: a, b, c, d of
        ``ell = a P + b Q + d v_from + c`` (branch, period), or None without losses.
    loss_voltage : "linear" or "frozen" (d held at 0) with losses, else None.
    p_kw, q_kvar : the injections the market supplied, by (bus, period) (a mapping).
    injections : the market's long table (owner, bus, period, ...) when it came through
        :func:`~gridmarkets.networks.attach_grid`.
    """

    formulation: str
    feeder: Feeder | None
    periods: list
    s_base_kva: float
    period_hours: float
    block: pyo.Block
    active_power_balance: pyo.Constraint
    reactive_power_balance: pyo.Constraint | None = None
    voltage_sq: pyo.Var | None = None
    p_flow: pyo.Var | None = None
    q_flow: pyo.Var | None = None
    voltage_limit: pyo.Constraint | None = None
    thermal_limit: pyo.Constraint | None = None
    polygon: np.ndarray | None = None
    polygon_sides: int | None = None
    losses: dict[str, pyo.Param] | None = None
    loss_voltage: str | None = None
    p_kw: Mapping = field(default_factory=dict, repr=False)
    q_kvar: Mapping = field(default_factory=dict, repr=False)
    injections: Any = field(default=None, repr=False)

    def per_mwh(self) -> float:
        """Factor from a balance dual (currency per pu and period) to currency/MWh."""
        return 1000.0 / (self.s_base_kva * self.period_hours)

    def injection_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Solved net injections (kW, kvar) as (bus x period) arrays in feeder order."""
        row = {bus: k for k, bus in enumerate(self.feeder.buses.index)}
        column = {t: k for k, t in enumerate(self.periods)}
        values = []
        for table in (self.p_kw, self.q_kvar):
            array = np.zeros((len(row), len(column)))
            if isinstance(table, LinearInjections) and len(table):
                cells = np.array([(row[bus], column[t]) for bus, t in table])
                array[cells[:, 0], cells[:, 1]] = table.values_by_key()  # keys are distinct
            else:
                for (bus, t), expr in table.items():
                    array[row[bus], column[t]] += pyo.value(expr)
            values.append(array)
        return values[0], values[1]


def value_array(component: Any, rows: list, periods: list) -> np.ndarray:
    """Values of a component indexed (row, period) as a (rows x periods) array."""
    return np.array([[pyo.value(component[r, t]) for t in periods] for r in rows], dtype=float)


def kept(injections: Mapping) -> Mapping:
    """What handles keep of a market's injections: arrays as they are, else a copy."""
    return injections if isinstance(injections, LinearInjections) else dict(injections)
