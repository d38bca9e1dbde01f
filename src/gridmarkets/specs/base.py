"""What every case file shares: the strict base of specs, the horizon, the network.

:class:`Spec` is also the base of the models' own input specs (devices, homes, bids), so
it lives here, apart from the loading glue in :mod:`gridmarkets.case`.
"""

from __future__ import annotations

import datetime as dt
import math
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    field_validator,
    model_validator,
)

from gridmarkets.inputs import check_name

MAX_MAGNITUDE = 1e15
"""Largest magnitude of a number in a case: HiGHS's ``large_matrix_value`` (beyond it a
coefficient is refused) and far below its infinite bound, 1e20."""


def _not_infinite(value: float) -> float:
    if math.isinf(value):
        raise ValueError(f"{value!r} is not finite")
    return value


NumberOrNaN = Annotated[float, AllowInfNan(True), AfterValidator(_not_infinite)]
"""A finite number or NaN, where a field documents what NaN means ("none")."""

Name = Annotated[str, AfterValidator(check_name)]
"""A case's or study's name: it names the default output folder, so it is not a path."""


class Spec(BaseModel):
    """Base of every case-file section: unknown keys are errors, values are strict.

    Numbers are finite and at most :data:`MAX_MAGNITUDE` in size; ``true``/``false``
    is not a number (pydantic would read it as 1/0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if field is not None and _has_bool(value) and not _takes_bool(field.annotation):
                    raise ValueError(f"{name}: {value!r} is yes/no, which this field does not take")
        return data

    @field_validator("*")
    @classmethod
    def _not_huge(cls, value: Any) -> Any:
        for number in _floats(value):
            if abs(number) > MAX_MAGNITUDE:
                raise ValueError(
                    f"{number!r} is beyond +-{MAX_MAGNITUDE:g} (a solver cannot use it)"
                )
        return value


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, list | tuple) and any(isinstance(v, bool) for v in value)


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type accepts a bool as such (bool, Any, a union with bool)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType, typing.Annotated, list, tuple, dict):
        return any(_takes_bool(a) for a in typing.get_args(annotation))
    return False


def _floats(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _floats(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floats(item)


class Horizon(Spec):
    """The periods a case covers."""

    start: dt.datetime | None = Field(
        None, description="timestamp of period 0; SimBench profiles are read from here"
    )
    periods: int = Field(24, ge=1, le=35136, description="number of periods")
    resolution_minutes: int = Field(60, ge=1, le=1440, description="length of a period")

    @model_validator(mode="after")
    def _ends_before_year_10000(self) -> Horizon:
        if self.start is not None:
            try:
                self.start + self.periods * dt.timedelta(minutes=self.resolution_minutes)
            except OverflowError:
                raise ValueError(
                    f"start: {self.start.isoformat()} plus {self.periods} periods of "
                    f"{self.resolution_minutes} minutes runs past the year 9999"
                ) from None
        return self

    @property
    def period_hours(self) -> float:
        return self.resolution_minutes / 60.0

    def timestamps(self) -> list[dt.datetime] | None:
        if self.start is None:
            return None
        step = dt.timedelta(minutes=self.resolution_minutes)
        return [self.start + k * step for k in range(self.periods)]


class NetworkOptions(Spec):
    """Options of :func:`gridmarkets.networks.load`; the feeder checks vmin_pu < vmax_pu
    against its defaults (0.95 and 1.05 pu where a bus has no limits)."""

    vmin_pu: PositiveFloat | None = Field(None, description="lower voltage limit (pu)")
    vmax_pu: PositiveFloat | None = Field(None, description="upper voltage limit (pu)")
    s_base_kva: PositiveFloat | None = Field(None, description="per-unit power base (kVA)")
    ext_grid: NonNegativeInt | None = Field(
        None, description="the external grid whose feeder to keep when the net has several"
    )


class NetworkSpec(Spec):
    """Where the feeder comes from: a pandapower built-in, a SimBench code or a file."""

    source: Literal["pandapower", "simbench", "file"]
    name: str | None = Field(
        None, description="a pandapower built-in of those `gridmarkets networks` lists"
    )
    code: str | None = Field(None, description="SimBench code, e.g. 1-LV-rural1--0-sw")
    path: str | None = Field(None, description="pandapower JSON file")
    options: NetworkOptions = Field(default_factory=NetworkOptions)
    losses: Literal["none", "linear", "iterate"] = Field(
        "iterate",
        description=(
            "losses in the network formulation: 'none' (lossless LinDistFlow), 'linear' "
            "(solve lossless, linearise the losses in P, Q and v around that solution, "
            "solve again) or 'iterate' (start lossless, then re-linearise at pandapower's "
            "AC flow of each solution until the voltages agree within "
            "losses_tolerance_pu; the summary lists the rounds). Default 'iterate', by "
            "measurement on the shipped feeder cases that support losses: 2 rounds each "
            "(lem_lv_grid, lem_lv_islanded, prosumer_feeder_coordinated), the model's "
            "voltage error against pandapower 9.9e-5 -> 2.2e-5 pu on lem_lv_grid and "
            "9.8e-4 -> 6.3e-4 pu on prosumer_feeder_coordinated ('linear' lands within "
            "1e-6 pu of the same), and it is the only mode that checks its own "
            "linearisation against the AC flow. A case whose model cannot iterate "
            "runs lossless ('none') unless its file asks for 'linear'; asking it for a "
            "mode it lacks is an error."
        ),
    )
    phases: Literal["one", "three"] = Field(
        "one",
        description=(
            "how the market sees the feeder: 'one' (balanced, LinDistFlow: one voltage "
            "and one price per bus) or 'three' (each phase apart, LinDist3Flow with the "
            "lines' zero-sequence data: per-phase voltages, limits and prices; "
            "participants may name their phase; lossless, and the AC check is pandapower's "
            "runpp_3ph). 'three' is for the LEM, prosumer, community and flexibility "
            "models."
        ),
    )
    losses_tolerance_pu: PositiveFloat = Field(
        1e-3, description="iterate: stop when max |V_linear - V_ac| (pu) is at most this"
    )
    losses_max_iterations: int = Field(10, ge=1, le=100, description="iterate: solves at most")

    def locator(self) -> dict[str, Any]:
        """What :func:`gridmarkets.networks.load` reads: source, name/code/path, options."""
        return self.model_dump(
            include={"source", "name", "code", "path", "options"}, exclude_none=True
        )

    @model_validator(mode="after")
    def _one_locator(self) -> NetworkSpec:
        key = {"pandapower": "name", "simbench": "code", "file": "path"}[self.source]
        if getattr(self, key) is None:
            raise ValueError(f"source {self.source!r} needs the field {key!r}")
        return self


class CaseBase(Spec):
    """Fields every case has; a model's spec adds its participants and prices."""

    model: str
    name: Name | None = Field(
        None, description="case name, and the default output folder (default: the file's stem)"
    )
    description: str = ""
    horizon: Horizon = Field(default_factory=Horizon)
    currency: str = Field(
        "EUR",
        pattern=r"^[A-Z]{3}$",
        description=(
            "ISO 4217 code of the currency every price (per MWh) and amount of the case "
            "is in; written tables and plots name it (price_eur_per_mwh, payment_eur)"
        ),
    )
    network: NetworkSpec | None = None

    @model_validator(mode="after")
    def _buses_need_a_network(self) -> CaseBase:
        if self.network is None:
            for path, bus in buses_named(self):
                raise ValueError(f"{path}: bus {bus} given, but the case has no network")
        return self


