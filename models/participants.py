"""Market participants with time and curvature: one vocabulary for the LEM and P2P.

Every participant kind is a typed spec and one function that adds it to the Pyomo block
it is handed, for the market's periods and period length, and returns two handles::

    p_net_kw, welfare = add_participant(block, spec, periods, period_hours)

``p_net_kw`` is a Pyomo Expression indexed by period: the participant's net injection
into its bus in kW (the feeder's convention, as :mod:`gridmarkets.models.assets`:
selling, generation and discharge positive; buying, load and charging negative).
``welfare`` is a scalar Pyomo Expression in currency over the horizon: the
participant's utility minus its cost, before any payment. A market adds each
participant's ``p_net_kw`` to its balances and ``welfare`` to its objective; the prices
stay the balances' duals, so at those prices each participant's schedule maximises its
``welfare + sum_t price[t] p_net_kw[t] dt / 1000`` (its profit) on its own.

Kinds (``kind`` is the discriminator in case files, :data:`Participant`):

* :class:`CurveBid` (``curve``): a cost ``a p^2 + b p`` (sell) or a utility
  ``b p - a p^2`` (buy) per period, currency/MWh x kW, on ``p_min_kw <= p <= p_max_kw``;
  a minimum above zero is a must-run output or consumption.
* :class:`StorageBid` (``storage``): a battery of :class:`~gridmarkets.models.assets.
  BatterySpec` (capacity, charge and discharge power, efficiencies, SoC window, initial
  and final SoC) whose ``degradation_cost_per_mwh`` is its cycling cost; built with
  :func:`~gridmarkets.models.assets.add_battery`. Its charging/discharging binary is off
  by default (``relaxed=True``) so that the market stays continuous.
* :class:`FlexibleLoad` (``flexible_load``): between ``energy_min_kwh`` and
  ``energy_kwh`` (its energy budget) over the periods ``start <= t < end``, at most
  ``p_max_kw`` in each, with a utility of ``utility_per_mwh`` per MWh consumed.
* :class:`DeviceBid` (``device``): a prosumer's own devices
  (:class:`~gridmarkets.models.prosumer.ProsumerSpec`: load, PV, battery, EV,
  appliances, heat pump) built with the EMS's ``add_<device>`` blocks, so the market
  schedules the devices themselves; its welfare is minus the devices' costs (the
  inflexible load is served whatever the price), its net injection within the home's
  connection limits. Whatever the market accepts, the home can deliver.

Units: power kW, energy kWh, prices and utilities currency/MWh, ``a`` currency/MWh per
kW; a period lasts ``period_hours`` hours, so ``x_per_mwh * p_kw * dt / 1000`` is
currency. Inter-temporal kinds need consecutive integer periods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from gridmarkets.errors import InputError
from gridmarkets.models import assets
from gridmarkets.models.assets import BatterySpec
from gridmarkets.models.prosumer import ProsumerSpec
from gridmarkets.specs.base import Spec

PerPeriod = float | list[float]


class _Bidder(Spec):
    """What every participant states: its name and (on a feeder) its bus."""

    participant: str = Field(description="the participant's id, unique in the market")
    bus: int | str | None = Field(None, description="feeder bus (pandapower index)")


class CurveBid(_Bidder):
    """A quadratic cost (sell) or utility (buy) per period; each number may be one value
    for every period or a list of one value per period."""

    kind: Literal["curve"] = "curve"
    side: Literal["buy", "sell"]
    a: NonNegativeFloat | list[NonNegativeFloat] = Field(
        description="curvature, currency/MWh per kW (>= 0: convex cost, concave utility)"
    )
    b: PerPeriod = Field(description="marginal cost or utility at p = 0, currency/MWh")
    p_min_kw: NonNegativeFloat | list[NonNegativeFloat] = Field(
        0.0, description="least output or consumption (above 0: must run)"
    )
    p_max_kw: NonNegativeFloat | list[NonNegativeFloat] = Field(
        description="most output or consumption"
    )


class StorageBid(_Bidder, BatterySpec):
    """A battery offered to the market (see :class:`~gridmarkets.models.assets.
    BatterySpec`); ``degradation_cost_per_mwh`` is the cycling cost per MWh of
    throughput. Without its binary (``relaxed``, the default) it may charge and
    discharge at once, which pays only at a negative price (it burns energy in its
    losses); its schedule is then the best response of that same model."""

    kind: Literal["storage"] = "storage"
    relaxed: bool = Field(
        True,
        description="no binary against charging and discharging at once (a continuous "
        "market); False adds it (the market becomes a MILP)",
    )


class FlexibleLoad(_Bidder):
    """A load that needs an amount of energy over a window of periods."""

    kind: Literal["flexible_load"] = "flexible_load"
    energy_kwh: PositiveFloat = Field(description="energy budget: most energy over the window")
    energy_min_kwh: NonNegativeFloat | None = Field(
        None, description="least energy over the window (default: the budget, met exactly)"
    )
    start: NonNegativeInt = Field(0, description="first period of the window")
    end: NonNegativeInt | None = Field(
        None, description="period the window ends before (exclusive; default: the horizon's end)"
    )
    p_max_kw: PositiveFloat = Field(description="most power in any period")
    utility_per_mwh: PerPeriod = Field(
        0.0, description="value of energy consumed, currency/MWh (one, or one per period)"
    )

    @model_validator(mode="after")
    def _window(self) -> FlexibleLoad:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end: {self.end} is not after start {self.start}")
        if self.energy_min_kwh is not None and self.energy_min_kwh > self.energy_kwh:
            raise ValueError(
                f"energy_min_kwh: {self.energy_min_kwh} is above energy_kwh {self.energy_kwh}"
            )
        return self

    @property
    def energy_least_kwh(self) -> float:
        return self.energy_kwh if self.energy_min_kwh is None else self.energy_min_kwh


class DeviceBid(_Bidder):
    """A prosumer's devices, scheduled by the market (``home.bus`` is ignored: ``bus``)."""

    kind: Literal["device"] = "device"
    home: ProsumerSpec


