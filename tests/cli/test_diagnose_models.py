"""Infeasible P2P, aggregator and flexibility cases are explained in the case's own terms.

Each case is a shipped case made infeasible in the test and run through the CLI. The
elements named are checked against the case's own data (the peers' blocks and their
quantities, the seller's offer, the feeder's branch), and by relaxing what was named:
the case then solves (or, where a second limit of the same element holds it, the next
diagnosis names that limit).
"""

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_run import diagnosis_seconds, gridmarkets

from gridmarkets.case import load_case
from gridmarkets.pipeline import load_feeder
from gridmarkets.solvers.diagnose import DEFAULT_TIME_LIMIT_S
from gridmarkets.specs.p2p import case_bids

pytestmark = pytest.mark.solve

CASES = Path(__file__).resolve().parents[2] / "data" / "cases"
# "  - <element>: <family> (<side> bound) in period(s) <p> [<name> (<side> bound, [0, <q>])]"
BLOCK = re.compile(
    r"^  - peers\.(\w+)\.blocks\.(\d+): accepted_kw \((upper|lower) bound\) in period\(s\) "
    r"(\d+) \[accepted_kw\[\d+\] \((?:upper|lower) bound, \[0, ([0-9.e+-]+)\]\)\]$",
    re.MULTILINE,
)


def assert_explained(run: subprocess.CompletedProcess) -> None:
    """Exit 1, no traceback, a complete diagnosis in the case's terms within its time."""
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert "conflicting case elements" in run.stderr and "partial answer" not in run.stderr
    assert diagnosis_seconds(run.stderr) <= DEFAULT_TIME_LIMIT_S


def line_of(stderr: str, element: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith(f"  - {element}:"))


# --- P2P: a voltage limit at a peer's bus that the peers cannot lift -----------------------


@pytest.fixture(scope="module")
def p2p_voltage(tmp_path_factory):
    """p2p_feeder.yaml on case33bw with bus 17 held at 1.01 pu or more, and pv_17 (the
    peer at bus 17) offering 10 kW instead of 400 kW in period 0."""
    import pandapower
    import pandapower.networks as pn

    folder = tmp_path_factory.mktemp("p2p")
    net = pn.case33bw()
    net.bus.loc[17, "min_vm_pu"] = 1.01
    pandapower.to_json(net, str(folder / "net.json"))
    data = yaml.safe_load((CASES / "p2p_feeder.yaml").read_text())
    data["network"] = {"source": "file", "path": str(folder / "net.json")}
    data["peers"]["pv_17"]["blocks"][0]["quantity_kw"] = [10, 900]
    path = folder / "p2p_voltage.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, gridmarkets("solve", path, "--out", folder / "out")


def test_a_p2p_voltage_conflict_names_the_peers_blocks_and_the_bus(p2p_voltage):
    path, run = p2p_voltage
    assert_explained(run)
    named = BLOCK.findall(run.stderr)
    assert named, run.stderr
    bids = case_bids(load_case(path)).set_index(["participant", "block", "period"])
    for peer, block, side, period, quantity in named:
        bid = bids.loc[(peer, int(block), int(period))]
        assert float(quantity) == pytest.approx(bid["quantity_kw"])  # the peer's own block
        # what holds the voltage down: sellers at their quantity, buyers at zero
        assert side == ("upper" if bid["side"] == "sell" else "lower")
    assert ("pv_17", "0", "upper", "0", "10") in named
    buses = next(line for line in run.stderr.splitlines() if line.startswith("  - network bus "))
    assert "network.voltage_limit[17,0]" in buses  # the limit the test raised


def test_relaxing_the_named_peer_block_makes_the_p2p_case_solve(p2p_voltage, tmp_path):
    path, _ = p2p_voltage
    relaxed = "peers.pv_17.blocks.0.quantity_kw=[400, 900]"  # the shipped case's
    run = gridmarkets("solve", path, "--set", relaxed, "--out", tmp_path)
    assert run.returncode == 0, run.stderr


