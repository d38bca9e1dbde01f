"""What the gridmarkets command prints: only the summary on stdout (no HiGHS banner, also
in a sweep), the log on stderr, stage times that add up to the wall time, --json,
--no-plots, --version, help texts with their defaults, and whole case descriptions."""

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "data" / "cases"
BOX = "┌┐└┘├┤┬┴┼─│┏┓┗┛┡┩┳┻╇━┃"


def gridmarkets(*args, cwd=None, columns=100) -> tuple[subprocess.CompletedProcess, float]:
    """Run the command in a fresh process; return it and its wall time (s)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "COLUMNS": str(columns)}
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "gridmarkets", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )
    return run, time.perf_counter() - started


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each row of a rich table (border lines dropped)."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split("[│┃]", line)[1:-1]]
        if cells:
            rows.append(cells)
    return rows


def assert_only_a_table(stdout: str, title: str, target: Path) -> list[list[str]]:
    """stdout is the title, the table and the 'results written' line, nothing else."""
    lines = stdout.splitlines()
    assert lines[0].strip() == title
    assert lines[-1] == f"results written to {target}/"
    for line in lines[1:-1]:
        assert line and line[0] in BOX and line[-1] in BOX, line
    assert "HiGHS" not in stdout and "Running" not in stdout
    return table_rows(stdout)


@pytest.fixture(scope="module")
def feeder_run(tmp_path_factory):
    """lem_lv_grid on its SimBench feeder (pandapower, HiGHS, the AC check), as a user
    runs it: a table on stdout."""
    out = tmp_path_factory.mktemp("lem_lv_grid")
    run, wall = gridmarkets("solve", "lem_lv_grid", "--out", out, "--no-plots")
    assert run.returncode == 0, run.stderr
    return run, wall, out, json.loads((out / "summary.json").read_text())


@pytest.mark.solve
def test_stdout_holds_only_the_summary_table(feeder_run):
    run, _, out, summary = feeder_run
    rows = assert_only_a_table(run.stdout, "lem_lv_grid (lem)", out)
    shown = {key: value for key, value, *_ in rows}
    # every KPI and every stage of summary.json, and nothing that is not in it
    assert set(summary["kpis"]) <= set(shown)
    assert {f"seconds: {stage}" for stage in summary["timings"]} <= set(shown)
    checks = summary["ac_check"].items()
    scalar_checks = {f"ac_check.{k}" for k, v in checks if not isinstance(v, list | dict)}
    fixed = {"status", "objective", "gap", "variables", "binaries", "constraints"}
    assert set(shown) == fixed | set(summary["kpis"]) | scalar_checks | {
        f"seconds: {stage}" for stage in summary["timings"]
    }
    assert shown["status"] == summary["status"] == "optimal"


@pytest.mark.solve
def test_the_log_goes_to_stderr_stage_by_stage(feeder_run):
    run = feeder_run[0]
    for message in ("loading the network 1-LV-rural1--0-sw", "building the lem model", "solving"):
        assert message in run.stderr
    assert "Running HiGHS" not in run.stderr  # the banner is DEBUG: only with --verbose


@pytest.mark.solve
def test_stage_times_sum_to_the_measured_wall_time(feeder_run):
    """The stages (startup, read, load, build, solve, ac_check, finish, write) cover the
    run: their sum is the wall time the test measures around the process, within 10 %."""
    _, wall, _, summary = feeder_run
    timings = summary["timings"]
    stages = {k: v for k, v in timings.items() if k != "total"}
    assert list(stages) == [
        "startup",
        "read",
        "load",
        "build",
        "solve",
        "ac_check",
        "finish",
        "write",
    ]
    assert timings["total"] == pytest.approx(sum(stages.values()))
    assert abs(timings["total"] - wall) <= 0.1 * wall, (timings, wall)
    # the solver's own times are part of the build and solve stages
    assert summary["solve_seconds"] <= stages["solve"]


def gridmarkets_on_a_terminal(*args) -> tuple[str, str, float]:
    """Run the command with stderr on a pseudo-terminal (where progress is drawn) and
    stdout on a pipe; return stdout, what the terminal received, and the wall time."""
    master, slave = pty.openpty()
    received: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the last writer closed the terminal
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=drain)
    env = {**os.environ, "MPLBACKEND": "Agg", "COLUMNS": "100"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "gridmarkets", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
        env=env,
    )
    os.close(slave)
    reader.start()
    stdout, _ = process.communicate(timeout=900)
    wall = time.perf_counter() - started
    reader.join(timeout=60)
    os.close(master)
    assert process.returncode == 0, b"".join(received).decode(errors="replace")[-3000:]
    return stdout, b"".join(received).decode(errors="replace"), wall


@pytest.mark.solve
def test_rolling_horizon_replans_show_progress_and_are_in_the_stage_times(tmp_path):
    """prosumer_week_mpc re-plans 168 times: on a terminal a progress bar counts the
    re-plans; the solve stage holds every re-plan (the model's own replan_seconds); the
    stages still add up to the wall time; stdout is the JSON summary alone."""
    stdout, terminal, wall = gridmarkets_on_a_terminal(
        "solve", "prosumer_week_mpc", "--out", tmp_path, "--json", "--no-plots"
    )
    summary = json.loads(stdout)
    timings = summary["timings"]
    assert summary["kpis"]["replans"] == 168
    assert timings["solve"] >= summary["kpis"]["replan_seconds"] > 0
    assert abs(timings["total"] - wall) <= 0.1 * wall, (timings, wall)
    assert "re-plans (rolling horizon)" in terminal
    counts = {int(k) for k in re.findall(r"(\d+)/168", terminal)}
    assert len(counts) > 1 and max(counts) > 84  # the bar moved through the week


@pytest.mark.solve
def test_json_prints_the_summary_json_and_nothing_else(tmp_path):
    run, _ = gridmarkets("solve", CASES / "lem_copperplate.yaml", "--out", tmp_path, "--json")
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)  # fails on any other text, such as HiGHS's banner
    assert printed == json.loads((tmp_path / "summary.json").read_text())
    assert printed["case"] == "lem_copperplate" and printed["status"] == "optimal"


@pytest.mark.solve
def test_verbose_routes_the_highs_log_through_stderr(tmp_path):
    run, _ = gridmarkets(
        "--verbose", "solve", CASES / "lem_copperplate.yaml", "--out", tmp_path, "--json"
    )
    assert run.returncode == 0, run.stderr
    json.loads(run.stdout)  # stdout still holds only the summary
    assert "Running HiGHS" in run.stderr  # the banner, through logging
    assert "Model status" in run.stderr  # HiGHS's own log of the solve


@pytest.mark.solve
def test_quiet_leaves_stderr_empty_on_success(tmp_path):
    run, _ = gridmarkets("--quiet", "solve", CASES / "lem_copperplate.yaml", "--out", tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert_only_a_table(run.stdout, "lem_copperplate (lem)", tmp_path)


@pytest.mark.solve
def test_a_library_solve_writes_nothing_to_stdout():
    """HiGHS's banner is written from C on file descriptor 1 by the first Highs of a
    process: a notebook or script that clears a market sees nothing on stdout, also
    when an infeasible model is diagnosed (HiGHS's IIS)."""
    code = (
        "import pandas as pd, pyomo.environ as pyo\n"
        "from gridmarkets.models import lem\n"
        "from gridmarkets.errors import InfeasibleError\n"
        "from gridmarkets.solvers import solve\n"
        "bids = pd.DataFrame({'participant': ['pv', 'home'], 'side': ['sell', 'buy'],"
        " 'quantity_kw': [5.0, 4.0], 'price': [20.0, 300.0]})\n"
        "assert abs(lem.clear(bids).kpis['traded_kwh'] - 4.0) < 1e-6\n"
        "m = pyo.ConcreteModel(); m.x = pyo.Var(bounds=(0, 1))\n"
        "m.c = pyo.Constraint(expr=m.x >= 2); m.o = pyo.Objective(expr=m.x)\n"
        "try:\n    solve(m)\nexcept InfeasibleError as err:\n"
        "    assert 'c' in str(err)\nelse:\n    raise AssertionError('not infeasible')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""


@pytest.mark.unit
def test_verbose_and_quiet_together_are_an_input_error():
    run, _ = gridmarkets("--verbose", "--quiet", "cases")
    assert run.returncode == 2 and "exclude each other" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.solve
def test_no_plots_writes_the_same_tables_without_plots(tmp_path):
    with_plots, without = tmp_path / "with", tmp_path / "without"
    for out, flags in ((with_plots, []), (without, ["--no-plots"])):
        run, _ = gridmarkets("solve", CASES / "lem_copperplate.yaml", "--out", out, *flags)
        assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (with_plots / "plots").glob("*.png"))
    assert not (without / "plots").exists()
    tables = sorted(p.name for p in with_plots.glob("*.csv"))
    assert tables == sorted(p.name for p in without.glob("*.csv")) and tables
    for name in tables:
        assert (with_plots / name).read_text() == (without / name).read_text()


@pytest.mark.solve
def test_a_sweep_prints_only_its_summary(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "base": str(CASES / "lem_copperplate.yaml"),
                "design": "grid",
                "parameters": {"participants.chp_c.blocks.0.price": {"values": [60, 120]}},
                "kpis": ["social_welfare"],
            }
        )
    )
    run, _ = gridmarkets("sweep", study, "--workers", 1, "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert "HiGHS" not in run.stdout and "Running" not in run.stdout
    lines = run.stdout.splitlines()
    # the title, the KPI table, its caption (statuses) and where the results went
    assert lines[0].strip() == "study"
    assert all(line and line[0] in BOX and line[-1] in BOX for line in lines[1:-2])
    assert lines[-2].strip() == "optimal: 2"
    assert lines[-1] == f"results written to {tmp_path / 'out'}/"
    assert table_rows(run.stdout)[1][0] == "social_welfare"


@pytest.mark.unit
def test_version_names_the_installed_versions():
    import highspy
    import pyomo.version

    run, _ = gridmarkets("--version")
    assert run.returncode == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert run.stdout.startswith(f"gridmarkets {project} (")
    assert f"pyomo {pyomo.version.version}" in run.stdout
    assert f"highspy {highspy.Highs().version()}" in run.stdout
    assert run.stdout.count("\n") == 1


@pytest.mark.unit
def test_help_shows_the_defaults():
    run, _ = gridmarkets("solve", "--help")
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "--out <path> Output folder. [default: (results/<case name>)]" in text
    for option in ("--json", "--no-plots", "--set", "--time-limit", "--mip-gap", "--threads"):
        assert option in text
    run, _ = gridmarkets("--help")
    for option in ("--version", "--verbose", "--quiet"):
        assert option in run.stdout


@pytest.mark.unit
def test_cases_shows_whole_first_sentences():
    """Every word of each case's first sentence appears whole (wrapped, never cut)."""
    run, _ = gridmarkets("cases", columns=80)
    assert run.returncode == 0
    rows = table_rows(run.stdout)
    words = set(" ".join(" ".join(row) for row in rows).split())
    for path in sorted(CASES.glob("*.yaml")):
        description = " ".join(yaml.safe_load(path.read_text()).get("description", "").split())
        first = description.split(". ")[0]
        assert path.stem in words
        missing = [word for word in first.split() if word not in words]
        assert not missing, (path.stem, missing)
    assert "…" not in run.stdout


@pytest.mark.unit
@pytest.mark.parametrize("command", [["--help"], ["cases"], ["solve", "--help"]])
def test_light_commands_import_no_heavy_library(command):
    """--help and cases start fast because they import none of the heavy libraries
    (pydantic is not among them: typer itself imports it)."""
    heavy = ["pyomo", "pandapower", "pandas", "highspy", "matplotlib", "dask", "numpy"]
    code = (
        "import sys\n"
        f"sys.argv = ['gridmarkets', *{command!r}]\n"
        "from gridmarkets.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "LOADED []" in run.stderr, run.stderr
