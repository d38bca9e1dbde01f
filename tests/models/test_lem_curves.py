"""The LEM with quadratic participants (issue 17) against a clearing computed by hand.

With a cost ``a p^2 + b p`` (sell) or a utility ``b p - a p^2`` (buy) on [p_min, p_max],
a participant's best response to a price lambda is linear in lambda between two kinks:
``clip((lambda - b) / (2a), p_min, p_max)`` for a seller, ``clip((b - lambda) / (2a),
...)`` for a buyer. Blocks and the upstream grid are steps. The tests add these up into
the excess supply E(lambda) = supply - demand, nondecreasing, and find the prices where
it crosses zero by bisection, independently of the model's QP and its duals.

Flat segments. Where E is zero on a whole interval [l, h] (every participant at a bound,
supply and demand meeting on a vertical stretch of the price axis) any price in it clears
the market with the same quantities; the model reports that interval as
[price_low, price_high] and its midpoint (its finite end when the other is infinite) as
the price, so the test compares the interval's ends and that point. Where a step of a
block or of the upstream grid jumps across zero, the interval is the one price of the
step (l = h), and that element takes the residual quantity.
"""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gridmarkets.errors import InputError
from gridmarkets.models import lem
from gridmarkets.networks import CopperPlate, load

pytestmark = pytest.mark.solve

TOL = 1e-6


# ---------------------------------------------------------------- the hand clearing


def response(side, a, b, lo, hi, lam):
    """What a curve produces (sell) or consumes (buy) at price lam, by its first-order
    condition: marginal cost 2 a p + b = lam, or marginal utility b - 2 a p = lam."""
    slope = lam - b if side == "sell" else b - lam
    if a > 0:
        return min(max(slope / (2 * a), lo), hi)
    return hi if slope > 0 else lo


def excess(lam, curves, steps, upper):
    """Supply minus demand at lam; steps (side, price, kW) at exactly lam count fully
    on their side when ``upper`` for supply (E+), and not at all for demand, or the
    other way round (E-)."""
    total = 0.0
    for c in curves:
        p = response(c["side"], c["a"], c["b"], c["p_min_kw"], c["p_max_kw"], lam)
        total += p if c["side"] == "sell" else -p
    for side, price, kw in steps:
        if side == "sell" and (price < lam or (upper and price == lam)):
            total += kw
        if side == "buy" and (price > lam or (not upper and price == lam)):
            total -= kw
    return total


def hand_clearing(curves, steps):
    """The interval [l, h] of prices at which supply meets demand, by bisection on the
    nondecreasing excess supply: l = inf{E+ >= 0}, h = sup{E- <= 0} (+-inf when the
    excess is balanced beyond every kink and step)."""
    points = [
        c["b"] + 2 * c["a"] * c[k] * (1 if c["side"] == "sell" else -1)
        for c in curves
        for k in ("p_min_kw", "p_max_kw")
    ]
    points += [price for _, price, _ in steps]
    left, right = min(points) - 10.0, max(points) + 10.0
    scale = 1.0 + sum(c["p_max_kw"] for c in curves) + sum(kw for *_, kw in steps)
    eps = 1e-12 * scale  # roundoff of the sums above

    def bisect(ok, lo, hi):  # ok(lo) False, ok(hi) True, ok monotone
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi

    assert excess(right, curves, steps, True) >= -eps, "no price clears this market"
    assert excess(left, curves, steps, False) <= eps, "no price clears this market"
    low = (
        -math.inf
        if excess(left, curves, steps, True) >= -eps
        else bisect(lambda x: excess(x, curves, steps, True) >= -eps, left, right)
    )
    if excess(right, curves, steps, False) <= eps:
        high = math.inf
    else:
        high = -bisect(lambda x: excess(-x, curves, steps, False) <= eps, -right, -left)
    return low, high


def reported_price(low, high):
    """The model's rule for the price in the interval (module docstring)."""
    if math.isfinite(low) and math.isfinite(high):
        return 0.5 * (low + high)
    return low if math.isfinite(low) else high


