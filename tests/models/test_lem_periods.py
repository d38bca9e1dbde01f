"""The LEM solved period by period (``decompose``) against the whole LP and references.

- random markets (copper plate and a small LinDistFlow feeder whose voltage and thermal
  limits bind, uniform and pay-as-bid, islanded and grid-connected): the periods solved
  apart reach the whole LP's welfare to 1e-9, the same accepted quantities (prices
  distinct: one optimum) and the same prices; on the feeder each path's nodal prices
  lie between the left and right derivatives of the welfare in the demand at that bus
  and period, measured by re-solving with a probe block (equal where the two meet);
- a degenerate copper-plate market (a vertical step, a period without trade): both
  paths report the midpoint of the supporting interval worked out by hand;
- markets whose periods are linked (storage, a flexible load's budget, integer blocks,
  a user's constraint) are solved whole, and demanding ``periods`` names what links them.
"""

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridmarkets.errors import InputError
from gridmarkets.models import lem
from gridmarkets.models.participants import FlexibleLoad, StorageBid
from gridmarkets.networks import feeder_from_net
from tests.radial import radial_net

pytestmark = pytest.mark.solve
PROBE_PRICE = 1000.0  # a probe block's price: above every price the markets reach
PROBE_KW = 0.01


@pytest.fixture(scope="module")
def feeder():
    """Four buses at 0.4 kV, 0-1-2 and 1-3, lines of 0.3 km: 20 kW over one of them
    drops the voltage by about 1.5 %, and the 60 A lines carry about 40 kVA, so the
    voltage floor of 0.985 pu and the thermal limits bind in many of the random
    markets (test_binding_limits_occur_in_the_random_feeder_markets)."""
    net = radial_net(
        0.4,
        [(0, 1, 0.06), (1, 2, 0.06), (1, 3, 0.06)],
        length_km=0.3,
        r_ohm_per_km=0.4,
        x_ohm_per_km=0.1,
        vmin_pu=0.985,
    )
    return feeder_from_net(net, name="periods-test")


