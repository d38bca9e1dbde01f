"""The aggregator's bilevel model against brute force over incentives, and its variants."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyomo.environ as pyo
import pytest
import yaml
from scipy.spatial import ConvexHull

from gridmarkets import pipeline
from gridmarkets.case import load_case, validate
from gridmarkets.errors import InputError
from gridmarkets.models import aggregator, prosumer
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve

CASES = Path(__file__).resolve().parents[2] / "data" / "cases"
LEVELS = [0.0, 50.0, 100.0]
PERIODS = 4
COMMITMENT = [-5.0, -3.0, -1.0, -5.0]
PENALTY = 500.0
FAIRNESS = 0.1


def homes() -> dict[str, ProsumerSpec]:
    """Three homes: PV + battery, a lossy battery, PV only (no flexibility but curtailment)."""
    limits = {"import_limit_kw": 10.0, "export_limit_kw": 10.0}
    return {
        "a": ProsumerSpec(
            load_kw=[2, 3, 4, 2],
            pv=PVSpec(profile_kw=[0, 3, 1, 0]),
            battery=BatterySpec(
                capacity_kwh=4, p_charge_max_kw=2, degradation_cost_per_mwh=5, relaxed=True
            ),
            **limits,
        ),
        "b": ProsumerSpec(
            load_kw=[1, 2, 3, 3],
            battery=BatterySpec(
                capacity_kwh=6,
                p_charge_max_kw=3,
                eta_charge=0.9,
                degradation_cost_per_mwh=5,
                relaxed=True,
            ),
            **limits,
        ),
        "c": ProsumerSpec(load_kw=[3, 1, 2, 4], pv=PVSpec(profile_kw=[1, 4, 2, 0]), **limits),
    }


PRICES = PricesSpec(import_price=[300, 350, 400, 350], export_price=50)
POWER_FACTOR = 0.95
INVERTER_KVA = {"a": 3.2, "c": 4.5}  # PV of a peaks at 3 kW, of c at 4 kW
COMMITMENT_KVAR = [2.0, 2.0, float("nan"), -6.0]
GROUPS = ["off-peak", "peak", "peak", "off-peak"]


def reactive_homes() -> dict[str, aggregator.HomeSpec]:
    """The three homes with loads at power factor 0.95 and PV inverters on a and c."""
    return {
        h: aggregator.HomeSpec(
            **dict(spec),
            reactive=aggregator.ReactiveSpec(
                load_power_factor=POWER_FACTOR, inverter_kva=INVERTER_KVA.get(h)
            ),
        )
        for h, spec in homes().items()
    }


def bilevel(specs=None, **options) -> pyo.ConcreteModel:
    options = {
        "incentive": aggregator.IncentiveSpec(levels=LEVELS),
        "deviation_penalty_per_mwh": PENALTY,
        "fairness_weight": FAIRNESS,
        **options,
    }
    return aggregator.build(specs or homes(), PRICES, COMMITMENT, periods=PERIODS, **options)


def capability_facets(s: float) -> np.ndarray:
    """Rows (a_p, a_q, b) with a_p p + a_q q <= b: the convex hull of the points (S cos f,
    S sin f), f = -90, -60, ..., 90 degrees, on the apparent-power circle."""
    angles = np.deg2rad(np.arange(-90, 91, 30))
    hull = ConvexHull(np.column_stack([s * np.cos(angles), s * np.sin(angles)]))
    return np.column_stack([hull.equations[:, :2], -hull.equations[:, 2]])


class Reference:
    """The leader's cost at a fixed incentive schedule, from the homes' own EMS.

    The prosumer model of the three homes, with the incentive folded into its tariff
    (cost - pi p_net = (import price + pi) import - (export price + pi) export), gives
    each home's optimal cost; the leader's best point among the homes' optimal
    schedules (optimistic) is then one LP. With ``reactive``, each inverter's q is free
    within the convex hull of points on its rating's circle, the loads draw q at their
    power factor, and the reactive commitment is penalised like the active one.
    """

    def __init__(self, baseline: dict, standalone: dict, reactive: bool = False):
        self.m = m = prosumer.build(homes(), PRICES, periods=PERIODS)
        self.base_import = [pyo.value(m.import_price_per_mwh[t]) for t in m.PERIODS]
        self.base_export = [pyo.value(m.export_price_per_mwh[t]) for t in m.PERIODS]
        m.pi = pyo.Param(m.PERIODS, mutable=True, initialize=0.0)
        m.phi = pyo.Param(m.PROSUMERS, mutable=True, initialize=0.0)
        dt = m.period_hours / 1000.0

        def net(h, t):
            return m.home[h].p_export_kw[t] - m.home[h].p_import_kw[t]

        def income(h):
            return sum(m.pi[t] * (net(h, t) - baseline[h, t]) for t in m.PERIODS) * dt

        def gain(h):
            tariff_cost = m.home[h].cost + sum(m.pi[t] * net(h, t) for t in m.PERIODS) * dt
            return standalone[h] - tariff_cost + income(h)

        m.optimal = pyo.Constraint(m.PROSUMERS, rule=lambda m, h: m.home[h].cost <= m.phi[h])
        m.dev = pyo.Var(m.PERIODS, bounds=(0, None))
        m.dev_def = pyo.Constraint(
            m.PERIODS,
            rule=lambda m, t: m.dev[t] >= sum(net(h, t) for h in m.PROSUMERS) - COMMITMENT[t],
        )
        m.dev_def2 = pyo.Constraint(
            m.PERIODS,
            rule=lambda m, t: m.dev[t] >= COMMITMENT[t] - sum(net(h, t) for h in m.PROSUMERS),
        )
        m.gmax, m.gmin = pyo.Var(), pyo.Var()
        m.gmax_def = pyo.Constraint(m.PROSUMERS, rule=lambda m, h: m.gmax >= gain(h))
        m.gmin_def = pyo.Constraint(m.PROSUMERS, rule=lambda m, h: m.gmin <= gain(h))
        reactive_cost = self._add_reactive(m) if reactive else 0.0
        m.leader = pyo.Objective(
            expr=sum(income(h) for h in m.PROSUMERS)
            + PENALTY * dt * sum(m.dev.values())
            + reactive_cost
            + FAIRNESS * (m.gmax - m.gmin)
        )
        self.leader_parts = [m.optimal, m.dev_def, m.dev_def2, m.gmax_def, m.gmin_def, m.leader]
        self.leader_parts += [m.q_dev_def, m.q_dev_def2] if reactive else []

    @staticmethod
    def _add_reactive(m):
        tan_phi = np.tan(np.arccos(POWER_FACTOR))
        m.q = pyo.Var(list(INVERTER_KVA), m.PERIODS)
        m.capability = pyo.ConstraintList()
        for h, s in INVERTER_KVA.items():
            for t in m.PERIODS:
                p_pv = m.home[h].pv.p_net_kw[t]
                for a_p, a_q, rhs in capability_facets(s):
                    m.capability.add(a_p * p_pv + a_q * m.q[h, t] <= rhs + 1e-9)

        def q_total(t):
            load_q = sum(tan_phi * m.home[h].load.load_kw[t] for h in m.PROSUMERS)
            return sum(m.q[h, t] for h in INVERTER_KVA) - load_q

        covered = [t for t in m.PERIODS if np.isfinite(COMMITMENT_KVAR[t])]
        m.q_dev = pyo.Var(covered, bounds=(0, None))
        m.q_dev_def = pyo.Constraint(
            covered, rule=lambda m, t: m.q_dev[t] >= q_total(t) - COMMITMENT_KVAR[t]
        )
        m.q_dev_def2 = pyo.Constraint(
            covered, rule=lambda m, t: m.q_dev[t] >= COMMITMENT_KVAR[t] - q_total(t)
        )
        return PENALTY * m.period_hours / 1000.0 * sum(m.q_dev.values())

    def leader_cost(self, incentive) -> float:
        m = self.m
        for t, pi in enumerate(incentive):
            m.pi[t] = pi
            m.import_price_per_mwh[t] = self.base_import[t] + pi
            m.export_price_per_mwh[t] = self.base_export[t] + pi
        for c in self.leader_parts:
            c.deactivate()
        m.objective.activate()
        solve(m)  # the homes' own EMS at this incentive (separable: one LP for three)
        for h in m.PROSUMERS:
            m.phi[h] = pyo.value(m.home[h].cost) + 1e-9
        for c in self.leader_parts:
            c.activate()
        m.objective.deactivate()
        return solve(m).objective


def assert_verified(result) -> None:
    """Every home's response is its own optimum and no multiplier sits at its big-M."""
    assert len(result.verify) == 3
    assert (result.verify["gap"].abs() < 1e-7).all(), result.verify
    assert result.kpis["multipliers_at_big_m"] == 0, result.verify


