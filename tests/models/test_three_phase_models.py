"""The prosumer, community and flexibility models on LinDist3Flow through attach_grid.

References: LinDistFlow on a balanced feeder (the same schedule, voltages and prices);
pandapower's runpp_3ph of the per-phase injections, built here from each result's own
devices or offers and their phases; closed-form decisions where one phase's limit
binds; finite-difference re-solves for the per-phase prices.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from radial import lv_net, runpp_3ph_voltages

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.errors import CaseError, InputError
from gridmarkets.models import community, flexibility, prosumer
from gridmarkets.models.community import SharedAssetSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.networks import LinDist3Flow, LinDistFlow, three_phase_feeder
from gridmarkets.networks.three_phase import PHASES
from gridmarkets.solvers import solve

pytestmark = pytest.mark.solve

PRICES = PricesSpec(import_price=[50.0, 200.0, 100.0], export_price=20.0)
MAX_I_KA = 0.12  # the line 2-3 of lv_net
# a phase's share of the line 2-3's rating, inscribed 12-gon, active power only (kW)
PHASE_CAP_KW = math.sqrt(3) * 0.4 * MAX_I_KA * 1000 / 3 * math.cos(math.pi / 12)


@pytest.fixture(scope="module")
def feeder():
    return three_phase_feeder(lv_net(max_i_ka=MAX_I_KA, vmin_pu=0.9))


@pytest.fixture(scope="module")
def flex_feeder():
    """lv_net with voltage bands up to 1.25 pu, so the line 2-3's phase share is the limit
    the flexibility market's PV export meets first."""
    net = lv_net(max_i_ka=MAX_I_KA, vmin_pu=0.9)
    net.bus["max_vm_pu"] = 1.25
    return three_phase_feeder(net)


def _line_2_3(feeder) -> int:
    br = feeder.branches
    return int(br.index[(br["from_bus"] == 2) & (br["to_bus"] == 3)][0])


def _battery(capacity: float, power: float, soc: float, phase: str | None = None) -> dict:
    return {
        "capacity_kwh": capacity,
        "p_charge_max_kw": power,
        "soc_initial_kwh": soc,
        "soc_final_kwh": 0.0,
        "phase": phase,
    }


def balanced_homes() -> dict[str, ProsumerSpec]:
    """Three balanced homes; the line 2-3 (homes 3 and 4) binds in period 2, where the
    battery must discharge more than the tariff alone would have it."""
    return {
        "h3": ProsumerSpec(
            bus=3, load_kw=[10, 10, 75], pv={"profile_kw": [15, 5, 0]}, battery=_battery(20, 12, 4)
        ),
        "h4": ProsumerSpec(bus=4, load_kw=[15, 15, 15]),
        "h5": ProsumerSpec(bus=5, load_kw=[10, 10, 10]),
    }


def unbalanced_homes() -> dict[str, ProsumerSpec]:
    """Home 3 on phase a (load and battery) with a single-phase PV on c; homes 4 and 5
    balanced. Phase a of the line 2-3 carries 25 + 15/3 = 30 kW in period 2, above its
    share: the battery covers the excess, taking energy from period 1."""
    return {
        "h3": ProsumerSpec(
            bus=3,
            phase="a",
            load_kw=[10, 10, 25],
            pv={"profile_kw": [15, 5, 0], "phase": "c"},
            battery=_battery(10, 5, 2),
        ),
        "h4": ProsumerSpec(bus=4, load_kw=[15, 15, 15]),
        "h5": ProsumerSpec(bus=5, load_kw=[10, 10, 10]),
    }


def _prosumer(homes, feeder, formulation):
    m = prosumer.build(homes, PRICES, periods=3, network=feeder, formulation=formulation)
    return m, prosumer.results(m, solve(m))


def _community(members, feeder, formulation, shared=None):
    m = community.build(members, shared, PRICES, periods=3, network=feeder, formulation=formulation)
    return m, community.results(m, solve(m))


