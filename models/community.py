"""Energy communities: members, shared assets, a community manager and a fair split.

Members are prosumers (:class:`~gridmarkets.models.prosumer.ProsumerSpec`, built by
:func:`~gridmarkets.models.prosumer.add_home`); their meters exchange with the
community's internal bus instead of the grid. Shared assets (PV, a battery) belong to
owners in shares. The community manager schedules the shared assets and the members'
flexible devices for the community's goal; the community trades with the upstream
grid at one point of connection with a capacity, or is islanded (then load may be
shed at the value of lost load and PV curtailed).

Internal balance, copper plate (no network), per period ``t``::

    p_grid_import[t] - p_grid_export[t] + sum_shared p_net[a, t]
        + sum_members (p_export[i, t] - p_import[i, t]) = 0          (kW)

so its dual is what one more kW of demand inside the community costs: the internal
price (currency/MWh in the ``exchange`` table). The balance is written by the network
formulation :func:`gridmarkets.networks.attach_grid` picks: CopperPlate without a
feeder, LinDistFlow's nodal balances on one (members and shared assets at their buses,
the point of connection at the feeder's root; unity power factor: no reactive
injections); the prices come from :func:`gridmarkets.networks.nodal_prices` either way.
On a three-phase feeder (LinDist3Flow) members and their devices connect to phases as
prosumers do (:func:`gridmarkets.models.prosumer.home_rows`), shared assets by their
``phase`` (and their devices'); the point of connection is balanced (its price is the
same on every phase).

Objectives: ``"cost"`` (grid energy, demand charge at the connection, device costs,
lost load, currency), ``"self_sufficiency"`` (energy not supplied within the
community: grid import plus shed, kWh), ``"emissions"`` (grid import times the grid's
carbon intensity, kg; exports earn no credit) or weights ``{"cost": 1, "emissions":
0.1}`` (weights of the non-cost terms in currency per kWh and per kg).

Coalitions. The same builder models any coalition ``S`` of members: the members of
``S``, every shared asset scaled by the shares its owners in ``S`` hold, and the
connection capacity scaled by the connection shares of ``S`` (equal shares unless
given). ``S = {i}`` is member ``i`` alone with its shares; its optimum is its
stand-alone bill. Scaling keeps the cost game subadditive when the model is an LP
(each coalition could run the sum of its parts' schedules); binaries (non-relaxed
batteries, appliances, EV minimum power) can break that in rare cases, and
:func:`split` reports the community value so it shows. The game's value is the
objective: currency for ``"cost"``, kWh or kg for the other objectives.

Inside the community a member's meter keeps its ``import_limit_kw`` and
``export_limit_kw`` but not its tariff or ``demand_charge_per_kw``: the community pays
the grid at the connection, and members pay their share of the split.

Solving coalitions. :class:`CommunityGame` builds one model of the whole community
and re-solves it per coalition (:func:`set_coalition` switches members and shared
assets on and off through mutable parameters and fixed variables); measured in
benchmarks/bench_community.py it is about 2.5-3.5 times faster than a fresh build per
coalition, since the build is more than half of a coalition's time. ``workers > 1``
spreads the coalitions over processes, one model per process; it pays only on a
machine with idle cores.

In a market the community is one player: :func:`exchange_bids` turns its schedule
into bids at its tariff, :func:`bid_curves` its price response into block bids, both
in the bids format of :mod:`gridmarkets.models.lem`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from gridmarkets.errors import InputError
from gridmarkets.log import track
from gridmarkets.models import allocation, assets, prosumer
from gridmarkets.models.assets import BatterySpec, Phase, Profile, PVSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.models.stochastic import Risk, TwoStage, solve_two_stage, stochastic_tables
from gridmarkets.results import Result
from gridmarkets.scenarios import Scenarios
from gridmarkets.solvers import Solution, record_build_time, solve
from gridmarkets.specs.base import Spec

if TYPE_CHECKING:
    from gridmarkets.networks import Feeder, NetworkFormulation

Objective = Literal["cost", "self_sufficiency", "emissions"] | dict[str, float]
OBJECTIVE_TERMS = ("cost", "self_sufficiency", "emissions")
BID_COLUMNS = ["participant", "side", "quantity_kw", "price", "period", "block", "bus"]
METHODS = ("shapley", "nucleolus", "proportional", "equal")


class SharedAssetSpec(Spec):
    """A shared asset: PV and/or a battery at one bus, owned by members in shares.

    ``owners`` maps member ids to shares; they must sum to 1. Empty: every member owns
    an equal share.
    """

    bus: int | None = Field(None, description="feeder bus (pandapower index), on a network")
    pv: PVSpec | None = None
    battery: BatterySpec | None = None
    owners: dict[str, NonNegativeFloat] = Field(default_factory=dict, description="shares")
    phase: Phase = Field(
        None,
        description="phases it is connected to on a three-phase network (its devices' "
        "unless they name their own); absent: 'abc'",
    )

    @model_validator(mode="after")
    def _something(self) -> SharedAssetSpec:
        if self.pv is None and self.battery is None:
            raise ValueError("a shared asset needs pv or battery")
        if self.owners and abs(sum(self.owners.values()) - 1.0) > 1e-6:
            raise ValueError(f"owners: shares sum to {sum(self.owners.values()):g}, not 1")
        return self


class ConnectionSpec(Spec):
    """The community's point of connection to the upstream grid."""

    capacity_kw: PositiveFloat | None = Field(None, description="import and export limit each")
    demand_charge_per_kw: NonNegativeFloat = Field(
        0.0, description="currency per kW of the horizon's peak import"
    )
    shares: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="members' shares of the capacity (sum 1; empty: equal shares)",
    )

    @model_validator(mode="after")
    def _sum(self) -> ConnectionSpec:
        if self.shares and abs(sum(self.shares.values()) - 1.0) > 1e-6:
            raise ValueError(f"shares: sum to {sum(self.shares.values()):g}, not 1")
        return self


