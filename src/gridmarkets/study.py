"""Study files: many cases derived from one base case by dotted-path changes.

A study is YAML validated by pydantic, like a case file::

    name: lem_prices                  # optional, default: the file's stem
    description: one line
    base: lem_copperplate             # a case file (relative to the study file) or a
                                      # shipped case's name
    design: grid                      # grid | zip | random | latin_hypercube
    samples: 20                       # random and latin_hypercube only
    seed: 1                           # random and latin_hypercube (default 0)
    parameters:                       # dotted paths into the case
      participants.chp_c.blocks.0.price: {values: [60, 90, 120]}
      participants.home_1.blocks.0.quantity_kw: {range: [0.5, 3.0], num: 6}
    kpis: [social_welfare, traded_kwh]  # default: every KPI of the model
    solve_options: {time_limit: 60}
    reuse: true                       # default; false builds every scenario's model afresh

``grid`` runs the product of the parameters' values, ``zip`` runs them side by side
(equal lengths), ``random`` draws ``samples`` points uniformly and ``latin_hypercube``
draws a Latin hypercube of ``samples`` points (scipy's ``qmc.LatinHypercube``). A
``range: [low, high]`` is ``num`` evenly spaced values for grid and zip and a uniform
interval for the sampling designs; a ``values`` list is sampled by index.

``reuse`` lets a worker keep what consecutive scenarios share where the model offers
it (see :mod:`gridmarkets.batch`); the results are the same either way.

Every scenario is validated as a case when the study is loaded, so a value that makes
a case invalid is reported before anything runs, naming the scenario and its values.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, FiniteFloat, ValidationError, model_validator

from gridmarkets.case import (
    Spec,
    case_hash,
    format_validation_error,
    read_yaml,
    set_path,
    shipped_cases_dir,
    validate,
)
from gridmarkets.errors import CaseError
from gridmarkets.specs.base import Name

Design = Literal["grid", "zip", "random", "latin_hypercube"]


class ParameterSpec(Spec):
    """The values one dotted path takes: a list, or a range ``[low, high]``."""

    values: list[Any] | None = Field(None, min_length=1, description="the values to use")
    range: tuple[FiniteFloat, FiniteFloat] | None = Field(None, description="[low, high]")
    num: int | None = Field(None, ge=2, description="values in the range (grid and zip)")

    @model_validator(mode="after")
    def _one_kind(self) -> ParameterSpec:
        if (self.values is None) == (self.range is None):
            raise ValueError("give either 'values' or 'range'")
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range: low {self.range[0]} is above high {self.range[1]}")
        if self.values is not None and self.num is not None:
            raise ValueError("num: only with a range")
        return self


class SolveOptions(Spec):
    """Solver options applied to every scenario (see ``gridmarkets solve``)."""

    time_limit: float | None = Field(None, gt=0, description="seconds per scenario")
    mip_gap: float | None = Field(None, ge=0, description="relative MIP gap")
    threads: int | None = Field(None, ge=1, description="HiGHS threads per scenario")


class StudySpec(Spec):
    """A study file: a base case, the parameters to vary, a design and the KPIs."""

    name: Name | None = Field(None, description="study name (default: the file's stem)")
    description: str = ""
    base: str = Field(description="case file relative to the study file, or a shipped case")
    design: Design = "grid"
    samples: int | None = Field(None, ge=1, description="points (random, latin_hypercube)")
    seed: int = Field(0, description="random seed (random, latin_hypercube)")
    parameters: dict[str, ParameterSpec] = Field(min_length=1)
    kpis: list[str] = Field(default_factory=list, description="default: every KPI")
    solve_options: SolveOptions = Field(default_factory=SolveOptions)
    reuse: bool = Field(
        True, description="a worker keeps the built model for scenarios that change only data"
    )


@dataclass(frozen=True, eq=False)
class Scenario:
    """One case of a study: its values, its validated case as a dict, and its hash."""

    index: int
    values: dict[str, Any]
    case: dict[str, Any]
    case_hash: str


@dataclass(frozen=True)
class Study:
    """A loaded study: its spec, where it came from, and its scenarios in design order."""

    spec: StudySpec
    name: str
    source: str
    model: str
    scenarios: tuple[Scenario, ...]

    @property
    def parameters(self) -> list[str]:
        """The dotted paths the study varies, in file order."""
        return list(self.spec.parameters)

    @property
    def solve_options(self) -> dict[str, Any]:
        """The solver options every scenario gets (only those set)."""
        return self.spec.solve_options.model_dump(exclude_none=True)


#: Path parts that only hold a case's elements: left out of a parameter's label.
CONTAINERS = {"participants", "peers", "members", "prosumers", "homes", "shared", "blocks"}


def parameter_label(path: str, currency: str = "EUR") -> str:
    """A plot label for a dotted path: ``participants.chp_c.blocks.0.price`` -> ``chp_c
    price (EUR/MWh)``, ``horizon.periods`` -> ``horizon periods``; the unit from the
    last part's name (:func:`gridmarkets.results.unit_label`)."""
    from gridmarkets.results import unit_label

    *where, field = path.split(".")
    context = [part for part in where if part not in CONTAINERS and not part.isdigit()]
    return " ".join([*context, unit_label(field, currency)])