@pytest.fixture(scope="module")
def solved():
    m = bilevel()
    solution = solve(m)
    return m, solution, aggregator.results(m, solution)


def test_bilevel_optimum_equals_brute_force_over_incentive_grid(solved):
    m, solution, result = solved
    baseline = {k: pyo.value(v) for k, v in m.baseline_kw.items()}
    reference = Reference(baseline, m.standalone_cost)
    costs = {
        schedule: reference.leader_cost(schedule)
        for schedule in itertools.product(LEVELS, repeat=PERIODS)
    }
    best = min(costs.values())
    assert solution.objective == pytest.approx(best, abs=1e-6)
    found = tuple(result.incentives["incentive_per_mwh"].round(6))
    assert costs[found] == pytest.approx(best, abs=1e-6)
    assert len(set(np.round(list(costs.values()), 6))) > 1  # the incentive matters


def test_verify_reports_zero_follower_gap(solved):
    assert_verified(solved[2])


def test_strong_duality_and_bigm_agree(solved):
    m = bilevel(method="strong_duality")
    result = aggregator.results(m, solve(m))
    assert result.kpis["leader_cost"] == pytest.approx(solved[2].kpis["leader_cost"], abs=1e-6)
    assert_verified(result)


@pytest.fixture(scope="module")
def reactive_grouped():
    """Reactive homes and commitment, one incentive level per tariff group."""
    m = bilevel(
        reactive_homes(),
        commitment_kvar=COMMITMENT_KVAR,
        incentive=aggregator.IncentiveSpec(levels=LEVELS, groups=GROUPS),
    )
    return m, aggregator.results(m, solve(m))


