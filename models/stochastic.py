"""Two-stage stochastic programming over :class:`~gridmarkets.scenarios.Scenarios`.

Shared by the stochastic prosumer EMS, community and aggregator. A
:class:`TwoStage` problem is a deterministic builder (one scenario's profiles -> a
Pyomo model), the list of its first-stage variables and its cost. From it:

- :func:`extensive_form`: one Pyomo Block per scenario (the deterministic model moved
  into the block, its objective deactivated), a copy of the first stage
  ``x_first[i]`` tied to every scenario's by non-anticipativity::

      x[s, i] = x_first[i]                                  for every scenario s

  and the risk-adjusted expected cost (:func:`add_objective`)::

      min  sum_s p_s cost_s + w CVaR_alpha(cost)
      CVaR_alpha = eta + 1/(1 - alpha) sum_s p_s u_s,   u_s >= cost_s - eta,  u_s >= 0

  (Rockafellar and Uryasev 2000: at the optimum eta is the alpha value-at-risk and
  CVaR the expected cost in the worst 1 - alpha of the probability).
- :func:`evaluate`: each scenario solved alone, either freely (wait-and-see) or with
  the first stage fixed (the expected-value solution's, or on held-out scenarios).
  Scenarios are independent there, so a ``dask.distributed`` client spreads them over
  its workers (the ``distributed`` extra); without one they run in this process.
- :func:`solve_two_stage`: the stochastic solution and its KPIs (:func:`value_kpis`):
  the risk-adjusted objective of the recourse problem (RP), wait-and-see (WS),
  EVPI = RP - WS, the expected-value solution's (EEV) and VSS = EEV - RP, expected
  cost, CVaR, and out of sample. With the same risk measure on every one,
  WS <= RP <= EEV: the measure is monotone in each scenario's cost, WS's costs are
  each scenario's least, and the expected-value first stage is one RP could choose.

The extensive form is the reference; decomposition (progressive hedging in mpi-sppy)
is not used: benchmarks/bench_stochastic.py measures where the extensive form stops
being quick enough (RESULTS.md "Stochastic").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from gridmarkets.errors import InputError, NoSolutionError
from gridmarkets.scenarios import Scenarios
from gridmarkets.solvers import Solution, solve

__all__ = [
    "Risk",
    "TwoStage",
    "TwoStageSolution",
    "add_objective",
    "cvar",
    "evaluate",
    "extensive_form",
    "first_stage_values",
    "risk_measure",
    "solve_two_stage",
    "stochastic_tables",
    "value_kpis",
]


@dataclass(frozen=True)
class Risk:
    """The CVaR term: ``weight`` (currency per currency of CVaR) at level ``alpha``."""

    weight: float = 0.0
    alpha: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise InputError(f"scenarios.cvar_alpha: {self.alpha} is not in [0, 1)")
        if not (self.weight >= 0.0 and np.isfinite(self.weight)):
            raise InputError(f"scenarios.cvar_weight: {self.weight} is not a number >= 0")


@dataclass(frozen=True)
class TwoStage:
    """A two-stage problem given by its deterministic pieces.

    Attributes
    ----------
    build : one scenario's period x profile table -> the deterministic model of that
        scenario (a ConcreteModel; its objective is ignored here).
    first_stage : a built model (or the block it was moved into) -> its first-stage
        variables, in the same order for every scenario.
    cost : a built model (or block) -> its cost expression (currency).
    """

    build: Callable[[pd.DataFrame], pyo.ConcreteModel]
    first_stage: Callable[[pyo.Block], Sequence[Any]]
    cost: Callable[[pyo.Block], Any]


@dataclass
class TwoStageSolution:
    """The stochastic solution and its KPIs.

    Attributes
    ----------
    model : the solved extensive form (``model.scenario[s]`` holds scenario s).
    solution : its :class:`~gridmarkets.solvers.Solution`.
    first_stage : the first-stage values (RP) and those of the expected-value solution.
    costs : one row per scenario: probability and the cost of the RP, WS and EEV
        solutions (currency).
    out_of_sample : per held-out scenario, the cost of the RP and EEV first stages.
    kpis : :func:`value_kpis`.
    """

    model: pyo.ConcreteModel
    solution: Solution
    first_stage: pd.DataFrame
    costs: pd.DataFrame
    out_of_sample: pd.DataFrame | None
    kpis: dict[str, float]


# --- risk -------------------------------------------------------------------------------


def cvar(costs: Sequence[float], probability: Sequence[float], alpha: float) -> float:
    """CVaR_alpha of a discrete cost distribution (closed form): the least of
    ``eta + 1/(1-alpha) sum_s p_s max(cost_s - eta, 0)`` over eta, attained at a cost."""
    c, p = np.asarray(costs, float), np.asarray(probability, float)
    return float(min(eta + (p * np.maximum(c - eta, 0.0)).sum() / (1.0 - alpha) for eta in c))


def risk_measure(costs: Sequence[float], probability: Sequence[float], risk: Risk) -> float:
    """The objective of a cost distribution: ``E[cost] + weight CVaR_alpha(cost)``."""
    expected = float(np.dot(probability, costs))
    if risk.weight == 0:
        return expected
    return expected + risk.weight * cvar(costs, probability, risk.alpha)


def add_objective(
    m: pyo.Block, costs: Mapping[str, Any], probability: pd.Series, risk: Risk | None = None
) -> None:
    """Expected cost plus the optional CVaR term as ``m.objective`` (minimised).

    Adds ``m.expected_cost``, and with a CVaR weight above 0 ``m.var_eta`` (the
    value-at-risk), ``m.cvar_excess[s]``, ``m.cvar_excess_bound`` and ``m.cvar``.
    ``costs`` maps scenario name -> cost expression (currency).
    """
    risk = risk or Risk()
    names = list(costs)
    m.expected_cost = pyo.Expression(
        expr=sum(float(probability[s]) * costs[s] for s in names),
        doc="sum_s p_s cost_s  (currency)",
    )
    if risk.weight == 0:
        m.objective = pyo.Objective(expr=m.expected_cost, doc="sum_s p_s cost_s  (currency)")
        return
    m.var_eta = pyo.Var(doc="value-at-risk eta at level alpha  (currency)")
    m.cvar_excess = pyo.Var(names, bounds=(0.0, None), doc="u_s >= 0: cost above eta")
    m.cvar_excess_bound = pyo.Constraint(
        names,
        rule=lambda m, s: m.cvar_excess[s] >= costs[s] - m.var_eta,
        doc="u_s >= cost_s - eta  (currency)",
    )
    m.cvar = pyo.Expression(
        expr=m.var_eta
        + sum(float(probability[s]) * m.cvar_excess[s] for s in names) / (1.0 - risk.alpha),
        doc="CVaR = eta + 1/(1 - alpha) sum_s p_s u_s  (currency)",
    )
    m.objective = pyo.Objective(
        expr=m.expected_cost + risk.weight * m.cvar,
        doc="sum_s p_s cost_s + w CVaR  (currency)",
    )


# --- extensive form ---------------------------------------------------------------------


def extensive_form(
    problem: TwoStage, scenarios: Scenarios, risk: Risk | None = None
) -> pyo.ConcreteModel:
    """The deterministic equivalent: one block per scenario, non-anticipativity, and
    :func:`add_objective`'s risk-adjusted expected cost."""
    m = pyo.ConcreteModel(name="extensive_form")
    names = scenarios.names()
    m.SCENARIOS = pyo.Set(initialize=names, doc="scenarios")
    m.scenario = pyo.Block(m.SCENARIOS, doc="one scenario's deterministic model")
    for s in names:
        _move_into(m.scenario[s], problem.build(scenarios.profile(s)))
    width = len(problem.first_stage(m.scenario[names[0]]))
    m.FIRST = pyo.RangeSet(0, width - 1, doc="first-stage decisions")
    m.x_first = pyo.Var(m.FIRST, doc="the first stage every scenario shares")
    copies = {s: list(problem.first_stage(m.scenario[s])) for s in names}
    m.non_anticipativity = pyo.Constraint(
        m.SCENARIOS,
        m.FIRST,
        rule=lambda m, s, i: copies[s][i] == m.x_first[i],
        doc="x[s, i] = x_first[i]: decided before the scenario is known",
    )
    add_objective(m, {s: problem.cost(m.scenario[s]) for s in names}, scenarios.probability, risk)
    return m


