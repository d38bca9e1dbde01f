"""What a model's case module tells the one case pipeline (:mod:`gridmarkets.pipeline`).

The pipeline loads the feeder, asks the model's adapter to build, solves, reads the
results through the adapter, runs the AC check on the injections the adapter names and
lets the adapter finish (coalitions, a DSO check, a comparison). A case that is not one
model solve (a rolling horizon, ADMM, bilateral procurement) gives no model and a
``run`` that does the whole case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from gridmarkets.results import Result
from gridmarkets.specs.base import CaseBase

if TYPE_CHECKING:
    import pyomo.environ as pyo

    from gridmarkets.networks import Feeder, NetworkFormulation, NetworkHandles
    from gridmarkets.solvers import Solution

LOSS_MODES = ("none", "linear", "iterate")


def three_phase(case: CaseBase) -> bool:
    """Whether the case clears on a three-phase network (``network.phases: three``)."""
    return case.network is not None and case.network.phases == "three"


@dataclass(frozen=True)
class Injections:
    """Net injections the AC check runs on: kW and kvar, buses x periods, into the grid.

    Rows are buses, or (bus, phase) pairs ("a", "b", "c") for per-phase injections on a
    three-phase feeder (``phased``: the check is pandapower's ``runpp_3ph``).
    ``handles`` are the network formulation that cleared them, when one did: the AC
    check then reports which of its limits the AC flow still violates.
    """

    p_kw: pd.DataFrame
    q_kvar: pd.DataFrame
    handles: NetworkHandles | None = None

    @property
    def phased(self) -> bool:
        """Whether the rows are (bus, phase) pairs."""
        return "phase" in (self.p_kw.index.names or ())

    def phase_keyed(self) -> tuple[dict, dict, list]:
        """Per-phase injections keyed (bus, phase, period) as
        :func:`~gridmarkets.networks.ac_check_3ph` takes them, and the periods."""
        keyed = [
            {key: float(v) for key, v in frame.stack().items()}
            for frame in (self.p_kw, self.q_kvar)
        ]
        return keyed[0], keyed[1], list(self.p_kw.columns)


def handles_injections(handles: NetworkHandles) -> Injections:
    """The injections a network formulation holds (P and Q), as the AC check's input."""
    p, q = handles.injection_values()
    index, columns = handles.feeder.buses.index, list(handles.periods)
    return Injections(
        pd.DataFrame(p, index=index, columns=columns),
        pd.DataFrame(q, index=index, columns=columns),
        handles,
    )


def grid_checks(handles: NetworkHandles) -> Callable[[Result], dict[str, Injections]]:
    """The AC check of a case's one network formulation: its injections, P and Q."""
    return lambda result: {"": handles_injections(handles)}


def table_injections(table: pd.DataFrame) -> Injections:
    """Injections from a result's long table (bus, period, p_kw and, where the model has
    reactive power, q_kvar; without it Q = 0, unity power factor). Rows without a bus
    are left out."""
    table = table.dropna(subset=["bus"])
    if "q_kvar" not in table:
        table = table.assign(q_kvar=0.0)
    p_kw, q_kvar = (
        table.pivot_table(
            index="bus", columns="period", values=column, aggfunc="sum", fill_value=0.0
        )
        for column in ("p_kw", "q_kvar")
    )
    return Injections(p_kw, q_kvar)


def phase_table_injections(table: pd.DataFrame) -> Injections:
    """Per-phase injections from a long table with a ``phase`` column of connections
    ("a", "bc", "abc", ...): a connection to k phases puts a k-th on each, as
    LinDist3Flow reads it. Without ``q_kvar``, Q = 0. Rows without a bus are left out."""
    from gridmarkets.networks.three_phase import CONNECTIONS, PHASES, WEIGHTS, connection

    table = table.dropna(subset=["bus"])
    if "q_kvar" not in table:
        table = table.assign(q_kvar=0.0)
    weights = WEIGHTS[[CONNECTIONS.index(connection(c)) for c in table["phase"]]]
    frames = []
    for k, phase in enumerate(PHASES):
        share = table[["p_kw", "q_kvar"]].mul(weights[:, k], axis=0)
        frames.append(table[["bus", "period"]].assign(phase=phase, **share))
    long = pd.concat(frames, ignore_index=True)
    p_kw, q_kvar = (
        long.pivot_table(
            index=["bus", "phase"], columns="period", values=c, aggfunc="sum", fill_value=0.0
        )
        for c in ("p_kw", "q_kvar")
    )
    return Injections(p_kw, q_kvar)


def no_checks(result: Result) -> dict[str, Injections]:
    """A case without a feeder: nothing for the AC check."""
    return {}


@dataclass
class Built:
    """One case made ready for the pipeline.

    Attributes
    ----------
    model : the one model the pipeline solves; None when ``run`` does the whole case.
    read : the model's results from its solution.
    checks : from the result, the injections the AC check runs on, by name ("" for the
        case's one check; flexibility names its scenarios).
    grid : the grid whose losses ``network.losses: linear`` and ``iterate``
        re-linearise, or for ``linear`` a list of grids (one per scenario); the adapter's
        :meth:`CaseAdapter.losses` offers "iterate" only where there is one grid.
    run : the whole case, for a case that is not one model solve.
    solve_options : options the model's own solve adds (the aggregator's warm start).
    """

    model: pyo.ConcreteModel | None = None
    read: Callable[[Solution], Result] | None = None
    checks: Callable[[Result], dict[str, Injections]] = no_checks
    grid: NetworkHandles | list[NetworkHandles] | None = None
    run: Callable[[dict[str, Any]], Result] | None = None
    solve_options: dict[str, Any] = field(default_factory=dict)


class CaseAdapter(Protocol):
    """How the pipeline builds, reads, checks and finishes one model's cases.

    ``three_phase``: whether the model clears on a three-phase feeder
    (``network.phases: three``, LinDist3Flow); the others refuse such a case.
    """

    three_phase: bool

    def losses(self, case: CaseBase) -> tuple[str, ...]:
        """The values of ``network.losses`` this case supports, "none" first; ``("none",)``
        when no network formulation takes part in the case's solve."""
        ...

    def build(
        self, case: CaseBase, feeder: Feeder | None, formulation: NetworkFormulation | None
    ) -> Built:
        """The case's model built on ``feeder`` (None: no network) with ``formulation``
        (None: the model's default for that feeder)."""
        ...

    def finish(
        self, case: CaseBase, result: Result, feeder: Feeder | None, solve_options: dict
    ) -> None:
        """What the case adds to its result after the solve and the AC check (in place)."""
        ...