def test_reactive_and_grouped_optimum_equals_brute_force(reactive_grouped):
    m, result = reactive_grouped
    assert_verified(result)
    baseline = {k: pyo.value(v) for k, v in m.baseline_kw.items()}
    reference = Reference(baseline, m.standalone_cost, reactive=True)
    names = list(dict.fromkeys(GROUPS))
    costs = {
        levels: reference.leader_cost([dict(zip(names, levels, strict=True))[g] for g in GROUPS])
        for levels in itertools.product(LEVELS, repeat=len(names))
    }
    assert result.kpis["leader_cost"] == pytest.approx(min(costs.values()), abs=1e-6)
    assert len(set(np.round(list(costs.values()), 6))) > 1  # the incentive matters
    # one incentive per group
    assert result.incentives.groupby("group")["incentive_per_mwh"].nunique().eq(1).all()


def test_reactive_power_stays_within_ratings_and_meets_what_it_can(reactive_grouped):
    m, result = reactive_grouped
    tan_phi = np.tan(np.arccos(POWER_FACTOR))
    for h, s in INVERTER_KVA.items():
        for t in m.PERIODS:
            p, q = pyo.value(m.home[h].pv.p_net_kw[t]), pyo.value(m.home[h].q_inverter_kvar[t])
            assert p**2 + q**2 <= s**2 + 1e-6  # the circle, not the polygon
    portfolio = result.portfolio.set_index("period")
    power = result.power.set_index(["prosumer", "period"])
    for t in m.PERIODS:
        load_q = sum(tan_phi * np.atleast_1d(homes()[h].load_kw)[t] for h in homes())
        inverters = sum(pyo.value(m.home[h].q_inverter_kvar[t]) for h in INVERTER_KVA)
        assert portfolio.at[t, "q_net_kvar"] == pytest.approx(inverters - load_q, abs=1e-7)
        assert portfolio.at[t, "q_net_kvar"] == pytest.approx(power.xs(t, level=1)["q_kvar"].sum())
    # t = 0: PV of a off (3.2 kvar) and of c at 1 kW: 2 kvar reachable, met exactly;
    # t = 3: PV off, at most 3.2 + 4.5 = 7.7 kvar drawn, plus 3 kvar of loads: met
    assert portfolio.at[0, "deviation_kvar"] == pytest.approx(0, abs=1e-7)
    assert portfolio.at[3, "deviation_kvar"] == pytest.approx(0, abs=1e-7)
    assert np.isnan(portfolio.at[2, "commitment_kvar"])
    assert result.kpis["deviation_kvarh"] == pytest.approx(
        portfolio["deviation_kvar"].abs().sum(), abs=1e-9
    )


def test_grouped_incentive_is_a_restriction_of_per_period(solved, reactive_grouped):
    m = bilevel(incentive=aggregator.IncentiveSpec(levels=LEVELS, groups=GROUPS))
    grouped = aggregator.results(m, solve(m))
    assert_verified(grouped)
    assert grouped.kpis["leader_cost"] >= solved[2].kpis["leader_cost"] - 1e-7
    assert grouped.incentives["group"].tolist() == GROUPS


