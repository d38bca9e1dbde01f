"""Start-up of the command line: `gridmarkets --help` and `gridmarkets cases` against
`python -c pass` (the interpreter alone), and the module-level imports the command line
had before it imported the heavy libraries lazily (`gridmarkets.pipeline`, `.results`,
`.registry`, `.case`: pandas, Pyomo, HiGHS, pydantic), which every command paid.

Each command runs in a fresh process (``python -m gridmarkets ...``, stdout discarded);
``seconds`` is the median wall time of the runs (5 in quick mode, 15 in full mode),
``cpu_seconds`` the median user + system time of the process, and ``vs_python`` and
``cpu_vs_python`` divide them by those of ``python -c pass`` measured in the same run,
interleaved with the commands so a busy machine slows them alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "gridmarkets --help": [sys.executable, "-m", "gridmarkets", "--help"],
    "gridmarkets cases": [sys.executable, "-m", "gridmarkets", "cases"],
    "earlier imports": [
        sys.executable,
        "-c",
        "import gridmarkets.pipeline, gridmarkets.results, gridmarkets.registry, gridmarkets.case",
    ],
}


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, user + system CPU seconds) of one run of ``argv``."""
    before = os.times()
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def run(quick: bool = True) -> list[dict]:
    repeats = 5 if quick else 15
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, argv in COMMANDS.items():
            times[name].append(timed(argv))
    medians = {
        name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in times.items()
    }
    wall_python, cpu_python = medians["python -c pass"]
    return [
        {
            "command": name,
            "runs": repeats,
            "seconds": wall,
            "vs_python": wall / wall_python,
            "cpu_seconds": cpu,
            "cpu_vs_python": cpu / cpu_python if cpu_python > 0 else float("nan"),
        }
        for name, (wall, cpu) in medians.items()
    ]
