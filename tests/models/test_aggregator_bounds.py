"""The aggregator's derived multiplier bounds against HiGHS's own duals of each home's LP,
its start from the homes' best responses, and its time limit."""

from __future__ import annotations

import itertools
import time

import highspy
import numpy as np
import pyomo.environ as pyo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_aggregator import LEVELS, Reference, bilevel

from gridmarkets.models import aggregator, prosumer
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.solvers import compile_model, solve
from gridmarkets.solvers.kkt import DualBound

pytestmark = pytest.mark.solve

PERIODS = 4
TOL = 1e-7


@st.composite
def homes_and_tariff(draw):
    """Two or three homes (load, maybe PV, maybe a lossy battery, maybe a demand charge),
    a tariff with import >= export price, an incentive range and an incentive in it."""
    floats = st.floats(0.0, 1.0)
    homes = {}
    for k in range(draw(st.integers(2, 3))):
        load = [round(0.5 + 3 * draw(floats), 3) for _ in range(PERIODS)]
        pv = None
        if draw(st.booleans()):
            pv = PVSpec(
                profile_kw=[round(5 * draw(floats), 3) for _ in range(PERIODS)],
                curtailment_cost_per_mwh=round(30 * draw(floats), 2),
            )
        battery = None
        if draw(st.booleans()):
            capacity, power, eta = 2 + 8 * draw(floats), 0.5 + 3 * draw(floats), 0.8
            initial = capacity * draw(floats)
            reach = 0.9 * eta * power * PERIODS  # kWh the battery can gain: final feasible
            battery = BatterySpec(
                capacity_kwh=capacity,
                p_charge_max_kw=power,
                soc_initial_kwh=initial,
                soc_final_kwh=float(np.clip(initial + reach * (2 * draw(floats) - 1), 0, capacity)),
                eta_charge=eta + 0.2 * draw(floats),
                eta_discharge=0.8 + 0.2 * draw(floats),
                degradation_cost_per_mwh=20 * draw(floats),
                relaxed=True,
            )
        homes[f"h{k}"] = ProsumerSpec(
            load_kw=load,
            pv=pv,
            battery=battery,
            demand_charge_per_kw=draw(st.sampled_from([0.0, 0.0, 0.3])),
            import_limit_kw=20.0,
            export_limit_kw=20.0,
        )
    export = [round(-50 + 150 * draw(floats), 1) for _ in range(PERIODS)]
    spread = [round(300 * draw(floats), 1) for _ in range(PERIODS)]
    prices = PricesSpec(
        import_price=[e + s for e, s in zip(export, spread, strict=True)], export_price=export
    )
    low = round(-50 * draw(floats), 1)
    high = low + round(200 * draw(floats), 1)
    pi = [round(low + (high - low) * draw(floats), 2) for _ in range(PERIODS)]
    return homes, prices, (low, high), pi


def highs_duals(model: pyo.ConcreteModel) -> tuple[dict, dict]:
    """HiGHS's own duals of an LP: reduced cost per variable, row dual per constraint."""
    form = compile_model(model)
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.passModel(form.lp)
    highs.run()
    assert highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
    solution = highs.getSolution()
    reduced = {id(v): d for v, d in zip(form.columns, solution.col_dual, strict=True)}
    rows = {}
    for c, d in zip(form.rows, solution.row_dual, strict=True):
        rows[id(c)] = rows.get(id(c), 0.0) + d
    return reduced, rows


def home_lp(homes, prices: PricesSpec, pi) -> pyo.ConcreteModel:
    """The homes' own EMS at incentive ``pi`` (folded into both prices), separately built."""
    import_price = np.asarray(prices.import_price, dtype=float) + pi
    export_price = np.asarray(prices.export_price, dtype=float) + pi
    tariff = PricesSpec(import_price=list(import_price), export_price=list(export_price))
    return prosumer.build(homes, tariff, periods=PERIODS)


def check_within(bound: DualBound, reduced_or_row: float, what: str) -> None:
    """A variable's reduced cost (or an inequality row's dual) against its two sides."""
    if reduced_or_row > 0:
        assert reduced_or_row <= bound.lower + TOL * max(1.0, bound.lower), what
    else:
        assert -reduced_or_row <= bound.upper + TOL * max(1.0, bound.upper), what


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(homes_and_tariff())
def test_every_highs_dual_of_a_home_lies_within_its_derived_bound(case):
    """At the leader's optimal incentive (the bilevel solved with the derived bounds) and
    at a random one in the range, each home's LP solved alone by HiGHS has every
    multiplier of a bounded side within its bound."""
    homes, prices, incentive, pi = case
    spec = aggregator.IncentiveSpec(min_per_mwh=incentive[0], max_per_mwh=incentive[1])
    commitment = [-2.0, float("nan"), 3.0, float("nan")]
    m = aggregator.build(homes, prices, commitment, periods=PERIODS, incentive=spec)
    solve(m)
    optimal = [pyo.value(m.incentive_per_mwh[t]) for t in m.PERIODS]
    for at in (optimal, pi):
        assert_duals_within_bounds(m, homes, prices, incentive, np.clip(at, *incentive))