def _voltages_3ph(m) -> np.ndarray:
    """The model's phase voltages (buses x 3 x periods, pu)."""
    h = m.handles
    buses, periods = list(h.feeder.buses.index), list(h.periods)
    v_sq = [[[h.voltage_sq[j, p, t].value for t in periods] for p in PHASES] for j in buses]
    return np.sqrt(np.array(v_sq))


def _voltages_1ph(m) -> np.ndarray:
    h = m.handles
    buses, periods = list(h.feeder.buses.index), list(h.periods)
    return np.sqrt(np.array([[h.voltage_sq[j, t].value for t in periods] for j in buses]))


def _phase_mean_prices(prices: pd.DataFrame) -> pd.DataFrame:
    return prices.groupby(["bus", "period"])[["price", "congestion", "voltage"]].mean()


def _same_as_single_phase(m1, r1, m3, r3) -> None:
    """Voltages on every phase, the phases' mean price and its parts as LinDistFlow's."""
    v3, v1 = _voltages_3ph(m3), _voltages_1ph(m1)
    for k in range(3):
        np.testing.assert_allclose(v3[:, k], v1, rtol=0, atol=1e-9)
    mean = _phase_mean_prices(r3.feeder_prices)
    single = r1.feeder_prices.set_index(["bus", "period"]).loc[mean.index, mean.columns]
    np.testing.assert_allclose(mean.to_numpy(), single.to_numpy(), rtol=1e-9, atol=1e-9)


def _device_rows(power: pd.DataFrame, homes, owner: str = "prosumer") -> pd.DataFrame:
    """Each home's injection per connection, from its devices' power (a result's power
    table) and their phases (a device's own, else the home's, else "abc")."""
    rows = []
    for row in power[power["device"] != "grid"].itertuples():
        spec = homes[getattr(row, owner)]
        name = "load" if row.device == "shed" else row.device
        device = getattr(spec, name, None)
        phase = (getattr(device, "phase", None) if device is not None else None) or spec.phase
        rows.append((spec.bus, phase or "abc", row.period, row.p_kw))
    return pd.DataFrame(rows, columns=["bus", "phase", "period", "p_kw"])


# ------------------------------------------------------------------------ prosumer


def test_prosumer_balanced_three_phase_feeder_schedules_as_lindistflow(feeder):
    """Balanced homes: LinDist3Flow schedules them as LinDistFlow (cost, every device's
    power, voltages on each phase and the phases' mean price, to 1e-9), with the line
    2-3's limit binding."""
    homes = balanced_homes()
    m1, r1 = _prosumer(homes, feeder, LinDistFlow())
    m3, r3 = _prosumer(homes, feeder, LinDist3Flow())
    assert r1.feeder_prices["congestion"].abs().max() > 10  # the line 2-3 binds
    assert r3.kpis["cost"] == pytest.approx(r1.kpis["cost"], rel=1e-9)
    np.testing.assert_allclose(r3.power["p_kw"], r1.power["p_kw"], rtol=0, atol=1e-9)
    _same_as_single_phase(m1, r1, m3, r3)


@pytest.fixture(scope="module")
def unbalanced_prosumer(feeder):
    return _prosumer(unbalanced_homes(), feeder, LinDist3Flow())


def test_prosumer_phase_a_limit_sets_the_battery_by_closed_form(feeder, unbalanced_prosumer):
    """Phase a of the line 2-3 binds in period 2: the battery (on a) discharges exactly
    the excess 25 + 15/3 - cap, and phase a carries its share while b and c carry far
    less."""
    m, result = unbalanced_prosumer
    battery = result.storage.set_index(["prosumer", "period"])
    discharge = battery.loc[("h3", 2), "p_discharge_kw"] - battery.loc[("h3", 2), "p_charge_kw"]
    assert discharge == pytest.approx(25 + 15 / 3 - PHASE_CAP_KW, abs=1e-7)
    line = _line_2_3(feeder)
    flow_a = m.handles.p_flow[line, "a", 2].value * feeder.s_base_kva / 3
    assert flow_a == pytest.approx(PHASE_CAP_KW, abs=1e-7)  # towards bus 3: its demand
    for phase in ("b", "c"):
        assert abs(m.handles.p_flow[line, phase, 2].value * feeder.s_base_kva / 3) < 10


