"""Three-phase unbalanced feeders: LinDist3Flow, per-phase prices and the runpp_3ph check.

A :class:`ThreePhaseFeeder` is the radial :class:`~gridmarkets.networks.Feeder` of a
pandapower net (same buses, branches, root and switches) plus each branch's 3x3 phase
impedance matrix, from pandapower's sequence data: ``Z = A diag(z0, z1, z1) A^-1`` with
the Fortescue matrix A, z1 = r + jx and z0 = r0 + jx0 (a four-wire line with its neutral
reduced into the phases, as pandapower's ``runpp_3ph`` models it).

Per unit is per phase: power on the base ``s_base_kva / 3``, impedance on
``vn_kv^2 / s_base`` (line to neutral squared over per-phase power, the same number as the
single-phase feeder's base), so a balanced feeder has the single-phase feeder's numbers on
every phase.

LinDist3Flow (Gan and Low 2014; Arnold et al. 2016; Sankur et al. 2016) for branch l from
bus i to bus j, per phase phi, period t, without losses::

    p[j,phi]/(S/3) + P[l,phi] - sum_{children c} P[c,phi] = 0              (active balance)
    q[j,phi]/(S/3) + Q[l,phi] - sum_{children c} Q[c,phi] = 0              (reactive balance)
    v[j] = v[i] / n^2 - 2 Re(M) P[l] + 2 Im(M) Q[l],  M = Gamma o conj(Z)  (voltage drop)

with v the per-phase squared voltage magnitudes and ``Gamma[phi,psi] = alpha_phi /
alpha_psi``, ``alpha = (1, a, a^2)``, ``a = exp(-j 2 pi/3)``: the balanced-angle
approximation ``V_phi / V_psi ~ alpha_phi / alpha_psi``. The root is the external grid, a
stiff balanced source: it supplies each phase what that phase draws, and the market's
injection at the root is the three phases' total (one free split per period that sums
to zero, so the root's price is the same on every phase).

How a market's injections carry the phase (``p_kw`` and ``q_kvar`` of :meth:`LinDist3Flow.add`):

- key ``(bus, period)``: a balanced three-phase connection, a third on each phase (what
  :func:`~gridmarkets.networks.attach_grid` passes);
- key ``(bus, phases, period)`` with ``phases`` "a", "b" or "c" (a single-phase PV, an
  EV charger) or two or three of them ("ab", "abc"): split equally over those phases.

Transformers: a Dyn or YNyn transformer at the feeder's source (its HV side is the
external grid's bus), the LV side seeing the HV side as a balanced source: zero
sequence through pandapower's T model with the HV side earthed (``z0 = z0_lv + z0_hv ||
z0_mag``). Other vector groups, and transformers inside the feeder, are refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from gridmarkets.errors import NetworkError
from gridmarkets.log import track
from gridmarkets.networks.feeder import Feeder, feeder_from_net, load, net_injections
from gridmarkets.networks.handles import NetworkHandles, kept
from gridmarkets.networks.lindistflow import _add_sets, branch_arrays, polygon_directions
from gridmarkets.networks.rows import Rows, add_family, market_terms, objects
from gridmarkets.solvers.arrays import ArrayConstraint, RowArrays, dense_values
from gridmarkets.solvers.highs import gc_paused

PHASES = ("a", "b", "c")
CONNECTIONS = ("a", "b", "c", "ab", "ac", "bc", "abc")
VECTOR_GROUPS = ("dyn", "ynyn")
_A = np.exp(2j * math.pi / 3)
FORTESCUE = np.array([[1, 1, 1], [1, _A**2, _A], [1, _A, _A**2]])
ALPHA = np.array([1.0, np.exp(-2j * math.pi / 3), np.exp(2j * math.pi / 3)])
GAMMA = ALPHA[:, None] / ALPHA[None, :]


# phase weights of each connection: a connection to k phases puts 1/k on each
def connection(label: object) -> str | None:
    """A phase label as a connection: its letters lower case and sorted ("CB" -> "bc");
    a missing label (None, NaN) is "abc", balanced; None where it names no connection."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return "abc"
    name = "".join(sorted(str(label).strip().lower()))
    return name if name in CONNECTIONS else None


WEIGHTS = np.array([[1.0 / len(c) if p in c else 0.0 for p in PHASES] for c in CONNECTIONS])


@dataclass(frozen=True)
class ThreePhaseFeeder(Feeder):
    """A :class:`Feeder` with each branch's phase impedance matrix.

    Attributes
    ----------
    z_pu : (branches x 3 x 3) complex phase impedance matrices in per unit (per-phase
        base), in the order of ``branches``.
    """

    z_pu: np.ndarray = field(repr=False)

    def drop_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """(2 Re M, 2 Im M) per branch (branches x 3 x 3), ``M = Gamma o conj(Z)``."""
        m = GAMMA[None] * np.conj(self.z_pu)
        return 2 * m.real, 2 * m.imag


def sequence_to_phase(z0: np.ndarray, z1: np.ndarray) -> np.ndarray:
    """Phase impedance matrices ``A diag(z0, z1, z1) A^-1`` (n x 3 x 3) from sequence ones."""
    diagonal = np.zeros((len(z0), 3, 3), dtype=complex)
    diagonal[:, 0, 0], diagonal[:, 1, 1], diagonal[:, 2, 2] = z0, z1, z1
    return FORTESCUE @ diagonal @ np.linalg.inv(FORTESCUE)


def three_phase_feeder(source: Any, **options) -> ThreePhaseFeeder:
    """The three-phase feeder of a pandapower net.

    Parameters
    ----------
    source : a :class:`Feeder`, a pandapower net, or anything :func:`load` accepts
        ("ieee_european_lv_asymmetric", a SimBench code, a JSON file).
    options : options of :func:`feeder_from_net` (vmin_pu, vmax_pu, s_base_kva,
        ext_grid); given with a feeder or a spec, its net is read again with them.

    Returns
    -------
    ThreePhaseFeeder

    Raises
    ------
    NetworkError : a line without zero-sequence data, a transformer inside the feeder or
        with a vector group other than Dyn or YNyn.
    """
    if isinstance(source, ThreePhaseFeeder) and not options:
        return source
    if isinstance(source, Feeder):
        feeder = feeder_from_net(source.net, name=source.name, **options) if options else source
    elif hasattr(source, "bus") and hasattr(source, "line"):
        feeder = feeder_from_net(source, **options)
    else:
        feeder = load(source)
        feeder = feeder_from_net(feeder.net, name=feeder.name, **options) if options else feeder
    values = {f.name: getattr(feeder, f.name) for f in fields(Feeder) if f.init}
    return ThreePhaseFeeder(**values, z_pu=_phase_impedances(feeder))


