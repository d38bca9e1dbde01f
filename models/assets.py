"""Device blocks: the flexible and inflexible resources behind a prosumer's meter.

Each ``add_<device>(block, spec, periods, period_hours)`` adds the device's variables and
constraints to the Pyomo block it is handed and returns ``block.p_net_kw``, the device's
net power per period. It also adds ``block.cost`` (currency over the horizon; 0 for
devices without an operating cost), which the owner's objective sums.

Sign convention (the one place it is stated): ``p_net_kw`` is the power the device
injects into the home's bus, in kW. Generation and discharge are positive; load,
charging and heating are negative. It is the feeder's convention (positive into the
grid), so a home's net injection is the sum of its devices' ``p_net_kw``.

Units: power kW, energy kWh, prices and costs per energy in currency per MWh, time as a
period index with ``period_hours`` hours per period. A state (SoC, temperature) indexed
by period ``t`` is its value at the *end* of period ``t``.

Profiles (load, PV, outdoor temperature) are a number (constant), a list with one value
per period, or a :class:`CsvProfile` naming a column of a CSV file.

Phases: on a three-phase feeder every device is connected to a phase, two phases or all
three (``phase``: "b" for a single-phase PV, "abc" for a three-phase heat pump; absent:
its owner's connection). A connection to k phases puts a k-th of the device's power on
each (:func:`gridmarkets.networks.attach_grid`).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import (
    AfterValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    model_validator,
)

from gridmarkets.errors import InputError
from gridmarkets.inputs import read_text
from gridmarkets.specs.base import Spec

PROFILE_DIR = Path(__file__).resolve().parents[1] / "data" / "profiles"


def phase_label(value: str | None) -> str | None:
    """A phase label as its connection ("CB" -> "bc"); None stays None (the owner's)."""
    from gridmarkets.networks.three_phase import connection

    if value is None:
        return None
    name = connection(value)
    if name is None:
        raise ValueError(f"{value!r} is not a, b, c or a combination of them (e.g. 'bc')")
    return name


Phase = Annotated[
    str | None,
    AfterValidator(phase_label),
    Field(
        description="phases it is connected to on a three-phase network (network.phases: "
        "three): 'a', 'b', 'c', two of them or 'abc'; absent: its owner's connection"
    ),
]


class CsvProfile(Spec):
    """A profile read from a CSV column, averaged to the horizon's resolution.

    The file needs a ``timestamp`` column at a regular step that divides the horizon's
    resolution. A relative path is looked up in the working directory, then in
    ``data/profiles/``.
    """

    csv: str = Field(description="CSV file with a timestamp column")
    column: str = Field(description="column holding the values (kW or degrees C)")
    scale: float = Field(1.0, description="factor applied to every value")
    start_row: NonNegativeInt = Field(0, description="first row of the file used")


class FeederProfile(Spec):
    """The SimBench profile of the feeder's loads or static generators at a home's bus.

    Resolved by :func:`gridmarkets.models.prosumer.resolve_feeder_profiles` from the
    case's network and ``horizon.start`` (the 15-minute step of the year), then scaled.
    """

    feeder: Literal["load", "sgen"] = Field(
        description="the bus's summed SimBench load or static-generator power"
    )
    scale: float = Field(1.0, description="factor applied to every value")
    bus: int | None = Field(None, description="the bus read (default: the home's bus)")


Profile = float | list[float] | CsvProfile | FeederProfile


def profile_values(
    profile: Profile, periods: int, period_hours: float = 1.0, path: str = "profile"
) -> np.ndarray:
    """A profile as one float per period.

    Parameters
    ----------
    profile : a number, a list of one value per period, or a :class:`CsvProfile`.
    periods : number of periods wanted.
    period_hours : the horizon's resolution (a CSV profile is averaged to it).
    path : the profile's field path, named in errors.
    """
    if isinstance(profile, CsvProfile):
        return _csv_values(profile, periods, period_hours, path)
    if isinstance(profile, FeederProfile):
        raise InputError(
            f"{path}: a feeder profile needs a case with a SimBench network "
            "(see prosumer.resolve_feeder_profiles)"
        )
    values = np.asarray(profile, dtype=float)
    if values.ndim == 0:
        return np.full(periods, float(values))
    if len(values) != periods:
        raise InputError(f"{path}: {len(values)} values for {periods} periods")
    return values


def _csv_values(profile: CsvProfile, periods: int, period_hours: float, path: str) -> np.ndarray:
    frame = _read_csv(_find_csv(profile.csv, path))
    if profile.column not in frame:
        raise InputError(f"{path}.column: {profile.column!r} is not a column of {profile.csv}")
    step_minutes = (frame.index[1] - frame.index[0]).total_seconds() / 60.0
    rows_per_period = period_hours * 60.0 / step_minutes
    if rows_per_period < 1 or not float(rows_per_period).is_integer():
        raise InputError(
            f"{path}: the file's {step_minutes:g}-minute step does not divide the horizon's "
            f"{period_hours * 60:g}-minute periods"
        )
    k = int(rows_per_period)
    column = pd.to_numeric(frame[profile.column], errors="coerce").to_numpy(dtype=float)
    chunk = column[profile.start_row : profile.start_row + periods * k]
    bad = np.flatnonzero(~np.isfinite(chunk))
    if len(bad):
        row = profile.start_row + int(bad[0])
        raise InputError(
            f"{path}: {profile.csv} column {profile.column!r} row {row} is not a number"
        )
    if len(chunk) < periods * k:
        raise InputError(f"{path}: {profile.csv} has too few rows for {periods} periods")
    return chunk.reshape(periods, k).mean(axis=1) * profile.scale


def _find_csv(name: str, path: str) -> Path:
    for candidate in (Path(name), PROFILE_DIR / name):
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(f"{path}.csv: no file {name!r} here or in {PROFILE_DIR}")


@functools.lru_cache(maxsize=16)
def _read_csv(path: Path) -> pd.DataFrame:
    """A profile file through the input boundary (size limit, UTF-8); an InputError
    naming the file when it is not a CSV with a regular ``timestamp`` column."""
    text = read_text(path, "profile file")
    try:
        frame = pd.read_csv(io.StringIO(text), comment="#")
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"profile file {path}: not a CSV table ({err})") from None
    if "timestamp" not in frame:
        raise InputError(
            f"profile file {path}: no 'timestamp' column (its columns: {', '.join(frame)})"
        )
    stamps = pd.to_datetime(frame.pop("timestamp"), errors="coerce")
    if (
        len(stamps) < 2
        or stamps.isna().any()
        or not (stamps.diff().iloc[1:] > pd.Timedelta(0)).all()
    ):
        raise InputError(f"profile file {path}: 'timestamp' is not an increasing column of times")
    return frame.set_index(stamps)


