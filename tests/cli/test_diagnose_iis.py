"""The diagnosis's conflicting set, checked by brute force: it is infeasible on its own
and every proper subset of it is feasible (scipy's linprog on the explicit rows); and
the time limit gives a partial answer, marked so."""

import itertools
import time

import numpy as np
import pyomo.environ as pyo
import pytest
from scipy.optimize import linprog

from gridmarkets.errors import InfeasibleError
from gridmarkets.solvers import solve
from gridmarkets.solvers.diagnose import diagnose
from gridmarkets.solvers.highs import compile_model

pytestmark = pytest.mark.unit

PERIODS = range(6)
# per period t, over (x, y, z, w) of that period: rows a . v <= b
ROWS = {
    "at_least": ([-1, 0, 0, 0], -5.0),  # x >= 5
    "x_below_y": ([1, -1, 0, 0], 0.0),  # x <= y
    "y_below_z": ([0, 1, -1, 0], 0.0),  # y <= z
    "at_most": ([0, 0, 1, 0], 3.0),  # z <= 3
    "w_below_x": ([-1, 0, 0, 1], 0.0),  # w <= x (feasible with the others)
    "w_cap": ([0, 0, 0, 1], 10.0),  # w <= 10
}


def row_rule(a: list[int], b: float):
    return lambda m, t: sum(a[k] * m.v[t, k] for k in range(4)) <= b


def chain_model() -> pyo.ConcreteModel:
    """The same infeasible chain in every period, plus rows that take no part in it."""
    m = pyo.ConcreteModel()
    m.T = pyo.Set(initialize=PERIODS)
    m.v = pyo.Var(m.T, range(4))
    for name, (a, b) in ROWS.items():
        m.add_component(name, pyo.Constraint(m.T, rule=row_rule(a, b)))
    m.obj = pyo.Objective(expr=sum(m.v[t, 3] for t in m.T))
    return m


def feasible(names: list[str]) -> bool:
    """Whether the rows named (one period's) hold together, by scipy's linprog."""
    if not names:
        return True
    a = np.array([ROWS[n][0] for n in names], dtype=float)
    b = np.array([ROWS[n][1] for n in names])
    return linprog(np.zeros(4), A_ub=a, b_ub=b, bounds=[(None, None)] * 4).status == 0


def test_the_conflict_is_irreducible_and_within_one_period():
    with pytest.raises(InfeasibleError) as raised:
        solve(chain_model())
    diagnosis = raised.value.diagnosis
    assert diagnosis.method == "iis" and diagnosis.complete
    periods = {c.component.index() for c in diagnosis.conflicts}
    assert len(periods) == 1
    names = [c.family for c in diagnosis.conflicts]
    assert not feasible(names)
    assert all(feasible(list(subset)) for subset in itertools.combinations(names, len(names) - 1))
    # and it is the only irreducible infeasible set among one period's rows
    minimal = [
        set(s)
        for k in range(1, len(ROWS) + 1)
        for s in itertools.combinations(ROWS, k)
        if not feasible(list(s))
        and all(feasible(list(r)) for r in itertools.combinations(s, k - 1))
    ]
    assert minimal == [set(names)]
    # where it fails: every period needs relaxation
    assert {c.component.index() for c in diagnosis.extent} == set(PERIODS)


def test_the_time_limit_gives_a_partial_answer_marked_so():
    form = compile_model(chain_model())
    started = time.monotonic()
    diagnosis = diagnose(form, {"time_limit": 1e-6})
    assert time.monotonic() - started < 2.0
    assert not diagnosis.complete
    assert "partial answer" in diagnosis.report()


def test_a_model_every_row_of_which_holds_is_called_marginal_not_explained():
    """What the diagnosis says when HiGHS calls a model infeasible that an elastic
    re-solve satisfies (a marginal case, as HiGHS's presolve on the 907-bus feeder with
    vmin 1.05 pu): here a feasible model stands for it."""
    m = chain_model()
    m.at_most.deactivate()  # the chain is now feasible: x = y = z = 5
    assert feasible([name for name in ROWS if name != "at_most"])
    diagnosis = diagnose(compile_model(m))
    assert diagnosis.complete and not diagnosis.conflicts
    assert "infeasible only by the solver's tolerances" in diagnosis.report()
