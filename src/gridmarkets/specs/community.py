"""Case files of the energy community (``model: community``)."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveFloat, model_validator

from gridmarkets.models import prosumer
from gridmarkets.models.assets import Profile
from gridmarkets.models.community import (
    METHODS,
    CommunityGame,
    ConnectionSpec,
    SharedAssetSpec,
    build,
    results,
    schedule_stochastic,
    shares_of,
    split,
)
from gridmarkets.models.prosumer import Objective, PricesSpec, ProsumerSpec
from gridmarkets.results import Result
from gridmarkets.specs.adapter import LOSS_MODES, Built, grid_checks, three_phase
from gridmarkets.specs.base import CaseBase, Spec
from gridmarkets.specs.prosumer import check_phases
from gridmarkets.specs.scenarios import ScenariosSpec, case_scenarios, check_two_stage


class AllocationSpec(Spec):
    """How the case splits the community's cost among its members."""

    methods: list[Literal["shapley", "nucleolus", "proportional", "equal"]] = Field(
        default_factory=lambda: list(METHODS)
    )
    proportional_to: Literal["consumption", "shares", "equal"] = Field(
        "consumption",
        description="the proportional rule's weight: consumption in the community's "
        "schedule, the mean of the members' shares of the shared assets, or equal",
    )
    exact_up_to: int = Field(12, ge=1, le=16, description="exact Shapley up to this size")
    samples: int = Field(200, ge=2, description="permutations when sampled")
    seed: int | None = 0
    workers: int = Field(1, ge=1, description="processes solving coalitions")


class CaseSpec(CaseBase):
    """An energy community case (``model: community``)."""

    model: Literal["community"]
    mode: Literal["grid", "islanded"] = "grid"
    objective: Objective = "cost"
    prices: PricesSpec | None = Field(None, description="tariff at the point of connection")
    connection: ConnectionSpec = Field(default_factory=ConnectionSpec)
    carbon_kg_per_mwh: Profile = Field(0.0, description="grid carbon intensity per period")
    value_of_lost_load_per_mwh: PositiveFloat = 10_000.0
    members: dict[str, ProsumerSpec] = Field(min_length=1)
    shared: dict[str, SharedAssetSpec] = Field(default_factory=dict)
    allocation: AllocationSpec | None = Field(None, description="split the cost (optional)")
    scenarios: ScenariosSpec | None = Field(
        None, description="decide the connection's day-ahead exchange against scenarios"
    )

    @model_validator(mode="after")
    def _consistent(self) -> CaseSpec:
        n = self.horizon.periods
        if self.mode == "grid" and self.prices is None:
            raise ValueError("prices: required when mode is 'grid'")
        if self.scenarios is not None:
            check_two_stage(self, ("allocation", "network"))
            if self.scenarios.source == "simbench":
                raise ValueError("scenarios.source: 'simbench' is for prosumer cases")
        for name in ("import_price", "export_price"):
            value = getattr(self.prices, name) if self.prices else None
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"prices.{name}: {len(value)} values for {n} periods")
        for mid, home in self.members.items():
            prosumer.check_home(home, n, f"members.{mid}")
            if self.network is not None and home.bus is None:
                raise ValueError(f"members.{mid}.bus: required on a network")
            check_phases(home, self, f"members.{mid}")
        for aid, asset in self.shared.items():
            check_phases(asset, self, f"shared.{aid}")
            unknown = set(asset.owners) - set(self.members)
            if unknown:
                raise ValueError(f"shared.{aid}.owners: {sorted(unknown)} are not members")
            if self.network is not None and asset.bus is None:
                raise ValueError(f"shared.{aid}.bus: required on a network")
        unknown = set(self.connection.shares) - set(self.members)
        if unknown:
            raise ValueError(f"connection.shares: {sorted(unknown)} are not members")
        return self


def case_options(case: CaseSpec, feeder=None, formulation=None) -> dict[str, Any]:
    """:func:`build`'s keyword arguments for a case."""
    return {
        "periods": case.horizon.periods,
        "period_hours": case.horizon.period_hours,
        "mode": case.mode,
        "objective": case.objective,
        "connection": case.connection,
        "carbon_kg_per_mwh": case.carbon_kg_per_mwh,
        "network": feeder,
        "formulation": formulation,
        "value_of_lost_load_per_mwh": case.value_of_lost_load_per_mwh,
        "timestamps": case.horizon.timestamps(),
    }