def _phase_impedances(feeder: Feeder) -> np.ndarray:
    br = feeder.branches
    z1 = br["r_pu"].to_numpy() + 1j * br["x_pu"].to_numpy()
    z0 = z1.copy()
    lines = np.flatnonzero(br["kind"].to_numpy() == "line")
    z0[lines] = _line_zero_sequence(feeder, br["element"].to_numpy()[lines])
    trafos = np.flatnonzero(br["kind"].to_numpy() == "trafo")
    if len(trafos):
        _check_trafos(feeder, br.iloc[trafos])
        z0[trafos] = _trafo_zero_sequence(feeder, br["element"].to_numpy()[trafos])
    return sequence_to_phase(z0, z1)


def _line_zero_sequence(feeder: Feeder, elements: np.ndarray) -> np.ndarray:
    """z0 of lines (pu): ``(r0 + j x0) length / parallel / z_base``."""
    line = feeder.net.line.reindex(elements)
    columns = ["r0_ohm_per_km", "x0_ohm_per_km"]
    data = line.reindex(columns=columns).astype(float)
    missing = ~np.isfinite(data.to_numpy()).all(axis=1)
    if missing.any():
        raise NetworkError(
            f"line {elements[missing][0]} has no zero-sequence data (r0_ohm_per_km, "
            "x0_ohm_per_km): a three-phase feeder needs both for every line"
        )
    vn = feeder.net.bus.loc[line["from_bus"], "vn_kv"].to_numpy()
    z_base = vn**2 / (feeder.s_base_kva / 1000.0)
    ohm = (data[columns[0]] + 1j * data[columns[1]]).to_numpy() * line["length_km"].to_numpy()
    return ohm / line["parallel"].to_numpy(dtype=float) / z_base


TRAFO_ZERO_SEQUENCE = ("vk0_percent", "vkr0_percent", "mag0_percent", "mag0_rx", "si0_hv_partial")


def _check_trafos(feeder: Feeder, rows: pd.DataFrame) -> None:
    trafo = feeder.net.trafo
    for _, row in rows.iterrows():
        group = str(trafo.at[row["element"], "vector_group"]) if "vector_group" in trafo else "?"
        data = trafo.reindex(columns=list(TRAFO_ZERO_SEQUENCE)).loc[row["element"]]
        if not np.isfinite(data.to_numpy(dtype=float)).all():
            raise NetworkError(
                f"trafo {row['element']} has no zero-sequence data: a three-phase feeder needs "
                f"{', '.join(TRAFO_ZERO_SEQUENCE)} (as pandapower's runpp_3ph does)"
            )
        if group.lower() not in VECTOR_GROUPS:
            raise NetworkError(
                f"trafo {row['element']} has vector group {group}: LinDist3Flow models Dyn and "
                "YNyn transformers (as pandapower's runpp_3ph does, without Yzn)"
            )
        if row["from_bus"] != feeder.root or row["hv_bus"] != feeder.root:
            raise NetworkError(
                f"trafo {row['element']} ({group}) between buses {row['from_bus']} and "
                f"{row['to_bus']} is inside the feeder: LinDist3Flow models a transformer only "
                f"at the source, with its HV side at the external grid's bus {feeder.root}"
            )


def _trafo_zero_sequence(feeder: Feeder, elements: np.ndarray) -> np.ndarray:
    """z0 seen from the LV side with the HV side earthed (pandapower's T model, pu)."""
    trafo = feeder.net.trafo.loc[elements]
    sn = trafo["sn_mva"].to_numpy(float) * trafo["parallel"].to_numpy(float)
    vn_lv_bus = feeder.net.bus.loc[trafo["lv_bus"], "vn_kv"].to_numpy()
    to_pu = (trafo["vn_lv_kv"].to_numpy() / vn_lv_bus) ** 2 * (feeder.s_base_kva / 1000.0) / sn
    vk0, vkr0 = (
        np.where(trafo[c0].to_numpy(float) > 1e-8, trafo[c0], trafo[c]).astype(float)
        for c0, c in (("vk0_percent", "vk_percent"), ("vkr0_percent", "vkr_percent"))
    )
    z_sc = vk0 / 100 * to_pu
    r_sc = vkr0 / 100 * to_pu
    z0 = r_sc + 1j * np.sqrt(np.maximum(z_sc**2 - r_sc**2, 0.0))
    x_mag = z_sc * trafo["mag0_percent"].to_numpy(float) / 100
    x_mag = x_mag / np.sqrt(trafo["mag0_rx"].to_numpy(float) ** 2 + 1)
    z_mag = x_mag * trafo["mag0_rx"].to_numpy(float) + 1j * x_mag
    share = trafo["si0_hv_partial"].to_numpy(float)
    z_hv, z_lv = share * z0, (1 - share) * z0
    return z_lv + z_hv * z_mag / (z_hv + z_mag)


