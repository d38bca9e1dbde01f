"""The wheel carries every sub-package and the shipped data (not only the editable install)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "gridmarkets",
    "gridmarkets.models",
    "gridmarkets.networks",
    "gridmarkets.solvers",
    "gridmarkets.data",
    "gridmarkets.specs",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("gridmarkets-*.whl")
    return path


@pytest.mark.slow
def test_every_subpackage_imports_from_the_wheel(wheel, tmp_path):
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    script = (
        "import importlib, sys, pathlib\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        f"for name in {SUBPACKAGES!r}:\n"
        "    mod = importlib.import_module(name)\n"
        "    where = pathlib.Path(list(mod.__path__)[0]).resolve()\n"
        f"    assert where.is_relative_to({str(unpacked.resolve())!r}), (name, where)\n"
        "import gridmarkets.cli, gridmarkets.solvers.highs, gridmarkets.models.lem\n"
        "import gridmarkets.pipeline, gridmarkets.specs.lem\n"
    )
    # run outside the checkout so the source tree cannot be imported by accident
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)


@pytest.mark.slow
def test_the_wheel_ships_the_case_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("gridmarkets/data/cases/")}
    in_repo = {p.name for p in (ROOT / "data" / "cases").glob("*.yaml")}
    assert in_repo and shipped == in_repo
