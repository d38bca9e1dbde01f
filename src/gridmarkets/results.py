"""A solved model's results, and how they are written to disk."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gridmarkets.solvers import Solution


@dataclass
class Result:
    """Tidy tables and KPIs of one solved model.

    Attributes
    ----------
    model : the model's name ("lem", "prosumer", ...).
    tables : tidy DataFrames by name (written as ``<name>.csv``).
    kpis : the model's key figures (plain numbers).
    solution : the solver's :class:`~gridmarkets.solvers.Solution`.
    ac_check : the AC power-flow check's summary, where the model has a network.
    plots : functions ``(result, path)`` that each write one PNG, by file stem.
    timings : wall time per stage of the run that made it (seconds, by stage name).
    """

    model: str
    tables: dict[str, pd.DataFrame]
    kpis: dict[str, float]
    solution: Solution
    ac_check: dict[str, Any] | None = None
    plots: dict[str, Callable[[Result, Path], None]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __getattr__(self, name: str) -> pd.DataFrame:
        tables = self.__dict__.get("tables", {})
        if name in tables:
            return tables[name]
        raise AttributeError(name)

    def summary(self, case_name: str | None = None) -> dict[str, Any]:
        """summary.json's content: case, model, status, solver timings and sizes, KPIs,
        AC check, and the wall time of each stage (``timings``) with their ``total``."""
        return _jsonable(
            {
                "case": case_name,
                "model": self.model,
                **self.solution.summary(),
                "kpis": self.kpis,
                "ac_check": self.ac_check,
                "timings": {**self.timings, "total": sum(self.timings.values())},
            }
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write(
    result: Result, out_dir: str | Path, case_name: str | None = None, *, plots: bool = True
) -> Path:
    """Write summary.json, one CSV per table and (unless ``plots`` is False) the plots
    (plots/*.png)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result.summary(case_name), indent=2))
    for name, table in result.tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    if plots and result.plots:
        plot_dir = out / "plots"
        plot_dir.mkdir(exist_ok=True)
        for stem, draw in result.plots.items():
            draw(result, plot_dir / f"{stem}.png")
    return out
