"""Prosumer energy management: schedule a home's devices against prices or alone.

One home, or many independent homes in one model (one block each, no coupling), each
with an inflexible load and optional PV, battery, EV, shiftable appliances and heat
pump (the device blocks of :mod:`gridmarkets.models.assets`).

Grid-connected (``mode="grid"``): the home imports at ``import_price`` and exports at
``export_price`` (currency per MWh, one value or one per period) within optional limits,
and pays an optional demand charge per kW of its peak import over the horizon.
Islanded (``mode="islanded"``): no grid; PV may always be curtailed and the inflexible
load may be shed at the value of lost load; the ``grid`` table and the KPIs report the
shed power per period.

Every home has an energy balance per period, written with the inflexible load on the
right-hand side so its dual is what one more kW of demand would cost the home::

    p_import[t] - p_export[t] + p_shed[t] + sum_devices p_net[t] = 0   (kW)

Signs follow :mod:`gridmarkets.models.assets`: device power is positive into the home's
bus; ``p_kw`` of the ``grid`` device in the ``power`` table is import minus export.

On a feeder (``build(..., network=feeder)``) the homes are scheduled together (a DSO's
or aggregator's coordinated schedule): their net injections and the upstream grid's
supply at the root meet the grid through :func:`gridmarkets.networks.attach_grid`
(LinDistFlow by default, so the feeder's voltage and thermal limits bind; the homes
draw no reactive power: unity power factor); without it they are independent and the
AC check shows what their uncoordinated schedules do to the feeder.
:func:`rolling_horizon` operates a home model-predictively (re-plans every period over
a moving window with its realised state pinned) and reports its cost against perfect foresight.

Phases: on a three-phase feeder (LinDist3Flow) a home is connected to some phases
(``phase``, default "abc": its inflexible load, and every device without a ``phase`` of
its own) and each device to its own (a single-phase PV on "b", a three-phase heat pump
on "abc"). The meter nets over the phases (one import and one export per home, as
Europe's summing meters do); the grid sees each phase apart: the home injects on
phase phi the power of the devices connected there (a k-phase device a k-th on each)::

    p[h,phi,t] = sum_{devices d on phi} p_net[d,t] / k_d + [load on phi] p_shed[t] / k_load

which sums over phi to p_export - p_import by the energy balance.

Objectives: ``"cost"`` (energy bill, demand charge, device costs, lost load),
``"self_sufficiency"`` (energy not supplied by the home itself: imported plus shed, kWh)
or a weighted mix ``{"cost": 1.0, "self_sufficiency": 50.0}`` (the second weight in
currency per kWh).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import Field, NonNegativeFloat

from gridmarkets.errors import InputError
from gridmarkets.log import track
from gridmarkets.models import assets
from gridmarkets.models.assets import (
    ApplianceSpec,
    BatterySpec,
    EVSpec,
    FeederProfile,
    HeatPumpSpec,
    Phase,
    Profile,
    PVSpec,
    StaySpec,
)
from gridmarkets.models.stochastic import (
    Risk,
    TwoStage,
    TwoStageSolution,
    solve_two_stage,
    stochastic_tables,
)
from gridmarkets.results import Result
from gridmarkets.scenarios import Scenarios
from gridmarkets.solvers import Solution, record_build_time, solve
from gridmarkets.specs.base import Spec

if TYPE_CHECKING:
    from gridmarkets.networks import Feeder, NetworkFormulation

Objective = Literal["cost", "self_sufficiency"] | dict[str, float]
OBJECTIVE_TERMS = ("cost", "self_sufficiency")


class ProsumerSpec(Spec):
    """One home: its load, its devices and its connection to the grid."""

    bus: int | None = Field(None, description="feeder bus (pandapower index), on a network")
    load_kw: Profile = Field(0.0, description="inflexible demand per period (kW)")
    pv: PVSpec | None = None
    battery: BatterySpec | None = None
    ev: EVSpec | None = None
    appliances: dict[str, ApplianceSpec] = Field(default_factory=dict)
    heat_pump: HeatPumpSpec | None = None
    import_limit_kw: NonNegativeFloat | None = Field(None, description="connection limit")
    export_limit_kw: NonNegativeFloat | None = Field(None, description="feed-in limit")
    demand_charge_per_kw: NonNegativeFloat = Field(
        0.0, description="currency per kW of the horizon's peak import"
    )
    phase: Phase = Field(
        None,
        description="phases the home is connected to on a three-phase network: its "
        "inflexible load's, and its devices' unless they name their own; absent: 'abc'",
    )


class PricesSpec(Spec):
    """Grid tariff, currency per MWh: a number, one value per period, or a CSV column."""

    import_price: Profile
    export_price: Profile = 0.0


def check_home(
    home: ProsumerSpec, periods: int, path: str, period_hours: float | None = None
) -> None:
    """Checks that need no profile values: lengths, windows and (given the resolution)
    reachable energies."""
    for name, value in (("load_kw", home.load_kw), ("pv.profile_kw", _pv_profile(home))):
        if isinstance(value, list) and len(value) != periods:
            raise ValueError(f"{path}.{name}: {len(value)} values for {periods} periods")
    for name, appliance in home.appliances.items():
        if appliance.earliest_start + len(appliance.profile_kw) > periods:
            raise ValueError(f"{path}.appliances.{name}: its run does not fit in the horizon")
        if appliance.latest_end is not None and appliance.latest_end > periods:
            raise ValueError(
                f"{path}.appliances.{name}.latest_end: {appliance.latest_end} is after the "
                f"horizon's {periods} periods"
            )
    if period_hours is None:
        if home.ev is not None and home.ev.stays[-1].departure > periods:
            raise ValueError(f"{path}.ev.stays: departure after the horizon's {periods} periods")
        return
    if home.ev is not None:
        assets.check_ev(home.ev, periods, period_hours, f"{path}.ev")
    if home.battery is not None:
        assets.check_battery(home.battery, periods, period_hours, f"{path}.battery")


def _check_supply(b: pyo.Block, spec: ProsumerSpec, m: pyo.ConcreteModel, path: str) -> None:
    """Checks on profile values: the heat pump's comfort band, and an import limit that
    cannot cover the load even with PV and every storage discharging at full power."""
    dt = m.period_hours
    if spec.heat_pump is not None:
        outdoor = np.array([pyo.value(b.heat_pump.t_outdoor_c[t]) for t in m.PERIODS])
        assets.check_heat_pump(spec.heat_pump, outdoor, dt, f"{path}.heat_pump")
    if m.mode != "grid" or spec.import_limit_kw is None:
        return
    plugged = spec.ev.plugged(list(m.PERIODS)) if spec.ev is not None and spec.ev.v2g else {}
    for t in m.PERIODS:
        load = pyo.value(b.load.load_kw[t])
        pv = pyo.value(b.pv.available_kw[t]) if hasattr(b, "pv") else 0.0
        storage = spec.battery.p_discharge_max if spec.battery is not None else 0.0
        storage += spec.ev.p_discharge_max_kw if t in plugged else 0.0
        if load - pv - storage > spec.import_limit_kw + 1e-9:
            raise InputError(
                f"{path}.import_limit_kw: {spec.import_limit_kw:g} kW cannot cover the load of "
                f"{load:g} kW in period {t} (PV {pv:g} kW, storage {storage:g} kW)"
            )


def _feeder_profiles(home: ProsumerSpec) -> bool:
    return isinstance(home.load_kw, FeederProfile) or isinstance(_pv_profile(home), FeederProfile)


def _pv_profile(home: ProsumerSpec):
    return None if home.pv is None else home.pv.profile_kw


# --- build ------------------------------------------------------------------------------


def build(
    prosumers: ProsumerSpec | Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec | None = None,
    *,
    periods: int = 24,
    period_hours: float = 1.0,
    mode: Literal["grid", "islanded"] = "grid",
    objective: Objective = "cost",
    value_of_lost_load_per_mwh: float = 10_000.0,
    timestamps: Sequence[Any] | None = None,
    network: Feeder | None = None,
    formulation: NetworkFormulation | None = None,
    open_end: bool = False,
    extra: Callable[[pyo.ConcreteModel], None] | None = None,
) -> pyo.ConcreteModel:
    """Build the EMS of one or many homes as a Pyomo model.

    Parameters
    ----------
    prosumers : one home, a mapping id -> home, or a list (ids "0", "1", ...).
    prices : the grid tariff (currency/MWh); required when ``mode`` is "grid".
    periods, period_hours : the horizon.
    mode : "grid" (import and export) or "islanded" (curtail and shed).
    objective : "cost", "self_sufficiency" or weights ``{"cost": w, "self_sufficiency": w}``.
    value_of_lost_load_per_mwh : the cost of shed load (islanded).
    timestamps : one per period, copied into the result tables.
    network : a feeder to schedule the homes on together (coordinated): their net
        injections at their buses and the upstream grid's supply at the root
        (``model.p_upstream_kw``, free) go through ``formulation``, so the feeder's
        voltage and thermal limits bind. None: every home is independent.
    formulation : a :class:`~gridmarkets.networks.NetworkFormulation`; default
        LinDistFlow on ``network`` (``CopperPlate()`` schedules the homes together
        without the feeder's limits).
    open_end : the horizon goes on after the last period (a rolling window):
        appliances may start after it or run past it.
    extra : called with the model before it is returned, to add user constraints
        (``model.home[id]`` holds each home's devices and balance).

    Returns
    -------
    The model: ``model.home[id].energy_balance[t]``, ``model.objective`` and, on a
    network, ``model.network`` (the formulation's components) and ``model.handles`` (see
    :class:`~gridmarkets.networks.NetworkHandles`).
    """
    started = time.perf_counter()
    homes = as_mapping(prosumers)
    weights = _objective_weights(objective)
    m = pyo.ConcreteModel(name="prosumer")
    m.PERIODS = pyo.RangeSet(0, periods - 1, doc="periods")
    m.PROSUMERS = pyo.Set(initialize=list(homes), doc="homes")
    m.specs, m.mode, m.period_hours = homes, mode, period_hours
    m.timestamps, m.open_end, m.handles = timestamps, open_end, None
    add_prices(m, prices, mode)
    m.home = pyo.Block(m.PROSUMERS, doc="one home's devices, grid connection and balance")
    for pid, spec in homes.items():
        add_home(m.home[pid], spec, m, value_of_lost_load_per_mwh)
        _check_supply(m.home[pid], spec, m, f"prosumers.{pid}")
    if network is not None:
        add_network(m, network, formulation)
    m.objective = pyo.Objective(
        expr=sum(
            weights["cost"] * b.cost + weights["self_sufficiency"] * b.unsupplied_kwh
            for b in m.home.values()
        ),
        sense=pyo.minimize,
        doc="w_cost sum_h cost[h] + w_ss sum_h (import + shed)[h]  (currency)",
    )
    if extra is not None:
        extra(m)
    record_build_time(m, time.perf_counter() - started)
    return m


def as_mapping(prosumers) -> dict[str, ProsumerSpec]:
    if isinstance(prosumers, ProsumerSpec):
        return {"home": prosumers}
    if isinstance(prosumers, Mapping):
        return {str(k): v for k, v in prosumers.items()}
    return {str(k): v for k, v in enumerate(prosumers)}


def _objective_weights(objective: Objective) -> dict[str, float]:
    if isinstance(objective, str):
        if objective not in OBJECTIVE_TERMS:
            raise InputError(f"objective: {objective!r} is not one of {OBJECTIVE_TERMS}")
        return {term: float(term == objective) for term in OBJECTIVE_TERMS}
    unknown = set(objective) - set(OBJECTIVE_TERMS)
    if unknown:
        raise InputError(f"objective: unknown term(s) {sorted(unknown)}; use {OBJECTIVE_TERMS}")
    return {term: float(objective.get(term, 0.0)) for term in OBJECTIVE_TERMS}


def add_prices(m: pyo.ConcreteModel, prices: PricesSpec | None, mode: str) -> None:
    """Mutable tariff parameters (so bid curves re-solve without rebuilding)."""
    if mode == "grid" and prices is None:
        raise InputError("prices: required when mode is 'grid'")
    n = len(m.PERIODS)
    dt = m.period_hours
    buy = assets.profile_values(prices.import_price if prices else 0.0, n, dt, "import_price")
    sell = assets.profile_values(prices.export_price if prices else 0.0, n, dt, "export_price")
    above = np.flatnonzero(sell > buy + 1e-9)
    if above.size:
        raise InputError(
            f"prices.export_price: above import_price in period {above[0]}; a home would buy "
            "to resell, which this model does not prevent"
        )
    m.import_price_per_mwh = pyo.Param(
        m.PERIODS, initialize=dict(enumerate(buy)), mutable=True, doc="currency/MWh"
    )
    m.export_price_per_mwh = pyo.Param(
        m.PERIODS, initialize=dict(enumerate(sell)), mutable=True, doc="currency/MWh"
    )


DEVICES = {
    "pv": assets.add_pv,
    "battery": assets.add_battery,
    "ev": assets.add_ev,
    "heat_pump": assets.add_heat_pump,
}


def add_home(b: pyo.Block, spec: ProsumerSpec, m: pyo.ConcreteModel, voll: float) -> None:
    """One home: devices, grid connection, energy balance and cost, on block ``b``."""
    periods, dt = list(m.PERIODS), m.period_hours
    b.load = pyo.Block(doc="inflexible load")
    net = {"load": assets.add_load(b.load, spec.load_kw, periods, dt)}
    for name, add in DEVICES.items():
        device = getattr(spec, name)
        if device is not None:
            if name == "pv" and m.mode == "islanded":
                device = device.model_copy(update={"curtailable": True})
            b.add_component(name, pyo.Block(doc=name))
            net[name] = add(getattr(b, name), device, periods, dt)
    b.APPLIANCES = pyo.Set(initialize=list(spec.appliances), doc="shiftable appliances")
    b.appliance = pyo.Block(b.APPLIANCES, doc="one shiftable appliance")
    for name, appliance in spec.appliances.items():
        net[f"appliance:{name}"] = assets.add_appliance(
            b.appliance[name], appliance, periods, dt, open_end=getattr(m, "open_end", False)
        )
    b.devices = net
    _add_connection(b, spec, m)
    b.energy_balance = pyo.Constraint(
        m.PERIODS,
        rule=lambda b, t: (
            b.p_import_kw[t] - b.p_export_kw[t] + b.p_shed_kw[t] + sum(p[t] for p in net.values())
            == 0
        ),
        doc="p_import[t] - p_export[t] + p_shed[t] + sum_devices p_net[t] = 0  (kW)",
    )
    _add_cost(b, spec, m, voll)


def _add_connection(b: pyo.Block, spec: ProsumerSpec, m: pyo.ConcreteModel) -> None:
    """Import, export and shed power; the grid ones fixed to 0 when islanded."""
    grid = m.mode == "grid"
    b.p_import_kw = pyo.Var(
        m.PERIODS, bounds=(0.0, spec.import_limit_kw), doc="import: 0 <= p <= limit  (kW)"
    )
    b.p_export_kw = pyo.Var(
        m.PERIODS, bounds=(0.0, spec.export_limit_kw), doc="export: 0 <= p <= limit  (kW)"
    )
    b.p_shed_kw = pyo.Var(
        m.PERIODS,
        bounds=lambda b, t: (0.0, b.load.load_kw[t] if not grid else 0.0),
        doc="shed inflexible load (islanded): 0 <= p_shed[t] <= load[t]  (kW)",
    )
    if not grid:
        for t in m.PERIODS:
            b.p_import_kw[t].fix(0.0)
            b.p_export_kw[t].fix(0.0)


def tariff_cost(m: pyo.ConcreteModel, import_kw: pyo.Var, export_kw: pyo.Var):
    """Energy bill at the model's tariffs: sum_t (c_import p_import - c_export p_export) dt
    / 1000 (currency; prices in currency/MWh, power in kW)."""
    dt = m.period_hours
    return sum(
        (m.import_price_per_mwh[t] * import_kw[t] - m.export_price_per_mwh[t] * export_kw[t])
        * dt
        / 1000.0
        for t in m.PERIODS
    )


def _add_cost(b: pyo.Block, spec: ProsumerSpec, m: pyo.ConcreteModel, voll: float) -> None:
    dt = m.period_hours
    b.energy_cost = pyo.Expression(
        expr=tariff_cost(m, b.p_import_kw, b.p_export_kw),
        doc="sum_t (c_import[t] p_import[t] - c_export[t] p_export[t]) dt / 1000  (currency)",
    )
    b.p_peak_import_kw = pyo.Var(bounds=(0.0, None), doc="peak import over the horizon (kW)")
    b.peak_import = pyo.Constraint(
        m.PERIODS,
        rule=lambda b, t: b.p_peak_import_kw >= b.p_import_kw[t],
        doc="p_peak >= p_import[t]  (kW)",
    )
    b.demand_charge = pyo.Expression(
        expr=spec.demand_charge_per_kw * b.p_peak_import_kw,
        doc="demand_charge * p_peak  (currency)",
    )
    b.shed_kwh = pyo.Expression(expr=dt * sum(b.p_shed_kw.values()), doc="sum_t p_shed dt (kWh)")
    b.import_kwh = pyo.Expression(expr=dt * sum(b.p_import_kw.values()), doc="(kWh)")
    b.unsupplied_kwh = pyo.Expression(expr=b.import_kwh + b.shed_kwh, doc="import + shed (kWh)")
    b.device_cost = pyo.Expression(
        expr=sum(blk.cost for blk in _device_blocks(b)), doc="sum of device costs (currency)"
    )
    b.cost = pyo.Expression(
        expr=b.energy_cost + b.demand_charge + b.device_cost + voll * b.shed_kwh / 1000.0,
        doc="energy + demand charge + devices + voll * shed / 1000  (currency)",
    )


def add_network(
    m: pyo.ConcreteModel, feeder: Feeder, formulation: NetworkFormulation | None = None
) -> None:
    """Couple the homes through a feeder with :func:`~gridmarkets.networks.attach_grid`.

    The injection at bus j in period t is the homes' export minus import there, plus at
    the root the upstream grid's supply::

        p[j,t] = sum_{h at j} (p_export[h,t] - p_import[h,t]) + [j = root] p_upstream[t]

    and per phase on a three-phase feeder (:func:`home_rows`). The homes' devices carry
    no reactive power: they are at unity power factor (no ``q_kvar`` in the table). The
    formulation's components land in ``m.network``, its handles in ``m.handles``.
    """
    from gridmarkets.networks import attach_grid

    m.p_upstream_kw = pyo.Var(
        m.PERIODS, doc="power the upstream grid injects at the feeder's root (kW)"
    )
    if m.mode != "grid":
        m.p_upstream_kw.fix(0.0)
    rows = [("upstream", feeder.root, t, m.p_upstream_kw[t], "abc") for t in m.PERIODS]
    for pid, b in m.home.items():
        rows += home_rows(f"prosumers.{pid}", b, m.specs[pid], list(m.PERIODS))
    table = pd.DataFrame(rows, columns=["owner", "bus", "period", "p_kw", "phase"])
    attach_grid(
        m, feeder, list(m.PERIODS), table, formulation=formulation, period_hours=m.period_hours
    )


def device_phases(spec: ProsumerSpec) -> dict[str, str]:
    """Each device's connection, by its name in ``block.devices`` ("load", "pv", ...,
    "appliance:<name>"): its own ``phase``, else the home's, else "abc"."""
    home = spec.phase or "abc"
    phases = {"load": home}
    for name in DEVICES:
        device = getattr(spec, name)
        if device is not None:
            phases[name] = device.phase or home
    for name, appliance in spec.appliances.items():
        phases[f"appliance:{name}"] = appliance.phase or home
    return phases


def home_rows(
    owner: str, b: pyo.Block, spec: ProsumerSpec, periods: list, weight: Any = 1.0
) -> list:
    """A home's rows of :func:`~gridmarkets.networks.attach_grid`'s table: (owner, bus,
    period, p_kw, phase), its injection into the grid (kW).

    All on "abc": one row per period, the meter's export - import. Otherwise one row per
    connection its devices use and period, ``weight`` times the devices' power there
    (shed load with the load): they add up to export - import by the energy balance.
    ``weight`` is a community's membership (0 for an idle member, whose meter is fixed
    at 0 but whose deactivated devices are not).
    """
    phases = device_phases(spec)
    if set(phases.values()) == {"abc"}:
        return [(owner, spec.bus, t, b.p_export_kw[t] - b.p_import_kw[t], "abc") for t in periods]
    rows = []
    for connection in sorted(set(phases.values())):
        names = [name for name, phase in phases.items() if phase == connection]
        shed = phases["load"] == connection
        for t in periods:
            p = sum(b.devices[name][t] for name in names) + (b.p_shed_kw[t] if shed else 0.0)
            rows.append((owner, spec.bus, t, weight * p, connection))
    return rows


def _device_blocks(b: pyo.Block) -> list[pyo.Block]:
    names = ["load", *(n for n in DEVICES if hasattr(b, n))]
    return [getattr(b, n) for n in names] + list(b.appliance.values())


# --- results ----------------------------------------------------------------------------


def results(model: pyo.ConcreteModel, solution: Solution) -> Result:
    """Tidy tables and KPIs of a solved EMS.

    Tables
    ------
    power : prosumer, period, device, p_kw — every device's injection into the home's bus
        and the ``grid`` (import - export) and ``shed`` rows; they sum to 0 per period.
    grid : prosumer, period, import_kw, export_kw, shed_kw, curtailed_kw, load_kw,
        import_price, export_price, energy_cost and (where duals exist) marginal_price,
        the dual of the energy balance in currency/MWh.
    storage : prosumer, device, period, p_charge_kw, p_discharge_kw, soc_kwh.
    appliances : prosumer, appliance, start_period, end_period (exclusive), energy_kwh.
    thermal : prosumer, period, p_kw, temperature_c, t_outdoor_c.
    prosumers : one row of KPIs per home.
    feeder_prices : on a network, the DLMPs of :func:`gridmarkets.networks.nodal_prices`
        (bus, period, price and its parts, currency/MWh). The homes pay their tariffs
        and the upstream supply has no price of its own, so these are the shadow costs
        of the feeder's limits: what one more kW of other demand at a bus would cost
        the homes.
    """
    tables = {
        "power": _power_table(model),
        "grid": _grid_table(model, solution),
        "storage": _storage_table(model),
        "appliances": _appliance_table(model),
        "thermal": _thermal_table(model),
    }
    tables["prosumers"] = _kpi_table(model, tables["grid"], tables["power"])
    handles = getattr(model, "handles", None)  # None for models built elsewhere
    if handles is not None and solution.duals_from is not None:
        from gridmarkets.networks import nodal_prices

        tables["feeder_prices"] = nodal_prices(handles, solution)
    if model.timestamps is not None:
        stamps = dict(enumerate(model.timestamps))
        for table in tables.values():
            if "period" in table:
                table.insert(2, "timestamp", table["period"].map(stamps))
    kpis = _totals(tables["prosumers"], tables["grid"])
    return Result("prosumer", tables, kpis, solution)


def _value(component) -> float:
    return float(pyo.value(component))


def _power_table(m: pyo.ConcreteModel) -> pd.DataFrame:
    rows = []
    for pid, b in m.home.items():
        series = {name: p for name, p in b.devices.items()}
        for t in m.PERIODS:
            grid = _value(b.p_import_kw[t]) - _value(b.p_export_kw[t])
            rows += [(pid, t, name, _value(p[t])) for name, p in series.items()]
            rows += [(pid, t, "grid", grid), (pid, t, "shed", _value(b.p_shed_kw[t]))]
    return pd.DataFrame(rows, columns=["prosumer", "period", "device", "p_kw"])


def _grid_table(m: pyo.ConcreteModel, solution: Solution) -> pd.DataFrame:
    rows = []
    for pid, b in m.home.items():
        for t in m.PERIODS:
            rows.append(
                {
                    "prosumer": pid,
                    "period": t,
                    "bus": m.specs[pid].bus,
                    "import_kw": _value(b.p_import_kw[t]),
                    "export_kw": _value(b.p_export_kw[t]),
                    "shed_kw": _value(b.p_shed_kw[t]),
                    "curtailed_kw": _value(b.pv.p_curtail_kw[t]) if hasattr(b, "pv") else 0.0,
                    "load_kw": _value(b.load.load_kw[t]),
                    "import_price": _value(m.import_price_per_mwh[t]),
                    "export_price": _value(m.export_price_per_mwh[t]),
                }
            )
    table = pd.DataFrame(rows)
    table["energy_cost"] = (
        (table["import_kw"] * table["import_price"] - table["export_kw"] * table["export_price"])
        * m.period_hours
        / 1000.0
    )
    if solution.duals_from is not None:
        duals = [solution.dual(b.energy_balance[t]) for b in m.home.values() for t in m.PERIODS]
        table["marginal_price"] = np.asarray(duals) * 1000.0 / m.period_hours
    return table


def _storage_table(m: pyo.ConcreteModel) -> pd.DataFrame:
    rows = []
    for pid, b in m.home.items():
        for name in ("battery", "ev"):
            if not hasattr(b, name):
                continue
            dev = getattr(b, name)
            for t in m.PERIODS:
                soc = _value(dev.soc_kwh[t]) if t in dev.soc_kwh else np.nan
                charge, discharge = _value(dev.p_charge_kw[t]), _value(dev.p_discharge_kw[t])
                rows.append((pid, name, t, charge, discharge, soc))
    columns = ["prosumer", "device", "period", "p_charge_kw", "p_discharge_kw", "soc_kwh"]
    return pd.DataFrame(rows, columns=columns)


def _appliance_table(m: pyo.ConcreteModel) -> pd.DataFrame:
    rows = []
    for pid, b in m.home.items():
        for name in b.APPLIANCES:
            dev, spec = b.appliance[name], m.specs[pid].appliances[name]
            start = max(dev.STARTS, key=lambda s, dev=dev: _value(dev.start[s]))
            energy = sum(spec.profile_kw) * m.period_hours
            rows.append((pid, name, start, start + len(spec.profile_kw), energy))
    columns = ["prosumer", "appliance", "start_period", "end_period", "energy_kwh"]
    return pd.DataFrame(rows, columns=columns)


def _thermal_table(m: pyo.ConcreteModel) -> pd.DataFrame:
    rows = [
        (
            pid,
            t,
            _value(b.heat_pump.p_kw[t]),
            _value(b.heat_pump.temperature_c[t]),
            _value(b.heat_pump.t_outdoor_c[t]),
        )
        for pid, b in m.home.items()
        if hasattr(b, "heat_pump")
        for t in m.PERIODS
    ]
    columns = ["prosumer", "period", "p_kw", "temperature_c", "t_outdoor_c"]
    return pd.DataFrame(rows, columns=columns)


def _kpi_table(m: pyo.ConcreteModel, grid: pd.DataFrame, power: pd.DataFrame) -> pd.DataFrame:
    dt = m.period_hours
    consumed = power[power["p_kw"] < 0].groupby("prosumer")["p_kw"].sum() * -dt
    rows = []
    for pid, b in m.home.items():
        g = grid[grid["prosumer"] == pid]
        unsupplied = (g["import_kw"].sum() + g["shed_kw"].sum()) * dt
        demand = consumed.get(pid, 0.0)
        rows.append(
            {
                "prosumer": pid,
                "cost": _value(b.cost),
                "energy_cost": _value(b.energy_cost),
                "demand_charge": _value(b.demand_charge),
                "device_cost": _value(b.device_cost),
                "import_kwh": g["import_kw"].sum() * dt,
                "export_kwh": g["export_kw"].sum() * dt,
                "shed_kwh": g["shed_kw"].sum() * dt,
                "curtailed_kwh": g["curtailed_kw"].sum() * dt,
                "consumption_kwh": demand,
                "self_sufficiency": 1.0 - unsupplied / demand if demand > 0 else 1.0,
                "peak_import_kw": g["import_kw"].max(),
            }
        )
    return pd.DataFrame(rows)


def _totals(per_home: pd.DataFrame, grid: pd.DataFrame) -> dict[str, float]:
    """Sums over homes; the peak is the homes' coincident peak import."""
    sums = per_home.drop(columns=["prosumer", "self_sufficiency", "peak_import_kw"]).sum()
    kpis = {k: float(v) for k, v in sums.items()}
    demand = kpis["consumption_kwh"]
    unsupplied = kpis["import_kwh"] + kpis["shed_kwh"]
    kpis["self_sufficiency"] = 1.0 - unsupplied / demand if demand > 0 else 1.0
    kpis["peak_import_kw"] = float(grid.groupby("period")["import_kw"].sum().max())
    kpis["prosumers"] = len(per_home)
    return kpis


# --- one call, case runner --------------------------------------------------------------


def schedule(
    prosumers: ProsumerSpec | Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec | None = None,
    *,
    solve_options: Mapping[str, Any] | None = None,
    **build_options: Any,
) -> Result:
    """Build, solve and report in one call: :func:`build` then :func:`results`.

    ``build_options`` are :func:`build`'s keyword arguments; ``solve_options`` are
    :func:`gridmarkets.solvers.solve`'s.
    """
    model = build(prosumers, prices, **build_options)
    return results(model, solve(model, **dict(solve_options or {})))


def start_step(start: Any) -> int:
    """The 15-minute step of the year of a timestamp (0 for None): SimBench's row."""
    if start is None:
        return 0
    new_year = start.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    return int((start - new_year).total_seconds() // 900)


def resolve_feeder_profiles(
    prosumers: Mapping[str, ProsumerSpec], feeder: Feeder, horizon: Any
) -> dict[str, ProsumerSpec]:
    """Replace every :class:`~gridmarkets.models.assets.FeederProfile` by its values.

    The SimBench profiles of the feeder's loads (``feeder: load``) or static generators
    (``feeder: sgen``) summed at the profile's bus (default the home's bus) are read
    from ``horizon.start``'s 15-minute step of the year, averaged to
    ``horizon.resolution_minutes`` and multiplied by the profile's ``scale``.

    Parameters
    ----------
    prosumers : id -> home.
    feeder : a feeder loaded from a SimBench code.
    horizon : the case's horizon (``start``, ``periods``, ``resolution_minutes``).
    """
    if not any(_feeder_profiles(home) for home in prosumers.values()):
        return dict(prosumers)
    from gridmarkets.networks import feeder_profiles

    table = feeder_profiles(
        feeder, start_step(horizon.start), horizon.periods, horizon.resolution_minutes
    )
    by_bus = {bus: frame.sort_values("period") for bus, frame in table.groupby("bus")}
    out = {}
    for pid, home in prosumers.items():
        update: dict[str, Any] = {}
        if isinstance(home.load_kw, FeederProfile):
            path = f"prosumers.{pid}.load_kw"
            update["load_kw"] = _bus_profile(by_bus, feeder, home.load_kw, home.bus, path)
        if home.pv is not None and isinstance(home.pv.profile_kw, FeederProfile):
            path = f"prosumers.{pid}.pv.profile_kw"
            values = _bus_profile(by_bus, feeder, home.pv.profile_kw, home.bus, path)
            update["pv"] = home.pv.model_copy(update={"profile_kw": values})
        out[pid] = home.model_copy(update=update)
    return out


def _bus_profile(by_bus, feeder: Feeder, profile: FeederProfile, bus, path: str) -> list[float]:
    bus = profile.bus if profile.bus is not None else bus
    column = f"{profile.feeder}_p_kw"
    target = feeder.merged.get(bus, bus)
    elements = feeder.net[profile.feeder]
    present = {feeder.merged.get(b, b) for b in elements.loc[elements["in_service"], "bus"]}
    frame = by_bus.get(target)
    if frame is None or target not in present:
        raise InputError(f"{path}: bus {bus} has no SimBench {profile.feeder} profile")
    return [float(v) * profile.scale for v in frame[column]]


def bus_injections(result: Result) -> pd.DataFrame:
    """The homes' net injection into the grid (export - import, kW) per bus and period.

    Rows are buses, columns periods; homes without a bus are left out. Reactive power
    is not modelled (unity power factor).
    """
    grid = result.grid.dropna(subset=["bus"])
    return grid.assign(p_kw=grid["export_kw"] - grid["import_kw"]).pivot_table(
        index="bus", columns="period", values="p_kw", aggfunc="sum", fill_value=0.0
    )


def connection_injections(result: Result, homes: Mapping[str, ProsumerSpec]) -> pd.DataFrame:
    """The homes' injections into the grid per connection: a long table of bus, period,
    phase and p_kw (devices on k phases as one row on their connection; shed load on the
    load's), for a three-phase AC check. Homes without a bus are left out."""
    power = result.power[result.power["device"] != "grid"]
    phases = {pid: device_phases(spec) for pid, spec in homes.items()}
    device = power["device"].where(power["device"] != "shed", "load")
    phase = [phases[pid][name] for pid, name in zip(power["prosumer"], device, strict=True)]
    bus = power["prosumer"].map({pid: spec.bus for pid, spec in homes.items()})
    table = pd.DataFrame(
        {"bus": bus, "period": power["period"], "phase": phase, "p_kw": power["p_kw"]}
    )
    return table.dropna(subset=["bus"])


# --- bid curves -------------------------------------------------------------------------

BID_COLUMNS = ["participant", "side", "quantity_kw", "price", "period", "block", "bus"]


def bid_curves(
    home: ProsumerSpec,
    prices: PricesSpec,
    ladder: Sequence[float],
    *,
    participant: str = "home",
    solve_options: Mapping[str, Any] | None = None,
    **build_options: Any,
) -> pd.DataFrame:
    """A home's bids and offers per period for a local market, in the LEM bids format.

    For each period and each price ``p`` of the ladder the EMS is re-solved with that
    period's import and export price set to ``p`` (the other periods keep ``prices``);
    the net import ``q(p)`` it chooses is read. The demand curve ``max(q, 0)`` becomes
    buy blocks and the supply curve ``max(-q, 0)`` sell blocks, so that at a market
    price on the ladder the accepted blocks sum to the EMS's own choice. ``q`` is made
    non-increasing in ``p`` first (a MILP may not be monotone). Over more than one
    period the devices that link periods (battery, EV, heat pump, appliances) are first
    fixed at their schedule for ``prices``, so the bids stay deliverable (see
    :func:`_fix_inter_temporal_devices`).

    Parameters
    ----------
    home : the prosumer.
    prices : the tariff the home expects in the other periods (currency/MWh).
    ladder : the prices tried (currency/MWh).
    participant : the id written in the table; its ``bus`` column is ``home.bus``.
    build_options : :func:`build`'s keyword arguments (periods, period_hours, ...).

    Returns
    -------
    DataFrame with columns participant, side, quantity_kw, price, period, block, bus.
    """
    ladder = sorted(float(p) for p in ladder)
    model = build({participant: home}, prices, **build_options)
    b = model.home[participant]
    _fix_inter_temporal_devices(model, b, solve_options)
    rows = []
    for t in track(model.PERIODS, "bid curves (periods)"):
        saved = (pyo.value(model.import_price_per_mwh[t]), pyo.value(model.export_price_per_mwh[t]))
        net = []
        for price in ladder:
            model.import_price_per_mwh[t] = model.export_price_per_mwh[t] = price
            solve(model, **dict(solve_options or {}))
            net.append(pyo.value(b.p_import_kw[t]) - pyo.value(b.p_export_kw[t]))
        model.import_price_per_mwh[t], model.export_price_per_mwh[t] = saved
        rows += curve_blocks(ladder, np.minimum.accumulate(net), t)
    table = pd.DataFrame(rows, columns=["side", "quantity_kw", "price", "period"])
    table.insert(0, "participant", participant)
    table["block"] = table.groupby(["side", "period"]).cumcount()
    table["bus"] = home.bus
    return table[BID_COLUMNS]


INTER_TEMPORAL_DEVICES = ("battery", "ev", "heat_pump", "appliance")  # keys of b.devices


def _fix_inter_temporal_devices(model: pyo.ConcreteModel, b: pyo.Block, solve_options) -> None:
    """Over more than one period, fix the home's storage-like devices (battery, EV,
    heat pump, appliances) at their schedule for ``prices`` before the ladder: per-period
    curves of a device that links periods are not deliverable (a battery's curve in
    each period assumes the others are not accepted: 2 kW of charging accepted in six
    periods is 8.5 kWh into 2 kWh of room). The bids then carry the separable rest (PV
    curtailment) around that plan, so whatever the market accepts the home can deliver;
    to let the market schedule the devices, use a device bid
    (:class:`gridmarkets.models.participants.DeviceBid`)."""
    linked = [name for name in b.devices if name.split(":")[0] in INTER_TEMPORAL_DEVICES]
    if len(model.PERIODS) < 2 or not linked:
        return
    solve(model, **dict(solve_options or {}))
    plan = {(name, t): pyo.value(b.devices[name][t]) for name in linked for t in model.PERIODS}
    b.device_plan = pyo.Constraint(
        list(plan),
        rule=lambda b, name, t: b.devices[name][t] == plan[name, t],
        doc="p_net[d, t] = its schedule at the expected tariff, for devices linking periods (kW)",
    )


def curve_blocks(ladder: list[float], net_kw: np.ndarray, period: int) -> list[tuple]:
    """Step blocks (side, quantity, price, period) of one period's net-import curve."""
    demand = np.append(np.clip(net_kw, 0, None), 0.0)
    supply = np.insert(np.clip(-net_kw, 0, None), 0, 0.0)
    blocks = []
    for k, price in enumerate(ladder):
        blocks.append(("buy", demand[k] - demand[k + 1], price, period))
        blocks.append(("sell", supply[k + 1] - supply[k], price, period))
    return [block for block in blocks if block[1] > 1e-9]


# --- rolling horizon (model-predictive control) -----------------------------------------


@dataclass
class _State:
    """What a re-plan pins: the realised state at the end of the last period."""

    battery_soc_kwh: float | None = None
    ev_soc_kwh: float | None = None
    temperature_c: float | None = None
    peak_import_kw: float = 0.0
    starts: dict[str, int] = field(default_factory=dict)


def rolling_horizon(
    home: ProsumerSpec,
    prices: PricesSpec,
    forecast: Mapping[str, Sequence[float]] | pd.DataFrame,
    actual: Mapping[str, Sequence[float]] | pd.DataFrame,
    window: int,
    *,
    period_hours: float = 1.0,
    timestamps: Sequence[Any] | None = None,
    perfect_foresight: bool = True,
    solve_options: Mapping[str, Any] | None = None,
) -> Result:
    """Operate one home model-predictively: re-plan every period over a moving window.

    In period t the EMS knows the current period's load and PV (``actual``) and sees
    ``forecast`` for periods t+1 .. t+window-1; it solves that window with the realised
    state pinned (battery SoC, an EV's energy so far in its stay, the indoor temperature,
    an appliance already running — its remaining profile continues — and the peak import
    so far for the demand charge), carries out period t's decisions and moves on. A
    window ending before the horizon keeps the battery's final-SoC target at its end,
    asks an EV only for the energy it could not charge after the window at full power,
    and lets appliances start after it.

    Parameters
    ----------
    home : the home; its own ``load_kw`` and ``pv.profile_kw`` are replaced by the
        columns ``load_kw`` and ``pv_kw`` (available PV power) of the profiles.
    prices : the tariff (known ahead, currency/MWh).
    forecast, actual : DataFrames (or mappings) with one row per period of the horizon.
    window : periods per plan (1 = myopic).
    period_hours, timestamps : the horizon's resolution and timestamps.
    perfect_foresight : also schedule the whole horizon knowing ``actual`` (the KPI
        ``cost_perfect_foresight``).

    Returns
    -------
    Result of the realised schedule (:func:`results`'s tables over the whole horizon,
    evaluated with the actual profiles) plus ``rolling`` (period, load and PV forecast
    and actual, the plan's window cost, solve seconds) and the KPIs ``cost``,
    ``cost_perfect_foresight``, ``regret`` (= cost - cost with perfect foresight),
    ``regret_percent``, ``replans`` and ``replan_seconds``.
    """
    forecast, actual = _profile_frame(forecast, "forecast"), _profile_frame(actual, "actual")
    n = len(actual)
    if len(forecast) != n:
        raise InputError(f"forecast: {len(forecast)} periods, actual has {n}")
    if window < 1:
        raise InputError(f"window: {window} is below 1")
    if home.pv is not None and "pv_kw" not in actual:
        raise InputError("actual.pv_kw: required for a home with PV (and in forecast)")
    known = _with_profiles(home, actual["load_kw"], actual.get("pv_kw"))
    check_home(known, n, "home", period_hours)
    buy = assets.profile_values(prices.import_price, n, period_hours, "prices.import_price")
    sell = assets.profile_values(prices.export_price, n, period_hours, "prices.export_price")
    outdoor = _outdoor(home, n, period_hours)
    state = _State(
        battery_soc_kwh=home.battery.soc_initial_kwh if home.battery else None,
        temperature_c=home.heat_pump.t_initial_c if home.heat_pump else None,
    )
    decisions: dict[str, dict[int, float]] = {}
    log = []
    options = dict(solve_options or {})
    for t in track(range(n), "re-plans (rolling horizon)"):
        end = min(n, t + window)
        seen = {
            col: np.r_[actual[col].iloc[t], forecast[col].iloc[t + 1 : end]]
            for col in actual.columns
        }
        plan_home = _window_home(home, state, seen, outdoor[t:end], t, end, n, period_hours)
        plan_prices = PricesSpec(import_price=list(buy[t:end]), export_price=list(sell[t:end]))
        model = build(
            {"home": plan_home},
            plan_prices,
            periods=end - t,
            period_hours=period_hours,
            open_end=end < n,
            extra=_pin_peak(state.peak_import_kw),
        )
        pinned = _pinned(model.home["home"], state, t)
        solution = solve(model, **options)
        _carry_out(model.home["home"], plan_home, state, decisions, t)
        log.append(
            {**pinned, "plan_cost": solution.objective, "solve_seconds": solution.solve_seconds}
        )
    for name, start in state.starts.items():
        decisions[f"appliance:{name}"] = start
    realised = _realise(known, prices, decisions, n, period_hours, timestamps, options)
    realised.tables["rolling"] = _rolling_table(log, forecast, actual)
    kpis = realised.kpis
    kpis["replans"] = n
    kpis["replan_seconds"] = float(sum(row["solve_seconds"] for row in log))
    if perfect_foresight:
        best = schedule(known, prices, periods=n, period_hours=period_hours, solve_options=options)
        kpis["cost_perfect_foresight"] = best.kpis["cost"]
        kpis["regret"] = kpis["cost"] - best.kpis["cost"]
        scale = abs(best.kpis["cost"])
        kpis["regret_percent"] = 100 * kpis["regret"] / scale if scale > 0 else float("nan")
    return realised


def _profile_frame(profiles, name: str) -> pd.DataFrame:
    frame = pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in dict(profiles).items()})
    if "load_kw" not in frame:
        raise InputError(f"{name}.load_kw: missing (one value per period)")
    unknown = set(frame.columns) - {"load_kw", "pv_kw"}
    if unknown:
        raise InputError(f"{name}: unknown column(s) {sorted(unknown)}; use load_kw, pv_kw")
    return frame.reset_index(drop=True)


