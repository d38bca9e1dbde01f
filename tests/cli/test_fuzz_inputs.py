"""Every shipped case and study, broken at random, through the command line.

Property: whatever the mutation, ``gridmarkets solve`` (``sweep`` for studies) ends with
exit 0, 1 or 2, prints no traceback and no numpy repr, within a bounded time and memory.
Mutations: values dropped, retyped, negated, enlarged, made extreme (1e300, 1e-300,
-0.0) or non-finite (nan, inf), dates made impossible or far, ids moved (a bus
anywhere, a participant's key repeated), values nested deeply; lines duplicated, the
file truncated, re-encoded (UTF-16, Latin-1, a NUL byte), an alias bomb planted.

Budget (CI): a fixed seed (``derandomize``) and ``GRIDMARKETS_FUZZ_EXAMPLES`` examples
(default 200: about 70 s on two shared cores). The small shipped cases are solved in
full (``--time-limit 10``). The cases on a SimBench feeder and the studies stop once
the input boundary has passed (a case validated, its feeder loaded, its buses and its
size checked: ``CaseRun.start``; a study's every scenario validated), since solving
them takes 15-30 s each.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from cli_run import paths
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gridmarkets import batch, pipeline
from gridmarkets.cli import app

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted((ROOT / "data" / "cases").glob("*.yaml"))
STUDIES = sorted((ROOT / "data" / "studies").glob("*.yaml"))
FAST = {
    "aggregator_reactive_groups",
    "aggregator_three_homes",
    "community_islanded",
    "community_village",
    "lem_copperplate",
    "p2p_community",
    "p2p_feeder",
    "p2p_full",
    "p2p_hybrid",
    "prosumer_home",
    "prosumer_islanded",
}
EXAMPLES = int(os.environ.get("GRIDMARKETS_FUZZ_EXAMPLES", "200"))
SECONDS_PER_EXAMPLE = 90
MAX_RSS_GB = 4

pytestmark = pytest.mark.slow


class BoundaryPassed(Exception):
    """Raised by the test's runner once a slow case or a study has passed the input
    boundary (it is not solved)."""


NUMBERS = st.sampled_from([0, -0.0, 1e-300, -1e300, 1e300, 1e16, -1, 2**63, float("nan")])
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
DATES = st.sampled_from(
    [
        "2016-13-45",
        "2016-02-30",
        "9999-12-31T23:00:00",
        "0001-01-01",
        "2016-12-31 23:45",
        dt.datetime(9999, 12, 31, 23),
        "yesterday",
        20160601,
    ]
)
REPLACEMENTS = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=6),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-5, 5), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    NUMBERS,
    DATES,
)
DATA_KINDS = [
    "drop",
    "retype",
    "negate",
    "enlarge",
    "extreme",
    "non_finite",
    "date",
    "bus",
    "nest",
    "rename",
]
TEXT_KINDS = ["duplicate_line", "truncate", "utf16", "latin1", "nul", "alias_bomb"]


def mutate_data(data: dict, kind: str, draw) -> dict:
    """One data mutation at a drawn location (the data is a fresh copy)."""
    locations = list(paths(data))
    if kind == "date":
        data.setdefault("horizon", {})["start"] = draw(DATES)
        return data
    if kind == "bus":
        buses = [p for p in locations if p[-1] == "bus"] or [("participants", "x", "bus")]
        location = draw(st.sampled_from(buses))
        value = draw(st.sampled_from([-1, 10**6, 2**40, "5", 1.5, None, True]))
        return set_at(data, location, value)
    location = draw(st.sampled_from(locations))
    value = get_at(data, location)
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "drop":
        parent = get_at(data, location[:-1]) if len(location) > 1 else data
        del parent[location[-1]]
        return data
    if kind == "rename" and isinstance(get_at(data, location[:-1]), dict) and len(location) > 1:
        parent = get_at(data, location[:-1])
        other = draw(st.sampled_from(sorted(map(str, parent))))
        parent[f"{other}_"] = parent.pop(location[-1])  # a near-duplicate id
        return data
    replacement = {
        "retype": lambda: draw(REPLACEMENTS),
        "negate": lambda: -value if numeric else value,
        "enlarge": lambda: value * 10**7 if numeric else value,
        "extreme": lambda: draw(NUMBERS),
        "non_finite": lambda: draw(NON_FINITE),
        "nest": lambda: [[[[value]]]] if draw(st.booleans()) else {"a": {"b": {"c": value}}},
    }.get(kind, lambda: value)()
    return set_at(data, location, replacement)


def get_at(data, location):
    node = data
    for key in location:
        node = node[key]
    return node


def set_at(data, location, value):
    node = data
    for key in location[:-1]:
        if not isinstance(node, dict | list):
            return data
        node = node[key] if not isinstance(node, dict) else node.setdefault(key, {})
    if isinstance(node, dict) or isinstance(node, list) and isinstance(location[-1], int):
        node[location[-1]] = value
    return data


def mutate_text(text: str, kind: str, draw) -> bytes:
    """One text mutation: the file's bytes."""
    lines = text.splitlines(keepends=True)
    if kind == "duplicate_line":
        k = draw(st.integers(0, len(lines) - 1))
        return "".join(lines[: k + 1] + lines[k:]).encode()
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text)))].encode()
    if kind == "utf16":
        return text.encode("utf-16")
    position = draw(st.integers(0, len(text)))
    if kind == "latin1":
        return text[:position].encode() + b"\xe9" + text[position:].encode()
    if kind == "nul":
        return text[:position].encode() + b"\x00" + text[position:].encode()
    levels = "".join(f"b{k}: &b{k} [{', '.join([f'*b{k - 1}'] * 9)}]\n" for k in range(1, 10))
    return (text + "b0: &b0 [x, x, x, x, x, x, x, x, x]\n" + levels).encode()


