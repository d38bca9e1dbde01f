"""The ``gridmarkets`` command line: solve a case, list cases and networks, print the schema.

Exit codes: 0 solved, 1 no solution (infeasible, unbounded, a limit without
incumbent; the diagnosis is printed), 2 bad input. No traceback for a user error.

stdout holds only a command's result (the summary, a table, the schema); the log,
progress bars and errors go to stderr (:mod:`gridmarkets.log`). The heavy libraries
(Pyomo, pandapower, pandas, HiGHS, matplotlib, Dask) are imported by the commands that
need them, so ``gridmarkets --help`` and ``gridmarkets cases`` start at once.
"""

from __future__ import annotations

import json
import sys
import time
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from gridmarkets import log

# the summary's "startup" stage counts from the start of the process
STARTED = time.perf_counter() - log.process_age_seconds()

import typer  # noqa: E402

from gridmarkets import __version__  # noqa: E402
from gridmarkets.errors import GridmarketsError  # noqa: E402

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="Optimization models for distribution-level electricity markets.\n\n"
    "stdout holds only a command's result; the log (stage by stage), progress bars and "
    "errors go to stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text: "[...]" is shown, not parsed
)
VERSIONED = ("pyomo", "highspy", "pandapower")


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (results) or stderr (messages: the log's own)."""
    if stderr:
        return log.stderr_console()
    from rich.console import Console

    return Console()


def _user_errors(command):
    """Print a GridmarketsError's message and exit with its code, without a traceback."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GridmarketsError as e:
            err = console(stderr=True)
            err.print("[bold red]error:[/]", end=" ")
            err.print(str(e), highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return run


def version_text() -> str:
    """``gridmarkets X (Pyomo X, highspy X, pandapower X; Python X)`` from the installed
    distributions' metadata (nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} (not installed)"

    python = ".".join(map(str, sys.version_info[:3]))
    return f"gridmarkets {__version__} ({', '.join(map(installed, VERSIONED))}; Python {python})"


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_text() + "\n")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of gridmarkets and its solvers and exit.",
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also debug messages and HiGHS's log.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")
    ] = False,
) -> None:
    """Options for every command: the log's verbosity and --version."""
    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet exclude each other")
    log.configure(log.VERBOSE if verbose else log.QUIET if quiet else log.NORMAL)


def resolve_case_path(case: str) -> Path:
    """A case file by path, or a shipped case by its name (``lem_lv_grid``)."""
    from gridmarkets.case import shipped_cases_dir

    path = Path(case)
    if path.is_file():
        return path
    shipped = shipped_cases_dir() / f"{path.stem}.yaml"
    return shipped if shipped.is_file() and path.parent == Path(".") else path


