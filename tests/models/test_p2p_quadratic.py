"""P2P with quadratic costs and utilities: the central QP, ADMM, and the KKT conditions.

Peers state curves ``a p^2 + b p`` (sellers' cost) and ``b p - a p^2`` (buyers'
utility) on ``p_min_kw <= p <= p_max_kw``, some with a minimum above zero (must-run
output or consumption); every pair trades, and the trade term ``gamma x^2`` per edge
makes the trades unique. The reference solves the market's KKT conditions here with
numpy: for every assignment of each peer's output to its lower bound, its upper bound
or in between, the stationarity, reciprocity and balance equations are one linear
system; the one whose solution respects the bounds and whose bound multipliers have
the right signs is the market's optimum.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream
from gridmarkets.models.participants import CurveBid

pytestmark = pytest.mark.solve

GAMMA, DT, PERIODS = 2.0, 1.0, [0, 1]
# ADMM stops at residuals of 1e-5 (relative and absolute): ample for the agreement
# asked of it below (welfare to 1e-4, trades to 1 % of the largest)
ADMM = {"rho": 5.0, "eps_abs": 1e-5, "eps_rel": 1e-5, "max_iterations": 5000}


def random_curves(seed: int, n_sellers: int = 3, n_buyers: int = 3) -> list[CurveBid]:
    rng = np.random.default_rng(seed)
    specs = []
    for k in range(n_sellers + n_buyers):
        sell = k < n_sellers
        b = rng.uniform(10, 60, len(PERIODS)) if sell else rng.uniform(120, 260, len(PERIODS))
        specs.append(
            CurveBid(
                participant=f"{'g' if sell else 'd'}{k}",
                side="sell" if sell else "buy",
                a=float(rng.uniform(0.5, 4.0)),
                b=b.tolist(),
                p_min_kw=float(rng.choice([0.0, rng.uniform(1, 3)])),
                p_max_kw=float(rng.uniform(5, 10)),
            )
        )
    return specs


def kkt_market(specs: list[CurveBid], t: int):
    """Outputs p (kW), edge trades x (kW, what the first sells to the second), balance
    multipliers (currency/MWh) and welfare (currency) of period ``t``, by active sets."""
    n, per_kw = len(specs), DT / 1000
    edges = list(itertools.combinations(range(n), 2))
    s = np.array([1.0 if c.side == "sell" else -1.0 for c in specs])  # injection sign
    a = np.array([c.a for c in specs]) * per_kw
    b = (
        np.array([np.atleast_1d(c.b)[t] for c in specs]) * per_kw * -s
    )  # utility slope: +b buy, -b sell
    low, high = np.array([c.p_min_kw for c in specs]), np.array([c.p_max_kw for c in specs])
    incidence = np.zeros((n, len(edges)))
    for e, (i, j) in enumerate(edges):
        incidence[i, e], incidence[j, e] = 1.0, -1.0
    size = 2 * n + len(edges)  # unknowns: p, x, lambda
    solutions = []
    for state in itertools.product(("low", "free", "high"), repeat=n):
        matrix, rhs = np.zeros((size, size)), np.zeros(size)
        for i in range(n):  # stationarity in p_i, or p_i at its bound
            if state[i] == "free":
                matrix[i, i], matrix[i, n + len(edges) + i], rhs[i] = -2 * a[i], s[i], -b[i]
            else:
                matrix[i, i], rhs[i] = 1.0, low[i] if state[i] == "low" else high[i]
        for e in range(len(edges)):  # stationarity in x_e: -2 gamma x_e - A_e' lambda = 0
            row = n + e
            matrix[row, n + e] = -2 * GAMMA * per_kw
            matrix[row, n + len(edges) :] = -incidence[:, e]
        for i in range(n):  # balance: s_i p_i - A_i x = 0
            row = n + len(edges) + i
            matrix[row, i], matrix[row, n : n + len(edges)] = s[i], -incidence[i]
        z, *_ = np.linalg.lstsq(matrix, rhs, rcond=None)
        if np.abs(matrix @ z - rhs).max() > 1e-9:
            continue
        p, x, lam = z[:n], z[n : n + len(edges)], z[n + len(edges) :]
        slope = b - 2 * a * p + lam * s  # d Lagrangian / d p_i
        fine = (p >= low - 1e-9) & (p <= high + 1e-9)
        for i in range(n):
            fine[i] &= {"free": True, "low": slope[i] <= 1e-12, "high": slope[i] >= -1e-12}[
                state[i]
            ]
        if fine.all():
            welfare = float(b @ p - a @ p**2 - GAMMA * per_kw * x @ x)
            solutions.append((p, x, lam / per_kw, welfare))
    assert len(solutions) == 1, f"{len(solutions)} KKT points"
    return edges, solutions[0]


def kkt_reference(specs, periods=PERIODS):
    """Per period: trades {(seller, buyer, t): kW}, outputs, prices, and total welfare."""
    names = [c.participant for c in specs]
    trades, outputs, prices, welfare = {}, {}, {}, 0.0
    for t in periods:
        edges, (p, x, price, w) = kkt_market(specs, t)
        welfare += w
        for (i, j), kw in zip(edges, x, strict=True):
            seller, buyer = (names[i], names[j]) if kw > 0 else (names[j], names[i])
            trades[seller, buyer, t] = abs(kw)
        outputs.update({(name, t): p[k] for k, name in enumerate(names)})
        prices.update({(name, t): price[k] for k, name in enumerate(names)})
    return trades, outputs, prices, welfare


def trade_gap(result, trades: dict) -> float:
    cleared = result.trades.set_index(["seller", "buyer", "period"])["traded_kw"]
    keys = set(cleared.index) | set(trades)
    return max(abs(cleared.get(k, 0.0) - trades.get(k, 0.0)) for k in keys)


@pytest.mark.parametrize("seed", range(4))
def test_central_qp_and_admm_agree_with_the_kkt_solution(seed):
    specs = random_curves(seed)
    trades, outputs, prices, welfare = kkt_reference(specs)
    largest = max(trades.values())
    options = {"participants": specs, "periods": PERIODS, "quadratic": GAMMA}
    central = p2p.clear(None, **options)
    admm = p2p.clear(None, method="admm", admm=ADMM, **options)
    assert admm.kpis["converged"] == 1.0
    # the central QP against the KKT solution
    assert central.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-6)
    assert trade_gap(central, trades) <= 1e-6 * largest
    injected = central.injections.set_index(["peer", "period"])["p_kw"]
    for (name, t), p in outputs.items():
        sign = 1.0 if name.startswith("g") else -1.0
        assert injected[name, t] == pytest.approx(sign * p, abs=1e-6)
    value = central.grid_prices.set_index(["peer", "period"])["marginal_value"]
    for key, price in prices.items():
        assert value[key] == pytest.approx(price, abs=1e-4)
    # ADMM against both
    assert admm.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-4)
    assert trade_gap(admm, trades) <= 0.01 * largest
    assert admm.kpis["social_welfare"] == pytest.approx(central.kpis["social_welfare"], rel=1e-4)


def test_must_run_minimum_binds_against_the_market():
    # a generator that must run at 4 kW although its cost is above every buyer's value
    # at the margin: it sells at least 4 kW, and its marginal value is below its cost
    specs = [
        CurveBid(participant="g0", side="sell", a=1.0, b=250.0, p_min_kw=4.0, p_max_kw=8.0),
        CurveBid(participant="g1", side="sell", a=1.0, b=10.0, p_max_kw=8.0),
        CurveBid(participant="d0", side="buy", a=2.0, b=200.0, p_max_kw=10.0),
    ]
    result = p2p.clear(None, participants=specs, periods=[0], quadratic=GAMMA)
    out = result.injections.set_index("peer")["p_kw"]
    assert out["g0"] == pytest.approx(4.0, abs=1e-7)
    trades, outputs, prices, welfare = kkt_reference(specs, periods=[0])
    assert result.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-6)
    marginal = result.grid_prices.set_index("peer")["marginal_value"]
    assert marginal["g0"] < 250.0 + 2 * 4.0  # below its marginal cost at p_min
    assert marginal["g0"] == pytest.approx(prices["g0", 0], abs=1e-4)


def test_quadratic_peers_with_a_grid_and_communities_central_and_admm_agree():
    specs = random_curves(11)
    communities = {c.participant: "north" if k % 2 else "south" for k, c in enumerate(specs)}
    options = {
        "participants": specs,
        "periods": PERIODS,
        "quadratic": GAMMA,
        "upstream": Upstream([180.0, 220.0], 40.0, capacity_kw=3.0),
        "architecture": "community",
        "communities": communities,
        "boundary_costs": pd.DataFrame(
            {"community": ["north", "south"], "import_cost": [5.0, 8.0], "export_cost": [2, 1]}
        ),
    }
    central = p2p.clear(None, **options)
    admm = p2p.clear(None, method="admm", admm=ADMM, **options)
    assert admm.kpis["converged"] == 1.0
    assert admm.kpis["social_welfare"] == pytest.approx(central.kpis["social_welfare"], rel=1e-4)
    largest = central.trades["traded_kw"].max()
    assert (
        trade_gap(
            admm, central.trades.set_index(["seller", "buyer", "period"])["traded_kw"].to_dict()
        )
        <= 0.01 * largest
    )
    assert central.kpis["individually_rational"] == 1.0