def assert_duals_within_bounds(m, homes, prices, incentive, pi) -> None:
    ems = home_lp(homes, prices, pi)
    reduced, rows = highs_duals(ems)
    checked = 0
    for h in homes:
        bounds = aggregator.multiplier_bounds(m, m.home[h], m.specs[h], incentive)
        assert len(bounds) > 0  # the conditions hold: limits cover the devices
        for component in ems.home[h].component_data_objects((pyo.Var, pyo.Constraint)):
            name = component.getname(fully_qualified=True, relative_to=ems.home[h])
            twin = m.home[h].find_component(name)
            bound = bounds.get(twin) or bounds.get(twin.parent_component())
            if bound is None or (isinstance(component, pyo.Constraint) and component.equality):
                continue
            value = reduced.get(id(component)) if component.is_variable_type() else None
            value = rows.get(id(component), 0.0) if value is None else value
            if not component.is_variable_type() and component.upper is not None:
                value = -value  # a <= row's multiplier is minus its dual
            check_within(bound, value, f"{h}.{name}: dual {value:g} outside {bound}")
            checked += 1
    assert checked > 0


def test_import_bound_is_reached_where_a_home_exports():
    """Closed form: a home exporting its PV surplus values energy at the export price, so
    its import's lower-bound multiplier is (c_imp - c_exp) dt/1000, the derived bound."""
    home = ProsumerSpec(
        load_kw=[1.0, 1.0], pv=PVSpec(profile_kw=[4.0, 0.0]), import_limit_kw=10, export_limit_kw=10
    )
    prices = PricesSpec(import_price=[300.0, 250.0], export_price=[60.0, 40.0])
    m = aggregator.build({"a": home}, prices, [0.0, 0.0], periods=2)
    bounds = aggregator.multiplier_bounds(m, m.home["a"], m.specs["a"], (0.0, 100.0))
    ems = prosumer.build({"a": home}, prices, periods=2)
    reduced, _ = highs_duals(ems)
    assert reduced[id(ems.home["a"].p_import_kw[0])] == pytest.approx((300 - 60) / 1000)
    assert bounds[m.home["a"].p_import_kw[0]].lower == pytest.approx((300 - 60) / 1000)
    # importing in period 1 at 250: the export's lower-bound multiplier is as large
    assert reduced[id(ems.home["a"].p_export_kw[1])] == pytest.approx((250 - 40) / 1000)
    assert bounds[m.home["a"].p_export_kw[1]].lower == pytest.approx((250 - 40) / 1000)


def test_bounds_are_not_derived_where_the_connection_can_bind():
    home = ProsumerSpec(
        load_kw=[1.0, 1.0],
        battery=BatterySpec(capacity_kwh=4, p_charge_max_kw=3, relaxed=True),
        import_limit_kw=2.0,  # below load + charging power
        export_limit_kw=10.0,
    )
    prices = PricesSpec(import_price=[300.0, 250.0], export_price=40.0)
    m = aggregator.build({"a": home}, prices, [0.0, 0.0], periods=2)
    assert len(aggregator.multiplier_bounds(m, m.home["a"], m.specs["a"], (0, 100))) == 0


def test_start_is_bilevel_feasible_and_no_better_than_the_optimum():
    """The start from the homes' best responses: each home at its own optimum (verify's
    re-solve), and a leader cost no lower than the MILP's optimum."""
    specs, prices, commitment = aggregator.example_portfolio(4, 8, seed=1)
    m = aggregator.build(specs, prices, commitment, periods=8, fairness_weight=0.05)
    incentive, cost = aggregator.search_incentive(m, seconds=60)
    assert aggregator.set_start(m, incentive)
    start_cost = pyo.value(m.leader_cost)
    assert start_cost <= cost + 1e-6  # the LP picks the leader's best among the responses
    checks = aggregator.kkt.verify(m)
    assert all(abs(c.gap) < 1e-6 for c in checks), checks
    optimum = solve(m).objective
    assert optimum <= start_cost + 1e-6


def test_a_tiny_time_limit_is_kept_and_reported():
    """20 homes x 24 periods cannot reach a zero gap in 3 s: the whole solve (search,
    start, HiGHS, pricing, verify) ends within the limit plus a stated 1.5 s margin, and
    the result says it stopped at the limit and the gap it reached."""
    specs, prices, commitment = aggregator.example_portfolio(20, 24)
    limit = 3.0
    started = time.perf_counter()
    result = aggregator.schedule(
        specs,
        prices,
        commitment,
        fairness_weight=0.05,
        solve_options={"time_limit": limit, "mip_gap": 0.0},
    )
    after_build = time.perf_counter() - started - result.solution.build_seconds
    assert after_build <= limit + 1.5
    assert result.kpis["time_limit_hit"] == 1
    assert 0 < result.kpis["mip_gap"] < np.inf  # an incumbent (the start) and a bound
    assert result.kpis["mip_gap"] == pytest.approx(result.solution.gap)
    assert result.solution.objective >= result.solution.best_bound


def test_solve_bilevel_from_its_start_reaches_the_brute_force_optimum():
    """The three homes of test_aggregator, levels per period: solve_bilevel (search,
    start, HiGHS) ends at the best of all 3^4 incentive schedules, each priced by the
    homes' own EMS and the leader's best response among their optima."""
    m = bilevel()
    solution = aggregator.solve_bilevel(m)
    baseline = {k: pyo.value(v) for k, v in m.baseline_kw.items()}
    reference = Reference(baseline, m.standalone_cost)
    best = min(reference.leader_cost(schedule) for schedule in itertools.product(LEVELS, repeat=4))
    assert solution.objective == pytest.approx(best, abs=1e-6)