def test_a_p2p_community_manager_is_named_by_its_community():
    """A manager's balance has no case entry of its own: it is its community's; a
    peer's balance is the peer's."""
    from gridmarkets.case_terms import labeler
    from gridmarkets.models.p2p import build
    from gridmarkets.solvers.diagnose import Conflict
    from gridmarkets.specs.p2p import market_options

    case = load_case(CASES / "p2p_community.yaml")
    model = build(case_bids(case), **market_options(case, None))
    label = labeler(case, model)
    found = {}
    for agent in model.AGENTS:
        row = model.energy_balance[agent, 2]
        found[agent] = label(Conflict(row.name, "energy_balance", "constraint", "", component=row))
    assert all(found[p] == (f"peers.{p}", 2) for p in case.peers)
    managers = {found[a] for a in found if a not in case.peers}
    communities = {p.community for p in case.peers.values()}
    assert managers == {(f"community {c}", 2) for c in communities}


# --- aggregator: a home's EV stay against its import limit; the followers' big-M ----------

AGGREGATOR = CASES / "aggregator_three_homes.yaml"
# home b's EV asks for 45 kWh in the four hours; its 10 kW import, less its load, cannot
# bring it (its battery's 6 kWh do not close the gap)
EV = (
    'prosumers.b.ev={"capacity_kwh": 60, "p_charge_max_kw": 22, "p_charge_min_kw": 0, '
    '"stays": [{"arrival": 0, "departure": 4, "soc_arrival_kwh": 5, "soc_departure_kwh": 50}]}'
)


def test_an_aggregator_home_s_ev_stay_names_the_home_the_stay_and_its_limit(tmp_path):
    run = gridmarkets("solve", AGGREGATOR, "--set", EV, "--out", tmp_path)
    assert_explained(run)
    case = load_case(AGGREGATOR)
    stay = line_of(run.stderr, "prosumers.b.ev.stays.0")
    assert "soc_dynamics in period(s) 0-3" in stay  # the stay's periods, all four
    limit = line_of(run.stderr, "prosumers.b.import_limit_kw")
    bound = case.prosumers["b"].import_limit_kw
    assert f"(upper bound, [0, {bound:g}])" in limit
    for other in set(case.prosumers) - {"b"}:  # only home b is in the conflict
        assert f"prosumers.{other}" not in run.stderr


def test_relaxing_the_named_import_limit_makes_the_aggregator_case_solve(tmp_path):
    limit = "prosumers.b.import_limit_kw=25"
    run = gridmarkets("solve", AGGREGATOR, "--set", EV, "--set", limit, "--out", tmp_path)
    assert run.returncode == 0, run.stderr


def test_a_followers_big_m_too_small_names_big_m_without_periods(tmp_path):
    """A multiplier bound of 0.01, given for every multiplier (no derived bounds), cannot
    hold the homes' KKT conditions; the KKT rows are numbered, not by period, so no
    period is claimed for them."""
    given = ("--set", "big_m=0.01", "--set", "derive_big_m=false")
    run = gridmarkets("solve", AGGREGATOR, *given, "--out", tmp_path)
    assert_explained(run)
    line = line_of(run.stderr, "big_m")
    assert "multiplier_bigm [" in line and "period" not in line
    homes = re.findall(r"^  - prosumers\.(\w+): .*kkt\.stationarity", run.stderr, re.MULTILINE)
    assert homes and set(homes) <= set(load_case(AGGREGATOR).prosumers)
    # the case's own big_m (10) holds them: the shipped case solves
    assert gridmarkets("solve", AGGREGATOR, "--out", tmp_path / "shipped").returncode == 0


# --- flexibility: the transformer's reverse flow without the PV curtailment offers ---------

FLEXIBILITY = CASES / "flexibility_lv_noon.yaml"
NO_PV = ("--set", "pv_offers=null", "--set", "mode=pool")  # the battery alone relieves it


