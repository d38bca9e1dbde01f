"""P2P trading costs: per pair and period, and a community boundary that costs
differently in and out, against merit orders computed here on small instances.

On a star (one buyer, every seller trading only with it) or with one seller, the
market is a merit order: each kW goes where it gains most over the next best use
(a seller's export, a buyer's import), net of what the trade costs both sides.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gridmarkets.errors import InputError
from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream

pytestmark = pytest.mark.solve

IMPORT, EXPORT = 250.0, 30.0
UPSTREAM = Upstream(IMPORT, EXPORT)


def fill(options_cost: np.ndarray, options_kw: np.ndarray, value: float, demand_kw: float):
    """Fill ``demand_kw`` worth ``value`` from the cheapest options first (kW each)."""
    taken = np.zeros(len(options_cost))
    left = demand_kw
    for k in np.argsort(options_cost):
        if options_cost[k] >= value or left <= 0:
            break
        taken[k] = min(options_kw[k], left)
        left -= taken[k]
    return taken


def star_market(seed: int, n_sellers: int = 3, periods: int = 4):
    """One buyer, ``n_sellers`` sellers trading only with it; costs per pair and period
    for the sellers' side, one per pair for the buyer's side, and one override."""
    rng = np.random.default_rng(seed)
    sellers = [f"s{k}" for k in range(n_sellers)]
    rows = []
    for t in range(periods):
        rows.append(("home", "buy", rng.uniform(5, 15), rng.uniform(150, 320), t))
        for s in sellers:
            rows.append((s, "sell", rng.uniform(1, 8), rng.uniform(0, 120), t))
    bids = pd.DataFrame(rows, columns=["participant", "side", "quantity_kw", "price", "period"])
    seller_side = [(s, "home", rng.uniform(0, 60), t) for s in sellers for t in range(periods)]
    buyer_side = [("home", s, rng.uniform(0, 30), np.nan) for s in sellers]
    override = [("home", sellers[0], rng.uniform(0, 30), periods - 1)]
    prefs = pd.DataFrame(
        seller_side + buyer_side + override, columns=["peer", "partner", "cost", "period"]
    )
    return bids, prefs, sellers


def star_cost(prefs: pd.DataFrame, peer: str, partner: str, t: int) -> float:
    """The pair's cost in period t: its own row for t, else its all-period row, else 0."""
    rows = prefs[(prefs["peer"] == peer) & (prefs["partner"] == partner)]
    own = rows[rows["period"] == t]
    rows = own if len(own) else rows[rows["period"].isna()]
    return float(rows["cost"].iloc[0]) if len(rows) else 0.0


def star_merit_order(bids, prefs, sellers):
    """Welfare (currency) and each seller's sale per period, by merit order."""
    welfare, sold = 0.0, {}
    for t, own in bids.groupby("period"):
        home = own[own["participant"] == "home"].iloc[0]
        offer = own[own["side"] == "sell"].set_index("participant").loc[sellers]
        welfare += ((EXPORT - offer["price"]).clip(lower=0) * offer["quantity_kw"]).sum()
        trade_cost = np.array(
            [star_cost(prefs, s, "home", t) + star_cost(prefs, "home", s, t) for s in sellers]
        )
        cost = np.append(np.maximum(EXPORT, offer["price"].to_numpy()) + trade_cost, IMPORT)
        kw = np.append(offer["quantity_kw"].to_numpy(), np.inf)
        taken = fill(cost, kw, home["price"], home["quantity_kw"])
        welfare += float((home["price"] - cost) @ np.nan_to_num(taken))
        sold.update({(s, t): taken[k] for k, s in enumerate(sellers)})
    return welfare / 1000, sold


@pytest.mark.parametrize("seed", range(4))
def test_costs_per_pair_and_period_clear_the_merit_order(seed):
    bids, prefs, sellers = star_market(seed)
    graph = [["home", s] for s in sellers]
    result = p2p.clear(bids, upstream=UPSTREAM, preferences=prefs, graph=graph)
    welfare, sold = star_merit_order(bids, prefs, sellers)
    assert result.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-9)
    trades = result.trades.set_index(["seller", "period"])["traded_kw"]
    for key, kw in sold.items():
        assert trades.get(key, 0.0) == pytest.approx(kw, abs=1e-6), key
    # the costs published per pair and period are the ones the merit order used
    table = result.pair_prices.set_index(["peer", "partner", "period"])
    for s in sellers:
        for t in range(4):
            assert table.at[(s, "home", t), "sell_cost"] == star_cost(prefs, s, "home", t)
            assert table.at[("home", s, t), "buy_cost"] == star_cost(prefs, "home", s, t)


def test_scalar_and_per_pair_preferences_are_still_accepted():
    bids, prefs, sellers = star_market(1, periods=2)
    scalar = prefs.drop(columns="period").groupby(["peer", "partner"], as_index=False).first()
    graph = [["home", s] for s in sellers]
    result = p2p.clear(bids, upstream=UPSTREAM, preferences=scalar, graph=graph)
    welfare, _ = star_merit_order(bids, scalar.assign(period=np.nan), sellers)
    assert result.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-9)


BOUNDARY = pd.DataFrame(
    {"community": ["north", "south"], "import_cost": [12.0, 40.0], "export_cost": [25.0, 3.0]}
)