def _set_cost(block: pyo.Block, expr, doc: str) -> None:
    block.cost = pyo.Expression(expr=expr, doc=doc)


def _energy_cost(p_kw_by_period, price_per_mwh: float, period_hours: float):
    """Currency of an energy flow priced per MWh."""
    return price_per_mwh * period_hours / 1000.0 * sum(p_kw_by_period)


# --- inflexible load --------------------------------------------------------------------


def add_load(block: pyo.Block, profile: Profile, periods: Sequence[int], period_hours: float):
    """An inflexible load: ``p_net_kw[t] = -load_kw[t]``.

    Returns
    -------
    block.p_net_kw : the load's injection per period (kW, negative).
    """
    load = profile_values(profile, len(periods), period_hours, "load_kw")
    block.load_kw = pyo.Param(
        periods, initialize=dict(zip(periods, load, strict=True)), doc="demand (kW)"
    )
    block.p_net_kw = pyo.Expression(
        periods, rule=lambda b, t: -b.load_kw[t], doc="p_net[t] = -load[t]  (kW)"
    )
    _set_cost(block, 0.0, "an inflexible load has no operating cost")
    return block.p_net_kw


# --- PV ---------------------------------------------------------------------------------


class PVSpec(Spec):
    """A PV system: its available power and whether it may be curtailed."""

    profile_kw: Profile = Field(description="available AC power per period (kW)")
    curtailable: bool = Field(True, description="may produce less than available")
    curtailment_cost_per_mwh: NonNegativeFloat = Field(0.0, description="cost of energy spilled")
    phase: Phase = None