def _with_profiles(home: ProsumerSpec, load, pv) -> ProsumerSpec:
    update: dict[str, Any] = {"load_kw": [float(v) for v in load]}
    if home.pv is not None:
        update["pv"] = home.pv.model_copy(update={"profile_kw": [float(v) for v in pv]})
    return home.model_copy(update=update)


def _outdoor(home: ProsumerSpec, n: int, period_hours: float) -> np.ndarray:
    if home.heat_pump is None:
        return np.zeros(n)
    return assets.profile_values(
        home.heat_pump.t_outdoor_c, n, period_hours, "heat_pump.t_outdoor_c"
    )


def _pin_peak(peak_kw: float) -> Callable[[pyo.ConcreteModel], None]:
    def pin(m: pyo.ConcreteModel) -> None:
        m.home["home"].p_peak_import_kw.setlb(peak_kw)

    return pin


def _window_home(
    home: ProsumerSpec,
    state: _State,
    seen: Mapping[str, np.ndarray],
    outdoor: np.ndarray,
    t: int,
    end: int,
    n: int,
    dt: float,
) -> ProsumerSpec:
    """The home as the plan of periods t .. end-1 sees it, renumbered from 0."""
    update: dict[str, Any] = {}
    planned = _with_profiles(home, seen["load_kw"], seen.get("pv_kw"))
    if home.battery is not None:
        b = home.battery
        final = b.soc_initial_kwh if b.soc_final_kwh is None else b.soc_final_kwh
        soc = float(np.clip(state.battery_soc_kwh, b.soc_min_kwh, b.soc_max))
        update["battery"] = b.model_copy(update={"soc_initial_kwh": soc, "soc_final_kwh": final})
    if home.ev is not None:
        update["ev"] = _window_ev(home.ev, state.ev_soc_kwh, t, end, dt)
    if home.heat_pump is not None:
        update["heat_pump"] = home.heat_pump.model_copy(
            update={"t_initial_c": state.temperature_c, "t_outdoor_c": list(outdoor)}
        )
    update["appliances"] = _window_appliances(home.appliances, state.starts, t, end, n)
    return planned.model_copy(update=update)


