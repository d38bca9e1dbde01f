"""A solved model's results, how they are written to disk and read back.

A results folder holds ``summary.json``, one CSV per non-empty table and ``plots/*.png``.
The CSV headers carry the case's currency (``price_eur_per_mwh``, ``payment_eur``); in
memory the money columns keep their short names (``price``, ``payment``), and
:func:`read` maps the headers back to them, so ``read(write(result))`` has the tables of
``result``. Every other column is written under its in-memory name, which means the same
in every model (``offered_kw``, ``accepted_kw``, ``traded_kw``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gridmarkets.solvers import Solution

ALLOCATION_RULES = ("shapley", "nucleolus", "proportional", "equal")

#: Money in tables and KPIs: column (or KPI) name -> "price" (currency per MWh; for the
#: flexibility market's capacity and activation prices, per MW and hour, the same unit)
#: or "amount" (currency). Written as ``<name>_<currency>_per_mwh`` or
#: ``<name>_<currency>``; a name already ending in ``_per_mwh`` keeps it at the end.
MONEY: dict[str, str] = {
    **dict.fromkeys(
        [
            "price",
            "price_low",
            "price_high",
            "dual",
            "bid_price",
            "import_price",
            "export_price",
            "internal_price",
            "marginal_price",
            "capacity_price",
            "activation_price",
            "incentive_per_mwh",
            "node_price",
            "marginal_value",
            "seller_price",
            "buyer_price",
        ],
        "price",
    ),
    **dict.fromkeys(
        [
            # table columns
            "payment",
            "surplus",
            "uplift",
            "gain",
            "lost_opportunity",
            "cost",
            "revenue",
            "profit",
            "energy_cost",
            "device_cost",
            "standalone_cost",
            "incentive_paid",
            "dso_cost",
            "trade_payment",
            "preference_cost",
            "network_payment",
            "baseline_surplus",
            # the community's cost allocations and savings, per rule
            *(f"{p}{r}" for p in ("", "savings_") for r in ALLOCATION_RULES),
            # KPIs
            "social_welfare",
            "buyers_surplus",
            "sellers_surplus",
            "payments_in",
            "payments_out",
            "upstream_cost",
            "merchandising_surplus",
            "max_lost_opportunity",
            "min_gain",
            "leader_cost",
            "deviation_cost",
            "grid_cost",
            "demand_charge",
            "community_value",
            "procurement_cost",
            "tso_cost",
            "sellers_revenue",
            "sellers_profit",
            "bilateral_dso_cost",
            "cost_uncoordinated",
            "baseline_welfare",
            "network_charges",
            "gain_vs_grid",
            "gain_tolerance",
            "reconciliation_error",
        ],
        "amount",
    ),
}

#: Money whose kind depends on the table, by (model, table): these win over MONEY.
MONEY_BY_TABLE: dict[tuple[str, str], dict[str, str]] = {
    ("p2p", "trades"): {"network_charge": "price"},
    ("p2p", "peers"): {"network_charge": "amount", "value": "amount"},
    ("p2p", "pair_prices"): {"cost": "price"},
    ("aggregator", "verify"): {"value": "amount", "optimum": "amount"},
}

#: The parts of a nodal price (:func:`gridmarkets.networks.nodal_prices`), prices too,
#: in the tables that decompose prices.
PRICE_PARTS = ("energy", "losses", "congestion", "voltage")
PRICE_TABLES = ("prices", "feeder_prices")


def money_kind(name: str, table: str | None = None, model: str | None = None) -> str | None:
    """The kind of money (a key of :data:`MONEY_UNITS`) or None (not money) of a column
    of ``model``'s ``table`` (None: a KPI)."""
    by_table = MONEY_BY_TABLE.get((model, table), {})
    if name in by_table:
        return by_table[name]
    if table in PRICE_TABLES and name.removesuffix("_q") in (*PRICE_PARTS, "price"):
        return "reactive_price" if name.endswith("_q") else "price"
    return MONEY.get(name)


#: How each kind of money is written: header suffix and plot unit, from the currency.
MONEY_UNITS = {
    "price": ("_{code}_per_mwh", "{currency}/MWh"),
    "reactive_price": ("_{code}_per_mvarh", "{currency}/Mvarh"),
    "amount": ("_{code}", "{currency}"),
}


