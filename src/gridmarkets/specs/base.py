"""What every case file shares: the strict base of specs, the horizon, the network.

:class:`Spec` is also the base of the models' own input specs (devices, homes, bids), so
it lives here, apart from the loading glue in :mod:`gridmarkets.case`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator


class Spec(BaseModel):
    """Base of every case-file section: unknown keys are errors, values are strict."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Horizon(Spec):
    """The periods a case covers."""

    start: dt.datetime | None = Field(
        None, description="timestamp of period 0; SimBench profiles are read from here"
    )
    periods: int = Field(24, ge=1, le=35136, description="number of periods")
    resolution_minutes: int = Field(60, ge=1, le=1440, description="length of a period")

    @property
    def period_hours(self) -> float:
        return self.resolution_minutes / 60.0

    def timestamps(self) -> list[dt.datetime] | None:
        if self.start is None:
            return None
        step = dt.timedelta(minutes=self.resolution_minutes)
        return [self.start + k * step for k in range(self.periods)]


class NetworkSpec(Spec):
    """Where the feeder comes from: a pandapower built-in, a SimBench code or a file."""

    source: Literal["pandapower", "simbench", "file"]
    name: str | None = Field(None, description="pandapower.networks function name")
    code: str | None = Field(None, description="SimBench code, e.g. 1-LV-rural1--0-sw")
    path: str | None = Field(None, description="pandapower JSON file")
    options: dict[str, Any] = Field(default_factory=dict)
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
            "runpp_3ph). 'three' is for the LEM (model: lem) only."
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
    name: str | None = Field(None, description="case name (default: the file's stem)")
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
