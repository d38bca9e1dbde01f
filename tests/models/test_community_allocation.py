"""Cost-sharing rules on hand-written cost games with known answers (no community model)."""

import itertools
import math

import numpy as np
import pytest

from gridmarkets.errors import InputError
from gridmarkets.models import allocation
from gridmarkets.models.allocation import CostGame

TOL = 1e-7


def airport_game(costs: dict[str, float]) -> CostGame:
    """A runway shared by planes: a coalition pays for the longest runway it needs."""
    return CostGame(list(costs), lambda s: max(costs[p] for p in s))


def airport_shapley(costs: dict[str, float]) -> dict[str, float]:
    """Littlechild and Owen (1973): each runway segment is split equally by its users."""
    order = sorted(costs, key=costs.get)
    shares, previous, total = {}, 0.0, 0.0
    for k, p in enumerate(order):
        total += (costs[p] - previous) / (len(order) - k)
        shares[p], previous = total, costs[p]
    return shares


def random_game(players, seed) -> CostGame:
    rng = np.random.default_rng(seed)
    values = {frozenset(s): float(rng.uniform(1, 10)) * len(s) ** 0.8 for s in subsets(players)}
    return CostGame(players, values)


def subsets(players):
    return (c for k in range(1, len(players) + 1) for c in itertools.combinations(players, k))


@pytest.mark.unit
def test_shapley_of_the_airport_game_matches_littlechild_owen():
    costs = {"a": 1.0, "b": 2.5, "c": 3.0, "d": 7.0, "e": 7.5}
    shapley = allocation.shapley(airport_game(costs))
    assert shapley.to_dict() == pytest.approx(airport_shapley(costs))


@pytest.mark.unit
def test_shapley_is_efficient_symmetric_and_gives_null_players_nothing():
    base = random_game(["a", "b", "c", "d"], seed=3)

    # c and d interchangeable, z a null player: cost depends on the set minus z and
    # treats c and d alike
    def cost(s):
        core = frozenset(s) - {"z"}
        swapped = frozenset({"c": "d", "d": "c"}.get(p, p) for p in core)
        return 0.5 * (base(core) + base(swapped)) if core else 0.0

    game = CostGame(["a", "b", "c", "d", "z"], cost)
    shapley = allocation.shapley(game)
    assert shapley.sum() == pytest.approx(game(game.grand))
    assert shapley["c"] == pytest.approx(shapley["d"])
    assert shapley["z"] == pytest.approx(0.0, abs=TOL)


@pytest.mark.unit
def test_sampled_shapley_agrees_with_the_exact_value_within_its_error():
    game = random_game([f"p{k}" for k in range(8)], seed=7)
    exact = allocation.shapley(game)
    sampled = allocation.shapley_sampled(game, samples=400, seed=1)
    z = (sampled.value - exact).abs() / sampled.stderr
    assert (z < 4).all(), z
    assert (sampled.stderr > 0).all()


@pytest.mark.unit
def test_sampled_shapley_error_shrinks_like_one_over_root_n():
    game = random_game([f"p{k}" for k in range(6)], seed=2)
    small = allocation.shapley_sampled(game, samples=100, seed=0).stderr
    large = allocation.shapley_sampled(game, samples=1600, seed=0).stderr
    assert (large / small).mean() == pytest.approx(0.25, rel=0.3)


@pytest.mark.unit
def test_core_check_finds_the_coalition_an_equal_split_overcharges():
    # a alone pays 10, b and c together 2: an equal split of 12 charges {b, c} 8
    values = {"a": 10, "b": 1.5, "c": 1.5, "ab": 11, "ac": 11, "bc": 2, "abc": 12}
    game = CostGame(["a", "b", "c"], {frozenset(k): v for k, v in values.items()})
    check = allocation.core_check(allocation.equal(game), game)
    assert not check.in_core
    assert check.coalition == frozenset("bc")
    assert check.excess == pytest.approx(8 - 2)
    assert allocation.core_check({"a": 10.0, "b": 1.0, "c": 1.0}, game).in_core


@pytest.mark.unit
def test_core_check_blocks_every_allocation_of_a_game_with_an_empty_core():
    # any two players pay 1 together, all three pay 2: x(S) <= 1 for pairs sums to 1.5 < 2
    def cost(s):
        return {1: 1.0, 2: 1.0, 3: 2.0}[len(s)]

    game = CostGame(["a", "b", "c"], cost)
    for x in ({"a": 2 / 3, "b": 2 / 3, "c": 2 / 3}, {"a": 1.0, "b": 1.0, "c": 0.0}):
        check = allocation.core_check(x, game)
        assert not check.in_core and check.excess > 0.3


@pytest.mark.solve
def test_nucleolus_of_the_airport_game_by_hand():
    # savings cost(S) - x(S): {a} and {b, c} both 0.5 at best, then {b} and {c} balance
    nucleolus = allocation.nucleolus(airport_game({"a": 1.0, "b": 2.0, "c": 3.0}))
    assert nucleolus.to_dict() == pytest.approx({"a": 0.5, "b": 0.75, "c": 1.75}, abs=1e-6)


@pytest.mark.solve
def test_nucleolus_of_two_players_splits_the_savings_equally():
    game = CostGame(["a", "b"], {frozenset("a"): 4, frozenset("b"): 9, frozenset("ab"): 10})
    nucleolus = allocation.nucleolus(game)
    assert nucleolus.to_dict() == pytest.approx({"a": 4 - 1.5, "b": 9 - 1.5}, abs=1e-6)


@pytest.mark.solve
def test_nucleolus_lies_in_a_non_empty_core():
    rng = np.random.default_rng(5)
    players = ["a", "b", "c", "d"]
    # a concave (submodular) cost has a non-empty core that contains the nucleolus
    weights = dict(zip(players, rng.uniform(1, 5, 4), strict=True))
    game = CostGame(players, lambda s: math.sqrt(sum(weights[p] for p in s)))
    nucleolus = allocation.nucleolus(game)
    assert nucleolus.sum() == pytest.approx(game(game.grand), abs=1e-6)
    assert allocation.core_check(nucleolus, game).in_core
    assert allocation.core_check(allocation.shapley(game), game).in_core


@pytest.mark.solve
def test_nucleolus_refuses_a_game_without_imputations():
    game = CostGame(["a", "b"], {frozenset("a"): 1, frozenset("b"): 1, frozenset("ab"): 3})
    with pytest.raises(InputError, match="no imputation"):
        allocation.nucleolus(game)


@pytest.mark.unit
def test_proportional_and_equal_are_efficient():
    game = random_game(["a", "b", "c"], seed=1)
    prop = allocation.proportional(game, {"a": 1.0, "b": 3.0, "c": 0.0})
    assert prop.to_dict() == pytest.approx(
        {"a": game(game.grand) / 4, "b": 3 * game(game.grand) / 4, "c": 0.0}
    )
    assert allocation.equal(game).sum() == pytest.approx(game(game.grand))
    with pytest.raises(InputError, match="weights"):
        allocation.proportional(game, {"a": -1.0})
