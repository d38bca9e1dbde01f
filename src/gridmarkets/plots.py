"""Plots the CLI writes and notebooks reuse (matplotlib, Agg when headless; imported
when a plot is drawn, so importing a model does not load it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gridmarkets.results import Result


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG (tight layout, 110 dpi) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def price_plot(result: Result, path: Path) -> None:
    """Clearing price per period (and its interval, or one line per bus)."""
    prices = result.prices
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    if "bus" in prices and prices["bus"].notna().any():
        by = ["bus", "phase"] if "phase" in prices else ["bus"]  # per phase on 3ph
        for key, group in prices.groupby(by):
            ax.plot(group["period"], group["price"], lw=0.8, label=" ".join(map(str, key)))
        ax.set_title("nodal prices")
    else:
        ax.step(prices["period"], prices["price"], where="mid", label="price")
        low = prices["price_low"].replace(-np.inf, np.nan)
        high = prices["price_high"].replace(np.inf, np.nan)
        ax.fill_between(prices["period"], low, high, step="mid", alpha=0.2, label="interval")
        ax.legend()
        ax.set_title("uniform price")
    ax.set_xlabel("period")
    ax.set_ylabel("price (currency/MWh)")
    save_figure(fig, path)


def supply_demand_curves(ax, accepted, period: int) -> None:
    """Offers ascending and bids descending as step curves, for one period."""
    rows = accepted[accepted["period"] == period]
    for side, ascending, colour in (("sell", True, "tab:green"), ("buy", False, "tab:red")):
        blocks = rows[rows["side"] == side].sort_values("bid_price", ascending=ascending)
        q = np.concatenate([[0.0], blocks["offered_kw"].cumsum().to_numpy()])
        p = blocks["bid_price"].to_numpy()
        if len(p):
            ax.step(q, np.append(p, p[-1]), where="post", color=colour, label=side)
    ax.set_xlabel("quantity (kW)")
    ax.set_ylabel("price (currency/MWh)")


def supply_demand_plot(result: Result, path: Path) -> None:
    """Supply and demand curves of the period with the most traded energy."""
    accepted = result.accepted
    traded = accepted[accepted["side"] == "sell"].groupby("period")["quantity_kw"].sum()
    period = int(traded.idxmax()) if len(traded) else int(accepted["period"].min())
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    supply_demand_curves(ax, accepted, period)
    ax.set_title(f"supply and demand, period {period}")
    ax.legend()
    save_figure(fig, path)