def add_pv(block: pyo.Block, spec: PVSpec, periods: Sequence[int], period_hours: float):
    """PV with optional curtailment: ``p_net_kw[t] = available_kw[t] - p_curtail_kw[t]``."""
    available = profile_values(spec.profile_kw, len(periods), period_hours, "pv.profile_kw")
    if (available < 0).any():
        raise InputError("pv.profile_kw: available power must not be negative")
    block.available_kw = pyo.Param(
        periods, initialize=dict(zip(periods, available, strict=True)), doc="available (kW)"
    )
    block.p_curtail_kw = pyo.Var(
        periods,
        bounds=lambda b, t: (0.0, b.available_kw[t] if spec.curtailable else 0.0),
        doc="curtailed power: 0 <= p_curtail[t] <= available[t] if curtailable else 0  (kW)",
    )
    block.p_net_kw = pyo.Expression(
        periods,
        rule=lambda b, t: b.available_kw[t] - b.p_curtail_kw[t],
        doc="p_net[t] = available[t] - p_curtail[t]  (kW)",
    )
    cost = _energy_cost(block.p_curtail_kw.values(), spec.curtailment_cost_per_mwh, period_hours)
    _set_cost(block, cost, "curtailment_cost * sum_t p_curtail[t] * dt / 1000  (currency)")
    return block.p_net_kw


# --- battery ----------------------------------------------------------------------------


class BatterySpec(Spec):
    """A stationary battery."""

    capacity_kwh: PositiveFloat = Field(description="usable energy capacity")
    p_charge_max_kw: NonNegativeFloat = Field(description="charging power rating (AC side)")
    p_discharge_max_kw: NonNegativeFloat | None = Field(
        None, description="discharging power rating (default: the charging rating)"
    )
    eta_charge: float = Field(0.95, gt=0, le=1, description="charging efficiency")
    eta_discharge: float = Field(0.95, gt=0, le=1, description="discharging efficiency")
    soc_min_kwh: NonNegativeFloat = Field(0.0, description="lowest state of charge")
    soc_max_kwh: NonNegativeFloat | None = Field(None, description="highest (default capacity)")
    soc_initial_kwh: NonNegativeFloat = Field(0.0, description="state of charge before period 0")
    soc_final_kwh: NonNegativeFloat | None = Field(
        None, description="least state of charge at the end (default: the initial SoC)"
    )
    degradation_cost_per_mwh: NonNegativeFloat = Field(
        0.0, description="cost per MWh of throughput (charged plus discharged, AC side)"
    )
    relaxed: bool = Field(
        False, description="drop the binary that forbids charging and discharging at once"
    )
    phase: Phase = None

    @model_validator(mode="after")
    def _soc_window(self) -> BatterySpec:
        top = self.soc_max
        if top > self.capacity_kwh:
            raise ValueError(f"soc_max_kwh: {top} is above capacity_kwh {self.capacity_kwh}")
        if self.soc_min_kwh > top:
            raise ValueError(f"soc_min_kwh: {self.soc_min_kwh} is above soc_max_kwh {top}")
        for name in ("soc_initial_kwh", "soc_final_kwh"):
            value = getattr(self, name)
            if value is not None and not self.soc_min_kwh <= value <= top:
                raise ValueError(f"{name}: {value} is outside [{self.soc_min_kwh}, {top}]")
        return self

    @property
    def soc_max(self) -> float:
        return self.capacity_kwh if self.soc_max_kwh is None else self.soc_max_kwh

    @property
    def p_discharge_max(self) -> float:
        return self.p_charge_max_kw if self.p_discharge_max_kw is None else self.p_discharge_max_kw


def add_battery(block: pyo.Block, spec: BatterySpec, periods: Sequence[int], period_hours: float):
    """A battery: SoC dynamics with efficiencies, SoC window, end-of-horizon SoC."""
    _add_storage_power(block, periods, spec.p_charge_max_kw, spec.p_discharge_max, spec.relaxed)
    block.soc_kwh = pyo.Var(
        periods,
        bounds=(spec.soc_min_kwh, spec.soc_max),
        doc="state of charge at the end of period t: soc_min <= soc[t] <= soc_max  (kWh)",
    )
    first = periods[0]
    block.soc_dynamics = pyo.Constraint(
        periods,
        rule=lambda b, t: (
            b.soc_kwh[t]
            == (spec.soc_initial_kwh if t == first else b.soc_kwh[t - 1])
            + period_hours
            * (spec.eta_charge * b.p_charge_kw[t] - b.p_discharge_kw[t] / spec.eta_discharge)
        ),
        doc="soc[t] = soc[t-1] + dt (eta_c p_charge[t] - p_discharge[t] / eta_d)  (kWh)",
    )
    final = spec.soc_initial_kwh if spec.soc_final_kwh is None else spec.soc_final_kwh
    block.soc_final = pyo.Constraint(
        expr=block.soc_kwh[periods[-1]] >= final, doc="soc[T] >= soc_final  (kWh)"
    )
    throughput = [block.p_charge_kw[t] + block.p_discharge_kw[t] for t in periods]
    cost = _energy_cost(throughput, spec.degradation_cost_per_mwh, period_hours)
    _set_cost(block, cost, "degradation * sum_t (p_charge + p_discharge)[t] dt / 1000  (currency)")
    return block.p_net_kw


