"""P2P peers with their own model: storage, flexible loads and curves over 48 periods.

Certificates: at its cleared marginal value (the dual of its balance, per period) each
such peer's schedule is its own best response as a price-taker, re-solved alone by
:func:`gridmarkets.models.participants.best_response` (same profit, same schedule); a
flexible load's energy budget is worth the finite difference of welfare in the budget;
the central QP and ADMM clear the same day.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.errors import CaseError
from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream
from gridmarkets.models.participants import FlexibleLoad, StorageBid, best_response
from gridmarkets.solvers import solve
from gridmarkets.specs import p2p as p2p_specs

pytestmark = pytest.mark.solve

N_T, DT = 48, 0.5


def check_best_responses(result, specs, periods, period_hours, tol):
    """Each participant's profit at its cleared schedule against its best response alone
    (the schedule itself need not be unique: a battery facing equal prices in several
    periods may charge in any of them)."""
    value = result.grid_prices.set_index(["peer", "period"])["marginal_value"]
    injected = result.injections.set_index(["peer", "period"])["p_kw"]
    peers = result.peers.set_index("peer")
    for spec in specs:
        name = spec.participant
        prices = [value[name, t] for t in periods]
        best, _ = best_response(spec, prices, periods, period_hours)
        cleared = np.array([injected.get((name, t), 0.0) for t in periods])
        profit = peers.at[name, "value"] + float(np.dot(prices, cleared)) * period_hours / 1000
        assert profit == pytest.approx(best, abs=tol), name


@pytest.mark.parametrize("name", ["p2p_quadratic", "p2p_budgets"])
def test_shipped_cases_clear_each_participant_at_its_best_response(name):
    case = load_case(shipped_cases_dir() / f"{name}.yaml")
    result = pipeline.run_case(case, {})
    periods = list(range(case.horizon.periods))
    tol = 1e-6 * abs(result.kpis["social_welfare"])
    check_best_responses(result, case.own_models(), periods, case.horizon.period_hours, tol)
    assert result.kpis["individually_rational"] == 1.0
    assert abs(result.kpis["reconciliation_error"]) <= tol


def day_market(energy_kwh: float = 20.0):
    """A PV roof, a battery, an EV needing ``energy_kwh`` in the evening, the grid."""
    rng = np.random.default_rng(3)
    pv_kw = np.clip(6 * np.sin(np.pi * (np.arange(N_T) - 12) / 24), 0, None)
    bids = pd.DataFrame(
        {
            "participant": "pv",
            "side": "sell",
            "quantity_kw": pv_kw,
            "price": rng.uniform(0, 20, N_T),
            "period": range(N_T),
        }
    )
    specs = [
        StorageBid(
            participant="battery",
            capacity_kwh=8.0,
            p_charge_max_kw=3.0,
            soc_initial_kwh=2.0,
            degradation_cost_per_mwh=12.0,
        ),
        FlexibleLoad(
            participant="ev",
            energy_kwh=energy_kwh,
            start=30,
            end=48,
            p_max_kw=7.0,
            utility_per_mwh=list(rng.uniform(280, 320, N_T)),
        ),
    ]
    options = {
        "participants": specs,
        "periods": list(range(N_T)),
        "period_hours": DT,
        # tariffs that differ every period: no two periods are worth the same to the
        # battery, so its schedule (and the trades) are unique
        "upstream": Upstream(list(rng.uniform(120, 300, N_T)), list(rng.uniform(30, 60, N_T))),
        "preferences": pd.DataFrame(
            [
                (a, b, 1.0)
                for a in ("pv", "battery", "ev")
                for b in ("pv", "battery", "ev")
                if a != b
            ],
            columns=["peer", "partner", "cost"],
        ),
    }
    return bids, options


def test_flexible_load_budget_binds_and_its_dual_is_the_finite_difference():
    bids, options = day_market()
    m = p2p.build(bids, **options)
    solution = solve(m)
    ev = m.participant["ev"]
    energy = DT * sum(ev.p_kw[t].value for t in ev.WINDOW)
    assert energy == pytest.approx(20.0, abs=1e-6)  # the budget binds: 300/MWh beats the grid
    value_per_kwh = -solution.dual(ev.energy_budget)  # welfare per kWh more of budget
    delta = 0.05
    welfare = {
        e: p2p.clear(
            bids,
            participants=[*day_market(e)[1]["participants"]],
            **{k: v for k, v in options.items() if k != "participants"},
        ).kpis["social_welfare"]
        for e in (20.0 - delta, 20.0 + delta)
    }
    finite = (welfare[20.0 + delta] - welfare[20.0 - delta]) / (2 * delta)
    assert value_per_kwh == pytest.approx(finite, rel=1e-6)
    assert value_per_kwh > 0.05  # worth something: the check is not 0 = 0
    # and the battery and the load respond as price-takers at their marginal values
    result = p2p.results(m, solution)
    check_best_responses(result, options["participants"], options["periods"], DT, 1e-6)


@pytest.mark.slow
def test_storage_and_flexible_load_admm_matches_the_central_qp():
    bids, options = day_market()
    central = p2p.clear(bids, **options)
    admm = p2p.clear(
        bids, method="admm", admm={"rho": 5.0, "eps_abs": 1e-5, "eps_rel": 1e-5}, **options
    )
    assert admm.kpis["converged"] == 1.0
    assert admm.kpis["social_welfare"] == pytest.approx(central.kpis["social_welfare"], rel=1e-4)
    both = central.trades.merge(admm.trades, on=["seller", "buyer", "period"], how="outer")
    gap = (both["traded_kw_x"].fillna(0) - both["traded_kw_y"].fillna(0)).abs().max()
    assert gap <= 0.01 * central.trades["traded_kw"].max()


@pytest.mark.unit
@pytest.mark.parametrize(
    "change, message",
    [
        (["budgets.0.participant=ev"], "budgets.0.participant: 'ev' is not a block peer"),
        (["budgets.0.last_period=48"], "budgets.0: periods 0..48 are not a window"),
        (["budgets.0.min_kwh=-1"], "budgets.0.min_kwh"),
        (["flexible_loads.ev.end=60"], "flexible_loads.ev.end: 60 is after"),
        (["storage.battery.eta_charge=1.5"], "storage.battery.eta_charge"),
        (["preferences.0.period=99"], "preferences.0.period: 99 is not below 48"),
    ],
)
def test_case_errors_name_the_field(change, message):
    path = shipped_cases_dir() / "p2p_budgets.yaml"
    with pytest.raises(CaseError, match=message):
        load_case(path, change)


@pytest.mark.unit
def test_boundary_cost_errors_name_the_community(tmp_path):
    text = (shipped_cases_dir() / "p2p_quadratic.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  south: {import_cost", "  east: {import_cost"))
    with pytest.raises(CaseError, match="boundary_costs.east: not a community of any peer"):
        load_case(bad)
    with pytest.raises(CaseError, match="boundary_costs.north.import_cost"):
        load_case(
            shipped_cases_dir() / "p2p_quadratic.yaml", ["boundary_costs.north.import_cost=-1"]
        )


@pytest.mark.unit
def test_community_of_each_participant_is_required_by_a_community_market():
    path = shipped_cases_dir() / "p2p_quadratic.yaml"
    with pytest.raises(CaseError, match="communities.gas_a: required by community"):
        load_case(path, ["communities={}"])
    case = load_case(path)
    assert p2p_specs.market_options(case, None)["communities"]["gas_a"] == "north"
