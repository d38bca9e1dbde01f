"""Every failure of issue 19's hostile-input trial, driven through ``gridmarkets solve``.

Each test writes a file derived from a shipped case, runs the command line and asserts
exit 2 (bad input), no traceback, and that the message names the field, file, line or
element; the expected names, lines and numbers are computed in the test from the file
it wrote or from pandapower / SimBench themselves.
"""

from __future__ import annotations

import datetime as dt
import time
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridmarkets.cli import app

CASES = Path(__file__).resolve().parents[2] / "data" / "cases"

pytestmark = pytest.mark.unit


def gridmarkets(*args) -> tuple[int, str]:
    """Run the command in process; assert no exception escaped (no traceback)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not escaped, f"{type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def shipped(name: str) -> str:
    return (CASES / f"{name}.yaml").read_text()


def solve(tmp_path: Path, text: str | bytes, *extra, name: str = "case.yaml") -> tuple[int, str]:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return gridmarkets("solve", path, "--out", tmp_path / "out", *extra)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    lines = [k + 1 for k, line in enumerate(text.splitlines()) if needle in line]
    return lines[occurrence - 1]


def with_network_options(text: str, options: str) -> str:
    old = "network: {source: pandapower, name: case33bw}"
    assert old in text
    return text.replace(old, f"network: {{source: pandapower, name: case33bw, options: {options}}}")


# --- files that are not UTF-8 -----------------------------------------------------------


def test_a_utf16_file_is_named_as_utf16(tmp_path):
    code, message = solve(tmp_path, shipped("lem_copperplate").encode("utf-16"))
    assert code == 2
    assert "case.yaml" in message and "UTF-16" in message


def test_utf16_without_a_byte_order_mark_is_named(tmp_path):
    code, message = solve(tmp_path, shipped("lem_copperplate").encode("utf-16-le"))
    assert code == 2
    assert "line 1: a NUL byte (UTF-16 without a byte order mark" in message


def test_a_latin1_byte_names_its_line(tmp_path):
    text = shipped("lem_copperplate") + "# café\n"
    raw = text.encode("latin-1")
    code, message = solve(tmp_path, raw)
    assert code == 2
    bad_line = raw[: raw.index(b"\xe9")].count(b"\n") + 1
    assert f"line {bad_line}: byte 0xe9 is not UTF-8" in message


# --- dates and horizons -----------------------------------------------------------------


def test_an_impossible_date_names_the_value_and_line(tmp_path):
    text = shipped("lem_lv_grid").replace("start: 2016-06-01 00:00", "start: 2016-13-45")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "2016-13-45" in message and f"line {line_of(text, '2016-13-45')}" in message


def test_a_horizon_past_the_year_9999_names_start(tmp_path):
    text = shipped("lem_lv_grid").replace("2016-06-01 00:00", "9999-12-31T23:00:00")
    code, message = solve(tmp_path, text)
    assert code == 2
    with pytest.raises(OverflowError):  # the reference: Python cannot represent the end
        dt.datetime(9999, 12, 31, 23) + 96 * dt.timedelta(minutes=15)
    assert "horizon" in message and "start" in message and "9999" in message


def test_a_horizon_past_the_profiles_names_the_periods_without_data(tmp_path):
    import simbench

    net = simbench.get_simbench_net("1-LV-rural1--0-sw")
    steps = len(simbench.get_absolute_values(net, True)[("load", "p_mw")])
    start = dt.datetime(2016, 12, 31, 12)
    step = int((start - dt.datetime(2016, 1, 1)).total_seconds() // 900)
    first_missing = steps - step  # 15-minute periods: one step each
    assert 0 < first_missing < 96
    text = shipped("lem_lv_grid").replace("2016-06-01 00:00", "2016-12-31 12:00")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"horizon: periods {first_missing}-95 run past the end" in message


def test_periods_true_is_not_read_as_one(tmp_path):
    text = shipped("lem_copperplate").replace("periods: 4", "periods: true")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "horizon" in message and "periods: True" in message


# --- ids: buses, participants, networks -------------------------------------------------


def test_a_peer_on_a_bus_the_feeder_lacks_is_named(tmp_path):
    import pandapower.networks as pn

    missing = int(pn.case33bw().bus.index.max()) + 1
    text = shipped("p2p_feeder").replace("pv_17:   {bus: 17", f"pv_17:   {{bus: {missing}")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"peers.pv_17.bus: bus {missing}" in message and "case33bw" in message


def test_a_bus_on_a_case_without_a_network_is_refused(tmp_path):
    text = shipped("lem_copperplate").replace(
        "pv_a:   {side: sell,", "pv_a:   {bus: 5, side: sell,"
    )
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "participants.pv_a.bus: bus 5" in message and "no network" in message


@pytest.mark.parametrize("name", ["from_json", "runpp", "pp_elements", "Point", "_get_cables"])
def test_a_network_name_outside_the_documented_list_is_refused(tmp_path, name):
    text = shipped("p2p_feeder").replace("name: case33bw", f"name: {name}")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"network.name: {name!r} is not" in message


def test_a_duplicate_participant_id_is_refused(tmp_path):
    text = shipped("lem_copperplate").replace(
        "  home_3:", "  pv_a:   {side: buy, blocks: [{quantity_kw: 1, price: 99}]}\n  home_3:"
    )
    code, message = solve(tmp_path, text)
    assert code == 2
    first, second = line_of(text, "pv_a:"), line_of(text, "pv_a:", 2)
    assert f"line {second}" in message
    assert f"duplicate key 'pv_a' (first given on line {first})" in message


def test_a_duplicate_top_level_key_is_refused(tmp_path):
    text = shipped("lem_copperplate") + "model: lem\n"
    code, message = solve(tmp_path, text)
    assert code == 2
    first, second = line_of(text, "model: lem"), line_of(text, "model: lem", 2)
    assert f"line {second}, column 1: duplicate key 'model' (first given on line {first})" in (
        message
    )


def test_a_duplicate_key_inside_a_block_is_refused(tmp_path):
    text = shipped("lem_copperplate").replace(
        "{quantity_kw: 3.0, price: 90}", "{quantity_kw: 3.0, price: 90, price: 9}"
    )
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"line {line_of(text, 'price: 9}')}" in message and "duplicate key 'price'" in message


# --- network options and files ----------------------------------------------------------


def test_vmin_above_vmax_is_an_input_error(tmp_path):
    text = with_network_options(shipped("p2p_feeder"), "{vmin_pu: 1.2, vmax_pu: 0.8}")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "vmin_pu 1.2 is not below vmax_pu 0.8" in message


def test_vmin_above_the_default_vmax_is_an_input_error(tmp_path):
    from gridmarkets.networks.feeder import DEFAULT_VMAX_PU

    text = with_network_options(shipped("p2p_feeder"), f"{{vmin_pu: {DEFAULT_VMAX_PU + 0.1}}}")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"vmin_pu {DEFAULT_VMAX_PU + 0.1!r} is not below vmax_pu" in message


def test_a_voltage_limit_that_is_text_names_the_option(tmp_path):
    text = with_network_options(shipped("p2p_feeder"), '{vmin_pu: "abc"}')
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "network.options.vmin_pu" in message


def test_a_negative_power_base_is_an_input_error_not_infeasible(tmp_path):
    text = with_network_options(shipped("p2p_feeder"), "{s_base_kva: -100}")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "network.options.s_base_kva" in message and "infeasible" not in message


def test_a_network_file_that_is_not_a_net_is_named(tmp_path):
    (tmp_path / "net.json").write_text('{"bus": [1, 2, 3]}')
    text = shipped("p2p_feeder").replace(
        "network: {source: pandapower, name: case33bw}",
        f"network: {{source: file, path: {tmp_path / 'net.json'}}}",
    )
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"network file {tmp_path / 'net.json'}: not a pandapower net" in message


def test_a_network_file_that_is_not_json_is_named(tmp_path):
    (tmp_path / "net.json").write_text("model: lem\n")
    text = shipped("p2p_feeder").replace(
        "network: {source: pandapower, name: case33bw}",
        f"network: {{source: file, path: {tmp_path / 'net.json'}}}",
    )
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"network file {tmp_path / 'net.json'}: not JSON" in message


# --- profiles ---------------------------------------------------------------------------


def test_a_profile_csv_without_a_timestamp_column_is_named(tmp_path):
    (tmp_path / "load.csv").write_text("hour,load_kw\n0,1.0\n1,2.0\n")
    text = shipped("prosumer_home").replace(
        "load_kw: {csv: simbench_rural1_household.csv, column: load_kw, scale: 2.0, "
        "start_row: 672}",
        f"load_kw: {{csv: {tmp_path / 'load.csv'}, column: load_kw}}",
    )
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"profile file {tmp_path / 'load.csv'}: no 'timestamp' column" in message
    assert "hour, load_kw" in message


def test_a_profile_csv_without_the_column_names_field_and_file(tmp_path):
    text = shipped("prosumer_home").replace("column: load_kw", "column: heat_kw")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "load_kw.column: 'heat_kw' is not a column of simbench_rural1_household.csv" in message


def test_an_infinite_csv_scale_is_blamed_on_the_scale(tmp_path):
    text = shipped("prosumer_home").replace(
        "column: load_kw, scale: 2.0", "column: load_kw, scale: .inf"
    )
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "prosumers.home.load_kw" in message and "scale" in message
    assert "import_limit_kw" not in message


# --- numbers ----------------------------------------------------------------------------


def test_an_infinite_import_price_names_the_field(tmp_path):
    text = shipped("lem_lv_grid").replace("import_price: 180", "import_price: .inf")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "upstream.import_price" in message and "finite" in message


@pytest.mark.parametrize("value", [".nan", "-1e300"])
def test_a_load_that_is_not_a_usable_number_names_the_field(tmp_path, value):
    old = (
        "load_kw: {csv: simbench_rural1_household.csv, column: load_kw, scale: 2.0, start_row: 672}"
    )
    text = shipped("prosumer_home").replace(old, f"load_kw: {value}")
    assert text != shipped("prosumer_home")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "prosumers.home.load_kw" in message
    assert "coefficient" not in message


def test_time_limit_nan_is_refused(tmp_path):
    code, message = gridmarkets(
        "solve", CASES / "lem_copperplate.yaml", "--time-limit", "nan", "--out", tmp_path
    )
    assert code == 2
    assert "--time-limit: nan" in message


def test_messages_print_plain_numbers():
    """numpy values in messages print as numbers: a LEM bids table (pandas gives numpy
    floats) and the feeder's own option check through the Python API."""
    import numpy as np
    import pandas as pd

    from gridmarkets.errors import InputError, NetworkError
    from gridmarkets.models.lem import prepare_bids
    from gridmarkets.networks import load

    assert repr(np.float64(-1.0)) != "-1.0"  # what an unguarded message would print
    bids = pd.DataFrame(
        {"participant": ["a"], "side": ["buy"], "quantity_kw": [-1.0], "price": [10.0]}
    )
    with pytest.raises(InputError) as err:
        prepare_bids(bids)
    assert "quantity_kw -1.0 must not be negative" in str(err.value)
    with pytest.raises(NetworkError) as err:
        load({"source": "pandapower", "name": "case33bw", "options": {"vmin_pu": np.float64(1.1)}})
    assert "vmin_pu 1.1 is not below" in str(err.value) and "np." not in str(err.value)