def phase_injections(feeder: Feeder) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The net's own elements as per-phase injections (kW, kvar; positive into the grid).

    Loads, static generators, generators and storage are balanced (a third on each
    phase); ``asymmetric_load`` and ``asymmetric_sgen`` (wye-connected) give their own
    phases. Scaled as in the net.

    Returns
    -------
    (p_kw, q_kvar) : DataFrames indexed by feeder bus with columns a, b, c.
    """
    p, q = net_injections(feeder)
    tables = [pd.DataFrame({phase: values / 3 for phase in PHASES}) for values in (p, q)]
    net = feeder.net
    for name, sign in (("asymmetric_load", -1.0), ("asymmetric_sgen", 1.0)):
        frame = getattr(net, name, None)
        if frame is None or frame.empty:
            continue
        frame = frame[frame["in_service"].astype(bool) & frame["bus"].isin(feeder.merged)]
        delta = frame.index[frame["type"].astype(str) == "delta"]
        if len(delta):
            raise NetworkError(
                f"{name} {delta[0]} is delta-connected: LinDist3Flow reads wye-connected "
                "elements (phase to neutral) only"
            )
        at = frame["bus"].map(feeder.merged).to_numpy()
        scale = frame["scaling"].to_numpy(float) * 1000.0 * sign
        for table, unit in zip(tables, ("p_{}_mw", "q_{}_mvar"), strict=True):
            # net_injections holds each element's balanced equivalent (a third of its
            # total per phase here): replace it by the element's own phases
            own = {phase: frame[unit.format(phase)].to_numpy(float) * scale for phase in PHASES}
            third = sum(own.values()) / 3
            for phase in PHASES:
                values = pd.Series(own[phase] - third, at)
                table[phase] = table[phase].add(values.groupby(level=0).sum(), fill_value=0.0)
    return tables[0], tables[1]


def parse_key(key: tuple) -> tuple[Any, str, Any]:
    """(bus, connection, period) of an injection key: (bus, period) is "abc"."""
    if len(key) == 2:
        return key[0], "abc", key[1]
    if len(key) == 3 and isinstance(key[1], str):
        connection = "".join(sorted(set(key[1].lower())))
        if connection in CONNECTIONS and len(connection) == len(key[1]):
            return key[0], connection, key[2]
    raise NetworkError(
        f"injection key {key!r}: expected (bus, period) or (bus, phases, period) with phases "
        "'a', 'b', 'c' or a combination such as 'ab'"
    )


def phase_arrays(feeder: Feeder, values: Mapping, periods: list) -> np.ndarray:
    """Numeric injections keyed as :meth:`LinDist3Flow.add` takes them, as a
    (buses x 3 x periods) array in kW per phase (feeder bus order)."""
    out = np.zeros((len(feeder.buses), 3, len(periods)))
    row, column = _positions(feeder, periods)
    for key, value in values.items():
        bus, connection, t = parse_key(key)
        out[row(bus, key), :, column(t, key)] += (
            float(value) * WEIGHTS[CONNECTIONS.index(connection)]
        )
    return out


def _positions(feeder: Feeder, periods: list):
    buses = {bus: k for k, bus in enumerate(feeder.buses.index)}
    times = {t: k for k, t in enumerate(periods)}

    def row(bus, key) -> int:
        if bus not in buses:
            raise NetworkError(f"injection {key!r}: bus {bus!r} is not a bus of the feeder")
        return buses[bus]

    def column(t, key) -> int:
        if t not in times:
            raise NetworkError(f"injection {key!r}: period {t!r} is not a market period")
        return times[t]

    return row, column


def solve_linear_3ph(
    feeder: ThreePhaseFeeder, p_kw: np.ndarray, q_kvar: np.ndarray
) -> dict[str, np.ndarray]:
    """Evaluate LinDist3Flow's equations for given injections (no optimisation).

    Parameters
    ----------
    p_kw, q_kvar : (buses x 3 x periods) per-phase injections in feeder bus order (see
        :func:`phase_arrays`); the root's entry is ignored (the root is the slack).

    Returns
    -------
    dict of per-unit arrays: v_sq (buses x 3 x periods), p, q (branches x 3 x periods).
    """
    base = feeder.s_base_kva / 3
    v0 = feeder.root_vm_pu**2
    shunt = feeder.buses[["g_pu", "b_pu"]].to_numpy()[:, :, None, None] * v0
    out_p = -p_kw / base + shunt[:, 0]  # what each bus draws from its parent branch, per phase
    out_q = -q_kvar / base - shunt[:, 1]
    n_branch = len(feeder.branches)
    p, q = np.zeros((n_branch, *p_kw.shape[1:])), np.zeros((n_branch, *p_kw.shape[1:]))
    for branch in range(n_branch - 1, -1, -1):
        i, j = feeder.from_pos[branch], feeder.to_pos[branch]
        p[branch], q[branch] = out_p[j], out_q[j]
        out_p[i] += p[branch]
        out_q[i] += q[branch]
    re_m, im_m = feeder.drop_matrices()
    drop = np.einsum("lpq,lqt->lpt", re_m, p) - np.einsum("lpq,lqt->lpt", im_m, q)
    n2 = feeder.branches["ratio"].to_numpy() ** 2
    v_sq = np.empty((len(feeder.buses), *p_kw.shape[1:]))
    v_sq[0] = v0
    for branch in range(n_branch):
        i, j = feeder.from_pos[branch], feeder.to_pos[branch]
        v_sq[j] = v_sq[i] / n2[branch] - drop[branch]
    return {"v_sq": v_sq, "p": p, "q": q}


@dataclass
class ThreePhaseHandles(NetworkHandles):
    """LinDist3Flow's components: :class:`NetworkHandles` indexed by phase too.

    ``active_power_balance``, ``reactive_power_balance``, ``voltage_sq`` and
    ``voltage_limit`` are indexed (bus, phase, period); ``p_flow``, ``q_flow`` (branch,
    phase, period); ``thermal_limit`` (branch, phase, direction, period).

    Attributes
    ----------
    voltage_drop : the voltage-drop rows (branch, phase, period).
    voltage_unbalance : the unbalance rows (bus, phase, period), or None.
    """

    voltage_drop: pyo.Constraint | None = None
    voltage_unbalance: pyo.Constraint | None = None

    def per_mwh(self) -> float:
        """Factor from a per-phase balance dual (currency per per-phase pu and period)
        to currency/MWh."""
        return 1000.0 / (self.s_base_kva / 3 * self.period_hours)

    def phase_injection_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Solved injections (kW, kvar) per phase, (buses x 3 x periods) in feeder order:
        what :func:`ac_check_3ph` takes through :func:`solve_linear_3ph` and ``run_ac_3ph``."""
        return tuple(self._phase_values(table) for table in (self.p_kw, self.q_kvar))

    def _phase_values(self, table: Mapping | np.ndarray) -> np.ndarray:
        if isinstance(table, np.ndarray):
            return table.astype(float)
        return phase_arrays(self.feeder, {k: pyo.value(e) for k, e in table.items()}, self.periods)

    def injection_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Solved injections (kW, kvar) per bus, the phases added: (buses x periods)."""
        p, q = self.phase_injection_values()
        return p.sum(axis=1), q.sum(axis=1)


class LinDist3Flow:
    """The LinDist3Flow network formulation (module docstring: equations, keys, units).

    Parameters
    ----------
    polygon_sides : sides of the polygon inscribed in each phase's apparent-power
        circle (rating_kva / 3 per phase), as in :class:`LinDistFlow`.
    max_unbalance_pu : if given, ``|V_phi - V_avg| <= max_unbalance_pu`` at every bus
        below the root (the phase voltage unbalance of IEEE 141 / NEMA, in pu of the
        nominal voltage), linearised in squared voltages around 1 pu:
        ``|v_phi - mean(v)| <= 2 max_unbalance_pu``.
    upstream_reactive : let the root draw reactive power from the upstream grid at no
        cost (``q_upstream_kvar``), as in :class:`LinDistFlow`.
    """

    name = "lindist3flow"

    def __init__(
        self,
        polygon_sides: int = 12,
        max_unbalance_pu: float | None = None,
        upstream_reactive: bool = True,
    ):
        if polygon_sides < 4 or polygon_sides % 2:
            raise NetworkError(f"polygon_sides: {polygon_sides} must be even and at least 4")
        if max_unbalance_pu is not None and not max_unbalance_pu > 0:
            raise NetworkError(f"max_unbalance_pu: {max_unbalance_pu} must be positive")
        self.polygon_sides = polygon_sides
        self.max_unbalance_pu = max_unbalance_pu
        self.upstream_reactive = upstream_reactive

    @gc_paused()
    def add(
        self,
        block: pyo.Block,
        feeder: Feeder,
        periods: Sequence,
        p_kw: Mapping | np.ndarray,
        q_kvar: Mapping | np.ndarray,
        *,
        period_hours: float = 1.0,
    ) -> ThreePhaseHandles:
        """Add per-phase flows, squared voltages, balances and limits to ``block``.

        Parameters
        ----------
        block : an empty Pyomo block of the market model.
        feeder : the feeder; a plain :class:`Feeder` is read as three-phase
            (:func:`three_phase_feeder`).
        periods : the market's periods.
        p_kw, q_kvar : the market's injections into the grid in kW and kvar, keyed
            (bus, period) for balanced three-phase connections or (bus, phases, period);
            Pyomo expressions or numbers, or
            :class:`~gridmarkets.networks.LinearInjections`; missing keys are 0. Or
            fixed injections as a (buses x 3 x periods) array of numbers per phase in
            feeder bus order (as :func:`phase_arrays` gives), read without a key.
        period_hours : length of a period, to convert duals to currency/MWh.

        Returns
        -------
        ThreePhaseHandles naming every component added.
        """
        if feeder is None:
            raise NetworkError("LinDist3Flow needs a feeder; use CopperPlate for no grid")
        feeder = three_phase_feeder(feeder)
        periods = list(periods)
        _add_sets(block, feeder, periods, self.polygon_sides)  # LinDistFlow's, and phases
        block.PHASES = pyo.Set(initialize=PHASES, doc="phases a, b, c")
        _add_variables(block, feeder, self.upstream_reactive)
        columns = _Columns(block, feeder)
        _add_balances(block, feeder, columns, p_kw, q_kvar)
        v = _add_voltage(block, feeder, columns)
        if self.max_unbalance_pu is not None:
            _add_unbalance(block, columns, v, self.max_unbalance_pu)
        polygon = _add_thermal(block, feeder, columns, self.polygon_sides)
        return ThreePhaseHandles(
            formulation=self.name,
            feeder=feeder,
            periods=periods,
            s_base_kva=feeder.s_base_kva,
            period_hours=period_hours,
            block=block,
            active_power_balance=block.active_power_balance,
            reactive_power_balance=block.reactive_power_balance,
            voltage_sq=block.v_sq_pu,
            p_flow=block.p_flow_pu,
            q_flow=block.q_flow_pu,
            voltage_limit=block.voltage_limit,
            thermal_limit=block.thermal_limit,
            polygon=polygon,
            polygon_sides=self.polygon_sides,
            p_kw=p_kw.copy() if isinstance(p_kw, np.ndarray) else kept(p_kw),
            q_kvar=q_kvar.copy() if isinstance(q_kvar, np.ndarray) else kept(q_kvar),
            voltage_drop=block.voltage_drop,
            voltage_unbalance=getattr(block, "voltage_unbalance", None),
        )


def _add_variables(block, feeder: Feeder, upstream_reactive: bool) -> None:
    index = (block.BRANCHES, block.PHASES, block.PERIODS)
    block.p_flow_pu = pyo.Var(*index, doc="P[l,phi,t]: active power into branch l, phase phi (pu)")
    block.q_flow_pu = pyo.Var(*index, doc="Q[l,phi,t]: reactive power into branch l (pu)")
    block.v_sq_pu = pyo.Var(
        block.BUSES, block.PHASES, block.PERIODS, doc="v[j,phi,t]: squared voltage (pu^2)"
    )
    for phase in PHASES:
        for t in block.PERIODS:
            block.v_sq_pu[feeder.root, phase, t].fix(feeder.root_vm_pu**2)
    for kind in ("p", "q"):
        split = pyo.Var(
            block.PHASES,
            block.PERIODS,
            doc=f"{kind}_split[phi,t]: what the source at the root moves onto phase phi (pu)",
        )
        block.add_component(f"{kind}_source_split_pu", split)
        block.add_component(
            f"{kind}_source_split",
            pyo.Constraint(
                block.PERIODS,
                rule=lambda b, t, s=split: sum(s[phase, t] for phase in PHASES) == 0,
                doc=f"sum_phi {kind}_split[phi,t] = 0: the source shares, it does not create",
            ),
        )
    if upstream_reactive:
        block.q_upstream_kvar = pyo.Var(
            block.PERIODS, doc="reactive power drawn from the upstream grid at the root (kvar)"
        )


class _Columns:
    """LinDist3Flow's variables numbered once, each in index order (read sequentially),
    so that families name their terms by integer position: no per-term look-up by index
    or by identity. A market's variables are numbered after them as they come."""

    def __init__(self, block, feeder: Feeder):
        n_br, n_bus, n_t = len(feeder.branches), len(feeder.buses), len(block.PERIODS)
        shapes = {
            "p_flow_pu": (n_br, 3, n_t),
            "q_flow_pu": (n_br, 3, n_t),
            "v_sq_pu": (n_bus, 3, n_t),
            "p_source_split_pu": (3, n_t),
            "q_source_split_pu": (3, n_t),
            "q_upstream_kvar": (n_t,),
        }
        self.position: dict[str, np.ndarray] = {}
        data: list = []
        for name, shape in shapes.items():
            if hasattr(block, name):
                start = len(data)
                data += dense_values(getattr(block, name))
                self.position[name] = np.arange(start, len(data)).reshape(shape)
        self.variables = objects(data)

    def __getitem__(self, name: str) -> np.ndarray:
        """Positions of a network variable's data, shaped as its index."""
        return self.position[name]

    def add(self, variables: np.ndarray) -> np.ndarray:
        """Positions of market variables (each distinct VarData numbered once, new ones
        after those already numbered)."""
        if not len(variables):
            return np.zeros(0, dtype=np.int64)
        ids = np.fromiter(map(id, variables), dtype=np.int64, count=len(variables))
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        self.variables = np.concatenate([self.variables, variables[first]])
        return len(self.variables) - len(first) + inverse.ravel()