def hand_quantities(curves, steps, lam):
    """Quantities at price lam: curves by their response; steps fully in or out of the
    money, the one at lam (prices are distinct) taking what balances the market."""
    q_curves = [
        response(c["side"], c["a"], c["b"], c["p_min_kw"], c["p_max_kw"], lam) for c in curves
    ]
    marginal = [i for i, (_, price, _) in enumerate(steps) if abs(price - lam) <= 1e-9]
    q_steps = []
    for side, price, kw in steps:
        in_money = price < lam if side == "sell" else price > lam
        q_steps.append(kw if in_money else 0.0)
    if marginal:
        (i,) = marginal
        q_steps[i] = 0.0
        balance = sum(
            q if c["side"] == "sell" else -q for c, q in zip(curves, q_curves, strict=True)
        )
        balance += sum(
            q if s == "sell" else -q for (s, _, _), q in zip(steps, q_steps, strict=True)
        )
        q_steps[i] = -balance if steps[i][0] == "sell" else balance
    return q_curves, q_steps


# A time limit so that a QP HiGHS cannot finish fails its test instead of hanging the suite.
SOLVE = {"time_limit": 20.0}


def cleared(*args, **kwargs):
    result = lem.clear(*args, solve_options=SOLVE, **kwargs)
    assert result.solution.optimal
    return result


def close(x, y):
    return abs(x - y) <= TOL * max(1.0, abs(y))


# ---------------------------------------------------------------- random markets


@st.composite
def curve_rows(draw, n_min=2, n_max=8):
    n = draw(st.integers(n_min, n_max))
    rows = []
    for i in range(n):
        side = "sell" if i == 0 else "buy" if i == 1 else draw(st.sampled_from(["sell", "buy"]))
        p_max = draw(st.floats(0.5, 100.0))
        must_run = draw(st.booleans())
        # a nonzero minimum is at least lem.MIN_MUST_RUN_KW (smaller ones are refused)
        p_min = draw(st.floats(lem.MIN_MUST_RUN_KW, p_max)) if must_run else 0.0
        b = draw(st.floats(0.0, 80.0)) if side == "sell" else draw(st.floats(40.0, 200.0))
        row = {
            "participant": f"{side}{i}",
            "side": side,
            "a": draw(st.floats(0.01, 2.0)),
            "b": b,
            "p_min_kw": p_min,
            "p_max_kw": p_max,
        }
        twins = [r for r in rows if r["side"] == side]
        if twins and draw(st.booleans()):  # identical curves: ties the solver must handle
            row |= {k: v for k, v in draw(st.sampled_from(twins)).items() if k != "participant"}
        rows.append(row)
    return rows


def feasible(curves, steps=(), import_kw=0.0, export_kw=0.0):
    sell_min = sum(c["p_min_kw"] for c in curves if c["side"] == "sell")
    buy_min = sum(c["p_min_kw"] for c in curves if c["side"] == "buy")
    sell_max = sum(c["p_max_kw"] for c in curves if c["side"] == "sell")
    buy_max = sum(c["p_max_kw"] for c in curves if c["side"] == "buy")
    sell_max += sum(kw for s, _, kw in steps if s == "sell") + import_kw
    buy_max += sum(kw for s, _, kw in steps if s == "buy") + export_kw
    return sell_min <= buy_max and buy_min <= sell_max


