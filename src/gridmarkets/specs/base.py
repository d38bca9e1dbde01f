"""What every case file shares: the strict base of specs, the horizon, the network.

:class:`Spec` is also the base of the models' own input specs (devices, homes, bids), so
it lives here, apart from the loading glue in :mod:`gridmarkets.case`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    network: NetworkSpec | None = None
