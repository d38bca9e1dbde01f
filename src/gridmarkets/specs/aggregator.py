"""Case files of the aggregator (``model: aggregator``)."""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from gridmarkets.models import assets, prosumer
from gridmarkets.models.aggregator import Control, HomeSpec, IncentiveSpec, build, results
from gridmarkets.models.prosumer import PricesSpec
from gridmarkets.results import Result
from gridmarkets.specs.adapter import Built, grid_checks, no_checks
from gridmarkets.specs.base import CaseBase, NumberOrNaN
from gridmarkets.specs.prosumer import check_phases


class CaseSpec(CaseBase):
    """An aggregator case (``model: aggregator``): homes, tariff, commitment, incentive."""

    model: Literal["aggregator"]
    control: Control = "incentive"
    method: Literal["bigm", "strong_duality"] = "bigm"
    prices: PricesSpec
    commitment_kw: assets.Profile = Field(description="committed net injection (kW)")
    commitment_kvar: assets.Profile | list[NumberOrNaN] | None = Field(
        None, description="committed reactive injection (kvar); null or NaN: none"
    )
    incentive: IncentiveSpec = Field(default_factory=IncentiveSpec)
    deviation_penalty_per_mwh: NonNegativeFloat = 500.0
    reactive_penalty_per_mvarh: NonNegativeFloat | None = Field(
        None, description="cost of a Mvarh off the reactive commitment (default: the MWh one)"
    )
    fairness_weight: NonNegativeFloat = 0.0
    big_m: PositiveFloat = Field(10.0, description="bound on the followers' multipliers")
    prosumers: dict[str, HomeSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> CaseSpec:
        n = self.horizon.periods
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
        m = build(
            case.prosumers,
            case.prices,
            case.commitment_kw,
            commitment_kvar=case.commitment_kvar,
            periods=case.horizon.periods,
            period_hours=case.horizon.period_hours,
            control=case.control,
            incentive=case.incentive,
            deviation_penalty_per_mwh=case.deviation_penalty_per_mwh,
            reactive_penalty_per_mvarh=case.reactive_penalty_per_mvarh,
            fairness_weight=case.fairness_weight,
            network=feeder,
            formulation=formulation,
            method=case.method,
            big_m=case.big_m,
        )
        checks = no_checks if feeder is None else grid_checks(m.handles)
        grid = None if feeder is None else m.handles
        return Built(m, partial(results, m), checks, grid, solve_options={"warm_start": True})

    def finish(self, case: CaseSpec, result: Result, feeder, solve_options: dict) -> None:
        """Nothing to add."""


ADAPTER = AggregatorAdapter()