FEEDERS: dict[str, object] = {}


def cached_feeder(case):
    """The feeder, loaded once per network (the test's budget; a changed network is a
    different key and loads afresh)."""
    if case.network is None:
        return None
    key = repr((sorted(case.network.locator().items()), case.network.phases))
    if key not in FEEDERS:
        FEEDERS[key] = pipeline.load_feeder(case)
    return FEEDERS[key]


@pytest.fixture(scope="module")
def patched():
    """run_case with feeders cached; slow cases and studies stop after the boundary."""
    real_run_case, real_batch_run = pipeline.run_case, batch.run

    def run_case(case, options=None, *, feeder=None):
        feeder = cached_feeder(case) if feeder is None else feeder
        if case.name not in FAST:
            pipeline.CaseRun.start(case, feeder)
            raise BoundaryPassed
        return real_run_case(case, options, feeder=feeder)

    def stop(*args, **kwargs):
        raise BoundaryPassed

    pipeline.run_case, batch.run = run_case, stop
    yield
    pipeline.run_case, batch.run = real_run_case, real_batch_run


def run_cli(path: Path, study: bool, out: Path) -> tuple[int, str, BaseException | None]:
    if study:
        args = ["sweep", str(path), "--workers", "1", "--out", str(out)]
    else:
        args = ["solve", str(path), "--out", str(out), "--time-limit", "10"]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output, result.exception


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(
    st.sampled_from([*CASES, *STUDIES]),
    st.sampled_from(DATA_KINDS + TEXT_KINDS),
    st.data(),
)
def test_a_mutated_shipped_file_exits_0_1_or_2_without_traceback(patched, source, kind, data):
    text = source.read_text()
    if kind in TEXT_KINDS:
        raw = mutate_text(text, kind, data.draw)
    else:
        mutated = mutate_data(yaml.safe_load(text), kind, data.draw)
        raw = yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True).encode()
    study = source in STUDIES
    with tempfile.TemporaryDirectory(prefix="h-19-fuzz-") as folder:
        path = Path(folder) / source.name  # the stem names the case: FAST or not
        path.write_bytes(raw)
        began = time.perf_counter()
        code, output, error = run_cli(path, study, Path(folder) / "out")
        seconds = time.perf_counter() - began
    if isinstance(error, BoundaryPassed):
        code, error = 0, None
    escaped = error is not None and not isinstance(error, SystemExit)
    assert not escaped, f"{kind} on {source.name}: {type(error).__name__}: {error}"
    assert code in (0, 1, 2), f"{kind} on {source.name}: exit {code}: {output}"
    assert "Traceback" not in output
    assert "np.float64(" not in output and "np.int64(" not in output, output
    assert seconds < SECONDS_PER_EXAMPLE, f"{kind} on {source.name}: {seconds:.0f} s"
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    assert rss_gb < MAX_RSS_GB, f"{kind} on {source.name}: {rss_gb:.1f} GB"


@pytest.mark.parametrize("source", [*CASES, *STUDIES], ids=lambda p: p.stem)
def test_every_shipped_file_passes_the_boundary_unchanged(source):
    """The reference the mutations start from: every shipped file loads as it is."""
    from gridmarkets.case import load_case
    from gridmarkets.study import load_study

    loaded = load_study(source) if source in STUDIES else load_case(source)
    assert loaded.name == source.stem
    if source in CASES:  # its buses on its feeder, its size within memory
        run = pipeline.CaseRun.start(loaded, cached_feeder(loaded))
        assert run.case is loaded