def money_name(name: str, currency: str, table: str | None = None, model: str | None = None) -> str:
    """The name with its unit: ``price`` -> ``price_eur_per_mwh``, ``payment`` ->
    ``payment_eur``; names that are not money come back unchanged."""
    kind = money_kind(name, table, model)
    if kind is None:
        return name
    return name.removesuffix("_per_mwh") + MONEY_UNITS[kind][0].format(code=currency.lower())


#: Units a column name ends with, for plot labels.
UNIT_SUFFIXES = {
    "_kw": "kW",
    "_kvar": "kvar",
    "_kwh": "kWh",
    "_kvarh": "kvarh",
    "_pu": "pu",
    "_percent": "%",
    "_kg_per_mwh": "kg/MWh",
    "_kg": "kg",
    "_c": "°C",
    "_seconds": "s",
}


def unit_label(name: str, currency: str, table: str | None = None, model: str | None = None) -> str:
    """A plot label: ``price (EUR/MWh)``, ``payment (EUR)``, ``p_kw`` -> ``p (kW)``."""
    kind = money_kind(name, table, model)
    if kind is not None:
        unit = MONEY_UNITS[kind][1].format(currency=currency)
        return f"{name.removesuffix('_per_mwh').replace('_', ' ')} ({unit})"
    for suffix, unit in UNIT_SUFFIXES.items():
        if name.endswith(suffix):
            return f"{name.removesuffix(suffix).replace('_', ' ')} ({unit})"
    return name.replace("_", " ")


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
    currency : the case's currency (ISO 4217 code), for written headers and plot labels.
    """

    model: str
    tables: dict[str, pd.DataFrame]
    kpis: dict[str, float]
    solution: Solution
    ac_check: dict[str, Any] | None = None
    plots: dict[str, Callable[[Result, Path], None]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    currency: str = "EUR"

    def __getattr__(self, name: str) -> pd.DataFrame:
        tables = self.__dict__.get("tables", {})
        if name in tables:
            return tables[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        tables = ", ".join(f"{name} {len(t)}x{t.shape[1]}" for name, t in self.tables.items())
        objective = self.solution.objective
        return (
            f"<Result {self.model}: {self.solution.status}, objective {objective:.6g} "
            f"{self.currency}, {len(self.kpis)} KPIs; tables: {tables or 'none'}>"
        )

    def summary(self, case_name: str | None = None) -> dict[str, Any]:
        """summary.json's content: case, model, currency, status, solver timings and
        sizes, KPIs, the units of the objective and of the KPIs that are money, AC check,
        and the wall time of each stage (``timings``) with their ``total``."""
        units = {"objective": self.currency}
        for name in self.kpis:
            kind = money_kind(name)
            if kind is not None:
                units[name] = MONEY_UNITS[kind][1].format(currency=self.currency)
        return _jsonable(
            {
                "case": case_name,
                "model": self.model,
                "currency": self.currency,
                **self.solution.summary(),
                "kpis": self.kpis,
                "units": units,
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


def add_timestamps(tables: Mapping[str, pd.DataFrame], timestamps) -> None:
    """Put a ``timestamp`` column right after ``period`` in every table that has one
    (in place; a table's own timestamp column moves there). None: no start, no change."""
    if timestamps is None:
        return
    stamps = pd.Series(pd.to_datetime(list(timestamps)))
    for table in tables.values():
        if "period" not in table:
            continue
        if "timestamp" in table:
            table.pop("timestamp")
        period = pd.to_numeric(table["period"], errors="coerce")
        values = period.map(stamps).astype("datetime64[ns]")
        table.insert(table.columns.get_loc("period") + 1, "timestamp", values)


# --- writing ----------------------------------------------------------------------------

#: Written floats: rounded to this many decimals (1e-9 kW, pu, currency: far below
#: what a model resolves) and at most this many significant digits.
DECIMALS = 9
FLOAT_FORMAT = "%.12g"


def written_columns(result: Result, name: str) -> dict[str, str]:
    """In-memory column -> written header, for table ``name`` of ``result``."""
    return {
        column: money_name(column, result.currency, name, result.model)
        for column in result.tables[name].columns
    }


def write(
    result: Result, out_dir: str | Path, case_name: str | None = None, *, plots: bool = True
) -> Path:
    """Write summary.json, one CSV per non-empty table and (unless ``plots`` is False)
    the plots (plots/*.png).

    The headers carry units (:func:`written_columns`); floats are rounded
    (:data:`DECIMALS`, :data:`FLOAT_FORMAT`). An empty table writes no file (and removes
    one an earlier run left); ``summary.json`` lists the written tables with their
    columns' types, which :func:`read` restores.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary(case_name)
    summary["tables"] = {}
    for name, table in result.tables.items():
        path = out / f"{name}.csv"
        if table.empty:
            path.unlink(missing_ok=True)
            continue
        written = _rounded(table).rename(columns=written_columns(result, name))
        written.to_csv(path, index=False, float_format=FLOAT_FORMAT)
        summary["tables"][name] = {c: _kind(written[c]) for c in written.columns}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if plots and result.plots:
        plot_dir = out / "plots"
        plot_dir.mkdir(exist_ok=True)
        for stem, draw in result.plots.items():
            draw(result, plot_dir / f"{stem}.png")
    return out


def _kind(column: pd.Series) -> str:
    """A column's type as summary.json records it: numpy's name, "str" for text without
    missing values (read back as text, empty strings included), else "object" (read as
    inferred; a CSV file writes a missing value and an empty string alike)."""
    if column.dtype != object:
        return str(column.dtype)
    return "str" if len(column) and column.map(type).eq(str).all() else "object"


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    floats = table.select_dtypes("float").columns
    if not len(floats):
        return table
    # + 0.0 turns the -0.0 of a rounded tiny negative into 0.0
    return table.assign(**{c: table[c].round(DECIMALS) + 0.0 for c in floats})


# --- reading ----------------------------------------------------------------------------


def read(out_dir: str | Path) -> Result:
    """The Result a solve wrote to ``out_dir``: its tables (in-memory column names and
    types), KPIs, AC check, currency and solution summary (no duals, no plots).

    Raises
    ------
    FileNotFoundError : ``out_dir`` has no summary.json.
    """
    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text())
    currency = summary.get("currency") or "EUR"
    model = summary["model"]
    tables = {
        name: _read_table(out / f"{name}.csv", dtypes, model, name, currency)
        for name, dtypes in summary.get("tables", {}).items()
    }
    return Result(
        model,
        tables,
        summary.get("kpis", {}),
        solution_of(summary),
        ac_check=summary.get("ac_check"),
        timings={k: v for k, v in summary.get("timings", {}).items() if k != "total"},
        currency=currency,
    )


def _read_table(path: Path, dtypes: dict[str, str], model: str, name: str, currency: str):
    dates = [c for c, t in dtypes.items() if t.startswith("datetime")]
    typed = {c: t for c, t in dtypes.items() if t != "object" and c not in dates}
    missing = {c: [""] for c, t in dtypes.items() if t != "str"}  # text keeps ""
    table = pd.read_csv(
        path, dtype=typed, parse_dates=dates, keep_default_na=False, na_values=missing
    )
    return table.rename(columns=lambda c: _unmoney(c, currency, name, model))


def _unmoney(written: str, currency: str, table: str | None, model: str | None = None) -> str:
    """The name :func:`money_name` turned into ``written`` (or ``written`` itself)."""
    code = currency.lower()
    stems = [written.replace(f"_{code}_per_mwh", "_per_mwh")]
    stems += [written.removesuffix(suffix.format(code=code)) for suffix, _ in MONEY_UNITS.values()]
    for stem in stems:
        if stem != written and money_name(stem, currency, table, model) == written:
            return stem
    return written


def solution_of(summary: dict[str, Any]) -> Solution:
    """A :class:`~gridmarkets.solvers.Solution` with a summary's facts (and no duals)."""
    nan = float("nan")

    def number(key: str) -> float:
        value = summary.get(key)
        return nan if value is None else float(value)

    return Solution(
        status=summary["status"],
        optimal=bool(summary.get("optimal")),
        objective=number("objective"),
        best_bound=number("best_bound"),
        gap=number("gap"),
        is_mip=bool(summary.get("is_mip")),
        duals_from=None,
        build_seconds=summary.get("build_seconds"),
        translate_seconds=number("translate_seconds"),
        solve_seconds=number("solve_seconds"),
        n_variables=int(summary.get("variables") or 0),
        n_binaries=int(summary.get("binaries") or 0),
        n_constraints=int(summary.get("constraints") or 0),
        n_nonzeros=int(summary.get("nonzeros") or 0),
        highs_version=str(summary.get("highs_version", "")),
    )
