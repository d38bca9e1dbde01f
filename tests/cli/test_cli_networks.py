"""`gridmarkets networks` lists what loads as a feeder; `--all` adds the rest."""

import os
import subprocess
import sys

import pytest

from gridmarkets.errors import NetworkError


def networks(*args) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-m", "gridmarkets", "networks", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 0, run.stderr
    return [line.split("│")[1].strip() for line in run.stdout.splitlines() if "│" in line]


@pytest.mark.unit
def test_networks_lists_feeders_and_all_adds_the_rest():
    import simbench

    feeders, everything = networks(), networks("--all")
    codes = [c for c in simbench.collect_all_simbench_codes() if "complete_data" not in c]
    assert set(codes) <= set(everything)  # --all: every SimBench code
    assert {"case33bw", "1-LV-rural1--0-sw", "1-MV-urban--0-sw"} <= set(feeders)
    # no HV, EHV or multi-level grid, no MV grid with parallel transformers by default
    left_out = ["1-HV-mixed--0-sw", "1-EHV-mixed--0-sw", "1-MVLV-rural-all-0-sw"]
    left_out.append("1-MV-rural--0-sw")
    for code in left_out:
        assert code in everything and code not in feeders
    assert len(feeders) < len(everything) / 2


def listed_grids() -> list[str]:
    """One code per grid family listed as a feeder: its first and its last scenario."""
    from gridmarkets.networks.feeder import SIMBENCH_FEEDERS

    return sorted(f"{grid}--{s}-{variant}" for grid, variant in SIMBENCH_FEEDERS for s in (0, 2))


@pytest.mark.slow
@pytest.mark.parametrize("code", listed_grids())
def test_every_listed_simbench_grid_loads_as_a_feeder(code):
    from gridmarkets.networks import load

    feeder = load(code)
    assert len(feeder.buses) > 1 and feeder.root in feeder.buses.index


@pytest.mark.slow
@pytest.mark.parametrize(
    ("code", "why"),
    [("1-MV-rural--0-sw", "closes a loop"), ("1-HV-mixed--0-sw", "external grids")],
)
def test_a_grid_left_out_does_not_load_as_a_feeder(code, why):
    from gridmarkets.networks import load

    with pytest.raises(NetworkError, match=why):
        load(code)