def _add_storage_power(block, periods, charge_max_kw, discharge_max_kw, relaxed: bool) -> None:
    """Charge and discharge power, and the binary that keeps them apart."""
    block.p_charge_kw = pyo.Var(
        periods, bounds=(0.0, charge_max_kw), doc="charging power, AC side  (kW)"
    )
    block.p_discharge_kw = pyo.Var(
        periods, bounds=(0.0, discharge_max_kw), doc="discharging power, AC side  (kW)"
    )
    block.p_net_kw = pyo.Expression(
        periods,
        rule=lambda b, t: b.p_discharge_kw[t] - b.p_charge_kw[t],
        doc="p_net[t] = p_discharge[t] - p_charge[t]  (kW)",
    )
    if relaxed or charge_max_kw == 0 or discharge_max_kw == 0:
        return
    block.charging = pyo.Var(periods, domain=pyo.Binary, doc="1 if charging in period t")
    block.charge_if_charging = pyo.Constraint(
        periods,
        rule=lambda b, t: b.p_charge_kw[t] <= charge_max_kw * b.charging[t],
        doc="p_charge[t] <= p_charge_max u[t]  (kW)",
    )
    block.discharge_if_not_charging = pyo.Constraint(
        periods,
        rule=lambda b, t: b.p_discharge_kw[t] <= discharge_max_kw * (1 - b.charging[t]),
        doc="p_discharge[t] <= p_discharge_max (1 - u[t])  (kW)",
    )


# --- electric vehicle -------------------------------------------------------------------


class StaySpec(Spec):
    """One stay of an EV at home: plugged in from ``arrival`` to ``departure``.

    The EV is plugged in during periods ``arrival .. departure - 1`` and leaves at the
    start of period ``departure``.
    """

    arrival: NonNegativeInt = Field(description="first period plugged in")
    departure: NonNegativeInt = Field(description="period it leaves (exclusive)")
    soc_arrival_kwh: NonNegativeFloat = Field(description="energy in the EV on arrival")
    soc_departure_kwh: NonNegativeFloat = Field(description="energy needed at departure")

    @model_validator(mode="after")
    def _order(self) -> StaySpec:
        if self.departure <= self.arrival:
            raise ValueError(f"departure: {self.departure} is not after arrival {self.arrival}")
        return self


class EVSpec(Spec):
    """An electric vehicle with one or more stays, optionally able to discharge (V2G)."""

    capacity_kwh: PositiveFloat = Field(description="battery capacity")
    p_charge_max_kw: PositiveFloat = Field(description="highest charging power")
    p_charge_min_kw: NonNegativeFloat = Field(
        0.0, description="lowest charging power while charging (0: any power down to 0)"
    )
    eta_charge: float = Field(0.95, gt=0, le=1)
    v2g: bool = Field(False, description="may discharge into the home")
    p_discharge_max_kw: NonNegativeFloat = Field(0.0, description="V2G power rating")
    eta_discharge: float = Field(0.95, gt=0, le=1)
    stays: list[StaySpec] = Field(min_length=1)
    phase: Phase = None

    @model_validator(mode="after")
    def _consistent(self) -> EVSpec:
        if self.p_charge_min_kw > self.p_charge_max_kw:
            raise ValueError(
                f"p_charge_min_kw: {self.p_charge_min_kw} is above p_charge_max_kw "
                f"{self.p_charge_max_kw}"
            )
        for k, stay in enumerate(self.stays):
            for name in ("soc_arrival_kwh", "soc_departure_kwh"):
                if getattr(stay, name) > self.capacity_kwh:
                    raise ValueError(f"stays.{k}.{name}: above capacity_kwh {self.capacity_kwh}")
            if k and stay.arrival < self.stays[k - 1].departure:
                raise ValueError(f"stays.{k}.arrival: overlaps stay {k - 1}")
        return self

    def plugged(self, periods: Sequence[int]) -> dict[int, int]:
        """Period -> index of the stay the EV is plugged in for (periods in a stay only)."""
        return {
            t: k
            for k, stay in enumerate(self.stays)
            for t in range(stay.arrival, stay.departure)
            if t in periods
        }