def check_against_hand(result, curves, steps=(), blocks_and_grid=()):
    low, high = hand_clearing(curves, list(steps))
    prices = result.prices.iloc[0]
    for model, hand in ((prices["price_low"], low), (prices["price_high"], high)):
        assert (model == hand) if math.isinf(hand) else close(model, hand), (model, low, high)
    if math.isfinite(low) or math.isfinite(high):
        lam = reported_price(low, high)
        assert close(prices["price"], lam), (prices["price"], low, high)
    else:  # every participant is fixed or at a bound at every price: any price clears
        lam = prices["price"]
    q_curves, q_steps = hand_quantities(curves, list(steps), lam)
    got = result.tables["accepted_curves"]
    for c, q, (_, row) in zip(curves, q_curves, got.iterrows(), strict=True):
        assert row["participant"] == c["participant"]
        assert close(row["accepted_kw"], q), (c, row["accepted_kw"], q)
        assert close(row["price"], prices["price"])
        marginal = c["b"] + (2 if c["side"] == "sell" else -2) * c["a"] * row["accepted_kw"]
        assert close(row["marginal_value"], marginal)
    for model, q in zip(blocks_and_grid, q_steps, strict=True):
        assert close(model, q), (model, q)
    return lam


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=curve_rows())
def test_islanded_curves_clear_at_the_hand_crossing(rows):
    assume(feasible(rows))
    result = cleared(None, curves=pd.DataFrame(rows))
    check_against_hand(result, rows)


@st.composite
def mixed_market(draw):
    rows = draw(curve_rows(1, 4))
    prices = draw(st.lists(st.integers(1, 300), min_size=4, max_size=10, unique=True))
    export_price, import_price = sorted(prices[:2])
    blocks = [
        {
            "participant": f"block{k}",
            "side": draw(st.sampled_from(["sell", "buy"])),
            "price": float(price),
            "quantity_kw": draw(st.floats(0.5, 50.0)),
        }
        for k, price in enumerate(prices[2:])
    ]
    capacity = draw(st.floats(0.0, 60.0))
    return rows, blocks, import_price, export_price, capacity


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(market=mixed_market())
def test_blocks_curves_and_upstream_clear_at_the_hand_crossing(market):
    rows, blocks, import_price, export_price, capacity = market
    steps = [(b["side"], b["price"], b["quantity_kw"]) for b in blocks]
    steps += [("sell", float(import_price), capacity), ("buy", float(export_price), capacity)]
    assume(feasible(rows, steps))
    upstream = lem.Upstream(import_price, export_price, capacity_kw=capacity)
    result = cleared(pd.DataFrame(blocks), curves=pd.DataFrame(rows), upstream=upstream)
    grid = result.upstream.iloc[0]
    model = [*result.accepted["accepted_kw"], grid["import_kw"], grid["export_kw"]]
    check_against_hand(result, rows, steps, model)


# ---------------------------------------------------------------- on a feeder

FEEDER_CURVES = [
    # participant, side, bus, a, b, p_min, p_max, power factor
    ("pv", "sell", 18, 0.05, 30.0, 0.0, 120.0, 1.0),
    ("chp", "sell", 6, 0.02, 55.0, 20.0, 150.0, 0.95),
    ("hp", "buy", 25, 0.04, 140.0, 10.0, 100.0, 0.95),
    ("ev", "buy", 30, 0.08, 110.0, 0.0, 80.0, 1.0),
    ("shop", "buy", 12, 0.0, 90.0, 15.0, 15.0, 0.9),
]


def feeder_curves():
    columns = ["participant", "side", "bus", "a", "b", "p_min_kw", "p_max_kw", "power_factor"]
    return pd.DataFrame(FEEDER_CURVES, columns=columns)


