"""ADMM steps quadratic-curve peers in closed form and clears as the central QP does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream
from gridmarkets.models.participants import CurveBid

pytestmark = pytest.mark.solve

PERIODS = [0, 1, 2]


def curve_market(seed: int):
    """Two generators (one must run), two consumers as curves, two block peers, a grid,
    distinct preference costs."""
    rng = np.random.default_rng(seed)
    specs = [
        CurveBid(
            participant="g0", side="sell", a=1.0, b=rng.uniform(10, 60, 3).tolist(), p_max_kw=8.0
        ),
        CurveBid(participant="g1", side="sell", a=0.5, b=40.0, p_min_kw=2.0, p_max_kw=6.0),
        CurveBid(
            participant="d0", side="buy", a=2.0, b=rng.uniform(150, 260, 3).tolist(), p_max_kw=10.0
        ),
        CurveBid(participant="d1", side="buy", a=1.5, b=180.0, p_min_kw=1.0, p_max_kw=7.0),
    ]
    bids = pd.DataFrame(
        {
            "participant": ["pv"] * 3 + ["home"] * 3,
            "side": ["sell"] * 3 + ["buy"] * 3,
            "quantity_kw": rng.uniform(1, 8, 6),
            "price": np.r_[rng.uniform(0, 80, 3), rng.uniform(100, 280, 3)],
            "period": PERIODS * 2,
        }
    )
    peers = ["pv", "home", "g0", "g1", "d0", "d1"]
    prefs = [(a, b, rng.uniform(1, 20)) for a in peers for b in peers if a != b]
    return bids, specs, pd.DataFrame(prefs, columns=["peer", "partner", "cost"])


@pytest.mark.parametrize("seed", [0, 1])
def test_curve_peers_step_in_closed_form_and_match_the_central_qp(seed):
    bids, specs, prefs = curve_market(seed)
    options = dict(participants=specs, preferences=prefs, upstream=Upstream(250.0, 30.0))
    problem = p2p.exchange_problem(p2p.prepare(bids, **options))
    assert problem.model_agents == {}  # every curve in closed form, no QP per step
    assert len(problem.curves.unit) == len(specs) * len(PERIODS)
    central = p2p.clear(bids, **options)
    admm = p2p.clear(bids, method="admm", admm={"rho": 5.0, "max_iterations": 20000}, **options)
    assert admm.kpis["converged"] == 1.0
    welfare = central.kpis["social_welfare"]
    assert admm.kpis["social_welfare"] == pytest.approx(welfare, rel=1e-4)
    # the curves' injections (and so their welfare) are the central QP's
    injected = ["peer", "period"]
    both = central.injections.merge(admm.injections, on=injected, suffixes=("_lp", "_admm"))
    curves = both[both["peer"].isin([s.participant for s in specs])]
    assert len(curves) == len(specs) * len(PERIODS)
    assert curves["p_kw_admm"].to_numpy() == pytest.approx(curves["p_kw_lp"].to_numpy(), abs=1e-2)
    assert curves.loc[curves["peer"] == "g1", "p_kw_admm"].min() >= 2.0 - 1e-9  # must run
    trades = central.trades.merge(admm.trades, on=["seller", "buyer", "period"], how="outer")
    error = (trades["traded_kw_x"].fillna(0) - trades["traded_kw_y"].fillna(0)).abs().max()
    assert error <= 0.01 * central.trades["traded_kw"].max()
