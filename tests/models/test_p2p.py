"""P2P trading: reciprocity, individual rationality, ADMM against the central LP, DSO."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from radial import radial_net

from gridmarkets.errors import InputError
from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream
from gridmarkets.networks import ac_check, feeder_from_net

pytestmark = pytest.mark.solve

UPSTREAM = Upstream(import_price=250.0, export_price=30.0)


def random_market(n: int, periods: int, seed: int = 0):
    """Alternate sellers and buyers, and distinct random preference costs per pair.

    Distinct costs make the LP's trades unique, so ADMM can be compared trade by trade.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for t in range(periods):
            if i % 2 == 0:
                rows.append((f"p{i:03d}", "sell", rng.uniform(1, 10), rng.uniform(0, 150), t))
            else:
                rows.append((f"p{i:03d}", "buy", rng.uniform(1, 10), rng.uniform(50, 300), t))
    bids = pd.DataFrame(rows, columns=["participant", "side", "quantity_kw", "price", "period"])
    peers = sorted(set(bids["participant"]))
    prefs = [(a, b, rng.uniform(1, 20)) for a in peers for b in peers if a != b]
    return bids, pd.DataFrame(prefs, columns=["peer", "partner", "cost"])


def two_sellers_one_buyer():
    return pd.DataFrame(
        {
            "participant": ["pv", "chp", "home"],
            "side": ["sell", "sell", "buy"],
            "quantity_kw": [4.0, 5.0, 6.0],
            "price": [20.0, 90.0, 300.0],
        }
    )


def test_designed_market_trades_merit_order_and_prices_from_reciprocity():
    # home needs 6 kW: 4 from pv (cost 20), 2 from chp (90); grid import at 250.
    # The chp is marginal, so every bilateral price is 90 (what the next kW costs).
    result = p2p.clear(two_sellers_one_buyer(), upstream=UPSTREAM)
    trades = result.trades.set_index("seller")
    assert trades.loc["pv", "traded_kw"] == pytest.approx(4.0)
    assert trades.loc["chp", "traded_kw"] == pytest.approx(2.0)
    assert trades["price"].to_numpy() == pytest.approx([90.0, 90.0])
    assert result.kpis["social_welfare"] == pytest.approx((6 * 300 - 4 * 20 - 2 * 90) / 1000)
    assert result.kpis["import_kwh"] == pytest.approx(0.0)


def test_reciprocity_exact_and_individual_rationality_from_tables():
    bids, prefs = random_market(12, 3, seed=4)
    result = p2p.clear(bids, upstream=UPSTREAM, preferences=prefs)
    trades = result.trades
    assert len(trades) > 0
    assert np.abs(trades["sold_kw"] - trades["bought_kw"]).max() <= 1e-9
    peers = result.peers
    assert (peers["gain"] >= -1e-9).all()
    # payments between peers cancel, so the surpluses add up to the welfare
    assert peers["surplus"].sum() == pytest.approx(result.kpis["social_welfare"], rel=1e-9)
    assert peers["trade_payment"].sum() == pytest.approx(0.0, abs=1e-9)


def test_grid_only_baseline_is_each_peers_best_alone():
    # alone, pv exports 4 kW at 30 and chp does not run (90 > 30); home imports at 250
    result = p2p.clear(two_sellers_one_buyer(), upstream=UPSTREAM)
    baseline = result.peers.set_index("peer")["baseline_surplus"]
    assert baseline["pv"] == pytest.approx(4 * (30 - 20) / 1000)
    assert baseline["chp"] == pytest.approx(0.0)
    assert baseline["home"] == pytest.approx(6 * (300 - 250) / 1000)


def test_preferences_steer_the_buyer_to_the_preferred_seller():
    bids = pd.DataFrame(
        {
            "participant": ["near", "far", "home"],
            "side": ["sell", "sell", "buy"],
            "quantity_kw": [5.0, 5.0, 5.0],
            "price": [50.0, 40.0, 300.0],
        }
    )
    prefs = pd.DataFrame({"peer": ["home"], "partner": ["far"], "cost": [20.0]})
    # without a near-far edge (far could otherwise sell through near, at no cost)
    graph = [["home", "near"], ["home", "far"]]
    result = p2p.clear(bids, upstream=UPSTREAM, preferences=prefs, graph=graph)
    assert result.trades.set_index("seller")["traded_kw"].to_dict() == pytest.approx({"near": 5.0})


def test_community_and_hybrid_route_through_managers():
    bids, _ = random_market(8, 1, seed=2)
    communities = {p: ("a" if int(p[1:]) < 4 else "b") for p in bids["participant"]}
    full = p2p.clear(bids, upstream=UPSTREAM)
    community = p2p.clear(
        bids, upstream=UPSTREAM, architecture="community", communities=communities
    )
    hybrid = p2p.clear(bids, upstream=UPSTREAM, architecture="hybrid", communities=communities)
    trades = community.trades
    peers = set(bids["participant"])
    # no peer trades directly with another peer
    assert not (trades["seller"].isin(peers) & trades["buyer"].isin(peers)).any()
    managers = community.peers[community.peers["peer"].str.startswith(p2p.MANAGER_PREFIX)]
    assert len(managers) == 2
    # managers have no energy of their own: what they buy they sell
    assert np.abs(managers["sold_kwh"] - managers["bought_kwh"]).max() <= 1e-6
    # without network or preference costs, all three reach the same welfare
    for other in (community, hybrid):
        assert other.kpis["social_welfare"] == pytest.approx(full.kpis["social_welfare"])