def _move_into(block: pyo.Block, model: pyo.ConcreteModel) -> None:
    for objective in model.component_objects(pyo.Objective, descend_into=False):
        objective.deactivate()
    block.transfer_attributes_from(model)


def first_stage_values(problem: TwoStage, model: pyo.Block) -> np.ndarray:
    """The first-stage variables' values of a solved model or block."""
    return np.array([pyo.value(v) for v in problem.first_stage(model)], dtype=float)


# --- per-scenario evaluation ------------------------------------------------------------


def scenario_cost(
    problem: TwoStage,
    profile: pd.DataFrame,
    first_stage: np.ndarray | None = None,
    solve_options: Mapping[str, Any] | None = None,
) -> float:
    """One scenario solved alone: free (wait-and-see) or with the first stage fixed;
    its cost (currency)."""
    model = problem.build(profile)
    if first_stage is not None:
        for var, value in zip(problem.first_stage(model), first_stage, strict=True):
            var.fix(float(value))
    _solve_alone(problem, model, dict(solve_options or {}))
    return float(pyo.value(problem.cost(model)))


def evaluate(
    problem: TwoStage,
    scenarios: Scenarios,
    first_stage: np.ndarray | None = None,
    *,
    client: Any = None,
    solve_options: Mapping[str, Any] | None = None,
) -> pd.Series:
    """Each scenario's cost solved alone (:func:`scenario_cost`), by scenario name.

    ``client``: a ``dask.distributed.Client``; the scenarios are submitted to it as
    futures and gathered (the problem's builder must pickle, as closures over specs
    do with cloudpickle). None: in this process, one after the other.
    """
    names = scenarios.names()
    profiles = [scenarios.profile(s) for s in names]
    if client is None:
        costs = [
            _scenario_cost_named(problem, profile, first_stage, solve_options, s)
            for s, profile in zip(names, profiles, strict=True)
        ]
    else:
        futures = client.map(
            _scenario_cost_named,
            [problem] * len(names),
            profiles,
            [first_stage] * len(names),
            [solve_options] * len(names),
            names,
            pure=False,
        )
        costs = client.gather(futures)
    return pd.Series(costs, index=names, dtype=float, name="cost")