def test_prosumer_per_phase_prices_are_finite_differences(feeder, unbalanced_prosumer):
    """At bus 4 in period 2 phase a's price is what one more kW of demand there costs
    the homes (a re-solve with a small load on that phase, its own bill taken out);
    phases b and c cost nothing: prices differ by phase, all of it congestion."""
    _, result = unbalanced_prosumer
    prices = result.feeder_prices.set_index(["bus", "phase", "period"])
    eps = 0.01

    def marginal(phase: str) -> float:
        homes = unbalanced_homes() | {
            "probe": ProsumerSpec(bus=4, phase=phase, load_kw=[0.0, 0.0, eps])
        }
        _, probed = _prosumer(homes, feeder, LinDist3Flow())
        own_bill = eps * 100.0 / 1000
        return (probed.kpis["cost"] - result.kpis["cost"] - own_bill) / eps * 1000

    row = prices.loc[(4, "a", 2)]
    assert row["price"] > 50
    assert row["price"] == pytest.approx(marginal("a"), rel=1e-6)
    assert row["congestion"] == pytest.approx(row["price"], rel=1e-9)
    for phase in ("b", "c"):
        assert abs(prices.loc[(4, phase, 2), "price"]) < 1e-9
        assert abs(marginal(phase)) < 1e-6


def test_prosumer_unbalanced_voltages_within_10_mpu_of_runpp_3ph(feeder, unbalanced_prosumer):
    """runpp_3ph of each device's power on its own phases, built here from the power
    table: every phase voltage within 0.01 pu of the model's, and the phases apart."""
    m, result = unbalanced_prosumer
    rows = _device_rows(result.power, unbalanced_homes())
    ac = runpp_3ph_voltages(feeder.net, feeder.buses.index, rows, [0, 1, 2])
    model = _voltages_3ph(m)
    assert np.abs(model - ac).max() < 0.01
    assert np.ptp(ac[list(feeder.buses.index).index(3), :, 0]) > 2e-3  # visibly unbalanced


# ----------------------------------------------------------------------- community


def test_community_balanced_three_phase_feeder_schedules_as_lindistflow(feeder):
    """Balanced members and a balanced shared PV: the same cost, exchange and internal
    price, voltages and phase-mean prices as LinDistFlow (1e-9)."""
    shared = {"s5": SharedAssetSpec(bus=5, pv={"profile_kw": [10, 0, 0]})}
    m1, r1 = _community(balanced_homes(), feeder, LinDistFlow(), shared)
    m3, r3 = _community(balanced_homes(), feeder, LinDist3Flow(), shared)
    assert r1.feeder_prices["congestion"].abs().max() > 10
    assert r3.kpis["cost"] == pytest.approx(r1.kpis["cost"], rel=1e-9)
    columns = ["grid_import_kw", "grid_export_kw", "internal_price"]
    np.testing.assert_allclose(r3.exchange[columns], r1.exchange[columns], rtol=1e-9, atol=1e-9)
    _same_as_single_phase(m1, r1, m3, r3)


SHARED = {  # a PV on phase c and a three-phase battery: one row per device connection
    "s5": SharedAssetSpec(
        bus=5, pv={"profile_kw": [12, 0, 0], "phase": "c"}, battery=_battery(4, 2, 0, "abc")
    )
}


@pytest.fixture(scope="module")
def unbalanced_community(feeder):
    return _community(unbalanced_homes(), feeder, LinDist3Flow(), SHARED)


