"""LinDistFlow and CopperPlate inside a small welfare-maximising market; DLMPs."""

from __future__ import annotations

import numpy as np
import pytest

from gridmarkets.networks import CopperPlate, LinDistFlow

pytestmark = pytest.mark.solve

OFFERS = [(5, 30.0, 40.0), (17, 45.0, 30.0), (24, 80.0, 50.0)]
BIDS = [(10, 100.0, 60.0), (25, 60.0, 50.0), (31, 40.0, 20.0)]


def test_slack_limits_clear_as_copper_plate(case33, clear_market):
    clear = clear_market
    grid = clear(case33, LinDistFlow(), OFFERS, BIDS)
    plate = clear(case33, CopperPlate(), OFFERS, BIDS)
    assert grid[2].objective == pytest.approx(plate[2].objective, rel=1e-9)
    for name in ("sell", "buy", "imp"):
        a, b = getattr(grid[0], name), getattr(plate[0], name)
        assert [a[k].value for k in a] == pytest.approx([b[k].value for k in b], abs=1e-6)
    merged = grid[3].merge(plate[3], on=["bus", "period"], suffixes=("_grid", "_plate"))
    assert np.allclose(merged["price_grid"], merged["price_plate"], atol=1e-6)


def test_copper_plate_without_feeder_prices_per_period(clear_market):
    offers, bids = [(None, 30.0, 40.0)], [(None, 100.0, 60.0)]
    _, _, solution, prices = clear_market(None, CopperPlate(), offers, bids)
    assert prices["bus"].isna().all() and len(prices) == 2
    assert prices["price"].to_numpy() == pytest.approx([50.0, 50.0])  # import sets the price


@pytest.fixture(scope="module")
def congested(small_feeder, clear_market):
    offers = [(4, 20.0, 3000.0)]
    bids = [(3, 200.0, 6000.0)]
    return clear_market(small_feeder, LinDistFlow(), offers, bids, periods=(0,)), offers, bids


def test_line_and_voltage_limits_bind(congested):
    _, handles, solution, _ = congested[0]
    assert np.abs(solution.dual(handles.voltage_limit)).max() > 1e-6
    assert np.abs(solution.dual(handles.thermal_limit)).max() > 1e-6


def test_dlmp_parts_sum_to_the_price(congested):
    prices = congested[0][3]
    parts = prices[["energy", "losses", "congestion", "voltage"]].sum(axis=1)
    assert np.allclose(parts, prices["price"], atol=1e-6 * prices["price"].abs().max())
    assert prices["congestion"].abs().max() > 1.0 and prices["voltage"].abs().max() > 1.0


@pytest.mark.parametrize("bus", [2, 3, 4])
def test_dlmp_matches_finite_difference(small_feeder, congested, clear_market, bus):
    (_, _, solution, prices), offers, bids = congested
    more = clear_market(
        small_feeder, LinDistFlow(), offers, bids, periods=(0,), extra_demand={(bus, 0): 1.0}
    )
    cost_per_mwh = (solution.objective - more[2].objective) * 1000.0  # 1 kW for one hour
    price = prices.set_index("bus").at[bus, "price"]
    assert cost_per_mwh == pytest.approx(price, rel=1e-4, abs=1e-3)