def test_on_a_feeder_without_binding_limits_lindistflow_equals_copper_plate():
    feeder = load("case33bw")
    curves = feeder_curves()
    bids = pd.DataFrame(
        [{"participant": "bat", "side": "sell", "bus": 9, "price": 70.0, "quantity_kw": 20.0}]
    )
    lindist = lem.clear(bids, curves=curves, network=feeder, period_hours=0.25)
    copper = lem.clear(
        bids, curves=curves, network=feeder, formulation=CopperPlate(), period_hours=0.25
    )
    steps = [("sell", 70.0, 20.0)]
    rows = curves.drop(columns=["bus", "power_factor"]).to_dict("records")
    low, high = hand_clearing(rows, steps)
    assert low == pytest.approx(high)  # an interior curve pins the price
    for result in (lindist, copper):
        assert result.prices["price"].to_numpy() == pytest.approx(low, rel=TOL, abs=TOL)
        q_curves, q_steps = hand_quantities(rows, steps, low)
        got = result.tables["accepted_curves"]["accepted_kw"].to_numpy()
        assert got == pytest.approx(q_curves, rel=TOL, abs=TOL)
        assert result.accepted["accepted_kw"].to_numpy() == pytest.approx(q_steps, abs=TOL)
        assert abs(result.kpis["reconciliation_error"]) <= 1e-9
    parts = lindist.prices[["congestion", "voltage"]].abs().to_numpy()
    assert parts.max() < TOL  # the limits are indeed not binding
    # the curves' kvar follow their power factor at the cleared kW
    got = lindist.tables["accepted_curves"]
    ratio = np.tan(np.arccos(curves["power_factor"].to_numpy()))
    assert got["q_kvar"].to_numpy() == pytest.approx(ratio * got["accepted_kw"].to_numpy())
    # the curves reach the network: the injections per bus include them
    injections = lem.bus_injections(lindist)[0]
    assert injections.loc[25] == pytest.approx(
        -got.set_index("participant").loc["hp", "accepted_kw"]
    )


# ---------------------------------------------------------------- certificates


def hand_surplus(side, a, b, price, p, hours):
    """Utility less payment (buy) or payment less cost (sell), currency."""
    if side == "sell":
        return (price * p - (a * p**2 + b * p)) * hours / 1000
    return ((b * p - a * p**2) - price * p) * hours / 1000


def hand_best(side, a, b, lo, hi, price, hours):
    """The best surplus at the price, by a dense search over [lo, hi] (no closed form)."""
    grid = np.unique(np.concatenate([np.linspace(lo, hi, 20001), [lo, hi]]))
    return max(hand_surplus(side, a, b, price, p, hours) for p in grid)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(market=mixed_market(), hours=st.sampled_from([0.25, 1.0]))
def test_curves_best_respond_and_the_settlement_closes(market, hours):
    rows, blocks, import_price, export_price, capacity = market
    steps = [(b["side"], b["price"], b["quantity_kw"]) for b in blocks]
    steps += [("sell", float(import_price), capacity), ("buy", float(export_price), capacity)]
    assume(feasible(rows, steps))
    upstream = lem.Upstream(import_price, export_price, capacity_kw=capacity)
    result = cleared(
        pd.DataFrame(blocks), curves=pd.DataFrame(rows), upstream=upstream, period_hours=hours
    )
    stake = sum((c["a"] * c["p_max_kw"] + c["b"]) * c["p_max_kw"] for c in rows)
    stake = (stake + sum(b["price"] * b["quantity_kw"] for b in blocks)) * hours / 1000
    settlement = result.settlement.set_index("participant")
    assert (settlement["lost_opportunity"] <= 1e-9 * max(1.0, stake)).all()
    assert abs(result.kpis["reconciliation_error"]) <= 1e-9 * max(1.0, stake)
    assert result.kpis["individually_rational"] == 1.0
    price = result.prices.loc[0, "price"]
    for _, row in result.tables["accepted_curves"].iterrows():
        c = next(c for c in rows if c["participant"] == row["participant"])
        p = row["accepted_kw"]
        mine = settlement.loc[c["participant"]]
        surplus = hand_surplus(c["side"], c["a"], c["b"], price, p, hours)
        assert mine["surplus"] == pytest.approx(surplus, rel=1e-9, abs=1e-12)
        sign = 1.0 if c["side"] == "buy" else -1.0
        assert mine["payment"] == pytest.approx(sign * p * hours * price / 1000, abs=1e-12)
        # the cleared quantity is the best response: a dense search finds no better
        best = hand_best(c["side"], c["a"], c["b"], c["p_min_kw"], c["p_max_kw"], price, hours)
        assert best - surplus <= 1e-9 * max(1.0, stake)
        # the gain is against the must-run minimum at the same price
        reference = hand_surplus(c["side"], c["a"], c["b"], price, c["p_min_kw"], hours)
        assert mine["gain"] == pytest.approx(surplus - reference, abs=1e-9 * max(1.0, stake))
    paid = result.parties.set_index("party")["payment"]
    assert paid.sum() == pytest.approx(0.0, abs=1e-9 * max(1.0, stake))