Participant = Annotated[
    CurveBid | StorageBid | FlexibleLoad | DeviceBid, Field(discriminator="kind")
]
INTER_TEMPORAL = (StorageBid, FlexibleLoad, DeviceBid)


def add_participant(
    block: pyo.Block, spec: Participant, periods: Sequence[int], period_hours: float
) -> tuple[pyo.Expression, pyo.Expression]:
    """Add one participant to ``block``; return (``p_net_kw`` per period, ``welfare``)."""
    adders = {
        CurveBid: add_curve,
        StorageBid: add_storage,
        FlexibleLoad: add_flexible_load,
        DeviceBid: add_device_bid,
    }
    periods = list(periods)
    if isinstance(spec, INTER_TEMPORAL):
        _check_consecutive(spec, periods)
    (add,) = [add for kind, add in adders.items() if isinstance(spec, kind)]
    return add(block, spec, periods, period_hours)


def add_curve(block: pyo.Block, spec: CurveBid, periods: Sequence[int], period_hours: float):
    """A quadratic curve: ``p_min[t] <= p[t] <= p_max[t]``; welfare ``sum_t (b p - a p^2)
    dt/1000`` (buy) or ``- sum_t (a p^2 + b p) dt/1000`` (sell)."""
    values = {
        name: per_period(getattr(spec, name), periods, f"{spec.participant}.{name}")
        for name in ("a", "b", "p_min_kw", "p_max_kw")
    }
    low, high = values["p_min_kw"], values["p_max_kw"]
    if (high < low).any():
        t = periods[int(np.argmax(high < low))]
        raise InputError(f"{spec.participant}.p_max_kw: below p_min_kw in period {t}")
    bounds = dict(zip(periods, zip(low.tolist(), high.tolist(), strict=True), strict=True))
    block.p_kw = pyo.Var(
        periods,
        bounds=lambda b, t: bounds[t],
        doc="output (sell) or consumption (buy): p_min[t] <= p[t] <= p_max[t]  (kW)",
    )
    sign = 1.0 if spec.side == "sell" else -1.0
    block.p_net_kw = pyo.Expression(
        periods, rule=lambda b, t: sign * b.p_kw[t], doc="p_net[t] = +p[t] sell, -p[t] buy  (kW)"
    )
    block.welfare = pyo.Expression(
        expr=curve_welfare(
            spec.side, values["a"], values["b"], list(block.p_kw.values()), period_hours
        ),
        doc="sum_t (b p - a p^2) dt/1000 (buy) or -sum_t (a p^2 + b p) dt/1000 (sell)  (currency)",
    )
    return block.p_net_kw, block.welfare