def random_market(seed: int, periods: int, buses: list | None, islanded: bool):
    """Blocks with distinct prices on random buses, and one backstop seller (at 400) and
    buyer (at 1) per bus and period so that a probe block can always be served."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7)) * periods
    where = [None] * n if buses is None else rng.choice(buses[1:], n).tolist()
    bids = pd.DataFrame(
        {
            "participant": [f"p{k % (n // periods)}" for k in range(n)],
            "side": rng.choice(["buy", "sell"], n),
            "quantity_kw": rng.uniform(0.0, 40.0, n),
            "price": rng.permutation(n) * 3.7 + rng.uniform(5, 10),
            "period": np.arange(n) % periods,
            "bus": where,
        }
    )
    backstops = [
        {"participant": f"{side}@{bus}", "side": side, "quantity_kw": 500.0, "price": price}
        | {"period": t, "bus": bus}
        for bus in ([None] if buses is None else buses[1:])
        for t in range(periods)
        for side, price in (("sell", 400.0), ("buy", 1.0))
    ]
    upstream = None if islanded else lem.Upstream(rng.uniform(150, 250), rng.uniform(10, 60))
    return pd.concat([bids, pd.DataFrame(backstops)], ignore_index=True), upstream


def probed_welfare(bids, upstream, network, side: str, bus, period: int) -> float:
    probe = {"participant": "probe", "side": side, "quantity_kw": PROBE_KW, "bus": bus}
    price = PROBE_PRICE if side == "buy" else -PROBE_PRICE
    bids = pd.concat([bids, pd.DataFrame([probe | {"price": price, "period": period}])])
    result = lem.clear(bids, upstream=upstream, network=network, decompose="none")
    assert result.accepted.iloc[-1]["accepted_kw"] == pytest.approx(PROBE_KW, rel=1e-6)
    return result.kpis["social_welfare"]


def price_bounds(bids, upstream, network, welfare: float, bus, period: int):
    """(left, right) finite differences of the welfare in the demand at (bus, period),
    currency/MWh: the welfare is concave in demand, so these bound every price that
    supports the optimum, and meet where that price is unique (to the probe's size)."""
    per_kw = PROBE_KW / 1000.0  # one period of an hour
    more = probed_welfare(bids, upstream, network, "buy", bus, period)
    less = probed_welfare(bids, upstream, network, "sell", bus, period)
    return (less - welfare) / per_kw - PROBE_PRICE, PROBE_PRICE - (more - welfare) / per_kw


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    periods=st.integers(2, 4),
    islanded=st.booleans(),
    pricing=st.sampled_from(["uniform", "pay_as_bid"]),
)
def test_copper_plate_periods_apart_clear_as_the_whole_lp(seed, periods, islanded, pricing):
    bids, upstream = random_market(seed, periods, None, islanded)
    whole = lem.clear(bids, upstream=upstream, pricing=pricing, decompose="none")
    apart = lem.clear(bids, upstream=upstream, pricing=pricing, decompose="periods")
    assert (whole.solution.parts, apart.solution.parts) == (1, periods)
    assert_same_clearing(whole, apart)
    columns = ["price", "price_low", "price_high"]  # "dual" is the solver's own pick
    pd.testing.assert_frame_equal(
        apart.prices[["period", *columns]], whole.prices[["period", *columns]], rtol=1e-9
    )
    pd.testing.assert_frame_equal(apart.settlement, whole.settlement, rtol=1e-9, atol=1e-9)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    islanded=st.booleans(),
    pricing=st.sampled_from(["uniform", "pay_as_bid"]),
)
def test_feeder_periods_apart_clear_as_the_whole_lp(feeder, seed, islanded, pricing):
    buses = feeder.buses.index.tolist()
    bids, upstream = random_market(seed, 2, buses, islanded)
    kwargs = {"upstream": upstream, "network": feeder, "pricing": pricing}
    whole = lem.clear(bids, decompose="none", **kwargs)
    apart = lem.clear(bids, decompose="periods", **kwargs)
    assert (whole.solution.parts, apart.solution.parts) == (1, 2)
    assert_same_clearing(whole, apart)
    welfare = whole.kpis["social_welfare"]
    for bus in buses:
        for period in (0, 1):
            low, high = price_bounds(bids, upstream, feeder, welfare, bus, period)
            tolerance = 1e-6 * max(1.0, abs(high))
            assert low <= high + tolerance
            prices = [result.prices for result in (whole, apart)]
            got = [
                p.loc[(p["bus"] == bus) & (p["period"] == period), "price"].item() for p in prices
            ]
            for price in got:
                assert low - tolerance <= price <= high + tolerance, (bus, period, low, high, got)
            if high - low <= tolerance:
                assert got[0] == pytest.approx(got[1], abs=2 * tolerance)


def assert_same_clearing(whole, apart) -> None:
    """Same welfare to 1e-9, same accepted quantities to HiGHS's feasibility tolerance."""
    assert apart.kpis["social_welfare"] == pytest.approx(whole.kpis["social_welfare"], rel=1e-9)
    np.testing.assert_allclose(
        apart.accepted["accepted_kw"], whole.accepted["accepted_kw"], rtol=0, atol=1e-7
    )


def test_binding_limits_occur_in_the_random_feeder_markets(feeder):
    """The feeder markets above do reach the voltage floor and the thermal limits."""
    buses = feeder.buses.index.tolist()
    found = {"voltage": False, "congestion": False}
    for seed in range(20):
        bids, upstream = random_market(seed, 2, buses, seed % 2 == 0)
        prices = lem.clear(bids, upstream=upstream, network=feeder, decompose="periods").prices
        for component in found:
            found[component] |= bool((prices[component].abs() > 1e-3).any())
    assert found == {"voltage": True, "congestion": True}


def test_degenerate_periods_price_at_the_midpoint_of_their_interval_on_both_paths():
    """Period 0 clears on a vertical step (10 kW offered at 50, 10 kW bid at 80: any
    price in [50, 80] supports it); period 1 trades nothing (offer at 90, bid at 30: any
    price in [30, 90]). The rule picks the midpoints, 65 and 60, whichever LP solved."""
    bids = pd.DataFrame(
        {
            "participant": ["s0", "b0", "s1", "b1"],
            "side": ["sell", "buy", "sell", "buy"],
            "quantity_kw": [10.0, 10.0, 5.0, 5.0],
            "price": [50.0, 80.0, 90.0, 30.0],
            "period": [0, 0, 1, 1],
        }
    )
    for decompose, parts in (("none", 1), ("periods", 2)):
        result = lem.clear(bids, decompose=decompose)
        assert result.solution.parts == parts
        assert result.prices["price"].tolist() == pytest.approx([65.0, 60.0], abs=1e-9)
        assert result.prices["price_low"].tolist() == pytest.approx([50.0, 30.0])
        assert result.prices["price_high"].tolist() == pytest.approx([80.0, 90.0])


