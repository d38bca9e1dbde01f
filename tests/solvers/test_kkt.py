"""The KKT tool's contract: dual map, errors that name things, big-M checks, strong duality."""

from __future__ import annotations

import pyomo.environ as pyo
import pytest
from pyomo.common.collections import ComponentMap
from test_kkt_literature import PROBLEMS, build

from gridmarkets.solvers import solve
from gridmarkets.solvers.kkt import DualBound, KKTError, bilinear_cost, reformulate, verify

pytestmark = pytest.mark.solve


def kinked(sense=pyo.minimize) -> pyo.ConcreteModel:
    """Follower y = max(x, 2 - x) on x in [0, 4]; the leader min -x + 0.5 y picks x = 4."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 4))
    m.f = pyo.Block()
    m.f.y = pyo.Var(bounds=(-10, 10))
    m.f.above_x = pyo.Constraint(expr=m.f.y - m.x >= 0)
    m.f.above_mirror = pyo.Constraint(expr=m.f.y + m.x >= 2)
    sign = 1 if sense == pyo.minimize else -1
    m.f.objective = pyo.Objective(expr=sign * m.f.y, sense=sense)
    m.objective = pyo.Objective(expr=-m.x + 0.5 * m.f.y)
    return m


@pytest.mark.parametrize("sense", [pyo.minimize, pyo.maximize])
def test_dual_map_equals_the_followers_own_lp_duals(sense):
    m = kinked(sense)
    follower = reformulate(m, m.f, big_m=100)
    solve(m)
    assert pyo.value(m.x) == pytest.approx(4) and pyo.value(m.f.y) == pytest.approx(4)
    kkt_duals = {c.name: pyo.value(follower.dual[c]) for c in (m.f.above_x, m.f.above_mirror)}
    # the follower alone at x = 4, priced by the solve layer
    alone = kinked(sense)
    alone.x.fix(4)
    lp = solve(alone.f)
    for c in (alone.f.above_x, alone.f.above_mirror):
        assert kkt_duals[c.name] == pytest.approx(lp.dual(c), abs=1e-7)
    assert kkt_duals["f.above_x"] == pytest.approx(1.0)  # one more unit of rhs costs 1


def test_follower_cost_equals_dual_objective_at_the_solution():
    p = PROBLEMS["bard_5_3_1"]
    m = build(p)
    follower = reformulate(m, m.follower, big_m=100)
    solve(m)
    assert pyo.value(follower.cost) == pytest.approx(pyo.value(follower.dual_objective), abs=1e-6)


def test_bounds_are_restored_after_fbbt():
    m = build(PROBLEMS["dempe_2002_p25"])  # no variable bounds: FBBT supplies the Ms
    follower = reformulate(m, m.follower, big_m={m.follower.c: (None, 100)} and 100)
    assert m.x["y"].bounds == (None, None) and m.follower.y["x"].bounds == (None, None)
    assert all(not s.m_primal_given for s in follower.sides)


def test_no_finite_big_m_names_the_constraint():
    m = build(PROBLEMS["dempe_2015_ex3_3"])  # x free: x + y <= 1.1 has no bounded slack
    with pytest.raises(KKTError, match=r"follower\.c\[1\]"):
        reformulate(m, m.follower, big_m={})


def test_missing_multiplier_bound_names_the_constraint():
    m = build(PROBLEMS["bard_5_1_1"])
    with pytest.raises(KKTError, match=r"multiplier of follower\.c\[1\]"):
        reformulate(m, m.follower)


def test_unlisted_leader_variable_is_named():
    m = kinked()
    m.z = pyo.Var(bounds=(0, 1))
    m.f.with_z = pyo.Constraint(expr=m.f.y >= m.z)
    with pytest.raises(KKTError, match=r"variable z is neither declared"):
        reformulate(m, m.f, upper_vars=[m.x], big_m=10)


def test_quadratic_follower_is_rejected():
    m = kinked()
    m.f.objective.deactivate()
    m.f.quadratic = pyo.Objective(expr=m.f.y * m.f.y)
    with pytest.raises(KKTError, match=r"quadratic in the follower"):
        reformulate(m, m.f, big_m=10)


def test_too_small_dual_m_is_flagged_by_verify():
    p = PROBLEMS["moore_bard_1990_continuous"]
    m = build(p)
    reformulate(m, m.follower, big_m=0.1)
    solution = solve(m)
    assert solution.objective > p.published + 1  # the optimum was cut off ...
    check = verify(m)[0]
    assert check.at_bound and not check.ok  # ... and verify says why


def test_too_small_primal_m_is_flagged_by_verify():
    # at the optimum x = y = 4 the slack of y + x >= 2 is 6; a given M_primal of 1 cuts it
    m = kinked()
    given = ComponentMap([(m.f.above_x, 100), (m.f.above_mirror, (1.0, 100)), (m.f.y, 100)])
    reformulate(m, m.f, big_m=given)
    solve(m)
    assert pyo.value(m.x) < 4 - 1e-6
    check = verify(m)[0]
    assert not check.ok and any("given M_primal" in s for s in check.at_bound)


def two_choices() -> pyo.ConcreteModel:
    """Leader x = 4 z, z binary; follower min y s.t. y >= x, 4 y >= 2, 0 <= y <= 10.

    z = 1: y = 4 with multiplier 1 on y >= x; F = -x + 0.5 y = -2 (the optimum).
    z = 0: y = 0.5 with multiplier 0.25 on 4 y >= 2; F = 0.25.
    """
    m = pyo.ConcreteModel()
    m.z = pyo.Var(domain=pyo.Binary)
    m.f = pyo.Block()
    m.f.y = pyo.Var(bounds=(0, 10))
    m.f.above_x = pyo.Constraint(expr=m.f.y >= 4 * m.z)
    m.f.floor = pyo.Constraint(expr=4 * m.f.y >= 2)
    m.f.objective = pyo.Objective(expr=m.f.y)
    m.objective = pyo.Objective(expr=-4 * m.z + 0.5 * m.f.y)
    return m


def test_a_too_small_dual_m_that_cuts_off_a_distant_optimum_passes_verify():
    # documents verify's limit (see its docstring): with M = 0.5 the leader's optimum
    # z = 1 needs a multiplier of 1 and is cut off; the point found, z = 0, needs only
    # 0.25 — its follower is optimal and no multiplier is at M, so every check passes
    m = two_choices()
    reformulate(m, m.f, big_m=0.5)
    assert solve(m).objective == pytest.approx(0.25)
    assert verify(m)[0].ok
    # the remedy the docstring gives: a larger M finds the better leader decision
    m = two_choices()
    reformulate(m, m.f, big_m=5.0)
    assert solve(m).objective == pytest.approx(-2.0)
    assert verify(m)[0].ok


def test_strong_duality_with_a_binary_expanded_leader_matches_bigm():
    # Moore & Bard (1990) Example 1 with x = sum_k 2^k b_k, b binary: max F = 18
    p = PROBLEMS["moore_bard_1990_integer_leader"]
    values = {}
    for method in ("bigm", "strong_duality"):
        m = build(p)
        m.b = pyo.Var(range(4), domain=pyo.Binary)
        m.x["x"].setub(None)
        m.follower.c.deactivate()
        x = sum(2**k * m.b[k] for k in range(4))
        y = m.follower.y["y"]
        m.follower.d = pyo.ConstraintList()
        for rule in p.lower_constraints:
            m.follower.d.add(rule({"x": x, "y": y}))
        m.link = pyo.Constraint(expr=m.x["x"] == x)
        reformulate(m, m.follower, method=method, big_m=100)
        values[method] = solve(m).objective
        assert verify(m)[0].gap == pytest.approx(0, abs=1e-6)
    assert values["bigm"] == pytest.approx(-18) and values["strong_duality"] == pytest.approx(-18)


def test_strong_duality_refuses_a_continuous_leader_product():
    m = build(PROBLEMS["bard_5_1_1"])
    with pytest.raises(KKTError, match=r"binary leader variable"):
        reformulate(m, m.follower, method="strong_duality", big_m=100)


def test_bilinear_cost_linearises_a_price_times_quantity():
    # a seller sets p in [0, 10]; a buyer worth 8/unit takes q in [0, 5]: revenue 40 at p = 8
    m = pyo.ConcreteModel()
    m.p = pyo.Var(bounds=(0, 10))
    m.buyer = pyo.Block()
    m.buyer.q = pyo.Var(bounds=(0, 5))
    m.buyer.objective = pyo.Objective(expr=(m.p - 8) * m.buyer.q)
    follower = reformulate(m, m.buyer, big_m=100)
    m.revenue = pyo.Objective(expr=bilinear_cost(follower), sense=pyo.maximize)
    assert solve(m).objective == pytest.approx(40)
    assert pyo.value(m.p) * pyo.value(m.buyer.q) == pytest.approx(40)
    assert verify(m)[0].ok


def test_dual_bounds_per_side_fix_redundant_multipliers_and_list_tight_ones_apart():
    # y = max(x, 2 - x) lies in [1, 4]: y's bounds (-10, 10) never bind, so bounds 0 on
    # their multipliers are valid (no binary); stationarity 1 = lam_x + lam_mirror makes
    # 1 a valid and tight bound on the rows' multipliers, reached at the optimum x = 4
    m = kinked()
    bounds = ComponentMap(
        [
            (m.f.above_x, DualBound(lower=1.0)),
            (m.f.above_mirror, DualBound(lower=1.0)),
            (m.f.y, DualBound(lower=0.0, upper=0.0)),
        ]
    )
    follower = reformulate(m, m.f, big_m=100, dual_bounds=bounds)
    solution = solve(m)
    assert solution.n_binaries == 2  # the two rows; y's bound sides have none
    assert pyo.value(m.x) == pytest.approx(4) and pyo.value(m.f.y) == pytest.approx(4)
    assert solution.objective == pytest.approx(-4 + 0.5 * max(4, 2 - 4))  # closed form
    assert all(s.multiplier.fixed for s in follower.sides if s.component is m.f.y)
    check = verify(m)[0]
    assert check.ok and not check.at_bound
    assert len(check.at_derived_bound) == 1 and "above_x" in check.at_derived_bound[0]