def curve_welfare(side, a, b, p_kw: list, period_hours: float):
    """Utility (buy) or minus cost (sell) of curves ``a p^2 + b p`` over their periods
    (currency): ``s b p dt/1000 - a p^2 dt/1000`` with s = +1 buy, -1 sell. ``side``
    one value or one per term; ``a``, ``b`` arrays of one value per term."""
    per_kw = period_hours / 1000.0
    sign = np.where(np.asarray(side) == "buy", 1.0, -1.0) * np.ones(len(p_kw))
    linear = (sign * np.asarray(b, dtype=float) * per_kw).tolist()
    quadratic = (-np.asarray(a, dtype=float) * per_kw).tolist()
    return pyo.quicksum(
        c1 * p + c2 * p**2 for c1, c2, p in zip(linear, quadratic, p_kw, strict=True)
    )


def add_storage(block: pyo.Block, spec: StorageBid, periods: Sequence[int], period_hours: float):
    """A battery (:func:`~gridmarkets.models.assets.add_battery`); welfare minus its
    cycling cost."""
    battery = BatterySpec(**spec.model_dump(include=set(BatterySpec.model_fields)))
    assets.check_battery(battery, len(periods), period_hours, spec.participant)
    assets.add_battery(block, battery, periods, period_hours)
    block.welfare = pyo.Expression(
        expr=-block.cost, doc="-cycling_cost sum_t (p_charge + p_discharge)[t] dt/1000  (currency)"
    )
    return block.p_net_kw, block.welfare


def add_flexible_load(
    block: pyo.Block, spec: FlexibleLoad, periods: Sequence[int], period_hours: float
):
    """``0 <= p[t] <= p_max`` in the window (0 outside), ``energy_min <= sum_t p[t] dt <=
    energy_kwh``; welfare ``sum_t utility[t] p[t] dt/1000``."""
    end = periods[-1] + 1 if spec.end is None else spec.end
    if spec.start < periods[0] or end > periods[-1] + 1:
        raise InputError(
            f"{spec.participant}: window [{spec.start}, {end}) is outside the market's "
            f"periods {periods[0]}..{periods[-1]}"
        )
    most_kwh = spec.p_max_kw * (end - spec.start) * period_hours
    if spec.energy_least_kwh > most_kwh + 1e-9:
        raise InputError(
            f"{spec.participant}.energy_kwh: {spec.energy_least_kwh:g} kWh cannot be consumed "
            f"at {spec.p_max_kw:g} kW in {end - spec.start} period(s) of {period_hours:g} h"
        )
    utility = per_period(spec.utility_per_mwh, periods, f"{spec.participant}.utility_per_mwh")
    window = [t for t in periods if spec.start <= t < end]
    block.WINDOW = pyo.Set(initialize=window, doc="periods the load may consume in")
    block.p_kw = pyo.Var(
        periods,
        bounds=lambda b, t: (0.0, spec.p_max_kw if t in window else 0.0),
        doc="consumption: 0 <= p[t] <= p_max in the window, 0 outside  (kW)",
    )
    energy = period_hours * pyo.quicksum(block.p_kw[t] for t in window)
    block.energy_budget = pyo.Constraint(
        expr=energy <= spec.energy_kwh, doc="sum_{t in window} p[t] dt <= energy_kwh  (kWh)"
    )
    block.energy_minimum = pyo.Constraint(
        expr=energy >= spec.energy_least_kwh,
        doc="sum_{t in window} p[t] dt >= energy_min_kwh  (kWh)",
    )
    block.p_net_kw = pyo.Expression(periods, rule=lambda b, t: -b.p_kw[t], doc="p_net = -p  (kW)")
    value = dict(zip(periods, (utility * period_hours / 1000.0).tolist(), strict=True))
    block.welfare = pyo.Expression(
        expr=pyo.quicksum(value[t] * block.p_kw[t] for t in window),
        doc="sum_t utility[t] p[t] dt / 1000  (currency)",
    )
    return block.p_net_kw, block.welfare