@app.command()
@_user_errors
def solve(
    case: Annotated[str, typer.Argument(help="Case file, or the name of a shipped case.")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder.", show_default="results/<case name>"),
    ] = None,
    time_limit: Annotated[
        float | None, typer.Option(help="Solver time limit (s).", show_default="none")
    ] = None,
    mip_gap: Annotated[
        float | None, typer.Option(help="Relative MIP gap.", show_default="HiGHS's 1e-4")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="HiGHS threads.", show_default="HiGHS's choice")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a case value: path.to.field=value (repeatable).", metavar="P=V"
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")
    ] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write no plots.")] = False,
) -> None:
    """Solve CASE and write summary.json, CSV tables and plots.

    The summary times every stage (startup, read, load, build, solve, ac_check, finish,
    write); their total is the command's wall time.
    """
    from gridmarkets import pipeline, results
    from gridmarkets.case import load_case
    from gridmarkets.inputs import output_folder, solve_options

    timer = log.StageTimer()
    timer.add("startup", time.perf_counter() - STARTED)
    path = resolve_case_path(case)
    with timer.stage("read", f"reading {path}"):
        spec = load_case(path, set_ or [])
    options = solve_options(time_limit=time_limit, mip_gap=mip_gap, threads=threads)
    target = output_folder(out_dir or Path("results") / spec.name)
    result = pipeline.run_case(spec, options)
    with timer.stage("write", f"writing {target}/"):
        result.timings = {**timer.seconds, **result.timings}
        results.write(result, target, spec.name, plots=not no_plots)
    result.timings["write"] = timer.seconds["write"]
    written = json.loads((target / "summary.json").read_text())  # its tables' types
    summary = {**written, **result.summary(spec.name)}  # now with "write"
    (target / "summary.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        print_summary(summary, target)


def print_summary(summary: dict[str, Any], target: Path) -> None:
    """The summary as a table on stdout: status, size, stage times, KPIs, AC check."""
    from rich.table import Table

    table = Table(title=f"{summary['case']} ({summary['model']})", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value", justify="right")
    for key in ("status", "objective", "gap", "variables", "binaries", "constraints"):
        table.add_row(key, _fmt(summary[key]))
    for stage, seconds in summary["timings"].items():
        table.add_row(f"seconds: {stage}", _fmt(seconds))
    for key, value in summary["kpis"].items():
        table.add_row(key, _fmt(value))
    for key, value in (summary.get("ac_check") or {}).items():
        if not isinstance(value, list | dict):
            table.add_row(f"ac_check.{key}", _fmt(value))
    out = console()
    out.print(table)
    out.print(f"results written to {target}/", highlight=False)


def _fmt(value) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else str(value)


@app.command()
@_user_errors
def cases() -> None:
    """List the shipped case files with the first sentence of their description."""
    from rich.table import Table

    from gridmarkets.case import read_yaml, shipped_cases_dir

    table = Table("case", "model", "description")
    for path in sorted(shipped_cases_dir().glob("*.yaml")):
        data = read_yaml(path)
        table.add_row(path.stem, str(data.get("model", "?")), first_sentence(data))
    console().print(table)


def first_sentence(data: dict[str, Any]) -> str:
    """A case file's description up to its first full stop (whole, never cut)."""
    text = " ".join(str(data.get("description", "")).split())
    return text.split(". ")[0]


@app.command()
@_user_errors
def networks(
    all_: Annotated[
        bool,
        typer.Option(
            "--all", help="Also the SimBench codes that do not load as one radial feeder."
        ),
    ] = False,
) -> None:
    """List the networks a case may use as its feeder."""
    from rich.table import Table

    from gridmarkets.networks import available_networks

    table = Table("network", "source")
    for name, source in available_networks(feeders_only=not all_):
        table.add_row(name, source)
    console().print(table)


@app.command()
@_user_errors
def schema() -> None:
    """Print the JSON Schema of case files."""
    from gridmarkets import registry

    sys.stdout.write(json.dumps(registry.json_schema(), indent=2) + "\n")


@app.command()
@_user_errors
def sweep(
    study: Annotated[Path, typer.Argument(help="Study file (YAML).")],
    workers: Annotated[
        int | None,
        typer.Option(help="Local worker processes.", show_default="the machine's cores"),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (tcp://host:port).", show_default="none"),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder.", show_default="results/<study name>"),
    ] = None,
) -> None:
    """Run STUDY's scenarios (resumable): write study.sqlite, scenarios.csv and plots.

    Exit 1 when a scenario raised or was lost with its worker, or none has a solution.
    """
    from gridmarkets import batch
    from gridmarkets.inputs import output_folder
    from gridmarkets.study import load_study

    spec = load_study(study)
    target = output_folder(out_dir or Path("results") / spec.name)
    err = console(stderr=True)
    try:
        frame = batch.run(
            spec,
            workers=workers,
            scheduler=scheduler,
            out=target,
            progress=log.showing_progress(),
        )
    except KeyboardInterrupt:
        err.print(f"interrupted: finished scenarios are kept in {target}/; run again to resume")
        raise typer.Exit(130) from None
    out = console()
    out.print(batch.summary_table(frame, spec))
    out.print(f"results written to {target}/", highlight=False)
    failed = batch.failures(frame)
    if failed:
        err.print(f"[bold red]error:[/] {failed}", highlight=False)
        raise typer.Exit(1)


def main() -> None:
    """Entry point for ``python -m gridmarkets``."""
    app()
