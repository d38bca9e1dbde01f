"""The one case pipeline: load the feeder, build, solve, read, AC-check, finish.

Written once for every model; what differs between models lives in their adapters
(:class:`gridmarkets.specs.adapter.CaseAdapter`, one per ``gridmarkets.specs.<model>``).
The CLI writes the returned :class:`~gridmarkets.results.Result`; sweeps call
:func:`run_case` per scenario (or a :class:`ReusingRunner`, which keeps the feeder).

Losses (``network.losses``): ``none`` is the lossless LinDistFlow; ``linear`` solves
lossless, linearises the losses in P, Q and v around that solution and solves again
(:func:`gridmarkets.networks.linearise_at_lossless`); ``iterate`` solves, runs
pandapower's AC power flow of the solution, re-linearises there and solves again until
the voltages agree (:func:`gridmarkets.networks.iterate_losses`), and reports the
iterations. A mode the case's model cannot honour is a
:class:`~gridmarkets.errors.CaseError` naming ``network.losses`` when the case file asks
for it; where the default (iterate, see :class:`~gridmarkets.specs.base.NetworkSpec`) is
not available the case runs lossless unless its file asks for ``linear``, and the
summary says which mode ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gridmarkets import registry
from gridmarkets.case_terms import in_case_terms, labeler
from gridmarkets.errors import CaseError, InfeasibleError
from gridmarkets.log import StageTimer
from gridmarkets.results import Result, add_timestamps
from gridmarkets.solvers.diagnose import LABELER_ATTR
from gridmarkets.specs.adapter import Built, CaseAdapter, Injections
from gridmarkets.specs.base import CaseBase, check_buses, check_model_size


def run_case(
    case: CaseBase, solve_options: dict[str, Any] | None = None, *, feeder: Any = None
) -> Result:
    """Run a validated case: the CLI's and the sweeps' entry point.

    Parameters
    ----------
    case : a case validated by :func:`gridmarkets.case.validate` (or ``load_case``).
    solve_options : :func:`gridmarkets.solvers.solve`'s options (time_limit, ...).
    feeder : the case's Feeder when the caller already has it (None: load it).

    Returns
    -------
    Result, with ``ac_check`` holding pandapower's AC check of the model's own bus
    injections (P and Q) on a feeder, and which losses mode ran, and ``timings`` the
    wall time of each stage (load, build, solve, ac_check, finish; seconds).
    """
    solve_options = dict(solve_options or {})
    run = CaseRun.start(case, feeder)
    try:
        built = run.build()
        result, iteration = run.solve(built, solve_options)
        return run.complete(built, result, iteration, solve_options)
    except InfeasibleError as err:  # a model the case module built itself (an
        # aggregator's stand-alone schedules, a coalition's re-solve)
        err.diagnosis = in_case_terms(err.diagnosis, case)
        raise


def present(case: CaseBase, result: Result, feeder: Any = None) -> Result:
    """Make the result readable (in place): the case's currency, a ``timestamp`` column
    after ``period`` in every table when the case has ``horizon.start``, and the plots
    of :func:`gridmarkets.plots.plots_for`."""
    from gridmarkets import plots

    result.currency = case.currency
    add_timestamps(result.tables, case.horizon.timestamps())
    result.plots = plots.plots_for(result, feeder)
    return result


@dataclass(frozen=True)
class CaseRun:
    """One case on its way through the pipeline: its adapter, feeder and losses mode, and
    the wall time of each stage so far (``timer``)."""

    case: CaseBase
    adapter: CaseAdapter
    feeder: Any
    losses: str | None
    timer: StageTimer = field(default_factory=StageTimer)

    @classmethod
    def start(cls, case: CaseBase, feeder: Any = None) -> CaseRun:
        """Find the case's adapter, load its feeder (unless given), settle its losses."""
        adapter = registry.adapter(case.model)
        three = case.network is not None and case.network.phases == "three"
        if three and not adapter.three_phase:
            raise CaseError(
                f"network.phases: 'three' is not available for {case.model} cases (this "
                "model reads the feeder balanced; the LEM, prosumer, community and "
                "flexibility models clear on three-phase feeders)"
            )
        losses = loss_mode(case, adapter)  # before the feeder: a bad mode fails fast
        timer = StageTimer()
        if feeder is None and case.network is not None:
            with timer.stage("load", f"loading the network {_network_name(case)}"):
                feeder = load_feeder(case)
        if feeder is not None:
            check_buses(case, feeder)
        check_model_size(case, feeder)
        return cls(case, adapter, feeder, losses, timer)

    def build(self) -> Built:
        """The adapter's build, with the formulation of the losses mode; the model
        carries its case's labels, so a diagnosis names the case's elements."""
        with self.timer.stage("build", f"building the {self.case.model} model"):
            built = self.adapter.build(
                self.case, self.feeder, formulation(self.feeder, self.losses)
            )
        if built.model is not None:
            setattr(built.model, LABELER_ATTR, labeler(self.case, built.model))
        return built

    def solve(self, built: Built, solve_options: dict[str, Any]) -> tuple[Result, Any]:
        """Solve the built model (iterating the losses when asked) and read its results.

        Returns the Result and the :class:`~gridmarkets.networks.LossIteration` (None
        unless the losses mode is "iterate").
        """
        with self.timer.stage("solve", "solving"):
            return self._solve(built, solve_options)

    def _solve(self, built: Built, solve_options: dict[str, Any]) -> tuple[Result, Any]:
        if built.model is None:
            return built.run(solve_options), None
        options = {**built.solve_options, **solve_options}
        if self.losses == "iterate":
            from gridmarkets.networks import iterate_losses

            iteration = iterate_losses(
                built.model,
                built.grid,
                tolerance_pu=self.case.network.losses_tolerance_pu,
                max_iterations=self.case.network.losses_max_iterations,
                solve_options=options,
            )
            return built.read(iteration.solution), iteration
        from gridmarkets.solvers import solve

        if self.losses == "linear":
            from gridmarkets.networks import linearise_at_lossless

            return built.read(
                linearise_at_lossless(built.model, built.grid, solve_options=options)
            ), None
        return built.read(solve(built.model, **options)), None

    def complete(
        self, built: Built, result: Result, iteration: Any, solve_options: dict[str, Any]
    ) -> Result:
        """The AC check, what the adapter adds (coalitions, DSO check, ...), then the
        result made readable (:func:`present`); the stages' wall times go to
        ``result.timings``."""
        if self.feeder is not None:
            with self.timer.stage("ac_check", "checking with pandapower's AC power flow"):
                check(result, built, self.feeder, self.losses, iteration)
        with self.timer.stage("finish"):
            self.adapter.finish(self.case, result, self.feeder, solve_options)
            present(self.case, result, self.feeder)
        result.timings = dict(self.timer.seconds)
        logging.getLogger(__name__).debug("stage times (s): %s", result.timings)
        return result