def add_device_bid(block: pyo.Block, spec: DeviceBid, periods: Sequence[int], period_hours: float):
    """The home's devices with the EMS's blocks; net injection within its connection
    limits, welfare minus the devices' costs."""
    from gridmarkets.models.prosumer import DEVICES, check_home

    home = spec.home
    try:
        check_home(home, len(periods), spec.participant, period_hours)
    except ValueError as error:
        raise InputError(str(error)) from error
    net = []
    block.load = pyo.Block(doc="inflexible load")
    net.append(assets.add_load(block.load, home.load_kw, periods, period_hours))
    for name, add in DEVICES.items():
        device = getattr(home, name)
        if device is not None:
            block.add_component(name, pyo.Block(doc=name))
            net.append(add(getattr(block, name), device, periods, period_hours))
    block.APPLIANCES = pyo.Set(initialize=list(home.appliances), doc="shiftable appliances")
    block.appliance = pyo.Block(block.APPLIANCES, doc="one shiftable appliance")
    for name, appliance in home.appliances.items():
        net.append(assets.add_appliance(block.appliance[name], appliance, periods, period_hours))
    block.p_net_kw = pyo.Expression(
        periods,
        rule=lambda b, t: sum(p[t] for p in net),
        doc="p_net[t] = sum_devices p_net[t]  (kW)",
    )
    _add_connection_limits(block, home, periods)
    devices = block.component_data_objects(pyo.Block, descend_into=True)
    costs = [device.cost for device in devices if device.component("cost") is not None]
    block.welfare = pyo.Expression(expr=-pyo.quicksum(costs), doc="-sum_devices cost  (currency)")
    return block.p_net_kw, block.welfare


def _add_connection_limits(block: pyo.Block, home: ProsumerSpec, periods: Sequence[int]) -> None:
    if home.export_limit_kw is not None:
        block.export_limit = pyo.Constraint(
            periods,
            rule=lambda b, t: b.p_net_kw[t] <= home.export_limit_kw,
            doc="p_net[t] <= export_limit  (kW)",
        )
    if home.import_limit_kw is not None:
        block.import_limit = pyo.Constraint(
            periods,
            rule=lambda b, t: -b.p_net_kw[t] <= home.import_limit_kw,
            doc="-p_net[t] <= import_limit  (kW)",
        )


def per_period(value: PerPeriod, periods: Sequence[int], path: str) -> np.ndarray:
    """One float per period from a number or a list of one per period."""
    values = np.asarray(value, dtype=float)
    if values.ndim == 0:
        return np.full(len(periods), float(values))
    if len(values) != len(periods):
        raise InputError(f"{path}: {len(values)} values for {len(periods)} periods")
    return values


def _check_consecutive(spec: Participant, periods: list[int]) -> None:
    if periods != list(range(periods[0], periods[0] + len(periods))):
        raise InputError(
            f"{spec.participant}: a {spec.kind} participant needs consecutive periods; the "
            f"market's are {periods[:5]}..."
        )


# --- in a market ------------------------------------------------------------------------


def prepare_participants(items: Sequence | None, what: str = "participants") -> list:
    """Participants as typed specs (dicts are validated by ``kind``); errors name the
    entry and field (``participants[2].energy_kwh: ...``), names must be unique."""
    adapter = TypeAdapter(Participant)
    specs = []
    for k, item in enumerate(items or []):
        try:
            specs.append(item if isinstance(item, _Bidder) else adapter.validate_python(item))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise InputError(f"{what}[{k}].{field}: {first['msg']}") from error
    names = [spec.participant for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"{what}: participant {repeated[0]!r} appears more than once")
    return specs


def add_participants(m: pyo.Block, specs: Sequence, periods: Sequence[int], period_hours: float):
    """Every participant on its own block ``m.participant[name]``, its net injection as
    ``m.participant_kw[name, t]`` (a variable, so a market's balances read it as one
    term); returns the sum of their welfare (currency)."""
    by_name = {spec.participant: spec for spec in specs}
    m.PARTICIPANTS = pyo.Set(initialize=list(by_name), doc="participants with their own model")
    m.participant = pyo.Block(m.PARTICIPANTS, doc="one participant's own variables")
    m.participant_kw = pyo.Var(
        m.PARTICIPANTS, periods, doc="net injection of participant n in period t  (kW)"
    )
    net, welfare = {}, []
    for name, spec in by_name.items():
        net[name], own = add_participant(m.participant[name], spec, periods, period_hours)
        welfare.append(own)
    m.participant_injection = pyo.Constraint(
        m.PARTICIPANTS,
        periods,
        rule=lambda m, n, t: m.participant_kw[n, t] == net[n][t],
        doc="p[n, t] = p_net[n, t] of participant n's own model  (kW)",
    )
    return pyo.quicksum(welfare)


