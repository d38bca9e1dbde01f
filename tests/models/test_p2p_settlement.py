"""P2P settlement: every peer's settlement is its own best response at its prices.

The reference is each agent's own problem, solved here by scipy's ``linprog`` from the
agent's bids and the prices the result publishes (``pair_prices``, ``grid_prices``):
its blocks, its grid trade at its node's import and export prices, and a trade with
every partner at that partner's price net of its preference cost. Its optimum must be
the surplus the market settles on it, and its optimum without trades (the grid-only
baseline) must not exceed it; payments, network charges and the upstream's tariffs
must sum to zero.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from radial import radial_net
from scipy.optimize import linprog

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.errors import InputError
from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream
from gridmarkets.networks import LinDistFlow, feeder_from_net, linear_power_flow, nodal_prices
from gridmarkets.solvers import solve
from gridmarkets.specs import p2p as p2p_specs

pytestmark = pytest.mark.solve

# cases with peers of their own model (curves, storage, flexible loads) are certified
# in test_p2p_participants, each peer against its best response re-solved alone: the
# per-period linprog below knows block bids only
SHIPPED = sorted(
    p.stem for p in shipped_cases_dir().glob("p2p*.yaml") if not load_case(p).own_models()
)


def scale_of(bids: pd.DataFrame, period_hours: float = 1.0) -> float:
    """The market's own scale (currency): sum |price| quantity dt over every block."""
    return float((bids["price"].abs() * bids["quantity_kw"]).sum()) * period_hours / 1000


def own_optimum(bids, pair_prices, grid_prices, capacity_kw, period_hours, bound, *, trades=True):
    """An agent's best surplus at its prices (currency), by linprog per period.

    ``bids``: the agent's own blocks; ``pair_prices``: its rows of the result's table
    (price at its node and preference cost per partner); ``grid_prices``: its rows (or
    None: no grid). Trades are bounded by ``bound``, the market's total quantity, so
    that a price tie within solver tolerance cannot make the problem unbounded.
    """
    total = 0.0
    periods = set(bids["period"]) | set(pair_prices["period"])
    for t in sorted(periods):
        own = bids[bids["period"] == t]
        sell = (own["side"] == "sell").to_numpy()
        cost = list(np.where(sell, own["price"], -own["price"]))
        balance = list(np.where(sell, 1.0, -1.0))
        bounds = [(0.0, q) for q in own["quantity_kw"]]
        if grid_prices is not None:
            row = grid_prices[grid_prices["period"] == t].iloc[0]
            cost += [row["import_price"], -row["export_price"]]
            balance += [1.0, -1.0]
            bounds += [(0.0, capacity_kw)] * 2
        if trades:
            for row in pair_prices[pair_prices["period"] == t].itertuples():
                cost += [-(row.price - row.sell_cost), row.price + row.buy_cost]  # sell, buy
                balance += [-1.0, 1.0]
                bounds += [(0.0, bound)] * 2
        if not cost:
            continue
        best = linprog(cost, A_eq=[balance], b_eq=[0.0], bounds=bounds, method="highs")
        assert best.status == 0, best.message
        total -= best.fun * period_hours / 1000
    return total


def check_settlement(result, bids, capacity_kw=None, period_hours=1.0, rel_tol=1e-6):
    """Every agent's surplus is its best response at its prices and at least its
    baseline; the settlement closes; the KPIs certify both."""
    tol = rel_tol * scale_of(bids, period_hours)
    bids = bids if "period" in bids else bids.assign(period=0)
    peers = result.peers.set_index("peer")
    has_grid = "import_price" in result.grid_prices
    bound = float(bids["quantity_kw"].sum())
    for agent, row in peers.iterrows():
        own = bids[bids["participant"] == agent]
        pairs = result.pair_prices[result.pair_prices["peer"] == agent]
        grid = result.grid_prices[result.grid_prices["peer"] == agent] if has_grid else None
        if agent.startswith(p2p.MANAGER_PREFIX):
            grid = None
        best = own_optimum(own, pairs, grid, capacity_kw, period_hours, bound)
        alone = own_optimum(own, pairs, grid, capacity_kw, period_hours, bound, trades=False)
        assert row["surplus"] == pytest.approx(best, abs=tol), agent
        assert row["baseline_surplus"] == pytest.approx(alone, abs=tol), agent
        assert row["gain"] >= -tol, agent
    assert abs(result.settlement["payment"].sum()) <= tol
    assert abs(result.kpis["reconciliation_error"]) <= tol
    assert result.kpis["individually_rational"] == 1.0
    # the surpluses and the DSO's network charges share the welfare
    network = result.kpis["network_charges"]
    assert peers["surplus"].sum() + network == pytest.approx(result.kpis["social_welfare"], abs=tol)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_case_settles_each_peer_at_its_best_response(name):
    case = load_case(shipped_cases_dir() / f"{name}.yaml")
    result = pipeline.run_case(case, {})
    capacity = None if case.upstream is None else case.upstream.capacity_kw
    # ADMM stops at residuals of 1e-6 (relative): its prices are that close
    rel_tol = 1e-4 if case.method == "admm" else 1e-6
    check_settlement(
        result, p2p_specs.case_bids(case), capacity, case.horizon.period_hours, rel_tol
    )


