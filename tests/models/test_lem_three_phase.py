"""The LEM on LinDist3Flow: balanced bids as LinDistFlow clears them, per-phase prices
against finite-difference re-solves, certificates, and the shipped three-phase case
through the CLI and the pipeline against pandapower's runpp_3ph."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pandapower as pp
import pandas as pd
import pytest
from pydantic import ValidationError
from radial import lv_net

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.errors import CaseError
from gridmarkets.models import lem
from gridmarkets.networks import LinDist3Flow, LinDistFlow, three_phase_feeder
from gridmarkets.networks.three_phase import PHASES
from gridmarkets.specs.lem import _case_market

pytestmark = pytest.mark.solve

CASE = shipped_cases_dir() / "lem_lv_three_phase.yaml"
UPSTREAM = lem.Upstream(import_price=50.0, export_price=20.0)
BIDS = pd.DataFrame(
    [
        dict(participant="pv3", side="sell", bus=3, price=10.0, quantity_kw=15.0),
        dict(
            participant="b4", side="buy", bus=4, price=200.0, quantity_kw=120.0, power_factor=0.95
        ),
        dict(participant="b5", side="buy", bus=5, price=90.0, quantity_kw=60.0),
        dict(participant="b3", side="buy", bus=3, price=70.0, quantity_kw=30.0),
    ]
)


@pytest.fixture(scope="module")
def balanced_feeder():
    """lv_net with the line 2-3 limited and vmin 0.9: both limits bind for BIDS."""
    return three_phase_feeder(lv_net(max_i_ka=0.12, vmin_pu=0.9, charging_nf=300.0))


@pytest.fixture(scope="module")
def shipped():
    case = load_case(CASE)
    feeder = pipeline.load_feeder(case)
    bids, upstream = _case_market(case, feeder)
    result = lem.clear(bids, upstream=upstream, network=feeder, formulation=LinDist3Flow())
    return case, feeder, bids, upstream, result


def _settled_prices(result) -> pd.Series:
    """Each participant's settlement price (currency/MWh): payment over energy."""
    table = result.settlement.set_index("participant")
    return table["payment"] / table["energy_kwh"] * 1000


# --------------------------------------------------------- (a) balanced: as LinDistFlow


def test_balanced_bids_on_lindist3flow_clear_as_on_lindistflow(balanced_feeder):
    """Every bid "abc" on a feeder built from sequence data: the same acceptances, the
    same settlement prices and welfare as LinDistFlow, and each bus's phase-mean price
    (what an "abc" block is worth) is LinDistFlow's nodal price with its parts."""
    single = lem.clear(BIDS, upstream=UPSTREAM, network=balanced_feeder, formulation=LinDistFlow())
    three = lem.clear(
        BIDS.assign(phase="abc"),
        upstream=UPSTREAM,
        network=balanced_feeder,
        formulation=LinDist3Flow(),
    )
    assert single.prices["congestion"].abs().max() > 10  # the line 2-3 binds
    assert single.prices["voltage"].abs().max() > 10  # and a voltage limit
    np.testing.assert_allclose(
        three.accepted["accepted_kw"], single.accepted["accepted_kw"], atol=1e-6
    )
    np.testing.assert_allclose(_settled_prices(three), _settled_prices(single), atol=1e-6)
    assert three.kpis["social_welfare"] == pytest.approx(single.kpis["social_welfare"], abs=1e-6)
    mean = three.prices.groupby(["bus", "period"])[["price", "congestion", "voltage"]].mean()
    expected = single.prices.set_index(["bus", "period"]).loc[mean.index, mean.columns]
    np.testing.assert_allclose(mean.to_numpy(), expected.to_numpy(), atol=1e-6)


def test_without_a_three_phase_formulation_phases_are_summed(balanced_feeder):
    """A phase column on LinDistFlow is read balanced: the same clearing as without it."""
    plain = lem.clear(BIDS, upstream=UPSTREAM, network=balanced_feeder)
    phased = lem.clear(
        BIDS.assign(phase=["c", "a", "ab", "b"]), upstream=UPSTREAM, network=balanced_feeder
    )
    np.testing.assert_allclose(phased.accepted["accepted_kw"], plain.accepted["accepted_kw"])
    np.testing.assert_allclose(phased.prices["price"], plain.prices["price"])


# ------------------------------------------- (b) the shipped case: per-phase prices, FD