# --- coalitions -------------------------------------------------------------------------


def shares_of(owners: Mapping[str, float], members: Sequence[str]) -> dict[str, float]:
    """Owners' shares, equal among ``members`` when ``owners`` is empty."""
    if not owners:
        return {m: 1.0 / len(members) for m in members}
    unknown = set(owners) - set(members)
    if unknown:
        raise InputError(f"owners: {sorted(unknown)} are not members")
    return {m: float(owners.get(m, 0.0)) for m in members}


# --- build ------------------------------------------------------------------------------


def build(
    members: Mapping[str, ProsumerSpec],
    shared: Mapping[str, SharedAssetSpec] | None = None,
    prices: PricesSpec | None = None,
    *,
    periods: int = 24,
    period_hours: float = 1.0,
    mode: Literal["grid", "islanded"] = "grid",
    objective: Objective = "cost",
    connection: ConnectionSpec | None = None,
    carbon_kg_per_mwh: Profile = 0.0,
    network: Feeder | None = None,
    formulation: NetworkFormulation | None = None,
    coalition: Iterable[str] | None = None,
    value_of_lost_load_per_mwh: float = 10_000.0,
    timestamps: Sequence[Any] | None = None,
    extra: Callable[[pyo.ConcreteModel], None] | None = None,
) -> pyo.ConcreteModel:
    """Build the community manager's scheduling problem as a Pyomo model.

    Parameters
    ----------
    members : member id -> prosumer (load and devices; ``bus`` on a network).
    shared : asset id -> shared asset (PV and/or battery with owners' shares).
    prices : the tariff at the point of connection (currency/MWh); required when grid.
    periods, period_hours : the horizon.
    mode : "grid" (trades at the point of connection) or "islanded".
    objective : "cost", "self_sufficiency", "emissions" or a dict of weights.
    connection : capacity, demand charge and capacity shares of the point of connection.
    carbon_kg_per_mwh : the grid's carbon intensity per period (kg CO2 per MWh imported).
    network : a :class:`~gridmarkets.networks.Feeder` for the internal network; None:
        one community bus.
    formulation : a :class:`~gridmarkets.networks.NetworkFormulation`; default
        LinDistFlow on a feeder (LinDist3Flow on a
        :class:`~gridmarkets.networks.ThreePhaseFeeder`), CopperPlate (one balance per
        period) without one.
    coalition : the members modelled (default: all); shared assets and the connection
        capacity are scaled by the shares they hold.
    value_of_lost_load_per_mwh : the cost of shed load (islanded).
    timestamps : one per period, copied into the result tables.
    extra : called with the model before it is returned, for user constraints.

    Returns
    -------
    The model: ``model.home[i]`` (members), ``model.shared[a]``, ``model.network``
    (the formulation's balances: ``model.network.active_power_balance``),
    ``model.handles`` (its :class:`~gridmarkets.networks.NetworkHandles`),
    ``model.objective``.
    """
    started = time.perf_counter()
    everyone = [str(k) for k in members]
    inside = everyone if coalition is None else [str(k) for k in coalition]
    unknown = set(inside) - set(everyone)
    if unknown or not inside:
        raise InputError(f"coalition: {sorted(unknown) or 'empty'} is not a set of members")
    weights = _objective_weights(objective)
    m = pyo.ConcreteModel(name="community")
    m.PERIODS = pyo.RangeSet(0, periods - 1, doc="periods")
    m.MEMBERS = pyo.Set(initialize=inside, doc="members in the coalition")
    m.specs = {i: members[i] for i in inside}
    m.mode, m.period_hours, m.timestamps, m.feeder = mode, period_hours, timestamps, network
    _add_tariff(m, prices, mode, carbon_kg_per_mwh)
    m.in_coalition = pyo.Param(
        m.MEMBERS, initialize=1.0, mutable=True, doc="1 if the member is in the coalition"
    )
    m.home = pyo.Block(m.MEMBERS, doc="a member's devices and its meter to the community bus")
    for i in inside:
        prosumer.add_home(m.home[i], m.specs[i], m, value_of_lost_load_per_mwh)
    m.everyone, m.shared_specs = everyone, {str(a): spec for a, spec in (shared or {}).items()}
    _add_shared(m)
    _add_connection(m, connection or ConnectionSpec())
    set_coalition(m, inside)
    _add_grid(m, network, formulation)
    _add_objective(m, weights, value_of_lost_load_per_mwh)
    if extra is not None:
        extra(m)
    record_build_time(m, time.perf_counter() - started)
    return m


def _objective_weights(objective: Objective) -> dict[str, float]:
    if isinstance(objective, str):
        if objective not in OBJECTIVE_TERMS:
            raise InputError(f"objective: {objective!r} is not one of {OBJECTIVE_TERMS}")
        return {term: float(term == objective) for term in OBJECTIVE_TERMS}
    unknown = set(objective) - set(OBJECTIVE_TERMS)
    if unknown:
        raise InputError(f"objective: unknown term(s) {sorted(unknown)}; use {OBJECTIVE_TERMS}")
    return {term: float(objective.get(term, 0.0)) for term in OBJECTIVE_TERMS}


def _add_tariff(m, prices: PricesSpec | None, mode: str, carbon: Profile) -> None:
    """Tariff and carbon intensity as mutable parameters (bid curves re-solve)."""
    if mode == "grid" and prices is None:
        raise InputError("prices: required when mode is 'grid'")
    n, dt = len(m.PERIODS), m.period_hours
    buy = assets.profile_values(prices.import_price if prices else 0.0, n, dt, "import_price")
    sell = assets.profile_values(prices.export_price if prices else 0.0, n, dt, "export_price")
    if (sell > buy + 1e-9).any():
        raise InputError("prices.export_price: above import_price in some period")
    intensity = assets.profile_values(carbon, n, dt, "carbon_kg_per_mwh")
    m.import_price_per_mwh = pyo.Param(
        m.PERIODS, initialize=dict(enumerate(buy)), mutable=True, doc="currency/MWh"
    )
    m.export_price_per_mwh = pyo.Param(
        m.PERIODS, initialize=dict(enumerate(sell)), mutable=True, doc="currency/MWh"
    )
    m.carbon_kg_per_mwh = pyo.Param(
        m.PERIODS, initialize=dict(enumerate(intensity)), mutable=True, doc="kg CO2/MWh"
    )


