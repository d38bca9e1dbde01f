"""Scenarios: probabilities and per-period values of uncertain profiles.

A :class:`Scenarios` is a table of scenarios, each with a probability and one value per
period of any number of profiles ("load_kw", "pv_kw", "price_per_mwh", or per element
"h1.load_kw": element.profile). The stochastic models read it; nothing here solves.

Sources:

- :meth:`Scenarios.from_simbench`: a SimBench feeder's yearly profiles, one scenario
  per day around the case's date (the same hours of neighbouring days, so the same
  season), per bus (:func:`gridmarkets.networks.feeder_profiles`).
- :meth:`Scenarios.from_forecast`: a forecast plus an error model: normal errors with
  AR(1) correlation in time, or empirical errors resampled in blocks (a moving-block
  bootstrap), drawn with a seeded :class:`numpy.random.Generator`.
- :meth:`Scenarios.from_csv`: a user file (read through :mod:`gridmarkets.inputs`),
  long format ``scenario,period,profile,value[,probability]``.

Reduction to K representatives (:meth:`Scenarios.reduce`) clusters the scenarios with
SciPy's seeded k-means (:func:`scipy.cluster.vq.kmeans2`, k-means++ start) and keeps,
per cluster, the member nearest the centroid (a medoid-like choice: the representative
is a scenario that happened, not an average that never did — an average flattens PV
peaks and load spikes), with the cluster's summed probability. SciPy is already a
dependency; scikit-learn's ``KMeans`` would add a package for the same algorithm, and
its k-medoids lives in scikit-learn-extra, which is not kept up with NumPy 2.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from gridmarkets.errors import InputError
from gridmarkets.inputs import read_text

if TYPE_CHECKING:
    from gridmarkets.networks import Feeder

PROBABILITY_TOLERANCE = 1e-9
LONG_COLUMNS = ("scenario", "period", "profile", "value")

__all__ = ["Scenarios", "ar1_errors", "block_bootstrap"]


@dataclass(frozen=True)
class Scenarios:
    """Scenarios of per-period profiles with their probabilities.

    Attributes
    ----------
    probability : index scenario name (str), values >= 0 summing to 1 (within 1e-9).
    values : index (scenario, period) with periods 0..T-1 for every scenario; one
        column per profile.
    """

    probability: pd.Series
    values: pd.DataFrame

    def __post_init__(self) -> None:
        _check(self.probability, self.values)

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str = "scenarios") -> Scenarios:
        """From a long table with columns scenario, period, profile, value and optionally
        probability (one value per scenario; absent: equally likely)."""
        missing = [c for c in LONG_COLUMNS if c not in frame]
        if missing:
            raise InputError(f"{source}: missing column(s) {missing}; need {list(LONG_COLUMNS)}")
        frame = frame.assign(scenario=frame["scenario"].astype(str))
        duplicated = frame.duplicated(["scenario", "period", "profile"])
        if duplicated.any():
            row = frame[duplicated].iloc[0]
            raise InputError(
                f"{source}: scenario {row['scenario']!r} period {row['period']} profile "
                f"{row['profile']!r} is given twice"
            )
        values = frame.pivot_table(
            index=["scenario", "period"], columns="profile", values="value", aggfunc="first"
        )
        values.columns.name = None
        names = list(dict.fromkeys(frame["scenario"]))
        if "probability" in frame:
            probability = _scenario_probability(frame, source)
        else:
            probability = pd.Series(1.0 / len(names), index=names)
        try:
            return cls(probability.loc[names], values.loc[names])
        except InputError as err:
            raise InputError(f"{source}: {err}") from None

    @classmethod
    def from_csv(cls, path: str | Path) -> Scenarios:
        """From a CSV file, long format: header ``scenario,period,profile,value`` and an
        optional ``probability`` column. Errors name the file, the line and the field."""
        source = f"scenario file {path}"
        text = read_text(path, "scenario file")
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        missing = [c for c in LONG_COLUMNS if c not in header]
        if missing:
            raise InputError(f"{source}: line 1: missing column(s) {missing} in the header")
        rows = [_csv_row(row, reader.line_num, source) for row in reader]
        if not rows:
            raise InputError(f"{source}: no rows after the header")
        return cls.from_frame(pd.DataFrame(rows), source)

    @classmethod
    def deterministic(cls, frame: pd.DataFrame, name: str = "base") -> Scenarios:
        """One scenario of probability 1 from a period x profile table."""
        frame = frame.reset_index(drop=True)
        values = pd.concat({name: frame}, names=["scenario", "period"])
        return cls(pd.Series({name: 1.0}), values)

    @classmethod
    def from_forecast(
        cls,
        forecast: pd.DataFrame,
        n: int,
        seed: int,
        *,
        error: Literal["normal", "empirical"] = "normal",
        std: float | Mapping[str, float] = 0.0,
        std_fraction: float | Mapping[str, float] = 0.0,
        rho: float = 0.0,
        residuals: pd.DataFrame | None = None,
        block: int = 4,
        lower: float | Mapping[str, float] | None = None,
    ) -> Scenarios:
        """Forecast plus sampled errors: n equally likely scenarios.

        Parameters
        ----------
        forecast : period x profile table of forecast values.
        n, seed : number of scenarios and the seed of the numpy Generator.
        error : "normal": AR(1) errors in time, stationary with standard deviation
            ``std + std_fraction * |forecast[t]|`` per profile (see :func:`ar1_errors`);
            "empirical": rows of ``residuals`` (period x profile, past forecast errors)
            resampled in blocks of ``block`` periods (:func:`block_bootstrap`).
        rho : the AR(1) correlation of consecutive errors, in (-1, 1).
        lower : a floor applied to the sampled values (e.g. 0 for power that cannot
            be negative), one for all profiles or per profile; None: no floor.
        """
        forecast = forecast.reset_index(drop=True).astype(float)
        if n < 1:
            raise InputError(f"scenarios.n: {n} is below 1")
        rng = np.random.default_rng(seed)
        shape = (n, len(forecast), forecast.shape[1])
        if error == "normal":
            sigma = _per_profile(std, forecast.columns, "std") + _per_profile(
                std_fraction, forecast.columns, "std_fraction"
            ) * np.abs(forecast.to_numpy())
            errors = ar1_errors(rng, shape, rho) * sigma
        elif error == "empirical":
            if residuals is None:
                raise InputError("scenarios.residuals: required for empirical errors")
            rows = _residual_array(residuals, forecast.columns)
            errors = block_bootstrap(rng, rows, shape, block)
        else:
            raise InputError(f"scenarios.error: {error!r} is not 'normal' or 'empirical'")
        sampled = forecast.to_numpy()[None, :, :] + errors
        if lower is not None:
            sampled = np.maximum(sampled, _per_profile(lower, forecast.columns, "lower"))
        return cls.from_array(sampled, list(forecast.columns))

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        profiles: list[str],
        probability: Iterable[float] | None = None,
        names: list[str] | None = None,
    ) -> Scenarios:
        """From an array scenario x period x profile (equally likely unless given)."""
        n, periods, _ = array.shape
        names = names or [f"s{k}" for k in range(n)]
        index = pd.MultiIndex.from_product([names, range(periods)], names=["scenario", "period"])
        values = pd.DataFrame(array.reshape(n * periods, -1), index=index, columns=profiles)
        p = np.full(n, 1.0 / n) if probability is None else np.asarray(list(probability), float)
        return cls(pd.Series(p, index=names), values)

    @classmethod
    def from_simbench(
        cls,
        feeder: Feeder,
        columns: Mapping[str, tuple[int, Literal["load", "sgen"]]],
        start: int,
        periods: int,
        resolution_minutes: int = 15,
        days: int = 7,
        scale: Mapping[str, float] | None = None,
    ) -> Scenarios:
        """One scenario per day around the case's date, from SimBench's yearly profiles.

        Scenario ``d-3`` .. ``d+3`` (``days`` = 7) holds the same hours ``days // 2``
        days before to after the horizon's start: the season's day-to-day variety.

        Parameters
        ----------
        feeder : a feeder loaded from a SimBench code.
        columns : profile name -> (bus, "load" or "sgen"): the bus's summed SimBench
            load or static-generator power (kW), e.g. ``{"h1.load_kw": (7, "load")}``.
        start : the horizon's first 15-minute step of the year.
        periods, resolution_minutes : the horizon.
        days : number of days (scenarios), centred on the start where the year allows.
        scale : profile name -> factor (default 1).
        """
        from gridmarkets.networks import feeder_profiles

        if days < 1:
            raise InputError(f"scenarios.days: {days} is below 1")
        day = 96
        first = max(0, start - (days // 2) * day)
        shifts = [first + k * day for k in range(days)]
        step = resolution_minutes // 15
        span = (shifts[-1] - first) // step + periods
        table = feeder_profiles(feeder, first, span, resolution_minutes)
        per_day = day // step
        frames = {}
        for k, shift in enumerate(shifts):
            offset = k * per_day
            window = table[(table["period"] >= offset) & (table["period"] < offset + periods)]
            frames[f"d{(shift - start) // day:+d}"] = _simbench_columns(
                window.assign(period=window["period"] - offset), columns, scale or {}
            )
        values = pd.concat(frames, names=["scenario", "period"])
        return cls(pd.Series(1.0 / days, index=list(frames)), values)

    # --- views ----------------------------------------------------------------------

    def names(self) -> list[str]:
        """Scenario names, in order."""
        return list(self.probability.index)

    def periods(self) -> int:
        """Number of periods T (every scenario has 0..T-1)."""
        return len(self.values.loc[self.names()[0]])

    def profiles(self) -> list[str]:
        """Profile names (the value columns)."""
        return list(self.values.columns)

    def profile(self, scenario: str) -> pd.DataFrame:
        """One scenario's period x profile table."""
        if scenario not in self.probability.index:
            raise InputError(f"scenarios: no scenario {scenario!r}")
        return self.values.loc[scenario]

    def array(self) -> np.ndarray:
        """The values as an array scenario x period x profile."""
        n, periods = len(self.probability), self.periods()
        return self.values.to_numpy().reshape(n, periods, -1)

    def to_frame(self) -> pd.DataFrame:
        """Long table scenario, period, profile, value, probability (from_frame's input)."""
        long = self.values.stack().rename("value").reset_index()
        long.columns = ["scenario", "period", "profile", "value"]
        return long.assign(probability=long["scenario"].map(self.probability))

    # --- transforms -----------------------------------------------------------------

    def expected(self) -> Scenarios:
        """One scenario "expected" of probability 1: the probability-weighted mean."""
        mean = np.tensordot(self.probability.to_numpy(), self.array(), axes=1)
        return Scenarios.from_array(mean[None], self.profiles(), [1.0], ["expected"])

    def subset(self, names: Iterable[str]) -> Scenarios:
        """The named scenarios with their probabilities renormalised to sum to 1."""
        names = list(names)
        unknown = [s for s in names if s not in self.probability.index]
        if unknown or not names:
            raise InputError(f"scenarios: no scenario(s) {unknown or 'given'}")
        p = self.probability.loc[names]
        if p.sum() <= 0:
            raise InputError(f"scenarios: {names} have probability 0 together")
        return Scenarios(p / p.sum(), self.values.loc[names])

    def reduce(self, k: int, seed: int) -> Scenarios:
        """K representatives: seeded k-means on the standardised values, each cluster
        kept as its member nearest the centroid with the cluster's summed probability.

        At most k scenarios come back (k-means may leave a cluster empty); k at or
        above the number of scenarios returns them unchanged.
        """
        from scipy.cluster.vq import kmeans2

        if k < 1:
            raise InputError(f"scenarios.reduce_to: {k} is below 1")
        if k >= len(self.probability):
            return self
        data = self.array().reshape(len(self.probability), -1)
        spread = data.std(axis=0)
        data = (data - data.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        centroids, labels = kmeans2(data, k, seed=seed, minit="++")
        keep, mass = [], []
        p = self.probability.to_numpy()
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            distance = ((data[members] - centroids[c]) ** 2).sum(axis=1)
            keep.append(self.names()[members[np.argmin(distance)]])
            mass.append(p[members].sum())
        return Scenarios(pd.Series(mass, index=keep) / sum(mass), self.values.loc[keep])


def ar1_errors(rng: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Standard normal errors correlated in time (axis 1) by an AR(1) process::

        e[0] = z[0],   e[t] = rho e[t-1] + sqrt(1 - rho^2) z[t]

    so every e[t] has mean 0, variance 1 and corr(e[t], e[t+k]) = rho^k.
    """
    if not -1.0 < rho < 1.0:
        raise InputError(f"scenarios.rho: {rho} is not in (-1, 1)")
    z = rng.standard_normal(shape)
    e = np.empty(shape)
    e[:, 0] = z[:, 0]
    scale = np.sqrt(1.0 - rho**2)
    for t in range(1, shape[1]):
        e[:, t] = rho * e[:, t - 1] + scale * z[:, t]
    return e


def block_bootstrap(
    rng: np.random.Generator, residuals: np.ndarray, shape: tuple[int, ...], block: int
) -> np.ndarray:
    """Moving-block bootstrap: each scenario's errors are consecutive blocks of
    ``block`` rows of ``residuals`` (period x profile) starting at uniform random rows,
    concatenated and cut to the horizon, so the errors keep their correlation within
    a block."""
    length = len(residuals)
    if not 1 <= block <= length:
        raise InputError(f"scenarios.block: {block} is not between 1 and {length} residual rows")
    n, periods, _ = shape
    count = -(-periods // block)
    starts = rng.integers(0, length - block + 1, size=(n, count))
    rows = (starts[:, :, None] + np.arange(block)).reshape(n, -1)[:, :periods]
    return residuals[rows]


# --- helpers ----------------------------------------------------------------------------


def _check(probability: pd.Series, values: pd.DataFrame) -> None:
    p = probability.to_numpy(dtype=float)
    if len(p) == 0:
        raise InputError("scenarios: none given")
    if not np.isfinite(p).all() or (p < 0).any():
        raise InputError("scenarios.probability: every probability must be finite and >= 0")
    if abs(p.sum() - 1.0) > PROBABILITY_TOLERANCE:
        raise InputError(f"scenarios.probability: sums to {p.sum():.12g}, not 1")
    if probability.index.has_duplicates:
        raise InputError("scenarios: a scenario name is given twice")
    if list(values.index.names) != ["scenario", "period"]:
        raise InputError("scenarios.values: index must be (scenario, period)")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        bad = values[~np.isfinite(values.to_numpy(dtype=float)).all(axis=1)].index[0]
        raise InputError(f"scenarios: scenario {bad[0]!r} period {bad[1]}: a value is missing")
    scenarios = list(dict.fromkeys(values.index.get_level_values("scenario")))
    if scenarios != list(probability.index):
        raise InputError("scenarios: the values' scenarios differ from the probabilities'")
    expected = None
    for name in scenarios:
        periods = list(values.loc[name].index)
        expected = expected or list(range(len(periods)))
        if periods != expected:
            raise InputError(
                f"scenarios: scenario {name!r} has periods {periods[:3]}...; every scenario "
                f"needs periods 0..{len(expected) - 1} in order"
            )


def _scenario_probability(frame: pd.DataFrame, source: str) -> pd.Series:
    per = frame.groupby("scenario", sort=False)["probability"]
    mixed = per.nunique()
    if (mixed > 1).any():
        name = mixed[mixed > 1].index[0]
        raise InputError(f"{source}: scenario {name!r} is given more than one probability")
    return per.first().astype(float)


def _csv_row(row: dict, line: int, source: str) -> dict:
    out: dict = {"scenario": (row.get("scenario") or "").strip()}
    if not out["scenario"]:
        raise InputError(f"{source}: line {line}: scenario: empty")
    out["profile"] = (row.get("profile") or "").strip()
    if not out["profile"]:
        raise InputError(f"{source}: line {line}: profile: empty")
    numbers = {"period": int, "value": float}
    if row.get("probability") is not None:
        numbers["probability"] = float
    for field, kind in numbers.items():
        text = (row.get(field) or "").strip()
        try:
            out[field] = kind(text)
        except ValueError:
            raise InputError(f"{source}: line {line}: {field}: {text!r} is not a number") from None
        if kind is float and not np.isfinite(out[field]):
            raise InputError(f"{source}: line {line}: {field}: {text!r} is not finite")
    if out["period"] < 0:
        raise InputError(f"{source}: line {line}: period: {out['period']} is negative")
    if out.get("probability", 0.0) < 0:
        raise InputError(f"{source}: line {line}: probability: {out['probability']} is negative")
    return out


def _per_profile(value: float | Mapping[str, float], profiles, field: str) -> np.ndarray:
    if isinstance(value, Mapping):
        unknown = set(value) - set(profiles)
        if unknown:
            raise InputError(f"scenarios.{field}: unknown profile(s) {sorted(unknown)}")
        return np.array([float(value.get(p, 0.0)) for p in profiles])
    return np.full(len(profiles), float(value))


def _residual_array(residuals: pd.DataFrame, profiles) -> np.ndarray:
    missing = [p for p in profiles if p not in residuals]
    if missing:
        raise InputError(f"scenarios.residuals: no column(s) {missing}")
    return residuals[list(profiles)].to_numpy(dtype=float)


def _simbench_columns(window: pd.DataFrame, columns, scale) -> pd.DataFrame:
    by_bus = window.set_index(["period", "bus"])
    out = {}
    for name, (bus, kind) in columns.items():
        key = f"{kind}_p_kw"
        try:
            series = by_bus[key].xs(bus, level="bus")
        except KeyError:
            raise InputError(f"scenarios.columns.{name}: bus {bus} is not on the feeder") from None
        out[name] = series.to_numpy() * scale.get(name, 1.0)
    return pd.DataFrame(out)
