"""The solve layer's array path (rows recorded by LinDistFlow) against Pyomo's compiler."""

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest

from gridmarkets.models import lem
from gridmarkets.networks import load
from gridmarkets.solvers import compile_model, solve
from gridmarkets.solvers.highs import ROWS_ATTR

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


def forget_recorded_rows(m: pyo.ConcreteModel) -> None:
    for constraint in m.component_objects(pyo.Constraint):
        if hasattr(constraint, ROWS_ATTR):
            delattr(constraint, ROWS_ATTR)


def test_recorded_rows_give_the_lp_pyomo_compiles(feeder):
    fast, slow = market(feeder), market(feeder)
    forget_recorded_rows(slow)
    a, b = compile_model(fast).lp, compile_model(slow).lp
    assert (a.num_row_, a.num_col_, len(a.a_matrix_.value_)) == (
        b.num_row_,
        b.num_col_,
        len(b.a_matrix_.value_),
    )
    fast_solution, slow_solution = solve(fast), solve(slow)
    assert fast_solution.objective == pytest.approx(slow_solution.objective, rel=1e-9)
    prices = fast_solution.dual(fast.network.active_power_balance)
    expected = slow_solution.dual(slow.network.active_power_balance)
    assert np.allclose(prices.to_numpy(), expected.to_numpy(), atol=1e-6)


def test_a_row_changed_after_the_build_is_compiled_as_changed(feeder):
    m = market(feeder)
    first = feeder.branches.index[0]
    flow = m.network.p_flow_pu[first, 1]
    solve(m)
    assert pyo.value(flow) > 1e-3  # the feeder imports in period 1
    m.network.thermal_limit[first, 0, 1].set_value(flow <= 0.0)
    solve(m)
    assert pyo.value(flow) <= 1e-9


def test_fixed_variables_in_recorded_rows_become_data(feeder):
    m = market(feeder)
    below = m.network.v_sq_pu[feeder.branches["to_bus"].iloc[0], 0]
    solve(m)
    drop = feeder.root_vm_pu**2 - pyo.value(below)
    m.network.v_sq_pu[feeder.root, 0].fix(1.05)  # the root's voltage moves, the drop stays
    solve(m)
    assert 1.05 - pyo.value(below) == pytest.approx(drop, abs=1e-9)