def _window_ev(ev: EVSpec, soc_now: float | None, t: int, end: int, dt: float) -> EVSpec | None:
    """The EV's stays that overlap the window; one under way starts from its energy now;
    one leaving after the window needs only what full power after it cannot add."""
    stays = []
    for stay in ev.stays:
        if stay.departure <= t or stay.arrival >= end:
            continue
        arrival = stay.soc_arrival_kwh if stay.arrival >= t else float(soc_now)
        after = ev.eta_charge * ev.p_charge_max_kw * dt * max(0, stay.departure - end)
        stays.append(
            StaySpec(
                arrival=max(stay.arrival - t, 0),
                departure=min(stay.departure, end) - t,
                soc_arrival_kwh=float(np.clip(arrival, 0.0, ev.capacity_kwh)),
                soc_departure_kwh=max(0.0, stay.soc_departure_kwh - after),
            )
        )
    return ev.model_copy(update={"stays": stays}) if stays else None


def _window_appliances(
    appliances: Mapping[str, ApplianceSpec], starts: Mapping[str, int], t: int, end: int, n: int
) -> dict[str, ApplianceSpec]:
    """Appliances still to run or running, renumbered from the window's first period.

    A running appliance becomes its remaining profile, which must start at once.
    """
    out = {}
    for name, spec in appliances.items():
        length = len(spec.profile_kw)
        if name in starts:
            done = t - starts[name]
            if done < length:
                rest = spec.profile_kw[done:]
                out[name] = ApplianceSpec(profile_kw=rest, earliest_start=0, latest_end=len(rest))
            continue
        earliest = max(spec.earliest_start - t, 0)
        if earliest >= end - t:
            continue
        latest_end = (n if spec.latest_end is None else spec.latest_end) - t
        out[name] = ApplianceSpec(
            profile_kw=spec.profile_kw, earliest_start=earliest, latest_end=latest_end
        )
    return out


