"""The KKT tool on classic linear bilevel problems with published optima.

Each problem cites its source; the statements follow the book or paper, as transcribed
(with the book pages) in BilevelJuMP.jl's test/problems/jump.jl. Every test checks the
published value three independent ways:

1. the single-level MILP from :func:`reformulate` reaches the published value;
2. a brute force over a grid of leader decisions (plus the published one) — at each, the
   follower's LP solved alone, then the leader's best point among the follower's optima
   (the optimistic convention the KKT approach follows) — finds nothing better and
   reaches the published value at the published decision;
3. :func:`verify` re-solves every follower at the MILP's leader decision: zero gap.

All problems are written as the leader minimising (a maximisation's published value is
negated, as stated next to it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo
import pytest

from gridmarkets.errors import InfeasibleError
from gridmarkets.solvers import solve
from gridmarkets.solvers.kkt import reformulate, verify

pytestmark = pytest.mark.solve

Rule = Callable[[dict], object]


@dataclass
class Bilevel:
    """A linear bilevel problem: leader vars, follower vars, objectives, constraints."""

    source: str
    leader: dict[str, tuple]  # name -> (lb, ub, domain)
    follower: dict[str, tuple]  # name -> (lb, ub)
    upper_objective: Rule
    lower_objective: Rule
    upper_constraints: list[Rule]
    lower_constraints: list[Rule]
    published: float  # the leader's optimal value, minimising form
    solution: dict[str, float]  # the published leader decision
    grid: dict[str, np.ndarray]  # brute-force grid per leader variable
    big_m: float | None = 100.0
    lower_sense: int = pyo.minimize
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _range(lo, hi, n=41):
    return np.linspace(lo, hi, n)


PROBLEMS = {
    "bard_5_1_1": Bilevel(
        source="Bard (1998) Practical Bilevel Optimization, Example 5.1.1, p. 197: "
        "optimum (x, y) = (4, 4), F = -12",
        leader={"x": (0, None, pyo.Reals)},
        follower={"y": (0, None)},
        upper_objective=lambda v: v["x"] - 4 * v["y"],
        lower_objective=lambda v: v["y"],
        upper_constraints=[],
        lower_constraints=[
            lambda v: -v["x"] - v["y"] <= -3,
            lambda v: -2 * v["x"] + v["y"] <= 0,
            lambda v: 2 * v["x"] + v["y"] <= 12,
            lambda v: 3 * v["x"] - 2 * v["y"] <= 4,
        ],
        published=-12.0,
        solution={"x": 4.0},
        grid={"x": _range(0, 6, 61)},
    ),
    "bard_5_3_1": Bilevel(
        source="Bard (1998) Practical Bilevel Optimization, Example 5.3.1, p. 208: "
        "optimum x = (0, 0.9), y = (0, 0.6, 0.4), F = -29.2",
        leader={"x1": (0, None, pyo.Reals), "x2": (0, None, pyo.Reals)},
        follower={"y1": (0, None), "y2": (0, None), "y3": (0, None)},
        upper_objective=lambda v: (
            -8 * v["x1"] - 4 * v["x2"] + 4 * v["y1"] - 40 * v["y2"] - 4 * v["y3"]
        ),
        lower_objective=lambda v: v["x1"] + 2 * v["x2"] + v["y1"] + v["y2"] + 2 * v["y3"],
        upper_constraints=[],
        lower_constraints=[
            lambda v: -v["y1"] + v["y2"] + v["y3"] <= 1,
            lambda v: 2 * v["x1"] - v["y1"] + 2 * v["y2"] - 0.5 * v["y3"] <= 1,
            lambda v: 2 * v["x2"] + 2 * v["y1"] - v["y2"] - 0.5 * v["y3"] <= 1,
        ],
        published=-29.2,
        solution={"x1": 0.0, "x2": 0.9},
        grid={"x1": _range(0, 1.5, 16), "x2": _range(0, 1.5, 16)},
    ),
    "bard_8_1_2": Bilevel(
        source="Bard (1998) Practical Bilevel Optimization, Example 8.1.2, p. 304 "
        "(degenerate follower; the optimistic optimum x = 0, y = (0, 1), F = -1)",
        leader={"x": (0, None, pyo.Reals)},
        follower={"y1": (None, None), "y2": (None, None)},
        upper_objective=lambda v: -10.1 * v["x"] + 10 * v["y1"] - v["y2"],
        lower_objective=lambda v: -v["y1"] - v["y2"],
        upper_constraints=[lambda v: v["y1"] >= 0, lambda v: v["y2"] >= 0],
        lower_constraints=[
            lambda v: v["y1"] >= 0,
            lambda v: v["y2"] >= 0,
            lambda v: v["x"] - v["y1"] <= 1,
            lambda v: v["x"] + v["y2"] <= 1,
            lambda v: v["y1"] + v["y2"] <= 1,
        ],
        published=-1.0,
        solution={"x": 0.0},
        grid={"x": _range(0, 1, 41)},
    ),
    "dempe_2002_p25": Bilevel(
        source="Dempe (2002) Foundations of Bilevel Programming, Section 3.2, p. 25: "
        "optimum y = 8/15, x = 28/15, F = 3 x + y = 92/15 (x the follower here)",
        leader={"y": (None, None, pyo.Reals)},
        follower={"x": (None, None)},
        upper_objective=lambda v: 3 * v["x"] + v["y"],
        lower_objective=lambda v: -v["x"],
        upper_constraints=[lambda v: v["x"] <= 5, lambda v: v["y"] <= 8, lambda v: v["y"] >= 0],
        lower_constraints=[
            lambda v: v["x"] + v["y"] <= 8,
            lambda v: 4 * v["x"] + v["y"] >= 8,
            lambda v: 2 * v["x"] + v["y"] <= 13,
            lambda v: 2 * v["x"] - 7 * v["y"] <= 0,
        ],
        published=92 / 15,
        solution={"y": 8 / 15},
        grid={"y": _range(0, 8, 61)},
    ),
    "dempe_2002_p32": Bilevel(
        source="Dempe (2002) Foundations of Bilevel Programming, Section 3.4.1, p. 32: "
        "optimum y = 0, x = (0.01, 0), F = 0",
        leader={"y": (None, None, pyo.Reals)},
        follower={"x1": (None, None), "x2": (None, None)},
        upper_objective=lambda v: 2 * v["x2"] - v["y"],
        lower_objective=lambda v: -v["x1"],
        upper_constraints=[lambda v: v["y"] <= 3, lambda v: v["y"] >= 0],
        lower_constraints=[
            lambda v: 100 * v["x1"] - v["x2"] <= 1,
            lambda v: v["x2"] <= v["y"],
            lambda v: v["x1"] >= 0,
            lambda v: v["x2"] >= 0,
        ],
        published=0.0,
        solution={"y": 0.0},
        grid={"y": _range(0, 3, 31)},
    ),
    "dempe_2015_ex2_1_coupling": Bilevel(
        source="Dempe, Kalashnikov, Perez-Valdes, Kalashnykova (2015) Bilevel Programming "
        "Problems, Example 2.1, p. 21, constraints in the upper level: (x, y) = (8, 6), "
        "F = -20",
        leader={"x": (None, None, pyo.Reals)},
        follower={"y": (None, None)},
        upper_objective=lambda v: -v["x"] - 2 * v["y"],
        lower_objective=lambda v: -v["y"],
        upper_constraints=[
            lambda v: 2 * v["x"] - 3 * v["y"] >= -12,
            lambda v: v["x"] + v["y"] <= 14,
        ],
        lower_constraints=[
            lambda v: -3 * v["x"] + v["y"] <= -3,
            lambda v: 3 * v["x"] + v["y"] <= 30,
        ],
        published=-20.0,
        solution={"x": 8.0},
        grid={"x": _range(0, 10, 51)},
    ),
    "dempe_2015_ex2_1_lower": Bilevel(
        source="Dempe et al. (2015) Bilevel Programming Problems, Example 2.1, p. 21, all "
        "constraints in the lower level: (x, y) = (6, 8), F = -22",
        leader={"x": (None, None, pyo.Reals)},
        follower={"y": (None, None)},
        upper_objective=lambda v: -v["x"] - 2 * v["y"],
        lower_objective=lambda v: -v["y"],
        upper_constraints=[],
        lower_constraints=[
            lambda v: 2 * v["x"] - 3 * v["y"] >= -12,
            lambda v: v["x"] + v["y"] <= 14,
            lambda v: -3 * v["x"] + v["y"] <= -3,
            lambda v: 3 * v["x"] + v["y"] <= 30,
        ],
        published=-22.0,
        solution={"x": 6.0},
        grid={"x": _range(0, 10, 51)},
    ),
    "dempe_2015_ex3_3": Bilevel(
        source="Dempe et al. (2015) Bilevel Programming Problems, Example 3.3, p. 45, with "
        "a = 0.1: x = a/2, y = 1 + a/2, z = 1, F = 0.5 x - y + 3 z = 1.975",
        leader={"x": (None, None, pyo.Reals)},
        follower={"y": (None, None), "z": (None, None)},
        upper_objective=lambda v: 0.5 * v["x"] - v["y"] + 3 * v["z"],
        lower_objective=lambda v: -v["y"] - v["z"],
        upper_constraints=[],
        lower_constraints=[
            lambda v: v["x"] + v["y"] <= 1.1,
            lambda v: -v["x"] + v["y"] <= 1,
            lambda v: v["z"] <= 1,
            lambda v: v["z"] >= 0,
        ],
        published=1.975,
        solution={"x": 0.05},
        grid={"x": _range(-1, 1, 41)},
    ),
    "dempe_2015_ex8_2": Bilevel(
        source="Dempe et al. (2015) Bilevel Programming Problems, Example 8.2, p. 290: "
        "(x, y, z) = (0, 10, 5), F = -15",
        leader={"x": (None, None, pyo.Reals), "y": (None, None, pyo.Reals)},
        follower={"z": (None, None)},
        upper_objective=lambda v: v["x"] - 2 * v["y"] + v["z"],
        lower_objective=lambda v: 2 * v["x"] - v["y"] + v["z"],
        upper_constraints=[
            lambda v: v["x"] + v["y"] + v["z"] >= 15,
            lambda v: v["x"] <= 10,
            lambda v: v["y"] <= 10,
            lambda v: v["z"] <= 10,
            lambda v: v["x"] >= 0,
            lambda v: v["y"] >= 0,
            lambda v: v["z"] >= 0,
        ],
        lower_constraints=[
            lambda v: v["x"] + v["y"] - v["z"] <= 5,
            lambda v: v["z"] >= 0,
            lambda v: v["z"] <= 10,
        ],
        published=-15.0,
        solution={"x": 0.0, "y": 10.0},
        grid={"x": _range(0, 10, 21), "y": _range(0, 10, 21)},
    ),
    "floudas_9_2_2": Bilevel(
        source="Floudas et al. (1999) Handbook of Test Problems in Local and Global "
        "Optimization, test problem 9.2.2: x = 5, y = (4, 2), F = -13",
        leader={"x": (None, None, pyo.Reals)},
        follower={"y1": (None, None), "y2": (None, None)},
        upper_objective=lambda v: -v["x"] - 3 * v["y1"] + 2 * v["y2"],
        lower_objective=lambda v: -v["y1"],
        upper_constraints=[
            lambda v: v["x"] <= 8,
            lambda v: v["x"] >= 0,
            lambda v: v["y1"] <= 4,
            lambda v: v["y2"] <= 4,
            lambda v: v["y1"] >= 0,
            lambda v: v["y2"] >= 0,
        ],
        lower_constraints=[
            lambda v: -v["y1"] <= 0,
            lambda v: v["y1"] <= 4,
            lambda v: -2 * v["x"] + 2 * v["y1"] + 4 * v["y2"] <= 16,
            lambda v: 8 * v["x"] + 3 * v["y1"] - 2 * v["y2"] <= 48,
            lambda v: -2 * v["x"] + v["y1"] - 3 * v["y2"] <= -12,
        ],
        published=-13.0,
        solution={"x": 5.0},
        grid={"x": _range(0, 8, 41)},
    ),
    "floudas_9_2_3": Bilevel(
        source="Floudas et al. (1999) Handbook of Test Problems in Local and Global "
        "Optimization, test problem 9.2.3: (x, y) = (4, 4), F = -16",
        leader={"x": (None, None, pyo.Reals)},
        follower={"y": (None, None)},
        upper_objective=lambda v: -v["x"] - 3 * v["y"],
        lower_objective=lambda v: v["y"],
        upper_constraints=[lambda v: v["x"] >= 0, lambda v: v["y"] >= 0],
        lower_constraints=[
            lambda v: -v["y"] <= 0,
            lambda v: -v["x"] + v["y"] <= 3,
            lambda v: v["x"] + 2 * v["y"] <= 12,
            lambda v: 4 * v["x"] - v["y"] <= 12,
        ],
        published=-16.0,
        solution={"x": 4.0},
        grid={"x": _range(0, 6, 61)},
    ),
    "moore_bard_1990_continuous": Bilevel(
        source="Moore & Bard (1990) The mixed integer linear bilevel programming problem, "
        "Operations Research 38(5), Example 1, continuous relaxation: (x, y) = (8, 1), "
        "max F = x + 10 y = 18 (here min -F = -18)",
        leader={"x": (0, None, pyo.Reals)},
        follower={"y": (0, None)},
        upper_objective=lambda v: -v["x"] - 10 * v["y"],
        lower_objective=lambda v: v["y"],
        upper_constraints=[],
        lower_constraints=[
            lambda v: -25 * v["x"] + 20 * v["y"] <= 30,
            lambda v: v["x"] + 2 * v["y"] <= 10,
            lambda v: 2 * v["x"] - v["y"] <= 15,
            lambda v: 2 * v["x"] + 10 * v["y"] >= 15,
        ],
        published=-18.0,
        solution={"x": 8.0},
        grid={"x": _range(0, 10, 101)},
    ),
    "moore_bard_1990_integer_leader": Bilevel(
        source="Moore & Bard (1990), Example 1 with an integer leader and continuous "
        "follower; Dempe (2002) Section 8.1, p. 257: the same (8, 1), max F = 18, as the "
        "continuous problem (both integer: (2, 2), F = 22)",
        leader={"x": (0, 10, pyo.Integers)},
        follower={"y": (0, None)},
        upper_objective=lambda v: -v["x"] - 10 * v["y"],
        lower_objective=lambda v: v["y"],
        upper_constraints=[],
        lower_constraints=[
            lambda v: -25 * v["x"] + 20 * v["y"] <= 30,
            lambda v: v["x"] + 2 * v["y"] <= 10,
            lambda v: 2 * v["x"] - v["y"] <= 15,
            lambda v: 2 * v["x"] + 10 * v["y"] >= 15,
        ],
        published=-18.0,
        solution={"x": 8.0},
        grid={"x": np.arange(0, 11, dtype=float)},
    ),
}


def build(p: Bilevel) -> pyo.ConcreteModel:
    """The problem as a Pyomo model: leader Vars on the model, the follower's on a block."""
    m = pyo.ConcreteModel()
    m.LEADER = pyo.Set(initialize=list(p.leader))
    m.x = pyo.Var(
        m.LEADER,
        bounds=lambda m, k: p.leader[k][:2],
        within=lambda m, k: p.leader[k][2],
    )
    m.follower = pyo.Block()
    m.follower.FOLLOWER = pyo.Set(initialize=list(p.follower))
    m.follower.y = pyo.Var(m.follower.FOLLOWER, bounds=lambda b, k: p.follower[k])
    v = {**{k: m.x[k] for k in p.leader}, **{k: m.follower.y[k] for k in p.follower}}
    m.follower.c = pyo.ConstraintList()
    for rule in p.lower_constraints:
        m.follower.c.add(rule(v))
    m.follower.objective = pyo.Objective(expr=p.lower_objective(v), sense=p.lower_sense)
    m.coupling = pyo.ConstraintList()
    for rule in p.upper_constraints:
        m.coupling.add(rule(v))
    m.objective = pyo.Objective(expr=p.upper_objective(v))
    m.values = v
    return m