def _network_name(case: CaseBase) -> str:
    locator = case.network.locator()
    return str(locator.get("code") or locator.get("name") or locator.get("path") or "")


def load_feeder(case: CaseBase):
    """The case's Feeder (cached on disk by :func:`gridmarkets.networks.load`), or None;
    with ``network.phases: three`` its :class:`~gridmarkets.networks.ThreePhaseFeeder`."""
    if case.network is None:
        return None
    from gridmarkets.networks import load, three_phase_feeder

    feeder = load(case.network.locator())
    return three_phase_feeder(feeder) if case.network.phases == "three" else feeder


def loss_mode(case: CaseBase, adapter: CaseAdapter) -> str | None:
    """The losses mode the case runs with; None without a network.

    Raises
    ------
    CaseError : the case file asks for a mode the case's model does not support.
    """
    if case.network is None:
        return None
    supported = adapter.losses(case)
    asked = case.network.losses
    if asked in supported:
        return asked
    if "losses" in case.network.model_fields_set:
        why = ""
        if case.network.phases == "three":
            why = "; a three-phase network (network.phases: three) runs lossless LinDist3Flow"
        raise CaseError(
            f"network.losses: {asked!r} is not available for this {case.model} case "
            f"(it supports {', '.join(supported)}{why})"
        )
    return "none"


def formulation(feeder, losses: str | None):
    """The network formulation for the losses mode; None (the model's default) without
    a feeder or without losses.

    A three-phase feeder (``network.phases: three``): LinDist3Flow, lossless.

    ``linear`` and ``iterate``: LinDistFlow with losses linearised around the flat point
    (no flow, 1 pu), where the loss terms vanish, so the first solve is the lossless
    one; ``linear`` then re-linearises once at that solution, ``iterate`` at
    pandapower's AC flow of each solution (:meth:`CaseRun.solve`).
    """
    if feeder is None:
        return None
    from gridmarkets.networks import LinDist3Flow, LinDistFlow, OperatingPoint, ThreePhaseFeeder

    if isinstance(feeder, ThreePhaseFeeder):
        return LinDist3Flow()  # lossless: loss_mode refuses anything else
    if losses in (None, "none"):
        return None

    return LinDistFlow(losses="linear", point=OperatingPoint.flat(feeder, 1))