def _carry_out(b: pyo.Block, plan: ProsumerSpec, state: _State, decisions: dict, t: int) -> None:
    """Record the plan's first period as period t's decisions and advance the state."""

    def keep(name: str, value: float) -> None:
        decisions.setdefault(name, {})[t] = float(value)

    if hasattr(b, "pv"):
        keep("pv.p_curtail_kw", pyo.value(b.pv.p_curtail_kw[0]))
    if hasattr(b, "battery"):
        keep("battery.p_charge_kw", pyo.value(b.battery.p_charge_kw[0]))
        keep("battery.p_discharge_kw", pyo.value(b.battery.p_discharge_kw[0]))
        state.battery_soc_kwh = pyo.value(b.battery.soc_kwh[0])
    if hasattr(b, "ev"):
        keep("ev.p_charge_kw", pyo.value(b.ev.p_charge_kw[0]))
        keep("ev.p_discharge_kw", pyo.value(b.ev.p_discharge_kw[0]))
        state.ev_soc_kwh = pyo.value(b.ev.soc_kwh[0]) if 0 in b.ev.PLUGGED else None
    if hasattr(b, "heat_pump"):
        keep("heat_pump.p_kw", pyo.value(b.heat_pump.p_kw[0]))
        state.temperature_c = pyo.value(b.heat_pump.temperature_c[0])
    for name in b.APPLIANCES:
        dev = b.appliance[name]
        if name not in state.starts and 0 in dev.STARTS and pyo.value(dev.start[0]) > 0.5:
            state.starts[name] = t
    state.peak_import_kw = max(state.peak_import_kw, pyo.value(b.p_import_kw[0]))