def test_community_per_phase_price_is_a_finite_difference_and_ac_agrees(
    feeder, unbalanced_community
):
    """Phase a's price at bus 4 in period 2 is the community's cost of one more kW of
    demand there (a re-solve with a member loading that phase); it is the root's price
    plus congestion, which phase b lacks. runpp_3ph of the members' devices and the
    shared assets on their phases agrees with the model within 0.01 pu."""
    m, result = unbalanced_community
    prices = result.feeder_prices.set_index(["bus", "phase", "period"])
    eps = 0.01
    probe = {"probe": ProsumerSpec(bus=4, phase="a", load_kw=[0.0, 0.0, eps])}
    _, probed = _community(unbalanced_homes() | probe, feeder, LinDist3Flow(), SHARED)
    fd = (probed.kpis["objective"] - result.kpis["objective"]) / eps * 1000
    row = prices.loc[(4, "a", 2)]
    assert row["price"] == pytest.approx(fd, rel=1e-6)
    assert row["energy"] == pytest.approx(100.0, rel=1e-9)  # the import price at the root
    assert row["congestion"] > 50
    assert prices.loc[(4, "b", 2), "price"] == pytest.approx(100.0, rel=1e-9)

    homes = _device_rows(result.power, unbalanced_homes(), owner="member")
    shared = result.shared.assign(
        bus=5, phase=result.shared["device"].map({"pv": "c", "battery": "abc"})
    )[["bus", "phase", "period", "p_kw"]]
    rows = pd.concat([homes, shared], ignore_index=True)
    ac = runpp_3ph_voltages(feeder.net, feeder.buses.index, rows, [0, 1, 2])
    assert np.abs(_voltages_3ph(m) - ac).max() < 0.01


def test_community_coalition_re_solve_matches_a_fresh_build(feeder, unbalanced_community):
    """set_coalition on the three-phase model (idle members' device rows weigh 0) gives
    each coalition the objective of a model built for that coalition alone."""
    m = community.build(
        unbalanced_homes(), SHARED, PRICES, periods=3, network=feeder, formulation=LinDist3Flow()
    )
    for coalition in (["h4"], ["h3", "h5"]):
        community.set_coalition(m, coalition)
        fresh = community.build(
            unbalanced_homes(),
            SHARED,
            PRICES,
            periods=3,
            network=feeder,
            formulation=LinDist3Flow(),
            coalition=coalition,
        )
        assert solve(m).objective == pytest.approx(solve(fresh).objective, rel=1e-9)


def test_community_game_on_a_three_phase_feeder_prices_coalitions_per_phase(feeder):
    """A cost game built without a formulation (as a case's allocation builds it) values
    each coalition on LinDist3Flow: homes 3 and 4, whose phase-a limit binds, cost what
    a fresh LinDist3Flow build says, more than a balanced LinDistFlow would."""
    game = community.CommunityGame(
        unbalanced_homes(), SHARED, PRICES, build_options={"periods": 3, "network": feeder}
    )

    def by_themselves(formulation) -> float:
        m = community.build(
            unbalanced_homes(),
            SHARED,
            PRICES,
            periods=3,
            network=feeder,
            formulation=formulation,
            coalition=["h3", "h4"],
        )
        return solve(m).objective

    value = game(frozenset({"h3", "h4"}))
    assert value == pytest.approx(by_themselves(LinDist3Flow()), rel=1e-9)
    assert value > by_themselves(LinDistFlow()) + 0.1


# --------------------------------------------------------------------- flexibility


