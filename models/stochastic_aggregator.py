"""The aggregator under uncertainty: a two-stage stochastic bilevel problem.

The aggregator of :mod:`gridmarkets.models.aggregator` decides before it knows its
homes' PV and load. Its decisions split in two stages:

- first stage, once for all scenarios: the incentive ``pi[g]`` per tariff group and,
  when it is offered a commitment (``offer``), the committed net injection ``C[t]``;
- second stage, per scenario ``s`` (its own loads and PV): each home's response to the
  incentive (its own EMS, replaced by its KKT conditions; one follower per home and
  scenario) and the deviations from the commitment, with their penalties.

Each scenario's model (:func:`build`) holds the first stage on the model itself and
the second stage in ``model.recourse``, built by the deterministic aggregator's own
block builders (:mod:`gridmarkets.models.aggregator`). Its cost (minimising, currency)::

    cost_s = sum_h income[s,h] + c_dev sum_t |dev[s,t]| dt/1000 + w_fair spread[s]
             - sum_t r[t] C[t] dt/1000                       (commitment paid; offer only)

every home paid on its net injection above its own stand-alone baseline *in that
scenario*. :func:`two_stage` hands it to :mod:`gridmarkets.models.stochastic`, whose
extensive form ties the scenarios' first stages together (non-anticipativity) and
minimises ``sum_s p_s cost_s + w CVaR_alpha(cost)``; :func:`schedule` adds the
wait-and-see cost, the expected-value solution's (first stage decided on the mean
scenario, evaluated on every scenario), EVPI, VSS and an out-of-sample evaluation on
scenarios not used to decide. With one scenario of probability 1 and a fixed
commitment it is the deterministic aggregator (objective and incentives).

No network: the stochastic aggregator has no grid limits (a case with both is refused).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import Field, model_validator

from gridmarkets.errors import InputError
from gridmarkets.models import aggregator, assets, prosumer
from gridmarkets.models.aggregator import Control, HomeSpec, IncentiveSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.models.stochastic import (
    Risk,
    TwoStage,
    TwoStageSolution,
    solve_two_stage,
    stochastic_tables,
)
from gridmarkets.results import Result
from gridmarkets.scenarios import Scenarios
from gridmarkets.solvers import kkt, record_build_time
from gridmarkets.specs.base import NumberOrNaN, Spec

SCENARIO_PROFILES = ("load_kw", "pv_kw")  # per home: "<home>.load_kw", "<home>.pv_kw"


class CommitmentOfferSpec(Spec):
    """A commitment the aggregator may sell: it chooses the committed net injection
    ``C[t]`` (kW, into the grid) and is paid ``price_per_mwh`` for it."""

    price_per_mwh: assets.Profile | list[NumberOrNaN] = Field(
        description="payment per MWh committed, per period (currency/MWh); NaN: no "
        "commitment offered in that period"
    )
    min_kw: float = Field(0.0, description="least commitment (kW)")
    max_kw: float = Field(10.0, description="largest commitment (kW)")
    levels: list[float] | None = Field(
        None, description="a menu of commitment levels (kW); one is chosen per period"
    )

    @model_validator(mode="after")
    def _order(self) -> CommitmentOfferSpec:
        aggregator.check_range_or_levels(self, "min_kw", "max_kw")
        return self


# --- build ------------------------------------------------------------------------------


def build(
    prosumers: Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec,
    profile: pd.DataFrame | None = None,
    *,
    commitment_kw: assets.Profile | None = None,
    commitment_kvar: assets.Profile | None = None,
    offer: CommitmentOfferSpec | None = None,
    periods: int = 24,
    period_hours: float = 1.0,
    control: Control = "incentive",
    incentive: IncentiveSpec | None = None,
    deviation_penalty_per_mwh: float = 500.0,
    reactive_penalty_per_mvarh: float | None = None,
    fairness_weight: float = 0.0,
    method: kkt.Method = "bigm",
    big_m: float = 10.0,
) -> pyo.ConcreteModel:
    """Build one scenario's aggregator model: the first stage and its recourse.

    :func:`two_stage` hands it to :mod:`gridmarkets.models.stochastic`, which ties the
    scenarios' first stages together in the extensive form.

    Parameters
    ----------
    prosumers, prices, commitment_kw, commitment_kvar, periods, period_hours, control,
    incentive, deviation_penalty_per_mwh, reactive_penalty_per_mvarh, fairness_weight,
    method, big_m : as :func:`gridmarkets.models.aggregator.build` (no network).
    profile : the scenario's period x profile table, columns ``<home>.load_kw`` and
        ``<home>.pv_kw`` (None: the specs' own profiles); a home's profile the table
        does not give stays the spec's.
    offer : a commitment to choose (first stage), in the periods its price covers; a
        period may have a fixed ``commitment_kw`` or an offer, not both.

    Returns
    -------
    The model: the first stage (``model.incentive_per_mwh``, ``model.offer_kw``,
    ``model.offer_revenue``), ``model.recourse`` (the homes as followers, the portfolio
    and the deviations: the deterministic aggregator's blocks), ``model.cost`` and the
    objective ``model.total_cost``.
    """
    started = time.perf_counter()
    homes = prosumer.as_mapping(prosumers)
    specs = scenario_homes(homes, profile, periods, period_hours)
    m = pyo.ConcreteModel(name="stochastic_aggregator")
    m.PERIODS = pyo.RangeSet(0, periods - 1, doc="periods")
    m.period_hours, m.control = period_hours, control
    aggregator._add_commitment(
        m, np.nan if commitment_kw is None else commitment_kw, commitment_kvar
    )
    _add_offer(m, offer)
    if control == "incentive":
        aggregator._add_incentive(m, incentive or IncentiveSpec())
    m.recourse = pyo.Block(doc="the scenario's homes, portfolio and deviations")
    penalty_q = (
        deviation_penalty_per_mwh
        if reactive_penalty_per_mvarh is None
        else reactive_penalty_per_mvarh
    )
    _add_recourse(m, m.recourse, specs, prices, deviation_penalty_per_mwh, penalty_q)
    _add_cost(m, method, big_m, fairness_weight)
    record_build_time(m, time.perf_counter() - started)
    return m


def scenario_homes(
    homes: Mapping[str, ProsumerSpec],
    profile: pd.DataFrame | None,
    periods: int,
    period_hours: float,
) -> dict[str, HomeSpec]:
    """The homes of one scenario: each spec with the scenario's load and PV profiles,
    checked as the aggregator's followers (see :func:`aggregator.build`)."""
    profile = pd.DataFrame() if profile is None else profile
    known = {f"{h}.{p}" for h in homes for p in SCENARIO_PROFILES}
    unknown = [c for c in profile.columns if c not in known]
    if unknown:
        raise InputError(
            f"scenarios: profile {unknown[0]!r} is not a home's load_kw or pv_kw "
            f"(homes: {', '.join(homes)})"
        )
    if len(profile.columns) and len(profile) != periods:
        raise InputError(f"scenarios: {len(profile)} periods for {periods} in the horizon")
    specs = {}
    for h, spec in homes.items():
        update = {}
        if f"{h}.load_kw" in profile:
            update["load_kw"] = [float(v) for v in profile[f"{h}.load_kw"]]
        if f"{h}.pv_kw" in profile:
            if spec.pv is None:
                raise InputError(f"scenarios: profile '{h}.pv_kw' but prosumers.{h} has no pv")
            pv = [float(v) for v in profile[f"{h}.pv_kw"]]
            update["pv"] = spec.pv.model_copy(update={"profile_kw": pv})
        specs[h] = spec.model_copy(update=update)
    return aggregator._followers_specs(specs, periods, period_hours)


def _add_offer(m: pyo.ConcreteModel, offer: CommitmentOfferSpec | None) -> None:
    """The first-stage commitment C[t] and its payment, in the periods the offer covers."""
    n, dt = len(m.PERIODS), m.period_hours
    price = (
        np.full(n, np.nan)
        if offer is None
        else assets.profile_values(offer.price_per_mwh, n, dt, "offer.price_per_mwh")
    )
    both = [t for t in m.COMMITTED if np.isfinite(price[t])]
    if both:
        raise InputError(
            f"offer.price_per_mwh: period {both[0]} already has a fixed commitment_kw; "
            "give NaN there"
        )
    m.OFFERED = pyo.Set(
        initialize=[t for t in range(n) if np.isfinite(price[t])],
        doc="periods whose commitment is chosen (first stage)",
    )
    m.offer_price_per_mwh = pyo.Param(
        m.OFFERED, initialize={t: price[t] for t in m.OFFERED}, doc="currency/MWh"
    )
    if offer is not None and offer.levels is not None:
        m.OFFER_LEVELS = pyo.Set(initialize=range(len(offer.levels)), doc="commitment levels")
        m.offer_level_chosen = pyo.Var(
            m.OFFERED, m.OFFER_LEVELS, domain=pyo.Binary, doc="z[t,k]: level k chosen in t"
        )
        m.one_offer_level = pyo.Constraint(
            m.OFFERED,
            rule=lambda m, t: sum(m.offer_level_chosen[t, k] for k in m.OFFER_LEVELS) == 1,
            doc="sum_k z[t,k] = 1",
        )
        m.offer_kw = pyo.Expression(
            m.OFFERED,
            rule=lambda m, t: sum(
                offer.levels[k] * m.offer_level_chosen[t, k] for k in m.OFFER_LEVELS
            ),
            doc="C[t] = sum_k level[k] z[t,k]  (kW)",
        )
    else:
        bounds = (0.0, 0.0) if offer is None else (offer.min_kw, offer.max_kw)
        m.offer_kw = pyo.Var(
            m.OFFERED, bounds=bounds, initialize=0.0, doc="commitment: C_min <= C[t] <= C_max (kW)"
        )
    m.offer_revenue = pyo.Expression(
        expr=sum(m.offer_price_per_mwh[t] * m.offer_kw[t] for t in m.OFFERED) * dt / 1000.0,
        doc="sum_t r[t] C[t] dt / 1000  (currency; a committed import pays)",
    )


def _add_recourse(
    m: pyo.ConcreteModel,
    b: pyo.Block,
    homes: dict[str, HomeSpec],
    prices: PricesSpec,
    penalty_per_mwh: float,
    penalty_per_mvarh: float,
) -> None:
    """The second stage on block ``b``, built as the deterministic model's with the
    first stage (incentive, commitment) read from ``m``."""
    n, dt = len(m.PERIODS), m.period_hours
    b.PERIODS = pyo.RangeSet(0, n - 1, doc="periods")
    b.PROSUMERS = pyo.Set(initialize=list(homes), doc="homes")
    b.specs, b.mode, b.period_hours, b.control = homes, "grid", dt, m.control
    b.standalone_cost, baseline = aggregator._standalone(homes, prices, n, dt)
    b.baseline_kw = pyo.Param(
        b.PROSUMERS, b.PERIODS, initialize=baseline, doc="stand-alone net injection (kW)"
    )
    prosumer.add_prices(b, prices, "grid")
    b.COMMITTED = pyo.Set(initialize=sorted([*m.COMMITTED, *m.OFFERED]), doc="committed P")
    b.commitment_kw = pyo.Expression(
        b.COMMITTED,
        rule=lambda b, t: m.commitment_kw[t] if t in m.COMMITTED else m.offer_kw[t],
        doc="committed P: fixed or chosen in the first stage (kW)",
    )
    b.COMMITTED_Q = pyo.Set(initialize=list(m.COMMITTED_Q), doc="committed Q")
    b.commitment_kvar = pyo.Expression(
        b.COMMITTED_Q, rule=lambda b, t: m.commitment_kvar[t], doc="committed Q (kvar)"
    )
    if m.control == "incentive":
        b.incentive_per_mwh = pyo.Expression(
            b.PERIODS, rule=lambda b, t: m.incentive_per_mwh[t], doc="first-stage pi[t]"
        )
    b.home = pyo.Block(b.PROSUMERS, doc="one home: devices, connection, balance, cost")
    for h, spec in homes.items():
        aggregator._add_follower(b, b.home[h], spec)
    aggregator._add_portfolio(b, penalty_per_mwh, penalty_per_mvarh)


def _add_cost(m: pyo.ConcreteModel, method: kkt.Method, big_m: float, fairness: float) -> None:
    """The followers' KKT conditions, the recourse cost and the scenario's total cost."""
    b = m.recourse
    if m.control == "incentive":
        b.followers = kkt.reformulate(
            m, [b.home[h] for h in b.PROSUMERS], method=method, big_m=big_m
        )
        b.cost = pyo.Expression(
            expr=aggregator._bilevel_cost_terms(b, fairness),
            doc="sum_h income[h] + deviation cost + w_fair (gain_max - gain_min)  (currency)",
        )
    else:
        b.followers = []
        b.cost = pyo.Expression(
            expr=aggregator._full_control_cost_terms(b),
            doc="sum_h (cost[h] - standalone[h]) + deviation cost  (currency)",
        )
    m.cost = pyo.Expression(
        expr=b.cost - m.offer_revenue,
        doc="cost = recourse cost - sum_t r[t] C[t] dt/1000  (currency)",
    )
    m.total_cost = pyo.Objective(expr=m.cost, doc="min cost  (currency)")


def first_stage_vars(m: pyo.Block) -> list[Any]:
    """The first-stage variables of a model (or of its block in the extensive form):
    the Vars declared on it directly — the incentive (per group, or its level
    binaries) and the chosen commitment; every second-stage Var lives in ``recourse``."""
    return list(m.component_data_objects(pyo.Var, descend_into=False))


def two_stage(
    prosumers: Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec,
    **build_options: Any,
) -> TwoStage:
    """The stochastic aggregator as a :class:`~gridmarkets.models.stochastic.TwoStage`:
    :func:`build` per scenario profile, :func:`first_stage_vars`, ``model.cost``."""
    return TwoStage(
        build=partial(build, prosumers, prices, **build_options),
        first_stage=first_stage_vars,
        cost=scenario_cost,
    )


def scenario_cost(m: pyo.Block) -> Any:
    """One scenario's cost: ``model.cost`` (a module function, so that Dask pickles it)."""
    return m.cost


# --- solve and report -------------------------------------------------------------------


def schedule(
    prosumers: Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec,
    scenarios: Scenarios,
    *,
    risk: Risk | None = None,
    out_of_sample: Scenarios | None = None,
    client: Any = None,
    solve_options: Mapping[str, Any] | None = None,
    **build_options: Any,
) -> Result:
    """Solve the extensive form and report it with its value KPIs.

    :func:`gridmarkets.models.stochastic.solve_two_stage` on :func:`two_stage`: the
    stochastic solution (RP), wait-and-see (WS), the expected-value solution's
    expected cost (EEV), EVPI, VSS, CVaR and, given ``out_of_sample`` scenarios, both
    first stages evaluated there (``client``: a Dask client for those solves).

    ``build_options`` are :func:`build`'s keyword arguments (but ``profile``);
    ``solve_options`` are :func:`gridmarkets.solvers.solve`'s. The MILPs start from
    the zero incentive (``warm_start``), where every home keeping its baseline is
    feasible.
    """
    problem = two_stage(prosumers, prices, **build_options)
    options = {"warm_start": True, **dict(solve_options or {})}
    solved = solve_two_stage(
        problem,
        scenarios,
        risk,
        out_of_sample=out_of_sample,
        client=client,
        solve_options=options,
    )
    return results(solved)


def results(solved: TwoStageSolution) -> Result:
    """Tables and KPIs of a solved stochastic aggregator, with the followers verified.

    Tables
    ------
    kpis, scenarios, out_of_sample : :func:`gridmarkets.models.stochastic.stochastic_tables`.
    first_stage : period, incentive_per_mwh (NaN under full control), commitment_kw
        (fixed or chosen; NaN where none), of the stochastic solution.
    portfolio, power, prosumers : the deterministic aggregator's tables
        (:func:`gridmarkets.models.aggregator.results`), per scenario.
    verify : scenario, prosumer, value, optimum, gap, at_bound — each home re-solved
        alone in its scenario at the incentives found (bilevel only).
    """
    m = solved.model
    blocks = {s: m.scenario[s] for s in m.SCENARIOS}
    checks = [
        (s, h, check)
        for s, b in blocks.items()
        if b.recourse.followers
        for h, check in zip(
            b.recourse.PROSUMERS,
            kkt.verify(b, [f.block for f in b.recourse.followers]),
            strict=True,
        )
    ]
    tables = {
        **stochastic_tables(solved),
        "first_stage": _first_stage_table(next(iter(blocks.values()))),
        "portfolio": _per_scenario(blocks, aggregator._portfolio_table),
        "power": _per_scenario(blocks, aggregator._power_table),
        "prosumers": _per_scenario(blocks, aggregator._prosumer_table),
        "verify": pd.DataFrame(
            [(s, h, c.value, c.optimum, c.gap, "; ".join(c.at_bound)) for s, h, c in checks],
            columns=["scenario", "prosumer", "value", "optimum", "gap", "at_bound"],
        ),
    }
    kpis = {
        **solved.kpis,
        "max_follower_gap": max((abs(c.gap) for _, _, c in checks), default=0.0),
        "multipliers_at_big_m": int(sum(len(c.at_bound) for _, _, c in checks)),
    }
    return Result("aggregator_stochastic", tables, kpis, solved.solution)


def _per_scenario(blocks: Mapping[str, pyo.Block], table) -> pd.DataFrame:
    frames = [table(b.recourse).assign(scenario=s) for s, b in blocks.items()]
    frame = pd.concat(frames, ignore_index=True)
    return frame[["scenario", *[c for c in frame.columns if c != "scenario"]]]


def _first_stage_table(m: pyo.Block) -> pd.DataFrame:
    rows = []
    for t in m.PERIODS:
        incentive = pyo.value(m.incentive_per_mwh[t]) if m.control == "incentive" else np.nan
        committed = (
            m.commitment_kw[t] if t in m.COMMITTED else m.offer_kw[t] if t in m.OFFERED else np.nan
        )
        rows.append((t, float(incentive), float(pyo.value(committed))))
    return pd.DataFrame(rows, columns=["period", "incentive_per_mwh", "commitment_kw"])