# --- output folders ---------------------------------------------------------------------


def test_out_on_an_existing_file_is_an_input_error(tmp_path):
    (tmp_path / "taken").write_text("x")
    code, message = gridmarkets(
        "solve", CASES / "lem_copperplate.yaml", "--out", tmp_path / "taken"
    )
    assert code == 2
    assert "is a file, not a folder" in message
    assert (tmp_path / "taken").read_text() == "x"


def test_out_on_a_device_is_an_input_error():
    code, message = gridmarkets("solve", CASES / "lem_copperplate.yaml", "--out", "/dev/null")
    assert code == 2
    assert "--out /dev/null: is a device" in message


def test_out_where_nothing_can_be_written_is_an_input_error(tmp_path):
    (tmp_path / "file").write_text("x")
    code, message = gridmarkets(
        "solve", CASES / "lem_copperplate.yaml", "--out", tmp_path / "file" / "below"
    )
    assert code == 2
    assert "cannot write there" in message


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/h19-absolute", "a/b", ".."])
def test_a_case_name_is_a_name_not_a_path(tmp_path, name):
    text = f"name: {name!r}\n" + shipped("lem_copperplate")
    code, message = solve(tmp_path, text)
    assert code == 2
    assert f"name: Value error, {name!r} is a path, not a name" in message


