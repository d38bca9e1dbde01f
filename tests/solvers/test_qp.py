"""The solve layer on convex QPs, each against a reference computed independently of HiGHS.

Sign convention checked throughout (solvers/highs.py): ``dual(c)`` is the change of the
cost (the objective when minimising, minus it when maximising) per unit increase of
``c``'s right-hand side.
"""

import numpy as np
import pyomo.environ as pyo
import pytest
from scipy.optimize import minimize

from gridmarkets.errors import InputError
from gridmarkets.solvers import solve
from gridmarkets.solvers.persistent import PersistentLP

pytestmark = pytest.mark.solve


def random_qp(seed: int = 1, n: int = 6):
    """min 0.5 x'Qx + c'x  s.t.  A_eq x = b_eq,  A_in x <= b_in, with Q dense positive
    definite and the inequalities cutting the equality-constrained minimum."""
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    q = m @ m.T + 0.5 * np.eye(n)
    c = rng.normal(size=n)
    a_eq, b_eq = rng.normal(size=(2, n)), rng.normal(size=2)
    a_in = rng.normal(size=(3, n))
    kkt = np.block([[q, a_eq.T], [a_eq, np.zeros((2, 2))]])
    x_eq = np.linalg.solve(kkt, np.concatenate([-c, b_eq]))[:n]
    b_in = a_in @ x_eq - np.array([0.5, 0.3, -2.0])  # the first two rows cut x_eq
    return q, c, a_eq, b_eq, a_in, b_in


def pyomo_qp(q, c, a_eq, b_eq, a_in, b_in) -> pyo.ConcreteModel:
    n = len(c)
    model = pyo.ConcreteModel()
    model.x = pyo.Var(range(n))
    x = model.x
    model.eq = pyo.Constraint(
        range(len(b_eq)), rule=lambda _, r: sum(a_eq[r, k] * x[k] for k in range(n)) == b_eq[r]
    )
    model.ineq = pyo.Constraint(
        range(len(b_in)), rule=lambda _, r: sum(a_in[r, k] * x[k] for k in range(n)) <= b_in[r]
    )
    quadratic = sum(0.5 * q[i, j] * x[i] * x[j] for i in range(n) for j in range(n) if q[i, j] != 0)
    model.cost = pyo.Objective(expr=quadratic + sum(c[k] * x[k] for k in range(n)))
    return model


