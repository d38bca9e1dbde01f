"""The input boundary's parts (gridmarkets.inputs, the shared spec checks) on designed
inputs whose answer is known: alias expansion counted against a brute-force expansion,
duplicate keys against their lines, sizes, output folders and names."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from gridmarkets import inputs
from gridmarkets.errors import InputError
from gridmarkets.inputs import load_yaml, output_folder, read_text

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def expanded_by_brute_force(value) -> int:
    """Values in a loaded YAML document with every shared object counted again."""
    if isinstance(value, list):
        return 1 + sum(expanded_by_brute_force(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + expanded_by_brute_force(v) for v in value.values())
    return 1


def laughs(levels: int, width: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * width)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("levels", "width"), [(3, 5), (4, 7), (5, 10)])
def test_alias_expansion_is_counted_as_a_full_expansion_would(monkeypatch, levels, width):
    """The values aliases add = a brute-force expansion less the file's own distinct
    values: the root mapping, one key and one list per level, and the width's x's."""
    text = laughs(levels, width)
    added = expanded_by_brute_force(yaml.safe_load(text)) - (1 + 2 * levels + width)
    monkeypatch.setattr(inputs, "MAX_YAML_NODES", added)
    assert load_yaml(text, "ok.yaml") == yaml.safe_load(text)  # at the limit: loads
    monkeypatch.setattr(inputs, "MAX_YAML_NODES", added - 1)
    with pytest.raises(InputError, match=f"its aliases expand it by {added:,} values"):
        load_yaml(text, "bomb.yaml")


def test_a_large_file_without_aliases_is_not_an_alias_bomb(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_YAML_NODES", 10)
    text = "values: [" + ", ".join(["1.5"] * 1000) + "]\n"
    assert len(load_yaml(text, "big.yaml")["values"]) == 1000


def test_a_billion_laughs_is_refused_in_milliseconds():
    text = laughs(10, 10)  # 10**10 values expanded
    began = time.perf_counter()
    with pytest.raises(InputError, match="more than the 1,000,000 allowed"):
        load_yaml(text, "bomb.yaml")
    assert time.perf_counter() - began < 1.0


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\n", "c", 5, 3),
        ("a: [{x: 1, y: 2, x: 3}]\n", "x", 1, 1),
        ("1: a\n2: b\n1: c\n", 1, 3, 1),
    ],
)
def test_duplicate_keys_name_the_key_and_both_lines(text, key, line, first):
    with pytest.raises(InputError) as err:
        load_yaml(text, "f.yaml")
    assert f"line {line}," in str(err.value)
    assert f"duplicate key {key!r} (first given on line {first})" in str(err.value)


def test_a_merge_key_may_be_overridden():
    text = "base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 5}\n"
    assert load_yaml(text, "f.yaml")["use"] == {"x": 1, "y": 5}


@pytest.mark.parametrize("date", ["2016-02-30", "2015-02-29", "2016-00-10", "2016-06-31"])
def test_dates_that_do_not_exist_are_refused(date):
    import datetime as dt

    year, month, day = map(int, date.split("-"))
    with pytest.raises(ValueError):  # the reference: the calendar itself
        dt.date(year, month, day)
    with pytest.raises(InputError, match=f"{date!r} is not a date"):
        load_yaml(f"start: {date}\n", "f.yaml")


def test_a_leap_day_is_a_date():
    import datetime as dt

    assert load_yaml("start: 2016-02-29\n", "f.yaml")["start"] == dt.date(2016, 2, 29)


def test_read_text_refuses_files_above_the_limit(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"x" * 1001)
    assert read_text(path, "profile file", max_bytes=1001) == "x" * 1001
    with pytest.raises(InputError, match="1,001 bytes is more than the 1,000 read"):
        read_text(path, "profile file", max_bytes=1000)


def test_a_utf8_bom_is_read_as_utf8(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffmodel: lem\n".encode())
    assert read_text(path) == "model: lem\n"


def test_output_folder_creates_nested_folders_and_refuses_files(tmp_path):
    target = output_folder(tmp_path / "a" / "b")
    assert target.is_dir() and list(target.iterdir()) == []  # the probe leaves nothing
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match="is a file"):
        output_folder(tmp_path / "f")


@pytest.mark.parametrize("name", ["lem_lv_grid", "run-2.v1", "münchen"])
def test_names_that_are_names_pass(name):
    assert inputs.check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "..\\x", "a\x00b"])
def test_names_that_are_paths_are_refused(name):
    with pytest.raises(ValueError, match="is a path, not a name"):
        inputs.check_name(name)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"time_limit": float("nan")}, "--time-limit: nan"),
        ({"time_limit": 0.0}, "--time-limit: 0.0"),
        ({"mip_gap": -0.1}, "--mip-gap: -0.1"),
        ({"threads": 0}, "--threads: 0"),
    ],
)
def test_solver_options_must_be_finite_and_positive(options, message):
    with pytest.raises(InputError, match=message):
        inputs.solve_options(**options)
    assert inputs.solve_options(time_limit=5.0, mip_gap=0.0, threads=None) == {
        "time_limit": 5.0,
        "mip_gap": 0.0,
    }


def test_numbers_beyond_the_solvers_range_name_their_field():
    from gridmarkets.case import validate
    from gridmarkets.errors import CaseError
    from gridmarkets.specs.base import MAX_MAGNITUDE

    case = yaml.safe_load((ROOT / "data" / "cases" / "lem_copperplate.yaml").read_text())
    case["participants"]["pv_a"]["blocks"][0]["price"] = MAX_MAGNITUDE
    validate(case, "c.yaml")  # at the bound: accepted
    case["participants"]["pv_a"]["blocks"][0]["price"] = MAX_MAGNITUDE * 10
    with pytest.raises(CaseError, match=r"participants\.pv_a\.blocks\.0\.price: Value error"):
        validate(case, "c.yaml")
