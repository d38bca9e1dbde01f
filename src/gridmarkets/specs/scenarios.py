"""The ``scenarios:`` section of prosumer and community cases (two-stage under uncertainty).

A case with ``scenarios:`` is solved by the model's ``schedule_stochastic``: the
day-ahead exchange is decided against the scenarios, the devices follow in each one.
Its own profiles are the forecast; the scenarios come from

- ``source: forecast``: the case's profiles plus normal errors, AR(1)-correlated in
  time, with standard deviation ``std_kw + std_fraction x forecast`` per profile kind
  (``load_kw``, ``pv_kw``), floored at 0;
- ``source: simbench``: one scenario per day around ``horizon.start`` from the
  SimBench profiles of the network (prosumer cases whose homes read ``feeder:``
  profiles; the days' profiles at the same buses and scales);
- ``source: csv``: a file in the long format of
  :meth:`gridmarkets.scenarios.Scenarios.from_csv`.

``n`` scenarios decide (reduced to ``reduce_to`` representatives when given) and
``out_of_sample`` more, drawn from the same source after them, only evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, model_validator

from gridmarkets.errors import InputError
from gridmarkets.models import assets
from gridmarkets.models.assets import FeederProfile
from gridmarkets.models.prosumer import ImbalanceSpec, ProsumerSpec, start_step
from gridmarkets.models.stochastic import Risk
from gridmarkets.scenarios import Scenarios
from gridmarkets.specs.base import Spec

KINDS = ("load_kw", "pv_kw")


class ScenariosSpec(Spec):
    """Where the scenarios come from, how many, the imbalance prices and the risk."""

    source: Literal["forecast", "simbench", "csv"] = "forecast"
    n: PositiveInt = Field(20, description="scenarios that decide (simbench: days)")
    reduce_to: PositiveInt | None = Field(None, description="representatives kept (k-means)")
    seed: int = Field(0, description="seed of the errors and the reduction")
    std_kw: dict[Literal["load_kw", "pv_kw"], NonNegativeFloat] = Field(
        default_factory=dict, description="forecast error std per profile kind (kW)"
    )
    std_fraction: dict[Literal["load_kw", "pv_kw"], NonNegativeFloat] = Field(
        default_factory=dict, description="forecast error std as a fraction of the forecast"
    )
    rho: float = Field(0.0, gt=-1.0, lt=1.0, description="AR(1) correlation of errors")
    csv: str | None = Field(None, description="scenario file (source: csv)")
    imbalance: ImbalanceSpec
    cvar_weight: NonNegativeFloat = Field(0.0, description="weight of the CVaR term")
    cvar_alpha: float = Field(0.95, ge=0.0, lt=1.0, description="CVaR level")
    out_of_sample: NonNegativeInt = Field(0, description="held-out scenarios evaluated")

    @model_validator(mode="after")
    def _source_fields(self) -> ScenariosSpec:
        if (self.source == "csv") != (self.csv is not None):
            raise ValueError("csv: given exactly when source is 'csv'")
        if self.source == "forecast" and not (self.std_kw or self.std_fraction):
            raise ValueError("std_kw or std_fraction: needed for forecast errors")
        return self

    def risk(self) -> Risk:
        """The CVaR term."""
        return Risk(self.cvar_weight, self.cvar_alpha)


def check_two_stage(case: Any, without: tuple[str, ...]) -> None:
    """A case with ``scenarios:`` is grid-connected, minimises cost and has none of the
    fields in ``without`` set (or ``coordination`` other than "none")."""
    if case.mode != "grid":
        raise ValueError("scenarios: needs mode: grid (the day-ahead exchange is decided)")
    if case.objective != "cost":
        raise ValueError("scenarios: needs objective: cost")
    for name in without:
        value = getattr(case, name)
        if value is not None and value != "none":
            raise ValueError(f"scenarios: cannot be combined with {name}")


def case_scenarios(
    spec: ScenariosSpec,
    homes: dict[str, ProsumerSpec],
    horizon: Any,
    feeder: Any = None,
    raw_homes: dict[str, ProsumerSpec] | None = None,
    shared_pv: dict[str, Any] | None = None,
) -> tuple[Scenarios, Scenarios | None]:
    """The deciding scenarios (reduced) and the held-out ones (None without).

    ``homes`` have their profiles resolved (the forecast); ``raw_homes`` as the case
    file gives them (for ``feeder:`` profiles, source simbench); ``shared_pv``: a
    community's shared assets' PV profiles by asset id (forecast ``<asset>.pv_kw``).
    """
    n, held_out = spec.n, spec.out_of_sample
    if spec.source == "forecast":
        forecast = _forecast(homes, horizon, shared_pv or {})
        every = Scenarios.from_forecast(
            forecast,
            n + held_out,
            spec.seed,
            std=_by_kind(spec.std_kw, forecast.columns),
            std_fraction=_by_kind(spec.std_fraction, forecast.columns),
            rho=spec.rho,
            lower=0.0,
        )
    elif spec.source == "simbench":
        every = _simbench(spec, raw_homes or homes, horizon, feeder, n + held_out)
    else:
        every = Scenarios.from_csv(_csv_path(spec.csv))
        n = len(every.names()) - held_out
        if n < 1:
            raise InputError(
                f"scenarios.out_of_sample: {held_out} leaves none of the "
                f"{len(every.names())} scenarios of {spec.csv} to decide"
            )
    if every.periods() != horizon.periods:
        raise InputError(
            f"scenarios: {every.periods()} periods per scenario, the horizon has {horizon.periods}"
        )
    names = every.names()
    deciding = every.subset(names[:n])
    if spec.reduce_to is not None:
        deciding = deciding.reduce(spec.reduce_to, spec.seed)
    return deciding, every.subset(names[n:]) if held_out else None


def _forecast(homes: dict[str, ProsumerSpec], horizon: Any, shared_pv) -> pd.DataFrame:
    n, dt = horizon.periods, horizon.period_hours
    columns = {
        f"{aid}.pv_kw": assets.profile_values(pv, n, dt, f"shared.{aid}.pv.profile_kw")
        for aid, pv in shared_pv.items()
    }
    for pid, home in homes.items():
        columns[f"{pid}.load_kw"] = assets.profile_values(home.load_kw, n, dt, f"{pid}.load_kw")
        if home.pv is not None:
            columns[f"{pid}.pv_kw"] = assets.profile_values(
                home.pv.profile_kw, n, dt, f"{pid}.pv.profile_kw"
            )
    return pd.DataFrame(columns)


def _by_kind(values: dict[str, float], columns) -> dict[str, float]:
    return {c: values.get(c.rpartition(".")[2], 0.0) for c in columns}


def _simbench(spec, homes, horizon, feeder, days: int) -> Scenarios:
    if feeder is None:
        raise InputError("scenarios.source: 'simbench' needs a SimBench network")
    columns, scale = {}, {}
    for pid, home in homes.items():
        profiles = {"load_kw": home.load_kw}
        if home.pv is not None:
            profiles["pv_kw"] = home.pv.profile_kw
        for kind, profile in profiles.items():
            if isinstance(profile, FeederProfile):
                bus = profile.bus if profile.bus is not None else home.bus
                columns[f"{pid}.{kind}"] = (feeder.merged.get(bus, bus), profile.feeder)
                scale[f"{pid}.{kind}"] = profile.scale
    if not columns:
        raise InputError(
            "scenarios.source: 'simbench' varies feeder profiles ({feeder: load} or "
            "{feeder: sgen}); no home has one"
        )
    return Scenarios.from_simbench(
        feeder,
        columns,
        start_step(horizon.start),
        horizon.periods,
        horizon.resolution_minutes,
        days=days,
        scale=scale,
    )


def _csv_path(name: str) -> Path:
    for candidate in (Path(name), assets.PROFILE_DIR / name):
        if candidate.is_file():
            return candidate
    raise InputError(f"scenarios.csv: no file {name!r} here or in {assets.PROFILE_DIR}")