def _flex_market(phased: bool):
    """PV export on phase c at bus 4 (40 kW) against loads of 3 kW per phase at bus 3
    and 5 at bus 5: phase c of the line 2-3 is over its share. Offers to inject less:
    the PV's curtailment (c, 50), a three-phase battery (10) and an EV on phase a (5).
    ``phased`` False: everything balanced, three times the kW (one per phase)."""
    rows = [(4, "c", 40.0), *((3, p, -3.0) for p in PHASES), *((5, p, -5.0) for p in PHASES)]
    offers = [
        ("pv4", 4, "c", 40.0, 50.0),
        ("bat3", 3, "abc", 15.0, 10.0),
        ("ev3", 3, "a", 7.0, 5.0),
    ]
    if phased:
        index = pd.MultiIndex.from_tuples([(b, p) for b, p, _ in rows], names=["bus", "phase"])
        baseline = pd.DataFrame({0: [v for *_, v in rows]}, index=index)
    else:
        baseline = pd.DataFrame({0: [120.0, -9.0, -15.0]}, index=[4, 3, 5])
        offers = [("pv4", 4, "abc", 120.0, 50.0), ("bat3", 3, "abc", 15.0, 10.0)]
    table = pd.DataFrame(
        [
            dict(seller=s, bus=b, phase=p, period=0, product="dso", direction="down")
            | dict(quantity_kw=q, capacity_price=0.0, activation_price=price)
            for s, b, p, q, price in offers
        ]
    )
    return table, baseline


def _flex(feeder, offers, baseline, formulation):
    m = flexibility.build(offers, network=feeder, baseline_p_kw=baseline, formulation=formulation)
    return m, flexibility.results(m, solve(m), ac=False)