def check(result: Result, built: Built, feeder, losses: str | None, iteration: Any) -> None:
    """Set ``result.ac_check``: one AC check per named injections, and the losses mode.

    A single check ("") is the summary itself; several (flexibility's scenarios) are
    summaries by name. With ``iterate``, ``loss_iterations`` lists every round and
    ``losses_converged`` says whether the voltages agreed within the tolerance.
    """
    checks = built.checks(result) if feeder is not None else {}
    if not checks:
        return
    checked = {name: run_check(feeder, inj) for name, inj in checks.items()}
    result.tables.update(network_tables({name: ac for name, (_, ac) in checked.items()}))
    summaries = {name: summary for name, (summary, _) in checked.items()}
    summary = summaries.pop("") if set(summaries) == {""} else summaries
    summary["losses"] = losses
    if iteration is not None:
        summary["loss_iterations"] = iteration.iterations.to_dict(orient="records")
        summary["losses_converged"] = iteration.converged
    result.ac_check = summary


def network_tables(checks: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """``buses`` and ``branches``: the AC checks' per-element tables, like pandapower's
    ``res_bus`` and ``res_line``, each quantity linear and AC (:class:`~gridmarkets.
    networks.ACCheck`; per phase on a three-phase feeder). Several checks (the
    flexibility market's scenarios) are stacked under a first column ``scenario``."""
    tables = {}
    for kind in ("buses", "branches"):
        if set(checks) == {""}:
            tables[kind] = getattr(checks[""], kind).copy()
            continue
        frames = [getattr(ac, kind).assign(scenario=name) for name, ac in checks.items()]
        table = pd.concat(frames, ignore_index=True)
        tables[kind] = table[["scenario", *table.columns.drop("scenario")]]
    return tables


def check_summary(feeder, injections: Injections) -> dict[str, Any]:
    """pandapower's AC check of the injections, naming every violation of a limit the
    linear model enforced (:func:`run_check`'s summary)."""
    return run_check(feeder, injections)[0]


def run_check(feeder, injections: Injections) -> tuple[dict[str, Any], Any]:
    """pandapower's AC check of the injections: its summary, naming every violation of
    a limit the linear model enforced, and the check itself (:class:`~gridmarkets.
    networks.ACCheck`, or its three-phase sibling).

    Keys beyond :meth:`~gridmarkets.networks.ACCheck.summary`'s: ``enforced_limits``
    (what LinDistFlow held the solution to: voltage bounds at its buses below the root
    and thermal limits of its rated branches, or none when no LinDistFlow cleared the
    injections), ``enforced_violations`` (every AC violation of one of those limits,
    each naming its element, period, value and limit), ``enforced_violations_count``
    and, where a LinDistFlow cleared them, ``model_voltage_error_pu`` (max |V of the
    model - V of AC| over buses and periods).
    """
    if _is_three_phase(injections.handles) or injections.phased:
        return check_3ph(feeder, injections)
    from gridmarkets.networks import ac_check

    ac = ac_check(feeder, injections.p_kw, injections.q_kvar)
    violations = ac.violations()
    enforced = enforced_mask(feeder, injections.handles, violations)
    summary = ac.summary()
    summary["enforced_limits"] = enforced_limits(feeder, injections.handles)
    summary["enforced_violations_count"] = int(enforced.sum())
    summary["enforced_violations"] = violations[enforced].to_dict(orient="records")
    if _is_lindistflow(injections.handles):
        add_model_voltages(ac.buses, model_voltages(injections.handles, ac.buses))
        summary["model_voltage_error_pu"] = model_voltage_error(ac.buses)
    return summary, ac


def check_3ph(feeder, injections: Injections) -> tuple[dict[str, Any], Any]:
    """The summary and the check itself of pandapower's ``runpp_3ph`` check of per-phase
    injections (:func:`~gridmarkets.networks.ac_check_3ph`).

    The summary: per-phase voltages, errors and loadings, the unbalance
    (:meth:`~gridmarkets.networks.three_phase.ThreePhaseACCheck.summary`), with
    ``enforced_limits``, ``enforced_violations`` as :func:`run_check` has them (a voltage
    limit holds on every phase, a thermal limit a third of the rating per phase).

    The injections are those a LinDist3Flow cleared (``injections.handles``; then also
    ``model_voltage_error_pu``, max |V of the model - V of AC| over buses, phases and
    periods), or per (bus, phase) rows (``injections.phased``: schedules or a baseline
    no network formulation held, so no limit was enforced)."""
    from gridmarkets.networks import ac_check_3ph

    handles = injections.handles
    if handles is None:
        ac = ac_check_3ph(feeder, *injections.phase_keyed())
    else:
        p_kw, q_kvar = handles.phase_injection_values()
        ac = ac_check_3ph(handles.feeder, p_kw, q_kvar, handles.periods)
    violations = ac.violations()
    enforced = enforced_mask(feeder, handles, violations)
    summary = ac.summary()
    summary["enforced_limits"] = enforced_limits(feeder, handles)
    summary["enforced_violations_count"] = int(enforced.sum())
    summary["enforced_violations"] = violations[enforced].to_dict(orient="records")
    if handles is not None:
        keys = ac.buses[["bus", "phase", "period"]].itertuples(index=False, name=None)
        add_model_voltages(
            ac.buses, np.sqrt(np.maximum([handles.voltage_sq[key].value for key in keys], 0.0))
        )
        summary["model_voltage_error_pu"] = model_voltage_error(ac.buses)
    return summary, ac


def _is_three_phase(handles) -> bool:
    return handles is not None and handles.formulation == "lindist3flow"


def _is_lindistflow(handles) -> bool:
    return handles is not None and handles.voltage_limit is not None


def enforced_elements(feeder, handles) -> tuple[set, set]:
    """The buses whose voltage and the branches, as (kind, pandapower element), whose
    loading the linear model held within limits (both empty without a LinDistFlow)."""
    if not _is_lindistflow(handles):
        return set(), set()
    rated = feeder.branches.loc[list(handles.block.RATED_BRANCHES)]
    branches = set(zip(rated["kind"], rated["element"].astype(int), strict=True))
    return {key[0] for key in handles.voltage_limit}, branches


def enforced_limits(feeder, handles) -> dict[str, Any]:
    """Which of the feeder's limits the linear model enforced (JSON-able)."""
    buses, branches = enforced_elements(feeder, handles)
    return {
        "formulation": "none" if handles is None else handles.formulation,
        "voltage_buses": sorted(buses),
        "thermal_branches": [f"{kind} {element}" for kind, element in sorted(branches)],
        "thermal_polygon_sides": handles.polygon_sides if buses else None,
    }


def enforced_mask(feeder, handles, violations: pd.DataFrame) -> pd.Series:
    """True for each AC violation of a limit the linear model enforced."""
    buses, branches = enforced_elements(feeder, handles)
    keys = zip(violations["element"], violations["index"], strict=True)
    return pd.Series(
        [
            (index in buses) if kind == "bus" else ((kind, int(index)) in branches)
            for kind, index in keys
        ],
        index=violations.index,
        dtype=bool,
    )


def model_voltages(handles, buses: pd.DataFrame) -> np.ndarray:
    """The model's own voltage sqrt(v_sq) (pu) at each (bus, period) row of ``buses``."""
    from gridmarkets.networks.handles import value_array

    rows, periods = list(handles.feeder.buses.index), list(handles.periods)
    v_sq = value_array(handles.voltage_sq, rows, periods)
    v = pd.DataFrame(np.sqrt(np.maximum(v_sq, 0.0)), index=rows, columns=periods).stack()
    return v.reindex(pd.MultiIndex.from_frame(buses[["bus", "period"]])).to_numpy()


def add_model_voltages(buses: pd.DataFrame, v_pu: np.ndarray) -> None:
    """Put the model's own voltages (``v_pu_model``) next to the linear ones (in place):
    where the model iterated its losses they differ from the lossless ``v_pu_linear``."""
    buses.insert(buses.columns.get_loc("v_pu_linear") + 1, "v_pu_model", v_pu)


def model_voltage_error(buses: pd.DataFrame) -> float:
    """max |V of the model - V of AC| over buses (and phases) and periods (pu)."""
    return float((buses["v_pu_model"] - buses["v_pu_ac"]).abs().max())


class ReusingRunner:
    """:func:`run_case` that keeps the Feeder between calls while the network is the same.

    Loading a SimBench feeder is most of a small case's time on a feeder. A model's
    adapter may keep more (the LEM's keeps its built LP: see
    :class:`gridmarkets.specs.lem.ReusingRunner`). Not thread-safe: one per worker thread.
    ``reused`` is False: this runner builds every model.
    """

    reused = False

    def __init__(self) -> None:
        self._network: tuple[str | None, Any] | None = None

    def __call__(self, case: CaseBase, solve_options: dict[str, Any]) -> Result:
        return run_case(case, solve_options, feeder=self.feeder(case))

    def feeder(self, case: CaseBase):
        """The case's Feeder, loaded once per network locator."""
        key = None
        if case.network is not None:
            key = repr([*sorted(case.network.locator().items()), case.network.phases])
        if self._network is None or self._network[0] != key:
            self._network = (key, load_feeder(case))
        return self._network[1]