def test_feeder_case_pays_every_seller_at_least_its_offer():
    # on main: prices from -37.5 to 4.5, the CHP offering at 90 paid -4.5, min gain -76.8
    case = load_case(shipped_cases_dir() / "p2p_feeder.yaml")
    result = pipeline.run_case(case, {})
    trades = result.trades
    offer = {pid: p.blocks[0].price for pid, p in case.peers.items()}
    assert (trades["seller_price"] >= trades["seller"].map(offer) - 1e-9).all()
    assert (trades["buyer_price"] <= trades["buyer"].map(offer) + 1e-9).all()
    chp = trades[trades["seller"] == "chp_24"]
    assert chp["traded_kw"].sum() > 0
    assert (chp["seller_price"] >= 90.0 - 1e-9).all()
    assert result.kpis["min_gain"] >= 0.0


def overload_feeder():
    """20 kV: root 0 - 1 - 2 (buyers), 1 - 3 over a weak line (about 1 MVA) to a PV park."""
    lines = [(0, 1, 0.4), (1, 2, 0.4), (1, 3, 0.03)]
    net = radial_net(20.0, lines, length_km=2.0, r_ohm_per_km=0.2, x_ohm_per_km=0.2)
    return feeder_from_net(net, name="overload")


OVERLOAD_BIDS = pd.DataFrame(
    {
        "participant": ["pv_park", "factory", "mall"],
        "side": ["sell", "buy", "buy"],
        "quantity_kw": [1600.0, 900.0, 700.0],
        "price": [10.0, 300.0, 280.0],
        "bus": [3, 2, 2],
    }
)


def test_congestion_rent_goes_to_the_dso_and_the_pv_park_is_paid_its_offer():
    # The weak line carries at most S cos(pi/12) (LinDistFlow's 12-sided polygon from
    # inside, unity power factor). The PV park's node price is its offer, 10; the
    # buyers' is the import price, 250 (they import the rest). The DSO collects the
    # difference on what crosses the line: (250 - 10) x line capacity.
    feeder = overload_feeder()
    upstream = Upstream(250.0, 30.0)
    m = p2p.build(OVERLOAD_BIDS, upstream=upstream, network=feeder)
    solution = solve(m)
    result = p2p.results(m, solution)
    rating = feeder.branches.set_index("to_bus").at[3, "rating_kva"]
    crossing_kw = rating * math.cos(math.pi / 12)
    assert result.kpis["network_charges"] == pytest.approx((250 - 10) * crossing_kw / 1000)
    sold = result.trades[result.trades["seller"] == "pv_park"]
    assert sold["traded_kw"].sum() == pytest.approx(crossing_kw)
    assert sold["seller_price"].to_numpy() == pytest.approx(10.0)
    assert sold["buyer_price"].to_numpy() == pytest.approx(250.0)
    nodal = nodal_prices(m.handles, solution).set_index("bus")["price"]
    assert nodal[3] - nodal[2] == pytest.approx(10.0 - 250.0)
    check_settlement(result, OVERLOAD_BIDS)


def weak_feeder():
    """20 kV: root 0 - 1, then two weak branches (about 350 kVA) to buses 2 and 3."""
    lines = [(0, 1, 0.4), (1, 2, 0.01), (1, 3, 0.01)]
    net = radial_net(20.0, lines, length_km=2.0, r_ohm_per_km=0.2, x_ohm_per_km=0.2)
    return feeder_from_net(net, name="weak")


