"""P2P on a feeder whose limits do not bind clears the same with LinDistFlow and
CopperPlate, chosen by the one argument ``formulation`` (and without a feeder)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from radial import radial_net

from gridmarkets.models import p2p
from gridmarkets.models.lem import Upstream
from gridmarkets.networks import CopperPlate, feeder_from_net, linear_power_flow

pytestmark = pytest.mark.solve


def ample_feeder():
    """20 kV, root 0 - 1 - 2 - 3 and 1 - 4, lines of about 14 MVA: nothing binds."""
    lines = [(0, 1, 0.4), (1, 2, 0.4), (2, 3, 0.4), (1, 4, 0.4)]
    net = radial_net(20.0, lines, length_km=1.0, r_ohm_per_km=0.2, x_ohm_per_km=0.2)
    return feeder_from_net(net, name="ample")


def market(seed: int):
    """Six peers at buses 1-4, sellers and buyers with loads at power factor 0.95, and
    distinct preference costs per pair (unique trades)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(6):
        bus = int(rng.integers(1, 5))
        for t in range(2):
            sell = i % 2 == 0
            price = rng.uniform(0, 150) if sell else rng.uniform(40, 300)
            pf = np.nan if sell else 0.95
            rows.append(
                (f"p{i}", "sell" if sell else "buy", rng.uniform(50, 600), price, t, bus, pf)
            )
    bids = pd.DataFrame(
        rows,
        columns=["participant", "side", "quantity_kw", "price", "period", "bus", "power_factor"],
    )
    peers = sorted(set(bids["participant"]))
    prefs = pd.DataFrame(
        [(a, b, rng.uniform(1, 10)) for a in peers for b in peers if a != b],
        columns=["peer", "partner", "cost"],
    )
    return bids, prefs


def positions(result) -> pd.DataFrame:
    """Each agent's energy, grid trade and P2P trade (kWh)."""
    columns = ["produced_kwh", "consumed_kwh", "import_kwh", "export_kwh", "sold_kwh", "bought_kwh"]
    return result.peers.set_index("peer")[columns]


@pytest.mark.parametrize("architecture", ["full", "community", "hybrid"])
@pytest.mark.parametrize("seed", [1, 2])
def test_lindistflow_and_copperplate_clear_the_same(architecture, seed):
    bids, prefs = market(seed)
    feeder = ample_feeder()
    communities = {p: "a" if p < "p3" else "b" for p in bids["participant"]}
    options = {
        "upstream": Upstream(250.0, 30.0),
        "architecture": architecture,
        "communities": communities,
        "preferences": None if architecture == "community" else prefs,
    }
    lindistflow = p2p.clear(bids, network=feeder, **options)
    copperplate = p2p.clear(bids, network=feeder, formulation=CopperPlate(), **options)
    no_grid = p2p.clear(bids.drop(columns="bus"), **options)
    # the limits do not bind: LinDistFlow's own flows of the cleared injections
    p_kw = lindistflow.injections.pivot_table(index="bus", columns="period", values="p_kw")
    _, branches = linear_power_flow(feeder, p_kw.reindex(feeder.buses.index).fillna(0.0))
    assert branches["loading_percent"].max() < 50.0
    assert lindistflow.kpis["network_charges"] == pytest.approx(0.0, abs=1e-9)
    for other in (copperplate, no_grid):
        assert other.kpis["social_welfare"] == pytest.approx(
            lindistflow.kpis["social_welfare"], rel=1e-9
        )
        pd.testing.assert_frame_equal(positions(other), positions(lindistflow), atol=1e-6)
        totals = [r.trades.groupby("period")["energy_kwh"].sum() for r in (other, lindistflow)]
        pd.testing.assert_series_equal(*totals, atol=1e-6)
        assert other.kpis["min_gain"] == pytest.approx(lindistflow.kpis["min_gain"], abs=1e-6)


def test_the_argument_picks_the_formulation_and_the_handles_live_on_the_model():
    bids, _ = market(3)
    feeder = ample_feeder()
    on_feeder = p2p.build(bids, network=feeder)
    plate = p2p.build(bids, network=feeder, formulation=CopperPlate())
    alone = p2p.build(bids.drop(columns="bus"))
    assert on_feeder.handles.formulation == "lindistflow"
    assert on_feeder.handles.reactive_power_balance is not None
    assert plate.handles.formulation == alone.handles.formulation == "copperplate"
    owners = set(on_feeder.handles.injections["owner"])
    assert owners == set(bids["participant"]) | {p2p.UPSTREAM}