def _scenario_cost_named(problem, profile, first_stage, solve_options, name: str) -> float:
    try:
        return scenario_cost(problem, profile, first_stage, solve_options)
    except NoSolutionError as err:
        raise type(err)(f"scenario {name!r}: {err}") from None


# --- the stochastic solution and its value ----------------------------------------------


def value_kpis(
    probability: pd.Series,
    rp: pd.Series,
    ws: pd.Series,
    eev: pd.Series,
    risk: Risk | None = None,
    out_of_sample: pd.DataFrame | None = None,
) -> dict[str, float]:
    """KPIs from per-scenario costs of the stochastic (RP), wait-and-see (WS) and
    expected-value (EEV) solutions, all with the same risk measure.

    expected_cost (E of RP), objective (RP's risk measure), ws, evpi = objective - ws,
    eev, vss = eev - objective, cvar (of RP's costs at alpha), and with held-out
    scenarios (columns probability, rp, eev) out_of_sample_mean (RP first stage),
    out_of_sample_mean_eev, out_of_sample_cvar.
    """
    risk = risk or Risk()
    p = probability.loc[rp.index].to_numpy()
    objective = risk_measure(rp.to_numpy(), p, risk)
    ws_value = risk_measure(ws.loc[rp.index].to_numpy(), p, risk)
    eev_value = risk_measure(eev.loc[rp.index].to_numpy(), p, risk)
    kpis = {
        "expected_cost": float(np.dot(p, rp.to_numpy())),
        "objective": objective,
        "ws": ws_value,
        "evpi": objective - ws_value,
        "eev": eev_value,
        "vss": eev_value - objective,
        "cvar": cvar(rp.to_numpy(), p, risk.alpha),
        "cvar_alpha": risk.alpha,
        "cvar_weight": risk.weight,
        "scenarios": float(len(rp)),
    }
    if out_of_sample is not None:
        q = out_of_sample["probability"].to_numpy()
        kpis["out_of_sample_mean"] = float(np.dot(q, out_of_sample["rp"]))
        kpis["out_of_sample_mean_eev"] = float(np.dot(q, out_of_sample["eev"]))
        kpis["out_of_sample_cvar"] = cvar(out_of_sample["rp"], q, risk.alpha)
        kpis["out_of_sample_scenarios"] = float(len(out_of_sample))
    return kpis