def test_flexibility_balanced_three_phase_feeder_clears_as_lindistflow(feeder):
    offers, baseline = _flex_market(phased=False)
    m1, r1 = _flex(feeder, offers, baseline, LinDistFlow())
    m3, r3 = _flex(feeder, offers, baseline, LinDist3Flow())
    assert r1.accepted.set_index("seller").loc["pv4", "accepted_kw"] > 1  # curtailed
    np.testing.assert_allclose(
        r3.accepted["accepted_kw"], r1.accepted["accepted_kw"], rtol=0, atol=1e-9
    )
    assert r3.kpis["procurement_cost"] == pytest.approx(r1.kpis["procurement_cost"], rel=1e-9)
    v1 = np.sqrt(
        [m1.scenario["dispatch"].handles.voltage_sq[j, 0].value for j in feeder.buses.index]
    )
    v3 = m3.scenario["dispatch"].handles.voltage_sq
    for p in PHASES:
        np.testing.assert_allclose(
            np.sqrt([v3[j, p, 0].value for j in feeder.buses.index]), v1, rtol=0, atol=1e-9
        )
    mean = _phase_mean_prices(r3.feeder_prices)
    single = r1.feeder_prices.set_index(["bus", "period"]).loc[mean.index, mean.columns]
    np.testing.assert_allclose(mean.to_numpy(), single.to_numpy(), rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def unbalanced_flex(flex_feeder):
    offers, baseline = _flex_market(phased=True)
    return offers, baseline, *_flex(flex_feeder, offers, baseline, LinDist3Flow())


def test_flexibility_phase_c_limit_buys_by_phase_in_closed_form(flex_feeder, unbalanced_flex):
    """Each kW of the three-phase battery relieves phase c by a third: at 10 it beats
    the PV's 50/3 per kW of relief and is taken whole; the PV then curtails the rest,
    40 - 3 - 15/3 - cap; the EV on phase a, cheapest of all, relieves nothing."""
    *_, result = unbalanced_flex
    accepted = result.accepted.set_index("seller")["accepted_kw"]
    assert accepted["bat3"] == pytest.approx(15.0, abs=1e-9)
    assert accepted["pv4"] == pytest.approx(40 - 3 - 15 / 3 - PHASE_CAP_KW, abs=1e-7)
    assert accepted["ev3"] == pytest.approx(0.0, abs=1e-9)


def test_flexibility_per_phase_prices_are_finite_differences(flex_feeder, unbalanced_flex):
    """Phase c's price at bus 4 is what one more kW of baseline demand there saves the
    DSO (a re-solve), the PV's activation price; phase a's is zero: they differ by
    phase and congestion explains all of it."""
    offers, baseline, _, result = unbalanced_flex
    prices = result.feeder_prices.set_index(["bus", "phase", "period"])
    eps = 0.01

    def marginal(phase: str) -> float:
        more = baseline.copy()
        key = (4, phase)
        more.loc[key, 0] = (more.loc[key, 0] if key in more.index else 0.0) - eps
        _, probed = _flex(flex_feeder, offers, more.sort_index(), LinDist3Flow())
        cost = probed.kpis["procurement_cost"] - result.kpis["procurement_cost"]
        return cost / eps * 1000

    c = prices.loc[(4, "c", 0)]
    assert c["price"] == pytest.approx(marginal("c"), rel=1e-6)
    assert c["price"] == pytest.approx(-50.0, rel=1e-9)
    assert c["congestion"] == pytest.approx(c["price"], rel=1e-9)
    assert abs(prices.loc[(4, "a", 0), "price"]) < 1e-9
    assert abs(marginal("a")) < 1e-6


def test_flexibility_dispatch_within_10_mpu_of_runpp_3ph(flex_feeder, unbalanced_flex):
    """runpp_3ph of the baseline plus the accepted offers on their phases (built here),
    against the model's dispatch voltages and the AC check results() runs."""
    offers, baseline, m, result = unbalanced_flex
    base = baseline.reset_index().rename(columns={0: "p_kw"}).assign(period=0)
    moved = result.accepted.assign(p_kw=-result.accepted["accepted_kw"])
    rows = pd.concat([base, moved[["bus", "phase", "period", "p_kw"]]], ignore_index=True)
    buses = flex_feeder.buses.index
    ac = runpp_3ph_voltages(flex_feeder.net, buses, rows, [0])
    h = m.scenario["dispatch"].handles
    model = np.sqrt([[[h.voltage_sq[j, p, 0].value] for p in PHASES] for j in buses])
    assert np.abs(model - ac).max() < 0.01
    checked = flexibility.results(m, solve(m)).ac_check["dispatch"]
    assert checked["power_flow"] == "pandapower runpp_3ph"
    for k, phase in enumerate(PHASES):
        assert checked[f"max_vm_pu_{phase}"] == pytest.approx(ac[:, k].max(), abs=1e-8)


def test_flexibility_needs_and_bilateral_are_refused_on_three_phases(flex_feeder, unbalanced_flex):
    offers, baseline, *_ = unbalanced_flex
    needs = pd.DataFrame(
        [dict(element="bus", index=4, period=0, limit_kind="voltage_upper", target_linear=1.09)]
    )
    with pytest.raises(InputError, match=r"needs: on a three-phase feeder"):
        flexibility.build(
            offers,
            network=flex_feeder,
            baseline_p_kw=baseline,
            needs=needs,
            formulation=LinDist3Flow(),
        )
    with pytest.raises(InputError, match=r"offers row \d+ \(seller 'pv4'\): phase 'c'"):
        flexibility.bilateral(flex_feeder, offers, needs, baseline)


# ------------------------------------------------------------------- shipped cases

THREE_PHASE_CASES = ["prosumer_lv_three_phase", "community_lv_three_phase"]
FLEX_CASE = shipped_cases_dir() / "flexibility_lv_three_phase.yaml"


@pytest.fixture(scope="module")
def shipped_run():
    """run_case of a shipped case by name, once per module."""
    runs: dict = {}

    def run(name: str):
        if name not in runs:
            case = load_case(shipped_cases_dir() / f"{name}.yaml")
            runs[name] = case, pipeline.load_feeder(case), pipeline.run_case(case)
        return runs[name]

    return run


def _case_rows(case, result) -> pd.DataFrame:
    """The case's per-phase injections from its result and its own phase fields."""
    if case.model == "prosumer":
        return _device_rows(result.power, case.prosumers)
    homes = _device_rows(result.power, case.members, owner="member")
    shared = result.shared.assign(
        bus=result.shared["asset"].map({a: s.bus for a, s in case.shared.items()}),
        phase=[
            getattr(case.shared[a], d).phase or case.shared[a].phase or "abc"
            for a, d in zip(result.shared["asset"], result.shared["device"], strict=True)
        ],
    )
    return pd.concat([homes, shared[["bus", "phase", "period", "p_kw"]]], ignore_index=True)


def _check_against(summary: dict, v: np.ndarray) -> None:
    for k, phase in enumerate(PHASES):
        assert summary[f"max_vm_pu_{phase}"] == pytest.approx(v[:, k].max(), abs=1e-8)
        assert summary[f"min_vm_pu_{phase}"] == pytest.approx(v[:, k].min(), abs=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("name", THREE_PHASE_CASES)
def test_shipped_case_holds_phase_c_at_its_limit_as_runpp_3ph_confirms(name, shipped_run):
    """The shipped prosumer and community cases clear on LinDist3Flow: runpp_3ph of the
    devices on their phases (run here) is the summary's check; phase c sits at 1.1 pu
    within the model's error, a and b far below, no enforced limit is violated, and
    phase c is priced apart at the PV buses."""
    case, feeder, result = shipped_run(name)
    summary = result.ac_check
    assert summary["power_flow"] == "pandapower runpp_3ph"
    assert summary["enforced_limits"]["formulation"] == "lindist3flow"
    rows = _case_rows(case, result)
    v = runpp_3ph_voltages(feeder.net, feeder.buses.index, rows, list(range(2)))
    _check_against(summary, v)
    assert summary["max_vm_pu_c"] == pytest.approx(1.1, abs=summary["model_voltage_error_pu"])
    assert max(summary["max_vm_pu_a"], summary["max_vm_pu_b"]) < 1.06
    assert summary["model_voltage_error_pu"] < 0.01
    assert summary["enforced_violations_count"] == 0
    prices = result.feeder_prices.set_index(["bus", "phase", "period"])["price"]
    assert prices[(900, "a", 0)] - prices[(900, "c", 0)] > 5


@pytest.mark.slow
def test_shipped_prosumer_case_checks_the_uncoordinated_schedule_per_phase(shipped_run):
    """Each home scheduling alone puts phase c above its limit: the uncoordinated check,
    and the case's own check with ``coordination: none``, is runpp_3ph of the
    independent schedules' devices on their phases (run here)."""
    case, feeder, result = shipped_run("prosumer_lv_three_phase")
    alone = prosumer.schedule(case.prosumers, case.prices, periods=2)
    v = runpp_3ph_voltages(
        feeder.net, feeder.buses.index, _device_rows(alone.power, case.prosumers), [0, 1]
    )
    summary = result.ac_check["uncoordinated"]
    _check_against(summary, v)
    assert summary["max_vm_pu_c"] > 1.15 and summary["violations_count"] > 0
    assert result.kpis["cost_uncoordinated"] < result.kpis["cost"]
    uncoordinated = pipeline.run_case(case.model_copy(update={"coordination": "none"}))
    _check_against(uncoordinated.ac_check, v)  # the same schedules, the case's own check
    assert uncoordinated.ac_check["enforced_limits"]["formulation"] == "none"


@pytest.mark.slow
def test_shipped_flexibility_case_buys_on_phase_c_as_runpp_3ph_confirms(shipped_run):
    """The DSO's purchase on the European feeder: before, phase c is far above 1.1 pu;
    after, runpp_3ph of the net's own loads plus the sellers' schedules less what was
    bought (run here, pandapower reading its own asymmetric loads) is the summary's
    dispatch check, within the limit; the EV on phase a, cheapest, is not bought, the
    three-phase battery is; phase c's price at the PV buses is negative, a's positive."""
    case, feeder, result = shipped_run("flexibility_lv_three_phase")
    before, after = result.ac_check["before"], result.ac_check["dispatch"]
    assert before["max_vm_pu_c"] > 1.15 and before["violations_count"] > 0
    assert after["violations_count"] == 0 and after["enforced_violations_count"] == 0
    accepted = result.accepted.set_index("seller")["accepted_kw"]
    assert accepted["ev_860"] == pytest.approx(0.0, abs=1e-9)
    assert accepted["battery_900"] == pytest.approx(15.0, abs=1e-9)
    sellers = pd.DataFrame(
        [(s.bus, s.phase or "abc", 0, s.p_baseline_kw) for s in case.sellers.values()],
        columns=["bus", "phase", "period", "p_kw"],
    )
    moved = result.accepted.assign(p_kw=-result.accepted["accepted_kw"])
    rows = pd.concat([sellers, moved[["bus", "phase", "period", "p_kw"]]], ignore_index=True)
    v = runpp_3ph_voltages(feeder.net, feeder.buses.index, rows, [0], own_elements=True)
    _check_against(after, v)
    prices = result.feeder_prices.set_index(["bus", "phase", "period"])["price"]
    for bus in (886, 906):
        assert prices[(bus, "c", 0)] < -40 and prices[(bus, "a", 0)] > 0


@pytest.mark.slow
def test_shipped_flexibility_case_through_the_cli(tmp_path, shipped_run):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [sys.executable, "-m", "gridmarkets", "solve", FLEX_CASE, "--out", tmp_path],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    result = shipped_run("flexibility_lv_three_phase")[2]
    assert summary["kpis"]["dso_cost"] == pytest.approx(result.kpis["dso_cost"], rel=1e-9)
    assert summary["ac_check"]["dispatch"]["power_flow"] == "pandapower runpp_3ph"
    assert (tmp_path / "feeder_prices.csv").is_file()


# -------------------------------------------------------------------- case errors


@pytest.mark.parametrize(
    ("path", "change", "field"),
    [
        ("flexibility_lv_noon", "sellers.battery_9.phase=a", r"sellers\.battery_9\.phase"),
        ("prosumer_feeder", "prosumers.h7.pv.phase=b", r"prosumers\.h7\.pv\.phase"),
        ("community_feeder", "members.h4.phase=a", r"members\.h4\.phase"),
        ("flexibility_lv_three_phase", "sellers.pv_886.phase=d", r"pv_886.*phase|phase.*pv_886"),
        ("flexibility_lv_three_phase", "mode=bilateral", r"mode: 'bilateral'.*phases: three"),
        ("prosumer_lv_three_phase", "prosumers.h886.pv.phase=x", r"h886.*phase|phase.*h886"),
    ],
)
def test_a_phase_field_error_names_the_field(path, change, field):
    with pytest.raises((ValidationError, CaseError), match=field):
        load_case(shipped_cases_dir() / f"{path}.yaml", [change])


@pytest.mark.parametrize("name", [*THREE_PHASE_CASES, "flexibility_lv_three_phase"])
def test_three_phase_losses_other_than_none_are_refused_naming_network_losses(name):
    with pytest.raises(CaseError, match=r"network\.losses: 'linear'.*network\.phases: three"):
        pipeline.CaseRun.start(
            load_case(shipped_cases_dir() / f"{name}.yaml", ["network.losses=linear"])
        )


def test_an_aggregator_home_with_a_phase_is_refused_by_name():
    """The aggregator reads its homes balanced: a phase there would be silently lost."""
    with pytest.raises((ValidationError, CaseError), match=r"prosumers\.\w+\.pv\.phase"):
        load_case(shipped_cases_dir() / "aggregator_three_homes.yaml", ["prosumers.a.pv.phase=b"])