def _add_rows(block, name: str, sets: tuple, rows: Rows, columns: _Columns, bounds, doc: str):
    """``lower <= rows <= upper`` over ``sets`` as an :class:`ArrayConstraint`, the rows'
    variables given as positions in ``columns``."""
    lower, upper = (np.broadcast_to(b, (rows.n,)) - rows.constants for b in bounds)
    arrays = RowArrays.from_columns(
        rows.n, rows.rows, rows.coefs, rows.variables, columns.variables, lower, upper
    )
    block.add_component(name, ArrayConstraint(*sets, arrays=arrays, doc=doc))


def _add_balances(block, feeder: ThreePhaseFeeder, columns: _Columns, p_kw, q_kvar) -> None:
    n_bus, n_t = len(feeder.buses), len(block.PERIODS)
    balance = np.arange(n_bus * 3 * n_t).reshape(n_bus, 3, n_t)
    v0 = feeder.root_vm_pu**2
    shunts = feeder.buses[["g_pu", "b_pu"]].to_numpy()[:, :, None, None] * v0 * np.ones((1, 3, n_t))
    sets = (block.BUSES, block.PHASES, block.PERIODS)
    families = (
        ("active", "p", p_kw, -shunts[:, 0], None),
        ("reactive", "q", q_kvar, shunts[:, 1], "q_upstream_kvar"),
    )
    for name, kind, injections, shunt, upstream in families:
        flows = columns[f"{kind}_flow_pu"]
        (rows, coefs, variables), constants, extra = _market_parts(
            feeder, list(block.PERIODS), injections
        )
        parts = [
            (balance[rows], coefs, columns.add(variables)),
            (balance[feeder.to_pos], 1.0, flows),
            (balance[feeder.from_pos], -1.0, flows),
            (balance[0], 1.0, columns[f"{kind}_source_split_pu"]),
        ]
        if upstream in columns.position:
            parts.append((balance[0], 1 / feeder.s_base_kva, columns[upstream]))  # thirds
        family = Rows.of(balance.size, parts, constants.ravel() + shunt.ravel())
        doc = _BALANCE_DOCS[name]
        if extra is None:
            _add_rows(block, f"{name}_power_balance", sets, family, columns, (0.0, 0.0), doc)
            continue
        family.variables = columns.variables[family.variables]
        extra = _spread(extra, balance, (n_bus, len(CONNECTIONS), n_t))
        add_family(block, f"{name}_power_balance", sets, family, 0.0, 0.0, doc, extra)


