"""The LEM's prices every participant can accept, against references computed here.

- blocks from 1e-9 to 1e9 kW against a merit order walked block by block: every block
  the merit order accepts whole or rejects (not a marginal one) to a millionth of its
  own quantity;
- individual rationality and a closed settlement on random markets (uniform and
  pay-as-bid, divisible and indivisible, islanded and with a capped upstream), each
  participant's gain recomputed from the accepted blocks and the prices;
- convex-hull prices of MILP markets against the minimum total lost opportunity over
  every candidate price (the bid prices and tariffs, where that piecewise-linear convex
  function has its kinks);
- the bids' reactive power reaching LinDistFlow: case33bw's loads as bids clear the
  import pandapower's AC power flow needs.
"""

import copy

import numpy as np
import pandapower as pp
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.models import lem
from gridmarkets.networks import LinDistFlow, iterate_losses, load, net_injections

pytestmark = pytest.mark.solve
QUIET = {"options": {"output_flag": False}}


def walk_merit_order(bids: pd.DataFrame) -> tuple[pd.Series, set]:
    """Accepted kW per block of an islanded one-period market with distinct prices, and
    the blocks left partly accepted (the marginal ones)."""
    buys = bids[bids["side"] == "buy"].sort_values("price", ascending=False).index.tolist()
    sells = bids[bids["side"] == "sell"].sort_values("price").index.tolist()
    left = bids["quantity_kw"].astype(float).to_dict()
    accepted = pd.Series(0.0, index=bids.index)
    i = j = 0
    while i < len(buys) and j < len(sells):
        if bids.at[buys[i], "price"] <= bids.at[sells[j], "price"]:
            break
        traded = min(left[buys[i]], left[sells[j]])
        for block in (buys[i], sells[j]):
            accepted[block] += traded
            left[block] -= traded
        i += left[buys[i]] == 0
        j += left[sells[j]] == 0
    partial = {b for b in bids.index if 0 < accepted[b] < bids.at[b, "quantity_kw"]}
    return accepted, partial


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    exponents=st.lists(st.floats(-9, 9), min_size=2, max_size=14),
    seed=st.integers(0, 2**16),
)
def test_blocks_from_a_nanowatt_to_a_terawatt_clear_as_the_merit_order(exponents, seed):
    rng = np.random.default_rng(seed)
    n = len(exponents)
    bids = pd.DataFrame(
        {
            "participant": [f"p{k}" for k in range(n)],
            "side": rng.choice(["buy", "sell"], n),
            "quantity_kw": 10.0 ** np.array(exponents),
            "price": rng.permutation(n) * 7.0 + 10.0,  # distinct: one optimum
        }
    )
    reference, marginal = walk_merit_order(bids)
    result = lem.clear(bids, solve_options=QUIET)
    got = result.accepted["accepted_kw"]
    whole = ~bids.index.isin(list(marginal))
    relative = (got - reference).abs() / bids["quantity_kw"]
    assert (relative[whole] <= 1e-6).all(), bids.assign(got=got, reference=reference)[whole]
    # the volume traded, to the solver's resolution: an LP balances its rows to HiGHS's
    # primal feasibility tolerance (1e-7 kW), so a trade no larger than that is not seen
    for side in ("buy", "sell"):
        on_side = bids["side"] == side
        expected = reference[on_side].sum()
        assert got[on_side].sum() == pytest.approx(expected, rel=1e-9, abs=1e-7)


def random_market(draw_seed: int, n: int, indivisible: bool, with_upstream: bool):
    rng = np.random.default_rng(draw_seed)
    bids = pd.DataFrame(
        {
            "participant": [f"p{k % max(2, n // 2)}" for k in range(n)],  # some own two blocks
            "side": rng.choice(["buy", "sell"], n),
            "quantity_kw": rng.integers(1, 20, n).astype(float),
            "price": rng.integers(1, 20, n) * 5.0,
            "period": rng.integers(0, 2, n),
            "indivisible": rng.random(n) < (0.4 if indivisible else 0.0),
        }
    )
    bids["block"] = bids.groupby(["participant", "side", "period"]).cumcount()
    upstream = lem.Upstream(60.0, 20.0, capacity_kw=15.0) if with_upstream else None
    return bids, upstream


def gains(result, bids: pd.DataFrame, hours: float = 1.0) -> pd.Series:
    """Each participant's surplus at the prices it is settled at, plus its uplift."""
    accepted = result.accepted
    settled = accepted.merge(result.prices[["period", "price"]], on="period")
    sign = np.where(settled["side"] == "buy", 1.0, -1.0)
    surplus = sign * (settled["bid_price"] - settled["price"]) * settled["accepted_kw"]
    by_participant = (surplus * hours / 1000).groupby(settled["participant"]).sum()
    return by_participant + result.settlement.set_index("participant")["uplift"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(2, 10),
    indivisible=st.booleans(),
    with_upstream=st.booleans(),
    pricing=st.sampled_from(["uniform", "pay_as_bid"]),
)
def test_random_markets_leave_no_participant_worse_off_and_settle_closed(
    seed, n, indivisible, with_upstream, pricing
):
    bids, upstream = random_market(seed, n, indivisible, with_upstream)
    result = lem.clear(bids, upstream=upstream, pricing=pricing, solve_options=QUIET)
    k = result.kpis
    stake = float((bids["price"] * bids["quantity_kw"]).sum()) / 1000
    assert k["individually_rational"] == 1.0
    assert k["reconciliation_error"] == pytest.approx(0.0, abs=1e-9 * stake)
    if pricing == "uniform":
        assert gains(result, bids).min() >= -1e-9 * stake  # recomputed from the blocks
    else:
        surplus = result.settlement["surplus"]
        assert surplus.abs().max() <= 1e-9 * stake  # pay-as-bid: each block at its price
    if not indivisible and pricing == "uniform":
        assert k["max_lost_opportunity"] <= 1e-9 * stake  # every block at its best response