def add_ev(block: pyo.Block, spec: EVSpec, periods: Sequence[int], period_hours: float):
    """An EV: charges (and with V2G discharges) only while plugged in, and leaves with
    at least the energy each stay needs."""
    if spec.stays[-1].departure > periods[-1] + 1:
        raise InputError(f"ev.stays: a departure is after the horizon's end ({len(periods)})")
    plugged = spec.plugged(periods)
    discharge_max = spec.p_discharge_max_kw if spec.v2g else 0.0
    _add_storage_power(block, periods, spec.p_charge_max_kw, discharge_max, relaxed=False)
    block.PLUGGED = pyo.Set(initialize=sorted(plugged), doc="periods the EV is plugged in")
    for t in periods:
        if t not in plugged:
            block.p_charge_kw[t].fix(0.0)
            block.p_discharge_kw[t].fix(0.0)
    if spec.p_charge_min_kw > 0:
        _add_minimum_charge(block, spec)
    block.soc_kwh = pyo.Var(
        block.PLUGGED, bounds=(0.0, spec.capacity_kwh), doc="EV energy at the end of t  (kWh)"
    )
    arrivals = {stay.arrival: stay.soc_arrival_kwh for stay in spec.stays}
    block.soc_dynamics = pyo.Constraint(
        block.PLUGGED,
        rule=lambda b, t: (
            b.soc_kwh[t]
            == (arrivals[t] if t in arrivals else b.soc_kwh[t - 1])
            + period_hours
            * (spec.eta_charge * b.p_charge_kw[t] - b.p_discharge_kw[t] / spec.eta_discharge)
        ),
        doc="soc[t] = (soc_arrival if t is an arrival else soc[t-1]) "
        "+ dt (eta_c p_charge[t] - p_discharge[t] / eta_d)  (kWh)",
    )
    block.STAYS = pyo.Set(initialize=range(len(spec.stays)), doc="stays")
    block.energy_at_departure = pyo.Constraint(
        block.STAYS,
        rule=lambda b, k: b.soc_kwh[spec.stays[k].departure - 1] >= spec.stays[k].soc_departure_kwh,
        doc="soc[departure - 1] >= soc_departure  (kWh)",
    )
    _set_cost(block, 0.0, "an EV has no operating cost of its own")
    return block.p_net_kw


def _add_minimum_charge(block: pyo.Block, spec: EVSpec) -> None:
    """Charging power is 0 or between p_charge_min and p_charge_max."""
    if hasattr(block, "charging"):
        on = block.charging
    else:
        block.charging = pyo.Var(block.PLUGGED, domain=pyo.Binary, doc="1 if charging in t")
        on = block.charging
        block.charge_if_charging = pyo.Constraint(
            block.PLUGGED,
            rule=lambda b, t: b.p_charge_kw[t] <= spec.p_charge_max_kw * on[t],
            doc="p_charge[t] <= p_charge_max u[t]  (kW)",
        )
    block.charge_at_least_min = pyo.Constraint(
        block.PLUGGED,
        rule=lambda b, t: b.p_charge_kw[t] >= spec.p_charge_min_kw * on[t],
        doc="p_charge[t] >= p_charge_min u[t]  (kW)",
    )


# --- shiftable appliance ----------------------------------------------------------------


