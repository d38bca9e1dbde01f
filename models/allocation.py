"""Cooperative cost games: how a community splits what it costs.

A cost game is a set of players and a characteristic function ``cost(S)``: what
coalition ``S`` pays when it operates alone (``cost(frozenset()) == 0``). An
allocation ``x`` gives every player a share of ``cost(N)``; it is *efficient* when
``sum_i x_i = cost(N)`` and *in the core* when no coalition would pay less alone:
``x(S) <= cost(S)`` for every ``S``. The *excess* of ``S`` is ``x(S) - cost(S)``
(positive: ``S`` blocks the allocation).

The characteristic function is a mapping ``frozenset -> cost`` (every coalition
already known) or a callable (evaluated on demand and cached by :class:`CostGame`),
so the rules here work on a hand-written game and on a community model alike.

Rules: :func:`equal`, :func:`proportional`, :func:`shapley` (exact, every coalition),
:func:`shapley_sampled` (random permutations, with a standard error),
:func:`nucleolus` (a sequence of LPs) and :func:`core_check`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from gridmarkets.errors import InfeasibleError, InputError

Coalition = frozenset
CostFunction = Mapping[frozenset, float] | Callable[[frozenset], float]


class CostGame:
    """A cost game with a cached characteristic function.

    Parameters
    ----------
    players : the players' ids, in the order tables report them.
    cost : ``frozenset -> cost`` as a mapping or a callable; the empty coalition costs 0.
    """

    def __init__(self, players: Sequence[str], cost: CostFunction):
        self.players = list(players)
        if len(set(self.players)) != len(self.players):
            raise InputError("players: an id appears twice")
        self._cost = cost
        self.values: dict[frozenset, float] = {frozenset(): 0.0}
        if isinstance(cost, Mapping):
            self.values.update({frozenset(k): float(v) for k, v in cost.items()})

    @property
    def grand(self) -> frozenset:
        """The grand coalition N."""
        return frozenset(self.players)

    def __call__(self, coalition: Iterable[str]) -> float:
        """cost(S), computed once per coalition."""
        key = frozenset(coalition)
        if key not in self.values:
            if isinstance(self._cost, Mapping):
                raise InputError(f"cost: coalition {sorted(key)} is not in the mapping")
            self.values[key] = float(self._cost(key))
        return self.values[key]

    def coalitions(self, include_grand: bool = True) -> list[frozenset]:
        """Every non-empty coalition (2^n - 1 of them), smallest first."""
        n = len(self.players)
        top = n if include_grand else n - 1
        return [
            frozenset(c) for k in range(1, top + 1) for c in itertools.combinations(self.players, k)
        ]

    def evaluate_all(self) -> dict[frozenset, float]:
        """cost(S) for every coalition (what the exact rules need)."""
        return {s: self(s) for s in self.coalitions()}


def _as_game(players: Sequence[str] | CostGame, cost: CostFunction | None) -> CostGame:
    if isinstance(players, CostGame):
        return players
    if cost is None:
        raise InputError("cost: a characteristic function is needed")
    return CostGame(players, cost)


def equal(players: Sequence[str] | CostGame, cost: CostFunction | None = None) -> pd.Series:
    """Everybody pays the same: ``x_i = cost(N) / n``."""
    game = _as_game(players, cost)
    total = game(game.grand)
    return pd.Series(total / len(game.players), index=game.players, name="equal")


def proportional(
    players: Sequence[str] | CostGame,
    weights: Mapping[str, float],
    cost: CostFunction | None = None,
) -> pd.Series:
    """Shares in proportion to a weight: ``x_i = cost(N) w_i / sum_j w_j``.

    Parameters
    ----------
    players : the players, or a :class:`CostGame`.
    weights : one non-negative weight per player (consumption in kWh, owners' shares).
    cost : the characteristic function, when ``players`` is a list.
    """
    game = _as_game(players, cost)
    w = pd.Series({p: float(weights.get(p, 0.0)) for p in game.players})
    if (w < 0).any() or w.sum() <= 0:
        raise InputError("weights: need non-negative weights with a positive sum")
    return (game(game.grand) * w / w.sum()).rename("proportional")


def shapley(players: Sequence[str] | CostGame, cost: CostFunction | None = None) -> pd.Series:
    """The exact Shapley value, from every coalition.

    ``phi_i = sum_{S not containing i} |S|! (n - |S| - 1)! / n! (cost(S + i) - cost(S))``.
    It costs ``2^n - 1`` evaluations of ``cost``; about 12 players is the practical limit
    when each is an optimisation.
    """
    game = _as_game(players, cost)
    n = len(game.players)
    weight = [math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)]
    values = dict.fromkeys(game.players, 0.0)
    for i in game.players:
        others = [p for p in game.players if p != i]
        for k in range(n):
            for rest in itertools.combinations(others, k):
                s = frozenset(rest)
                values[i] += weight[k] * (game(s | {i}) - game(s))
    return pd.Series(values, name="shapley")


@dataclass
class SampledShapley:
    """A Shapley value estimated from random permutations.

    Attributes
    ----------
    value : the mean marginal cost of each player over the permutations.
    stderr : its standard error (sample standard deviation / sqrt(samples)).
    samples : the number of permutations drawn.
    """

    value: pd.Series
    stderr: pd.Series
    samples: int


def shapley_sampled(
    players: Sequence[str] | CostGame,
    cost: CostFunction | None = None,
    *,
    samples: int = 200,
    seed: int | None = 0,
) -> SampledShapley:
    """Permutation-sampling estimate of the Shapley value, with standard errors.

    Each sample is a random order of the players; a player's marginal cost is what
    joining the players before it adds. The mean over samples is unbiased; the
    estimate is rescaled to be efficient only in expectation (the raw means are
    returned, so ``stderr`` describes them). Coalitions met again are not re-solved.
    """
    game = _as_game(players, cost)
    if samples < 2:
        raise InputError(f"samples: {samples} is below 2")
    rng = np.random.default_rng(seed)
    marginal = np.zeros((samples, len(game.players)))
    for k in range(samples):
        before: frozenset = frozenset()
        previous = 0.0
        for j in rng.permutation(len(game.players)):
            before = before | {game.players[j]}
            current = game(before)
            marginal[k, j] = current - previous
            previous = current
    value = pd.Series(marginal.mean(axis=0), index=game.players, name="shapley_sampled")
    stderr = pd.Series(
        marginal.std(axis=0, ddof=1) / math.sqrt(samples), index=game.players, name="stderr"
    )
    return SampledShapley(value, stderr, samples)


@dataclass
class CoreCheck:
    """Whether an allocation is in the core, and the coalition that blocks it most.

    Attributes
    ----------
    in_core : no coalition pays less alone (within the tolerance).
    coalition : the coalition with the largest excess ``x(S) - cost(S)``.
    excess : that excess (positive: the coalition blocks; currency for a cost game).
    efficient : ``sum_i x_i`` equals ``cost(N)`` within the tolerance.
    """

    in_core: bool
    coalition: frozenset | None
    excess: float
    efficient: bool


def core_check(
    allocation: Mapping[str, float] | pd.Series,
    players: Sequence[str] | CostGame,
    cost: CostFunction | None = None,
    *,
    tol: float = 1e-6,
) -> CoreCheck:
    """Check an allocation against every coalition: is it in the core?

    Parameters
    ----------
    allocation : what each player pays.
    players : the players, or a :class:`CostGame`.
    cost : the characteristic function, when ``players`` is a list.
    tol : absolute tolerance on excesses and on efficiency.

    Returns
    -------
    CoreCheck naming the coalition with the largest excess (a blocking coalition when
    the excess is above ``tol``).
    """
    game = _as_game(players, cost)
    x = {p: float(allocation[p]) for p in game.players}
    worst, worst_excess = None, -math.inf
    for s in game.coalitions(include_grand=False):
        excess = sum(x[p] for p in s) - game(s)
        if excess > worst_excess:
            worst, worst_excess = s, excess
    efficient = abs(sum(x.values()) - game(game.grand)) <= tol * max(1.0, len(x))
    return CoreCheck(efficient and worst_excess <= tol, worst, worst_excess, efficient)


def nucleolus(
    players: Sequence[str] | CostGame,
    cost: CostFunction | None = None,
    *,
    tol: float = 1e-7,
    solve_options: Mapping | None = None,
) -> pd.Series:
    """The nucleolus: the imputation that lexicographically minimises the largest excesses.

    A sequence of LPs (Maschler, Peleg and Shapley's scheme). LP ``k`` maximises the
    smallest *saving* ``eps`` of the coalitions still free::

        max eps  s.t.  cost(S) - x(S) >= eps        S free
                       cost(S) - x(S) == eps_S      S fixed in an earlier LP
                       x(N) == cost(N),  x_i <= cost({i})

    A free coalition whose constraint has a non-zero dual is tight in every optimum
    (complementary slackness), so it is fixed at ``eps_k``; the sequence stops when
    the fixed coalitions determine ``x``. Needs every coalition: small games only.
    """
    from gridmarkets.solvers import solve

    game = _as_game(players, cost)
    n = len(game.players)
    index = {p: k for k, p in enumerate(game.players)}
    free = game.coalitions(include_grand=False)
    fixed: dict[frozenset, float] = {}
    rows = [np.ones(n)]
    x = None
    for _ in range(len(free) + 1):
        m = _nucleolus_lp(game, free, fixed)
        try:
            solution = solve(m, **dict(solve_options or {}))
        except InfeasibleError:
            raise InputError(
                "nucleolus: no imputation: the players alone pay less in total than "
                "the grand coalition (sum_i cost({i}) < cost(N))"
            ) from None
        x = pd.Series({p: pyo.value(m.x[p]) for p in game.players}, name="nucleolus")
        eps = pyo.value(m.eps)
        tight = [s for k, s in enumerate(free) if abs(solution.dual(m.saving[k])) > tol]
        for s in tight:
            fixed[s] = eps
            vector = np.zeros(n)
            vector[[index[p] for p in s]] = 1.0
            rows.append(vector)
        free = [s for s in free if s not in fixed]
        if not tight or not free or np.linalg.matrix_rank(np.array(rows)) >= n:
            break
    return x


def _nucleolus_lp(game: CostGame, free: list[frozenset], fixed: dict) -> pyo.ConcreteModel:
    """One LP of the nucleolus sequence."""
    m = pyo.ConcreteModel(name="nucleolus")
    m.PLAYERS = pyo.Set(initialize=game.players, doc="players")
    m.FREE = pyo.RangeSet(0, len(free) - 1, doc="coalitions not yet fixed")
    m.x = pyo.Var(m.PLAYERS, doc="what each player pays (currency)")
    m.eps = pyo.Var(doc="smallest saving cost(S) - x(S) over the free coalitions (currency)")
    m.saving = pyo.Constraint(
        m.FREE,
        rule=lambda m, k: sum(m.x[p] for p in free[k]) + m.eps <= game(free[k]),
        doc="x(S) + eps <= cost(S), S free  (currency)",
    )
    fixed_list = list(fixed.items())
    m.FIXED = pyo.RangeSet(0, len(fixed_list) - 1, doc="coalitions fixed in earlier LPs")
    m.saving_fixed = pyo.Constraint(
        m.FIXED,
        rule=lambda m, k: (
            sum(m.x[p] for p in fixed_list[k][0]) == game(fixed_list[k][0]) - fixed_list[k][1]
        ),
        doc="x(S) = cost(S) - eps_S, S fixed  (currency)",
    )
    m.efficiency = pyo.Constraint(
        expr=sum(m.x.values()) == game(game.grand), doc="sum_i x_i = cost(N)  (currency)"
    )
    m.individually_rational = pyo.Constraint(
        m.PLAYERS,
        rule=lambda m, p: m.x[p] <= game({p}),
        doc="x_i <= cost({i})  (currency)",
    )
    m.objective = pyo.Objective(expr=m.eps, sense=pyo.maximize, doc="max eps  (currency)")
    return m