def random_case(draw_seed: int, n: int, periods: int, architecture: str, network: bool):
    """Alternating sellers and buyers (some peers both), random prices and quantities."""
    rng = np.random.default_rng(draw_seed)
    rows = []
    for i in range(n):
        bus = int(rng.integers(1, 4))
        for t in range(periods):
            side = "sell" if i % 2 == 0 else "buy"
            price = rng.uniform(0, 150) if side == "sell" else rng.uniform(40, 300)
            rows.append((f"p{i}", side, rng.uniform(50, 900), price, t, bus))
            if rng.random() < 0.3:  # some peers also have a block of the other side
                other = "buy" if side == "sell" else "sell"
                rows.append((f"p{i}", other, rng.uniform(10, 200), rng.uniform(0, 300), t, bus))
    bids = pd.DataFrame(
        rows, columns=["participant", "side", "quantity_kw", "price", "period", "bus"]
    )
    peers = sorted(set(bids["participant"]))
    prefs = pd.DataFrame(
        [(a, b, rng.uniform(0, 10)) for a in peers for b in peers if a != b],
        columns=["peer", "partner", "cost"],
    )
    communities = {p: "a" if k < n / 2 else "b" for k, p in enumerate(peers)}
    options = {
        "architecture": architecture,
        "communities": communities,
        "preferences": prefs if architecture != "community" else None,
        "upstream": Upstream(250.0, 30.0, capacity_kw=rng.choice([None, 600.0])),
    }
    if network:
        options["network"] = weak_feeder()
    if architecture == "hybrid":
        graph = [(peers[0], peers[-1])] + ([(peers[1], peers[-1])] if n > 2 else [])
        edges = set(graph) | {(b, a) for a, b in graph}
        keep = [pair in edges for pair in zip(prefs["peer"], prefs["partner"], strict=True)]
        options.update(graph=[list(e) for e in graph], preferences=prefs[keep])
    return bids if network else bids.drop(columns="bus"), options


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 5),
    periods=st.integers(1, 2),
    architecture=st.sampled_from(["full", "community", "hybrid"]),
    network=st.booleans(),
)
def test_random_markets_settle_each_peer_at_its_best_response(
    seed, n, periods, architecture, network
):
    bids, options = random_case(seed, n, periods, architecture, network)
    result = p2p.clear(bids, **options)
    check_settlement(result, bids, options["upstream"].capacity_kw)


def test_peers_reactive_power_enters_the_reactive_balance():
    # loads at power factor 0.8 (0.75 kvar per kW) and a generator with q_kvar given:
    # the model's voltages are LinDistFlow's for the cleared P and Q, evaluated apart
    feeder = overload_feeder()
    bids = OVERLOAD_BIDS.assign(
        quantity_kw=[600.0, 900.0, 700.0],
        power_factor=[np.nan, 0.8, 0.8],
        q_kvar=[-120.0, np.nan, np.nan],
    )
    m = p2p.build(bids, upstream=Upstream(250.0, 30.0), network=feeder)
    result = p2p.results(m, solve(m))
    accepted = result.injections.groupby("bus")["p_kw"].sum()
    ratio = pd.Series({3: -120.0 / 600.0, 2: 0.75})  # kvar per kW, positive into the grid
    q = accepted * ratio.reindex(accepted.index)
    assert result.injections.groupby("bus")["q_kvar"].sum().to_numpy() == pytest.approx(q)
    p_in, q_in = (
        frame.reindex(feeder.buses.index).fillna(0.0).to_frame(0) for frame in (accepted, q)
    )
    model_q = m.handles.injection_values()[1][:, 0]
    assert model_q[1:] == pytest.approx(q_in[0].to_numpy()[1:])
    buses, _ = linear_power_flow(feeder, p_in, q_in)
    buses = buses.set_index("bus").loc[feeder.buses.index]
    v_model = [math.sqrt(m.network.v_sq_pu[b, 0].value) for b in feeder.buses.index]
    assert v_model == pytest.approx(buses["v_pu"].to_list(), abs=1e-9)


def test_network_errors_name_the_peer_and_the_formulation():
    feeder = overload_feeder()
    with pytest.raises(InputError, match="mall: bus 7 is not a bus of feeder overload"):
        p2p.build(OVERLOAD_BIDS.assign(bus=[3, 2, 7]), network=feeder)
    with pytest.raises(InputError, match="peer 'mall' has blocks at buses 1, 2"):
        p2p.build(pd.concat([OVERLOAD_BIDS, OVERLOAD_BIDS.iloc[[2]].assign(bus=1)]))
    with pytest.raises(InputError, match="lossless"):
        p2p.build(OVERLOAD_BIDS, network=feeder, formulation=LinDistFlow(losses=True))
    with pytest.raises(InputError, match="central only"):
        p2p.clear(OVERLOAD_BIDS, method="admm", formulation=LinDistFlow())


@pytest.mark.parametrize("architecture", ["full", "community", "hybrid"])
@pytest.mark.parametrize("seed", [0, 2, 4])
def test_admm_settles_each_peer_at_its_best_response_within_its_tolerance(architecture, seed):
    # ADMM stops at relative residuals of 1e-6: prices and trades are that close, so
    # the agents' best responses are matched to 1e-4 of the market's scale
    bids, options = random_case(seed, 2 + seed % 4, 1 + seed % 2, architecture, False)
    result = p2p.clear(bids, method="admm", admm={"rho": 5.0, "max_iterations": 20000}, **options)
    assert result.kpis["converged"] == 1.0
    check_settlement(result, bids, options["upstream"].capacity_kw, rel_tol=1e-4)