def linked_participants():
    storage = StorageBid(
        participant="battery",
        capacity_kwh=20.0,
        p_charge_max_kw=10.0,
        p_discharge_max_kw=10.0,
    )
    flexible = FlexibleLoad(participant="heater", energy_kwh=10.0, p_max_kw=8.0)
    return {"battery": ([storage], "soc_kwh"), "heater": ([flexible], "energy_kwh")}


def two_period_bids():
    return pd.DataFrame(
        {
            "participant": ["s", "b", "s", "b"],
            "side": ["sell", "buy", "sell", "buy"],
            "quantity_kw": [20.0, 5.0, 20.0, 15.0],
            "price": [30.0, 90.0, 120.0, 150.0],
            "period": [0, 0, 1, 1],
        }
    )


@pytest.mark.parametrize("name", ["battery", "heater"])
def test_markets_linking_periods_are_solved_whole_and_refuse_periods(name):
    participants, field = linked_participants()[name]
    auto = lem.clear(two_period_bids(), participants=participants)
    whole = lem.clear(two_period_bids(), participants=participants, decompose="none")
    assert auto.solution.parts == 1
    assert auto.kpis["social_welfare"] == pytest.approx(whole.kpis["social_welfare"], rel=1e-12)
    with pytest.raises(InputError, match=rf"decompose.*'{name}'.*{field}"):
        lem.build(two_period_bids(), participants=participants, decompose="periods")


def test_integer_blocks_are_solved_whole_and_refuse_periods():
    bids = two_period_bids().assign(indivisible=[False, True, False, False])
    assert lem.clear(bids).solution.parts == 1
    with pytest.raises(InputError, match=r"decompose.*bids row 1 \(participant 'b'"):
        lem.build(bids, decompose="periods")


def test_unknown_decompose_is_refused():
    with pytest.raises(InputError, match="decompose: 'weekly' is not one of auto, periods, none"):
        lem.build(two_period_bids(), decompose="weekly")


def test_a_users_constraint_linking_periods_keeps_them_in_one_lp():
    """The parts are the LP's connected components: an ``extra`` constraint across the
    periods (at most 12 kW imported over both) joins them, and the answer is the whole
    LP's: the cap binds (alone, period 1 would import 15 kW at 100 rather than buy the
    offer at 120)."""
    bids = two_period_bids()
    upstream = lem.Upstream(100.0, 0.0)

    def cap(m):
        m.import_cap = pyo.Constraint(expr=sum(m.import_kw[t] for t in m.PERIODS) <= 12.0)

    apart = lem.clear(bids, upstream=upstream, extra=cap)
    whole = lem.clear(bids, upstream=upstream, extra=cap, decompose="none")
    assert apart.solution.parts == 1
    assert apart.kpis["social_welfare"] == pytest.approx(whole.kpis["social_welfare"], rel=1e-12)
    assert apart.upstream["import_kw"].sum() == pytest.approx(12.0)


def shipped(name: str, **changes):
    from gridmarkets.case import read_yaml, shipped_cases_dir, validate

    return validate(read_yaml(shipped_cases_dir() / f"{name}.yaml") | changes)


