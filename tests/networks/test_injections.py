"""LinearInjections (a market's injections as arrays) against the same injections as a
dict of Pyomo expressions."""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
import pytest

from gridmarkets.networks import LinDistFlow, LinearInjections
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve

# (bus, period, coefficient, variable number): two terms share (3, 0); bus 5 only in period 1
TERMS = [(3, 0, 1.0, 0), (3, 0, -1.0, 1), (5, 1, -1.0, 2), (0, 0, 1.0, 3), (0, 1, 1.0, 4)]


def market(case33, as_arrays: bool) -> pyo.ConcreteModel:
    """Buyers at buses 3 and 5, a seller at bus 3, import at the root, over two periods."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(5), bounds=(0, 800.0))
    keys = [(bus, t) for bus, t, _, _ in TERMS]
    coefs = [c for _, _, c, _ in TERMS]
    variables = [m.x[k] for _, _, _, k in TERMS]
    if as_arrays:
        p_kw = LinearInjections(keys, coefs, variables)
    else:
        p_kw = {}
        for key, c, v in zip(keys, coefs, variables, strict=True):
            p_kw[key] = p_kw.get(key, 0) + c * v
    m.net = pyo.Block()
    m.handles = LinDistFlow().add(m.net, case33, [0, 1], p_kw, {})
    cost = [0.03, -0.25, -0.2, 0.06, 0.06]  # seller's cost, buyers' values, import price
    m.cost = pyo.Objective(expr=sum(c * m.x[k] for k, c in enumerate(cost)))
    return m


def test_the_mapping_reads_as_the_sums_of_its_terms():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(5), initialize=lambda m, k: k + 1.0)
    keys = [(bus, t) for bus, t, _, _ in TERMS]
    injections = LinearInjections(keys, [c for *_, c, _ in TERMS], [m.x[k] for *_, k in TERMS])
    assert list(injections) == [(3, 0), (5, 1), (0, 0), (0, 1)]
    assert pyo.value(injections[3, 0]) == pytest.approx(1.0 - 2.0)
    assert pyo.value(injections[5, 1]) == pytest.approx(-3.0)
    expected = [pyo.value(injections[key]) for key in injections]
    assert injections.values_by_key() == pytest.approx(expected)


def test_arrays_and_expressions_clear_the_same_market(case33):
    arrays, expressions = market(case33, True), market(case33, False)
    first, second = solve(arrays), solve(expressions)
    assert first.objective == pytest.approx(second.objective, rel=1e-9)
    prices = first.dual(arrays.net.active_power_balance).to_numpy()
    assert prices == pytest.approx(second.dual(expressions.net.active_power_balance).to_numpy())
    p_arrays, _ = arrays.handles.injection_values()
    p_expressions, _ = expressions.handles.injection_values()
    assert np.allclose(p_arrays, p_expressions)
    assert np.abs(p_arrays).max() > 1.0  # the market trades


def test_an_injection_outside_the_market_periods_is_an_error(case33):
    m = pyo.ConcreteModel()
    m.x = pyo.Var()
    m.net = pyo.Block()
    with pytest.raises(Exception, match="period 7"):
        LinDistFlow().add(m.net, case33, [0], LinearInjections([(3, 7)], [1.0], [m.x]), {})