def set_coalition(m: pyo.ConcreteModel, coalition: Iterable[str]) -> None:
    """Make a built model describe coalition ``S`` (the members it was built with, or fewer).

    Members outside ``S`` are deactivated with their meters fixed at 0 and leave the
    objective; every shared asset's factor becomes the share its owners in ``S`` hold
    and the connection capacity the coalition's share of it. A battery or PV plant
    scaled by ``f`` is ``f`` times the full asset's schedule (its constraints are
    linear and homogeneous in power, energy and initial state), so scaling the full
    asset's injection and cost by the factor is exact; one model then serves every
    coalition without a rebuild.
    """
    inside = {str(i) for i in coalition}
    unknown = inside - set(m.MEMBERS)
    if unknown or not inside:
        raise InputError(f"coalition: {sorted(unknown) or 'empty'} is not a set of members")
    for i in m.MEMBERS:
        home, member = m.home[i], i in inside
        m.in_coalition[i] = float(member)
        if member:
            home.activate()
        else:
            home.deactivate()
        for t in m.PERIODS:  # islanded or not, a member's meter trades inside
            for var in (home.p_import_kw[t], home.p_export_kw[t]):
                if member:
                    var.unfix()
                else:
                    var.fix(0.0)
    for a, spec in m.shared_specs.items():
        shares = shares_of(spec.owners, m.everyone)
        m.shared_factor[a] = factor = sum(shares[i] for i in inside)
        _idle(m.shared[a], factor == 0)
    shares = shares_of(m.connection.shares, m.everyone)
    m.connection_factor = sum(shares[i] for i in inside)
    m.coalition = frozenset(inside)


def _idle(block: pyo.Block, idle: bool) -> None:
    """Switch off an asset the coalition has no share of: its variables fixed at 0."""
    if idle:
        block.deactivate()
    else:
        block.activate()
    for var in block.component_data_objects(pyo.Var, descend_into=True):
        if idle:
            var.fix(0.0)
        else:
            var.unfix()


def _add_shared(m) -> None:
    """Shared assets: PV and battery device blocks, their net power and costs."""
    m.SHARED = pyo.Set(initialize=list(m.shared_specs), doc="shared assets")
    m.shared_factor = pyo.Param(
        m.SHARED, initialize=1.0, mutable=True, doc="share of the asset the coalition owns"
    )
    m.shared = pyo.Block(m.SHARED, doc="one shared asset")
    periods, dt = list(m.PERIODS), m.period_hours
    for aid, spec in m.shared_specs.items():
        b = m.shared[aid]
        net = {}
        for name, add in (("pv", assets.add_pv), ("battery", assets.add_battery)):
            device = getattr(spec, name)
            if device is not None:
                if name == "pv" and m.mode == "islanded":
                    device = device.model_copy(update={"curtailable": True})
                b.add_component(name, pyo.Block(doc=f"shared {name}"))
                net[name] = add(getattr(b, name), device, periods, dt)
        b.devices = net
        factor = m.shared_factor[aid]
        b.p_net_kw = pyo.Expression(
            m.PERIODS,
            rule=lambda b, t, net=net, f=factor: f * sum(p[t] for p in net.values()),
            doc="p_net[a, t] = f[a] sum_devices p_net[t]  (kW, into the community bus)",
        )
        b.cost = pyo.Expression(
            expr=factor * sum(getattr(b, n).cost for n in net),
            doc="f[a] sum of device costs (currency)",
        )


def _add_connection(m, connection: ConnectionSpec) -> None:
    """Import and export at the point of connection, within the coalition's capacity."""
    m.connection = connection
    m.connection_factor = pyo.Param(
        initialize=1.0, mutable=True, doc="share of the connection the coalition holds"
    )
    capacity = connection.capacity_kw
    upper = None if capacity is None else capacity * m.connection_factor
    m.p_grid_import_kw = pyo.Var(
        m.PERIODS, bounds=(0.0, upper), doc="import at the connection: 0 <= p <= f cap  (kW)"
    )
    m.p_grid_export_kw = pyo.Var(
        m.PERIODS, bounds=(0.0, upper), doc="export at the connection: 0 <= p <= f cap  (kW)"
    )
    if m.mode == "islanded":
        m.p_grid_import_kw.fix(0.0)
        m.p_grid_export_kw.fix(0.0)
    m.p_peak_import_kw = pyo.Var(bounds=(0.0, None), doc="peak import over the horizon (kW)")
    m.peak_import = pyo.Constraint(
        m.PERIODS,
        rule=lambda m, t: m.p_peak_import_kw >= m.p_grid_import_kw[t],
        doc="p_peak >= p_grid_import[t]  (kW)",
    )
    m.demand_charge = pyo.Expression(
        expr=connection.demand_charge_per_kw * m.p_peak_import_kw,
        doc="demand_charge * p_peak  (currency)",
    )