def _probe_welfare(feeder, bids, upstream, key, eps) -> float:
    """Welfare of the market with ``eps`` kW more demand at key = (bus, phases, period):
    a must-take buyer (price CAP above every price) whose own value is taken out."""
    cap, (bus, phase, period) = 1000.0, key
    probe = dict(participant="probe", side="buy", bus=bus, phase=phase, period=period)
    table = pd.concat([bids, pd.DataFrame([probe | dict(price=cap, quantity_kw=eps)])])
    result = lem.clear(table, upstream=upstream, network=feeder, formulation=LinDist3Flow())
    accepted = result.accepted.set_index("participant").loc["probe", "accepted_kw"]
    assert accepted == pytest.approx(eps, rel=1e-9)
    return result.kpis["social_welfare"] - cap * eps / 1000


def test_shipped_case_prices_phases_apart_as_finite_differences_say(shipped):
    """Phase c's voltage limit binds (PV curtailed); at the PV bus 900 phase c is worth
    far less than phases a and b. Each price there, and the two-phase EV's connection
    price, is the welfare lost per kW of demand added on that connection (a re-solve);
    the voltage part is that less the root's; congestion plays no part."""
    case, feeder, bids, upstream, result = shipped
    offered = result.accepted.groupby("participant")[["accepted_kw", "offered_kw"]].sum()
    pv = offered.loc[offered.index.str.startswith("pv")]
    assert (pv["accepted_kw"] < pv["offered_kw"] - 1).any()
    prices = result.prices.set_index(["bus", "phase", "period"])
    at_900 = prices.xs((900, 0), level=("bus", "period"))["price"]
    assert at_900[["a", "b"]].min() - at_900["c"] > 20
    eps = 0.01
    base = result.kpis["social_welfare"]

    def marginal(bus, phase):
        return (base - _probe_welfare(feeder, bids, upstream, (bus, phase, 0), eps)) / eps * 1000

    root = marginal(feeder.root, "abc")
    assert prices.loc[(feeder.root, "a", 0), "energy"] == pytest.approx(root, rel=1e-6)
    for phase in ("a", "c"):
        row = prices.loc[(900, phase, 0)]
        fd = marginal(900, phase)
        assert row["price"] == pytest.approx(fd, rel=1e-6)
        assert row["voltage"] == pytest.approx(fd - root, rel=1e-6, abs=1e-6)
        assert abs(row["congestion"]) < 1e-9
    ev = prices.xs((860, 0), level=("bus", "period"))["price"]
    assert marginal(860, "ab") == pytest.approx(ev[["a", "b"]].mean(), rel=1e-6)


# ------------------------------------------------------------------- (c) certificates


def _at_their_connection_price(result, bids: pd.DataFrame) -> None:
    """Merit order at each block's own price, the mean of its phases' (active, and its
    kvar per kW times the reactive one): a bid above it is taken whole, below it not at
    all, partly only at it; offers the other way."""
    prices = result.prices.set_index(["bus", "phase", "period"])
    ratio = lem.reactive_ratio(lem.prepare_bids(bids))
    for row, q_per_kw in zip(result.accepted.itertuples(), ratio, strict=True):
        at = prices.loc[[(row.bus, phase, row.period) for phase in row.phase]].mean()
        price = at["price"] + q_per_kw * at["price_q"]
        margin = (row.bid_price - price) * (1 if row.side == "buy" else -1)
        share = row.accepted_kw / row.offered_kw
        if margin > 1e-6:
            assert share == pytest.approx(1.0, abs=1e-6), row
        elif margin < -1e-6:
            assert share == pytest.approx(0.0, abs=1e-6), row
        else:
            assert 0.0 <= share <= 1.0


@pytest.mark.parametrize("market", ["shipped", "mixed"])
def test_every_block_clears_at_its_connection_price_and_the_settlement_closes(
    market, shipped, balanced_feeder
):
    if market == "shipped":
        bids, result = shipped[2], shipped[-1]
    else:
        bids = phased = BIDS.assign(phase=["c", "a", "ab", "b"])
        result = lem.clear(
            phased, upstream=UPSTREAM, network=balanced_feeder, formulation=LinDist3Flow()
        )
        partly = result.accepted.set_index("participant").loc[["b5", "b3"], "accepted_kw"]
        offered = BIDS.set_index("participant").loc[partly.index, "quantity_kw"]
        assert ((partly > 1) & (partly < offered - 1)).all()  # marginal on "ab" and "b"
    _at_their_connection_price(result, bids)
    assert result.kpis["min_gain"] >= -result.kpis["gain_tolerance"]
    assert result.kpis["individually_rational"] == 1.0
    assert result.kpis["reconciliation_error"] == pytest.approx(0.0, abs=1e-9)
    assert (result.settlement["gain"] >= -result.kpis["gain_tolerance"]).all()


