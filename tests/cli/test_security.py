"""Hostile files: a network JSON naming a foreign module, names that are paths.

The planted module writes a marker file when imported. The reference that the test can
fail is pandapower itself: reading the same file with ``pandapower.from_json`` from the
same folder does import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "data" / "cases"

pytestmark = pytest.mark.unit

PLANTED = "planted_h19_module"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A fresh Python in ``cwd`` (so ``cwd`` is on its import path, as for a user)."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def plant(folder: Path) -> Path:
    """A module in ``folder`` that leaves a marker when imported; returns the marker."""
    marker = folder / "imported.marker"
    (folder / f"{PLANTED}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\nclass Boom:\n"
        "    pass\n"
    )
    return marker


def crafted_net(folder: Path) -> Path:
    """case33bw as pandapower writes it, with one table replaced by the planted class."""
    import pandapower as pp
    import pandapower.networks as pn

    tree = json.loads(pp.to_json(pn.case33bw()))
    tree["_object"]["bus_geodata"] = {"_module": PLANTED, "_class": "Boom", "_object": "{}"}
    path = folder / "net.json"
    path.write_text(json.dumps(tree))
    return path


def case_on(net: Path, folder: Path) -> Path:
    text = (CASES / "p2p_feeder.yaml").read_text()
    old = "network: {source: pandapower, name: case33bw}"
    assert old in text
    path = folder / "case.yaml"
    path.write_text(text.replace(old, f"network: {{source: file, path: {net.name}}}"))
    return path


def test_pandapower_alone_imports_the_planted_module(tmp_path):
    """The reference: without gridmarkets' check the module runs."""
    marker = plant(tmp_path)
    net = crafted_net(tmp_path)
    run(
        ["-c", f"import pandapower as pp\ntry: pp.from_json({net.name!r})\nexcept Exception: pass"],
        tmp_path,
    )
    assert marker.read_text() == "ran"


def test_a_network_json_naming_a_foreign_module_is_refused_unimported(tmp_path):
    marker = plant(tmp_path)
    case = case_on(crafted_net(tmp_path), tmp_path)
    done = run(["-m", "gridmarkets", "solve", case.name, "--out", "out"], tmp_path)
    message = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"bus_geodata names {PLANTED}.Boom" in message and "nothing imported" in message
    assert not marker.exists()


def test_a_nested_foreign_class_inside_a_table_string_is_refused(tmp_path):
    """pandapower parses a table's ``_object`` string again: the check looks inside."""
    import pandapower as pp
    import pandapower.networks as pn

    from gridmarkets.errors import NetworkError
    from gridmarkets.networks import load

    tree = json.loads(pp.to_json(pn.case33bw()))
    inner = json.dumps({"_module": "os", "_class": "system", "_object": "echo"})
    tree["_object"]["std_types"] = {
        "_module": "pandas.core.frame",
        "_class": "DataFrame",
        "_object": json.dumps({"columns": ["a"], "index": [0], "data": [[json.loads(inner)]]}),
    }
    path = tmp_path / "net.json"
    path.write_text(json.dumps(tree))
    with pytest.raises(NetworkError, match="names os.system"):
        load({"source": "file", "path": str(path)})


def test_a_clean_network_json_still_loads(tmp_path):
    """The allow-list passes what pandapower writes: the feeder equals the built-in's."""
    import pandapower as pp
    import pandapower.networks as pn

    from gridmarkets.networks import load

    path = tmp_path / "net.json"
    pp.to_json(pn.case33bw(), str(path))
    from_file, built_in = load(str(path)), load("case33bw")
    assert from_file.branches[["r_pu", "x_pu"]].equals(built_in.branches[["r_pu", "x_pu"]])


@pytest.mark.parametrize("name", ["../escaped", "/tmp/h19-abs", "sub/dir"])
def test_a_study_name_that_is_a_path_is_refused(tmp_path, name):
    study = tmp_path / "study.yaml"
    study.write_text(
        f"name: {name!r}\nbase: lem_copperplate\n"
        "parameters: {participants.chp_c.blocks.0.price: {values: [30, 60]}}\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    done = run(["-m", "gridmarkets", "sweep", str(study), "--workers", "1"], work)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "is a path, not a name" in " ".join(done.stderr.split())
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/h19-abs").exists()
    assert not (work / "results").exists()


def test_a_case_name_that_is_a_path_writes_nothing(tmp_path):
    case = tmp_path / "case.yaml"
    case.write_text("name: ../escaped\n" + (CASES / "lem_copperplate.yaml").read_text())
    work = tmp_path / "work"
    work.mkdir()
    done = run(["-m", "gridmarkets", "solve", str(case)], work)
    assert done.returncode == 2, done.stderr
    assert "is a path, not a name" in " ".join(done.stderr.split())
    assert not (tmp_path / "escaped").exists() and not (work / "results").exists()
