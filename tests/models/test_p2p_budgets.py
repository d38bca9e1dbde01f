"""P2P energy budgets over 48 periods: where they bind, what they are worth.

A flexible load (3 kW at 300/MWh every half hour) may take at most 20 kWh over the
day and at least 2 kWh in the first three hours; a PV peer offers to it at a price
per period (above the export price, 30, so it sells to the load or not at all) and the
grid sells at a price that changes every period. Trading costs each side 1/MWh, so
the load buys the grid's energy from the grid rather than through the PV peer's
connection: with no ties, trades are unique. The reference is a merit order over
(period, source) computed here: the 2 kWh cheapest in the window, then the cheapest
of the rest up to 20 kWh. The budgets' values are checked against that merit order
and against re-solves with the budget moved by +-delta (finite differences of welfare).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gridmarkets.errors import InputError
from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream

pytestmark = pytest.mark.solve

N_T, DT, VALUE, FLEX_KW, EXPORT, TRADE_COST = 48, 0.5, 300.0, 3.0, 30.0, 1.0
WINDOW = range(0, 6)


def day(seed: int):
    rng = np.random.default_rng(seed)
    import_price = rng.uniform(150, 280, N_T)
    pv_kw = np.clip(4 * np.sin(np.pi * (np.arange(N_T) - 12) / 24), 0, None)
    pv_price = rng.uniform(31, 80, N_T)
    rows = [("flex", "buy", FLEX_KW, VALUE, t) for t in range(N_T)]
    rows += [("pv", "sell", pv_kw[t], pv_price[t], t) for t in range(N_T) if pv_kw[t] > 0]
    bids = pd.DataFrame(rows, columns=["participant", "side", "quantity_kw", "price", "period"])
    return bids, import_price, (pv_kw, pv_price)


def budgets(max_kwh: float = 20.0, min_kwh: float = 2.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant": ["flex", "flex", "pv"],
            "side": ["buy", "buy", "sell"],
            "first_period": [0, WINDOW[0], 0],
            "last_period": [N_T - 1, WINDOW[-1], N_T - 1],
            "min_kwh": [np.nan, min_kwh, np.nan],
            "max_kwh": [max_kwh, np.nan, 1000.0],  # the pv's is loose
        }
    )


def merit_order(import_price, pv, max_kwh=20.0, min_kwh=2.0):
    """Welfare (currency) and the marginal costs in and out of the window (currency/MWh)."""
    pv_kw, pv_price = pv
    options = []  # (cost per MWh, kWh available, period)
    for t in range(N_T):
        from_pv = min(pv_kw[t], FLEX_KW)
        options += [
            (pv_price[t] + 2 * TRADE_COST, from_pv * DT, t),
            (import_price[t], (FLEX_KW - from_pv) * DT, t),
        ]
    options = sorted(o for o in options if o[1] > 0)
    left = [o[1] for o in options]

    def take(energy, allowed):
        marginal, cost = None, 0.0
        for k, (price, _, t) in enumerate(options):
            if energy <= 1e-12:
                break
            if allowed(t) and left[k] > 0:
                got = min(left[k], energy)
                left[k] -= got
                energy -= got
                cost += price * got
                marginal = price
        return cost, marginal

    in_window, window_marginal = take(min_kwh, lambda t: t in WINDOW)
    rest, marginal = take(max_kwh - min_kwh, lambda t: True)
    welfare = (VALUE * max_kwh - in_window - rest) / 1000
    return welfare, marginal, window_marginal


def clear(seed: int, method: str = "central", **budget):
    bids, import_price, _ = day(seed)
    admm = {"rho": 5.0, "max_iterations": 20000}
    preferences = pd.DataFrame(
        {"peer": ["pv", "flex"], "partner": ["flex", "pv"], "cost": TRADE_COST}
    )
    return p2p.clear(
        bids,
        preferences=preferences,
        upstream=Upstream(list(import_price), EXPORT),
        period_hours=DT,
        budgets=budgets(**budget),
        method=method,
        admm=admm,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_budgets_bind_where_they_should_and_are_worth_the_merit_orders_margin(seed):
    _, import_price, pv_kw = day(seed)
    welfare, marginal, window_marginal = merit_order(import_price, pv_kw)
    result = clear(seed)
    assert result.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-9)
    table = result.budgets
    assert table["binding"].tolist() == [True, True, False]
    assert table["energy_kwh"].to_numpy()[:2] == pytest.approx([20.0, 2.0])
    # one more kWh in the day: bought at the margin; one more in the window: bought
    # at the window's margin instead of the day's
    assert table["value_per_mwh"].to_numpy() == pytest.approx(
        [VALUE - marginal, marginal - window_marginal, 0.0], abs=1e-6
    )


@pytest.mark.parametrize("bound", ["max_kwh", "min_kwh"])
def test_budget_value_is_the_finite_difference_of_welfare(bound):
    delta, base = 0.05, {"max_kwh": 20.0, "min_kwh": 2.0}
    value = clear(0).budgets["value_per_mwh"].to_numpy()[0 if bound == "max_kwh" else 1]
    up = clear(0, **{**base, bound: base[bound] + delta}).kpis["social_welfare"]
    down = clear(0, **{**base, bound: base[bound] - delta}).kpis["social_welfare"]
    assert value == pytest.approx((up - down) / (2 * delta) * 1000, rel=1e-6)
    assert abs(value) > 1.0  # it binds: the check is not 0 = 0


@pytest.mark.slow
def test_admm_with_budgeted_peers_matches_the_central_clearing():
    # about 1,400 iterations, each solving both budgeted peers' 48-period QPs
    central, admm = clear(1), clear(1, method="admm")
    assert admm.kpis["converged"] == 1.0
    assert admm.kpis["social_welfare"] == pytest.approx(central.kpis["social_welfare"], rel=1e-4)
    both = central.trades.merge(admm.trades, on=["seller", "buyer", "period"], how="outer")
    gap = (both["traded_kw_x"].fillna(0) - both["traded_kw_y"].fillna(0)).abs().max()
    assert gap <= 0.01 * central.trades["traded_kw"].max()
    assert admm.budgets["energy_kwh"].to_numpy() == pytest.approx(
        central.budgets["energy_kwh"].to_numpy(), abs=1e-3
    )
    assert admm.budgets["value_per_mwh"].to_numpy() == pytest.approx(
        central.budgets["value_per_mwh"].to_numpy(), abs=0.05
    )


def test_grid_only_baseline_of_a_budgeted_peer_respects_its_budget():
    # alone, flex buys its 20 kWh from the grid: the cheapest 2 kWh of the window and
    # the cheapest 18 kWh of the rest, at the import prices
    _, import_price, _ = day(0)
    welfare, _, _ = merit_order(import_price, (np.zeros(N_T), np.zeros(N_T)))
    baseline = clear(0).peers.set_index("peer")["baseline_surplus"]
    assert baseline["flex"] == pytest.approx(welfare, rel=1e-9)


@pytest.mark.unit
def test_budget_errors_name_the_row_and_field():
    bids, _, _ = day(0)
    table = budgets()
    cases = [
        (
            table.assign(participant=["flex", "nobody", "pv"]),
            "row 1: participant .nobody. has no buy",
        ),
        (table.assign(last_period=[99, 5, 47]), "budgets row 0: last_period 99"),
        (table.assign(min_kwh=[30.0, np.nan, np.nan]), r"row 0: min_kwh 30, max_kwh 20"),
        (table.assign(max_kwh=np.nan, min_kwh=np.nan), "neither min_kwh nor max_kwh"),
        (table.assign(side=["buy", "both", "sell"]), "row 1: side 'both'"),
        (table.assign(energy=1.0), r"unknown column\(s\) \['energy'\]"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            p2p.prepare(bids, budgets=bad)