def optimistic_value(m: pyo.ConcreteModel, p: Bilevel, leader: dict[str, float]) -> float | None:
    """The leader's value at a fixed decision: the follower's LP, then the leader's best
    point among the follower's optima. None where the decision admits no such point."""
    for k, value in leader.items():
        m.x[k].fix(value)
    try:
        m.objective.deactivate()
        m.coupling.deactivate()
        m.follower.objective.activate()
        try:
            best = solve(m.follower).objective
        except InfeasibleError:
            return None
        m.follower.objective.deactivate()
        m.coupling.activate()
        m.objective.activate()
        slack = 1e-7 * max(1.0, abs(best))
        if p.lower_sense == pyo.minimize:
            m.optimal = pyo.Constraint(expr=m.follower.objective.expr <= best + slack)
        else:
            m.optimal = pyo.Constraint(expr=m.follower.objective.expr >= best - slack)
        try:
            return solve(m).objective
        except InfeasibleError:
            return None
        finally:
            m.del_component(m.optimal)
    finally:
        m.follower.objective.activate()
        m.objective.activate()
        m.coupling.activate()
        for k in leader:
            m.x[k].unfix()


def brute_force(p: Bilevel) -> tuple[float, float]:
    """(best value over the grid, value at the published decision)."""
    m = build(p)
    names = list(p.grid)
    values = []
    for point in itertools.product(*(p.grid[k] for k in names)):
        value = optimistic_value(m, p, dict(zip(names, point, strict=True)))
        if value is not None:
            values.append(value)
    at_published = optimistic_value(m, p, p.solution)
    return min(values), at_published


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_published_optimum(name):
    p = PROBLEMS[name]
    grid_best, at_published = brute_force(p)
    assert at_published == pytest.approx(p.published, abs=1e-6), p.source
    assert grid_best >= p.published - 1e-6, f"brute force beats the published value: {p.source}"

    m = build(p)
    reformulate(m, m.follower, upper_vars=m.x, big_m=p.big_m)
    solution = solve(m)
    assert solution.objective == pytest.approx(p.published, abs=1e-5), p.source
    checks = verify(m)
    assert len(checks) == 1 and checks[0].ok, checks


def test_there_are_at_least_ten_problems_and_one_has_an_integer_leader():
    assert len(PROBLEMS) >= 10
    assert any(d == pyo.Integers for p in PROBLEMS.values() for *_, d in p.leader.values())