_BALANCE_DOCS = {
    "active": "p[j,phi,t]/(S/3) - g v0 + P[in,phi,t] - sum P[out,phi,t] (+ split at the root) "
    "= 0  (pu per phase); dual: price of demand on phase phi",
    "reactive": "q[j,phi,t]/(S/3) + b v0 + Q[in,phi,t] - sum Q[out,phi,t] (+ split and the "
    "upstream grid at the root) = 0  (pu per phase)",
}


def _market_parts(feeder: Feeder, periods: list, injections):
    """A market's injections as terms of the per-phase balances (pu per phase).

    Returns (bus, phase, period) positions, coefficients and variables of the terms, the
    constants (buses x 3 x periods), and the symbolic rests per (bus, connection,
    period) or None. Keyed injections are read once into a row per (bus, connection,
    period), then spread over the connection's phases with its weights; an array is
    (buses x 3 x periods) numbers in kW (kvar) per phase.
    """
    if isinstance(injections, np.ndarray):
        expected = (len(feeder.buses), 3, len(periods))
        if injections.shape != expected:
            raise NetworkError(
                f"injection array of shape {injections.shape}: expected (buses, phases, "
                f"periods) = {expected}"
            )
        empty = np.zeros(0, dtype=np.int64)
        terms = ((empty, empty, empty), empty.astype(float), objects([]))
        return terms, injections.astype(float) * 3 / feeder.s_base_kva, None
    shape = (len(feeder.buses), len(CONNECTIONS), len(periods))
    row, column = _positions(feeder, periods)

    def pseudo_row(key) -> int:
        bus, connection, t = parse_key(key)
        return (row(bus, key) * shape[1] + CONNECTIONS.index(connection)) * shape[2] + column(
            t, key
        )

    (rows, coefs, variables), constants, extra = market_terms(
        injections, pseudo_row, math.prod(shape), 3 / feeder.s_base_kva
    )
    bus, connection, t = np.unravel_index(rows, shape)
    on = WEIGHTS[connection] > 0  # terms x phases
    term, phase = np.nonzero(on)
    at = (bus[term], phase, t[term])
    weighted = coefs[term] * WEIGHTS[connection[term], phase]
    by_phase = np.einsum("jct,ck->jkt", constants.reshape(shape), WEIGHTS)
    return (at, weighted, variables[term]), by_phase, extra


def _spread(extra: list, balance: np.ndarray, shape: tuple) -> list:
    """Symbolic rests per (bus, connection, period) spread over the phases' rows."""
    out: list = [None] * balance.size
    for k, expr in enumerate(extra):
        if expr is None:
            continue
        bus, connection, t = np.unravel_index(k, shape)
        for phase in np.flatnonzero(WEIGHTS[connection]):
            r = balance[bus, phase, t]
            term = expr * float(WEIGHTS[connection, phase])
            out[r] = term if out[r] is None else out[r] + term
    return out


def _add_voltage(block, feeder: ThreePhaseFeeder, columns: _Columns) -> np.ndarray:
    n_br, n_t = len(feeder.branches), len(block.PERIODS)
    v = columns["v_sq_pu"]
    drop = np.arange(n_br * 3 * n_t).reshape(n_br, 3, n_t)
    re_m, im_m = feeder.drop_matrices()
    n2 = feeder.branches["ratio"].to_numpy()[:, None, None] ** 2
    parts = [(drop, 1.0, v[feeder.to_pos]), (drop, -1 / n2, v[feeder.from_pos])]
    for flow, matrix in (("p_flow_pu", re_m), ("q_flow_pu", -im_m)):
        flows = columns[flow]
        for psi in range(3):
            used = np.abs(matrix[:, :, psi]) > 0
            line, phase = np.nonzero(used)
            parts.append((drop[line, phase], matrix[line, phase, psi][:, None], flows[line, psi]))
    _add_rows(
        block,
        "voltage_drop",
        (block.BRANCHES, block.PHASES, block.PERIODS),
        Rows.of(drop.size, parts),
        columns,
        (0.0, 0.0),
        "v[j,phi,t] = v[i,phi,t]/n^2 - sum_psi (2 Re M[phi,psi] P[l,psi,t] - 2 Im M[phi,psi] "
        "Q[l,psi,t]),  M = Gamma o conj(Z)  (pu^2)",
    )
    below = v[feeder.to_pos]
    buses = feeder.buses.loc[feeder.order[1:]]
    lower, upper = (np.repeat(buses[c].to_numpy() ** 2, 3 * n_t) for c in ("vmin_pu", "vmax_pu"))
    _add_rows(
        block,
        "voltage_limit",
        (block.BUSES_BELOW_ROOT, block.PHASES, block.PERIODS),
        Rows.of(below.size, [(np.arange(below.size), 1.0, below.ravel())]),
        columns,
        (lower, upper),
        "vmin_pu[j]^2 <= v[j,phi,t] <= vmax_pu[j]^2  (pu^2)",
    )
    return below


def _add_unbalance(block, columns: _Columns, v: np.ndarray, limit: float) -> None:
    """``|v_phi - mean_psi v_psi| <= 2 limit`` at every bus below the root (``v``: the
    squared voltages' positions in ``columns``, in ``feeder.order[1:]`` order)."""
    index = np.arange(v.size).reshape(v.shape)
    parts = [(index, 1.0, v)]
    parts += [(index, -1 / 3, v[:, [psi], :]) for psi in range(3)]
    _add_rows(
        block,
        "voltage_unbalance",
        (block.BUSES_BELOW_ROOT, block.PHASES, block.PERIODS),
        Rows.of(v.size, parts),
        columns,
        (-2 * limit, 2 * limit),
        "-2 d <= v[j,phi,t] - (1/3) sum_psi v[j,psi,t] <= 2 d  (pu^2): |V_phi - V_avg| <= d",
    )


