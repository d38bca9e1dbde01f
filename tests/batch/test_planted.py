"""A module planted in the working directory is not imported by ``gridmarkets sweep``:
neither by the command's own process (``gridmarkets`` or ``python -m gridmarkets``)
nor by its worker processes."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.solve

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / "data" / "cases" / "lem_copperplate.yaml"
# concurrent: the pool's workers import concurrent.futures; csv: pandas imports it;
# highspy: only a worker solving a scenario imports it
PLANTED = ["concurrent", "csv", "highspy"]
STUDY = f"""
base: {CASE}
parameters: {{participants.chp_c.blocks.0.price: {{values: [30.0, 100.0]}}}}
kpis: [social_welfare]
"""


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).with_name("gridmarkets"))],
        [sys.executable, "-m", "gridmarkets"],
    ],
    ids=["script", "python-m"],
)
def test_a_sweep_does_not_import_modules_planted_in_the_working_directory(tmp_path, command):
    for name in PLANTED:
        (tmp_path / f"{name}.py").write_text(f"open({name!r} + '.ran', 'w').close()\n")
    (tmp_path / "study.yaml").write_text(STUDY)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    done = subprocess.run(
        [*command, "sweep", "study.yaml", "--workers", "2", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sorted(p.name for p in tmp_path.glob("*.ran")) == []
    assert done.returncode == 0, done.stderr
    assert (pd.read_csv(out / "scenarios.csv")["status"] == "optimal").all()
