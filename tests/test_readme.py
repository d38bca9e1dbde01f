"""The README works as written: every Python block runs on its own in a fresh
interpreter, every YAML block parses (a study validates), and the commands it shows
exist with the options it names."""

import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[tuple[str, str]]:
    """(the heading above it + its index, its code) for each block in ``language``."""
    found = []
    for k, match in enumerate(FENCE.finditer(README)):
        if match.group(1) == language:
            heading = re.findall(r"^#+ (.+)$", README[: match.start()], re.MULTILINE)[-1]
            found.append((f"{k}: {heading}", match.group(2)))
    return found


PYTHON = blocks("python")
YAML = blocks("yaml")
BASH = blocks("bash")


def test_the_readme_has_blocks_of_each_kind():
    assert len(PYTHON) >= 5 and YAML and BASH


@pytest.mark.solve
@pytest.mark.parametrize("code", [code for _, code in PYTHON], ids=[name for name, _ in PYTHON])
def test_python_block_runs_on_its_own(code, tmp_path):
    """In a fresh interpreter, from the repository root (the blocks name data/cases/...),
    with nothing from the other blocks."""
    script = tmp_path / "block.py"
    script.write_text(code)
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.unit
@pytest.mark.parametrize("text", [code for _, code in YAML], ids=[name for name, _ in YAML])
def test_yaml_block_parses(text, tmp_path):
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    if "base" in data:  # a study: it validates against its shipped base case
        from gridmarkets.study import load_study

        path = tmp_path / "study.yaml"
        path.write_text(text)
        study = load_study(path)
        sizes = [
            len(p["values"]) if "values" in p else p["num"] for p in data["parameters"].values()
        ]
        assert data["design"] == "grid" and len(study.scenarios) == math.prod(sizes)


def commands_in_the_table() -> list[list[str]]:
    """The `gridmarkets ...` cells of the command-line table, as argument lists."""
    section = README[README.index("## Command line") : README.index("Exit codes:")]
    cells = re.findall(r"^\| `(gridmarkets [^`]+)`", section, re.MULTILINE)
    return [shlex.split(cell.replace("[", " ").replace("]", " ")) for cell in cells]


@pytest.mark.unit
def test_every_command_and_option_of_the_table_is_in_its_help():
    env = {**os.environ, "COLUMNS": "200"}
    table = commands_in_the_table()
    assert [words[1] for words in table] == ["solve", "cases", "networks", "schema", "sweep"]
    for words in table:
        run = subprocess.run(
            [sys.executable, "-m", "gridmarkets", words[1], "--help"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert run.returncode == 0, run.stderr
        for option in (w for w in words[2:] if w.startswith("--")):
            assert option in run.stdout, (words[1], option)


@pytest.mark.unit
def test_the_quick_start_commands_name_what_exists():
    """The quick start's two commands: the extra they install, the shipped case they
    solve and the test command (the fast suite, as pytest's addopts select it)."""
    quick_start = BASH[0][1].strip().splitlines()
    assert len(quick_start) == 2
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for line in quick_start:
        for command in line.split(" && "):
            words = shlex.split(command)
            if words[:2] == [".venv/bin/gridmarkets", "solve"]:
                assert (ROOT / "data" / "cases" / f"{words[2]}.yaml").is_file()
            if words[0] == ".venv/bin/pip" and "[" in words[-1]:
                extra = words[-1].split("[")[1].rstrip("]")
                assert extra in project["project"]["optional-dependencies"]
    assert "-m 'not slow'" in project["tool"]["pytest"]["ini_options"]["addopts"]
    assert "python -m pytest -m slow" in README


@pytest.mark.unit
def test_options_before_the_command_exist():
    run = subprocess.run(
        [sys.executable, "-m", "gridmarkets", "--help"], capture_output=True, text=True
    )
    for option in re.findall(
        r"`(--[a-z-]+)`", README[README.index("Options before the command") :][:400]
    ):
        assert option in run.stdout, option
