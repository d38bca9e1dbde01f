"""Local electricity market clearing against an independent merit order."""

import math

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridmarkets.errors import InputError
from gridmarkets.models import lem
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve


def merit_order(offers, bids, strict: bool):
    """Walk offers ascending and bids descending to the crossing.

    offers, bids: lists of (price, quantity). Returns (welfare per hour in currency,
    traded kW, price_low, price_high). ``strict`` trades only at a positive gain.
    """
    offers = sorted([o for o in offers if o[1] > 0])
    bids = sorted([b for b in bids if b[1] > 0], reverse=True)
    i = j = 0
    left_o = offers[0][1] if offers else 0
    left_b = bids[0][1] if bids else 0
    traded = welfare = 0.0
    last_offer = last_bid = None
    while i < len(offers) and j < len(bids):
        gain = bids[j][0] - offers[i][0]
        if gain < 0 or (strict and gain == 0):
            break
        q = min(left_o, left_b)
        traded += q
        welfare += gain * q / 1000
        last_offer, last_bid = offers[i][0], bids[j][0]
        left_o -= q
        left_b -= q
        if left_o == 0:
            i += 1
            left_o = offers[i][1] if i < len(offers) else 0
        if left_b == 0:
            j += 1
            left_b = bids[j][1] if j < len(bids) else 0
    lows = [p for p in (last_offer, bids[j][0] if j < len(bids) else None) if p is not None]
    highs = [p for p in (last_bid, offers[i][0] if i < len(offers) else None) if p is not None]
    return welfare, traded, max(lows, default=-math.inf), min(highs, default=math.inf)


blocks = st.lists(
    st.tuples(st.integers(0, 10).map(lambda p: 10.0 * p), st.integers(0, 5).map(float)),
    min_size=0,
    max_size=6,
)


def bids_table(periods):
    rows = []
    for t, (offers, bids) in enumerate(periods):
        for side, items in (("sell", offers), ("buy", bids)):
            for k, (price, q) in enumerate(items):
                rows.append(
                    {
                        "participant": f"{side}{k}",
                        "side": side,
                        "quantity_kw": q,
                        "price": price,
                        "period": t,
                    }
                )
    return pd.DataFrame(rows, columns=["participant", "side", "quantity_kw", "price", "period"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(blocks, blocks), min_size=1, max_size=3), st.booleans())
def test_islanded_clearing_matches_the_merit_order(periods, with_upstream):
    upstream = lem.Upstream(import_price=75.0, export_price=25.0, capacity_kw=3.0)
    table = bids_table(periods)
    if table.empty:
        return
    result = lem.clear(table, upstream=upstream if with_upstream else None)
    prices = result.prices.set_index("period")
    accepted = result.accepted
    for t, (offers, bids) in enumerate(periods):
        if with_upstream:  # the upstream grid is an offer (import) and a bid (export)
            offers, bids = [*offers, (75.0, 3.0)], [*bids, (25.0, 3.0)]
        welfare, q_max, low, high = merit_order(offers, bids, strict=False)
        _, q_min, _, _ = merit_order(offers, bids, strict=True)
        if t not in prices.index:
            continue  # a period whose blocks are all empty
        row = prices.loc[t]
        assert row["price_low"] == pytest.approx(low)
        assert row["price_high"] == pytest.approx(high)
        assert low - 1e-6 <= row["price"] <= high + 1e-6
        assert low - 1e-6 <= row["dual"] <= high + 1e-6
        sold = accepted.query("period == @t and side == 'sell'")["accepted_kw"].sum()
        if with_upstream:
            sold += result.upstream.set_index("period").loc[t, "import_kw"]
        assert q_min - 1e-6 <= sold <= q_max + 1e-6
    expected = sum(
        merit_order(
            *(([*o, (75.0, 3.0)], [*b, (25.0, 3.0)]) if with_upstream else (o, b)), strict=False
        )[0]
        for o, b in periods
    )
    assert result.kpis["social_welfare"] == pytest.approx(expected, abs=1e-6)


