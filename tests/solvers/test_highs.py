"""The solve layer on small LPs and MILPs whose answers are known by hand."""

import pyomo.environ as pyo
import pytest

from gridmarkets.errors import (
    InfeasibleError,
    LimitReachedError,
    SolverOptionError,
    UnboundedError,
)
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve


def two_bid_market() -> pyo.ConcreteModel:
    """A seller offers 10 kW at 30/MWh, a buyer bids 6 kW at 50/MWh."""
    m = pyo.ConcreteModel()
    m.sell_kw = pyo.Var(bounds=(0, 10))
    m.buy_kw = pyo.Var(bounds=(0, 6))
    m.balance = pyo.Constraint(expr=m.sell_kw - m.buy_kw == 0)
    m.welfare = pyo.Objective(expr=50 * m.buy_kw - 30 * m.sell_kw, sense=pyo.maximize)
    return m


def test_two_bid_market_clears_at_the_marginal_offer():
    m = two_bid_market()
    sol = solve(m)
    assert sol.status == "optimal" and sol.optimal
    assert pyo.value(m.buy_kw) == pytest.approx(6)
    assert pyo.value(m.sell_kw) == pytest.approx(6)
    assert sol.objective == pytest.approx(6 * (50 - 30))
    # the seller is marginal: one more kW of demand costs its offer price
    assert sol.dual(m.balance) == pytest.approx(30)
    assert sol.duals_from == "lp"
    assert (sol.n_variables, sol.n_constraints, sol.n_nonzeros) == (2, 1, 2)


def test_price_flips_to_the_buyer_when_the_buyer_is_marginal():
    m = two_bid_market()
    m.buy_kw.setub(20)
    sol = solve(m)
    assert pyo.value(m.sell_kw) == pytest.approx(10)
    assert sol.dual(m.balance) == pytest.approx(50)


@pytest.mark.parametrize("sense", [pyo.minimize, pyo.maximize])
def test_duals_equal_finite_differences_of_the_cost(sense):
    """Duals follow one convention in both senses: d(cost)/d(rhs)."""
    sign = 1 if sense == pyo.minimize else -1

    def build(dem, cap, floor):
        m = pyo.ConcreteModel()
        m.g1 = pyo.Var(bounds=(0, None))
        m.g2 = pyo.Var(bounds=(0, None))
        m.demand = pyo.Constraint(expr=m.g1 + m.g2 == dem)
        m.cap = pyo.Constraint(expr=m.g1 <= cap)
        m.floor = pyo.Constraint(expr=m.g2 >= floor)
        m.obj = pyo.Objective(expr=sign * (10 * m.g1 + 25 * m.g2), sense=sense)
        return m

    base = (8.0, 5.0, 1.0)
    m = build(*base)
    sol = solve(m)
    for k, con in enumerate([m.demand, m.cap, m.floor]):
        moved = list(base)
        moved[k] += 0.1
        cost_moved = sign * solve(build(*moved)).objective
        expected = (cost_moved - sign * sol.objective) / 0.1
        assert sol.dual(con) == pytest.approx(expected, abs=1e-6), con.name


def test_indexed_constraint_duals_come_as_a_series():
    m = pyo.ConcreteModel()
    m.T = pyo.Set(initialize=[0, 1])
    m.p = pyo.Var(m.T, bounds=(0, 10))
    m.demand = pyo.Constraint(m.T, rule=lambda m, t: m.p[t] == 3 + t)
    m.cost = pyo.Objective(expr=sum((20 + 5 * t) * m.p[t] for t in m.T))
    sol = solve(m)
    prices = sol.dual(m.demand)
    assert list(prices.index) == [0, 1]
    assert prices.tolist() == pytest.approx([20, 25])


def test_milp_prices_come_from_the_fixed_integer_lp():
    """A unit with a 100 start-up cost and 20/MWh serves 5 kW.

    The LP relaxation would price the demand at 20 + 100/10 = 30 (u = 0.5); with the
    commitment fixed at u = 1 the price is the unit's marginal cost, 20.
    """
    m = pyo.ConcreteModel()
    m.u = pyo.Var(domain=pyo.Binary)
    m.p = pyo.Var(bounds=(0, None))
    m.demand = pyo.Constraint(expr=m.p == 5)
    m.capacity = pyo.Constraint(expr=m.p <= 10 * m.u)
    m.cost = pyo.Objective(expr=100 * m.u + 20 * m.p)
    sol = solve(m)
    assert sol.is_mip and sol.n_binaries == 1
    assert pyo.value(m.u) == 1
    assert sol.objective == pytest.approx(200)
    assert sol.best_bound == pytest.approx(200)
    assert sol.duals_from == "fixed_integer_lp"
    assert sol.dual(m.demand) == pytest.approx(20)