# --- resources --------------------------------------------------------------------------


def test_an_alias_bomb_fails_fast_in_bounded_memory(tmp_path):
    levels = "".join(f"    a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]\n" for k in range(1, 10))
    bomb = "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + levels  # 10**10 values expanded
    text = shipped("p2p_feeder").replace(
        "network: {source: pandapower, name: case33bw}\n",
        f"network:\n  source: pandapower\n  name: case33bw\n  options:\n{bomb}",
    )
    tracemalloc.start()
    began = time.perf_counter()
    code, message = solve(tmp_path, text)
    seconds = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 2
    assert "its aliases expand it by" in message
    assert seconds < 10 and peak < 100 * 1024**2


def test_a_recursive_alias_is_refused(tmp_path):
    text = shipped("lem_copperplate") + "extra: &loop [*loop]\n"
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "an alias refers to a node that contains it" in message


def test_deep_nesting_is_refused(tmp_path):
    text = shipped("lem_copperplate") + "extra: " + "[" * 5000 + "]" * 5000 + "\n"
    code, message = solve(tmp_path, text)
    assert code == 2
    assert "nesting" in message or "nested" in message


def test_anchors_and_merge_keys_still_load(tmp_path):
    """YAML's own reuse (an anchor, a merge key overriding one key) is not refused as a
    duplicate: the case equals the shipped one it spells differently."""
    old = "blocks: [{quantity_kw: 2.0, price: 250}, {quantity_kw: 2.0, price: 20}]}"
    new = "blocks: [&b {quantity_kw: 2.0, price: 250}, {<<: *b, price: 20}]}"
    assert old in shipped("lem_copperplate")
    (tmp_path / "case.yaml").write_text(shipped("lem_copperplate").replace(old, new))
    (tmp_path / "lem_copperplate.yaml").write_text(shipped("lem_copperplate"))
    from gridmarkets.case import load_case

    spelled = load_case(tmp_path / "case.yaml").model_dump(exclude={"name"})
    assert spelled == load_case(tmp_path / "lem_copperplate.yaml").model_dump(exclude={"name"})