def test_vertical_crossing_reports_the_interval_and_its_midpoint():
    # supply 10 kW at 20, demand 10 kW at 60: any price in [20, 60] clears
    bids = pd.DataFrame(
        {
            "participant": ["pv", "home"],
            "side": ["sell", "buy"],
            "quantity_kw": [10.0, 10.0],
            "price": [20.0, 60.0],
        }
    )
    prices = lem.clear(bids).prices
    assert prices.loc[0, ["price_low", "price_high", "price"]].tolist() == [20, 60, 40]


def two_sided():
    return pd.DataFrame(
        {
            "participant": ["pv1", "pv2", "home1", "home2"],
            "side": ["sell", "sell", "buy", "buy"],
            "quantity_kw": [5.0, 8.0, 6.0, 4.0],
            "price": [20.0, 45.0, 300.0, 30.0],
            "period": [0, 0, 0, 0],
        }
    )


@pytest.mark.parametrize("pricing", ["uniform", "pay_as_bid"])
def test_settlements_balance(pricing):
    """Payments in = payments out + merchandising surplus + upstream trade.

    Uniform: the merchandising surplus is the rent of the binding substation capacity
    (its dual times the capacity, by strong duality). Pay-as-bid: the operator keeps
    the whole welfare.
    """
    # local supply is 13 kW; 16 kW is bid above the import tariff, so the 2 kW import
    # capacity binds and the marginal bid (250) sets the price above the tariff
    extra_bid = {"participant": "home3", "side": "buy", "quantity_kw": 10.0, "price": 250.0}
    bids = pd.concat([two_sided(), pd.DataFrame([extra_bid])], ignore_index=True)
    upstream = lem.Upstream(import_price=100.0, export_price=10.0, capacity_kw=2.0)
    m = lem.build(bids, upstream=upstream)
    solution = solve(m)
    result = lem.results(m, solution, pricing)
    k = result.kpis
    paid_in = result.settlement.query("payment > 0")["payment"].sum()
    paid_out = -result.settlement.query("payment < 0")["payment"].sum()
    assert paid_in == pytest.approx(k["payments_in"])
    assert paid_out == pytest.approx(k["payments_out"])
    ms = paid_in - paid_out - k["upstream_cost"]
    if pricing == "pay_as_bid":
        assert ms == pytest.approx(solution.objective)
    else:
        assert result.prices.loc[0, "price"] == pytest.approx(250.0)
        assert ms == pytest.approx((250.0 - 100.0) * 2.0 / 1000)  # rent of the import cap
        total = k["buyers_surplus"] + k["sellers_surplus"] + ms
        assert total == pytest.approx(solution.objective)


def test_indivisible_blocks_are_priced_at_the_convex_hull_with_uplift():
    # a 10 kW indivisible offer at 20, a 4 kW bid at 50 and an 8 kW bid at 15:
    # accepting the block puts 6 kW on the low bid. The relaxation (the block's convex
    # hull) sells 4 kW of the block, so the price is 20; the low bid, partly accepted at
    # 20 > 15, is paid back its loss. Total lost opportunity at a price p:
    # 10 max(20 - p, 0) + 4 max(p - 50, 0) + 8 max(15 - p, 0) - 6 (15 - p): 30 at 20, 50
    # at 15 (the fixed-acceptance price), its minimum at 20.
    bids = pd.DataFrame(
        {
            "participant": ["gen", "a", "b"],
            "side": ["sell", "buy", "buy"],
            "quantity_kw": [10.0, 4.0, 8.0],
            "price": [20.0, 50.0, 15.0],
            "indivisible": [True, False, False],
        }
    )
    result = lem.clear(bids)
    accepted = result.accepted.set_index("participant")["accepted_kw"]
    # enumeration: block off -> welfare 0; block on -> 4*50 + 6*15 - 10*20 = 90 (/1000)
    assert accepted.tolist() == pytest.approx([10.0, 4.0, 6.0])
    assert result.solution.duals_from == "relaxed_lp"
    assert result.prices.loc[0, "price"] == pytest.approx(20.0)
    settlement = result.settlement.set_index("participant")
    assert settlement.loc["b", "uplift"] == pytest.approx(6 * (20 - 15) / 1000)
    assert settlement.loc["gen", "uplift"] == 0 and settlement.loc["a", "uplift"] == 0
    assert result.kpis["lost_opportunity"] == pytest.approx(30 / 1000)