def test_infeasible_pair_is_named_by_the_diagnosis():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 100))
    m.y = pyo.Var(bounds=(0, 100))
    m.at_least = pyo.Constraint(expr=m.x >= 5)
    m.at_most = pyo.Constraint(expr=m.x <= 3)
    m.unrelated = pyo.Constraint(expr=m.y <= 50)
    m.obj = pyo.Objective(expr=m.x + m.y)
    with pytest.raises(InfeasibleError) as err:
        solve(m)
    diagnosis = err.value.diagnosis
    assert diagnosis.method == "iis"
    assert set(diagnosis.names) == {"at_least", "at_most"}
    assert "at_least" in str(err.value) and "at_most" in str(err.value)


def test_milp_infeasible_only_with_integers_falls_back_to_elastic():
    m = pyo.ConcreteModel()
    m.n = pyo.Var(domain=pyo.Integers, bounds=(0, 10))
    m.z = pyo.Var(bounds=(0, 1))
    m.odd = pyo.Constraint(expr=2 * m.n == 3)
    m.free = pyo.Constraint(expr=m.z <= 1)
    m.obj = pyo.Objective(expr=m.n)
    with pytest.raises(InfeasibleError) as err:
        solve(m)
    assert err.value.diagnosis.method == "elastic"
    assert err.value.diagnosis.names == ["odd"]


def test_unbounded_model_raises():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, None))
    m.c = pyo.Constraint(expr=m.x >= 1)
    m.obj = pyo.Objective(expr=m.x, sense=pyo.maximize)
    with pytest.raises(UnboundedError):
        solve(m)


def knapsack(n: int = 40) -> pyo.ConcreteModel:
    m = pyo.ConcreteModel()
    m.I = pyo.RangeSet(0, n - 1)
    m.pick = pyo.Var(m.I, domain=pyo.Binary)
    w = {i: 13 + (i * 37) % 29 for i in m.I}
    v = {i: 10 + (i * 53) % 31 for i in m.I}
    m.weight = pyo.Constraint(expr=sum(w[i] * m.pick[i] for i in m.I) <= 300)
    m.value = pyo.Objective(expr=sum(v[i] * m.pick[i] for i in m.I), sense=pyo.maximize)
    return m


def test_a_limit_returns_the_incumbent_unproven():
    m = knapsack()
    sol = solve(m, options={"mip_max_improving_sols": 1, "presolve": "off"})
    assert sol.status == "solution_limit" and not sol.optimal
    assert sol.duals_from is None
    picked = sum(pyo.value(m.pick[i]) for i in m.I)
    assert picked >= 1  # a real incumbent was loaded
    assert sol.objective == pytest.approx(pyo.value(m.value))
    assert sol.best_bound >= sol.objective


def test_a_limit_without_incumbent_raises():
    with pytest.raises(LimitReachedError):
        solve(
            knapsack(), options={"mip_max_nodes": 0, "presolve": "off", "mip_heuristic_effort": 0}
        )


def test_unknown_option_is_an_input_error():
    with pytest.raises(SolverOptionError, match="no_such_option"):
        solve(two_bid_market(), options={"no_such_option": 1})


def test_a_model_whose_variables_are_all_fixed_solves():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 5))
    m.x.fix(2)
    m.obj = pyo.Objective(expr=3 * m.x + 1)
    sol = solve(m)
    assert sol.status == "optimal"
    assert sol.objective == pytest.approx(7)


def test_a_coefficient_highs_reads_as_infinite_is_an_input_error():
    from gridmarkets.errors import InputError

    m = pyo.ConcreteModel()
    m.u = pyo.Var(domain=pyo.Binary)
    m.x = pyo.Var(bounds=(0, None))
    m.cap = pyo.Constraint(expr=m.x <= 1e16 * m.u)
    m.obj = pyo.Objective(expr=m.x - m.u, sense=pyo.maximize)
    with pytest.raises(InputError, match="out of its range"):
        solve(m)


def test_the_number_of_threads_can_change_between_solves():
    """HiGHS fixes a thread's scheduler at its first run; later solves may ask for another
    number of threads (a sweep with threads=1 after solves with the default)."""
    for threads in (None, 1, 2, None, 1):
        sol = solve(two_bid_market(), threads=threads)
        assert sol.optimal and sol.objective == pytest.approx(6 * (50 - 30))


def test_a_warm_start_gives_the_search_its_first_incumbent():
    """With no branching and no heuristics HiGHS finds no solution on its own (the test
    above); a partial start (items 0 and 1, the rest for HiGHS to complete) is one."""
    stop = {"mip_max_nodes": 0, "presolve": "off", "mip_heuristic_effort": 0}
    m = knapsack()
    m.pick[0].set_value(1)
    m.pick[1].set_value(1)
    sol = solve(m, options=stop, warm_start=True)
    assert not sol.optimal
    assert pyo.value(m.weight.body) <= 300 + 1e-9
    assert sol.objective == pytest.approx(pyo.value(m.value)) and sol.objective >= 10 + 32