def test_the_case_field_decompose_reaches_the_clearing():
    """``decompose`` in a case file: the shipped copper-plate market (4 periods, blocks
    only) is solved as 4 LPs by default and as one with ``none``, to the same welfare;
    the shipped storage market is solved whole and refuses ``periods``, naming its
    first battery."""
    from gridmarkets import pipeline

    apart = pipeline.run_case(shipped("lem_copperplate"), {})
    whole = pipeline.run_case(shipped("lem_copperplate", decompose="none"), {})
    assert (apart.solution.parts, whole.solution.parts) == (4, 1)
    assert apart.kpis["social_welfare"] == pytest.approx(whole.kpis["social_welfare"], rel=1e-9)
    assert pipeline.run_case(shipped("lem_storage"), {}).solution.parts == 1
    with pytest.raises(InputError, match="'community_battery' \\(storage: its state of charge"):
        pipeline.run_case(shipped("lem_storage", decompose="periods"), {})


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), islanded=st.booleans())
def test_quadratic_curves_periods_apart_clear_as_the_whole_qp(seed, islanded):
    """Curves make each period a QP: solved apart, the welfare, the curves' quantities
    and the prices are the whole QP's (its optimum is unique: every curve has a > 0)."""
    bids, upstream = random_market(seed, 3, None, islanded)
    rng = np.random.default_rng(seed + 1)
    n = 6
    curves = pd.DataFrame(
        {
            "participant": [f"c{k % 2}" for k in range(n)],
            "side": ["sell", "buy"] * (n // 2),
            "period": np.repeat([0, 1, 2], 2),
            "a": rng.uniform(0.5, 3.0, n),
            "b": rng.uniform(20, 200, n),
            "p_max_kw": rng.uniform(5, 50, n),
        }
    )
    kwargs = {"curves": curves, "upstream": upstream}
    whole = lem.clear(bids, decompose="none", **kwargs)
    apart = lem.clear(bids, **kwargs)
    assert (whole.solution.parts, apart.solution.parts) == (1, 3)
    assert apart.kpis["social_welfare"] == pytest.approx(whole.kpis["social_welfare"], rel=1e-9)
    got, want = (r.tables["accepted_curves"]["accepted_kw"] for r in (apart, whole))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # to the QP solver's tolerances
    np.testing.assert_allclose(apart.prices["price"], whole.prices["price"], rtol=1e-6)


def test_an_infeasible_period_is_reported_as_the_whole_lp_reports_it():
    """A must-run seller (a curve with p_min_kw 30) in period 1 of an islanded market
    whose only buyer there takes 15 kW: that period's LP is infeasible, and the periods
    solved apart raise the whole LP's InfeasibleError, with its diagnosis."""
    from gridmarkets.errors import InfeasibleError

    curves = pd.DataFrame(
        {
            "participant": ["gen"],
            "side": ["sell"],
            "period": [1],
            "a": [1.0],
            "b": [10.0],
            "p_min_kw": [30.0],
            "p_max_kw": [40.0],
        }
    )
    errors = []
    for decompose in ("none", "periods"):
        with pytest.raises(InfeasibleError) as caught:
            lem.clear(two_period_bids(), curves=curves, decompose=decompose)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def test_a_device_bid_links_periods_only_with_devices_that_do():
    """A home with only its load and PV is a market of independent periods (solved
    apart, as the whole LP); with a battery it links them, and ``periods`` names it."""
    from gridmarkets.models.assets import BatterySpec, PVSpec
    from gridmarkets.models.participants import DeviceBid
    from gridmarkets.models.prosumer import ProsumerSpec

    home = ProsumerSpec(load_kw=[1.0, 2.0], pv=PVSpec(profile_kw=[3.0, 3.0]))
    pv_home = DeviceBid(participant="home", home=home)
    whole = lem.clear(two_period_bids(), participants=[pv_home], decompose="none")
    apart = lem.clear(two_period_bids(), participants=[pv_home])
    assert (whole.solution.parts, apart.solution.parts) == (1, 2)
    assert apart.kpis["social_welfare"] == pytest.approx(whole.kpis["social_welfare"], rel=1e-9)
    pd.testing.assert_frame_equal(
        apart.tables["best_responses"], whole.tables["best_responses"], rtol=1e-9
    )
    battery = BatterySpec(capacity_kwh=4.0, p_charge_max_kw=2.0)
    with_battery = DeviceBid(participant="home", home=home.model_copy(update={"battery": battery}))
    assert lem.clear(two_period_bids(), participants=[with_battery]).solution.parts == 1
    with pytest.raises(InputError, match=r"'home' \(device: home.battery\)"):
        lem.build(two_period_bids(), participants=[with_battery], decompose="periods")