def test_a_must_run_seller_below_its_cost_loses_but_is_individually_rational():
    """Demand of 5 kW at up to 30/MWh against a must-run 10 kW costing 50/MWh: the
    market clears at 10 kW, the buyer takes it all, the price falls to the buyer's
    marginal utility at 10 kW; the seller loses money against not trading but gains
    nothing by its only alternative, its minimum."""
    curves = pd.DataFrame(
        [
            {
                "participant": "g",
                "side": "sell",
                "a": 0.0,
                "b": 50.0,
                "p_min_kw": 10.0,
                "p_max_kw": 40.0,
            },
            {
                "participant": "d",
                "side": "buy",
                "a": 1.0,
                "b": 30.0,
                "p_min_kw": 0.0,
                "p_max_kw": 40.0,
            },
        ]
    )
    result = lem.clear(None, curves=curves)
    rows = curves.to_dict("records")
    low, high = hand_clearing(rows, [])
    assert result.prices.loc[0, "price"] == pytest.approx(reported_price(low, high), abs=TOL)
    got = result.tables["accepted_curves"].set_index("participant")["accepted_kw"]
    assert got.to_numpy() == pytest.approx([10.0, 10.0], abs=TOL)
    seller = result.settlement.set_index("participant").loc["g"]
    assert seller["surplus"] < 0  # paid below its cost for its must-run output
    assert seller["uplift"] == pytest.approx(0.0, abs=1e-12)
    assert seller["gain"] == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- refusals


def one_curve(**change):
    row = {
        "participant": "g",
        "side": "sell",
        "a": 0.1,
        "b": 20.0,
        "p_min_kw": 0.0,
        "p_max_kw": 10.0,
    }
    row.update(change)
    demand = {"participant": "d", "side": "buy", "a": 0.1, "b": 90.0, "p_max_kw": 10.0}
    return pd.DataFrame([demand, row])


@pytest.mark.parametrize(
    ("change", "column"),
    [
        ({"a": -0.1}, "a"),
        ({"p_min_kw": 11.0}, "p_max_kw"),
        ({"p_min_kw": -1.0}, "p_min_kw"),
        ({"b": "cheap"}, "b"),
        ({"side": "both"}, "side"),
        ({"power_factor": 1.5}, "power_factor"),
    ],
)
def test_bad_curves_name_the_row_and_column(change, column):
    with pytest.raises(InputError, match=rf"curves row 1 \(participant 'g'\): {column}"):
        lem.build(None, curves=one_curve(**change))


def test_a_curve_off_the_feeder_names_its_participant_and_bus():
    with pytest.raises(InputError, match=r"g: bus 999 is not a bus of feeder"):
        lem.build(None, curves=one_curve().assign(bus=[1, 999]), network=load("case33bw"))


def test_curves_refuse_pay_as_bid_integer_blocks_and_update():
    curves = one_curve()
    bids = pd.DataFrame(
        [
            {
                "participant": "x",
                "side": "buy",
                "price": 50.0,
                "quantity_kw": 2.0,
                "indivisible": True,
            }
        ]
    )
    with pytest.raises(InputError, match="pay_as_bid"):
        lem.clear(None, curves=curves, pricing="pay_as_bid")
    with pytest.raises(InputError, match=r"mixed-integer QP.*|bids row 0 \(?"):
        lem.build(bids, curves=curves)
    with pytest.raises(InputError, match="bids row 0, participant 'x'"):
        lem.build(bids, curves=curves)
    m = lem.build(bids.drop(columns="indivisible"), curves=curves)
    with pytest.raises(InputError, match="build the market again"):
        lem.update(m, bids.drop(columns="indivisible"))


