"""`gridmarkets solve` on a SimBench case through the network cache: the run that fills
it and the run that reads it give the results of a run without the cache."""

import json

import pandas as pd
import pytest
from cli_run import gridmarkets

pytestmark = pytest.mark.solve

SHORT = ["--set", "horizon.periods=4", "--no-plots"]


def solve(out, monkeypatch, cache: str):
    monkeypatch.setenv("GRIDMARKETS_CACHE_DIR", cache)
    run = gridmarkets("solve", "lem_lv_grid", "--out", out, *SHORT)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    return summary, pd.read_csv(out / "prices.csv"), run.stderr


def test_cached_feeder_solves_the_quick_start_as_a_fresh_one(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    fresh, fresh_prices, _ = solve(tmp_path / "fresh", monkeypatch, "off")
    filled, filled_prices, _ = solve(tmp_path / "filled", monkeypatch, str(cache))
    assert len(list(cache.glob("*.manifest.json"))) == 1
    cached, cached_prices, stderr = solve(tmp_path / "cached", monkeypatch, str(cache))
    assert "WARNING" not in stderr and "rebuilding" not in stderr
    for summary, prices in ((filled, filled_prices), (cached, cached_prices)):
        assert summary["objective"] == pytest.approx(fresh["objective"], rel=1e-9)
        assert summary["kpis"] == pytest.approx(fresh["kpis"], rel=1e-9, abs=1e-9)
        pd.testing.assert_frame_equal(prices, fresh_prices, rtol=1e-9)
        assert summary["ac_check"]["max_voltage_error_pu"] == pytest.approx(
            fresh["ac_check"]["max_voltage_error_pu"], rel=1e-6, abs=1e-12
        )
