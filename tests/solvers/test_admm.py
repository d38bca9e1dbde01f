"""Consensus ADMM: closed-form local steps, reciprocity, and the central QP it matches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyomo.environ as pyo
import pytest

from gridmarkets.errors import InputError
from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream
from gridmarkets.solvers import solve
from gridmarkets.solvers.admm import ExchangeProblem, ModelAgent, consensus_admm


def two_agents(quadratic: float = 0.0) -> ExchangeProblem:
    # agent 0 sells up to 5 kW at 20, agent 1 buys up to 3 kW at 100
    return ExchangeProblem(
        n_agents=2,
        n_periods=1,
        item_unit=np.array([0, 1]),
        item_supply=np.array([True, False]),
        item_threshold=np.array([20.0, 100.0]),
        item_quantity_kw=np.array([5.0, 3.0]),
        pair_from=np.array([0, 1]),
        pair_to=np.array([1, 0]),
        pair_cost=np.array([0.0, 0.0]),
        quadratic=quadratic,
    )


@pytest.mark.unit
def test_two_agents_trade_the_smaller_quantity_at_a_price_between_their_bids():
    run = consensus_admm(two_agents(), rho=5.0)
    assert run.converged
    assert run.trade_kw[:, 0] == pytest.approx([3.0, -3.0], abs=1e-3)
    assert 20.0 - 1e-3 <= run.price[0, 0] <= 100.0 + 1e-3
    assert run.price[0, 0] == run.price[1, 0]
    assert run.taken_kw == pytest.approx([3.0, 3.0], abs=1e-3)
    assert list(run.log.columns[:3]) == ["iteration", "primal_residual", "dual_residual"]


@pytest.mark.unit
def test_consensus_trades_are_reciprocal_exactly():
    run = consensus_admm(two_agents(), rho=5.0, max_iterations=7)
    assert not run.converged and run.iterations == 7
    assert (run.trade_kw[0] == -run.trade_kw[1]).all()


@pytest.mark.unit
def test_pair_without_its_reverse_is_rejected():
    problem = two_agents()
    with pytest.raises(InputError, match="reverse"):
        ExchangeProblem(
            n_agents=2,
            n_periods=1,
            item_unit=problem.item_unit,
            item_supply=problem.item_supply,
            item_threshold=problem.item_threshold,
            item_quantity_kw=problem.item_quantity_kw,
            pair_from=np.array([0]),
            pair_to=np.array([1]),
            pair_cost=np.array([0.0]),
        )


@pytest.mark.solve
def test_admm_with_quadratic_term_matches_the_central_qp_trades_and_prices():
    rng = np.random.default_rng(7)
    n = 8
    bids = pd.DataFrame(
        {
            "participant": [f"p{i}" for i in range(n)],
            "side": ["sell" if i % 2 == 0 else "buy" for i in range(n)],
            "quantity_kw": rng.uniform(1, 10, n),
            "price": [
                rng.uniform(0, 150) if i % 2 == 0 else rng.uniform(50, 300) for i in range(n)
            ],
        }
    )
    upstream = Upstream(250.0, 30.0)
    m = p2p.build(bids, upstream=upstream, quadratic=0.5)
    solution = solve(m)
    central = p2p.results(m, solution)
    admm = p2p.clear(bids, upstream=upstream, quadratic=0.5, method="admm", admm={"rho": 5.0})
    both = central.trades.merge(admm.trades, on=["seller", "buyer", "period"], how="outer")
    trade_error = (both["traded_kw_x"].fillna(0) - both["traded_kw_y"].fillna(0)).abs().max()
    assert trade_error <= 1e-3 * central.trades["traded_kw"].max()
    # the QP's reciprocity duals and ADMM's multipliers are the same bilateral prices
    assert both["price_x"].to_numpy() == pytest.approx(both["price_y"].to_numpy(), abs=0.05)
    assert admm.kpis["social_welfare"] == pytest.approx(solution.objective, rel=1e-4)


def buyer_model(quantity_kw: float, price: float) -> ModelAgent:
    """A buyer of up to ``quantity_kw`` at ``price`` as a Pyomo model (one period, 1 h)."""
    m = pyo.ConcreteModel()
    m.q_kw = pyo.Var(bounds=(0, quantity_kw))
    return ModelAgent(m, [-m.q_kw], price * m.q_kw / 1000, period_hours=1.0)


@pytest.mark.solve
@pytest.mark.parametrize("quadratic", [0.0, 0.5])
def test_a_model_agent_steps_as_the_closed_form_does(quadratic):
    # agent 1 (buy 3 kW at 100) stepped by its QP through the solve layer instead of the
    # closed form: every iterate, hence the result, is the same
    closed = consensus_admm(two_agents(quadratic), rho=5.0)
    problem = two_agents(quadratic)
    modelled = ExchangeProblem(
        **{
            name: getattr(problem, name)
            for name in ("n_agents", "n_periods", "item_unit", "item_supply")
            + ("item_threshold", "item_quantity_kw", "pair_from", "pair_to", "pair_cost")
        },
        quadratic=quadratic,
        model_agents={1: buyer_model(3.0, 100.0)},
    )
    run = consensus_admm(modelled, rho=5.0)
    assert run.converged and closed.converged
    assert run.iterations == pytest.approx(closed.iterations, abs=2)
    assert run.trade_kw == pytest.approx(closed.trade_kw, abs=1e-6)
    assert run.price == pytest.approx(closed.price, abs=1e-5)
    assert run.balance_price[1] == pytest.approx(closed.balance_price[1], abs=1e-4)