def _add_grid(m, feeder, formulation) -> None:
    """The community bus, or the feeder's nodal balances, through ``attach_grid``.

    Every member's meter, every shared asset and the point of connection (at the
    feeder's root) is one owner of the injection table. Without a feeder, CopperPlate
    writes the community balance; on one, LinDistFlow (by default) balances every bus,
    and an islanded community draws no reactive power from upstream; a
    :class:`~gridmarkets.networks.ThreePhaseFeeder` gets LinDist3Flow likewise.
    """
    from gridmarkets.networks import LinDist3Flow, LinDistFlow, ThreePhaseFeeder, attach_grid

    if formulation is None and feeder is not None:
        default = LinDist3Flow if isinstance(feeder, ThreePhaseFeeder) else LinDistFlow
        formulation = default(upstream_reactive=m.mode == "grid")
    root = None if feeder is None else feeder.root
    periods = list(m.PERIODS)
    rows = [
        ("connection", root, t, m.p_grid_import_kw[t] - m.p_grid_export_kw[t], "abc")
        for t in periods
    ]
    for i in m.MEMBERS:
        owner, home = f"members.{i}", m.home[i]
        rows += prosumer.home_rows(owner, home, m.specs[i], periods, m.in_coalition[i])
    for a in m.SHARED:
        rows += _shared_rows(m, a, periods)
    table = pd.DataFrame(rows, columns=["owner", "bus", "period", "p_kw", "phase"])
    attach_grid(
        m, feeder, list(m.PERIODS), table, formulation=formulation, period_hours=m.period_hours
    )


def _shared_rows(m, a: str, periods: list) -> list:
    """A shared asset's rows (owner, bus, period, p_kw, phase): one per period on its
    connection, or one per device connection when its devices name their own."""
    spec, b = m.shared_specs[a], m.shared[a]
    phases = {name: getattr(spec, name).phase or spec.phase or "abc" for name in b.devices}
    if len(set(phases.values())) == 1:
        return [(f"shared.{a}", spec.bus, t, b.p_net_kw[t], *set(phases.values())) for t in periods]
    factor = m.shared_factor[a]
    return [
        (f"shared.{a}", spec.bus, t, factor * b.devices[name][t], phase)
        for name, phase in phases.items()
        for t in periods
    ]


def _add_objective(m, weights: dict[str, float], voll: float) -> None:
    dt = m.period_hours
    m.grid_cost = pyo.Expression(
        expr=prosumer.tariff_cost(m, m.p_grid_import_kw, m.p_grid_export_kw),
        doc="sum_t (c_import[t] p_grid_import[t] - c_export[t] p_grid_export[t]) dt / 1000"
        "  (currency)",
    )
    m.device_cost = pyo.Expression(
        expr=sum(m.in_coalition[i] * m.home[i].device_cost for i in m.MEMBERS)
        + sum(b.cost for b in m.shared.values()),
        doc="sum_i in[i] device_cost[i] + sum_a cost[a]  (currency)",
    )
    m.shed_kwh = pyo.Expression(
        expr=sum(m.in_coalition[i] * m.home[i].shed_kwh for i in m.MEMBERS),
        doc="sum_i in[i] shed[i]  (kWh)",
    )
    m.cost = pyo.Expression(
        expr=m.grid_cost + m.demand_charge + m.device_cost + voll * m.shed_kwh / 1000.0,
        doc="grid + demand charge + devices + voll * shed / 1000  (currency)",
    )
    m.unsupplied_kwh = pyo.Expression(
        expr=dt * sum(m.p_grid_import_kw.values()) + m.shed_kwh,
        doc="sum_t p_grid_import[t] dt + shed  (kWh)",
    )
    m.emissions_kg = pyo.Expression(
        expr=sum(m.carbon_kg_per_mwh[t] * m.p_grid_import_kw[t] * dt / 1000.0 for t in m.PERIODS),
        doc="sum_t carbon[t] p_grid_import[t] dt / 1000  (kg CO2)",
    )
    m.objective = pyo.Objective(
        expr=weights["cost"] * m.cost
        + weights["self_sufficiency"] * m.unsupplied_kwh
        + weights["emissions"] * m.emissions_kg,
        sense=pyo.minimize,
        doc="w_cost cost + w_ss (import + shed) + w_em emissions",
    )


# --- results ----------------------------------------------------------------------------


def results(model: pyo.ConcreteModel, solution: Solution) -> Result:
    """Tidy tables and KPIs of a solved community.

    Tables
    ------
    power, storage, appliances, thermal : the members' devices, as in
        :func:`gridmarkets.models.prosumer.results` with the column ``member``.
    meters : member, period, bus, import_kw and export_kw (from and to the community
        bus), shed_kw, curtailed_kw, load_kw.
    shared : asset, device, period, p_kw (into the community bus), p_charge_kw,
        p_discharge_kw, soc_kwh, curtailed_kw.
    exchange : period, grid_import_kw, grid_export_kw, members_import_kw,
        members_export_kw, shared_kw, import_price, export_price, carbon_kg_per_mwh and
        (where duals exist) internal_price, the dual of the community balance
        (currency/MWh, from :func:`~gridmarkets.networks.nodal_prices`; on a feeder,
        the root's nodal price).
    members : one row per member: consumption_kwh, generation_kwh, import_kwh,
        export_kwh (at its meter), shed_kwh, device_cost.
    feeder_prices : on a network, the DLMPs of :func:`gridmarkets.networks.nodal_prices`
        (bus, period, price and its parts, currency/MWh).
    """
    tables = _member_tables(model, solution)
    tables["shared"] = _shared_table(model)
    prices = None
    if solution.duals_from is not None:
        from gridmarkets.networks import nodal_prices

        prices = nodal_prices(model.handles, solution)
        if model.feeder is not None:
            tables["feeder_prices"] = prices
    tables["exchange"] = _exchange_table(model, prices, tables["meters"], tables["shared"])
    tables["members"] = _members_table(model, tables["power"], tables["meters"])
    if model.timestamps is not None:
        stamps = dict(enumerate(model.timestamps))
        for name in ("shared", "exchange"):
            tables[name].insert(1, "timestamp", tables[name]["period"].map(stamps))
    kpis = _kpis(model, tables)
    return Result("community", tables, kpis, solution)


def _value(component) -> float:
    return float(pyo.value(component))