def buses_named(case: BaseModel) -> list[tuple[str, int]]:
    """Every ``bus`` a case names, as (field path, bus): participants', peers',
    homes', feeder profiles'."""
    found: list[tuple[str, int]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if key == "bus" and isinstance(value, int) and not isinstance(value, bool):
                    found.append((where, value))
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for k, value in enumerate(node):
                walk(value, f"{path}.{k}")

    walk(case.model_dump(exclude={"network"}), "")
    return found


def check_buses(case: BaseModel, feeder: Any) -> None:
    """Every bus the case names is a bus of its feeder (before anything is built).

    Raises
    ------
    CaseError : naming the field, the bus and the feeder.
    """
    from gridmarkets.errors import CaseError

    missing = [(path, bus) for path, bus in buses_named(case) if bus not in feeder.merged]
    if missing:
        named = "; ".join(f"{path}: bus {bus}" for path, bus in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CaseError(
            f"{named}{more}: not a bus of the feeder {feeder.name} (its buses are "
            f"{min(feeder.merged)}..{max(feeder.merged)}; see `gridmarkets networks`)"
        )


COMPONENTS_PER_ELEMENT = 22
"""Variables and constraints per feeder bus or branch and period in LinDistFlow
(voltage, flows, balances, voltage limits, a 12-sided thermal polygon), rounded up."""

COMPONENTS_PER_ENTRY = 10
"""Variables and constraints per period of a case entry (a participant, block, device)."""

BYTES_PER_COMPONENT = 300
"""Memory of one Pyomo variable or constraint, measured (tracemalloc, 100 000 of each:
284 bytes); the solver's copy comes on top. The LEM builds its LP as arrays and takes
less: lem_lv_grid at 2880 periods added 0.26 GB of RSS over 96 periods, against 0.73 GB
estimated."""


def check_model_size(case: BaseModel, feeder: Any = None) -> None:
    """Refuse a case whose model would not fit in the memory this process may use.

    The estimate is periods x (22 per feeder bus and branch + 10 per case entry and
    feeder bus, which profile bids may fill) x 300 bytes.

    Raises
    ------
    CaseError : naming horizon.periods, the estimated size and the memory available.
    """
    from gridmarkets.errors import CaseError
    from gridmarkets.inputs import memory_available_bytes

    periods = case.horizon.periods
    elements = 0 if feeder is None else len(feeder.buses) + len(feeder.branches)
    entries = _entries(case.model_dump(exclude={"network", "horizon"})) + elements // 2
    components = periods * (COMPONENTS_PER_ELEMENT * elements + COMPONENTS_PER_ENTRY * entries)
    needed, available = components * BYTES_PER_COMPONENT, memory_available_bytes()
    if needed > available:
        where = (
            ""
            if feeder is None
            else f" on the feeder {feeder.name} ({elements} buses and branches)"
        )
        raise CaseError(
            f"horizon.periods: {periods} periods{where} make a model of about "
            f"{components / 1e6:,.1f} million variables and constraints (at least "
            f"{needed / 1024**3:,.1f} GB), more than the {available / 1024**3:,.1f} GB of "
            "memory available; use fewer periods or longer ones (horizon.resolution_minutes)"
        )


def _entries(node: Any) -> int:
    """Mappings in a case's data: participants, blocks, devices, ..."""
    if isinstance(node, dict):
        return 1 + sum(_entries(value) for value in node.values())
    if isinstance(node, list):
        return sum(_entries(value) for value in node)
    return 0