class CommunityAdapter:
    """Community cases: one schedule; with ``allocation`` the cost is then split among
    the members (the table ``allocation``; KPIs ``community_value`` and
    ``in_core_<rule>``, 1 or 0). On a network the AC check runs on the injections the
    community's LinDistFlow held (P and Q); on a three-phase network (``network.phases:
    three``) its LinDist3Flow's, per phase, with pandapower's ``runpp_3ph``.

    Losses: every mode on a network; ``none`` with ``allocation``, whose coalitions
    are re-solves of the lossless schedule (their values would otherwise mix loss models).
    """

    three_phase = True  # network.phases: three: LinDist3Flow and runpp_3ph (lossless)

    def losses(self, case: CaseSpec) -> tuple[str, ...]:
        """Every mode on a single-phase network without allocation; otherwise none."""
        single = case.network is not None and not three_phase(case)
        return LOSS_MODES if single and case.allocation is None else ("none",)

    def build(self, case: CaseSpec, feeder, formulation) -> Built:
        if case.scenarios is not None:
            return Built(run=partial(run_stochastic, case))
        if three_phase(case):  # the model's own LinDist3Flow, as its coalitions get it
            formulation = None
        options = case_options(case, feeder, formulation)
        m = build(case.members, case.shared, case.prices, **options)
        if feeder is None:
            return Built(m, partial(results, m))
        return Built(m, partial(results, m), grid_checks(m.handles), grid=m.handles)

    def finish(self, case: CaseSpec, result: Result, feeder, solve_options: dict) -> None:
        if case.allocation is not None:
            _add_allocation(result, case, case_options(case, feeder), solve_options)


ADAPTER = CommunityAdapter()


def _add_allocation(result: Result, case: CaseSpec, options, solve_options) -> None:
    spec = case.allocation
    build_options = {k: v for k, v in options.items() if k != "timestamps"}
    game = CommunityGame(
        case.members,
        case.shared,
        case.prices,
        workers=spec.workers,
        solve_options=solve_options,
        build_options=build_options,
    )
    game.values[game.grand] = result.kpis["objective"]
    weights = _proportional_weights(case, result, spec.proportional_to)
    outcome = split(
        game,
        spec.methods,
        weights=weights,
        exact_up_to=spec.exact_up_to,
        samples=spec.samples,
        seed=spec.seed,
    )
    result.tables["allocation"] = outcome.table
    result.kpis["community_value"] = outcome.value
    result.kpis["coalitions_solved"] = len(game.values) - 1
    for name, check in outcome.core.items():
        if check is not None:
            result.kpis[f"in_core_{name}"] = float(check.in_core)


def _proportional_weights(case: CaseSpec, result: Result, rule: str) -> dict[str, float]:
    if rule == "consumption":
        return dict(zip(result.members["member"], result.members["consumption_kwh"], strict=True))
    if rule == "shares" and case.shared:
        everyone = list(case.members)
        shares = [shares_of(a.owners, everyone) for a in case.shared.values()]
        return {i: float(np.mean([s[i] for s in shares])) for i in everyone}
    return dict.fromkeys(case.members, 1.0)


def run_stochastic(case: CaseSpec, solve_options: dict[str, Any]) -> Result:
    """A case with ``scenarios:``: the community's day-ahead exchange decided against
    the scenarios (:func:`schedule_stochastic`), the KPIs of its value as tables."""
    spec = case.scenarios
    shared_pv = {a: s.pv.profile_kw for a, s in case.shared.items() if s.pv is not None}
    deciding, held_out = case_scenarios(spec, case.members, case.horizon, shared_pv=shared_pv)
    options = case_options(case)
    for name in ("network", "formulation", "timestamps"):
        options.pop(name)
    return schedule_stochastic(
        case.members,
        case.shared,
        case.prices,
        deciding,
        spec.imbalance,
        risk=spec.risk(),
        out_of_sample=held_out,
        solve_options=solve_options,
        **options,
    )
