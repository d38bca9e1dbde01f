"""The command line run the way a user runs it, for the tests of tests/cli: a fresh
process, plots off screen."""

import os
import re
import subprocess
import sys


def gridmarkets(*args, cwd=None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m gridmarkets ARGS`` in a fresh process, its output captured."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "gridmarkets", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def diagnosis_seconds(stderr: str) -> float:
    """The time a printed infeasibility diagnosis says it took (s)."""
    return float(re.search(r"(?:by|diagnosis \()[^\n]* in ([0-9.]+) s\b", stderr).group(1))


def paths(node, prefix=()):
    """Every location in a nested case (mappings and lists), as a tuple of keys."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        yield (*prefix, key)
        if isinstance(child, dict | list):
            yield from paths(child, (*prefix, key))