def test_a_flexibility_overload_names_the_offer_and_the_transformer(tmp_path):
    run = gridmarkets("solve", FLEXIBILITY, *NO_PV, "--out", tmp_path)
    assert_explained(run)
    case = load_case(FLEXIBILITY)
    offers = re.findall(r"^  - sellers\.(\w+)\.offers\.(\d+): (.*)$", run.stderr, re.MULTILINE)
    assert offers, run.stderr
    for seller, k, text in offers:
        offer = case.sellers[seller].offers[int(k)]
        # what relieves a reverse flow: the DSO's downward offer, at its quantity
        assert (offer.product, offer.direction) == ("dso", "down")
        assert f"(upper bound, [0, {offer.quantity_kw:g}])" in text
    branch = re.search(
        r"^  - scenario dispatch, network (\w+) (\d+): thermal_limit", run.stderr, re.M
    )
    assert branch, run.stderr
    branches = load_feeder(case).branches
    kinds = set(branches.loc[branches["element"] == int(branch.group(2)), "kind"])
    assert branch.group(1) in kinds and branch.group(1) == "trafo"  # the 160 kVA transformer


def test_relaxing_the_named_offer_then_the_headroom_it_meets_makes_the_case_solve(tmp_path):
    """More of the named offer alone meets the battery's downward headroom, named next;
    with both the market clears."""
    offer = "sellers.battery_9.offers.1.quantity_kw=400"
    run = gridmarkets("solve", FLEXIBILITY, *NO_PV, "--set", offer, "--out", tmp_path)
    assert_explained(run)
    limit = line_of(run.stderr, "sellers.battery_9.down_kw")
    assert "headroom_down" in limit
    headroom = "sellers.battery_9.down_kw=400"
    run = gridmarkets(
        "solve", FLEXIBILITY, *NO_PV, "--set", offer, "--set", headroom, "--out", tmp_path
    )
    assert run.returncode == 0, run.stderr


def test_flexibility_members_name_their_offer_limit_product_and_need():
    """The shipped case's model, each member family labelled from the tables the case
    builds (offers and resources by case_offers, needs by dso_needs): PV offers and
    their limits, a seller's own offers and limits, the TSO product, the DSO's needs."""
    from gridmarkets.case_terms import labeler
    from gridmarkets.solvers.diagnose import Conflict
    from gridmarkets.specs.flexibility import ADAPTER, Market

    case = load_case(FLEXIBILITY)
    feeder = load_feeder(case)
    model = ADAPTER.build(case, feeder, None).model
    label = labeler(case, model)

    def of(member, kind="constraint", detail=""):
        family = member.parent_component().name
        return label(Conflict(member.name, family, kind, detail, component=member))

    market = Market.of(case, feeder)
    offers = market.offers
    for o, row in offers.iterrows():
        element, period = of(model.accepted_kw[o], "variable bound", "upper bound, [0, 1]")
        assert period == row["period"]
        if row["seller"] in case.sellers:  # k-th offer of the seller in the case
            k = int(element.rsplit(".", 1)[1])
            spec = case.sellers[row["seller"]].offers[k]
            assert element == f"sellers.{row['seller']}.offers.{k}"
            assert (spec.product, spec.direction) == (row["product"], row["direction"])
        else:  # a PV bus of the feeder
            assert element == f"pv_offers for {row['seller']}"
            assert int(row["seller"].removeprefix("pv_")) == row["bus"]
    pv = next(s for s in offers["seller"] if s not in case.sellers)
    assert of(model.headroom_down[pv, 1]) == (f"pv_offers for {pv}", 1)
    side = next(k for k in model.INVERTER_SIDES if (pv, 1, k, "dispatch") in model.inverter_rating)
    rating = model.inverter_rating[pv, 1, side, "dispatch"]
    assert of(rating) == (f"pv_offers.inverter_kva_factor for {pv}", 1)
    assert of(model.headroom_up["battery_9", 2]) == ("sellers.battery_9.up_kw", 2)
    (product,) = case.tso_requirements
    assert of(model.tso_requirement[product, 3]) == (f"tso_requirements.{product}", 3)
    needs = model.needs
    assert len(needs), "the shipped case has DSO needs (the transformer at noon)"
    branches = feeder.branches
    for n, need in needs.iterrows():
        if need["limit_kind"] == "thermal":
            member, margin = model.need_thermal[n, 0, "dispatch"], "loading_margin_percent"
            branch = branches.loc[int(need["index"])]
            where = f"network {branch['kind']} {branch['element']}"
        else:
            member, margin = model.need_voltage[n, "dispatch"], "voltage_margin_pu"
            where = f"network bus {int(need['index'])}"
        assert of(member) == (f"{margin} at {where}", int(need["period"]))