def _member_tables(m, solution: Solution) -> dict[str, pd.DataFrame]:
    homes = prosumer.results(m, solution).tables
    tables = {}
    for name in ("power", "grid", "storage", "appliances", "thermal"):
        table = homes[name].rename(columns={"prosumer": "member"})
        drop = ["import_price", "export_price", "energy_cost", "marginal_price"]
        tables["meters" if name == "grid" else name] = table.drop(
            columns=[c for c in drop if c in table], errors="ignore"
        )
    return tables


def _shared_table(m) -> pd.DataFrame:
    rows = []
    for aid, b in m.shared.items():
        f = _value(m.shared_factor[aid])  # the coalition's part of the full asset
        for name in b.devices:
            dev = getattr(b, name)
            for t in m.PERIODS:
                battery = name == "battery"
                rows.append(
                    {
                        "asset": aid,
                        "device": name,
                        "period": t,
                        "p_kw": f * _value(dev.p_net_kw[t]),
                        "p_charge_kw": f * _value(dev.p_charge_kw[t]) if battery else 0.0,
                        "p_discharge_kw": f * _value(dev.p_discharge_kw[t]) if battery else 0.0,
                        "soc_kwh": f * _value(dev.soc_kwh[t]) if battery else np.nan,
                        "curtailed_kw": 0.0 if battery else f * _value(dev.p_curtail_kw[t]),
                    }
                )
    columns = ["asset", "device", "period", "p_kw", "p_charge_kw", "p_discharge_kw"]
    return pd.DataFrame(rows, columns=[*columns, "soc_kwh", "curtailed_kw"])


def _exchange_table(m, prices: pd.DataFrame | None, meters, shared) -> pd.DataFrame:
    periods = list(m.PERIODS)
    per_period = meters.groupby("period")[["import_kw", "export_kw"]].sum()
    per_period = per_period.reindex(periods, fill_value=0.0)
    shared_kw = shared.groupby("period")["p_kw"].sum().reindex(periods, fill_value=0.0)
    table = pd.DataFrame(
        {
            "period": periods,
            "grid_import_kw": [_value(m.p_grid_import_kw[t]) for t in periods],
            "grid_export_kw": [_value(m.p_grid_export_kw[t]) for t in periods],
            "members_import_kw": per_period["import_kw"].to_numpy(),
            "members_export_kw": per_period["export_kw"].to_numpy(),
            "shared_kw": shared_kw.to_numpy(),
            "import_price": [_value(m.import_price_per_mwh[t]) for t in periods],
            "export_price": [_value(m.export_price_per_mwh[t]) for t in periods],
            "carbon_kg_per_mwh": [_value(m.carbon_kg_per_mwh[t]) for t in periods],
        }
    )
    if prices is not None:
        at_connection = prices if m.feeder is None else prices[prices["bus"] == m.feeder.root]
        # one price per period (on three phases the root's is the same on every phase)
        at_connection = at_connection.drop_duplicates("period").set_index("period")["price"]
        at_connection = at_connection.reindex(periods)
        table["internal_price"] = at_connection.to_numpy()
    return table


