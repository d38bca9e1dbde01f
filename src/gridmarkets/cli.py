"""The ``gridmarkets`` command line: solve a case, list cases and networks, print the schema.

Exit codes: 0 solved, 1 no solution (infeasible, unbounded, a limit without
incumbent; the diagnosis is printed), 2 bad input. No traceback for a user error.
"""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gridmarkets import pipeline, registry, results
from gridmarkets.case import load_case, read_yaml, shipped_cases_dir
from gridmarkets.errors import GridmarketsError
from gridmarkets.inputs import output_folder, solve_options

app = typer.Typer(
    help="Optimization models for distribution-level electricity markets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _user_errors(command):
    """Print a GridmarketsError's message and exit with its code, without a traceback."""

    @wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GridmarketsError as e:
            err.print("[bold red]error:[/]", end=" ")
            err.print(str(e), highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return run


def resolve_case_path(case: str) -> Path:
    """A case file by path, or a shipped case by its name (``lem_lv_grid``)."""
    path = Path(case)
    if path.is_file():
        return path
    shipped = shipped_cases_dir() / f"{path.stem}.yaml"
    return shipped if shipped.is_file() and path.parent == Path(".") else path


@app.command()
@_user_errors
def solve(
    case: Annotated[str, typer.Argument(help="case file (or the name of a shipped case)")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="output folder [results/<case>]")
    ] = None,
    time_limit: Annotated[float | None, typer.Option(help="solver time limit (s)")] = None,
    mip_gap: Annotated[float | None, typer.Option(help="relative MIP gap")] = None,
    threads: Annotated[int | None, typer.Option(help="HiGHS threads")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a case value: path.to.field=value"),
    ] = None,
) -> None:
    """Solve CASE and write summary.json, CSV tables and plots."""
    spec = load_case(resolve_case_path(case), set_ or [])
    options = solve_options(time_limit=time_limit, mip_gap=mip_gap, threads=threads)
    target = output_folder(out_dir or Path("results") / spec.name)
    result = pipeline.run_case(spec, options)
    results.write(result, target, spec.name)
    _print_summary(result.summary(spec.name), target)


def _print_summary(summary: dict, target: Path) -> None:
    table = Table(title=f"{summary['case']} ({summary['model']})", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value", justify="right")
    for key in ("status", "objective", "gap", "variables", "binaries", "constraints"):
        table.add_row(key, _fmt(summary[key]))
    seconds = sum(summary[k] or 0 for k in ("build_seconds", "translate_seconds", "solve_seconds"))
    table.add_row("seconds (build+translate+solve)", _fmt(seconds))
    for key, value in summary["kpis"].items():
        table.add_row(key, _fmt(value))
    for key, value in (summary.get("ac_check") or {}).items():
        if not isinstance(value, list | dict):
            table.add_row(f"ac_check.{key}", _fmt(value))
    out.print(table)
    out.print(f"results written to {target}/")


def _fmt(value) -> str:
    return f"{value:,.4g}" if isinstance(value, float) else str(value)


@app.command()
@_user_errors
def cases() -> None:
    """List the shipped case files, one line each."""
    table = Table("case", "model", "description")
    for path in sorted(shipped_cases_dir().glob("*.yaml")):
        data = read_yaml(path)
        first = " ".join(str(data.get("description", "")).split()).split(". ")[0]
        line = first if len(first) <= 70 else first[:69] + "…"
        table.add_row(path.stem, str(data.get("model", "?")), line)
    out.print(table)


@app.command()
@_user_errors
def networks() -> None:
    """List the network names and SimBench codes a case may use."""
    from gridmarkets.networks import available_networks

    table = Table("network", "source")
    for name, source in available_networks():
        table.add_row(name, source)
    out.print(table)


@app.command()
@_user_errors
def schema() -> None:
    """Print the JSON Schema of case files."""
    sys.stdout.write(json.dumps(registry.json_schema(), indent=2) + "\n")


def main() -> None:
    """Entry point for ``python -m gridmarkets``."""
    app()


@app.command()
@_user_errors
def sweep(
    study: Annotated[Path, typer.Argument(help="study file (YAML)")],
    workers: Annotated[
        int | None, typer.Option(help="local worker processes [the machine's cores]")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address (tcp://host:port)")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="output folder [results/<study>]")
    ] = None,
) -> None:
    """Run STUDY's scenarios (resumable): write study.sqlite, scenarios.csv and plots.

    Exit 1 when a scenario raised or was lost with its worker, or none has a solution.
    """
    from gridmarkets import batch
    from gridmarkets.study import load_study

    spec = load_study(study)
    target = output_folder(out_dir or Path("results") / spec.name)
    try:
        frame = batch.run(spec, workers=workers, scheduler=scheduler, out=target)
    except KeyboardInterrupt:
        err.print(f"interrupted: finished scenarios are kept in {target}/; run again to resume")
        raise typer.Exit(130) from None
    out.print(batch.summary_table(frame, spec))
    out.print(f"results written to {target}/")
    failed = batch.failures(frame)
    if failed:
        err.print(f"[bold red]error:[/] {failed}", highlight=False)
        raise typer.Exit(1)
