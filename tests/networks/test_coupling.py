"""attach_grid: the one coupling from a market's injection table to a network formulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest

from gridmarkets.errors import InputError
from gridmarkets.networks import CopperPlate, LinDistFlow, attach_grid, nodal_prices
from gridmarkets.solvers import solve

PERIODS = [0, 1]
LOADS_KW = {(17, 0): 120.0, (17, 1): 80.0, (32, 0): 60.0, (32, 1): 150.0}


def _market(feeder, form: str, formulation=None) -> pyo.ConcreteModel:
    """Fixed loads (P and Q) served by the upstream grid at 100 currency/MWh."""
    m = pyo.ConcreteModel()
    m.supply_kw = pyo.Var(PERIODS, bounds=(0, 1e5))
    m.load_kw = pyo.Var(list(LOADS_KW), bounds=lambda _, *key: (LOADS_KW[key], LOADS_KW[key]))
    root = None if feeder is None else feeder.root
    upstream = [("upstream", root, t, m.supply_kw[t], 1.0, 0.0) for t in PERIODS]
    loads = [
        (f"load@{b}", b if feeder else None, t, m.load_kw[b, t], -1.0, -0.5) for b, t in LOADS_KW
    ]
    rows = pd.DataFrame(
        upstream + loads, columns=["owner", "bus", "period", "variable", "p_coef", "q_coef"]
    )
    if form == "expressions":
        rows = rows.assign(
            p_kw=rows["variable"] * rows["p_coef"], q_kvar=rows["variable"] * rows["q_coef"]
        )
        rows = rows.drop(columns=["variable", "p_coef", "q_coef"])
    attach_grid(m, feeder, PERIODS, rows, formulation=formulation)
    m.cost = pyo.Objective(expr=sum(m.supply_kw[t] for t in PERIODS) * 0.1)
    return m


@pytest.mark.solve
def test_terms_and_expressions_give_the_same_flows_and_prices(case33):
    solved = {}
    for form in ("terms", "expressions"):
        m = _market(case33, form)
        solution = solve(m)
        prices = nodal_prices(m.handles, solution)["price"].to_numpy()
        solved[form] = (pyo.value(m.cost), m.handles.injection_values(), prices)
    (cost_a, (p_a, q_a), price_a), (cost_b, (p_b, q_b), price_b) = solved.values()
    assert cost_a == pytest.approx(cost_b, rel=1e-9)
    np.testing.assert_allclose(p_a, p_b, atol=1e-9)
    np.testing.assert_allclose(q_a, q_b, atol=1e-9)
    np.testing.assert_allclose(price_a, price_b, atol=1e-7)
    # the loads' reactive power reached the network's injections
    total_q = -0.5 * sum(LOADS_KW[key] for key in LOADS_KW if key[1] == 0)
    assert q_a[1:, 0].sum() == pytest.approx(total_q)


@pytest.mark.solve
def test_copperplate_without_a_feeder_and_with_one_clear_the_same(case33):
    costs = []
    for feeder, formulation in ((None, None), (case33, CopperPlate())):
        m = _market(feeder, "terms", formulation)
        solve(m)
        assert m.handles.formulation == "copperplate"
        costs.append(pyo.value(m.cost))
    supplied = sum(LOADS_KW.values()) * 0.1
    assert costs == pytest.approx([supplied, supplied], rel=1e-12)


@pytest.mark.unit
def test_unknown_bus_names_the_owner_and_the_bus(case33):
    m = pyo.ConcreteModel()
    table = pd.DataFrame(
        [{"owner": "prosumers.h9", "bus": 999, "period": 0, "p_kw": 1.0, "q_kvar": 0.0}]
    )
    with pytest.raises(InputError, match=r"prosumers\.h9: bus 999 is not a bus of feeder"):
        attach_grid(m, case33, [0], table)


@pytest.mark.unit
def test_period_outside_the_market_and_a_missing_feeder_are_errors(case33):
    table = pd.DataFrame([{"owner": "a", "bus": 1, "period": 5, "p_kw": 1.0}])
    with pytest.raises(InputError, match=r"a: injection in period 5, not a market period"):
        attach_grid(pyo.ConcreteModel(), case33, [0], table)
    with pytest.raises(InputError, match="needs a feeder"):
        attach_grid(pyo.ConcreteModel(), None, [5], table, formulation=LinDistFlow())
    with pytest.raises(InputError, match="not a network formulation"):
        attach_grid(pyo.ConcreteModel(), None, [5], table, formulation="lindistflow")


@pytest.mark.solve
def test_a_phase_column_reaches_lindist3flow_and_sums_for_lindistflow():
    """One single-phase load: LinDist3Flow sees it on its phase (that phase's voltage drops
    most), LinDistFlow sees the same total as a balanced load (the evaluators agree)."""
    from gridmarkets.networks import LinDist3Flow, linear_power_flow, three_phase_feeder

    feeder = three_phase_feeder("ieee_european_lv_asymmetric", vmin_pu=0.9, vmax_pu=1.1)
    bus = feeder.order[-1]
    solved = {}
    for formulation in (LinDist3Flow(), LinDistFlow()):
        m = pyo.ConcreteModel()
        m.supply_kw = pyo.Var([0])
        rows = [
            ("upstream", feeder.root, 0, m.supply_kw[0], None),
            ("load", bus, 0, -6.0, "b"),
        ]
        table = pd.DataFrame(rows, columns=["owner", "bus", "period", "p_kw", "phase"])
        attach_grid(m, feeder, [0], table, formulation=formulation)
        m.cost = pyo.Objective(expr=m.supply_kw[0])
        solve(m)
        solved[formulation.name] = m
    three = solved["lindist3flow"].handles
    v = np.array([pyo.value(three.voltage_sq[bus, ph, 0]) for ph in "abc"])
    assert v.argmin() == 1 and v[0] > v[1] + 1e-6
    single = solved["lindistflow"].handles
    buses, _ = linear_power_flow(feeder, pd.Series({bus: -6.0}), 0.0)
    v_single = pyo.value(single.voltage_sq[bus, 0]) ** 0.5
    assert v_single == pytest.approx(buses.set_index("bus").loc[bus, "v_pu"], abs=1e-9)
    with pytest.raises(InputError, match=r"load: phase 'x' is not a, b, c"):
        bad = pd.DataFrame(
            [("load", bus, 0, -1.0, "x")], columns=["owner", "bus", "period", "p_kw", "phase"]
        )
        attach_grid(pyo.ConcreteModel(), feeder, [0], bad)