def kkt_reference(q, c, a_eq, b_eq, a_in, b_in):
    """The QP's point and multipliers without HiGHS: scipy's SLSQP finds the active set,
    then the KKT system of the equality-constrained problem on that set, solved by numpy,
    gives them exactly: ``Q x + c = A' y`` and ``A x = b`` (y = d cost / d b)."""
    found = minimize(
        lambda x: 0.5 * x @ q @ x + c @ x,
        np.zeros(len(c)),
        jac=lambda x: q @ x + c,
        constraints=[
            {"type": "eq", "fun": lambda x: a_eq @ x - b_eq, "jac": lambda x: a_eq},
            {"type": "ineq", "fun": lambda x: b_in - a_in @ x, "jac": lambda x: -a_in},
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert found.success
    active = np.flatnonzero(b_in - a_in @ found.x < 1e-6)
    a = np.vstack([a_eq, a_in[active]])
    b = np.concatenate([b_eq, b_in[active]])
    n, k = len(c), len(b)
    solution = np.linalg.solve(np.block([[q, -a.T], [a, np.zeros((k, k))]]), np.r_[-c, b])
    x, y = solution[:n], solution[n:]
    y_in = np.zeros(len(b_in))
    y_in[active] = y[len(b_eq) :]
    return x, y[: len(b_eq)], y_in, active


def test_random_qp_point_and_duals_match_the_kkt_system():
    data = random_qp()
    x_ref, y_eq, y_in, active = kkt_reference(*data)
    # the reference is a KKT point: two rows bind, priced <= 0 (loosening saves cost)
    assert list(active) == [0, 1]
    assert (y_in[active] < 0).all()
    assert (data[4] @ x_ref <= data[5] + 1e-9).all()

    model = pyomo_qp(*data)
    solution = solve(model)

    assert solution.optimal and solution.duals_from == "qp"
    x = np.array([model.x[k].value for k in range(len(x_ref))])
    assert x == pytest.approx(x_ref, abs=1e-6)
    q, c = data[0], data[1]
    assert solution.objective == pytest.approx(0.5 * x_ref @ q @ x_ref + c @ x_ref, abs=1e-6)
    assert solution.dual(model.eq).to_numpy() == pytest.approx(y_eq, abs=1e-6)
    assert solution.dual(model.ineq).to_numpy() == pytest.approx(y_in, abs=1e-6)


SELLERS = [(0.02, 20.0), (0.05, 35.0), (0.01, 50.0)]  # cost a p^2 + b p (currency/h, p in kW)
BUYERS = [(200.0, 0.04), (150.0, 0.03)]  # utility e d - f d^2


def quadratic_market(fixed_demand: float) -> pyo.ConcreteModel:
    """Sellers with quadratic costs, buyers with quadratic utilities and a fixed demand,
    cleared by maximising welfare under one balance ``supply - demand == fixed demand``."""
    m = pyo.ConcreteModel()
    m.p = pyo.Var(range(len(SELLERS)), bounds=(0, None))
    m.d = pyo.Var(range(len(BUYERS)), bounds=(0, None))
    m.balance = pyo.Constraint(expr=sum(m.p.values()) - sum(m.d.values()) == fixed_demand)
    utility = sum(e * m.d[j] - f * m.d[j] ** 2 for j, (e, f) in enumerate(BUYERS))
    cost = sum(a * m.p[i] ** 2 + b * m.p[i] for i, (a, b) in enumerate(SELLERS))
    m.welfare = pyo.Objective(expr=utility - cost, sense=pyo.maximize)
    return m


def crossing(fixed_demand: float) -> tuple[float, list[float], list[float]]:
    """Where supply ``p_i = (price - b_i) / (2 a_i)`` meets demand ``d_j = (e_j - price) /
    (2 f_j)`` plus the fixed demand: linear in price, solved in closed form."""
    slope = sum(1 / (2 * a) for a, _ in SELLERS) + sum(1 / (2 * f) for _, f in BUYERS)
    intercept = sum(b / (2 * a) for a, b in SELLERS) + sum(e / (2 * f) for e, f in BUYERS)
    price = (fixed_demand + intercept) / slope
    supply = [(price - b) / (2 * a) for a, b in SELLERS]
    demand = [(e - price) / (2 * f) for e, f in BUYERS]
    return price, supply, demand


def test_quadratic_market_clears_at_the_closed_form_crossing_price():
    price, supply, demand = crossing(100.0)
    assert min(supply + demand) > 0  # interior: the closed form is the market's answer
    m = quadratic_market(100.0)
    solution = solve(m)
    assert solution.dual(m.balance) == pytest.approx(price, abs=1e-6)
    assert [m.p[i].value for i in m.p] == pytest.approx(supply, abs=1e-6)
    assert [m.d[j].value for j in m.d] == pytest.approx(demand, abs=1e-6)
    welfare = sum(e * d - f * d**2 for (e, f), d in zip(BUYERS, demand, strict=True)) - sum(
        a * p**2 + b * p for (a, b), p in zip(SELLERS, supply, strict=True)
    )
    assert solution.objective == pytest.approx(welfare, abs=1e-6)


def test_dual_matches_the_finite_difference_of_the_optimal_cost():
    h = 0.5  # the optimal cost is quadratic in the demand: central differences are exact
    base = quadratic_market(100.0)
    dual = solve(base).dual(base.balance)
    up, down = quadratic_market(100.0 + h), quadratic_market(100.0 - h)
    cost_up, cost_down = -solve(up).objective, -solve(down).objective  # cost = -welfare
    assert (cost_up - cost_down) / (2 * h) == pytest.approx(dual, abs=1e-6)


def off_diagonal_qp(sense) -> pyo.ConcreteModel:
    """f = x^2 + x y + y^2 + 3 x on x + y = 2: y = 2 - x gives f = x^2 + x + 4, so
    x = -0.5, y = 2.5, f = 3.75; with x + y = b, f*(b) = b^2 - (3 - b)^2 / 4 and
    d f* / d b = 2 b + (3 - b) / 2 = 4.5."""
    m = pyo.ConcreteModel()
    m.x, m.y = pyo.Var(), pyo.Var()
    m.sum = pyo.Constraint(expr=m.x + m.y == 2)
    f = m.x**2 + m.x * m.y + m.y**2 + 3 * m.x
    m.f = pyo.Objective(expr=f if sense == pyo.minimize else -f, sense=sense)
    return m


@pytest.mark.parametrize(("sense", "objective"), [(pyo.minimize, 3.75), (pyo.maximize, -3.75)])
def test_maximising_minus_f_is_minimising_f_with_the_same_cost_prices(sense, objective):
    m = off_diagonal_qp(sense)
    solution = solve(m)
    assert (m.x.value, m.y.value) == pytest.approx((-0.5, 2.5), abs=1e-6)
    assert solution.objective == pytest.approx(objective, abs=1e-6)
    assert solution.best_bound == pytest.approx(objective, abs=1e-6)
    assert solution.dual(m.sum) == pytest.approx(4.5, abs=1e-6)


def test_objective_only_and_fixed_variables_in_quadratic_terms():
    """min (z - 3)^2 + (w - 1)^2 + z v with v fixed at 2: z = 2, w = 1, f = 1 + 0 + 4."""
    m = pyo.ConcreteModel()
    m.z, m.w, m.v = pyo.Var(), pyo.Var(), pyo.Var()
    m.v.fix(2.0)
    m.w_cap = pyo.Constraint(expr=m.w <= 10)
    m.f = pyo.Objective(expr=(m.z - 3) ** 2 + (m.w - 1) ** 2 + m.z * m.v)
    solution = solve(m)
    assert (m.z.value, m.w.value) == pytest.approx((2.0, 1.0), abs=1e-6)
    assert solution.objective == pytest.approx(5.0, abs=1e-6)
    assert solution.n_variables == 2 and m.v.value == 2.0


def test_quadratic_objective_with_integers_is_refused_naming_them():
    m = quadratic_market(100.0)
    m.on = pyo.Var(range(7), domain=pyo.Binary)
    m.units = pyo.Var(domain=pyo.NonNegativeIntegers)
    m.commit = pyo.Constraint(range(3), rule=lambda m, i: m.p[i] <= 1000 * m.on[i])
    m.count = pyo.Constraint(expr=m.units >= sum(m.on.values()))
    with pytest.raises(InputError) as error:
        solve(m)
    message = str(error.value)
    assert "objective welfare is quadratic" in message
    assert "on[0], on[1], on[2], on[3], on[4] and 3 more" in message


def test_non_convex_objective_is_refused_naming_its_variables():
    m = off_diagonal_qp(pyo.minimize)
    m.f.expr = m.x**2 + 3 * m.x * m.y + m.y**2  # Hessian [[2, 3], [3, 2]]: eigenvalue -1
    with pytest.raises(InputError, match=r"objective f is not convex in x, y .*eigenvalue -1\b"):
        solve(m)
    m.f.sense = pyo.maximize  # -Q must be PSD: Q's eigenvalue 5 is the culprit
    with pytest.raises(InputError, match=r"objective f is not concave in x, y .*eigenvalue 5\b"):
        solve(m)


def test_objective_neither_linear_nor_quadratic_is_refused():
    m = off_diagonal_qp(pyo.minimize)
    m.f.expr = pyo.exp(m.x) + m.y
    with pytest.raises(InputError, match=r"objective f is neither linear nor quadratic"):
        solve(m)


def test_persistent_lp_refuses_a_quadratic_objective():
    with pytest.raises(InputError, match="cannot hold a quadratic objective"):
        PersistentLP(off_diagonal_qp(pyo.minimize))


@pytest.mark.parametrize("tiny", [1e-7, 1e-5, 1e-4, -1e-5])
@pytest.mark.parametrize("active", [False, True])
def test_tiny_nonzero_bounds_are_kept_exactly(tiny, active):
    """HiGHS 1.16's QP solver read such bounds as 0 and ended in "Solve error" (module
    constant QP_TINY_BOUND). min sum_k (x_k - t_k)^2 s.t. sum_k x_k = s, with x_0 >= tiny
    (a bound on x_1 < 0 when tiny < 0): the closed form by the KKT conditions, with the
    bound active or not."""
    targets = np.array([3.0, -1.0, 2.0])
    model = pyo.ConcreteModel()
    model.x = pyo.Var(range(3))
    k = 0 if tiny > 0 else 1
    if tiny > 0:
        model.x[k].setlb(tiny)
    else:
        model.x[k].setub(tiny)
    total = 4.0
    # with the bound pushed to bind: the target of x_k moves beyond it
    targets[k] = (-5.0 if tiny > 0 else 5.0) if active else targets[k]
    model.sum = pyo.Constraint(expr=sum(model.x.values()) == total)
    model.cost = pyo.Objective(expr=sum((model.x[i] - targets[i]) ** 2 for i in range(3)))
    solution = solve(model)
    # by hand: x_i = t_i + y/2 for free i (y the multiplier of the sum); x_k = tiny if bound
    free = [i for i in range(3) if not (active and i == k)]
    fixed = 0.0 if not active else tiny
    y = 2.0 * (total - fixed - targets[free].sum()) / len(free)
    expected = targets + y / 2.0
    if active:
        expected[k] = tiny
    assert solution.optimal
    got = np.array([pyo.value(model.x[i]) for i in range(3)])
    assert got == pytest.approx(expected, abs=1e-9)
    assert (got[k] >= tiny - 1e-12) if tiny > 0 else (got[k] <= tiny + 1e-12)
    assert solution.dual(model.sum) == pytest.approx(y, abs=1e-7)
    assert solution.objective == pytest.approx(((expected - targets) ** 2).sum(), abs=1e-9)
