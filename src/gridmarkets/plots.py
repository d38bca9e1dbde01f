"""Plots the CLI writes and notebooks reuse, for every model and for sweeps.

One style (:func:`figure`): time on the x axis (the ``timestamp`` column where the case
has a start, else the period), axes labelled with their units and the case's currency
(:func:`gridmarkets.results.unit_label`), legends outside the axes so they hide no
data. matplotlib is imported when a plot is drawn, so importing a model does not load
it; it draws with Agg when headless.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gridmarkets.results import unit_label

if TYPE_CHECKING:
    from gridmarkets.results import Result

Plot = Callable[["Result", Path], None]

STYLE = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.dpi": 110,
    "axes.axisbelow": True,
}


def styled(draw: Callable) -> Callable:
    """Draw in the plots' one style (:data:`STYLE`): a decorator of every plot."""

    @wraps(draw)
    def styled_draw(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return styled_draw


def figure(rows: int = 1, cols: int = 1, *, size: tuple[float, float] = (9, 3.8), **kw):
    """A new figure and its axes (as ``plt.subplots`` returns them), outside pyplot: no
    backend is switched and no window opens, so plotting is safe headless and in
    notebooks alike."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, **kw)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG (110 dpi)."""
    fig.savefig(path, dpi=110)


def outside_legend(ax, **kw) -> None:
    """The legend right of the axes (one entry per label), so it covers no data."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), **kw)


def time_of(table: pd.DataFrame) -> pd.Series:
    """The time axis of a table: its ``timestamp`` column, or else its ``period``."""
    return table["timestamp"] if "timestamp" in table else table["period"]


def time_label(table: pd.DataFrame) -> str:
    return "time" if "timestamp" in table else "period"


def set_time_axis(ax, table: pd.DataFrame) -> None:
    """Label the x axis with time (dates formatted concisely) or whole periods."""
    ax.set_xlabel(time_label(table))
    if "timestamp" in table:
        import matplotlib.dates as mdates

        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def all_periods(table: pd.DataFrame) -> np.ndarray:
    """Every period from the table's first to its last (tables may skip some)."""
    periods = table["period"].dropna().astype(int)
    return np.arange(periods.min(), periods.max() + 1)


def period_edges(table: pd.DataFrame) -> np.ndarray:
    """Where each period of :func:`all_periods` starts, and where the last one ends: the
    x values of steps drawn over whole periods (one more than the periods)."""
    first = table.drop_duplicates("period").sort_values("period")
    periods, times = first["period"].to_numpy(), time_of(first).to_numpy()
    if len(periods) > 1:
        step = (times[-1] - times[0]) / (periods[-1] - periods[0])
    else:
        step = np.timedelta64(1, "h") if np.issubdtype(times.dtype, np.datetime64) else 1
    return times[0] + np.arange(len(all_periods(table)) + 1) * step


def step(ax, table: pd.DataFrame, y: str | pd.Series, **kw) -> None:
    """Draw ``y`` (a column of ``table``, one row per period) as steps over whole
    periods; periods the table skips are gaps."""
    values = table[y] if isinstance(y, str) else y
    by_period = pd.Series(values.to_numpy(), index=table["period"].to_numpy())
    ax.stairs(
        by_period.reindex(all_periods(table)).to_numpy(), period_edges(table), baseline=None, **kw
    )


# --- what each model draws -------------------------------------------------------------


def plots_for(result: Result, feeder: Any = None) -> dict[str, Plot]:
    """The plots of a result by file stem: the model's own (:data:`MODEL_PLOTS`, each
    where its table has rows), prices per bus as a bus x time heatmap, and a feeder map
    where the result has the network tables (``buses``, ``branches``) of a feeder."""
    plots = {
        stem: draw
        for stem, (table, draw) in MODEL_PLOTS.get(result.model, {}).items()
        if _has_rows(result, table)
    }
    for name in ("prices", "feeder_prices"):
        table = result.tables.get(name)
        if table is not None and "bus" in table and table["bus"].notna().any():
            plots[name] = partial(price_heatmap, table=name)  # instead of one uniform price
    if feeder is not None and _has_rows(result, "buses") and _has_rows(result, "branches"):
        plots.update(feeder_maps(result.tables["buses"], feeder))
    return plots


def feeder_maps(buses: pd.DataFrame, feeder: Any) -> dict[str, Plot]:
    """One feeder map, or one per scenario where the network tables stack several."""
    if "scenario" not in buses:
        return {"feeder_map": partial(feeder_map_plot, feeder=feeder)}
    return {
        f"feeder_map_{scenario}": partial(feeder_map_plot, feeder=feeder, scenario=scenario)
        for scenario in buses["scenario"].unique()
    }


def _has_rows(result: Result, table: str) -> bool:
    return table in result.tables and not result.tables[table].empty


# --- prices ----------------------------------------------------------------------------


@styled
def price_heatmap(result: Result, path: Path, table: str = "prices") -> None:
    """Nodal prices as a heatmap: one row per bus (and phase), time across."""
    prices = result.tables[table]
    rows = ["bus", "phase"] if "phase" in prices else ["bus"]
    grid = prices.pivot_table(index=rows, columns="period", values="price", aggfunc="mean")
    times = time_of(prices.drop_duplicates("period").sort_values("period"))
    fig, ax = figure(size=(10, min(1.5 + 0.12 * len(grid), 9)))
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=unit_label("price", result.currency, table))
    labels = [" ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in grid.index]
    every = max(1, len(labels) // 40)  # at most about 40 row labels
    ax.set_yticks(range(0, len(labels), every), labels[::every])
    ax.set_ylabel(" and ".join(rows))
    ticks = np.linspace(0, len(times) - 1, min(8, len(times))).round().astype(int)
    ax.set_xticks(ticks, [_time_text(times.iloc[k]) for k in ticks])
    ax.set_xlabel(time_label(prices))
    ax.grid(False)
    ax.set_title("nodal prices" if table == "prices" else "feeder prices (DLMPs)")
    save_figure(fig, path)


def _time_text(value) -> str:
    if isinstance(value, pd.Timestamp):
        return value.strftime("%d %b %H:%M")
    return str(value)


@styled
def uniform_price_plot(result: Result, path: Path) -> None:
    """The uniform clearing price per period and its interval of equally valid prices."""
    prices = result.prices.sort_values("period")
    x = period_edges(prices)
    fig, ax = figure()
    step(ax, prices, "price", label="price", lw=1.5)
    low = prices["price_low"].replace(-np.inf, np.nan).to_numpy()
    high = prices["price_high"].replace(np.inf, np.nan).to_numpy()
    ax.fill_between(
        x,
        np.append(low, low[-1]),
        np.append(high, high[-1]),
        step="post",
        alpha=0.2,
        label="interval of clearing prices",
    )
    ax.set_ylabel(unit_label("price", result.currency))
    set_time_axis(ax, prices)
    ax.set_title("uniform clearing price")
    outside_legend(ax)
    save_figure(fig, path)


def supply_demand_curves(ax, accepted, period: int, currency: str = "EUR") -> None:
    """Offers ascending and bids descending as step curves, for one period."""
    rows = accepted[accepted["period"] == period]
    for side, ascending, colour in (("sell", True, "tab:green"), ("buy", False, "tab:red")):
        blocks = rows[rows["side"] == side].sort_values("bid_price", ascending=ascending)
        q = np.concatenate([[0.0], blocks["offered_kw"].cumsum().to_numpy()])
        p = blocks["bid_price"].to_numpy()
        if len(p):
            label = "offers (sell)" if side == "sell" else "bids (buy)"
            ax.step(q, np.append(p, p[-1]), where="post", color=colour, label=label)
    ax.set_xlabel("cumulative offered power (kW)")
    ax.set_ylabel(unit_label("bid_price", currency))


@styled
def supply_demand_plot(result: Result, path: Path) -> None:
    """Supply and demand curves of the period with the most traded energy."""
    accepted = result.accepted
    traded = accepted[accepted["side"] == "sell"].groupby("period")["accepted_kw"].sum()
    period = int(traded.idxmax()) if len(traded) else int(accepted["period"].min())
    fig, ax = figure(size=(7, 4))
    supply_demand_curves(ax, accepted, period, result.currency)
    when = accepted.loc[accepted["period"] == period]
    stamp = f" ({_time_text(when['timestamp'].iloc[0])})" if "timestamp" in when else ""
    ax.set_title(f"supply and demand, period {period}{stamp}")
    outside_legend(ax)
    save_figure(fig, path)


# --- the network -------------------------------------------------------------------------


@styled
def feeder_map_plot(result: Result, path: Path, feeder: Any, scenario: str | None = None) -> None:
    """The feeder twice: buses coloured by their worst AC voltage (farthest from 1 pu
    over the periods and, on a three-phase feeder, the phases), branches by their
    highest AC loading; of one ``scenario`` where the network tables have several."""
    from gridmarkets.networks.plot import plot_feeder

    buses, branches = result.buses, result.branches
    if scenario is not None:
        buses = buses[buses["scenario"] == scenario]
        branches = branches[branches["scenario"] == scenario]
    deviation = (buses["v_pu_ac"] - 1.0).abs()
    worst = buses.loc[deviation.groupby(buses["bus"]).idxmax()].set_index("bus")["v_pu_ac"]
    loading = branches.groupby("branch")["loading_percent_ac"].max()
    fig, axes = figure(1, 2, size=(12, 5))
    plot_feeder(feeder, worst, axes[0], on="bus", label="worst voltage, AC (pu)")
    plot_feeder(feeder, loading, axes[1], on="branch", label="highest loading, AC (%)")
    axes[0].set_title(f"worst voltage: {worst.min():.3f} to {worst.max():.3f} pu")
    axes[1].set_title(f"highest loading: {loading.max():.0f} %")
    where = "" if scenario is None else f", scenario {scenario}"
    fig.suptitle(f"{feeder.name}{where}, over all periods")
    save_figure(fig, path)


# --- prosumer and community ------------------------------------------------------------


def stacked_power(ax, wide: pd.DataFrame, table: pd.DataFrame, names=None) -> None:
    """Stack columns of power (rows: ``table``'s periods) over whole periods: positive
    parts up, negative parts down, one colour and one legend entry per column (colours
    in the order of ``names``, default the columns, so panels can share them)."""
    from matplotlib import colormaps

    wide = wide.reindex(all_periods(table)).fillna(0.0)
    edges = period_edges(table)
    names = list(wide.columns) if names is None else list(names)
    colours = dict(zip(names, colormaps["tab10"].colors, strict=False))
    for sign in (1, -1):
        part = wide.clip(lower=0) if sign > 0 else wide.clip(upper=0)
        part = part.loc[:, part.abs().sum() > 1e-9]
        if not part.empty:
            values = part.T.to_numpy()
            ax.stackplot(
                edges,
                np.hstack([values, values[:, -1:]]),
                labels=list(part.columns),
                colors=[colours.get(c, "grey") for c in part.columns],
                step="post",
            )
    ax.axhline(0, color="black", lw=0.6)


@styled
def schedule_plot(result: Result, path: Path) -> None:
    """Stacked device power per period, summed over homes (positive = into the bus)."""
    power = result.power
    wide = power.pivot_table(index="period", columns="device", values="p_kw", aggfunc="sum")
    fig, ax = figure()
    stacked_power(ax, wide, power)
    ax.set_ylabel("power into the home's bus (kW)")
    set_time_axis(ax, power)
    ax.set_title("device schedule (all homes)")
    outside_legend(ax)
    save_figure(fig, path)


@styled
def soc_plot(result: Result, path: Path) -> None:
    """State of charge of every battery and EV."""
    storage = result.storage
    owner = "prosumer" if "prosumer" in storage else "member"
    fig, ax = figure(size=(9, 3.5))
    for (name, device), group in storage.groupby([owner, "device"]):
        ax.plot(time_of(group), group["soc_kwh"], label=f"{name} {device}")
    ax.set_ylabel("state of charge (kWh)")
    set_time_axis(ax, storage)
    ax.set_title("state of charge")
    outside_legend(ax)
    save_figure(fig, path)


@styled
def home_price_plot(result: Result, path: Path) -> None:
    """The first home's import and export tariffs (where it has a grid connection) and
    its marginal price, the dual of its energy balance: what energy is worth at home."""
    grid = result.grid
    first = grid[grid["prosumer"] == grid["prosumer"].iloc[0]]
    fig, ax = figure(size=(9, 3.2))
    for column, name in (("import_price", "import tariff"), ("export_price", "export tariff")):
        if first[column].abs().max() > 0:
            step(ax, first, column, lw=1.5, label=name)
    if "marginal_price" in first:
        step(ax, first, "marginal_price", ls="--", color="black", lw=1, label="marginal price")
    ax.set_ylabel(unit_label("price", result.currency))
    set_time_axis(ax, first)
    ax.set_title(f"prices at {first['prosumer'].iloc[0]}")
    outside_legend(ax)
    save_figure(fig, path)


@styled
def exchange_plot(result: Result, path: Path) -> None:
    """Grid exchange, members' net meter flow and shared assets per period."""
    x = result.exchange
    fig, ax = figure()
    step(ax, x, x["grid_import_kw"] - x["grid_export_kw"], label="grid import (net)")
    members = x["members_import_kw"] - x["members_export_kw"]
    step(ax, x, members, ls="--", lw=1.8, label="members' net import")  # often = shared
    step(ax, x, "shared_kw", label="shared assets' output")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("power (kW)")
    set_time_axis(ax, x)
    ax.set_title("community exchange")
    outside_legend(ax)
    save_figure(fig, path)


@styled
def shared_plot(result: Result, path: Path) -> None:
    """Shared batteries' state of charge (kWh, left) and shared PV output (kW, right)."""
    shared = result.shared
    fig, ax = figure(size=(9, 3.5))
    right = None
    for (aid, device), g in shared.groupby(["asset", "device"]):
        if device == "battery":
            ax.plot(time_of(g), g["soc_kwh"], color="tab:blue", label=f"{aid} state of charge")
        else:
            right = right or ax.twinx()
            name = aid if aid == device else f"{aid} {device}"
            step(right, g, "p_kw", ls="--", color="tab:orange", label=f"{name} output")
    ax.set_ylabel("state of charge (kWh)")
    if right is not None:
        right.set_ylabel("output (kW)")
        right.grid(False)
        for handle, label in zip(*right.get_legend_handles_labels(), strict=True):
            ax.plot([], [], ls="--", color=handle.get_edgecolor(), label=label)
    set_time_axis(ax, shared)
    ax.set_title("shared assets")
    outside_legend(ax)
    save_figure(fig, path)


# --- aggregator ----------------------------------------------------------------------------


@styled
def portfolio_plot(result: Result, path: Path) -> None:
    """The portfolio's net power against the aggregator's commitment (kW, and kvar
    on a second panel where the case commits reactive power)."""
    portfolio = result.portfolio
    reactive = portfolio["commitment_kvar"].notna().any()
    fig, axes = figure(2 if reactive else 1, 1, size=(9, 5.5 if reactive else 3.5), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (unit, net, commit) in zip(
        axes,
        (("kW", "p_net_kw", "commitment_kw"), ("kvar", "q_net_kvar", "commitment_kvar")),
        strict=False,
    ):
        step(ax, portfolio, net, label="portfolio net", lw=1.5)
        step(ax, portfolio, commit, ls="--", label="commitment", lw=1.5)
        ax.set_ylabel(f"{'active' if unit == 'kW' else 'reactive'} power ({unit})")
        outside_legend(ax)
    set_time_axis(axes[-1], portfolio)
    axes[0].set_title("portfolio against commitment")
    save_figure(fig, path)


@styled
def incentive_plot(result: Result, path: Path) -> None:
    """The incentive each group of homes is offered per period."""
    incentives = result.incentives
    fig, ax = figure(size=(9, 3.5))
    wide = incentives.pivot_table(index="period", columns="group", values="incentive_per_mwh")
    edges = period_edges(incentives)
    for group in wide.columns:  # a group's periods only: gaps elsewhere
        ax.stairs(wide[group].to_numpy(), edges, baseline=None, lw=1.5, label=str(group))
    ax.set_ylabel(unit_label("incentive_per_mwh", result.currency))
    set_time_axis(ax, incentives)
    ax.set_title("incentives by group")
    outside_legend(ax, title="group")
    save_figure(fig, path)


# --- P2P -----------------------------------------------------------------------------------


@styled
def p2p_trade_plot(result: Result, path: Path) -> None:
    """Each peer's net injection per period (positive = sells), stacked."""
    injections = result.injections
    wide = injections.pivot_table(index="period", columns="peer", values="p_kw", aggfunc="sum")
    fig, ax = figure()
    stacked_power(ax, wide, injections)
    ax.set_ylabel("net injection (kW, + sells)")
    set_time_axis(ax, injections)
    ax.set_title("peers' net positions")
    outside_legend(ax, title="peer", ncols=1 + wide.shape[1] // 16)
    save_figure(fig, path)


#: Prices closer than this (currency/MWh) are drawn as one line: ADMM's tolerance.
SAME_PRICE = 1e-3


@styled
def p2p_price_plot(result: Result, path: Path) -> None:
    """Each peer's marginal value of energy per period (its balance's multiplier plus
    its node price: the price it trades at the margin), with the grid's tariffs."""
    prices = result.grid_prices
    wide = prices.pivot_table(index="period", columns="peer", values="marginal_value")
    spread = (wide.max(axis=1) - wide.min(axis=1)).max()
    if len(wide.columns) > 1 and spread < SAME_PRICE:  # one line, not one per peer
        wide = wide.mean(axis=1).to_frame(f"every peer (within {spread:.1g})")
    fig, ax = figure()
    edges = period_edges(prices)
    for peer in wide.columns:
        ax.stairs(wide[peer].to_numpy(), edges, baseline=None, lw=1.2, label=str(peer))
    tariffs = result.tables.get("upstream")
    for column, colour in (("import_price", "black"), ("export_price", "grey")):
        if tariffs is not None and column in tariffs:
            name = column.replace("_price", " tariff")
            step(ax, tariffs, column, color=colour, ls=":", lw=1, label=name)
    ax.set_ylabel(unit_label("marginal_value", result.currency))
    set_time_axis(ax, prices)
    ax.set_title("peers' marginal value of energy")
    outside_legend(ax, ncols=1 + prices["peer"].nunique() // 16)
    save_figure(fig, path)


# --- flexibility ---------------------------------------------------------------------------


@styled
def accepted_plot(result: Result, path: Path) -> None:
    """Accepted flexibility per period, stacked by product and direction: active-power
    products in kW (top), reactive ones in kvar (bottom)."""
    from gridmarkets.models.flexibility import REACTIVE_PRODUCT

    acc = result.accepted.assign(
        offer=result.accepted["product"] + " " + result.accepted["direction"]
    )
    reactive = acc["product"] == REACTIVE_PRODUCT
    parts = [("kW", acc[~reactive]), ("kvar", acc[reactive])]
    parts = [(unit, part) for unit, part in parts if part["accepted_kw"].abs().sum() > 0]
    fig, axes = figure(max(len(parts), 1), 1, size=(9, 3 + 2.2 * len(parts)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (unit, part) in zip(axes, parts, strict=False):
        wide = part.pivot_table(
            index="period", columns="offer", values="accepted_kw", aggfunc="sum"
        )
        stacked_power(ax, wide, acc, names=sorted(acc["offer"].unique()))
        ax.set_ylabel(f"accepted ({unit})")
        outside_legend(ax)
    set_time_axis(axes[-1], acc)
    axes[0].set_title("accepted flexibility by product")
    save_figure(fig, path)


@styled
def scenario_cost_plot(result: Result, path: Path) -> None:
    """A stochastic result's costs: per scenario for the stochastic (rp), wait-and-see
    (ws) and expected-value (eev) solutions, and out of sample the distribution of
    the rp and eev first stages' costs."""
    held_out = result.tables.get("out_of_sample")
    fig, axes = figure(1, 2 if held_out is not None else 1, size=(10, 3.8), squeeze=False)
    costs = result.tables["scenarios"].sort_values("rp")
    for column, marker in (("ws", "v"), ("rp", "o"), ("eev", "^")):
        axes[0, 0].plot(range(len(costs)), costs[column], marker, label=column)
    axes[0, 0].set_xlabel("scenario (by stochastic cost)")
    axes[0, 0].set_ylabel(unit_label("cost", result.currency, "scenarios"))
    axes[0, 0].set_title("in sample")
    axes[0, 0].legend()
    if held_out is not None:
        for column in ("rp", "eev"):
            order = held_out.sort_values(column)
            axes[0, 1].step(
                order[column], order["probability"].cumsum(), where="post", label=column
            )
        axes[0, 1].set_xlabel(unit_label("cost", result.currency, "out_of_sample"))
        axes[0, 1].set_ylabel("cumulative probability")
        axes[0, 1].set_title("out of sample")
        axes[0, 1].legend()
    save_figure(fig, path)


@styled
def day_ahead_plot(result: Result, path: Path) -> None:
    """The day-ahead net import (import - export, summed over meters) of the stochastic
    and the expected-value solutions."""
    table = result.tables["day_ahead"]
    net = table.groupby("period")[
        ["rp_import_kw", "rp_export_kw", "eev_import_kw", "eev_export_kw"]
    ].sum()
    frame = table.drop_duplicates("period").sort_values("period")
    fig, ax = figure()
    step(
        ax,
        frame,
        (net["rp_import_kw"] - net["rp_export_kw"]).reindex(frame["period"]),
        label="stochastic",
    )
    step(
        ax,
        frame,
        (net["eev_import_kw"] - net["eev_export_kw"]).reindex(frame["period"]),
        ls="--",
        label="expected value",
    )
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("day-ahead net import (kW)")
    set_time_axis(ax, frame)
    ax.set_title("day-ahead commitment")
    outside_legend(ax)
    save_figure(fig, path)


STOCHASTIC_PLOTS: dict[str, tuple[str, Plot]] = {
    "scenario_costs": ("scenarios", scenario_cost_plot),
    "day_ahead": ("day_ahead", day_ahead_plot),
}


#: Each model's plots: file stem -> (the table it draws, the function).
MODEL_PLOTS: dict[str, dict[str, tuple[str, Plot]]] = {
    "lem": {
        "prices": ("prices", uniform_price_plot),
        "supply_demand": ("accepted", supply_demand_plot),
    },
    "prosumer": {
        "schedule": ("power", schedule_plot),
        "soc": ("storage", soc_plot),
        "prices": ("grid", home_price_plot),
    },
    "community": {
        "exchange": ("exchange", exchange_plot),
        "schedule": ("power", schedule_plot),
        "soc": ("storage", soc_plot),
        "shared": ("shared", shared_plot),
    },
    "aggregator": {
        "portfolio": ("portfolio", portfolio_plot),
        "incentives": ("incentives", incentive_plot),
    },
    "p2p": {"trades": ("injections", p2p_trade_plot), "prices": ("grid_prices", p2p_price_plot)},
    "flexibility": {"accepted": ("accepted", accepted_plot)},
    "prosumer_stochastic": STOCHASTIC_PLOTS,
    "community_stochastic": STOCHASTIC_PLOTS,
    "aggregator_stochastic": {"scenario_costs": ("scenarios", scenario_cost_plot)},
}


# --- sweeps ------------------------------------------------------------------------------------


def sweep_plots(frame: pd.DataFrame, study, folder: str | Path) -> list[Path]:
    """One PNG per KPI of a sweep (:func:`gridmarkets.batch.to_frame`'s frame).

    A grid over two numeric parameters: a heatmap of the KPI (the mean where other
    parameters vary too). Otherwise one panel per numeric parameter: each scenario and,
    where values repeat, the mean per value. Axes are labelled from the parameters'
    names and units (:func:`gridmarkets.study.parameter_label`).

    Returns
    -------
    list of Path : the files written, ``<folder>/<kpi>.png``.
    """
    from gridmarkets.batch import kpi_names

    params = [p for p in study.parameters if _numeric(frame[p]) is not None]
    if not params:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    currency = study.scenarios[0].case.get("currency", "EUR") if study.scenarios else "EUR"
    grid = study.spec.design == "grid" and len(params) == 2
    draw = sweep_heatmap if grid else sweep_panels
    paths = []
    for kpi in kpi_names(frame):
        path = folder / f"{kpi.replace('/', '_')}.png"
        draw(frame, kpi, params, currency, path)
        paths.append(path)
    return paths


def _numeric(column: pd.Series) -> pd.Series | None:
    values = pd.to_numeric(column, errors="coerce")
    return values if values.notna().all() else None


@styled
def sweep_panels(frame, kpi: str, params: list[str], currency: str, path: Path) -> None:
    """The KPI against each parameter, one panel each."""
    from gridmarkets.study import parameter_label

    fig, axes = figure(1, len(params), size=(4.2 * len(params), 3.6), squeeze=False)
    y = pd.to_numeric(frame[kpi], errors="coerce")
    for ax, param in zip(axes[0], params, strict=True):
        x = _numeric(frame[param])
        ax.scatter(x, y, s=16, alpha=0.7, label="scenario")
        means = y.groupby(x).mean()
        if len(means) < len(x.dropna()):
            ax.plot(means.index, means.to_numpy(), color="tab:red", lw=1.2, label="mean")
            ax.legend()
        ax.set_xlabel(parameter_label(param, currency))
        ax.set_ylabel(unit_label(kpi, currency))
    fig.suptitle(unit_label(kpi, currency).split(" (")[0])
    save_figure(fig, path)


@styled
def sweep_heatmap(frame, kpi: str, params: list[str], currency: str, path: Path) -> None:
    """The KPI over a two-parameter grid, each cell annotated with its value."""
    from gridmarkets.study import parameter_label

    first, second = params
    values = frame.assign(
        **{p: _numeric(frame[p]) for p in params}, value=pd.to_numeric(frame[kpi], errors="coerce")
    ).pivot_table(index=second, columns=first, values="value", aggfunc="mean")
    fig, ax = figure(size=(1.6 + 0.9 * values.shape[1], 1.8 + 0.5 * values.shape[0]))
    image = ax.imshow(values.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label=unit_label(kpi, currency))
    ax.set_xticks(range(values.shape[1]), [f"{v:g}" for v in values.columns])
    ax.set_yticks(range(values.shape[0]), [f"{v:g}" for v in values.index])
    ax.set_xlabel(parameter_label(first, currency))
    ax.set_ylabel(parameter_label(second, currency))
    ax.grid(False)
    middle = np.nanmean(values.to_numpy()) if values.notna().any().any() else 0.0
    for (row, col), value in np.ndenumerate(values.to_numpy()):
        colour = "black" if value > middle else "white"
        ax.text(col, row, f"{value:.3g}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(unit_label(kpi, currency).split(" (")[0])
    save_figure(fig, path)
