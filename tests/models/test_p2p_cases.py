"""The shipped P2P case files validate, run, and keep their architectures' promises."""

from __future__ import annotations

import pytest

from gridmarkets import pipeline
from gridmarkets.case import load_case, shipped_cases_dir
from gridmarkets.errors import CaseError
from gridmarkets.models import p2p

pytestmark = pytest.mark.solve

CASES = ["p2p_full", "p2p_community", "p2p_hybrid", "p2p_quadratic", "p2p_budgets"]


@pytest.mark.parametrize("name", CASES)
def test_shipped_case_runs_and_every_peer_gains(name):
    case = load_case(shipped_cases_dir() / f"{name}.yaml")
    result = pipeline.run_case(case, {})
    peers = result.peers[~result.peers["peer"].str.startswith(p2p.MANAGER_PREFIX)]
    assert (peers["gain"] >= -1e-3).all()
    assert len(result.trades) > 0


def test_feeder_case_clears_within_limits_and_check_mode_reports_cuts():
    path = shipped_cases_dir() / "p2p_feeder.yaml"
    aware = pipeline.run_case(load_case(path), {})
    assert aware.ac_check["violations_count"] == 0
    check = pipeline.run_case(load_case(path, ["dso=check"]), {})
    assert "dso_cuts" in check.tables


def test_case_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model: p2p\narchitecture: community\npeers:\n"
        "  a: {blocks: [{side: sell, quantity_kw: 1, price: 1}]}\n"
        "  b: {blocks: [{side: buy, quantity_kw: 1, price: 9}]}\n"
    )
    with pytest.raises(CaseError, match="community"):
        load_case(path)