def test_bad_bids_name_the_row_and_column():
    bad = two_sided()
    bad.loc[2, "quantity_kw"] = -1
    with pytest.raises(InputError, match=r"bids row 2 \(participant 'home1'\): quantity_kw"):
        lem.clear(bad)
    with pytest.raises(InputError, match="side"):
        lem.clear(two_sided().assign(side="lend"))
    with pytest.raises(InputError, match="missing column"):
        lem.clear(two_sided().drop(columns="price"))


def test_unserved_and_curtailed_energy_are_reported():
    result = lem.clear(two_sided())
    offered = two_sided().groupby("side")["quantity_kw"].sum()
    traded = result.accepted.groupby("side")["accepted_kw"].sum()
    assert result.kpis["unserved_kwh"] == pytest.approx(offered["buy"] - traded["buy"])
    assert result.kpis["curtailed_kwh"] == pytest.approx(offered["sell"] - traded["sell"])
    assert np.isclose(traded["buy"], traded["sell"])


@pytest.mark.parametrize("ladder_price", [40.0, 120.0, 260.0])
def test_the_market_accepts_the_prosumer_ems_bid_curves(ladder_price):
    """A home's bid curve cleared against one seller just below a ladder price buys
    what the home's own EMS would import at that price (a separate EMS solve, its
    battery at the plan the bids keep it at)."""
    seller_price = ladder_price - 1.0
    from gridmarkets.models import prosumer
    from gridmarkets.models.assets import BatterySpec
    from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec

    home = ProsumerSpec(
        load_kw=[1.0, 3.0],
        battery=BatterySpec(
            capacity_kwh=4,
            p_charge_max_kw=2,
            soc_initial_kwh=2,
            soc_final_kwh=0,
            eta_charge=1.0,
            eta_discharge=1.0,
        ),
    )
    ladder = [40.0, 120.0, 260.0]
    tariff = PricesSpec(import_price=[120.0, 120.0], export_price=[120.0, 120.0])
    options = {"periods": 2, "period_hours": 1.0}
    bids = prosumer.bid_curves(home, tariff, ladder, participant="home", **options)
    seller = pd.DataFrame(
        [
            {
                "participant": "grid",
                "side": "sell",
                "quantity_kw": 50.0,
                "price": seller_price,
                "period": 1,
            }
        ]
    )
    period_1 = bids[bids["period"] == 1]
    result = lem.clear(pd.concat([period_1, seller], ignore_index=True))
    home_rows = result.accepted[result.accepted["participant"] == "home"]
    sign = np.where(home_rows["side"] == "buy", 1.0, -1.0)
    bought = float((sign * home_rows["accepted_kw"]).sum())
    at_price = PricesSpec(import_price=[120.0, ladder_price], export_price=[120.0, ladder_price])
    # the battery links the two periods: the bids keep it at its plan for the tariff
    # (deliverable whatever is accepted); the EMS's own choice is with that plan pinned
    plan = prosumer.schedule(home, tariff, **options).tables["storage"].set_index("period")
    plan = plan["p_discharge_kw"] - plan["p_charge_kw"]

    def pin(m):
        battery = m.home["home"].battery
        m.plan = pyo.Constraint(m.PERIODS, rule=lambda m, t: battery.p_net_kw[t] == plan[t])

    ems = prosumer.schedule({"home": home}, at_price, extra=pin, **options)
    grid = ems.grid.set_index("period")
    expected = grid.loc[1, "import_kw"] - grid.loc[1, "export_kw"]
    assert bought == pytest.approx(expected, abs=1e-6)