def _add_thermal(block, feeder: Feeder, columns: _Columns, sides: int) -> np.ndarray:
    directions = polygon_directions(sides)
    br = feeder.branches
    n_t = len(block.PERIODS)
    rated = np.flatnonzero(np.isfinite(br["rating_kva"]) & (br["rating_kva"] > 0))
    shape = (len(rated), 3, len(directions), n_t)
    index = np.arange(math.prod(shape)).reshape(shape)
    parts = []
    for k, flow in enumerate(("p_flow_pu", "q_flow_pu")):
        used = directions[:, k] != 0
        flows = columns[flow][rated][:, :, None, :]
        parts.append((index[:, :, used], directions[used, k][None, None, :, None], flows))
    # per phase: (rating/3) / (S/3) in per-phase pu
    cap = br["rating_kva"].to_numpy()[rated] / feeder.s_base_kva * math.cos(math.pi / sides)
    cap = np.broadcast_to(cap[:, None, None, None], shape).ravel()
    _add_rows(
        block,
        "thermal_limit",
        (block.RATED_BRANCHES, block.PHASES, block.DIRECTIONS, block.PERIODS),
        Rows.of(index.size, parts),
        columns,
        (-cap, cap),
        "-S_l/3 cos(pi/N) <= cos(2 pi k/N) P[l,phi,t] + sin(2 pi k/N) Q[l,phi,t] <= "
        "S_l/3 cos(pi/N)  (pu per phase): each phase's polygon inscribed in its circle",
    )
    return directions


PRICE_PARTS = ("energy", "congestion", "voltage", "unbalance")


def nodal_prices_3ph(handles: ThreePhaseHandles, solution) -> pd.DataFrame:
    """Per-phase DLMPs in currency/MWh (reactive: currency/Mvarh), decomposed.

    The stationarity conditions of the flows and squared voltages link the duals: for
    branch l from bus i to bus j, phases phi and psi (lam, kap: active and reactive
    balance duals; nu: voltage-drop duals; mu: thermal duals; alpha: voltage-limit
    duals; beta: unbalance duals)::

        lam[j,psi] = lam[i,psi] - sum_phi 2 Re M[phi,psi] nu[l,phi] - sum_k cos_k mu[l,psi,k]
        kap[j,psi] = kap[i,psi] + sum_phi 2 Im M[phi,psi] nu[l,phi] - sum_k sin_k mu[l,psi,k]
        nu[l,phi]  = sum_{children c of j} nu[c,phi] / n_c^2 - alpha[j,phi]
                     - (beta[j,phi] - mean_psi beta[j,psi])

    They are linear, so each price is the sum of what each source alone gives: the
    root's price (energy, the same on every phase), the thermal duals (congestion), the
    voltage limits (voltage) and the unbalance limits (unbalance). Through the mutual
    impedances a voltage limit on one phase prices the other phases too.

    Parameters
    ----------
    handles : what :meth:`LinDist3Flow.add` returned.
    solution : the :class:`~gridmarkets.solvers.Solution` of the model.

    Returns
    -------
    Tidy table with columns bus, phase, period, price (the active balance's dual: what
    one more kW of demand on that phase costs), energy, congestion, voltage,
    unbalance (which sum to price), and price_q with energy_q, congestion_q, voltage_q,
    unbalance_q.
    """
    feeder, periods = handles.feeder, handles.periods
    buses, branches = list(feeder.buses.index), list(feeder.branches.index)
    lam = _duals(solution, handles.active_power_balance, [buses, PHASES, periods])
    kap = _duals(solution, handles.reactive_power_balance, [buses, PHASES, periods])
    alpha = _duals(solution, handles.voltage_limit, [buses, PHASES, periods])
    beta = np.zeros_like(alpha)
    if handles.voltage_unbalance is not None:
        beta = _duals(solution, handles.voltage_unbalance, [buses, PHASES, periods])
        beta = beta - beta.mean(axis=1, keepdims=True)
    mu = _duals(
        solution,
        handles.thermal_limit,
        [branches, PHASES, range(len(handles.polygon)), periods],
    )
    mu_p, mu_q = (np.einsum("lpkt,k->lpt", mu, handles.polygon[:, c]) for c in (0, 1))
    zero_n = np.zeros((len(branches), 3, len(periods)))
    root = (np.broadcast_to(lam[0], lam.shape), np.broadcast_to(kap[0], kap.shape))
    parts = {
        "energy": root,
        "congestion": _propagate(feeder, zero_n, mu_p, mu_q),
        "voltage": _propagate(feeder, _drop_duals(feeder, alpha), zero_n, zero_n),
        "unbalance": _propagate(feeder, _drop_duals(feeder, beta), zero_n, zero_n),
    }
    scale = handles.per_mwh()
    columns = {
        "bus": np.repeat(buses, 3 * len(periods)),
        "phase": np.tile(np.repeat(PHASES, len(periods)), len(buses)),
        "period": np.tile(periods, 3 * len(buses)),
        "price": lam.ravel() * scale,
    }
    columns.update({name: p.ravel() * scale for name, (p, _) in parts.items()})
    columns["price_q"] = kap.ravel() * scale
    columns.update({f"{name}_q": q.ravel() * scale for name, (_, q) in parts.items()})
    return pd.DataFrame(columns)


def connection_prices(prices: pd.DataFrame, connections: Sequence[str]) -> pd.DataFrame:
    """The price of an injection on each connection, from per-phase prices.

    A connection to k phases splits its injection x equally, x/k on each
    (:meth:`LinDist3Flow.add`), so x enters phase phi's active balance with weight
    ``w[c,phi] = 1/k`` for the phases it names and 0 otherwise. The Lagrangian's
    derivative in x is then ``sum_phi w[c,phi] lam[phi]``: one more kW on connection c
    is worth the mean of its phases' prices (their price for a single phase; for "abc"
    the mean of the three, which is unique even where the split of a balanced limit's
    dual over three identical phase rows is not). Every part of the decomposition is
    weighted the same way, so the parts still add up to the price.

    Parameters
    ----------
    prices : :func:`nodal_prices_3ph`'s table (bus, phase, period, price and parts).
    connections : the connections wanted ("a", "bc", "abc", ...).

    Returns
    -------
    The same columns with ``phase`` holding each connection, one row per bus, connection
    and period.
    """
    values = [c for c in prices.columns if c not in ("bus", "phase", "period")]
    wide = prices.pivot_table(index=["bus", "period"], columns="phase", values=values)
    frames = []
    for connection in dict.fromkeys(connections):
        weights = WEIGHTS[CONNECTIONS.index(connection)]
        by_phase = zip(PHASES, weights, strict=True)
        mixed = sum(wide.xs(phase, axis=1, level="phase") * w for phase, w in by_phase)
        frames.append(mixed.reset_index().assign(phase=connection))
    table = pd.concat(frames, ignore_index=True) if frames else prices.iloc[:0]
    return table[["bus", "phase", "period", *values]]


def _duals(solution, constraint, index: list) -> np.ndarray:
    """An indexed constraint's duals as an array over ``index`` (0 where absent)."""
    shape = tuple(len(list(i)) for i in index)
    keys = pd.MultiIndex.from_product([list(i) for i in index])
    return solution.dual(constraint).reindex(keys).fillna(0.0).to_numpy().reshape(shape)


def _drop_duals(feeder: Feeder, limits: np.ndarray) -> np.ndarray:
    """nu per branch and phase from per-bus limit duals (LinDistFlow's leaf-up sum, for
    every phase and period at once)."""
    nu = _voltage_drop_duals(feeder, limits.reshape(len(feeder.buses), -1))
    return nu.reshape(len(feeder.branches), *limits.shape[1:])


