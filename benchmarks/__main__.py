"""Run every benchmark module and write benchmarks/RESULTS.md.

Usage: ``python -m benchmarks [--full] [--only NAME ...]``; with ``--only`` the other
sections of an existing results file are kept. Quick mode (the default)
takes a minute or two and is what CI runs as a smoke test: times are recorded, never
asserted. A module with a ``plot(rows, path)`` function also gets its scaling plot
(``RESULTS-<name>.png`` next to RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def modules(only: list[str] | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    return [n for n in names if not only or n.removeprefix("bench_") in only or n in only]


def machine() -> str:
    import highspy
    import pyomo

    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.platform()}, {cpu}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Pyomo {pyomo.version.version}, "
        f"HiGHS {highspy.Highs().version()}"
    )


def merged(existing: str, fresh: list[str]) -> list[str]:
    """The sections of an earlier results file, with the fresh ones replacing those of the
    same benchmark (``--only`` reruns some benchmarks without losing the others)."""
    old = ["## " + part for part in existing.split("\n## ")[1:]]
    by_name = {section.split("\n", 1)[0]: section for section in old}
    by_name.update({section.split("\n", 1)[0]: section for section in fresh})
    return [by_name[name] for name in sorted(by_name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--full", action="store_true", help="full sizes (slow)")
    parser.add_argument("--only", nargs="*", help="benchmark names (without bench_)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    sections, failed = [], []
    for name in modules(args.only):
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            rows = module.run(quick=not args.full)
        except Exception as err:  # report every benchmark, then fail
            failed.append(f"{name}: {type(err).__name__}: {err}")
            continue
        if not rows:
            failed.append(f"{name}: wrote no rows")
            continue
        seconds = time.perf_counter() - started
        doc = (module.__doc__ or "").strip()
        table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g")
        short = name.removeprefix("bench_")
        figure = ""
        if hasattr(module, "plot"):
            png = f"{args.out.stem}-{short}.png"
            module.plot(rows, args.out.parent / png)
            figure = f"![{short} scaling]({png})\n\n"
        sections.append(f"## {short}\n\n{doc}\n\n{table}\n\n{figure}({seconds:.0f} s)\n")
        print(f"{name}: {len(rows)} rows in {seconds:.1f} s", flush=True)
    mode = "full" if args.full else "quick"
    header = (
        f"# Benchmark results ({mode} mode)\n\nRegenerate with `python -m benchmarks"
        f"{' --full' if args.full else ''}`.\n\nMachine: {machine()}\n\n"
    )
    if args.only and args.out.exists():
        sections = merged(args.out.read_text(), sections)
    args.out.write_text(header + "\n".join(sections))
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