def curvatures(specs: Sequence) -> np.ndarray:
    """The ``a`` of every quadratic participant's periods (currency/MWh per kW)."""
    values = [np.atleast_1d(np.asarray(s.a, dtype=float)) for s in specs if isinstance(s, CurveBid)]
    return np.concatenate(values) if values else np.zeros(0)


def schedule_table(m: pyo.Block, specs: Sequence) -> pd.DataFrame:
    """Per participant and period: kind, bus, net injection (kW) and, for a storage or a
    device bid's battery, the state of charge at the period's end (kWh)."""
    periods = sorted({t for _, t in m.participant_kw})
    rows = []
    for spec in specs:
        block = m.participant[spec.participant]
        battery = block if isinstance(spec, StorageBid) else block.component("battery")
        for t in periods:
            soc = pyo.value(battery.soc_kwh[t]) if battery is not None else np.nan
            p = pyo.value(m.participant_kw[spec.participant, t])
            rows.append((spec.participant, spec.kind, spec.bus, t, p, soc))
    columns = ["participant", "kind", "bus", "period", "p_net_kw", "soc_kwh"]
    return pd.DataFrame(rows, columns=columns)


def profit(welfare: float, p_net_kw: np.ndarray, price_per_mwh: np.ndarray, hours: float):
    """Welfare plus what the market pays for the net injection (currency)."""
    return welfare + float(np.dot(price_per_mwh, p_net_kw)) * hours / 1000.0


def best_response(
    spec: Participant,
    price_per_mwh: Sequence[float],
    periods: Sequence[int],
    period_hours: float,
    solve_options: dict | None = None,
) -> tuple[float, np.ndarray]:
    """The participant alone as a price-taker: its largest profit at these prices
    (one per period, currency/MWh) and the net injection that earns it (kW)."""
    from gridmarkets.solvers import scale_objective_by, solve

    model = pyo.ConcreteModel(name=f"best response of {spec.participant}")
    model.own = pyo.Block()
    p_net, welfare = add_participant(model.own, spec, periods, period_hours)
    prices = dict(zip(periods, np.asarray(price_per_mwh, dtype=float).tolist(), strict=True))
    revenue = pyo.quicksum(prices[t] * p_net[t] for t in periods) * period_hours / 1000.0
    model.profit = pyo.Objective(
        expr=welfare + revenue,
        sense=pyo.maximize,
        doc="welfare + sum_t price[t] p_net[t] dt / 1000  (currency)",
    )
    scale_objective_by(model, objective_scale(curvatures([spec]), period_hours))
    solution = solve(model, **(solve_options or {}))
    return solution.objective, np.array([pyo.value(p_net[t]) for t in periods])


def objective_scale(a: np.ndarray, period_hours: float) -> float:
    """What the solver multiplies a welfare in currency by (see
    :func:`~gridmarkets.solvers.scale_objective_by`): per MWh (1000 / dt), and more if
    need be so that the smallest curvature 2 a is at least 1."""
    curvature = 2.0 * np.asarray(a, dtype=float)
    smallest = curvature[curvature > 0].min(initial=1.0)
    return 1000.0 / period_hours * max(1.0, 1.0 / smallest)


def value_without_trading(
    spec: Participant, periods: Sequence[int], period_hours: float
) -> float | None:
    """The participant's largest welfare with a net injection of 0 in every period
    (currency), None when it cannot do without the market (a load to serve, an energy
    to consume, a state of charge to reach)."""
    from gridmarkets.errors import InfeasibleError
    from gridmarkets.solvers import scale_objective_by, solve

    model = pyo.ConcreteModel(name=f"{spec.participant} without trading")
    model.own = pyo.Block()
    p_net, welfare = add_participant(model.own, spec, periods, period_hours)
    model.no_trade = pyo.Constraint(
        periods, rule=lambda _, t: p_net[t] == 0, doc="p_net[t] = 0  (kW)"
    )
    model.welfare = pyo.Objective(expr=welfare, sense=pyo.maximize, doc="welfare  (currency)")
    scale_objective_by(model, objective_scale(curvatures([spec]), period_hours))
    try:
        return solve(model).objective
    except InfeasibleError:
        return None
