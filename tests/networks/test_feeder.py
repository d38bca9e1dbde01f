"""Loading nets and the topology rules: switches, merges, loops, sources, islands."""

from __future__ import annotations

import re

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pytest

from gridmarkets.errors import NetworkError
from gridmarkets.networks import available_networks, feeder_from_net, load, net_injections
from gridmarkets.networks.feeder import BUILTINS

pytestmark = pytest.mark.unit


def _is_tree(feeder) -> bool:
    reached = {feeder.root}
    for a, b in zip(feeder.branches["from_bus"], feeder.branches["to_bus"], strict=True):
        if a not in reached or b in reached:
            return False
        reached.add(b)
    return reached == set(feeder.buses.index)


@pytest.mark.parametrize("name", [*BUILTINS, "cigre_mv", "oberrhein"])
def test_builtins_load_as_trees(name):
    feeder = load(name)
    assert _is_tree(feeder)
    assert len(feeder.branches) == len(feeder.buses) - 1
    assert (feeder.branches[["r_pu", "x_pu"]] >= 0).all().all()


def test_simbench_loads_with_its_limits(simbench_lv):
    assert _is_tree(simbench_lv)
    net = simbench_lv.net
    assert simbench_lv.buses["vmax_pu"].to_numpy() == pytest.approx(
        net.bus.loc[simbench_lv.buses.index, "max_vm_pu"].to_numpy()
    )


def test_lookups_agree_with_branches(case33):
    for bus in case33.buses.index[1:]:
        path = case33.path_to_root(bus)
        assert case33.branches.at[path[-1], "from_bus"] == case33.root
        assert case33.branches.at[path[0], "to_bus"] == bus
        parent = case33.branches.at[path[0], "from_bus"]
        assert bus in case33.children[parent]


def test_json_file_and_mapping_spec(tmp_path):
    path = tmp_path / "net.json"
    pp.to_json(pn.case33bw(), str(path))
    feeder = load({"source": "file", "path": str(path), "options": {"s_base_kva": 500}})
    reference = load("case33bw")
    assert feeder.s_base_kva == 500
    ratio = reference.s_base_kva / feeder.s_base_kva
    assert feeder.branches["r_pu"].to_numpy() == pytest.approx(
        reference.branches["r_pu"].to_numpy() / ratio
    )


def test_unknown_name_lists_close_matches():
    with pytest.raises(NetworkError, match="case33bw"):
        load("case33")


def test_available_networks_lists_builtins_and_simbench():
    names = [name for name, _ in available_networks()]
    assert "case33bw" in names and "1-LV-rural1--0-sw" in names


def test_closed_tie_switch_is_a_loop_naming_buses_and_switch():
    net = pn.case33bw()
    tie = int(net.line.index[~net.line["in_service"]][0])
    net.line.loc[tie, "in_service"] = True
    switch = pp.create_switch(net, net.line.at[tie, "from_bus"], tie, et="l", closed=True)
    with pytest.raises(NetworkError, match="closes a loop") as err:
        feeder_from_net(net)
    message = str(err.value)
    loop = [int(b) for b in re.search(r"passes buses \[([^\]]*)\]", message)[1].split(",")]
    pairs = {frozenset(p) for p in zip(net.line["from_bus"], net.line["to_bus"], strict=True)}
    assert all(frozenset(p) in pairs for p in zip(loop, loop[1:], strict=False))
    assert f"[{switch}]" in message
    net.switch.loc[switch, "closed"] = False
    assert _is_tree(feeder_from_net(net))


def test_closed_bus_switch_merges_buses_and_keeps_their_loads():
    net = pn.create_cigre_network_lv()
    ties = net.switch[(net.switch["et"] == "b") & net.switch["closed"]]
    feeder = feeder_from_net(net)
    for a, b in zip(ties["bus"], ties["element"], strict=True):
        assert feeder.merged[a] == feeder.merged[b] == min(a, b)
        assert max(a, b) not in feeder.buses.index
    p, _ = net_injections(feeder)
    assert p.sum() == pytest.approx(-(net.load["p_mw"] * net.load["scaling"]).sum() * 1000)


def test_out_of_service_lines_are_dropped(case33):
    net = case33.net
    out = set(net.line.index[~net.line["in_service"]])
    assert out and not out & set(case33.branches.loc[case33.branches["kind"] == "line", "element"])


def test_open_line_to_a_loaded_bus_is_an_island_error():
    net = pn.case33bw()
    leaf = int(net.line.index[net.line["to_bus"] == 17][0])
    net.line.loc[leaf, "in_service"] = False
    with pytest.raises(NetworkError, match=r"island without a source.*17"):
        feeder_from_net(net)


def test_two_external_grids_are_named():
    net = pn.case33bw()
    pp.create_ext_grid(net, 20)
    with pytest.raises(NetworkError, match=r"2 external grids \(0 at bus 0, 1 at bus 20\)"):
        feeder_from_net(net)


def test_missing_impedance_names_the_line():
    net = pn.case33bw()
    net.line.loc[7, "x_ohm_per_km"] = np.nan
    with pytest.raises(NetworkError, match="line 7 has no impedance"):
        feeder_from_net(net)


def test_profiles_conserve_the_simbench_totals(simbench_lv):
    import simbench

    from gridmarkets.networks import feeder_profiles

    table = feeder_profiles(simbench_lv, start=96, periods=8, resolution_minutes=30)
    raw = simbench.get_absolute_values(simbench_lv.net, profiles_instead_of_study_cases=True)
    load_kw = raw[("load", "p_mw")].iloc[96:112].sum(axis=1).to_numpy() * 1000
    expected = load_kw.reshape(8, 2).mean(axis=1)
    assert table.groupby("period")["load_p_kw"].sum().to_numpy() == pytest.approx(expected)