def total_lost_opportunity(price: float, bids: pd.DataFrame, upstream, welfare: float) -> float:
    """Sum over every block (and the upstream's import and export) of its best surplus at
    ``price`` (all or nothing: linear in its quantity) minus the cleared welfare, which
    is what the cleared schedule earns at any price (the payments cancel)."""
    sign = np.where(bids["side"] == "buy", 1.0, -1.0)
    best = np.maximum(sign * (bids["price"] - price), 0.0) * bids["quantity_kw"]
    total = best.sum()
    if upstream is not None:
        total += upstream.capacity_kw * (
            max(price - upstream.import_price, 0.0) + max(upstream.export_price - price, 0.0)
        )
    return total / 1000 - welfare


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n=st.integers(2, 9), with_upstream=st.booleans())
def test_milp_prices_minimise_the_total_lost_opportunity(seed, n, with_upstream):
    bids, upstream = random_market(seed, n, True, with_upstream)
    bids = bids.assign(period=0, block=range(n))
    result = lem.clear(bids, upstream=upstream, solve_options={**QUIET, "mip_gap": 0.0})
    welfare = result.kpis["social_welfare"]
    candidates = [*bids["price"], *(() if upstream is None else (60.0, 20.0))]
    best = min(total_lost_opportunity(p, bids, upstream, welfare) for p in candidates)
    price = result.prices.loc[0, "price"]
    assert total_lost_opportunity(price, bids, upstream, welfare) <= best + 1e-9
    assert result.kpis["individually_rational"] == 1.0


def test_an_indivisible_marginal_seller_sets_a_price_between_the_bids():
    """The issue's case: the marginal block indivisible. The price is one the accepted
    blocks support (here any of [30, 50]), not a default of 0, and nobody needs uplift."""
    bids = pd.DataFrame(
        {
            "participant": ["home", "chp"],
            "side": ["buy", "sell"],
            "quantity_kw": [10.0, 10.0],
            "price": [50.0, 30.0],
            "indivisible": [False, True],
        }
    )
    result = lem.clear(bids, solve_options=QUIET)
    row = result.prices.iloc[0]
    assert row["price_low"] == 30.0 and row["price_high"] == 50.0
    assert row["price"] == pytest.approx(40.0)
    assert result.kpis["uplift"] == 0.0
    assert result.solution.duals_from == "relaxed_lp"


@pytest.fixture(scope="module")
def case33_bids():
    feeder = load("case33bw")
    p, q = net_injections(feeder)
    loads = p[p < 0].index
    bids = pd.DataFrame(
        {
            "participant": [f"load{b}" for b in loads],
            "side": "buy",
            "bus": loads,
            "quantity_kw": -p[loads].to_numpy(),
            "q_kvar": -q[loads].to_numpy(),
            "price": 500.0,
        }
    )
    net = copy.deepcopy(feeder.net)
    pp.runpp(net, numba=False)
    return feeder, bids, float(net.res_ext_grid["p_mw"].sum() * 1000)


def test_the_loads_reactive_power_reaches_the_grid_and_its_losses(case33_bids):
    """case33bw's loads as bids with their own kvar, losses iterated: the import is the
    AC power flow's within 0.1 %; the same bids without their kvar miss it by more."""
    feeder, bids, ac_import_kw = case33_bids
    imports = {}
    for name, table in {"with_q": bids, "without_q": bids.drop(columns="q_kvar")}.items():
        m = lem.build(
            table,
            upstream=lem.Upstream(50.0, 0.0),
            network=feeder,
            formulation=LinDistFlow(losses="linear"),
        )
        iterate_losses(m, m.handles, solve_options=QUIET)
        imports[name] = m.import_kw[0].value
    assert imports["with_q"] == pytest.approx(ac_import_kw, rel=1e-3)
    assert abs(imports["without_q"] - ac_import_kw) > 10 * abs(imports["with_q"] - ac_import_kw)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lem_copperplate", "lem_lv_grid", "lem_lv_islanded"])
@pytest.mark.parametrize("pricing", ["uniform", "pay_as_bid"])
def test_every_shipped_market_leaves_every_participant_no_worse_off(name, pricing):
    """Each shipped case as its file says, and with the other pricing: gains recomputed
    from the accepted blocks at the prices each block is settled at, the settlement
    closed (the operator's rents from the network's own injections)."""
    case = load_case(shipped_cases_dir() / f"{name}.yaml").model_copy(update={"pricing": pricing})
    result = pipeline.run_case(case, {})
    keys = ["bus", "period"] if case.network is not None else ["period"]
    prices = result.prices[[*keys, "price"]].drop_duplicates(keys)
    settled = result.accepted.merge(prices, on=keys, how="left")
    price = settled["bid_price"] if pricing == "pay_as_bid" else settled["price"]
    sign = np.where(settled["side"] == "buy", 1.0, -1.0)
    surplus = sign * (settled["bid_price"] - price) * settled["accepted_kw"]
    hours = case.horizon.period_hours
    gain = (surplus * hours / 1000).groupby(settled["participant"]).sum()
    gain += result.settlement.set_index("participant")["uplift"]
    k = result.kpis
    assert gain.min() >= -k["gain_tolerance"]
    assert k["individually_rational"] == 1.0
    assert k["reconciliation_error"] == pytest.approx(0.0, abs=k["gain_tolerance"])