def test_a_year_of_periods_on_a_feeder_is_refused_with_its_size(tmp_path):
    """periods: 35136 (the schema's maximum) on lem_lv_grid, in a process limited to
    4 GB of address space (about 2 GB are mapped by the imports): refused before
    building, with the estimated size, where the unguarded build ran past 5 GB."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 1024**3, resource.RLIM_INFINITY))

    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gridmarkets", "solve", "lem_lv_grid", "--set",
         "horizon.periods=35136", "--out", str(tmp_path)],
        capture_output=True, text=True, preexec_fn=limit, timeout=600,
    )  # fmt: skip
    message = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "horizon.periods: 35136 periods on the feeder 1-LV-rural1--0-sw" in message
    assert "million variables and constraints" in message and "GB of memory available" in message
    assert time.perf_counter() - began < 120


def net_file_with(tmp_path: Path, table: str, edit) -> Path:
    """case33bw written by pandapower, one table's JSON rows edited by ``edit``."""
    import json

    import pandapower as pp
    import pandapower.networks as pn

    tree = json.loads(pp.to_json(pn.case33bw()))
    frame = json.loads(tree["_object"][table]["_object"])
    edit(frame)
    tree["_object"][table]["_object"] = json.dumps(frame)
    path = tmp_path / "net.json"
    path.write_text(json.dumps(tree))
    return path


def on_file(net: Path) -> str:
    return shipped("p2p_feeder").replace(
        "network: {source: pandapower, name: case33bw}", f"network: {{source: file, path: {net}}}"
    )


def test_a_network_file_missing_a_column_names_table_and_column(tmp_path):
    def drop_resistance(frame):
        k = frame["columns"].index("r_ohm_per_km")
        frame["columns"].pop(k)
        for row in frame["data"]:
            row.pop(k)

    net = net_file_with(tmp_path, "line", drop_resistance)
    code, message = solve(tmp_path, on_file(net))
    assert code == 2
    assert f"network file {net}: table line has no column r_ohm_per_km" in message


def test_a_network_file_with_a_load_at_a_missing_bus_names_the_load(tmp_path):
    import pandapower.networks as pn

    stray = int(pn.case33bw().bus.index.max()) + 100
    moved = []

    def move_the_fourth_load(frame):
        frame["data"][3][frame["columns"].index("bus")] = stray
        moved.append(frame["index"][3])

    net = net_file_with(tmp_path, "load", move_the_fourth_load)
    code, message = solve(tmp_path, on_file(net))
    assert code == 2
    assert f"network file {net}: load {moved[0]}: bus {stray} is not a bus" in message


def test_a_study_with_a_duplicate_key_is_refused_by_sweep(tmp_path):
    study = (CASES.parent / "studies" / "lem_chp_price.yaml").read_text() + "design: zip\n"
    (tmp_path / "study.yaml").write_text(study)
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "study.yaml"), "--out", tmp_path])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    first, second = line_of(study, "design:"), line_of(study, "design:", 2)
    assert f"line {second}, column 1: duplicate key 'design' (first given on line {first})" in (
        message
    )


def test_an_impossible_date_through_set_names_the_field(tmp_path):
    code, message = gridmarkets(
        "solve", CASES / "lem_lv_grid.yaml", "--set", "horizon.start=2016-02-30", "--out", tmp_path
    )
    assert code == 2
    assert "horizon.start" in message
