"""Case files of the prosumer EMS (``model: prosumer``)."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveFloat, model_validator

from gridmarkets.models import assets
from gridmarkets.models.assets import Profile
from gridmarkets.models.prosumer import (
    Objective,
    PricesSpec,
    ProsumerSpec,
    _feeder_profiles,
    build,
    bus_injections,
    check_home,
    connection_injections,
    resolve_feeder_profiles,
    results,
    rolling_horizon,
    schedule,
    schedule_stochastic,
)
from gridmarkets.pipeline import check_summary
from gridmarkets.results import Result
from gridmarkets.specs.adapter import (
    LOSS_MODES,
    Built,
    Injections,
    grid_checks,
    phase_table_injections,
    three_phase,
)
from gridmarkets.specs.base import CaseBase, Spec
from gridmarkets.specs.scenarios import ScenariosSpec, case_scenarios, check_two_stage


class RollingSpec(Spec):
    """Model-predictive operation of a single home (see :func:`rolling_horizon`).

    The home's own ``load_kw`` and ``pv.profile_kw`` are what actually happens; the
    EMS plans with these forecasts (e.g. last week's rows of the same CSV).
    """

    window: int = Field(ge=1, description="periods per plan")
    forecast_load_kw: Profile = Field(description="load forecast per period (kW)")
    forecast_pv_kw: Profile | None = Field(
        None, description="available PV forecast per period (kW); required with PV"
    )


class CaseSpec(CaseBase):
    """A prosumer EMS case (``model: prosumer``): one or more independent homes."""

    model: Literal["prosumer"]
    mode: Literal["grid", "islanded"] = "grid"
    objective: Objective = "cost"
    coordination: Literal["none", "lindistflow"] = Field(
        "none",
        description="on a network: 'none' schedules every home alone (then checks the "
        "feeder); 'lindistflow' schedules them together within the feeder's limits "
        "(LinDist3Flow, per phase, on network.phases: three)",
    )
    prices: PricesSpec | None = Field(None, description="required when mode is grid")
    value_of_lost_load_per_mwh: PositiveFloat = 10_000.0
    prosumers: dict[str, ProsumerSpec] = Field(min_length=1)
    rolling: RollingSpec | None = Field(
        None, description="operate the (single, grid-connected) home model-predictively"
    )
    scenarios: ScenariosSpec | None = Field(
        None, description="decide the day-ahead exchange against scenarios (two-stage)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> CaseSpec:
        n = self.horizon.periods
        if self.rolling is not None:
            if len(self.prosumers) != 1 or self.mode != "grid" or self.network is not None:
                raise ValueError("rolling: needs one grid-connected home and no network")
            home = next(iter(self.prosumers.values()))
            if home.pv is not None and self.rolling.forecast_pv_kw is None:
                raise ValueError("rolling.forecast_pv_kw: required for a home with PV")
        if self.mode == "grid" and self.prices is None:
            raise ValueError("prices: required when mode is 'grid'")
        if self.scenarios is not None:
            check_two_stage(self, ("rolling", "coordination"))
        if self.prices is not None:
            for name in ("import_price", "export_price"):
                value = getattr(self.prices, name)
                if isinstance(value, list) and len(value) != n:
                    raise ValueError(f"prices.{name}: {len(value)} values for {n} periods")
        if self.coordination != "none" and self.network is None:
            raise ValueError(f"coordination: {self.coordination!r} needs a network")
        for pid, home in self.prosumers.items():
            check_home(home, n, f"prosumers.{pid}", self.horizon.period_hours)
            if self.network is not None and home.bus is None:
                raise ValueError(f"prosumers.{pid}.bus: required on a network")
            if self.network is None and _feeder_profiles(home):
                raise ValueError(f"prosumers.{pid}: a feeder profile needs a network")
            check_phases(home, self, f"prosumers.{pid}")
        return self


def stated_phases(owner: Spec) -> list[str]:
    """The fields of a home (or shared asset) that name a phase: "phase", "pv.phase",
    "appliances.<name>.phase", ..."""
    names = ("pv", "battery", "ev", "heat_pump")
    devices = {name: getattr(owner, name, None) for name in names}
    devices.update({f"appliances.{k}": a for k, a in getattr(owner, "appliances", {}).items()})
    named = ["phase"] if owner.phase is not None else []
    return named + [f"{k}.phase" for k, d in devices.items() if d is not None and d.phase]


def check_phases(owner: Spec, case: CaseBase, path: str) -> None:
    """A phase is only meaningful on a three-phase network: elsewhere an error naming it."""
    named = stated_phases(owner)
    if named and not three_phase(case):
        raise ValueError(
            f"{path}.{named[0]}: needs a three-phase network (network.phases: three); a "
            "single-phase network reads every device balanced"
        )


def case_options(case: CaseSpec) -> dict[str, Any]:
    """:func:`build`'s keyword arguments for a case."""
    return {
        "periods": case.horizon.periods,
        "period_hours": case.horizon.period_hours,
        "mode": case.mode,
        "objective": case.objective,
        "value_of_lost_load_per_mwh": case.value_of_lost_load_per_mwh,
        "timestamps": case.horizon.timestamps(),
    }


class ProsumerAdapter:
    """Prosumer cases: one schedule, except ``rolling`` (model-predictive, many solves).

    On a network, feeder profiles are read for the horizon's dates first. Uncoordinated
    (``coordination: none``) the homes are scheduled without the network and the AC
    check shows what their schedules do to the feeder (no limit was enforced);
    coordinated (``lindistflow``) they are scheduled together within the network
    formulation (every losses mode), the AC check runs on its injections, the KPI
    ``cost_uncoordinated`` is the independent schedules' cost and ``ac_check`` holds
    their check under ``uncoordinated``.
    """

    three_phase = True  # network.phases: three: LinDist3Flow and runpp_3ph (lossless)

    def losses(self, case: CaseSpec) -> tuple[str, ...]:
        """Every mode coordinated on a single-phase feeder; otherwise none."""
        coordinated = case.network is not None and case.coordination == "lindistflow"
        return LOSS_MODES if coordinated and not three_phase(case) else ("none",)

    def build(self, case: CaseSpec, feeder, formulation) -> Built:
        if case.rolling is not None:
            return Built(run=partial(run_rolling, case))
        if case.scenarios is not None:
            return Built(run=partial(run_stochastic, case, feeder))
        homes = case.prosumers
        if feeder is None:
            m = build(homes, case.prices, **case_options(case))
            return Built(m, partial(results, m))
        homes = resolve_feeder_profiles(homes, feeder, case.horizon)
        if case.coordination == "none":
            m = build(homes, case.prices, **case_options(case))
            return Built(m, partial(results, m), partial(_schedule_injections, case))
        m = build(homes, case.prices, network=feeder, formulation=formulation, **case_options(case))
        return Built(m, partial(results, m), grid_checks(m.handles), grid=m.handles)

    def finish(self, case: CaseSpec, result: Result, feeder, solve_options: dict) -> None:
        if feeder is None or case.coordination == "none" or case.scenarios is not None:
            return
        homes = resolve_feeder_profiles(case.prosumers, feeder, case.horizon)
        alone = schedule(homes, case.prices, solve_options=solve_options, **case_options(case))
        result.kpis["cost_uncoordinated"] = alone.kpis["cost"]
        checks = _schedule_injections(case, alone)[""]
        result.ac_check["uncoordinated"] = check_summary(feeder, checks)


def _schedule_injections(case: CaseSpec, result: Result) -> dict[str, Injections]:
    """The homes' net injections (no reactive power: unity power factor); per bus and
    phase on a three-phase network."""
    if three_phase(case):
        return {"": phase_table_injections(connection_injections(result, case.prosumers))}
    p_kw = bus_injections(result)
    return {"": Injections(p_kw, 0.0 * p_kw)}


ADAPTER = ProsumerAdapter()


def run_rolling(case: CaseSpec, solve_options: dict[str, Any]) -> Result:
    """A case's single home operated by :func:`rolling_horizon` with its forecasts."""
    ((pid, home),) = case.prosumers.items()
    n, dt = case.horizon.periods, case.horizon.period_hours
    spec = case.rolling

    def values(profile, path: str) -> np.ndarray:
        return assets.profile_values(profile, n, dt, path)

    actual = {"load_kw": values(home.load_kw, f"prosumers.{pid}.load_kw")}
    forecast = {"load_kw": values(spec.forecast_load_kw, "rolling.forecast_load_kw")}
    if home.pv is not None:
        actual["pv_kw"] = values(home.pv.profile_kw, f"prosumers.{pid}.pv.profile_kw")
        forecast["pv_kw"] = values(spec.forecast_pv_kw, "rolling.forecast_pv_kw")
    result = rolling_horizon(
        home,
        case.prices,
        forecast,
        actual,
        spec.window,
        period_hours=dt,
        timestamps=case.horizon.timestamps(),
        solve_options=solve_options,
    )
    for table in result.tables.values():
        if "prosumer" in table:
            table["prosumer"] = pid
    return result


def run_stochastic(case: CaseSpec, feeder, solve_options: dict[str, Any]) -> Result:
    """A case with ``scenarios:``: its homes' day-ahead exchange decided against the
    scenarios (:func:`schedule_stochastic`), the KPIs of its value as tables."""
    homes = case.prosumers
    if feeder is not None:
        homes = resolve_feeder_profiles(homes, feeder, case.horizon)
    spec = case.scenarios
    deciding, held_out = case_scenarios(spec, homes, case.horizon, feeder, case.prosumers)
    options = case_options(case)
    options.pop("timestamps")
    return schedule_stochastic(
        homes,
        case.prices,
        deciding,
        spec.imbalance,
        risk=spec.risk(),
        out_of_sample=held_out,
        solve_options=solve_options,
        **options,
    )
