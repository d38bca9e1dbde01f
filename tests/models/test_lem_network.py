"""The LEM on a feeder: nodal prices against the uniform price and a congested line."""

import copy

import pandas as pd
import pytest

from gridmarkets.models import lem
from gridmarkets.networks import ac_check, feeder_from_net, load

pytestmark = pytest.mark.solve


@pytest.fixture(scope="module")
def case33():
    return load("case33bw")


def bids_on(buses_sides_prices_qty):
    return pd.DataFrame(
        [
            {
                "participant": f"{side}@{bus}",
                "side": side,
                "bus": bus,
                "price": price,
                "quantity_kw": q,
            }
            for bus, side, price, q in buses_sides_prices_qty
        ]
    )


BIDS = [
    (1, "sell", 20.0, 300.0),
    (10, "sell", 150.0, 200.0),
    (10, "buy", 300.0, 200.0),
    (25, "buy", 90.0, 80.0),
    (6, "buy", 40.0, 50.0),
]


def test_without_binding_limits_nodal_prices_equal_the_uniform_price(case33):
    bids = bids_on(BIDS)
    uniform = lem.clear(bids)
    nodal = lem.clear(bids, network=case33)
    assert nodal.kpis["social_welfare"] == pytest.approx(uniform.kpis["social_welfare"])
    # merit order: 300 kW at 20 serves the 300 and 90 bids and 20 of the 50 kW bid at 40,
    # which is marginal and sets one price everywhere
    assert uniform.prices.loc[0, "price"] == pytest.approx(40.0)
    assert nodal.prices["price"].to_numpy() == pytest.approx(40.0)
    assert nodal.prices[["congestion", "voltage"]].abs().to_numpy().max() < 1e-6


def congested_case33():
    """case33bw with the line from bus 5 to bus 6 limited to 5 A (about 110 kVA)."""
    net = copy.deepcopy(load("case33bw").net)
    net.line.loc[(net.line.from_bus == 5) & (net.line.to_bus == 6), "max_i_ka"] = 0.005
    return feeder_from_net(net, name="case33bw-congested")


def test_a_binding_line_prices_the_downstream_buses_higher():
    feeder = congested_case33()
    result = lem.clear(bids_on(BIDS), network=feeder)
    prices = result.prices.set_index("bus")
    line = feeder.branches.query("from_bus == 5 and to_bus == 6").index[0]
    downstream, upstream = 10, 1
    # the line cuts the cheap seller at bus 1 off from buses 6..17: downstream, the
    # expensive seller at bus 10 is marginal (150); upstream, the cheap one (20)
    assert prices.loc[downstream, "price"] == pytest.approx(150.0)
    assert prices.loc[upstream, "price"] == pytest.approx(20.0)
    gap = prices.loc[downstream, "price"] - prices.loc[upstream, "price"]
    parts = prices.loc[downstream] - prices.loc[upstream]
    # the decomposition explains the gap: the same energy part, the rest is congestion
    assert parts["energy"] == pytest.approx(0.0, abs=1e-6)
    assert parts["congestion"] + parts["voltage"] + parts["losses"] == pytest.approx(gap)
    assert parts["congestion"] > 0.9 * gap
    # the parts sum to the price at every bus
    total = result.prices[["energy", "losses", "congestion", "voltage"]].sum(axis=1)
    assert total.to_numpy() == pytest.approx(result.prices["price"].to_numpy(), abs=1e-6)
    # pandapower's AC power flow of the cleared injections keeps the line within its rating
    check = ac_check(feeder, lem.bus_injections(result), 0.0 * lem.bus_injections(result))
    loading = check.branches.set_index("branch").loc[line, "loading_percent_ac"]
    assert loading <= 100.5


def test_settlement_balances_on_a_congested_feeder():
    """Nodal uniform pricing: payments in - payments out = the congestion rent."""
    feeder = congested_case33()
    m = lem.build(bids_on(BIDS), network=feeder)
    from gridmarkets.solvers import solve

    solution = solve(m)
    result = lem.results(m, solution, "uniform")
    k = result.kpis
    rent = 0.0
    thermal = m.handles.thermal_limit
    duals = solution.dual(thermal)
    for index, dual in duals.items():
        con = thermal[index]
        # strong duality: the rent is what the limits are worth, -(dual x limit); a
        # ranged row's dual is negative where its upper side binds, positive at the lower
        rent -= dual * (con.ub if dual < 0 else con.lb)
    assert k["merchandising_surplus"] == pytest.approx(rent, rel=1e-6, abs=1e-9)
    assert k["merchandising_surplus"] > 0
    assert k["buyers_surplus"] + k["sellers_surplus"] + k["merchandising_surplus"] == (
        pytest.approx(solution.objective)
    )