def load_study(path: str | Path) -> Study:
    """Read and validate a study file and expand its scenarios.

    Parameters
    ----------
    path : the study's YAML file.

    Returns
    -------
    Study : the spec and every scenario, each validated as a case.

    Raises
    ------
    CaseError : naming the file, the field path and the reason.
    """
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    return make_study(data, source=str(path), root=path.parent)


def make_study(data: dict[str, Any], *, source: str = "<study>", root: str | Path = ".") -> Study:
    """Validate a study given as a mapping (a notebook's way to write one).

    Parameters
    ----------
    data : the study's fields, as in a study file.
    source : how errors name the study.
    root : the folder a relative ``base`` is read from.
    """
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise CaseError(format_validation_error(err, source)) from None
    _check_design(spec, source)
    base_path = resolve_base(spec.base, Path(root), source)
    base = read_yaml(base_path)
    base.setdefault("name", base_path.stem)
    points = design_points(spec)
    scenarios = tuple(_scenario(k, values, base, source) for k, values in enumerate(points))
    name = spec.name or Path(source).stem
    return Study(spec, name, source, str(base["model"]), scenarios)


def resolve_base(base: str, root: Path, source: str) -> Path:
    """The base case file: relative to the study's folder, else a shipped case by name."""
    candidate = root / base
    if candidate.is_file():
        return candidate
    shipped = shipped_cases_dir() / f"{Path(base).stem}.yaml"
    if shipped.is_file() and Path(base).parent == Path("."):
        return shipped
    raise CaseError(f"{source}: base: {base!r} is neither a case file nor a shipped case")


def _check_design(spec: StudySpec, source: str) -> None:
    sampled = spec.design in ("random", "latin_hypercube")
    if sampled and spec.samples is None:
        raise CaseError(f"{source}: samples: design {spec.design!r} needs a number of samples")
    if not sampled and spec.samples is not None:
        raise CaseError(f"{source}: samples: only for designs random and latin_hypercube")
    for path, param in spec.parameters.items():
        if sampled and param.num is not None:
            raise CaseError(f"{source}: parameters.{path}.num: not used by {spec.design!r}")
        if not sampled and param.range is not None and param.num is None:
            raise CaseError(
                f"{source}: parameters.{path}.num: a range needs num values for {spec.design!r}"
            )
    if spec.design == "zip":
        lengths = {p: len(_listed(v)) for p, v in spec.parameters.items()}
        if len(set(lengths.values())) > 1:
            raise CaseError(f"{source}: parameters: zip needs equal lengths, got {lengths}")


def _listed(param: ParameterSpec) -> list[Any]:
    if param.values is not None:
        return list(param.values)
    return np.linspace(*param.range, param.num).tolist()


def design_points(spec: StudySpec) -> list[dict[str, Any]]:
    """The parameter values of every scenario, in design order."""
    paths = list(spec.parameters)
    if spec.design == "grid":
        lists = [_listed(spec.parameters[p]) for p in paths]
        return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*lists)]
    if spec.design == "zip":
        lists = [_listed(spec.parameters[p]) for p in paths]
        return [dict(zip(paths, combo, strict=True)) for combo in zip(*lists, strict=True)]
    unit = _unit_samples(spec.design, spec.samples, len(paths), spec.seed)
    return [
        {p: _from_unit(spec.parameters[p], u) for p, u in zip(paths, row, strict=True)}
        for row in unit
    ]


def _unit_samples(design: Design, n: int, dims: int, seed: int) -> np.ndarray:
    """``n`` points in the unit cube: uniform draws or a Latin hypercube."""
    rng = np.random.default_rng(seed)
    if design == "random":
        return rng.random((n, dims))
    from scipy.stats import qmc

    return qmc.LatinHypercube(d=dims, rng=rng).random(n)


def _from_unit(param: ParameterSpec, u: float) -> Any:
    if param.range is not None:
        low, high = param.range
        return float(low + u * (high - low))
    values = param.values
    return values[min(int(u * len(values)), len(values) - 1)]


def _scenario(index: int, values: dict[str, Any], base: dict[str, Any], source: str) -> Scenario:
    data = base
    for path, value in values.items():
        try:
            data = set_path(data, path, value)
        except CaseError as err:
            raise CaseError(f"{source}: parameters.{err}") from None
    label = ", ".join(f"{p}={json.dumps(v)}" for p, v in values.items())
    case = validate(data, f"{source}: scenario {index} ({label})")
    return Scenario(index, values, case.model_dump(mode="json"), case_hash(case))
