"""From a pandapower network to a radial :class:`Feeder` in per unit.

The topology follows the switches: an open line or transformer switch removes its
branch, a closed bus-bus switch merges its buses (the lowest index is kept), elements
out of service are dropped. The result must be a tree rooted at the one external grid;
anything else is a :class:`~gridmarkets.errors.NetworkError` naming the element.

Elements at buses (:data:`INJECTION_SIGNS`) are read as balanced constant-power
injections: loads, static generators, storage and motors exactly as pandapower's
balanced power flow reads them; asymmetric loads and static generators as the sum of
their three phases (again as pandapower's balanced power flow does), and generators as
their active power with Q = 0 (their voltage control is not modelled); both with a
warning naming them. Elements in service that the feeder cannot represent
(:data:`UNMODELLED`: series impedances, three-winding transformers, wards, DC links,
FACTS devices) are refused with an error naming them.
"""

from __future__ import annotations

import difflib
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

from gridmarkets.errors import InputError, NetworkError
from gridmarkets.inputs import plain, read_text

DEFAULT_VMIN_PU = 0.95
DEFAULT_VMAX_PU = 1.05

ALIASES = {
    "cigre_mv": "create_cigre_network_mv",
    "cigre_lv": "create_cigre_network_lv",
    "oberrhein": "mv_oberrhein",
    "ieee33": "case33bw",
}

BUILTINS = {
    "case33bw": "IEEE 33-bus radial distribution feeder (Baran and Wu)",
    "create_cigre_network_mv": "CIGRE MV benchmark, 20 kV, two feeders (alias cigre_mv)",
    "create_cigre_network_lv": "CIGRE LV benchmark, 0.4 kV, three feeders (alias cigre_lv)",
    "mv_oberrhein": "MV Oberrhein, 20 kV; one substation's feeder (option ext_grid, alias "
    "oberrhein)",
    "create_kerber_landnetz_freileitung_1": "Kerber rural overhead-line LV network 1",
    "create_kerber_landnetz_freileitung_2": "Kerber rural overhead-line LV network 2",
    "create_kerber_landnetz_kabel_1": "Kerber rural cable LV network 1",
    "create_kerber_landnetz_kabel_2": "Kerber rural cable LV network 2",
    "create_kerber_dorfnetz": "Kerber village LV network",
    "create_kerber_vorstadtnetz_kabel_1": "Kerber suburban cable LV network 1",
    "create_kerber_vorstadtnetz_kabel_2": "Kerber suburban cable LV network 2",
    "ieee_european_lv_asymmetric": "IEEE European LV test feeder, 55 single-phase loads "
    "(for network.phases: three)",
}
"""The pandapower built-ins a case may name: nothing else of ``pandapower.networks`` is
called."""

# What a network JSON file may name in its ``_module``/``_class`` fields, checked before
# pandapower reads it (pandapower imports the module to look the class up): the net,
# pandas tables, the builtins pandapower writes (module -> classes); besides these, numpy
# scalar types and arrays and pandas indexes (``pandas.core.indexes.*``), looked up in
# the already imported numpy and pandas.
JSON_ALLOWED = {
    "pandapower.auxiliary": {"pandapowerNet"},
    "pandas": {"DataFrame", "Series"},
    "pandas.core.frame": {"DataFrame"},
    "pandas.core.series": {"Series"},
    "builtins": {"tuple", "set", "frozenset", "complex"},
}

# The SimBench grids (code without its scenario, switch variant) that load as one radial
# feeder: measured by loading scenario 0 of every LV and MV grid. The MV grids but urban
# have two parallel HV/MV transformers (a loop), and the HV, EHV and multi-level grids
# (one tried per level) several external grids.
SIMBENCH_FEEDERS = {
    *(
        (f"1-LV-{grid}", variant)
        for grid in ("rural1", "rural2", "rural3", "semiurb4", "semiurb5", "urban6")
        for variant in ("sw", "no_sw")
    ),
    ("1-MV-urban", "sw"),
}

# Networks whose own data need an option to become one radial feeder.
BUILTIN_OPTIONS = {"mv_oberrhein": {"ext_grid": 0}}

OPTIONS = {"vmin_pu", "vmax_pu", "s_base_kva", "ext_grid"}

# pandapower tables read as injections at buses, with the sign of their p_mw (positive
# into the grid): every table that :func:`net_injections` reads and ``run_ac`` replaces.
INJECTION_SIGNS = {
    "load": -1.0,
    "sgen": 1.0,
    "gen": 1.0,
    "storage": -1.0,
    "motor": -1.0,
    "asymmetric_load": -1.0,
    "asymmetric_sgen": 1.0,
}

# Read, but not as pandapower has them: a warning names each element.
APPROXIMATED = {
    "asymmetric_load": "read as balanced loads (the sum of the three phases' p and q)",
    "asymmetric_sgen": "read as balanced static generators (the sum of the three phases)",
    "gen": "read as active power injections with Q = 0 (voltage control is not modelled)",
}

