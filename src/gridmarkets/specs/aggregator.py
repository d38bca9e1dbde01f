"""Case files of the aggregator (``model: aggregator``)."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from gridmarkets.models import assets, prosumer
from gridmarkets.models.aggregator import Control, HomeSpec, IncentiveSpec, build, results
from gridmarkets.models.prosumer import PricesSpec
from gridmarkets.models.stochastic_aggregator import CommitmentOfferSpec, schedule
from gridmarkets.results import Result
from gridmarkets.specs.adapter import Built, grid_checks, no_checks
from gridmarkets.specs.base import CaseBase, NumberOrNaN
from gridmarkets.specs.prosumer import check_phases
from gridmarkets.specs.scenarios import ScenariosSpec, case_scenarios


class AggregatorScenariosSpec(ScenariosSpec):
    """The scenarios of an aggregator case: its homes' load and PV. Deviations from the
    commitment cost ``deviation_penalty_per_mwh``; there are no imbalance prices."""

    imbalance: None = Field(
        None, description="not for aggregator cases: deviation_penalty_per_mwh prices them"
    )


class CaseSpec(CaseBase):
    """An aggregator case (``model: aggregator``): homes, tariff, commitment, incentive."""

    model: Literal["aggregator"]
    control: Control = "incentive"
    method: Literal["bigm", "strong_duality"] = "bigm"
    prices: PricesSpec
    commitment_kw: assets.Profile | list[NumberOrNaN] | None = Field(
        None, description="committed net injection (kW); NaN: none (required without offer)"
    )
    commitment_kvar: assets.Profile | list[NumberOrNaN] | None = Field(
        None, description="committed reactive injection (kvar); null or NaN: none"
    )
    incentive: IncentiveSpec = Field(default_factory=IncentiveSpec)
    deviation_penalty_per_mwh: NonNegativeFloat = 500.0
    reactive_penalty_per_mvarh: NonNegativeFloat | None = Field(
        None, description="cost of a Mvarh off the reactive commitment (default: the MWh one)"
    )
    fairness_weight: NonNegativeFloat = 0.0
    big_m: PositiveFloat = Field(
        10.0, description="bound on the followers' multipliers where none is derived"
    )
    derive_big_m: bool = Field(
        True, description="bound the multipliers by the homes' prices and devices where derivable"
    )
    prosumers: dict[str, HomeSpec] = Field(min_length=1)
    offer: CommitmentOfferSpec | None = Field(
        None, description="a commitment to choose, paid per MWh (first stage; scenarios only)"
    )
    scenarios: AggregatorScenariosSpec | None = Field(
        None, description="decide the incentive (and offered commitment) against scenarios"
    )

    @model_validator(mode="after")
    def _consistent(self) -> CaseSpec:
        n = self.horizon.periods
        if self.commitment_kw is None and self.offer is None:
            raise ValueError("commitment_kw: required (or an offer, with scenarios)")
        if self.scenarios is not None:
            if self.network is not None:
                raise ValueError("scenarios: the stochastic aggregator has no network limits")
            if self.scenarios.source == "simbench":
                raise ValueError("scenarios.source: 'simbench' is for prosumer cases")
        elif self.offer is not None:
            raise ValueError("offer: needs scenarios: (the commitment is chosen against them)")
        for name in ("commitment_kw", "commitment_kvar"):
            values = getattr(self, name)
            if isinstance(values, list) and len(values) != n:
                raise ValueError(f"{name}: {len(values)} values for {n} periods")
        groups = self.incentive.groups
        if groups is not None and len(groups) != n:
            raise ValueError(f"incentive.groups: {len(groups)} values for {n} periods")
        for h, home in self.prosumers.items():
            prosumer.check_home(home, n, f"prosumers.{h}")
            if self.network is not None and home.bus is None:
                raise ValueError(f"prosumers.{h}.bus: required on a network")
            check_phases(home, self, f"prosumers.{h}")  # the aggregator reads homes balanced
        return self


class AggregatorAdapter:
    """Aggregator cases: one (bilevel, single-level after KKT) model, solved from the
    stand-alone schedules (``warm_start``). On a network the AC check runs on the
    injections its LinDistFlow held (P and Q).

    Losses: ``none`` or ``linear`` on a network; not ``iterate``, which would re-solve
    the bilevel MILP once per round.
    """

    three_phase = False  # reads a feeder balanced (network.phases: one)

    def losses(self, case: CaseSpec) -> tuple[str, ...]:
        return ("none", "linear") if case.network is not None else ("none",)

    def build(self, case: CaseSpec, feeder, formulation) -> Built:
        if case.scenarios is not None:
            return Built(run=partial(run_stochastic, case))
        m = build(
            case.prosumers,
            case.prices,
            case.commitment_kw,
            network=feeder,
            formulation=formulation,
            derive_big_m=case.derive_big_m,
            **leader_options(case),
        )
        checks = no_checks if feeder is None else grid_checks(m.handles)
        grid = None if feeder is None else m.handles
        return Built(m, partial(results, m), checks, grid, solve_options={"warm_start": True})

    def finish(self, case: CaseSpec, result: Result, feeder, solve_options: dict) -> None:
        """Nothing to add."""


ADAPTER = AggregatorAdapter()


def run_stochastic(case: CaseSpec, solve_options: dict[str, Any]) -> Result:
    """A case with ``scenarios:``: the incentive and the offered commitment decided
    against the homes' scenarios (:func:`gridmarkets.models.stochastic_aggregator
    .schedule`), with the KPIs of their value."""
    spec = case.scenarios
    deciding, held_out = case_scenarios(spec, case.prosumers, case.horizon)
    return schedule(
        case.prosumers,
        case.prices,
        deciding,
        risk=spec.risk(),
        out_of_sample=held_out,
        solve_options=solve_options,
        commitment_kw=case.commitment_kw,
        offer=case.offer,
        **leader_options(case),
    )


def leader_options(case: CaseSpec) -> dict[str, Any]:
    """The case's leader and KKT options, as both the deterministic and the stochastic
    aggregator take them."""
    return {
        "commitment_kvar": case.commitment_kvar,
        "periods": case.horizon.periods,
        "period_hours": case.horizon.period_hours,
        "control": case.control,
        "incentive": case.incentive,
        "deviation_penalty_per_mwh": case.deviation_penalty_per_mwh,
        "reactive_penalty_per_mvarh": case.reactive_penalty_per_mvarh,
        "fairness_weight": case.fairness_weight,
        "method": case.method,
        "big_m": case.big_m,
    }