class ApplianceSpec(Spec):
    """A shiftable appliance: a fixed power profile that runs once, uninterrupted.

    It starts at a period ``s`` with ``earliest_start <= s`` and ends by ``latest_end``
    (exclusive): ``s + len(profile_kw) <= latest_end``.
    """

    profile_kw: list[NonNegativeFloat] = Field(
        min_length=1, description="power in each period of its run (kW)"
    )
    earliest_start: NonNegativeInt = Field(0, description="first period it may start")
    latest_end: NonNegativeInt | None = Field(
        None, description="period by whose start it has finished (default: the horizon's end)"
    )
    phase: Phase = None

    @model_validator(mode="after")
    def _window(self) -> ApplianceSpec:
        if self.latest_end is not None and (
            self.latest_end - self.earliest_start < len(self.profile_kw)
        ):
            raise ValueError(
                f"latest_end: the window {self.earliest_start}..{self.latest_end} is shorter "
                f"than the run of {len(self.profile_kw)} periods"
            )
        return self

    def starts(self, periods: Sequence[int], open_end: bool = False) -> list[int]:
        """The feasible start periods within ``periods``.

        With ``open_end`` the horizon goes on after ``periods`` (a rolling window): a run
        may start in the last periods and finish after them.
        """
        horizon_end = periods[-1] + 1
        last = self.latest_end if self.latest_end is not None else horizon_end
        if not open_end:
            last = min(last, horizon_end)
        first = max(self.earliest_start, periods[0])
        return list(range(first, min(last - len(self.profile_kw), horizon_end - 1) + 1))

    def must_start(self, periods: Sequence[int], open_end: bool = False) -> bool:
        """Whether the run has to start within ``periods`` (always, unless ``open_end``)."""
        if not open_end:
            return True
        return self.latest_end is not None and self.latest_end - len(self.profile_kw) <= periods[-1]


def add_appliance(
    block: pyo.Block,
    spec: ApplianceSpec,
    periods: Sequence[int],
    period_hours: float,
    open_end: bool = False,
):
    """A shiftable appliance: one binary per feasible start, exactly one chosen.

    With ``open_end`` (a rolling window of a longer horizon) the run may also start
    after ``periods`` unless its latest start lies within them, and a run started near
    the end contributes only its periods within ``periods``.
    """
    starts = spec.starts(periods, open_end)
    must = spec.must_start(periods, open_end)
    if not starts and (must or not open_end):
        raise InputError(
            f"appliance: no start fits its window within periods {periods[0]}..{periods[-1]}"
        )
    profile = spec.profile_kw
    block.STARTS = pyo.Set(initialize=starts, doc="feasible start periods")
    block.start = pyo.Var(block.STARTS, domain=pyo.Binary, doc="1 if the run starts at s")
    if must:
        block.runs_once = pyo.Constraint(
            expr=sum(block.start.values()) == 1, doc="sum_s start[s] = 1"
        )
    elif starts:
        block.runs_once = pyo.Constraint(
            expr=sum(block.start.values()) <= 1,
            doc="sum_s start[s] <= 1 (it may start after the window)",
        )
    block.p_net_kw = pyo.Expression(
        periods,
        rule=lambda b, t: (
            -sum(profile[t - s] * b.start[s] for s in starts if 0 <= t - s < len(profile))
        ),
        doc="p_net[t] = -sum_s profile[t - s] start[s]  (kW)",
    )
    _set_cost(block, 0.0, "an appliance has no operating cost of its own")
    return block.p_net_kw


# --- thermal load (heat pump) -----------------------------------------------------------


class HeatPumpSpec(Spec):
    """A heat pump heating a building, first-order (one R, one C) thermal model."""

    p_max_kw: PositiveFloat = Field(description="electric power rating")
    cop: PositiveFloat = Field(3.0, description="heat delivered per unit of electricity")
    capacitance_kwh_per_k: PositiveFloat = Field(description="thermal capacitance C")
    resistance_k_per_kw: PositiveFloat = Field(description="thermal resistance R to outdoors")
    t_outdoor_c: Profile = Field(description="outdoor temperature per period (deg C)")
    t_initial_c: float = Field(description="indoor temperature before period 0")
    t_min_c: float = Field(description="lowest comfortable indoor temperature")
    t_max_c: float = Field(description="highest comfortable indoor temperature")
    phase: Phase = None

    @model_validator(mode="after")
    def _band(self) -> HeatPumpSpec:
        if self.t_min_c > self.t_max_c:
            raise ValueError(f"t_min_c: {self.t_min_c} is above t_max_c {self.t_max_c}")
        return self