def test_trading_graph_options():
    peers = ["a", "b", "c"]
    assert p2p.trading_graph(peers) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert p2p.trading_graph(peers, [["b", "a"]]) == [("a", "b")]
    with pytest.raises(InputError, match="not a peer"):
        p2p.trading_graph(peers, [["a", "z"]])


def test_a_peer_without_partners_only_trades_with_the_grid():
    bids = two_sellers_one_buyer()
    result = p2p.clear(bids, upstream=UPSTREAM, graph=[["chp", "home"]])
    assert set(result.trades["seller"]) == {"chp"}
    assert result.trades["traded_kw"].sum() == pytest.approx(5.0)


@pytest.mark.parametrize(
    "n", [10, 50, pytest.param(100, marks=pytest.mark.slow)], ids=lambda n: f"{n}peers"
)
def test_admm_matches_the_central_lp(n, record_property):
    # the criteria on the complete trading graph: welfare within 0.1 %, every
    # trade within 1 % of the largest trade, against the central LP solved by HiGHS
    bids, prefs = random_market(n, 1, seed=n)
    central = p2p.clear(bids, upstream=UPSTREAM, preferences=prefs)
    admm = p2p.clear(
        bids,
        upstream=UPSTREAM,
        preferences=prefs,
        method="admm",
        admm={"rho": 5.0, "max_iterations": 12000},
    )
    iterations = admm.kpis["iterations"]
    record_property("admm_iterations", iterations)
    assert iterations == len(admm.admm_log) > 1
    w_lp, w_admm = central.kpis["social_welfare"], admm.kpis["social_welfare"]
    assert abs(w_admm - w_lp) <= 1e-3 * abs(w_lp)
    both = central.trades.merge(admm.trades, on=["seller", "buyer", "period"], how="outer")
    error = (both["traded_kw_x"].fillna(0) - both["traded_kw_y"].fillna(0)).abs().max()
    assert error <= 0.01 * central.trades["traded_kw"].max()
    # ADMM's consensus trades are reciprocal exactly
    assert (admm.trades["sold_kw"] == admm.trades["bought_kw"]).all()


def overload_feeder():
    """20 kV: root 0 - 1 - 2 (buyers), 1 - 3 over a weak line (about 1 MVA) to a PV park."""
    lines = [(0, 1, 0.4), (1, 2, 0.4), (1, 3, 0.03)]
    net = radial_net(20.0, lines, length_km=2.0, r_ohm_per_km=0.2, x_ohm_per_km=0.2)
    return feeder_from_net(net, name="overload")


def overload_bids():
    return pd.DataFrame(
        {
            "participant": ["pv_park", "factory", "mall"],
            "side": ["sell", "buy", "buy"],
            "quantity_kw": [1600.0, 900.0, 700.0],
            "price": [10.0, 300.0, 280.0],
            "bus": [3, 2, 2],
        }
    )


def ac_of(feeder, result):
    inj = result.injections.pivot_table(index="bus", columns="period", values="p_kw", aggfunc="sum")
    return ac_check(feeder, inj, 0.0 * inj)


def test_dso_network_aware_clearing_respects_the_line_and_check_names_cuts():
    feeder = overload_feeder()
    rating = feeder.branches.set_index("to_bus").at[3, "rating_kva"]
    free = p2p.clear(overload_bids(), upstream=UPSTREAM)
    sold = free.trades.groupby("seller")["traded_kw"].sum()
    assert sold["pv_park"] == pytest.approx(1600.0)
    assert ac_of(feeder, free).max_loading_percent > 100.0  # unsupervised: overloaded

    aware = p2p.clear(overload_bids(), upstream=UPSTREAM, network=feeder)
    assert ac_of(feeder, aware).max_loading_percent <= 100.5
    park = aware.injections.set_index("peer").at["pv_park", "p_kw"]
    assert park < rating
    assert "network_charge" in aware.trades

    cuts = p2p.dso_check(free, feeder)
    assert set(cuts["seller"]) == {"pv_park"}
    assert set(cuts["buyer"]) <= {"factory", "mall"}
    # what remains crosses the weak line within its rating, and no more is cut
    assert cuts["remaining_kw"].sum() == pytest.approx(rating, rel=1e-6)
    assert cuts["cut_kw"].sum() == pytest.approx(1600.0 - rating, rel=1e-6)


def test_dso_check_is_empty_when_trades_fit():
    feeder = overload_feeder()
    bids = overload_bids().assign(quantity_kw=[500.0, 300.0, 200.0])
    assert p2p.dso_check(p2p.clear(bids, upstream=UPSTREAM), feeder).empty


def test_bad_inputs_name_the_field():
    bids = two_sellers_one_buyer()
    with pytest.raises(InputError, match="architecture"):
        p2p.clear(bids, architecture="star")
    with pytest.raises(InputError, match="community"):
        p2p.clear(bids, architecture="community")
    prefs = pd.DataFrame({"peer": ["home"], "partner": ["pv"], "cost": [-1.0]})
    with pytest.raises(InputError, match="cost"):
        p2p.clear(bids, preferences=prefs)