def one_seller_market(seed: int, seller_in: str):
    """One seller and three buyers in two communities, two periods."""
    rng = np.random.default_rng(seed)
    other = "south" if seller_in == "north" else "north"
    community = {"pv": seller_in, "b0": seller_in, "b1": other, "b2": other}
    rows = []
    for t in range(2):
        rows.append(("pv", "sell", rng.uniform(5, 15), rng.uniform(0, 60), t))
        for b in ("b0", "b1", "b2"):
            rows.append((b, "buy", rng.uniform(1, 6), rng.uniform(80, 320), t))
    bids = pd.DataFrame(rows, columns=["participant", "side", "quantity_kw", "price", "period"])
    return bids, community


def one_seller_merit_order(bids, community, boundary):
    """Welfare (currency): the seller's kW go to the buyers gaining most over their
    import, net of the boundary's export (seller's side) and import (buyer's side)."""
    costs = boundary.set_index("community")
    welfare = 0.0
    for _, own in bids.groupby("period"):
        pv = own[own["participant"] == "pv"].iloc[0]
        buyers = own[own["side"] == "buy"]
        welfare += max(EXPORT - pv["price"], 0) * pv["quantity_kw"]
        welfare += ((buyers["price"] - IMPORT).clip(lower=0) * buyers["quantity_kw"]).sum()
        crossing = [
            0.0
            if community[b] == community["pv"]
            else costs.at[community["pv"], "export_cost"] + costs.at[community[b], "import_cost"]
            for b in buyers["participant"]
        ]
        gain = (
            buyers["price"].to_numpy()
            - np.array(crossing)
            - max(EXPORT, pv["price"])
            - (buyers["price"] - IMPORT).clip(lower=0).to_numpy()
        )
        taken = fill(-gain, buyers["quantity_kw"].to_numpy(), 0.0, pv["quantity_kw"])
        welfare += float(gain @ taken)
    return welfare / 1000


@pytest.mark.parametrize("seller_in", ["north", "south"])
@pytest.mark.parametrize("seed", range(3))
def test_community_boundary_costs_in_and_out_clear_the_merit_order(seed, seller_in):
    bids, community = one_seller_market(seed, seller_in)
    welfare = one_seller_merit_order(bids, community, BOUNDARY)
    options = dict(
        upstream=UPSTREAM,
        architecture="community",
        communities=community,
        boundary_costs=BOUNDARY,
    )
    central = p2p.clear(bids, **options)
    assert central.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-9)
    # swapping import and export costs changes the answer whenever energy crosses
    swapped = BOUNDARY.rename(columns={"import_cost": "export_cost", "export_cost": "import_cost"})
    assert p2p.clear(bids, **{**options, "boundary_costs": swapped}).kpis[
        "social_welfare"
    ] == pytest.approx(one_seller_merit_order(bids, community, swapped), rel=1e-9)
    admm = p2p.clear(bids, method="admm", admm={"rho": 5.0, "max_iterations": 20000}, **options)
    assert admm.kpis["converged"] == 1.0
    assert admm.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-4)


def test_boundary_costs_apply_to_direct_trades_across_communities():
    # full architecture: pv (north) sells to b1 (south) directly and pays north's export
    # cost; b1 pays south's import cost; b0 (north) pays nothing
    bids, community = one_seller_market(0, "north")
    result = p2p.clear(bids, upstream=UPSTREAM, communities=community, boundary_costs=BOUNDARY)
    table = result.pair_prices.set_index(["peer", "partner"]).sort_index()
    assert table.loc[("pv", "b1"), "sell_cost"].tolist() == [25.0, 25.0]
    assert table.loc[("b1", "pv"), "buy_cost"].tolist() == [40.0, 40.0]
    assert table.loc[("b1", "pv"), "sell_cost"].tolist() == [3.0, 3.0]
    assert table.loc[("pv", "b0"), ["sell_cost", "buy_cost"]].to_numpy().max() == 0.0
    welfare = one_seller_merit_order(bids, community, BOUNDARY)
    assert result.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-9)


@pytest.mark.unit
def test_cost_errors_name_the_row_and_field():
    bids, prefs, sellers = star_market(0, periods=2)
    with pytest.raises(InputError, match="preferences row 6: repeats row 5"):
        p2p.prepare(bids, preferences=pd.concat([prefs.iloc[:6], prefs.iloc[[5]]]))
    with pytest.raises(InputError, match="preferences row 0: period 9 is not a period"):
        p2p.prepare(bids, preferences=prefs.iloc[:1].assign(period=9))
    with pytest.raises(InputError, match="unknown column"):
        p2p.prepare(bids, preferences=prefs.assign(colour="green"))
    _, community = one_seller_market(0, "north")
    bids2, _ = one_seller_market(0, "north")
    with pytest.raises(InputError, match="boundary_costs row 1: 'east' is not a community"):
        p2p.prepare(
            bids2,
            communities=community,
            boundary_costs=BOUNDARY.assign(community=["north", "east"]),
        )
    with pytest.raises(InputError, match="boundary_costs row 0: import_cost -1.0 must be >= 0"):
        p2p.prepare(
            bids2, communities=community, boundary_costs=BOUNDARY.assign(import_cost=[-1.0, 2.0])
        )
    with pytest.raises(InputError, match="'b2' has no community"):
        p2p.prepare(bids2, communities={**community, "b2": None}, boundary_costs=BOUNDARY)
