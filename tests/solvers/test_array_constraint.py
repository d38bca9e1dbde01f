"""ArrayConstraint (LinDistFlow's families) and the solve layer's array path, against
Pyomo's own compiler on the same rows turned into ordinary constraints."""

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest

from gridmarkets.models import lem
from gridmarkets.networks import load
from gridmarkets.solvers import compile_model, solve
from gridmarkets.solvers.arrays import array_constraints

pytestmark = pytest.mark.solve


@pytest.fixture(scope="module")
def feeder():
    return load("case33bw")


def market(feeder) -> pyo.ConcreteModel:
    """Two periods; buyers at the far end of the feeder, a cheap seller near the root."""
    bids = pd.DataFrame(
        {
            "participant": ["pv", "home", "shop", "pv", "home", "shop"],
            "side": ["sell", "buy", "buy"] * 2,
            "quantity_kw": [300.0, 800.0, 500.0, 100.0, 900.0, 400.0],
            "price": [10.0, 300.0, 250.0, 10.0, 300.0, 250.0],
            "period": [0, 0, 0, 1, 1, 1],
            "bus": [2, 17, 32, 2, 17, 32],
        }
    )
    return lem.build(bids, upstream=lem.Upstream(60.0, 5.0), network=feeder)


def as_plain_rows(m: pyo.ConcreteModel) -> int:
    """Give every array row its own expression (what it reads as): Pyomo compiles them."""
    count = 0
    for constraint in array_constraints(m):
        for row in constraint.values():
            row.set_value(row.expr)
            count += 1
    return count


def test_array_rows_give_the_lp_pyomo_compiles(feeder):
    fast, slow = market(feeder), market(feeder)
    assert as_plain_rows(slow) > 0
    a, b = compile_model(fast), compile_model(slow)
    assert a.lp.num_col_ == b.lp.num_col_
    # one HiGHS row per Pyomo row (Pyomo's compiler splits ranged rows in two)
    assert a.lp.num_row_ == len({id(row) for row in b.rows}) < b.lp.num_row_
    fast_solution, slow_solution = solve(fast), solve(slow)
    assert fast_solution.objective == pytest.approx(slow_solution.objective, rel=1e-9)
    for name in ("active_power_balance", "voltage_drop", "voltage_limit", "thermal_limit"):
        prices = fast_solution.dual(fast.network.component(name))
        expected = slow_solution.dual(slow.network.component(name))
        assert np.allclose(prices.to_numpy(), expected.to_numpy(), atol=1e-6), name


def test_a_row_reads_as_its_equation(feeder):
    m = market(feeder)
    first = feeder.branches.index[0]
    row = m.network.thermal_limit[first, 1, 0]  # direction 30 degrees
    lower, body, upper = row.to_bounded_expression()
    cap = feeder.branches.at[first, "rating_kva"] / feeder.s_base_kva * np.cos(np.pi / 12)
    assert (lower, upper) == pytest.approx((-cap, cap))
    m.network.p_flow_pu[first, 0].set_value(0.5)
    m.network.q_flow_pu[first, 0].set_value(0.2)
    assert pyo.value(body) == pytest.approx(0.5 * np.cos(np.pi / 6) + 0.2 * np.sin(np.pi / 6))
    assert row() == pytest.approx(pyo.value(body))
    assert not row.equality and m.network.voltage_drop[first, 0].equality


def test_a_deactivated_row_is_left_out(feeder):
    m = market(feeder)
    first = feeder.branches.index[0]
    flow = m.network.p_flow_pu[first, 1]
    m.network.thermal_limit[first, 0, 1].set_value(flow <= 0.0)
    solve(m)
    assert pyo.value(flow) <= 1e-9
    m.network.thermal_limit[first, 0, 1].deactivate()
    solve(m)
    assert pyo.value(flow) > 1e-3


def test_a_row_changed_after_the_build_is_compiled_as_changed(feeder):
    m = market(feeder)
    first = feeder.branches.index[0]
    flow = m.network.p_flow_pu[first, 1]
    solve(m)
    assert pyo.value(flow) > 1e-3  # the feeder imports in period 1
    m.network.thermal_limit[first, 0, 1].set_value(flow <= 0.0)
    solve(m)
    assert pyo.value(flow) <= 1e-9


def test_fixed_variables_in_array_rows_become_data(feeder):
    m = market(feeder)
    below = m.network.v_sq_pu[feeder.branches["to_bus"].iloc[0], 0]
    solve(m)
    drop = feeder.root_vm_pu**2 - pyo.value(below)
    assert abs(1.05 - feeder.root_vm_pu**2) > 1e-3  # so fixing it moves every voltage
    m.network.v_sq_pu[feeder.root, 0].fix(1.05)  # the root's voltage moves, the drop stays
    solve(m)
    assert 1.05 - pyo.value(below) == pytest.approx(drop, abs=1e-9)


def test_a_cloned_or_pickled_model_keeps_its_array_rows(feeder):
    import pickle

    m = market(feeder)
    expected = solve(m).objective
    for copy in (m.clone(), pickle.loads(pickle.dumps(m))):
        first = feeder.branches.index[0]
        body = copy.network.thermal_limit[first, 1, 0].body
        flows = (copy.network.p_flow_pu[first, 0], copy.network.q_flow_pu[first, 0])
        terms = [t.args[1] for t in body.args]
        assert all(a is b for a, b in zip(terms, flows, strict=True))  # the copy's own variables
        assert solve(copy).objective == pytest.approx(expected, rel=1e-9)