def add_heat_pump(
    block: pyo.Block, spec: HeatPumpSpec, periods: Sequence[int], period_hours: float
):
    """A heat pump keeping the indoor temperature in its comfort band.

    Exact discretisation of C dT/dt = cop p - (T - T_out) / R for power held constant
    over a period: T[t] = a T[t-1] + (1 - a) (T_out[t] + R cop p[t]), a = exp(-dt / RC).
    """
    outdoor = profile_values(spec.t_outdoor_c, len(periods), period_hours, "heat_pump.t_outdoor_c")
    decay = math.exp(-period_hours / (spec.resistance_k_per_kw * spec.capacitance_kwh_per_k))
    block.t_outdoor_c = pyo.Param(
        periods, initialize=dict(zip(periods, outdoor, strict=True)), doc="outdoor (deg C)"
    )
    block.p_kw = pyo.Var(periods, bounds=(0.0, spec.p_max_kw), doc="electric power drawn (kW)")
    block.temperature_c = pyo.Var(
        periods,
        bounds=(spec.t_min_c, spec.t_max_c),
        doc="indoor temperature at the end of t: t_min <= T[t] <= t_max  (deg C)",
    )
    first = periods[0]
    block.thermal_dynamics = pyo.Constraint(
        periods,
        rule=lambda b, t: (
            b.temperature_c[t]
            == decay * (spec.t_initial_c if t == first else b.temperature_c[t - 1])
            + (1 - decay) * (b.t_outdoor_c[t] + spec.resistance_k_per_kw * spec.cop * b.p_kw[t])
        ),
        doc="T[t] = a T[t-1] + (1 - a) (T_out[t] + R cop p[t]), a = exp(-dt/(R C))  (deg C)",
    )
    block.p_net_kw = pyo.Expression(
        periods, rule=lambda b, t: -b.p_kw[t], doc="p_net[t] = -p[t]  (kW)"
    )
    _set_cost(block, 0.0, "a heat pump has no operating cost of its own")
    return block.p_net_kw


# --- feasibility pre-checks -------------------------------------------------------------
# Each raises InputError naming the field when no schedule can satisfy the device alone,
# so a case fails with the reason instead of an "infeasible" from the solver.


def check_battery(spec: BatterySpec, periods: int, period_hours: float, path: str) -> None:
    """The final SoC must be reachable from the initial one at full charging power."""
    final = spec.soc_initial_kwh if spec.soc_final_kwh is None else spec.soc_final_kwh
    hours = periods * period_hours
    most = spec.soc_initial_kwh + spec.eta_charge * spec.p_charge_max_kw * hours
    if final > most + 1e-9:
        raise InputError(
            f"{path}.soc_final_kwh: {final:g} kWh cannot be reached from {spec.soc_initial_kwh:g}"
            f" kWh in {hours:g} h at {spec.p_charge_max_kw:g} kW (eta_charge {spec.eta_charge:g})"
        )


def check_ev(spec: EVSpec, periods: int, period_hours: float, path: str) -> None:
    """Every stay's energy must be chargeable in its stay; departures within the horizon."""
    for k, stay in enumerate(spec.stays):
        field = f"{path}.stays.{k}"
        if stay.departure > periods:
            raise InputError(
                f"{field}.departure: {stay.departure} is after the horizon's {periods} periods"
            )
        needed = stay.soc_departure_kwh - stay.soc_arrival_kwh
        hours = (stay.departure - stay.arrival) * period_hours
        if needed > spec.eta_charge * spec.p_charge_max_kw * hours + 1e-9:
            raise InputError(
                f"{field}.soc_departure_kwh: {needed:g} kWh cannot be charged in {hours:g} h at "
                f"{spec.p_charge_max_kw:g} kW (eta_charge {spec.eta_charge:g})"
            )


def check_heat_pump(spec: HeatPumpSpec, outdoor_c: np.ndarray, period_hours: float, path: str):
    """The comfort band must be reachable in every period: heating at full power keeps the
    room warm enough and not heating keeps it cool enough (the reachable temperatures of
    the first-order model form an interval, propagated forward exactly)."""
    decay = math.exp(-period_hours / (spec.resistance_k_per_kw * spec.capacitance_kwh_per_k))
    gain = spec.resistance_k_per_kw * spec.cop * spec.p_max_kw
    low = high = spec.t_initial_c
    for t, outdoor in enumerate(outdoor_c):
        high = decay * high + (1 - decay) * (outdoor + gain)
        low = decay * low + (1 - decay) * outdoor
        if high < spec.t_min_c - 1e-9:
            raise InputError(
                f"{path}.p_max_kw: {spec.p_max_kw:g} kW cannot keep the room at t_min_c "
                f"{spec.t_min_c:g} in period {t} (it reaches {high:.2f} deg C at most)"
            )
        if low > spec.t_max_c + 1e-9:
            raise InputError(
                f"{path}.t_max_c: the room stays above {spec.t_max_c:g} deg C in period {t} "
                f"even without heating ({low:.2f} deg C)"
            )
        low, high = max(low, spec.t_min_c), min(high, spec.t_max_c)