def _propagate(feeder: ThreePhaseFeeder, nu, mu_p, mu_q) -> tuple[np.ndarray, np.ndarray]:
    """(lam, kap) from the branch stationarity conditions, root prices zero."""
    re_m, im_m = feeder.drop_matrices()
    lam = np.zeros((len(feeder.buses), *nu.shape[1:]))
    kap = np.zeros_like(lam)
    for line in range(len(feeder.branches)):
        i, j = feeder.from_pos[line], feeder.to_pos[line]
        lam[j] = lam[i] - re_m[line].T @ nu[line] - mu_p[line]
        kap[j] = kap[i] + im_m[line].T @ nu[line] - mu_q[line]
    return lam, kap


@dataclass
class ThreePhaseACCheck:
    """pandapower's ``runpp_3ph`` next to LinDist3Flow, per phase, period and element.

    Attributes
    ----------
    buses : bus, phase, period, v_pu_linear, v_pu_ac, error_pu, vmin_pu, vmax_pu.
    unbalance : bus, period, vuf_percent_ac (pandapower's ``unbalance_percent``,
        |V2| / |V1|), pvur_percent_linear and pvur_percent_ac (max_phi |V_phi - V_avg|
        / V_avg, the quantity ``max_unbalance_pu`` limits).
    branches : branch, phase, period, from_bus, to_bus, kind, element, p_kw_linear,
        p_kw_ac, q_kvar_linear, q_kvar_ac (at the sending end; the AC one at the
        terminal, so with a line's charging, unlike the linear series flow),
        loading_percent_linear, loading_percent_ac, loss_kw_ac (pandapower's per-phase
        losses; LinDist3Flow is lossless).
    """

    buses: pd.DataFrame
    unbalance: pd.DataFrame
    branches: pd.DataFrame

    @property
    def max_voltage_error_pu(self) -> pd.Series:
        """max over buses and periods of |V_linear - V_ac| (pu), per phase."""
        return self.buses["error_pu"].abs().groupby(self.buses["phase"]).max()

    def violations(self) -> pd.DataFrame:
        """AC limit violations per phase: a phase voltage outside [vmin, vmax], a branch
        phase above 100 % (element, index, phase, period, value, limit)."""
        b = self.buses
        low, high = b["v_pu_ac"] < b["vmin_pu"], b["v_pu_ac"] > b["vmax_pu"]
        bad = b[low | high]
        voltage = bad.assign(
            element="bus",
            index=bad["bus"],
            value=bad["v_pu_ac"],
            limit=np.where(low[low | high], bad["vmin_pu"], bad["vmax_pu"]),
        )
        over = self.branches[self.branches["loading_percent_ac"] > 100.0]
        thermal = over.assign(
            element=over["kind"], index=over["element"], value=over["loading_percent_ac"]
        )
        columns = ["element", "index", "phase", "period", "value", "limit"]
        return pd.concat(
            [voltage[columns], thermal.assign(limit=100.0)[columns]], ignore_index=True
        )

    def summary(self) -> dict[str, Any]:
        """Plain JSON-able facts per phase (``_a``, ``_b``, ``_c``): the largest voltage
        error of the linear model, the lowest and highest AC voltage (pu) and the
        largest AC loading (%); over all phases the largest unbalance (VUF and PVUR,
        %) and the violations."""
        by_phase = {
            "max_voltage_error_pu": self.max_voltage_error_pu,
            "min_vm_pu": self.buses.groupby("phase")["v_pu_ac"].min(),
            "max_vm_pu": self.buses.groupby("phase")["v_pu_ac"].max(),
            "max_loading_percent": self.branches.groupby("phase")["loading_percent_ac"].max(),
        }
        summary: dict[str, Any] = {"power_flow": "pandapower runpp_3ph", "phases": "abc"}
        for name, series in by_phase.items():
            summary[name] = float(series.max() if name.startswith("max") else series.min())
            summary.update({f"{name}_{phase}": float(series[phase]) for phase in PHASES})
        unbalance = self.unbalance
        summary["max_vuf_percent"] = float(unbalance["vuf_percent_ac"].max())
        summary["max_pvur_percent"] = float(unbalance["pvur_percent_ac"].max())
        summary["max_pvur_percent_linear"] = float(unbalance["pvur_percent_linear"].max())
        violations = self.violations()
        summary["violations_count"] = len(violations)
        summary["violations"] = violations.head(50).to_dict(orient="records")
        return summary


def ac_check_3ph(
    feeder: Feeder,
    p_kw: Mapping | np.ndarray | None = None,
    q_kvar: Mapping | np.ndarray | None = None,
    periods: Sequence | None = None,
) -> ThreePhaseACCheck:
    """Compare LinDist3Flow's power flow of these injections with pandapower's runpp_3ph.

    Parameters
    ----------
    feeder : the feeder (read as three-phase).
    p_kw, q_kvar : injections (kW, kvar; positive into the grid): numbers keyed as
        :meth:`LinDist3Flow.add` takes them, or (buses x 3 x periods) arrays such as
        ``handles.phase_injection_values()``; both None: the net's own elements
        (:func:`phase_injections`) in one period 0. The root is the slack.
    periods : the periods' labels (default: those the keys name, sorted, or 0, 1, ...).

    Returns
    -------
    ThreePhaseACCheck
    """
    feeder = three_phase_feeder(feeder)
    if p_kw is None and q_kvar is None:
        p_kw, q_kvar = (_keyed(table) for table in phase_injections(feeder))
    if isinstance(p_kw, np.ndarray):
        p, q = p_kw, np.zeros_like(p_kw) if q_kvar is None else q_kvar
        periods = list(range(p.shape[2]) if periods is None else periods)
    else:
        p_kw, q_kvar = dict(p_kw or {}), dict(q_kvar or {})
        if periods is None:
            periods = sorted({parse_key(key)[2] for key in [*p_kw, *q_kvar]})
        periods = list(periods)
        p, q = (phase_arrays(feeder, table, periods) for table in (p_kw, q_kvar))
    linear = solve_linear_3ph(feeder, p, q)
    ac = run_ac_3ph(feeder, p, q)
    return ThreePhaseACCheck(
        _bus_table(feeder, periods, linear, ac),
        _unbalance_table(feeder, periods, linear, ac),
        _branch_table(feeder, periods, linear, ac),
    )


def _keyed(table: pd.DataFrame) -> dict:
    return {(bus, phase, 0): value for (bus, phase), value in table.stack().items()}