# pandapower tables the feeder cannot represent: in service, they are an error.
UNMODELLED = (
    "trafo3w",
    "impedance",
    "ward",
    "xward",
    "dcline",
    "svc",
    "tcsc",
    "ssc",
    "vsc",
    "vsc_stacked",
    "vsc_bipolar",
    "line_dc",
    "source_dc",
    "load_dc",
)


@dataclass(frozen=True)
class Feeder:
    """A radial distribution feeder in per unit, built from a pandapower net.

    Sign convention (the one place it is stated): injections are positive into the
    grid. A load of 10 kW at a bus is an injection of -10 kW there; a PV unit producing
    4 kW is +4 kW.

    Attributes
    ----------
    name : where the feeder came from.
    buses : indexed by pandapower bus index (merged buses keep the lowest); columns
        vn_kv, vmin_pu, vmax_pu, g_pu and b_pu (shunt conductance and susceptance at
        1 pu voltage: line charging and conductance, bus shunts, transformer magnetising).
    branches : indexed 0..n-1 in breadth-first order from the root; columns from_bus,
        to_bus (oriented away from the root), r_pu, x_pu, b_pu and g_pu (a line's whole
        shunt susceptance and conductance, half of each at either end's bus, as in
        pandapower's pi model; 0 for transformers), ratio (off-nominal voltage
        ratio of a transformer, v_to = v_from / ratio before the drop; 1 for lines),
        rating_kva, kind ("line" or "trafo") and element (pandapower index).
    root : the bus of the external grid; root_vm_pu its voltage set point.
    s_base_kva : the per-unit power base.
    net : the pandapower net the feeder came from (not modified).
    merged : pandapower bus -> feeder bus, for every bus in the feeder.
    """

    name: str
    buses: pd.DataFrame
    branches: pd.DataFrame
    root: int
    root_vm_pu: float
    s_base_kva: float
    net: Any = field(repr=False)
    merged: dict[int, int] = field(repr=False)
    parent_branch: dict[int, int] = field(init=False, repr=False)
    children: dict[int, list[int]] = field(init=False, repr=False)
    order: list[int] = field(init=False, repr=False)
    from_pos: np.ndarray = field(init=False, repr=False)
    to_pos: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        branches = self.branches
        position = {bus: k for k, bus in enumerate(self.buses.index)}
        children: dict[int, list[int]] = {bus: [] for bus in self.buses.index}
        for parent, child in zip(branches["from_bus"], branches["to_bus"], strict=True):
            children[parent].append(child)
        values = {
            "parent_branch": dict(zip(branches["to_bus"], branches.index, strict=True)),
            "children": children,
            "order": [self.root, *branches["to_bus"]],
            "from_pos": branches["from_bus"].map(position).to_numpy(),
            "to_pos": branches["to_bus"].map(position).to_numpy(),
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def path_to_root(self, bus: int) -> list[int]:
        """Branches from ``bus`` up to the root (closest first)."""
        path = []
        while bus != self.root:
            branch = self.parent_branch[bus]
            path.append(branch)
            bus = self.branches.at[branch, "from_bus"]
        return path

    def position(self, buses) -> np.ndarray:
        """Row positions in ``buses`` of pandapower bus labels (merged ones mapped)."""
        index = self.buses.index
        return index.get_indexer([self.merged.get(b, b) for b in buses])


def available_networks(feeders_only: bool = False) -> list[tuple[str, str]]:
    """The pandapower built-ins and SimBench codes :func:`load` accepts, with a description.

    Parameters
    ----------
    feeders_only : only the SimBench codes known to load as one radial feeder
        (:data:`SIMBENCH_FEEDERS`); False: every SimBench code, the others described as
        not loading as one.
    """
    import simbench

    listed = [(name, text) for name, text in BUILTINS.items()]
    codes = [c for c in simbench.collect_all_simbench_codes() if "complete_data" not in c]
    for code in codes:
        if is_simbench_feeder(code):
            listed.append((code, "SimBench feeder (with a year of 15-minute profiles)"))
        elif not feeders_only:
            listed.append((code, "SimBench; not one radial feeder (several sources or a loop)"))
    return listed


def is_simbench_feeder(code: str) -> bool:
    """Whether the SimBench ``code`` is one of :data:`SIMBENCH_FEEDERS` (any scenario)."""
    grid, _, variant = code.partition("--")
    return (grid, variant.split("-", 1)[-1]) in SIMBENCH_FEEDERS


def load(spec: str | Mapping[str, Any]) -> Feeder:
    """Load a radial feeder from pandapower, SimBench or a pandapower JSON file.

    Parameters
    ----------
    spec : a pandapower.networks function name ("case33bw", "create_cigre_network_mv",
        aliases such as "cigre_mv", "cigre_lv", "oberrhein"), a SimBench code
        ("1-LV-rural1--0-sw"), a path to a pandapower JSON file, or a mapping
        ``{source: pandapower | simbench | file, name | code | path, options}``.
        Options: vmin_pu / vmax_pu (default voltage limits where the net has none,
        0.95 / 1.05), s_base_kva (default: the net's sn_mva), ext_grid (the external
        grid whose feeder to keep when the net has several).

    Returns
    -------
    Feeder

    Raises
    ------
    NetworkError : unknown name, or a net that is not one radial feeder.
    """
    source, locator, options = _parse_spec(spec)
    unknown = set(options) - OPTIONS
    if unknown:
        raise NetworkError(f"network options: unknown {sorted(unknown)}; known {sorted(OPTIONS)}")
    net, name = _read_net(source, locator)
    options = {**BUILTIN_OPTIONS.get(name, {}), **options}
    return feeder_from_net(net, name=name, **options)


def _parse_spec(spec) -> tuple[str, str, dict]:
    if isinstance(spec, Mapping):
        source = spec.get("source", "pandapower")
        key = {"pandapower": "name", "simbench": "code", "file": "path"}.get(source)
        if key is None or spec.get(key) is None:
            raise NetworkError(f"network {dict(spec)!r}: source {source!r} needs a {key or 'name'}")
        return source, str(spec[key]), dict(spec.get("options") or {})
    if not isinstance(spec, str):
        raise NetworkError(f"network {spec!r}: expected a name, SimBench code, path or mapping")
    return _guess_source(spec), spec, {}


def _guess_source(name: str) -> str:
    if ALIASES.get(name, name) in BUILTINS:
        return "pandapower"
    if name.endswith(".json") or Path(name).is_file():
        return "file"
    return "simbench"


def _read_net(source: str, locator: str):
    """The net and its name; SimBench and built-in nets through the disk cache
    (:mod:`gridmarkets.networks.net_cache`)."""
    from gridmarkets.networks.net_cache import cached_net

    if source == "file":
        return read_net_json(locator), Path(locator).stem
    if source == "pandapower":
        name = ALIASES.get(locator, locator)
        if name not in BUILTINS:
            raise _unknown(locator, "network.name")
        return cached_net(source, name, lambda: _builtin_net(name)), name
    import simbench

    if locator not in simbench.collect_all_simbench_codes():
        raise _unknown(locator, "network.code")
    return cached_net(source, locator, lambda: simbench.get_simbench_net(locator)), locator


def _builtin_net(name: str):
    """A fresh copy of one of pandapower's :data:`BUILTINS`."""
    import pandapower.networks as pn

    return getattr(pn, name)()


def read_net_json(path: str | Path):
    """A pandapower net from a JSON file, read safely.

    The file is read through :func:`gridmarkets.inputs.read_text` (size limit, UTF-8);
    every ``_module``/``_class`` it names, at any depth, is checked against
    :data:`JSON_ALLOWED` *before* pandapower parses it (pandapower imports a named
    module to find its class), and the result must be a net with buses, lines and an
    external grid.

    Raises
    ------
    NetworkError : naming the file and what is wrong (a foreign module, not a net, a
        missing table).
    """
    import pandapower as pp

    source = f"network file {path}"
    try:
        text = read_text(path, "network file")
        tree = json.loads(text)
    except InputError as err:
        raise NetworkError(str(err)) from None
    except (ValueError, RecursionError) as err:
        raise NetworkError(f"{source}: not JSON ({err})") from None
    if not isinstance(tree, dict) or tree.get("_class") != "pandapowerNet":
        raise NetworkError(f"{source}: not a pandapower net (no pandapowerNet at the top level)")
    _check_json_classes(tree, source, "")
    try:
        net = pp.from_json_string(text)
    except Exception as err:  # pandapower raises anything from a malformed table
        raise NetworkError(f"{source}: pandapower cannot read it ({err})") from None
    check_net_tables(net, source)
    return net


# The columns the feeder reads, by table (a table with rows must have them).
REQUIRED_COLUMNS = {
    "bus": ("vn_kv", "in_service"),
    "line": (
        "from_bus",
        "to_bus",
        "length_km",
        "r_ohm_per_km",
        "x_ohm_per_km",
        "c_nf_per_km",
        "max_i_ka",
        "df",
        "parallel",
        "in_service",
    ),
    "trafo": (
        "hv_bus",
        "lv_bus",
        "sn_mva",
        "vn_hv_kv",
        "vn_lv_kv",
        "vk_percent",
        "vkr_percent",
        "pfe_kw",
        "parallel",
        "in_service",
    ),
    "ext_grid": ("bus", "vm_pu", "in_service"),
    "switch": ("bus", "element", "et", "closed"),
    "load": ("bus", "p_mw", "q_mvar", "scaling", "in_service"),
    "sgen": ("bus", "p_mw", "q_mvar", "scaling", "in_service"),
}

# Columns that name a bus, by table.
BUS_COLUMNS = {
    "line": ("from_bus", "to_bus"),
    "trafo": ("hv_bus", "lv_bus"),
    "ext_grid": ("bus",),
    "switch": ("bus",),
    "load": ("bus",),
    "sgen": ("bus",),
}


def check_net_tables(net, source: str) -> None:
    """A net read from a file has buses, the columns the feeder reads in every table
    with rows, and elements only at buses it has.

    Raises
    ------
    NetworkError : naming the file, the table and the columns or element.
    """
    if "bus" not in net or net.bus.empty:
        raise NetworkError(f"{source}: the net has no buses")
    for table, columns in REQUIRED_COLUMNS.items():
        frame = net[table] if table in net else pd.DataFrame()
        missing = [c for c in columns if c not in frame] if len(frame) else []
        if missing:
            raise NetworkError(f"{source}: table {table} has no column {', '.join(missing)}")
    for table, columns in BUS_COLUMNS.items():
        frame = net[table] if table in net else pd.DataFrame()
        for column in columns:
            stray = frame.index[~frame[column].isin(net.bus.index)] if len(frame) else []
            if len(stray):
                bus = frame.at[stray[0], column]
                raise NetworkError(
                    f"{source}: {table} {stray[0]}: {column} {plain(bus)} is not a bus"
                )


def _check_json_classes(node: Any, source: str, where: str) -> None:
    """Refuse any ``_module``/``_class`` outside :data:`JSON_ALLOWED`, looking into the
    JSON strings pandapower parses again (``_object``)."""
    if isinstance(node, dict):
        if "_module" in node or "_class" in node:
            module, cls = str(node.get("_module")), str(node.get("_class"))
            if not _json_class_allowed(module, cls):
                raise NetworkError(
                    f"{source}: {where or 'top level'} names {module}.{cls}, which a "
                    "pandapower net does not hold; refused before reading (nothing imported)"
                )
        for key, value in node.items():
            _check_json_classes(value, source, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for k, value in enumerate(node):
            _check_json_classes(value, source, f"{where}[{k}]")
    elif isinstance(node, str) and node[:1] in "{[" and ("_module" in node or "_class" in node):
        try:
            inner = json.loads(node)
        except ValueError:
            return  # a string, not JSON: pandapower reads it as one
        _check_json_classes(inner, source, where)


def _json_class_allowed(module: str, cls: str) -> bool:
    if module == "numpy":
        value = getattr(np, cls, None)
        return cls in ("array", "bool") or (
            isinstance(value, type) and issubclass(value, np.generic)
        )
    if module.startswith("pandas.core.indexes."):
        value = getattr(pd, cls, None)
        return isinstance(value, type) and issubclass(value, pd.Index)
    return cls in JSON_ALLOWED.get(module, set())


def _unknown(name: str, field: str) -> NetworkError:
    known = [n for n, _ in available_networks()] + list(ALIASES)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return NetworkError(
        f"{field}: {name!r} is not a pandapower built-in, a SimBench code or a file{hint} "
        "(`gridmarkets networks` lists them)"
    )


def feeder_from_net(
    net,
    *,
    name: str = "net",
    vmin_pu: float = DEFAULT_VMIN_PU,
    vmax_pu: float = DEFAULT_VMAX_PU,
    s_base_kva: float | None = None,
    ext_grid: int | None = None,
) -> Feeder:
    """Build the radial :class:`Feeder` of a pandapower net (see :func:`load` for options)."""
    _check_options(vmin_pu, vmax_pu, s_base_kva)
    _refuse_unmodelled(net)
    _warn_approximated(net)
    s_base_kva = float(s_base_kva or net.sn_mva * 1000.0)
    merged = _merge_map(net)
    slack = _pick_ext_grid(net, ext_grid)
    root = merged[int(net.ext_grid.at[slack, "bus"])]
    edges = _branch_edges(net, merged, s_base_kva)
    graph = _graph(edges, root, merged, net)
    tree = _orient(edges, graph, root)
    buses = _bus_table(net, merged, list(graph.nodes), vmin_pu, vmax_pu, s_base_kva, edges)
    buses = buses.loc[[root, *tree["to_bus"]]]
    keep = {bus: kept for bus, kept in merged.items() if kept in graph}
    return Feeder(
        name=name,
        buses=buses,
        branches=tree,
        root=root,
        root_vm_pu=float(net.ext_grid.at[slack, "vm_pu"]),
        s_base_kva=s_base_kva,
        net=net,
        merged=keep,
    )


def _check_options(vmin_pu: float, vmax_pu: float, s_base_kva: float | None) -> None:
    """Voltage limits and the power base as numbers that make sense (an input error,
    not an infeasible model later)."""
    values = {"vmin_pu": vmin_pu, "vmax_pu": vmax_pu, "s_base_kva": s_base_kva}
    for key, value in values.items():
        if value is None and key == "s_base_kva":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise NetworkError(f"network.options.{key}: {plain(value)} is not a positive number")
        if not math.isfinite(value):
            raise NetworkError(f"network.options.{key}: {plain(value)} is not finite")
    if not vmin_pu < vmax_pu:
        raise NetworkError(
            f"network.options: vmin_pu {plain(vmin_pu)} is not below vmax_pu {plain(vmax_pu)}"
        )


def in_service(net, table: str) -> pd.DataFrame:
    """The in-service rows of a pandapower table (empty if the net has no such table)."""
    frame = net[table] if table in net else pd.DataFrame()
    if frame.empty or "in_service" not in frame:
        return frame
    return frame[frame["in_service"].astype(bool)]


def named(table: str, index, shown: int = 5) -> str:
    """ "table 1, 4, 7 and 12 more": elements named the way errors and warnings name them."""
    labels = [str(k) for k in index]
    more = f" and {len(labels) - shown} more" if len(labels) > shown else ""
    return f"{table} {', '.join(labels[:shown])}{more}"


def _refuse_unmodelled(net) -> None:
    present = [named(t, in_service(net, t).index) for t in UNMODELLED if len(in_service(net, t))]
    if present:
        raise NetworkError(
            f"the net has elements in service that a radial feeder cannot represent: "
            f"{'; '.join(present)}; take them out of service or replace them (a load, an "
            "sgen, a line)"
        )


def _warn_approximated(net) -> None:
    for table, how in APPROXIMATED.items():
        frame = in_service(net, table)
        if len(frame):
            warnings.warn(f"{named(table, frame.index)}: {how}", UserWarning, stacklevel=3)


def _merge_map(net) -> dict[int, int]:
    """pandapower bus -> kept bus, merging buses joined by closed bus-bus switches."""
    buses = net.bus.index[net.bus["in_service"].astype(bool)]
    sw = net.switch
    ties = sw[(sw["et"] == "b") & sw["closed"].astype(bool)]
    graph = nx.Graph()
    graph.add_nodes_from(buses)
    graph.add_edges_from(
        (a, b)
        for a, b in zip(ties["bus"], ties["element"], strict=True)
        if a in graph and b in graph
    )
    return {bus: min(group) for group in nx.connected_components(graph) for bus in group}


def _pick_ext_grid(net, choice: int | None) -> int:
    grids = net.ext_grid[net.ext_grid["in_service"].astype(bool)]
    if choice is not None:
        if choice not in grids.index:
            raise NetworkError(f"option ext_grid: {choice} is not an in-service external grid")
        return choice
    if len(grids) == 0:
        raise NetworkError("the net has no external grid in service: no source for the feeder")
    if len(grids) > 1:
        named = ", ".join(f"{k} at bus {b}" for k, b in grids["bus"].items())
        raise NetworkError(
            f"the net has {len(grids)} external grids ({named}); a feeder has one source: "
            "choose one with the option ext_grid"
        )
    return int(grids.index[0])


def _open_elements(net, kind: str) -> set[int]:
    sw = net.switch
    return set(sw.loc[(sw["et"] == kind) & ~sw["closed"].astype(bool), "element"].astype(int))


def _branch_edges(net, merged: dict[int, int], s_base_kva: float) -> pd.DataFrame:
    """In-service lines and transformers between in-service buses, in per unit."""
    lines = _line_edges(net, merged, s_base_kva)
    trafos = _trafo_edges(net, merged, s_base_kva)
    edges = pd.concat([lines, trafos], ignore_index=True)
    bad = edges[~np.isfinite(edges[["r_pu", "x_pu"]]).all(axis=1)]
    if len(bad):
        row = bad.iloc[0]
        raise NetworkError(f"{row['kind']} {row['element']} has no impedance (r or x missing)")
    return edges


def _line_edges(net, merged, s_base_kva, line: pd.DataFrame | None = None) -> pd.DataFrame:
    """Lines in per unit: by default the in-service ones with no open switch."""
    if line is None:
        line = in_service(net, "line")
        line = line[~line.index.isin(_open_elements(net, "l"))]
    line = line[line["from_bus"].isin(merged) & line["to_bus"].isin(merged)]
    vn = net.bus.loc[line["from_bus"], "vn_kv"].to_numpy()
    z_base = vn**2 / (s_base_kva / 1000.0)
    parallel = line["parallel"].to_numpy(dtype=float)
    length = line["length_km"].to_numpy(dtype=float)
    b_siemens = 2 * math.pi * net.f_hz * line["c_nf_per_km"].to_numpy(dtype=float) * 1e-9
    g_siemens = line["g_us_per_km"].to_numpy(dtype=float) * 1e-6 if "g_us_per_km" in line else 0.0
    return pd.DataFrame(
        {
            "a": line["from_bus"].map(merged).to_numpy(),
            "b": line["to_bus"].map(merged).to_numpy(),
            "r_pu": line["r_ohm_per_km"].to_numpy(dtype=float) * length / parallel / z_base,
            "x_pu": line["x_ohm_per_km"].to_numpy(dtype=float) * length / parallel / z_base,
            "b_pu": b_siemens * length * parallel * z_base,
            "g_pu": g_siemens * length * parallel * z_base,
            "ratio": 1.0,
            "rating_kva": line["max_i_ka"].to_numpy(dtype=float)
            * line["df"].to_numpy(dtype=float)
            * parallel
            * vn
            * math.sqrt(3)
            * 1000.0,
            "kind": "line",
            "element": line.index.to_numpy(),
            "hv_bus": line["from_bus"].map(merged).to_numpy(),
        }
    )


def _stub_shunts(net, merged, s_base_kva) -> tuple[pd.Series, pd.Series]:
    """Lines open at one end only stay energised from the other (pandapower keeps their
    charging): their input admittance ``y/2 + (y/2) / (1 + z y/2)`` (z series, y shunt,
    the pi model) is an exact shunt (g, b) at the connected bus."""
    sw = net.switch
    opened = sw[(sw["et"] == "l") & ~sw["closed"].astype(bool)]
    ends = opened.groupby("element")["bus"].agg(set)
    line = in_service(net, "line")
    line = line[line.index.isin(ends.index)]
    connected = {
        k: (b if ends[k] == {a} else a)
        for k, a, b in zip(line.index, line["from_bus"], line["to_bus"], strict=True)
        if ends[k] in ({a}, {b})
    }
    stubs = _line_edges(net, merged, s_base_kva, line.loc[list(connected)])
    connected = stubs["element"].map(connected).map(merged).to_numpy()
    z = (stubs["r_pu"] + 1j * stubs["x_pu"]).to_numpy()
    half = (stubs["g_pu"] + 1j * stubs["b_pu"]).to_numpy() / 2
    y_in = half + half / (1 + z * half)
    return pd.Series(y_in.real, connected), pd.Series(y_in.imag, connected)


def _trafo_edges(net, merged, s_base_kva) -> pd.DataFrame:
    trafo = net.trafo[net.trafo["in_service"].astype(bool)]
    trafo = trafo[~trafo.index.isin(_open_elements(net, "t"))]
    trafo = trafo[trafo["hv_bus"].isin(merged) & trafo["lv_bus"].isin(merged)]
    parallel = trafo["parallel"].to_numpy(dtype=float)
    sn = trafo["sn_mva"].to_numpy(dtype=float) * parallel
    vn_lv_bus = net.bus.loc[trafo["lv_bus"], "vn_kv"].to_numpy()
    # impedance in ohm on the LV side, then per unit on the feeder's base at the LV bus
    to_pu = (trafo["vn_lv_kv"].to_numpy() / vn_lv_bus) ** 2 * (s_base_kva / 1000.0) / sn
    z = trafo["vk_percent"].to_numpy(dtype=float) / 100 * to_pu
    r = trafo["vkr_percent"].to_numpy(dtype=float) / 100 * to_pu
    return pd.DataFrame(
        {
            "a": trafo["hv_bus"].map(merged).to_numpy(),
            "b": trafo["lv_bus"].map(merged).to_numpy(),
            "r_pu": r,
            "x_pu": np.sqrt(np.maximum(z**2 - r**2, 0.0)),
            "b_pu": 0.0,
            "g_pu": 0.0,
            "ratio": _trafo_ratio(net, trafo),
            "rating_kva": sn * 1000.0,
            "kind": "trafo",
            "element": trafo.index.to_numpy(),
            "hv_bus": trafo["hv_bus"].map(merged).to_numpy(),
        }
    )


def _trafo_ratio(net, trafo: pd.DataFrame) -> np.ndarray:
    """Off-nominal ratio (hv pu / lv pu at no load), including the tap position."""
    steps = (trafo["tap_pos"] - trafo["tap_neutral"]).fillna(0.0).to_numpy(dtype=float)
    percent = trafo["tap_step_percent"].fillna(0.0).to_numpy(dtype=float)
    tap = 1.0 + steps * percent / 100.0
    side = trafo["tap_side"].astype(str).to_numpy()
    vn_hv = trafo["vn_hv_kv"].to_numpy(dtype=float) * np.where(side == "hv", tap, 1.0)
    vn_lv = trafo["vn_lv_kv"].to_numpy(dtype=float) * np.where(side == "lv", tap, 1.0)
    bus_hv = net.bus.loc[trafo["hv_bus"], "vn_kv"].to_numpy()
    bus_lv = net.bus.loc[trafo["lv_bus"], "vn_kv"].to_numpy()
    return (vn_hv / bus_hv) / (vn_lv / bus_lv)


def _graph(edges: pd.DataFrame, root: int, merged: dict[int, int], net) -> nx.Graph:
    """The connected component of the root; a loop or a loaded island is an error."""
    graph = nx.Graph()
    graph.add_nodes_from(set(merged.values()))
    for k, a, b in zip(edges.index, edges["a"], edges["b"], strict=True):
        if a == b or graph.has_edge(a, b):
            raise _loop_error(edges, k, [a, b], net, [graph.edges[a, b]["k"]] if a != b else [])
        graph.add_edge(a, b, k=k)
    _check_islands(graph, root, merged, net)
    component = graph.subgraph(nx.node_connected_component(graph, root)).copy()
    if component.number_of_edges() >= component.number_of_nodes():
        tree = nx.bfs_tree(component, root).to_undirected()
        a, b = next((a, b) for a, b in component.edges if not tree.has_edge(a, b))
        loop = nx.shortest_path(tree, a, b)
        on_loop = [component.edges[u, v]["k"] for u, v in zip(loop, loop[1:], strict=False)]
        raise _loop_error(edges, component.edges[a, b]["k"], loop, net, on_loop)
    return component


def _loop_error(edges, closing: int, loop: list[int], net, others: list[int]) -> NetworkError:
    row = edges.loc[closing]
    loop_rows = edges.loc[[closing, *others]]
    lines = set(loop_rows.loc[loop_rows["kind"] == "line", "element"])
    sw = net.switch
    switches = sw.index[(sw["et"] == "l") & sw["element"].isin(lines)].tolist()
    opening = (
        f"opening any of switches {switches} would open it"
        if switches
        else "no line switch lies on it; take a line out of service"
    )
    return NetworkError(
        f"{row['kind']} {row['element']} closes a loop between buses {row['a']} and {row['b']}: "
        f"the loop passes buses {loop}; {opening}"
    )


def _check_islands(graph: nx.Graph, root: int, merged: dict[int, int], net) -> None:
    """Islands with loads or generation have no source; empty ones are dropped."""
    attached = set()
    for table in INJECTION_SIGNS:
        attached |= {merged.get(b) for b in in_service(net, table).get("bus", [])}
    sources = set(net.ext_grid.loc[net.ext_grid["in_service"].astype(bool), "bus"].map(merged))
    for island in nx.connected_components(graph):
        if island & sources:
            continue
        loaded = sorted(island & attached)
        if loaded:
            raise NetworkError(
                f"buses {sorted(island)[:10]} form an island without a source, with loads or "
                f"generators at buses {loaded[:10]}"
            )


def _orient(edges: pd.DataFrame, graph: nx.Graph, root: int) -> pd.DataFrame:
    """Branches oriented away from the root, in breadth-first order."""
    pairs = list(nx.bfs_edges(graph, root))
    rows = edges.loc[[graph.edges[a, b]["k"] for a, b in pairs]].reset_index(drop=True)
    rows["from_bus"] = [a for a, _ in pairs]
    rows["to_bus"] = [b for _, b in pairs]
    flipped = rows["from_bus"].to_numpy() != rows["a"].to_numpy()
    rows["ratio"] = np.where(flipped, 1.0 / rows["ratio"], rows["ratio"])
    columns = ["from_bus", "to_bus", "r_pu", "x_pu", "b_pu", "g_pu", "ratio", "rating_kva", "kind"]
    return rows[[*columns, "element", "hv_bus"]]


def _bus_table(net, merged, nodes, vmin_pu, vmax_pu, s_base_kva, edges) -> pd.DataFrame:
    bus = net.bus.loc[nodes]
    vmin = bus["min_vm_pu"] if "min_vm_pu" in bus else pd.Series(np.nan, index=bus.index)
    vmax = bus["max_vm_pu"] if "max_vm_pu" in bus else pd.Series(np.nan, index=bus.index)
    table = pd.DataFrame(
        {
            "vn_kv": bus["vn_kv"].astype(float),
            "vmin_pu": vmin.fillna(vmin_pu).astype(float),
            "vmax_pu": vmax.fillna(vmax_pu).astype(float),
        }
    )
    g, b = _shunts(net, merged, s_base_kva, edges)
    table["g_pu"] = g.reindex(table.index, fill_value=0.0)
    table["b_pu"] = b.reindex(table.index, fill_value=0.0)
    table.index.name = "bus"
    return table


def _shunts(net, merged, s_base_kva, edges) -> tuple[pd.Series, pd.Series]:
    """Shunt g and b per bus at 1 pu: line charging and conductance (half at each end, the
    pi model; lines open at one end as their input admittance), bus shunts, trafo
    magnetising."""
    stubs = _stub_shunts(net, merged, s_base_kva)
    halves = (edges["g_pu"] / 2, edges["b_pu"] / 2)
    g, b = (
        pd.concat([pd.Series(half.to_numpy(), edges[end]) for end in ("a", "b")] + [stub])
        for half, stub in zip(halves, stubs, strict=True)
    )
    shunt = net.shunt[net.shunt["in_service"].astype(bool)]
    if len(shunt):
        at = shunt["bus"].map(merged)
        steps = shunt["step"].to_numpy(dtype=float) if "step" in shunt else 1.0
        g = pd.concat([g, pd.Series(shunt["p_mw"].to_numpy() * steps * 1000 / s_base_kva, at)])
        b = pd.concat([b, pd.Series(-shunt["q_mvar"].to_numpy() * steps * 1000 / s_base_kva, at)])
    trafo = net.trafo.loc[edges.loc[edges["kind"] == "trafo", "element"]]
    if len(trafo):
        at = trafo["hv_bus"].map(merged)
        p_kw = trafo["pfe_kw"].to_numpy(dtype=float) * trafo["parallel"].to_numpy()
        s_kva = trafo["i0_percent"].to_numpy(dtype=float) / 100 * trafo["sn_mva"].to_numpy() * 1e3
        q_kvar = np.sqrt(np.maximum(s_kva**2 - p_kw**2, 0.0)) * trafo["parallel"].to_numpy()
        g = pd.concat([g, pd.Series(p_kw / s_base_kva, at)])
        b = pd.concat([b, pd.Series(-q_kvar / s_base_kva, at)])
    return g.groupby(level=0).sum(), b.groupby(level=0).sum()


def net_injections(feeder: Feeder) -> tuple[pd.Series, pd.Series]:
    """The net's own loads, static generators, generators, storage and motors (and their
    asymmetric variants, balanced) as injections.

    Returns
    -------
    (p_kw, q_kvar) : Series indexed by feeder bus, positive into the grid, scaled as in
    the net (``p_mw * scaling``).
    """
    powers = pd.concat(
        [element_powers(feeder.net, t).assign(sign=s) for t, s in INJECTION_SIGNS.items()]
    )
    powers = powers[powers["bus"].isin(feeder.merged)]
    at = powers["bus"].map(feeder.merged).to_numpy()
    p_kw, q_kvar = (
        (powers[column] * powers["sign"] * 1000.0)
        .groupby(at)
        .sum()
        .reindex(feeder.buses.index, fill_value=0.0)
        .astype(float)
        for column in ("p_mw", "q_mvar")
    )
    return p_kw, q_kvar


def element_powers(net, table: str) -> pd.DataFrame:
    """bus, p_mw and q_mvar of a table's in-service elements, as pandapower's balanced
    power flow reads them (scaled; sign as in the table)."""
    frame = in_service(net, table)
    if frame.empty:
        return pd.DataFrame({"bus": [], "p_mw": [], "q_mvar": []})
    if table.startswith("asymmetric"):
        p = frame[["p_a_mw", "p_b_mw", "p_c_mw"]].sum(axis=1)
        q = frame[["q_a_mvar", "q_b_mvar", "q_c_mvar"]].sum(axis=1)
    elif table == "motor":
        p = frame["pn_mech_mw"] / frame["efficiency_percent"] * frame["loading_percent"]
        q = p * np.tan(np.arccos(frame["cos_phi"]))
    else:
        p = frame["p_mw"]
        q = frame["q_mvar"] if table != "gen" else 0.0 * p
    scale = frame["scaling"].astype(float)
    return pd.DataFrame({"bus": frame["bus"], "p_mw": p * scale, "q_mvar": q * scale})


def feeder_profiles(
    feeder: Feeder, start: int = 0, periods: int = 96, resolution_minutes: int = 15
) -> pd.DataFrame:
    """Per-bus load and generation from a SimBench net's yearly 15-minute profiles.

    Parameters
    ----------
    feeder : a feeder loaded from a SimBench code.
    start : first 15-minute step of the year (0 = 1 January 00:00).
    periods : number of periods returned.
    resolution_minutes : a multiple of 15; coarser periods average the 15-minute values.

    Returns
    -------
    Tidy table with columns period, bus, load_p_kw, load_q_kvar, sgen_p_kw, sgen_q_kvar,
    p_kw and q_kvar (net injection = generation - load, positive into the grid).
    """
    import simbench

    if resolution_minutes % 15:
        raise NetworkError(f"resolution_minutes: {resolution_minutes} is not a multiple of 15")
    step = resolution_minutes // 15
    profiles = simbench.get_absolute_values(feeder.net, profiles_instead_of_study_cases=True)
    if not profiles or profiles[("load", "p_mw")].empty:
        raise NetworkError(f"network {feeder.name}: has no SimBench profiles")
    rows = slice(start, start + periods * step)
    available = len(profiles[("load", "p_mw")])
    if rows.stop > available:
        first = max(0, (available - start) // step)
        raise NetworkError(
            f"horizon: periods {first}-{periods - 1} run past the end of the SimBench "
            f"profiles of {feeder.name} ({available} 15-minute steps from 1 January; the "
            f"horizon starts at step {start}): start earlier or use fewer periods"
        )
    columns = {}
    for table, quantity, name in (
        ("load", "p_mw", "load_p_kw"),
        ("load", "q_mvar", "load_q_kvar"),
        ("sgen", "p_mw", "sgen_p_kw"),
        ("sgen", "q_mvar", "sgen_q_kvar"),
    ):
        columns[name] = _profile_by_bus(feeder, table, profiles.get((table, quantity)), rows, step)
    frame = pd.concat(columns, axis=1).fillna(0.0)
    frame["p_kw"] = frame["sgen_p_kw"] - frame["load_p_kw"]
    frame["q_kvar"] = frame["sgen_q_kvar"] - frame["load_q_kvar"]
    return frame.rename_axis(["period", "bus"]).reset_index()


def _profile_by_bus(feeder: Feeder, table: str, values, rows: slice, step: int) -> pd.Series:
    """A profile in kW per (period, bus), summing the elements at each bus."""
    buses = feeder.buses.index
    if values is None or values.empty:
        empty = pd.MultiIndex.from_product([[], buses], names=["period", "bus"])
        return pd.Series(dtype=float, index=empty)
    frame = getattr(feeder.net, table)
    live = frame.index[frame["in_service"].astype(bool) & frame["bus"].isin(feeder.merged)]
    chunk = values.iloc[rows][live] * 1000.0
    chunk = chunk.groupby(np.arange(len(chunk)) // step).mean()
    at = frame.loc[live, "bus"].map(feeder.merged)
    by_bus = chunk.T.groupby(at.to_numpy()).sum().T.reindex(columns=buses, fill_value=0.0)
    by_bus.index.name, by_bus.columns.name = "period", "bus"
    return by_bus.stack()