def test_gains_are_never_negative_and_full_control_is_cheaper(solved):
    _, _, result = solved
    assert (result.prosumers["gain"] >= -1e-7).all()  # a home can always keep its baseline
    no_fairness = {"fairness_weight": 0.0}
    continuous = aggregator.schedule(
        homes(),
        PRICES,
        COMMITMENT,
        periods=PERIODS,
        deviation_penalty_per_mwh=PENALTY,
        **no_fairness,
    )
    full = aggregator.schedule(
        homes(),
        PRICES,
        COMMITMENT,
        periods=PERIODS,
        deviation_penalty_per_mwh=PENALTY,
        control="full",
    )
    menu = aggregator.results(*_solved(bilevel(**no_fairness)))
    # direct control <= any incentive scheme; a continuous incentive <= a menu inside it
    assert full.kpis["leader_cost"] <= continuous.kpis["leader_cost"] + 1e-6
    assert continuous.kpis["leader_cost"] <= menu.kpis["leader_cost"] + 1e-6
    assert_verified(continuous)
    assert_verified(menu)


def _solved(m):
    return m, solve(m)


def test_too_small_big_m_is_caught_by_verify(solved):
    # multipliers here are prices of kWh (~0.3-0.5 currency); a given M = 0.4 (no derived
    # bounds) cuts the optimum off
    m = bilevel(big_m=0.4, derive_big_m=False)
    result = aggregator.results(m, solve(m))
    assert result.kpis["leader_cost"] > solved[2].kpis["leader_cost"] + 1e-3
    assert result.kpis["multipliers_at_big_m"] > 0
    assert result.verify["at_bound"].str.contains("at M_dual").any()
    # the responses found are still the homes' optima: the M restricted the leader only
    assert (result.verify["gap"].abs() < 1e-7).all()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"incentive": {"levels": [0, 50], "groups": ["peak", "off"]}}, "incentive.groups"),
        ({"prosumers": {"c": {"reactive": {"inverter_kva": 3.0}}}}, "inverter_kva"),
        ({"prosumers": {"b": {"reactive": {"inverter_kva": 3.0}}}}, "has no PV"),
        ({"prosumers": {"a": {"reactive": {"load_power_factor": 1.2}}}}, "load_power_factor"),
        ({"commitment_kvar": [1.0, 2.0]}, "commitment_kvar"),
    ],
)
def test_bad_case_input_names_the_field(change, field):
    data = yaml.safe_load((CASES / "aggregator_three_homes.yaml").read_text())
    for key, value in change.items():
        if key == "prosumers":
            for h, update in value.items():
                data["prosumers"][h].update(update)
        else:
            data[key] = value
    with pytest.raises(InputError, match=field):
        case = validate(data)
        pipeline.run_case(case, {})


def test_follower_with_an_appliance_is_refused_by_name():
    from gridmarkets.models.assets import ApplianceSpec

    bad = homes()
    bad["a"] = bad["a"].model_copy(
        update={"appliances": {"washer": ApplianceSpec(profile_kw=[1.0], earliest_start=0)}}
    )
    with pytest.raises(InputError, match=r"prosumers\.a\.appliances"):
        aggregator.build(bad, PRICES, COMMITMENT, periods=PERIODS)


def test_case_file_runs_through_the_registry():
    case = load_case(CASES / "aggregator_three_homes.yaml")
    result = pipeline.run_case(case, {})
    assert_verified(result)
    assert set(result.tables) >= {"incentives", "portfolio", "prosumers", "verify"}


def test_on_a_feeder_the_network_is_a_leader_constraint(solved):
    from gridmarkets.networks import load

    feeder = load("1-LV-rural1--0-sw")
    buses = dict(zip(homes(), [7, 9, 13], strict=True))
    placed = {h: s.model_copy(update={"bus": buses[h]}) for h, s in reactive_homes().items()}
    m = bilevel(placed, commitment_kvar=COMMITMENT_KVAR, network=feeder)
    result = aggregator.results(m, solve(m))
    assert_verified(result)
    # network limits are leader constraints: they can only raise the leader's cost
    free = bilevel(reactive_homes(), commitment_kvar=COMMITMENT_KVAR)
    assert result.kpis["leader_cost"] >= solve(free).objective - 1e-7
    # the homes' reactive injections reach the feeder: lossless LinDistFlow closes the
    # reactive balance through the upstream grid, up to the feeder's own shunts (constant)
    q = result.portfolio["q_net_kvar"].to_numpy()
    upstream = np.array([pyo.value(m.network.q_upstream_kvar[t]) for t in m.PERIODS])
    assert np.ptp(q) > 1.0
    assert np.ptp(upstream + q) == pytest.approx(0, abs=1e-6)