def run_ac_3ph(feeder: Feeder, p_kw: np.ndarray, q_kvar: np.ndarray) -> dict[str, np.ndarray]:
    """pandapower's ``runpp_3ph`` once per period of (buses x 3 x periods) injections.

    The net's own loads and generators are switched off and one wye-connected
    ``asymmetric_sgen`` per bus carries the injection; the external grid is the slack.

    Returns
    -------
    dict of arrays: vm_pu (buses x 3 x periods), vuf_percent (buses x periods), and per
    branch (branches x 3 x periods) p_kw and q_kvar at the sending end, loading_percent
    and loss_kw.
    """
    import pandapower as pp

    net = _blank_copy(feeder.net)
    buses = feeder.buses.index.to_numpy()
    at = buses[buses != feeder.root]
    sgens = [pp.create_asymmetric_sgen(net, bus) for bus in at]
    below = feeder.position(at)
    n_t = p_kw.shape[2]
    out = {"vm_pu": np.empty((len(buses), 3, n_t)), "vuf_percent": np.empty((len(buses), n_t))}
    for name in ("p_kw", "q_kvar", "loading_percent", "loss_kw"):
        out[name] = np.empty((len(feeder.branches), 3, n_t))
    for t in track(range(n_t), f"three-phase AC power flow of {feeder.name}"):
        for k, phase in enumerate(PHASES):
            net.asymmetric_sgen.loc[sgens, f"p_{phase}_mw"] = p_kw[below, k, t] / 1000.0
            net.asymmetric_sgen.loc[sgens, f"q_{phase}_mvar"] = q_kvar[below, k, t] / 1000.0
        try:
            pp.runpp_3ph(net, numba=False)
        except pp.LoadflowNotConverged as err:
            raise NetworkError(
                f"runpp_3ph of {feeder.name} did not converge in period {t}"
            ) from err
        _read_3ph(feeder, net, out, t)
    return out


def _blank_copy(net):
    import copy

    net = copy.deepcopy(net)
    for table in ("load", "sgen", "gen", "storage", "asymmetric_load", "asymmetric_sgen"):
        frame = getattr(net, table, None)
        if frame is not None and len(frame):
            frame["in_service"] = False
    return net


def _read_3ph(feeder: Feeder, net, out: dict, t: int) -> None:
    res = net.res_bus_3ph.loc[feeder.buses.index]
    out["vm_pu"][:, :, t] = res[[f"vm_{p}_pu" for p in PHASES]].to_numpy()
    out["vuf_percent"][:, t] = res["unbalance_percent"].to_numpy()
    br = feeder.branches
    kinds = br["kind"].to_numpy()
    for kind, table in (("line", net.res_line_3ph), ("trafo", net.res_trafo_3ph)):
        rows = np.flatnonzero(kinds == kind)
        result = table.loc[br["element"].to_numpy()[rows]]
        out["p_kw"][rows, :, t] = _sending(feeder, net, kind, rows, result, "p_{}_{}_mw")
        out["q_kvar"][rows, :, t] = _sending(feeder, net, kind, rows, result, "q_{}_{}_mvar")
        loading = result[[f"loading_{p}_percent" for p in PHASES]].to_numpy()
        out["loading_percent"][rows, :, t] = loading
        out["loss_kw"][rows, :, t] = result[[f"pl_{p}_mw" for p in PHASES]].to_numpy() * 1000.0


def _sending(feeder: Feeder, net, kind: str, rows: np.ndarray, result, column: str) -> np.ndarray:
    """Per-phase power (``column``: "p_{phase}_{end}_mw" or the q one) into each branch
    at its feeder sending end (kW or kvar). For a transformer, what its LV side
    delivers: a Dyn's HV phases carry mixed LV phases."""
    if kind == "trafo":
        return -result[[column.format(p, "lv") for p in PHASES]].to_numpy() * 1000.0
    first = net.line.loc[result.index, "from_bus"].map(feeder.merged).to_numpy()
    forward = (first == feeder.branches["from_bus"].to_numpy()[rows])[:, None]
    sending, receiving = (
        result[[column.format(p, end) for p in PHASES]].to_numpy() for end in ("from", "to")
    )
    return np.where(forward, sending, receiving) * 1000.0


def _tidy(feeder: Feeder, labels, periods: list, columns: dict, name: str) -> pd.DataFrame:
    """A tidy table from (rows x 3 x periods) arrays."""
    n = len(labels)
    table = pd.DataFrame(
        {
            name: np.repeat(np.asarray(labels), 3 * len(periods)),
            "phase": np.tile(np.repeat(PHASES, len(periods)), n),
            "period": np.tile(periods, 3 * n),
        }
    )
    return table.assign(**{key: value.ravel() for key, value in columns.items()})


def _bus_table(feeder: Feeder, periods: list, linear: dict, ac: dict) -> pd.DataFrame:
    v_linear = np.sqrt(np.maximum(linear["v_sq"], 0.0))
    columns = {"v_pu_linear": v_linear, "v_pu_ac": ac["vm_pu"], "error_pu": v_linear - ac["vm_pu"]}
    table = _tidy(feeder, feeder.buses.index, periods, columns, "bus")
    return table.join(feeder.buses[["vmin_pu", "vmax_pu"]], on="bus")


def _pvur_percent(v: np.ndarray) -> np.ndarray:
    """max_phi |V_phi - V_avg| / V_avg in percent, (buses x 3 x periods) -> (buses x periods)."""
    mean = v.mean(axis=1, keepdims=True)
    return 100 * (np.abs(v - mean) / mean).max(axis=1)


def _unbalance_table(feeder: Feeder, periods: list, linear: dict, ac: dict) -> pd.DataFrame:
    buses = feeder.buses.index.to_numpy()
    return pd.DataFrame(
        {
            "bus": np.repeat(buses, len(periods)),
            "period": np.tile(periods, len(buses)),
            "vuf_percent_ac": ac["vuf_percent"].ravel(),
            "pvur_percent_linear": _pvur_percent(np.sqrt(linear["v_sq"])).ravel(),
            "pvur_percent_ac": _pvur_percent(ac["vm_pu"]).ravel(),
        }
    )


def _branch_table(feeder: Feeder, periods: list, linear: dict, ac: dict) -> pd.DataFrame:
    br = feeder.branches
    base = feeder.s_base_kva / 3
    rating = br["rating_kva"].to_numpy()[:, None, None] / 3
    columns = {
        "p_kw_linear": linear["p"] * base,
        "p_kw_ac": ac["p_kw"],
        "q_kvar_linear": linear["q"] * base,
        "q_kvar_ac": ac["q_kvar"],
        "loading_percent_linear": 100 * np.hypot(linear["p"], linear["q"]) * base / rating,
        "loading_percent_ac": ac["loading_percent"],
        "loss_kw_ac": ac["loss_kw"],
    }
    table = _tidy(feeder, br.index, periods, columns, "branch")
    return table.join(br[["from_bus", "to_bus", "kind", "element"]], on="branch")


def _voltage_drop_duals(feeder, limits: np.ndarray) -> np.ndarray:
    """nu per branch from the voltage-limit duals, accumulated from the leaves up (the
    lossless stationarity of the squared voltages: each phase's rows are independent)."""
    n2 = branch_arrays(feeder)["n2"]
    below = np.zeros_like(limits)
    nu = np.zeros((len(feeder.branches), limits.shape[1]))
    for k in range(len(feeder.branches) - 1, -1, -1):
        j = feeder.to_pos[k]
        nu[k] = below[j] - limits[j]
        below[feeder.from_pos[k]] += nu[k] / n2[k]
    return nu