def solve_two_stage(
    problem: TwoStage,
    scenarios: Scenarios,
    risk: Risk | None = None,
    *,
    out_of_sample: Scenarios | None = None,
    client: Any = None,
    solve_options: Mapping[str, Any] | None = None,
) -> TwoStageSolution:
    """Solve the extensive form and measure its value.

    Solves the recourse problem (RP), each scenario alone (WS), the expected-value
    problem (one scenario: the mean) whose first stage is then fixed on every
    scenario (EEV) and, given held-out scenarios, both first stages on those. The
    per-scenario solves go through :func:`evaluate` (``client``: Dask).
    """
    risk = risk or Risk()
    options = dict(solve_options or {})
    model = extensive_form(problem, scenarios, risk)
    solution = solve(model, **options)
    names = scenarios.names()
    rp = pd.Series({s: pyo.value(problem.cost(model.scenario[s])) for s in names}, dtype=float)
    x_rp = np.array([pyo.value(model.x_first[i]) for i in model.FIRST], dtype=float)
    mean = scenarios.expected()
    mean_model = problem.build(mean.profile("expected"))
    x_eev = _solve_alone(problem, mean_model, options)
    run = partial(evaluate, problem, client=client, solve_options=options)
    ws, eev = run(scenarios, None), run(scenarios, x_eev)
    costs = pd.DataFrame(
        {"probability": scenarios.probability, "rp": rp, "ws": ws, "eev": eev}
    ).rename_axis("scenario")
    held_out = None
    if out_of_sample is not None:
        held_out = pd.DataFrame(
            {
                "probability": out_of_sample.probability,
                "rp": run(out_of_sample, x_rp),
                "eev": run(out_of_sample, x_eev),
            }
        ).rename_axis("scenario")
    kpis = value_kpis(scenarios.probability, rp, ws, eev, risk, held_out)
    first = pd.DataFrame({"rp": x_rp, "eev": x_eev}).rename_axis("decision")
    return TwoStageSolution(model, solution, first, costs, held_out, kpis)


def stochastic_tables(solved: TwoStageSolution) -> dict[str, pd.DataFrame]:
    """The tables every stochastic result has: ``kpis`` (one row), ``scenarios`` (per
    scenario: probability and the rp, ws and eev costs) and, with held-out scenarios,
    ``out_of_sample`` (probability, rp and eev costs)."""
    tables = {
        "kpis": pd.DataFrame([solved.kpis]),
        "scenarios": solved.costs.reset_index(),
    }
    if solved.out_of_sample is not None:
        tables["out_of_sample"] = solved.out_of_sample.reset_index()
    return tables


def _solve_alone(problem: TwoStage, model: pyo.ConcreteModel, options: dict) -> np.ndarray:
    """Solve one scenario's model for its cost alone; its first-stage values."""
    for objective in model.component_objects(pyo.Objective, descend_into=False):
        objective.deactivate()
    model.scenario_objective = pyo.Objective(expr=problem.cost(model), doc="cost (currency)")
    solve(model, **options)
    return first_stage_values(problem, model)