# Instances HiGHS 1.16's QP solver failed on before the fixes, each against the hand clearing.
C1 = [  # a lower bound of 1e-3 kW: at 1e-7 .. 1e-4 HiGHS's QP solver read it as 0
    ("sell0", "sell", 0.16982703901878113, 1.0, 0.0, 80.05634184281482),
    ("buy1", "buy", 0.7862514979267563, 100.0, 1e-03, 74.71671715011266),
    ("buy2", "buy", 1.384049288882631, 76.27009842273364, 32.22145124363781, 76.91669333731863),
    ("sell3", "sell", 1.01, 18.2194435542513, 0.0, 43.333813732359886),
]
TWINS = [  # identical curves of small curvature: HiGHS cycled without end at 2^10 scale
    ("sell0", "sell", 0.01, 44.715942, 0.0, 0.5),
    ("buy1", "buy", 0.01, 63.865725, 0.0, 0.5),
    ("buy2", "buy", 1.686452, 40.0, 0.0, 79.284303),
    ("sell3", "sell", 0.01, 44.715942, 0.0, 0.5),
    ("buy4", "buy", 0.01, 63.865725, 0.0, 0.5),
    ("buy5", "buy", 0.01, 75.166179, 0.0, 0.940251),
]
TWINS_SMALL = [  # two identical sellers: cycled at the welfare's natural scale (currency)
    ("sell0", "sell", 0.01, 0.0, 0.0, 0.5),
    ("buy1", "buy", 1.534175, 60.384481, 0.0, 0.5),
    ("sell2", "sell", 0.01, 0.0, 0.0, 0.5),
]


@pytest.mark.parametrize("market", [C1, TWINS, TWINS_SMALL], ids=["tiny_bound", "twins", "pair"])
@pytest.mark.parametrize("hours", [0.25, 1.0])
def test_markets_highs_failed_on_clear_at_the_hand_crossing(market, hours):
    columns = ["participant", "side", "a", "b", "p_min_kw", "p_max_kw"]
    rows = pd.DataFrame(market, columns=columns)
    result = cleared(None, curves=rows, period_hours=hours)
    check_against_hand(result, rows.to_dict("records"))


def test_a_must_run_minimum_below_a_watt_is_refused_naming_the_field():
    """HiGHS 1.16's QP solver ends in "Solve error" on this market (a 1e-6 kW minimum
    beside two sell blocks); the LEM refuses such a minimum instead of failing in the
    solver, and clears the same market with the minimum at lem.MIN_MUST_RUN_KW."""
    curves = pd.DataFrame(
        [
            {"participant": "sell0", "side": "sell", "a": 1.0, "b": 0.0, "p_max_kw": 1.0},
            {"participant": "buy1", "side": "buy", "a": 1.0, "b": 40.0, "p_max_kw": 1.0},
        ]
    )
    blocks = pd.DataFrame(
        [
            {"participant": "block0", "side": "sell", "price": 3.0, "quantity_kw": 1.0},
            {"participant": "block1", "side": "sell", "price": 4.0, "quantity_kw": 1.0},
        ]
    )
    upstream = lem.Upstream(2.0, 1.0, capacity_kw=0.0)
    with pytest.raises(InputError, match=r"curves row 1 \(participant 'buy1'\): p_min_kw"):
        lem.clear(blocks, curves=curves.assign(p_min_kw=[0.0, 1e-6]), upstream=upstream)
    rows = curves.assign(p_min_kw=[0.0, lem.MIN_MUST_RUN_KW])
    result = cleared(blocks, curves=rows, upstream=upstream)
    steps = [("sell", 3.0, 1.0), ("sell", 4.0, 1.0), ("sell", 2.0, 0.0), ("buy", 1.0, 0.0)]
    model = [*result.accepted["accepted_kw"], 0.0, 0.0]
    check_against_hand(result, rows.to_dict("records"), steps, model)