# --------------------------------------------------- (d) the case file, CLI, runpp_3ph


def _runpp_3ph_voltages(feeder, accepted: pd.DataFrame) -> np.ndarray:
    """runpp_3ph of the cleared blocks, run here: every element of the net off, one
    wye asymmetric sgen per bus with its blocks' kW split over their phases; (buses x 3 x
    periods) phase voltages in pu."""
    net = copy.deepcopy(feeder.net)
    for table in ("load", "sgen", "asymmetric_load", "asymmetric_sgen"):
        net[table]["in_service"] = False
    sign = np.where(accepted["side"] == "sell", 1.0, -1.0)
    kw = accepted.assign(kw=sign * accepted["accepted_kw"])
    periods = sorted(kw["period"].unique())
    buses = list(feeder.buses.index)
    out = np.empty((len(buses), 3, len(periods)))
    for t in periods:
        sgens = {}
        for row in kw[kw["period"] == t].itertuples():
            if row.bus not in sgens:
                sgens[row.bus] = pp.create_asymmetric_sgen(net, row.bus)
            for phase in row.phase:
                column = f"p_{phase}_mw"
                net.asymmetric_sgen.at[sgens[row.bus], column] += row.kw / len(row.phase) / 1000
        pp.runpp_3ph(net, numba=False)
        out[:, :, t] = net.res_bus_3ph.loc[buses, [f"vm_{p}_pu" for p in PHASES]].to_numpy()
        net.asymmetric_sgen = net.asymmetric_sgen.drop(list(sgens.values()))
    return out


@pytest.mark.slow
def test_shipped_case_through_the_cli_and_run_case_checks_with_runpp_3ph(tmp_path, shipped):
    feeder = shipped[1]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [sys.executable, "-m", "gridmarkets", "solve", CASE, "--out", tmp_path],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    cli = json.loads((tmp_path / "summary.json").read_text())
    result = pipeline.run_case(load_case(CASE))
    summary = result.ac_check
    assert summary["power_flow"] == "pandapower runpp_3ph" and summary["losses"] == "none"
    assert summary["enforced_limits"]["formulation"] == "lindist3flow"
    assert cli["ac_check"]["max_vm_pu_c"] == pytest.approx(summary["max_vm_pu_c"], abs=1e-9)
    assert cli["kpis"]["social_welfare"] == pytest.approx(shipped[-1].kpis["social_welfare"])
    v = _runpp_3ph_voltages(feeder, result.accepted)
    for k, phase in enumerate(PHASES):
        assert summary[f"max_vm_pu_{phase}"] == pytest.approx(v[:, k].max(), abs=1e-8)
        assert summary[f"min_vm_pu_{phase}"] == pytest.approx(v[:, k].min(), abs=1e-8)
    # phase c sits at its limit in the model; the AC flow is within the model's error
    assert summary["max_vm_pu_c"] == pytest.approx(1.1, abs=summary["model_voltage_error_pu"])
    assert summary["model_voltage_error_pu"] < 0.01
    assert summary["max_pvur_percent"] > 1  # the phases are far apart
    assert summary["enforced_violations_count"] == 0


# ------------------------------------------------------------------ case-file errors


def test_three_phase_losses_other_than_none_are_refused_naming_network_losses():
    with pytest.raises(CaseError, match=r"network\.losses: 'linear'.*network\.phases: three"):
        pipeline.CaseRun.start(load_case(CASE, ["network.losses=linear"]))


def test_a_bad_phase_names_the_participant_field():
    with pytest.raises((ValidationError, CaseError), match=r"pv_886.*phase|phase.*pv_886"):
        load_case(CASE, ["participants.pv_886.phase=d"])


def test_a_phase_on_a_single_phase_network_names_the_field():
    with pytest.raises((ValidationError, CaseError), match=r"participants\.pv_886\.phase"):
        load_case(CASE, ["network.phases=one"])


def test_other_models_refuse_a_three_phase_network_naming_network_phases():
    path = shipped_cases_dir() / "p2p_feeder.yaml"
    with pytest.raises(CaseError, match=r"network\.phases: 'three'.*p2p"):
        pipeline.CaseRun.start(load_case(path, ["network.phases=three", "network.losses=none"]))