def _realise(known, prices, decisions, n, dt, timestamps, options) -> Result:
    """The realised schedule over the whole horizon with the actual profiles: the full
    model with every carried-out decision fixed, so the tables and the cost are those
    of :func:`results`."""
    model = build(known, prices, periods=n, period_hours=dt, timestamps=timestamps)
    b = model.home["home"]
    for name, values in decisions.items():
        if name.startswith("appliance:"):
            dev = b.appliance[name.split(":", 1)[1]]
            for s in dev.STARTS:
                dev.start[s].fix(int(s == values))
            continue
        device, var = name.split(".")
        component = getattr(getattr(b, device), var)
        for t, value in values.items():
            component[t].fix(value if value > 1e-9 else 0.0)
    return results(model, solve(model, **options))


def _pinned(b: pyo.Block, state: _State, t: int) -> dict[str, Any]:
    """The state a plan starts from (NaN where the device is absent or away)."""
    plugged = hasattr(b, "ev") and 0 in b.ev.PLUGGED and state.ev_soc_kwh is not None
    running = [name for name in b.APPLIANCES if name in state.starts]
    return {
        "period": t,
        "battery_soc_start_kwh": state.battery_soc_kwh if hasattr(b, "battery") else np.nan,
        "ev_soc_start_kwh": state.ev_soc_kwh if plugged else np.nan,
        "temperature_start_c": state.temperature_c if hasattr(b, "heat_pump") else np.nan,
        "peak_import_start_kw": state.peak_import_kw,
        "running": ",".join(running),
    }