def _members_table(m, power: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
    dt = m.period_hours
    devices = power[~power["device"].isin(["grid", "shed", "battery"])]
    consumed = devices[devices["p_kw"] < 0].groupby("member")["p_kw"].sum() * -dt
    generated = power[power["device"] == "pv"].groupby("member")["p_kw"].sum() * dt
    flows = meters.groupby("member")[["import_kw", "export_kw", "shed_kw"]].sum() * dt
    rows = []
    for i in m.MEMBERS:
        rows.append(
            {
                "member": i,
                "consumption_kwh": float(consumed.get(i, 0.0)),
                "generation_kwh": float(generated.get(i, 0.0)),
                "import_kwh": float(flows.loc[i, "import_kw"]),
                "export_kwh": float(flows.loc[i, "export_kw"]),
                "shed_kwh": float(flows.loc[i, "shed_kw"]),
                "device_cost": _value(m.home[i].device_cost),
            }
        )
    return pd.DataFrame(rows)


def _kpis(m, tables: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Totals, and the self-sufficiency and self-consumption ratios.

    self_sufficiency = 1 - (grid import + shed) / consumption;
    self_consumption = 1 - grid export / local generation (members' and shared PV).
    """
    dt = m.period_hours
    exchange, members, shared = tables["exchange"], tables["members"], tables["shared"]
    consumption = members["consumption_kwh"].sum()
    generation = members["generation_kwh"].sum()
    generation += shared.loc[shared["device"] == "pv", "p_kw"].sum() * dt
    imported = exchange["grid_import_kw"].sum() * dt
    exported = exchange["grid_export_kw"].sum() * dt
    shed = members["shed_kwh"].sum()
    kpis = {
        "cost": _value(m.cost),
        "objective": _value(m.objective),
        "grid_cost": _value(m.grid_cost),
        "demand_charge": _value(m.demand_charge),
        "device_cost": _value(m.device_cost),
        "emissions_kg": _value(m.emissions_kg),
        "import_kwh": imported,
        "export_kwh": exported,
        "shed_kwh": shed,
        "consumption_kwh": consumption,
        "generation_kwh": generation,
        "self_sufficiency": 1.0 - (imported + shed) / consumption if consumption > 0 else 1.0,
        "self_consumption": 1.0 - exported / generation if generation > 0 else 1.0,
        "peak_import_kw": float(exchange["grid_import_kw"].max()),
        "members": len(members),
    }
    return {k: float(v) for k, v in kpis.items()}


# --- one call ---------------------------------------------------------------------------


def schedule(
    members: Mapping[str, ProsumerSpec],
    shared: Mapping[str, SharedAssetSpec] | None = None,
    prices: PricesSpec | None = None,
    *,
    solve_options: Mapping[str, Any] | None = None,
    **build_options: Any,
) -> Result:
    """Build, solve and report in one call: :func:`build` then :func:`results`."""
    model = build(members, shared, prices, **build_options)
    return results(model, solve(model, **dict(solve_options or {})))


# --- the cooperative game ---------------------------------------------------------------


def coalition_value(
    members: Mapping[str, ProsumerSpec],
    shared: Mapping[str, SharedAssetSpec] | None,
    prices: PricesSpec | None,
    coalition: Iterable[str],
    solve_options: Mapping[str, Any] | None = None,
    build_options: Mapping[str, Any] | None = None,
) -> float:
    """The optimal objective of one coalition operating alone (its characteristic value)."""
    model = build(members, shared, prices, coalition=sorted(coalition), **dict(build_options or {}))
    return float(solve(model, **dict(solve_options or {})).objective)


class CommunityGame(allocation.CostGame):
    """The community's cost game: ``cost(S)`` is coalition ``S``'s optimal objective.

    One model of the whole community is built once (per worker) and re-solved for
    every coalition after :func:`set_coalition`; only the compile to HiGHS arrays and
    the solve are paid per coalition.

    Parameters
    ----------
    members, shared, prices : as in :func:`build`.
    workers : processes used by :meth:`evaluate_many` (1: solve in this process).
    solve_options, build_options : passed to every coalition's solve and to the build.
    """

    def __init__(
        self,
        members: Mapping[str, ProsumerSpec],
        shared: Mapping[str, SharedAssetSpec] | None = None,
        prices: PricesSpec | None = None,
        *,
        workers: int = 1,
        solve_options: Mapping[str, Any] | None = None,
        build_options: Mapping[str, Any] | None = None,
    ):
        self._args = (
            {str(k): v for k, v in members.items()},
            dict(shared or {}),
            prices,
            dict(solve_options or {}),
            {k: v for k, v in dict(build_options or {}).items() if k != "timestamps"},
        )
        self.workers = workers
        self._model: pyo.ConcreteModel | None = None
        super().__init__(list(self._args[0]), self._solve)

    def _solve(self, coalition: frozenset) -> float:
        if self._model is None:
            self._model = _game_model(self._args)
        return _coalition_objective(self._model, coalition, self._args[3])

    def evaluate_many(self, coalitions: Iterable[frozenset]) -> dict[frozenset, float]:
        """Solve the coalitions not yet known, in ``workers`` processes when above 1."""
        coalitions = [frozenset(c) for c in coalitions]
        todo = [c for c in coalitions if c not in self.values]
        if self.workers > 1 and len(todo) > 1:
            import multiprocessing

            context = multiprocessing.get_context("forkserver")
            chunks = [todo[k :: self.workers] for k in range(self.workers)]
            with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
                for chunk, values in zip(
                    chunks, pool.map(_solve_chunk, [(self._args, c) for c in chunks]), strict=True
                ):
                    self.values.update(zip(chunk, values, strict=True))
        return {c: self(c) for c in track(coalitions, "coalitions")}

    def evaluate_all(self) -> dict[frozenset, float]:
        """cost(S) for every coalition, in ``workers`` processes when above 1."""
        return self.evaluate_many(self.coalitions())


def _game_model(args) -> pyo.ConcreteModel:
    members, shared, prices, _, build_options = args
    return build(members, shared, prices, **build_options)


def _coalition_objective(model, coalition, solve_options) -> float:
    set_coalition(model, coalition)
    return float(solve(model, **dict(solve_options)).objective)


def _solve_chunk(job) -> list[float]:
    args, chunk = job
    model = _game_model(args)
    options = {"threads": 1, **args[3]}
    return [_coalition_objective(model, c, options) for c in chunk]


@dataclass
class Split:
    """How a community splits its cost, and whether the split is stable.

    Attributes
    ----------
    table : one row per member: standalone_cost (its bill alone, with its shares),
        then one column per rule (its bill in the community), ``shapley_stderr`` when
        sampled, and ``savings_<rule>`` (stand-alone minus community bill).
    core : the core check of each rule's allocation (None where the game was sampled).
    value : the community value, sum of stand-alone costs minus the community's cost.
    game : the cost game, with every coalition solved so far in ``game.values``.
    """

    table: pd.DataFrame
    core: dict[str, allocation.CoreCheck | None]
    value: float
    game: allocation.CostGame


def split(
    game: allocation.CostGame,
    methods: Sequence[str] = METHODS,
    *,
    weights: Mapping[str, float] | None = None,
    exact_up_to: int = 12,
    samples: int = 200,
    seed: int | None = 0,
) -> Split:
    """Split the community's cost with several rules; check each against the core.

    Parameters
    ----------
    game : a :class:`CommunityGame` (or any cost game).
    methods : among "shapley", "nucleolus", "proportional", "equal".
    weights : the proportional rule's weights (default: equal weights).
    exact_up_to : the exact Shapley value and the core check up to this many members;
        above, the Shapley value is sampled and the nucleolus and core are skipped.
    samples, seed : permutation sampling above ``exact_up_to``.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise InputError(f"methods: {sorted(unknown)} are not among {METHODS}")
    players = game.players
    exact = len(players) <= exact_up_to
    if exact and hasattr(game, "evaluate_all"):
        game.evaluate_all()
    standalone = pd.Series({p: game({p}) for p in players})
    table = pd.DataFrame({"member": players, "standalone_cost": standalone.to_numpy()})
    rules: dict[str, pd.Series] = {}
    for method in methods:
        if method == "shapley" and not exact:
            sampled = allocation.shapley_sampled(game, samples=samples, seed=seed)
            rules["shapley"] = sampled.value
            table["shapley_stderr"] = sampled.stderr.to_numpy()
        elif method == "shapley":
            rules["shapley"] = allocation.shapley(game)
        elif method == "nucleolus" and exact:
            rules["nucleolus"] = allocation.nucleolus(game)
        elif method == "proportional":
            rules["proportional"] = allocation.proportional(
                game, weights or dict.fromkeys(players, 1)
            )
        elif method == "equal":
            rules["equal"] = allocation.equal(game)
    for name, x in rules.items():
        table[name] = x.reindex(players).to_numpy()
        table[f"savings_{name}"] = table["standalone_cost"] - table[name]
    core = {name: allocation.core_check(x, game) if exact else None for name, x in rules.items()}
    value = float(standalone.sum() - game(game.grand))
    return Split(table, core, value, game)


# --- the community in a market ----------------------------------------------------------


def exchange_bids(result: Result, participant: str = "community", bus=None) -> pd.DataFrame:
    """The community's scheduled exchange as bids and offers for a local market.

    Per period, a net import becomes a buy bid at the import price (what the community
    would otherwise pay) and a net export a sell offer at the export price (what it
    would otherwise earn), in the LEM bids format (participant, side, quantity_kw,
    price, period, block, bus) that :func:`gridmarkets.models.lem.clear` accepts.
    """
    x = result.exchange
    net = x["grid_import_kw"] - x["grid_export_kw"]
    buy = x.assign(side="buy", quantity_kw=net.clip(lower=0), price=x["import_price"])
    sell = x.assign(side="sell", quantity_kw=(-net).clip(lower=0), price=x["export_price"])
    bids = pd.concat([buy, sell], ignore_index=True)
    bids = bids[bids["quantity_kw"] > 1e-9].sort_values(["period", "side"], ignore_index=True)
    bids["participant"], bids["block"], bids["bus"] = participant, 0, bus
    return bids[BID_COLUMNS]


def bid_curves(
    model: pyo.ConcreteModel,
    ladder: Sequence[float],
    *,
    participant: str = "community",
    bus=None,
    solve_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The community's price-responsive bids and offers per period, in the LEM format.

    For each period and each price ``p`` of the ladder the built ``model`` is re-solved
    with that period's import and export price set to ``p`` (other periods keep their
    tariff); the net import ``q(p)`` at the point of connection is read. The demand
    curve ``max(q, 0)`` becomes buy blocks and the supply curve ``max(-q, 0)`` sell
    blocks (as :func:`gridmarkets.models.prosumer.bid_curves` does for one home), so at
    a market price on the ladder the accepted blocks sum to the community's own choice.

    Parameters
    ----------
    model : a community model from :func:`build` (grid-connected).
    ladder : the prices tried (currency/MWh).
    participant, bus : written in the table (``bus``: where the LEM places the bids).
    solve_options : :func:`gridmarkets.solvers.solve`'s keyword arguments.

    Returns
    -------
    DataFrame with columns participant, side, quantity_kw, price, period, block, bus.
    """
    if model.mode != "grid":
        raise InputError("bid_curves: an islanded community does not trade")
    ladder = sorted(float(p) for p in ladder)
    rows = []
    for t in model.PERIODS:
        saved = (_value(model.import_price_per_mwh[t]), _value(model.export_price_per_mwh[t]))
        net = []
        for price in ladder:
            model.import_price_per_mwh[t] = model.export_price_per_mwh[t] = price
            solve(model, **dict(solve_options or {}))
            net.append(_value(model.p_grid_import_kw[t]) - _value(model.p_grid_export_kw[t]))
        model.import_price_per_mwh[t], model.export_price_per_mwh[t] = saved
        rows += prosumer.curve_blocks(ladder, np.minimum.accumulate(net), t)
    table = pd.DataFrame(rows, columns=["side", "quantity_kw", "price", "period"])
    table.insert(0, "participant", participant)
    table["block"] = table.groupby(["side", "period"]).cumcount()
    table["bus"] = bus
    return table[BID_COLUMNS]


# --- a sample community -----------------------------------------------------------------


def sample_community(
    n: int, *, periods: int = 96, period_hours: float = 0.25, seed: int = 0
) -> tuple[dict[str, ProsumerSpec], dict[str, SharedAssetSpec], PricesSpec]:
    """A community of ``n`` homes built from the shipped SimBench household profile.

    Member ``k`` takes the load of day ``k mod 14`` of ``simbench_rural1_household.csv``
    scaled by a random factor in [0.6, 1.6); about 40 % have rooftop PV (3-8 kWp) and
    20 % a relaxed 5-10 kWh battery. The community shares a battery (1 kWh and 0.5 kW
    per member) and a PV plant (1 kWp per member), owned in equal shares. The tariff has an
    evening peak; exports earn 60 currency/MWh. For tests, notebooks and benchmarks.
    """
    rng = np.random.default_rng(seed)
    day = assets.CsvProfile
    members = {}
    for k in range(n):
        start = 96 * (k % 14)  # the file has 96 rows a day
        load = day(csv=CSV, column="load_kw", scale=float(rng.uniform(0.6, 1.6)), start_row=start)
        pv = battery = None
        if rng.random() < 0.4:
            kwp = float(rng.uniform(3, 8))
            pv = PVSpec(profile_kw=day(csv=CSV, column="pv_kw_per_kwp", scale=kwp, start_row=start))
        if rng.random() < 0.2:
            size = float(rng.uniform(5, 10))
            battery = BatterySpec(
                capacity_kwh=size, p_charge_max_kw=size / 2, soc_initial_kwh=size / 2, relaxed=True
            )
        members[f"m{k:02d}"] = ProsumerSpec(load_kw=load, pv=pv, battery=battery)
    hours = np.arange(periods) * period_hours % 24
    import_price = np.where((hours >= 17) & (hours < 21), 380.0, np.where(hours < 6, 220.0, 300.0))
    pv_shared = assets.CsvProfile(csv=CSV, column="pv_kw_per_kwp", scale=1.0 * n, start_row=0)
    shared = {
        "battery": SharedAssetSpec(
            battery=BatterySpec(
                capacity_kwh=1.0 * n, p_charge_max_kw=0.5 * n, relaxed=True, eta_charge=0.95
            )
        ),
        "pv": SharedAssetSpec(pv=PVSpec(profile_kw=pv_shared)),
    }
    return members, shared, PricesSpec(import_price=list(import_price), export_price=60.0)


CSV = "simbench_rural1_household.csv"


# --- two-stage under uncertainty (scenarios) --------------------------------------------


def two_stage(
    members: Mapping[str, ProsumerSpec],
    shared: Mapping[str, SharedAssetSpec] | None,
    prices: PricesSpec,
    imbalance: prosumer.ImbalanceSpec,
    **build_options: Any,
) -> TwoStage:
    """The community as a two-stage problem: its exchange at the point of connection
    day-ahead (first stage), everything inside it in real time.

    First stage, per period: the community's day-ahead import and export, settled at
    the tariff. Second stage, per scenario: the members' devices and the shared assets
    as :func:`build` schedules them for the scenario's profiles, the deviation of the
    connection's exchange from the day-ahead schedule settled at the imbalance prices
    (:func:`~gridmarkets.models.prosumer.add_day_ahead` on the connection).

    Scenario profiles: ``<member>.load_kw``, ``<member>.pv_kw`` and ``<asset>.pv_kw``
    (a shared asset's available PV power, kW). ``build_options`` are :func:`build`'s
    (grid mode, objective cost).
    """
    if build_options.get("mode", "grid") != "grid":
        raise InputError("scenarios: a two-stage community is grid-connected (mode: grid)")
    if build_options.get("objective", "cost") != "cost":
        raise InputError("scenarios: a two-stage community minimises cost (objective: cost)")
    if build_options.get("coalition") is not None:
        raise InputError("scenarios: a two-stage community schedules all its members")
    shared = dict(shared or {})
    up, down = prosumer.imbalance_values(
        imbalance, build_options.get("periods", 24), build_options.get("period_hours", 1.0)
    )

    def scenario(profile: pd.DataFrame) -> pyo.ConcreteModel:
        own = [c for c in profile.columns if c.rpartition(".")[0] in shared]
        return build(
            prosumer.scenario_homes(members, profile.drop(columns=own), "members"),
            _scenario_shared(shared, profile[own]),
            prices,
            extra=lambda m: _add_imbalance(m, up, down),
            **build_options,
        )

    return TwoStage(scenario, _day_ahead_variables, lambda m: m.settled_cost)


def _scenario_shared(
    shared: Mapping[str, SharedAssetSpec], profile: pd.DataFrame
) -> dict[str, SharedAssetSpec]:
    """Shared assets with a scenario's ``<asset>.pv_kw`` as their available PV power."""
    out = dict(shared)
    for column in profile.columns:
        asset, _, kind = column.rpartition(".")
        if kind != "pv_kw" or shared[asset].pv is None:
            raise InputError(f"scenarios: profile {column!r}: shared.{asset} has no PV for it")
        pv = shared[asset].pv.model_copy(update={"profile_kw": [float(v) for v in profile[column]]})
        out[asset] = shared[asset].model_copy(update={"pv": pv})
    return out


def _add_imbalance(m: pyo.ConcreteModel, up: np.ndarray, down: np.ndarray) -> None:
    """The connection's day-ahead schedule and imbalance settlement: ``m.settled_cost``."""
    prosumer.add_imbalance_prices(m, up, down)
    prosumer.add_day_ahead(m, m, m.p_grid_import_kw, m.p_grid_export_kw, m.cost - m.grid_cost)


def _day_ahead_variables(m: pyo.Block) -> list:
    return [*m.p_day_ahead_import_kw.values(), *m.p_day_ahead_export_kw.values()]


def schedule_stochastic(
    members: Mapping[str, ProsumerSpec],
    shared: Mapping[str, SharedAssetSpec] | None,
    prices: PricesSpec,
    scenarios: Scenarios,
    imbalance: prosumer.ImbalanceSpec,
    *,
    risk: Risk | None = None,
    out_of_sample: Scenarios | None = None,
    client: Any = None,
    solve_options: Mapping[str, Any] | None = None,
    **build_options: Any,
) -> Result:
    """Schedule the community's exchange day-ahead against scenarios (:func:`two_stage`).

    Returns
    -------
    Result ("community_stochastic") with the tables of
    :func:`~gridmarkets.models.stochastic.stochastic_tables`, ``day_ahead`` (period,
    the stochastic and expected-value day-ahead import and export, kW) and
    ``exchange`` (scenario, period, grid_import_kw, grid_export_kw, short_kw,
    surplus_kw, shared_kw: the stochastic solution in every scenario).
    """
    build_options.setdefault("periods", scenarios.periods())
    problem = two_stage(members, shared, prices, imbalance, **build_options)
    solved = solve_two_stage(
        problem,
        scenarios,
        risk,
        out_of_sample=out_of_sample,
        client=client,
        solve_options=solve_options,
    )
    tables = stochastic_tables(solved)
    tables["day_ahead"] = prosumer.day_ahead_table(solved.first_stage, {}, build_options["periods"])
    tables["exchange"] = _scenario_exchange(solved.model, scenarios.names())
    return Result("community_stochastic", tables, dict(solved.kpis), solved.solution)


def _scenario_exchange(model: pyo.ConcreteModel, names: list[str]) -> pd.DataFrame:
    rows = [
        {
            "scenario": s,
            "period": t,
            "grid_import_kw": _value(b.p_grid_import_kw[t]),
            "grid_export_kw": _value(b.p_grid_export_kw[t]),
            "short_kw": _value(b.p_short_kw[t]),
            "surplus_kw": _value(b.p_surplus_kw[t]),
            "shared_kw": sum(_value(a.p_net_kw[t]) for a in b.shared.values()),
        }
        for s in names
        for b in [model.scenario[s]]
        for t in b.PERIODS
    ]
    return pd.DataFrame(rows)
