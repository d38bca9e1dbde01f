"""How LinDist3Flow's rows are built: injections given as arrays, families from integer
variable positions (RowArrays.from_columns, dense_values), checked against the
equations evaluated independently (solve_linear_3ph) and against a dense sum."""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
import pytest
from radial import lv_net

from gridmarkets.errors import NetworkError
from gridmarkets.networks.three_phase import (
    PHASES,
    LinDist3Flow,
    solve_linear_3ph,
    three_phase_feeder,
)
from gridmarkets.solvers.arrays import RowArrays, dense_values

PERIODS = [0, 1, 2]


@pytest.fixture(scope="module")
def feeder():
    """Line charging (shunts at every bus) and a tapped Dyn transformer at the source."""
    return three_phase_feeder(lv_net(max_i_ka=0.12, vmin_pu=0.9, charging_nf=300.0))


def _balanced_point(feeder) -> tuple[np.ndarray, np.ndarray, dict]:
    """Random per-phase loads; the root injects what its branches and shunt draw, so the
    equations evaluated by solve_linear_3ph satisfy every balance with no source split."""
    rng = np.random.default_rng(7)
    shape = (len(feeder.buses), 3, len(PERIODS))
    p_kw, q_kvar = -rng.uniform(0, 8, shape), -rng.uniform(0, 3, shape)
    p_kw[0] = q_kvar[0] = 0.0
    point = solve_linear_3ph(feeder, p_kw, q_kvar)
    base, v0 = feeder.s_base_kva / 3, feeder.root_vm_pu**2
    from_root = np.asarray(feeder.from_pos) == 0
    g, b = feeder.buses[["g_pu", "b_pu"]].to_numpy()[0]
    p_kw[0] = base * (point["p"][from_root].sum(axis=0) + g * v0)
    q_kvar[0] = base * (point["q"][from_root].sum(axis=0) - b * v0)
    return p_kw, q_kvar, point


def _set_point(handles, feeder, point) -> None:
    block = handles.block
    for name, rows, values in (
        ("p_flow_pu", feeder.branches.index, point["p"]),
        ("q_flow_pu", feeder.branches.index, point["q"]),
        ("v_sq_pu", feeder.buses.index, point["v_sq"]),
    ):
        var = getattr(block, name)
        for i, row in enumerate(rows):
            for k, phase in enumerate(PHASES):
                for t in PERIODS:
                    var[row, phase, t].set_value(values[i, k, t], skip_validation=True)
    for var in (block.p_source_split_pu, block.q_source_split_pu, block.q_upstream_kvar):
        for data in var.values():
            data.set_value(0.0)


def _residuals(constraint) -> np.ndarray:
    return np.array([pyo.value(row.body) - row.lb for row in constraint.values()])


@pytest.mark.unit
def test_array_injections_satisfy_the_equations_evaluated_independently(feeder):
    """Loads given as a (buses x 3 x periods) array and the same loads keyed (bus,
    phase, period): at the point solve_linear_3ph computes by walking the tree, every
    balance (with shunts) and voltage-drop row of both builds holds to 1e-12, and the
    handles give back the array."""
    p_kw, q_kvar, point = _balanced_point(feeder)
    keyed = [
        {
            (bus, phase, t): table[i, k, t]
            for i, bus in enumerate(feeder.buses.index)
            for k, phase in enumerate(PHASES)
            for t in PERIODS
        }
        for table in (p_kw, q_kvar)
    ]
    for p, q in ((p_kw, q_kvar), keyed):
        m = pyo.ConcreteModel()
        m.net = pyo.Block()
        handles = LinDist3Flow().add(m.net, feeder, PERIODS, p, q)
        _set_point(handles, feeder, point)
        for family in ("active_power_balance", "reactive_power_balance", "voltage_drop"):
            residual = _residuals(getattr(m.net, family))
            assert len(residual) == 3 * len(PERIODS) * (
                len(feeder.branches) if family == "voltage_drop" else len(feeder.buses)
            )
            assert np.abs(residual).max() < 1e-12, family
        np.testing.assert_allclose(handles.phase_injection_values()[0], p_kw, atol=1e-12)
    assert np.abs(point["v_sq"] - 1).max() > 1e-3  # the point is not flat: the test can fail


@pytest.mark.unit
def test_array_injections_of_the_wrong_shape_are_refused(feeder):
    m = pyo.ConcreteModel()
    m.net = pyo.Block()
    with pytest.raises(NetworkError, match=r"shape \(2, 3, 3\).*\(buses, phases, periods\)"):
        LinDist3Flow().add(m.net, feeder, PERIODS, np.zeros((2, 3, 3)), {})


@pytest.mark.unit
def test_rows_from_columns_match_a_dense_sum():
    """Random COO entries with repeated (row, variable) pairs and unused variables: the
    rows read back equal the dense matrix np.add.at builds; only used variables kept,
    in their order."""
    rng = np.random.default_rng(3)
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(12))
    variables = list(m.x.values())
    rows, columns = rng.integers(0, 7, 60), rng.choice([0, 2, 3, 5, 8, 9, 11], 60)
    values = rng.normal(size=60)
    arrays = RowArrays.from_columns(7, rows, values, columns, variables, -1.0, np.arange(7.0))
    expected = np.zeros((7, 12))
    np.add.at(expected, (rows, columns), values)
    position = {id(v): k for k, v in enumerate(variables)}
    kept = [position[id(v)] for v in arrays.variables]
    assert kept == [0, 2, 3, 5, 8, 9, 11]
    dense = np.zeros((7, 12))
    for k in range(7):
        for p in range(arrays.indptr[k], arrays.indptr[k + 1]):
            dense[k, kept[arrays.columns[p]]] += arrays.values[p]
    np.testing.assert_allclose(dense, expected, atol=1e-12)
    assert arrays.bounds(3) == (-1.0, 3.0)


@pytest.mark.unit
def test_dense_values_follow_the_index_order():
    """Sets in no sorted order: the data come in the order Pyomo's own indexing gives;
    a variable not built over its whole index is refused."""
    m = pyo.ConcreteModel()
    m.v = pyo.Var([5, 3, 9], ["b", "a"], [2, 0, 1])
    assert list(map(id, dense_values(m.v))) == [id(m.v[key]) for key in m.v.index_set()]
    m.sparse = pyo.Var([1, 2, 3], dense=False)
    m.sparse[2].value = 1.0
    with pytest.raises(ValueError, match="sparse: not dense"):
        dense_values(m.sparse)