def _rolling_table(log, forecast: pd.DataFrame, actual: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame(log)
    for col in actual.columns:
        table[f"{col}_forecast"] = forecast[col].to_numpy()
        table[f"{col}_actual"] = actual[col].to_numpy()
    return table


# --- two-stage under uncertainty (scenarios) --------------------------------------------


class ImbalanceSpec(Spec):
    """Real-time prices of deviations from the day-ahead exchange, currency per MWh.

    ``up``: paid per MWh imported beyond (or exported short of) the day-ahead schedule,
    at least the import price; ``down``: received per MWh imported short of (or
    exported beyond) it, at most the export price.
    """

    up_per_mwh: Profile = Field(description="price of a shortfall (currency/MWh)")
    down_per_mwh: Profile = Field(0.0, description="price of a surplus (currency/MWh)")


def two_stage(
    prosumers: ProsumerSpec | Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec,
    imbalance: ImbalanceSpec,
    **build_options: Any,
) -> TwoStage:
    """The home(s) as a two-stage problem (:class:`~gridmarkets.models.stochastic.TwoStage`).

    First stage, per home and period: the day-ahead import and export
    (``p_day_ahead_import_kw``, ``p_day_ahead_export_kw``), settled at the tariff.
    Second stage, per scenario: the devices as :func:`build` schedules them (the
    real-time recourse), for the scenario's profiles, and the deviation from the
    day-ahead schedule settled at the imbalance prices (:func:`add_imbalance`).

    Scenario profiles: ``<home>.load_kw`` and ``<home>.pv_kw`` (available PV power,
    kW) replace the home's ``load_kw`` and ``pv.profile_kw``; with one home ``load_kw``
    and ``pv_kw`` do too. ``build_options`` are :func:`build`'s (no network, grid mode).
    """
    homes = as_mapping(prosumers)
    if build_options.get("network") is not None or build_options.get("mode", "grid") != "grid":
        raise InputError("scenarios: a two-stage prosumer is grid-connected and has no network")
    if build_options.get("objective", "cost") != "cost":
        raise InputError("scenarios: a two-stage prosumer minimises cost (objective: cost)")
    periods = build_options.get("periods", 24)
    dt = build_options.get("period_hours", 1.0)
    up, down = imbalance_values(imbalance, periods, dt)

    def scenario(profile: pd.DataFrame) -> pyo.ConcreteModel:
        return build(
            scenario_homes(homes, profile, "prosumers"),
            prices,
            extra=lambda m: add_imbalance(m, up, down),
            **build_options,
        )

    return TwoStage(scenario, day_ahead_variables, lambda m: m.two_stage_cost)


def scenario_homes(
    homes: Mapping[str, ProsumerSpec], profile: pd.DataFrame, path: str
) -> dict[str, ProsumerSpec]:
    """The homes with a scenario's ``<home>.load_kw`` and ``<home>.pv_kw`` columns in
    place of their profiles (with one home, also plain ``load_kw`` and ``pv_kw``)."""
    columns = {}
    for column in profile.columns:
        home, _, kind = column.rpartition(".")
        if not home and len(homes) == 1:
            home = next(iter(homes))
        if home not in homes or kind not in ("load_kw", "pv_kw"):
            raise InputError(
                f"scenarios: profile {column!r} is not <{path} id>.load_kw or .pv_kw "
                f"(ids: {', '.join(homes)})"
            )
        if kind == "pv_kw" and homes[home].pv is None:
            raise InputError(f"scenarios: profile {column!r}: {path}.{home} has no PV")
        columns.setdefault(home, {})[kind] = [float(v) for v in profile[column]]
    out = dict(homes)
    for home, values in columns.items():
        update: dict[str, Any] = {}
        if "load_kw" in values:
            update["load_kw"] = values["load_kw"]
        if "pv_kw" in values:
            update["pv"] = homes[home].pv.model_copy(update={"profile_kw": values["pv_kw"]})
        out[home] = homes[home].model_copy(update=update)
    return out


def add_imbalance(m: pyo.Block, up_per_mwh: np.ndarray, down_per_mwh: np.ndarray) -> None:
    """Every home's day-ahead exchange and imbalance settlement (:func:`add_day_ahead`
    on its meter) and the scenario's cost ``m.two_stage_cost``: their sum."""
    add_imbalance_prices(m, up_per_mwh, down_per_mwh)
    for b in m.home.values():
        add_day_ahead(b, m, b.p_import_kw, b.p_export_kw, b.cost - b.energy_cost)
    m.two_stage_cost = pyo.Expression(
        expr=sum(b.settled_cost for b in m.home.values()),
        doc="sum_h settled cost[h]  (currency)",
    )


def add_imbalance_prices(m: pyo.Block, up_per_mwh: np.ndarray, down_per_mwh: np.ndarray) -> None:
    """``m.imbalance_up_per_mwh`` and ``m.imbalance_down_per_mwh``, checked against the
    tariff: up >= import price, down <= export price (else deviating pays)."""
    buy, sell = m.import_price_per_mwh, m.export_price_per_mwh
    for t in m.PERIODS:
        if up_per_mwh[t] < pyo.value(buy[t]) - 1e-9 or down_per_mwh[t] > pyo.value(sell[t]) + 1e-9:
            raise InputError(
                f"scenarios.imbalance: period {t}: up {up_per_mwh[t]:g} must be at least the "
                f"import price and down {down_per_mwh[t]:g} at most the export price, or "
                "trading the deviation would pay without limit"
            )
    m.imbalance_up_per_mwh = pyo.Param(
        m.PERIODS, initialize=dict(enumerate(up_per_mwh)), doc="price of a shortfall (/MWh)"
    )
    m.imbalance_down_per_mwh = pyo.Param(
        m.PERIODS, initialize=dict(enumerate(down_per_mwh)), doc="price of a surplus (/MWh)"
    )


def add_day_ahead(b: pyo.Block, m: pyo.Block, import_kw, export_kw, other_cost) -> None:
    """A meter's day-ahead schedule (first stage), its deviations and their settlement.

    The meter (``import_kw``, ``export_kw``) follows the day-ahead schedule up to the
    deviations::

        p_import[t] - p_export[t] - (p_da_import[t] - p_da_export[t])
            = p_short[t] - p_surplus[t]                                   (kW)

    and its cost (``b.settled_cost``) is ``other_cost`` (all but the energy bill) plus
    the day-ahead bill at the tariff and the imbalance settlement::

        settled = other + sum_t (c_import p_da_import - c_export p_da_export
                  + c_up p_short - c_down p_surplus) dt / 1000             (currency)
    """
    first = next(iter(m.PERIODS))
    b.p_day_ahead_import_kw = pyo.Var(
        m.PERIODS, bounds=(0.0, import_kw[first].ub), doc="day-ahead import (kW, first stage)"
    )
    b.p_day_ahead_export_kw = pyo.Var(
        m.PERIODS, bounds=(0.0, export_kw[first].ub), doc="day-ahead export (kW, first stage)"
    )
    b.p_short_kw = pyo.Var(m.PERIODS, bounds=(0.0, None), doc="import above schedule (kW)")
    b.p_surplus_kw = pyo.Var(m.PERIODS, bounds=(0.0, None), doc="import below schedule (kW)")
    b.deviation = pyo.Constraint(
        m.PERIODS,
        rule=lambda b, t: (
            import_kw[t] - export_kw[t] - (b.p_day_ahead_import_kw[t] - b.p_day_ahead_export_kw[t])
            == b.p_short_kw[t] - b.p_surplus_kw[t]
        ),
        doc="p_import - p_export - (p_da_import - p_da_export) = p_short - p_surplus  (kW)",
    )
    b.day_ahead_cost = pyo.Expression(
        expr=tariff_cost(m, b.p_day_ahead_import_kw, b.p_day_ahead_export_kw),
        doc="sum_t (c_import p_da_import - c_export p_da_export) dt / 1000  (currency)",
    )
    b.imbalance_cost = pyo.Expression(
        expr=sum(
            (
                m.imbalance_up_per_mwh[t] * b.p_short_kw[t]
                - m.imbalance_down_per_mwh[t] * b.p_surplus_kw[t]
            )
            * m.period_hours
            / 1000.0
            for t in m.PERIODS
        ),
        doc="sum_t (c_up p_short - c_down p_surplus) dt / 1000  (currency)",
    )
    b.settled_cost = pyo.Expression(
        expr=other_cost + b.day_ahead_cost + b.imbalance_cost,
        doc="cost but the energy bill + day-ahead cost + imbalance cost  (currency)",
    )


def day_ahead_variables(m: pyo.Block) -> list:
    """The first stage of :func:`two_stage`: every home's day-ahead import and export."""
    return [
        v
        for b in m.home.values()
        for var in (b.p_day_ahead_import_kw, b.p_day_ahead_export_kw)
        for v in var.values()
    ]


def schedule_stochastic(
    prosumers: ProsumerSpec | Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec,
    scenarios: Scenarios,
    imbalance: ImbalanceSpec,
    *,
    risk: Risk | None = None,
    out_of_sample: Scenarios | None = None,
    client: Any = None,
    solve_options: Mapping[str, Any] | None = None,
    **build_options: Any,
) -> Result:
    """Schedule the home(s) day-ahead against scenarios (:func:`two_stage`) and report.

    Returns
    -------
    Result ("prosumer_stochastic") with tables ``kpis`` (one row:
    :func:`~gridmarkets.models.stochastic.value_kpis`), ``scenarios`` (per scenario:
    probability, cost of the stochastic (rp), wait-and-see (ws) and expected-value (eev)
    solutions), ``day_ahead`` (home, period, the stochastic and the expected-value
    day-ahead import and export, kW), ``grid`` (:func:`results`'s grid table of every
    scenario of the stochastic solution, with a scenario column and the deviations),
    and ``out_of_sample`` when held-out scenarios are given.
    """
    homes = as_mapping(prosumers)
    build_options.setdefault("periods", scenarios.periods())
    problem = two_stage(homes, prices, imbalance, **build_options)
    solved = solve_two_stage(
        problem,
        scenarios,
        risk,
        out_of_sample=out_of_sample,
        client=client,
        solve_options=solve_options,
    )
    tables = stochastic_tables(solved)
    keys = {"prosumer": list(homes)}
    tables["day_ahead"] = day_ahead_table(solved.first_stage, keys, build_options["periods"])
    tables["grid"] = _scenario_grid_tables(solved, scenarios)
    return Result("prosumer_stochastic", tables, dict(solved.kpis), solved.solution)


def day_ahead_table(first_stage: pd.DataFrame, keys: Mapping[str, list], periods: int):
    """The first stage of :func:`add_day_ahead` meters as a table: the ``keys`` columns
    (e.g. prosumer), period, and per solution (rp, eev) the import and export (kW).
    ``first_stage`` rows run over the keys, then import and export, then periods."""
    names = [*keys, "side", "period"]
    levels = [*keys.values(), ["import_kw", "export_kw"], range(periods)]
    table = first_stage.set_index(pd.MultiIndex.from_product(levels, names=names))
    table = table.unstack("side")
    table.columns = [f"{solution}_{side}" for solution, side in table.columns]
    return table.reset_index()


def imbalance_values(imbalance: ImbalanceSpec, periods: int, dt: float) -> tuple:
    """The imbalance prices as arrays (currency/MWh), one value per period."""
    return (
        assets.profile_values(imbalance.up_per_mwh, periods, dt, "scenarios.imbalance_up"),
        assets.profile_values(imbalance.down_per_mwh, periods, dt, "scenarios.imbalance_down"),
    )


def _scenario_grid_tables(solved: TwoStageSolution, scenarios: Scenarios) -> pd.DataFrame:
    frames = []
    for s in scenarios.names():
        block = solved.model.scenario[s]
        grid = _grid_table(block, solved.solution)
        if "marginal_price" in grid:  # the extensive form's dual carries p_s
            grid["marginal_price"] /= float(scenarios.probability[s])
        short = [_value(b.p_short_kw[t]) for b in block.home.values() for t in block.PERIODS]
        surplus = [_value(b.p_surplus_kw[t]) for b in block.home.values() for t in block.PERIODS]
        frames.append(grid.assign(short_kw=short, surplus_kw=surplus).assign(scenario=s))
    table = pd.concat(frames, ignore_index=True)
    return table[["scenario", *table.columns[:-1]]]
