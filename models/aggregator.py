"""The aggregator's two-level problem: incentives above, the prosumers' own EMS below.

An aggregator holds a commitment — a reference exchange schedule of its portfolio at
its connection, active (kW) and reactive (kvar) per period, positive into the grid,
e.g. from a wholesale bid or a flexibility contract. It cannot switch its prosumers'
devices; it offers an *incentive* ``pi[g]`` (currency/MWh) per tariff group ``g``
(each period its own group by default; or e.g. peak, shoulder, off-peak) paid on every
home's net injection above its baseline — its own schedule without incentives — and
each home then schedules its battery, EV, heat pump and PV curtailment to minimise its
own cost at the offered incentive (the prosumer EMS, devices in continuous form).

Reactive power: a home's load draws ``q_load = tan(acos(pf)) load`` at a fixed power
factor; a PV inverter rated ``S`` kVA may inject or draw ``q`` within ``p_pv^2 + q^2 <=
S^2`` (the inscribed 12-gon through (S, 0) and (0, +-S)). Reactive power costs a home
nothing, so its inverter's ``q`` is any value the home is indifferent about — the
optimistic bilevel convention lets the aggregator pick it, and the portfolio's ``Q[t]``
is a result of the homes' PV output and ratings.

Upper level (the aggregator, minimising, currency)::

    sum_h income[h]                                       incentives paid
  + c_dev * sum_t (dev_up + dev_down)[t] dt/1000          active deviation
  + c_dev_q * sum_t (dev_q_up + dev_q_down)[t] dt/1000    reactive deviation
  + w_fair * (max_h gain[h] - min_h gain[h])               spread of the prosumers' gains
  s.t. sum_h p_net[h,t] - commitment_p[t] = dev_up[t] - dev_down[t]
       sum_h q_net[h,t] - commitment_q[t] = dev_q_up[t] - dev_q_down[t]
       the feeder's limits on P and Q (LinDistFlow by default, when a network is given)
       pi_min <= pi[g] <= pi_max, or pi[g] from a menu of levels (binaries)

with ``pi[t] = pi[g(t)]``, ``income[h] = sum_t pi[t] (p_net[h,t] - baseline[h,t])
dt/1000`` and ``gain[h] = standalone[h] - cost[h] + income[h]``. A home can always keep
its baseline (no income, no change of cost), so every gain is >= 0, and the bilevel cost
is never below the full-control cost with the same deviation.

Lower level (each home ``h``): ``min cost_h(y) - income[h]`` over its devices — the
prosumer model's ``add_home`` plus its inverter's capability. :func:`gridmarkets.solvers
.kkt.reformulate` replaces each home's problem by its KKT conditions; ``income[h]``
(leader price x follower quantity) and ``cost[h]`` are linear through the follower's
strong duality (:func:`gridmarkets.solvers.kkt.bilinear_cost`); the multipliers' big-Ms
are derived from each home's tariff, incentive range and devices
(:func:`multiplier_bounds`), and :func:`solve_bilevel` starts HiGHS from the homes' best
responses to a searched incentive (:func:`search_incentive`, :func:`set_start`). :func:`results`
re-solves every home at the incentives found (:func:`gridmarkets.solvers.kkt.verify`)
and reports the gaps.

``control="full"`` is the single-level comparison: the aggregator schedules the devices
itself and reimburses each home's extra cost over its stand-alone schedule, so its
cost is ``sum_h (cost[h] - standalone[h]) + deviation penalty``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import Field, PositiveFloat, model_validator
from pyomo.common.collections import ComponentMap
from pyomo.contrib.fbbt.fbbt import compute_bounds_on_expr

from gridmarkets.errors import InputError, NoSolutionError
from gridmarkets.models import assets, prosumer
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.results import Result
from gridmarkets.solvers import Solution, compile_model, kkt, record_build_time, solve
from gridmarkets.solvers.highs import solve_compiled
from gridmarkets.solvers.kkt import DualBound
from gridmarkets.specs.base import Spec

if TYPE_CHECKING:
    from gridmarkets.networks import Feeder, NetworkFormulation

Control = Literal["incentive", "full"]


def check_range_or_levels(spec: Spec, low: str, high: str) -> None:
    """A leader's choice is a range (``low`` <= ``high``) or a non-empty menu ``levels``;
    raise ValueError naming the field otherwise."""
    levels = spec.levels
    if levels is None and getattr(spec, low) > getattr(spec, high):
        raise ValueError(f"{low}: {getattr(spec, low)} is above {high}")
    if levels is not None and not levels:
        raise ValueError("levels: give at least one level")


class IncentiveSpec(Spec):
    """The incentive the aggregator may offer, currency/MWh of net injection."""

    min_per_mwh: float = Field(0.0, description="lowest incentive (continuous form)")
    max_per_mwh: float = Field(100.0, description="highest incentive (continuous form)")
    levels: list[float] | None = Field(
        None, description="a menu of incentive levels; one is chosen per group (binaries)"
    )
    groups: list[str] | None = Field(
        None,
        description="tariff group of each period (e.g. off-peak, peak): one incentive per "
        "group instead of one per period",
    )

    @model_validator(mode="after")
    def _order(self) -> IncentiveSpec:
        check_range_or_levels(self, "min_per_mwh", "max_per_mwh")
        return self


class ReactiveSpec(Spec):
    """A home's reactive power: its load's at a fixed power factor, its PV inverter's free."""

    load_power_factor: float = Field(
        1.0, gt=0.0, le=1.0, description="lagging power factor of the inflexible load"
    )
    inverter_kva: PositiveFloat | None = Field(
        None,
        description="apparent-power rating of the PV inverter (kVA); its reactive power is "
        "chosen within p^2 + q^2 <= S^2; at least the PV's largest available power",
    )


class HomeSpec(ProsumerSpec):
    """A home of the aggregator's portfolio: a prosumer with its reactive capability."""

    reactive: ReactiveSpec = Field(default_factory=ReactiveSpec)


# normals of the capability polygon's sides on p >= 0: the 12-gon with vertices every 30 deg
CAPABILITY_ANGLES_DEG = (-75.0, -45.0, -15.0, 15.0, 45.0, 75.0)


# --- build ------------------------------------------------------------------------------


def build(
    prosumers: Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec,
    commitment_kw: assets.Profile,
    *,
    commitment_kvar: assets.Profile | None = None,
    periods: int = 24,
    period_hours: float = 1.0,
    control: Control = "incentive",
    incentive: IncentiveSpec | None = None,
    deviation_penalty_per_mwh: float = 500.0,
    reactive_penalty_per_mvarh: float | None = None,
    fairness_weight: float = 0.0,
    network: Feeder | None = None,
    formulation: NetworkFormulation | None = None,
    method: kkt.Method = "bigm",
    big_m: float = 10.0,
    extra: Callable[[pyo.ConcreteModel], None] | None = None,
    derive_big_m: bool = True,
) -> pyo.ConcreteModel:
    """Build the aggregator's problem as one Pyomo model (a MILP when bilevel).

    Parameters
    ----------
    prosumers : the homes (mapping id -> spec, or a list); every home needs
        ``import_limit_kw`` and ``export_limit_kw`` (they bound the big-Ms), no shiftable
        appliances and no EV minimum charging power (the followers are LPs); batteries
        are used in their relaxed, continuous form. A :class:`HomeSpec` adds the home's
        reactive capability (default: unity power factor, no inverter reactive power).
    prices : the homes' grid tariff (currency/MWh).
    commitment_kw : the portfolio's committed net injection per period (kW); NaN where
        the commitment does not cover the period.
    commitment_kvar : the committed reactive injection per period (kvar); None or NaN
        where there is none.
    periods, period_hours : the horizon.
    control : "incentive" (bilevel) or "full" (the aggregator schedules the devices).
    incentive : the incentive's range or menu of levels, per period or per tariff group
        (default 0..100 currency/MWh per period).
    deviation_penalty_per_mwh : cost of each MWh off the active commitment, either way.
    reactive_penalty_per_mvarh : cost of each Mvarh off the reactive commitment (default:
        the active one).
    fairness_weight : weight of the spread between the best- and worst-off home's gain.
    network : a :class:`~gridmarkets.networks.Feeder`: the leader's grid limits on the
        homes' P and Q; homes need a bus.
    formulation : a :class:`~gridmarkets.networks.NetworkFormulation` for ``network``
        (default LinDistFlow; ``CopperPlate()``: no grid limits).
    method : "bigm", or "strong_duality" (incentive levels only: exact with binaries).
    big_m : bound on the followers' multipliers (currency per kW and period) where none
        is derived; :func:`results` reports any multiplier at it.
    extra : called with the model at the end, to add user constraints.
    derive_big_m : bound each home's multipliers by :func:`multiplier_bounds` (derived
        from its tariff, incentive range and devices) where its conditions hold; False:
        ``big_m`` for every multiplier.

    Returns
    -------
    The model: ``model.home[h]`` (each follower), ``model.incentive_per_mwh[t]``,
    ``model.leader_cost``, ``model.followers`` (the KKT handles when bilevel) and, on a
    network, ``model.network`` and ``model.handles``.
    """
    started = time.perf_counter()
    homes = _followers_specs(prosumers, periods, period_hours)
    incentive = incentive or IncentiveSpec()
    if method == "strong_duality" and incentive.levels is None:
        raise InputError(
            "method: strong_duality needs incentive.levels (a continuous incentive times "
            "a home's power is not linear); use bigm"
        )
    m = pyo.ConcreteModel(name="aggregator")
    m.PERIODS = pyo.RangeSet(0, periods - 1, doc="periods")
    m.PROSUMERS = pyo.Set(initialize=list(homes), doc="homes")
    m.specs, m.mode, m.period_hours, m.control = homes, "grid", period_hours, control
    m.prices_spec, m.incentive_spec, m.fairness_weight = prices, incentive, fairness_weight
    m.handles = None  # the network's handles, set by attach_grid on a network
    m.standalone_cost, baseline = _standalone(homes, prices, periods, period_hours)
    m.baseline_kw = pyo.Param(
        m.PROSUMERS, m.PERIODS, initialize=baseline, doc="stand-alone net injection (kW)"
    )
    prosumer.add_prices(m, prices, "grid")
    _add_commitment(m, commitment_kw, commitment_kvar)
    if control == "incentive":
        _add_incentive(m, incentive)
    m.home = pyo.Block(m.PROSUMERS, doc="one home: devices, connection, balance, cost")
    for h, spec in homes.items():
        _add_follower(m, m.home[h], spec)
    reactive_penalty = (
        deviation_penalty_per_mwh
        if reactive_penalty_per_mvarh is None
        else reactive_penalty_per_mvarh
    )
    _add_portfolio(m, deviation_penalty_per_mwh, reactive_penalty)
    if network is not None:
        _add_network(m, network, formulation)
    if control == "incentive":
        bounds = ComponentMap()
        for h, spec in homes.items() if derive_big_m else ():
            bounds.update(multiplier_bounds(m, m.home[h], spec, incentive_range(incentive)))
        m.followers = kkt.reformulate(
            m, [m.home[h] for h in homes], method=method, big_m=big_m, dual_bounds=bounds
        )
        _add_bilevel_cost(m, fairness_weight)
    else:
        m.followers = []
        _add_full_control_cost(m)
    if extra is not None:
        extra(m)
    record_build_time(m, time.perf_counter() - started)
    return m


def _followers_specs(prosumers, periods: int, period_hours: float) -> dict[str, HomeSpec]:
    homes = {
        h: spec if isinstance(spec, HomeSpec) else HomeSpec(**dict(spec))
        for h, spec in prosumer.as_mapping(prosumers).items()
    }
    for h, spec in homes.items():
        for name in ("import_limit_kw", "export_limit_kw"):
            if getattr(spec, name) is None:
                raise InputError(f"prosumers.{h}.{name}: required by the aggregator")
        if spec.appliances:
            raise InputError(
                f"prosumers.{h}.appliances: shiftable appliances are integer; an aggregator's "
                "follower must be an LP"
            )
        if spec.ev is not None and spec.ev.p_charge_min_kw > 0:
            raise InputError(f"prosumers.{h}.ev.p_charge_min_kw: must be 0 for a follower")
        _check_inverter(spec, periods, period_hours, f"prosumers.{h}.reactive.inverter_kva")
        if spec.battery is not None and not spec.battery.relaxed:
            battery = spec.battery.model_copy(update={"relaxed": True})
            homes[h] = spec.model_copy(update={"battery": battery})
    return homes


def _check_inverter(spec: HomeSpec, periods: int, period_hours: float, path: str) -> None:
    """The inverter must carry the PV's full power at unity power factor, so that the
    stand-alone schedule (which ignores the rating) stays feasible."""
    s = spec.reactive.inverter_kva
    if s is None:
        return
    if spec.pv is None:
        raise InputError(f"{path}: the home has no PV")
    peak = float(assets.profile_values(spec.pv.profile_kw, periods, period_hours).max())
    if peak > s + 1e-9:
        raise InputError(f"{path}: {s:g} kVA is below the PV's available {peak:g} kW")


def _standalone(homes, prices, periods: int, period_hours: float) -> tuple[dict, dict]:
    """Each home's cost and net injection on its own EMS schedule without incentives."""
    ems = prosumer.build(homes, prices, periods=periods, period_hours=period_hours)
    solve(ems)
    costs = {h: float(pyo.value(ems.home[h].cost)) for h in homes}
    net = {
        (h, t): float(pyo.value(ems.home[h].p_export_kw[t] - ems.home[h].p_import_kw[t]))
        for h in homes
        for t in range(periods)
    }
    return costs, net


def _add_commitment(m: pyo.ConcreteModel, commitment_kw, commitment_kvar) -> None:
    """The committed exchange at the connection, active and reactive; NaN: not covered."""
    n, dt = len(m.PERIODS), m.period_hours
    p = assets.profile_values(commitment_kw, n, dt, "commitment_kw")
    q = assets.profile_values(
        np.nan if commitment_kvar is None else commitment_kvar, n, dt, "commitment_kvar"
    )
    m.COMMITTED = pyo.Set(
        initialize=[t for t in range(n) if np.isfinite(p[t])],
        doc="periods the active commitment covers (NaN: none)",
    )
    m.commitment_kw = pyo.Param(
        m.COMMITTED, initialize={t: p[t] for t in m.COMMITTED}, doc="committed P (kW)"
    )
    m.COMMITTED_Q = pyo.Set(
        initialize=[t for t in range(n) if np.isfinite(q[t])],
        doc="periods the reactive commitment covers (NaN: none)",
    )
    m.commitment_kvar = pyo.Param(
        m.COMMITTED_Q, initialize={t: q[t] for t in m.COMMITTED_Q}, doc="committed Q (kvar)"
    )


def _add_incentive(m: pyo.ConcreteModel, incentive: IncentiveSpec) -> None:
    """One incentive per tariff group (per period when no groups are given)."""
    groups = list(m.PERIODS) if incentive.groups is None else incentive.groups
    if len(groups) != len(m.PERIODS):
        raise InputError(f"incentive.groups: {len(groups)} values for {len(m.PERIODS)} periods")
    m.GROUPS = pyo.Set(initialize=list(dict.fromkeys(groups)), doc="tariff groups")
    m.group_of = dict(zip(m.PERIODS, groups, strict=True))
    if incentive.levels is None:
        m.group_incentive_per_mwh = pyo.Var(
            m.GROUPS,
            bounds=(incentive.min_per_mwh, incentive.max_per_mwh),
            initialize=min(max(0.0, incentive.min_per_mwh), incentive.max_per_mwh),
            doc="incentive of a group: pi_min <= pi[g] <= pi_max  (currency/MWh)",
        )
    else:
        _add_levels(m, incentive.levels)
    m.incentive_per_mwh = pyo.Expression(
        m.PERIODS,
        rule=lambda m, t: m.group_incentive_per_mwh[m.group_of[t]],
        doc="pi[t] = pi[g(t)], the incentive of the period's group  (currency/MWh)",
    )


def _add_levels(m: pyo.ConcreteModel, levels: Sequence[float]) -> None:
    m.LEVELS = pyo.RangeSet(0, len(levels) - 1, doc="incentive levels")
    m.level_per_mwh = pyo.Param(
        m.LEVELS, initialize=dict(enumerate(levels)), doc="menu (currency/MWh)"
    )
    nearest = int(np.argmin(np.abs(np.asarray(levels, dtype=float))))
    m.level_chosen = pyo.Var(
        m.GROUPS,
        m.LEVELS,
        domain=pyo.Binary,
        initialize=lambda m, g, k: int(k == nearest),
        doc="z[g,k] = 1: level k",
    )
    m.one_level = pyo.Constraint(
        m.GROUPS,
        rule=lambda m, g: sum(m.level_chosen[g, k] for k in m.LEVELS) == 1,
        doc="sum_k z[g,k] = 1",
    )
    m.group_incentive_per_mwh = pyo.Expression(
        m.GROUPS,
        rule=lambda m, g: sum(m.level_per_mwh[k] * m.level_chosen[g, k] for k in m.LEVELS),
        doc="pi[g] = sum_k level[k] z[g,k]  (currency/MWh)",
    )


def _add_follower(m: pyo.ConcreteModel, b: pyo.Block, spec: HomeSpec) -> None:
    """One home's EMS as a follower block: the prosumer model's home plus the incentive."""
    prosumer.add_home(b, spec, m, 10_000.0)
    b.p_peak_import_kw.setub(spec.import_limit_kw)  # bounded for the big-Ms; never binding
    _add_reactive(m, b, spec.reactive)
    dt = m.period_hours
    b.p_net_kw = pyo.Expression(
        m.PERIODS,
        rule=lambda b, t: b.p_export_kw[t] - b.p_import_kw[t],
        doc="p_net[t] = p_export[t] - p_import[t]  (kW, into the grid)",
    )
    if m.control == "incentive":
        b.income = pyo.Expression(
            expr=sum(
                m.incentive_per_mwh[t] * (b.p_net_kw[t] - m.baseline_kw[b.index(), t])
                for t in m.PERIODS
            )
            * dt
            / 1000.0,
            doc="income = sum_t pi[t] (p_net[t] - baseline[t]) dt / 1000  (currency)",
        )
        b.objective = pyo.Objective(
            expr=b.cost - b.income, doc="min cost - income  (currency): the home's EMS"
        )


def _add_reactive(m: pyo.ConcreteModel, b: pyo.Block, spec: ReactiveSpec) -> None:
    """The home's reactive injection: its load's, drawn at a fixed power factor, plus its
    PV inverter's, free (no cost to the home) within the inverter's rating."""
    tan_phi = math.tan(math.acos(spec.load_power_factor))
    b.q_load_kvar = pyo.Expression(
        m.PERIODS,
        rule=lambda b, t: tan_phi * b.load.load_kw[t],
        doc="q_load[t] = tan(acos(pf)) load[t]  (kvar, drawn)",
    )
    s = spec.inverter_kva
    if s is None:
        b.q_net_kvar = pyo.Expression(
            m.PERIODS,
            rule=lambda b, t: -b.q_load_kvar[t],
            doc="q_net[t] = -q_load[t]  (kvar, into the grid; no inverter reactive power)",
        )
        return
    b.q_inverter_kvar = pyo.Var(
        m.PERIODS, bounds=(-s, s), doc="PV inverter's reactive injection: -S <= q[t] <= S (kvar)"
    )
    angles = np.deg2rad(CAPABILITY_ANGLES_DEG)
    b.CAPABILITY_SIDES = pyo.RangeSet(0, len(angles) - 1, doc="polygon sides")
    b.inverter_capability = pyo.Constraint(
        m.PERIODS,
        b.CAPABILITY_SIDES,
        rule=lambda b, t, k: (
            math.cos(angles[k]) * b.pv.p_net_kw[t] + math.sin(angles[k]) * b.q_inverter_kvar[t]
            <= s * math.cos(math.pi / 12)
        ),
        doc="cos(a_k) p_pv[t] + sin(a_k) q[t] <= S cos(15 deg), a_k = -75, -45, ..., 75 "
        "deg: the half 12-gon inside p^2 + q^2 <= S^2, vertices every 30 deg (kW, kvar)",
    )
    b.q_net_kvar = pyo.Expression(
        m.PERIODS,
        rule=lambda b, t: b.q_inverter_kvar[t] - b.q_load_kvar[t],
        doc="q_net[t] = q_inverter[t] - q_load[t]  (kvar, into the grid)",
    )


# --- multiplier bounds ------------------------------------------------------------------


def incentive_range(incentive: IncentiveSpec) -> tuple[float, float]:
    """(lowest, highest) incentive the leader may offer (currency/MWh)."""
    if incentive.levels is None:
        return incentive.min_per_mwh, incentive.max_per_mwh
    return min(incentive.levels), max(incentive.levels)


def multiplier_bounds(
    m: pyo.ConcreteModel, b: pyo.Block, spec: HomeSpec, incentive: tuple[float, float]
) -> ComponentMap:
    """Bounds on a home's KKT multipliers from its tariff, incentive range and devices.

    Every bound holds for *some* optimal dual of the home's LP at *every* incentive in
    ``incentive`` (currency/MWh), so used as ``M_dual`` it removes no response of the
    home; multipliers are in currency per unit of their row (kW, kWh) and period. Empty
    (``big_m`` applies) unless the home's conditions hold: ``c_imp[t] >= c_exp[t]``, the
    import limit covers the devices' largest draw and the export limit their largest
    injection in every period. The EV's and heat pump's own sides keep ``big_m``.

    Derivation, per constraint family (``dt`` hours, ``D`` the demand charge):

    1. Dropped sides (bound 0): the connection's upper limits, the peak's upper bound,
       the inverter's capability and reactive bounds. Without them the home's optimal
       cost is the same at every incentive: its ``q`` costs nothing (set it to 0,
       inside the polygon since S >= the PV's power), ``p_import - p_export`` is the
       devices' draw, within the limits, and cutting a simultaneous import and export
       by the same amount changes the cost by ``-(c_imp - c_exp) dt/1000 <= 0``. An
       optimal dual of that LP, extended by zeros, is optimal for the home's LP.
    2. Energy value ``nu[t]`` of the balance (currency per kW): stationarity of import
       and export gives ``nu = a[t] + mu_peak[t] - lam_imp = b[t] + lam_exp`` with
       ``a[t] = (c_imp[t] + pi) dt/1000``, ``b[t] = (c_exp[t] + pi) dt/1000``, and the
       peak's ``sum_t mu_peak[t] + lam_peak = D``: so ``b[t] <= nu[t] <= a[t] + D``,
       ``lam_imp, lam_exp <= (c_imp[t] - c_exp[t]) dt/1000 + D`` (the incentive
       cancels; closed form, reached when a home exports with D = 0),
       ``mu_peak[t], lam_peak <= D``.
    3. Curtailment: ``lam - mu = c_curt dt/1000 + nu[t]``, so ``lam <= c_curt dt/1000 +
       a[t] + D`` and ``mu <= max(0, -(c_curt dt/1000 + b[t]))``.
    4. Battery (relaxed): ``w[t]``, the value of a stored kWh, meets charge and
       discharge stationarity at thresholds ``(nu[t] + g)/(eta_c dt)`` and ``eta_d
       (nu[t] - g)/dt`` (``g`` the degradation cost per kW and period) as equalities or
       one-sided inequalities, the SoC window as orderings ``w[t] <= w[t+1]`` or ``>=``,
       and the final SoC as ``w[T] >= 0``. Projecting ``w`` onto ``J = [min(0,
       thresholds), max(0, thresholds)]`` keeps all of them (a projection is monotone),
       so ``w`` in ``J`` is optimal; then ``lam_soc, mu_soc, lam_final <= |J|`` and the
       power sides follow from stationarity with ``nu`` in its range.
    """
    dt = m.period_hours
    c_imp = np.array([pyo.value(m.import_price_per_mwh[t]) for t in m.PERIODS])
    c_exp = np.array([pyo.value(m.export_price_per_mwh[t]) for t in m.PERIODS])
    if (c_imp < c_exp).any() or not _connection_covers_devices(m, b, spec):
        return ComponentMap()
    demand = spec.demand_charge_per_kw
    nu_lo = (c_exp + incentive[0]) * dt / 1000.0
    nu_hi = (c_imp + incentive[1]) * dt / 1000.0 + demand
    spread = (c_imp - c_exp) * dt / 1000.0 + demand
    bounds = ComponentMap()
    for t in m.PERIODS:
        bounds[b.p_import_kw[t]] = DualBound(lower=spread[t], upper=0.0)
        bounds[b.p_export_kw[t]] = DualBound(lower=spread[t], upper=0.0)
        bounds[b.peak_import[t]] = DualBound(lower=demand, upper=demand)
    bounds[b.p_peak_import_kw] = DualBound(lower=demand, upper=0.0)
    if spec.pv is not None:
        curtail = spec.pv.curtailment_cost_per_mwh * dt / 1000.0
        for t in m.PERIODS:
            bounds[b.pv.p_curtail_kw[t]] = DualBound(
                lower=max(0.0, curtail + nu_hi[t]), upper=max(0.0, -(curtail + nu_lo[t]))
            )
    if spec.reactive.inverter_kva is not None:
        bounds[b.q_inverter_kvar] = DualBound(lower=0.0, upper=0.0)
        bounds[b.inverter_capability] = DualBound(lower=0.0, upper=0.0)
    if spec.battery is not None:
        bounds.update(_battery_bounds(b.battery, spec.battery, nu_lo, nu_hi, dt))
    return bounds


def _connection_covers_devices(m: pyo.ConcreteModel, b: pyo.Block, spec: HomeSpec) -> bool:
    """Whether the import (export) limit covers the devices' largest draw (injection)."""
    for t in m.PERIODS:
        low, high = compute_bounds_on_expr(sum(p[t] for p in b.devices.values()))
        if low is None or high is None:
            return False
        if -low > spec.import_limit_kw or high > spec.export_limit_kw:
            return False
    return True


def _battery_bounds(
    block: pyo.Block, spec: BatterySpec, nu_lo: np.ndarray, nu_hi: np.ndarray, dt: float
) -> ComponentMap:
    """A relaxed battery's multiplier bounds (step 4 of :func:`multiplier_bounds`)."""
    g = spec.degradation_cost_per_mwh * dt / 1000.0
    eta_c, eta_d = spec.eta_charge, spec.eta_discharge
    nu = np.concatenate([nu_lo, nu_hi])
    thresholds = np.concatenate([(nu + g) / (eta_c * dt), eta_d * (nu - g) / dt])
    w_lo, w_hi = min(0.0, thresholds.min()), max(0.0, thresholds.max())
    bounds = ComponentMap()
    for k, t in enumerate(block.p_charge_kw):
        bounds[block.p_charge_kw[t]] = DualBound(
            lower=max(0.0, g + nu_hi[k] - dt * eta_c * w_lo),
            upper=max(0.0, dt * eta_c * w_hi - nu_lo[k] - g),
        )
        bounds[block.p_discharge_kw[t]] = DualBound(
            lower=max(0.0, g - nu_lo[k] + dt * w_hi / eta_d),
            upper=max(0.0, nu_hi[k] - g - dt * w_lo / eta_d),
        )
    bounds[block.soc_kwh] = DualBound(lower=w_hi - w_lo, upper=w_hi - w_lo)
    bounds[block.soc_final] = DualBound(lower=w_hi - w_lo, upper=w_hi - w_lo)
    return bounds


def _add_portfolio(m: pyo.ConcreteModel, penalty_per_mwh: float, penalty_per_mvarh: float) -> None:
    m.p_portfolio_kw = pyo.Expression(
        m.PERIODS,
        rule=lambda m, t: sum(m.home[h].p_net_kw[t] for h in m.PROSUMERS),
        doc="P[t] = sum_h p_net[h,t]  (kW)",
    )
    m.q_portfolio_kvar = pyo.Expression(
        m.PERIODS,
        rule=lambda m, t: sum(m.home[h].q_net_kvar[t] for h in m.PROSUMERS),
        doc="Q[t] = sum_h q_net[h,t]  (kvar)",
    )
    m.deviation_up_kw = pyo.Var(m.COMMITTED, bounds=(0, None), doc="P above commitment (kW)")
    m.deviation_down_kw = pyo.Var(m.COMMITTED, bounds=(0, None), doc="P below commitment (kW)")
    m.commitment_balance = pyo.Constraint(
        m.COMMITTED,
        rule=lambda m, t: (
            m.p_portfolio_kw[t] - m.commitment_kw[t]
            == m.deviation_up_kw[t] - m.deviation_down_kw[t]
        ),
        doc="P[t] - commitment[t] = dev_up[t] - dev_down[t]  (kW)",
    )
    m.deviation_up_kvar = pyo.Var(m.COMMITTED_Q, bounds=(0, None), doc="Q above (kvar)")
    m.deviation_down_kvar = pyo.Var(m.COMMITTED_Q, bounds=(0, None), doc="Q below (kvar)")
    m.reactive_commitment_balance = pyo.Constraint(
        m.COMMITTED_Q,
        rule=lambda m, t: (
            m.q_portfolio_kvar[t] - m.commitment_kvar[t]
            == m.deviation_up_kvar[t] - m.deviation_down_kvar[t]
        ),
        doc="Q[t] - commitment_q[t] = dev_q_up[t] - dev_q_down[t]  (kvar)",
    )
    dt = m.period_hours / 1000.0
    m.deviation_cost = pyo.Expression(
        expr=penalty_per_mwh
        * dt
        * sum(m.deviation_up_kw[t] + m.deviation_down_kw[t] for t in m.COMMITTED)
        + penalty_per_mvarh
        * dt
        * sum(m.deviation_up_kvar[t] + m.deviation_down_kvar[t] for t in m.COMMITTED_Q),
        doc="c_dev sum_t (dev_up + dev_down)[t] dt / 1000 + c_dev_q sum_t (dev_q_up + "
        "dev_q_down)[t] dt / 1000  (currency)",
    )


def _add_network(
    m: pyo.ConcreteModel, feeder: Feeder, formulation: NetworkFormulation | None
) -> None:
    """The leader's grid limits on the homes' P and Q (``attach_grid``); upstream at the root.

    The network belongs to the leader: it lives in ``m.network``, outside the homes'
    blocks, so the followers' KKT conditions are built on the homes alone.
    """
    from gridmarkets.networks import attach_grid

    cap = sum(s.import_limit_kw + s.export_limit_kw for s in m.specs.values())
    m.p_upstream_kw = pyo.Var(
        m.PERIODS, bounds=(-cap, cap), doc="injection from the upstream grid at the root (kW)"
    )
    rows = [("upstream", feeder.root, t, m.p_upstream_kw[t], 0.0) for t in m.PERIODS]
    rows += [
        (f"prosumers.{h}", spec.bus, t, m.home[h].p_net_kw[t], m.home[h].q_net_kvar[t])
        for h, spec in m.specs.items()
        for t in m.PERIODS
    ]
    table = pd.DataFrame(rows, columns=["owner", "bus", "period", "p_kw", "q_kvar"])
    attach_grid(
        m, feeder, list(m.PERIODS), table, formulation=formulation, period_hours=m.period_hours
    )


def _add_bilevel_cost(m: pyo.ConcreteModel, fairness_weight: float) -> None:
    m.leader_cost = pyo.Objective(
        expr=_bilevel_cost_terms(m, fairness_weight),
        doc="sum_h income[h] + deviation cost + w_fair (gain_max - gain_min)  (currency)",
    )


def _bilevel_cost_terms(m: pyo.Block, fairness_weight: float):
    """The leader's cost on block ``m`` (the model, or one scenario of the stochastic
    aggregator): payments, gains and their spread; returns the cost expression."""
    followers = dict(zip(m.PROSUMERS, m.followers, strict=True))
    m.incentive_paid = pyo.Expression(
        m.PROSUMERS,
        rule=lambda m, h: (
            -kkt.bilinear_cost(followers[h])
            - sum(m.incentive_per_mwh[t] * m.baseline_kw[h, t] for t in m.PERIODS)
            * m.period_hours
            / 1000.0
        ),
        doc="income[h] = sum_t pi[t] (p_net - baseline)[h,t] dt/1000; pi p_net by strong "
        "duality  (currency)",
    )
    m.gain = pyo.Expression(
        m.PROSUMERS,
        rule=lambda m, h: (
            m.standalone_cost[h]
            - followers[h].dual_objective
            - sum(m.incentive_per_mwh[t] * m.baseline_kw[h, t] for t in m.PERIODS)
            * m.period_hours
            / 1000.0
        ),
        doc="gain[h] = standalone[h] - (cost - income)[h]; the follower's optimal value is "
        "its LP dual objective plus the baseline term  (currency)",
    )
    m.gain_max = pyo.Var(doc="best-off home's gain (currency)")
    m.gain_min = pyo.Var(doc="worst-off home's gain (currency)")
    m.gain_below_max = pyo.Constraint(
        m.PROSUMERS, rule=lambda m, h: m.gain[h] <= m.gain_max, doc="gain[h] <= gain_max"
    )
    m.gain_above_min = pyo.Constraint(
        m.PROSUMERS, rule=lambda m, h: m.gain[h] >= m.gain_min, doc="gain[h] >= gain_min"
    )
    return (
        sum(m.incentive_paid.values())
        + m.deviation_cost
        + fairness_weight * (m.gain_max - m.gain_min)
    )


def _add_full_control_cost(m: pyo.ConcreteModel) -> None:
    m.leader_cost = pyo.Objective(
        expr=_full_control_cost_terms(m),
        doc="sum_h (cost[h] - standalone[h]) + deviation cost  (currency)",
    )


def _full_control_cost_terms(m: pyo.Block):
    """The aggregator's cost under full control on block ``m``: compensations plus the
    deviation cost; returns the cost expression."""
    m.incentive_paid = pyo.Expression(
        m.PROSUMERS,
        rule=lambda m, h: m.home[h].cost - m.standalone_cost[h],
        doc="compensation[h] = cost[h] - standalone[h]  (currency)",
    )
    return sum(m.incentive_paid.values()) + m.deviation_cost


# --- a start: the homes' best responses at a candidate incentive ------------------------


class Responses:
    """The homes' own EMS at any incentive schedule: their best responses, one LP.

    The prosumer model of the homes with the incentive folded into the tariff (a home's
    ``cost - income`` is its cost at ``c_imp + pi`` and ``c_exp + pi``, less the
    constant ``pi baseline``), compiled to HiGHS arrays once; a new incentive changes
    only the import and export columns' costs, by ``+-pi[t] dt/1000``. The homes are
    separable, so the LP's optimum is every home's optimum.
    """

    def __init__(self, m: pyo.ConcreteModel):
        self.m = m
        self.ems = ems = prosumer.build(
            m.specs, m.prices_spec, periods=len(m.PERIODS), period_hours=m.period_hours
        )
        self.form = compile_model(ems)
        self.base_cost = np.array(self.form.lp.col_cost_, dtype=float)
        column = {id(v): k for k, v in enumerate(self.form.columns)}
        self.columns = {
            name: np.array(
                [
                    [column[id(getattr(ems.home[h], name)[t])] for t in ems.PERIODS]
                    for h in ems.PROSUMERS
                ]
            )
            for name in ("p_import_kw", "p_export_kw")
        }
        self.baseline = np.array([[m.baseline_kw[h, t] for t in m.PERIODS] for h in m.PROSUMERS])
        self.standalone = np.array([m.standalone_cost[h] for h in m.PROSUMERS])
        self.q_load_kvar = np.array(
            [sum(pyo.value(m.home[h].q_load_kvar[t]) for h in m.PROSUMERS) for t in m.PERIODS]
        )
        self.pairs = [
            (v, m.home[h].find_component(v.getname(fully_qualified=True, relative_to=ems.home[h])))
            for h in m.PROSUMERS
            for v in ems.home[h].component_data_objects(pyo.Var)
        ]

    def respond(self, pi_per_mwh: np.ndarray) -> float:
        """Solve the homes at incentive ``pi[t]``; return the leader's cost of that response.

        The cost is the leader's objective at the homes' responses with the inverters'
        reactive power at 0: incentives paid, deviation penalties and fairness spread.
        """
        dt = self.m.period_hours / 1000.0
        cost = self.base_cost.copy()
        shift = np.broadcast_to(pi_per_mwh * dt, self.columns["p_import_kw"].shape)
        cost[self.columns["p_import_kw"]] += shift
        cost[self.columns["p_export_kw"]] -= shift
        self.form.lp.col_cost_ = cost
        solve_compiled(self.ems, self.form, 0.0, {})
        x = np.array([v.value for v in self.form.columns])
        net = x[self.columns["p_export_kw"]] - x[self.columns["p_import_kw"]]
        income = (net - self.baseline) @ pi_per_mwh * dt
        own = np.array([pyo.value(self.ems.home[h].cost) for h in self.ems.PROSUMERS])
        gain = self.standalone - own + income  # cost at the tariff, as in the model's gain
        spread = float(gain.max() - gain.min())
        return (
            float(income.sum())
            + self._deviation_cost(net.sum(axis=0))
            + self.m.fairness_weight * spread
        )

    def _deviation_cost(self, p_kw: np.ndarray) -> float:
        m = self.m
        for t in m.COMMITTED:
            m.deviation_up_kw[t].set_value(max(p_kw[t] - m.commitment_kw[t], 0.0))
            m.deviation_down_kw[t].set_value(max(m.commitment_kw[t] - p_kw[t], 0.0))
        for t in m.COMMITTED_Q:
            q = -self.q_load_kvar[t]  # the loads' draw; inverters at 0
            m.deviation_up_kvar[t].set_value(max(q - m.commitment_kvar[t], 0.0))
            m.deviation_down_kvar[t].set_value(max(m.commitment_kvar[t] - q, 0.0))
        return float(pyo.value(m.deviation_cost))

    def load(self) -> None:
        """Copy the last responses into the aggregator's homes (inverters' q at 0)."""
        for source, target in self.pairs:
            target.set_value(source.value, skip_validation=True)
        for h in self.m.PROSUMERS:
            if hasattr(self.m.home[h], "q_inverter_kvar"):
                for v in self.m.home[h].q_inverter_kvar.values():
                    v.set_value(0.0)


def _responses(m: pyo.ConcreteModel) -> Responses:
    """The model's :class:`Responses`, built on first use."""
    if getattr(m, "responses", None) is None:
        m.responses = Responses(m)
    return m.responses


def search_incentive(m: pyo.ConcreteModel, seconds: float) -> tuple[dict, float]:
    """A good incentive per group by the homes' best responses, within ``seconds``.

    Groups that cover no committed period keep the incentive nearest 0; the others try
    every candidate (the menu of levels, else 11 values from the lowest to the highest
    incentive) together, then one group at a time, keeping the cheapest response.

    Returns
    -------
    (incentive by group, the leader's cost of the homes' responses to it).
    """
    deadline = time.perf_counter() + seconds
    responses = _responses(m)
    spec = m.incentive_spec
    low, high = incentive_range(spec)
    grid = np.unique(spec.levels if spec.levels is not None else np.linspace(low, high, 11))
    committed = set(m.COMMITTED) | set(m.COMMITTED_Q)
    active = [g for g in m.GROUPS if any(m.group_of[t] == g and t in committed for t in m.PERIODS)]
    start = float(grid[np.argmin(np.abs(grid))])
    best = dict.fromkeys(m.GROUPS, start)

    def cost(choice: dict) -> float:
        return responses.respond(np.array([choice[m.group_of[t]] for t in m.PERIODS]))

    best_cost = cost(best)
    moves = [(tuple(active), v) for v in grid] + [((g,), v) for g in active for v in grid]
    for groups, value in moves:
        if time.perf_counter() > deadline:
            break
        trial = {**best, **dict.fromkeys(groups, float(value))}
        trial_cost = cost(trial)
        if trial_cost < best_cost:
            best, best_cost = trial, trial_cost
    return best, best_cost


def set_start(
    m: pyo.ConcreteModel, incentive: Mapping[Any, float], time_limit: float | None = None
) -> bool:
    """Give every variable of the model a value: a bilevel-feasible point at ``incentive``.

    The homes respond with their own optimum (:class:`Responses`); each side's binary
    is 1 where its slack is 0; with the incentive and the binaries fixed, one LP finds
    the leader's best point among the homes' responses with that pattern of tight
    sides, multipliers included (valid bounds admit an optimal dual). ``solve(...,
    warm_start=True)`` then hands HiGHS a complete start.

    Returns
    -------
    Whether the LP found the point (False: the model's values are a partial start).
    """
    responses = _responses(m)
    responses.respond(np.array([incentive[m.group_of[t]] for t in m.PERIODS]))
    responses.load()
    fixed = _set_incentive(m, incentive)
    for follower in m.followers:
        for side in follower.sides:
            if side.binary is not None:
                side.binary.set_value(int(pyo.value(side.slack) <= 1e-9))
                fixed.append(side.binary)
    for v in fixed:
        v.fix()
    try:
        solve(m, time_limit=time_limit)
        return True
    except NoSolutionError:
        return False
    finally:
        for v in fixed:
            v.unfix()


def _set_incentive(m: pyo.ConcreteModel, incentive: Mapping[Any, float]) -> list:
    """Set the leader's incentive variables; return them."""
    if m.incentive_spec.levels is None:
        for g in m.GROUPS:
            m.group_incentive_per_mwh[g].set_value(incentive[g])
        return list(m.group_incentive_per_mwh.values())
    levels = list(m.incentive_spec.levels)
    for g in m.GROUPS:
        for k in m.LEVELS:
            m.level_chosen[g, k].set_value(int(levels[k] == incentive[g]))
    return list(m.level_chosen.values())


# --- results ----------------------------------------------------------------------------


def results(
    model: pyo.ConcreteModel, solution: Solution, *, time_limit: float | None = None
) -> Result:
    """Tables and KPIs of a solved aggregator model, with the followers verified.

    Tables
    ------
    incentives : period, group, incentive_per_mwh (empty under full control).
    portfolio : period, commitment_kw, p_net_kw, deviation_kw, commitment_kvar,
        q_net_kvar, deviation_kvar (NaN commitment and deviation where none).
    power : prosumer, period, import_kw, export_kw, p_net_kw, q_kvar.
    prosumers : prosumer, standalone_cost, cost, incentive_paid, gain.
    verify : prosumer, value, optimum, gap, at_bound, checked — each home re-solved
        alone at the incentives found (bilevel only); ``checked`` False where
        ``time_limit`` (seconds for the re-solves) came first.

    KPIs include the solver's ``mip_gap`` and ``time_limit_hit`` (1 when HiGHS stopped
    at its time limit, the gap then being what it reached).
    """
    m = model
    checks = kkt.verify(m, time_limit=time_limit) if m.followers else []
    tables = {
        "incentives": _incentive_table(m),
        "portfolio": _portfolio_table(m),
        "power": _power_table(m),
        "prosumers": _prosumer_table(m),
        "verify": pd.DataFrame(
            [(c.name, c.value, c.optimum, c.gap, "; ".join(c.at_bound), c.checked) for c in checks],
            columns=["prosumer", "value", "optimum", "gap", "at_bound", "checked"],
        ),
    }
    kpis = {
        "leader_cost": float(pyo.value(m.leader_cost)),
        "incentive_paid": float(sum(pyo.value(e) for e in m.incentive_paid.values())),
        "deviation_cost": float(pyo.value(m.deviation_cost)),
        "deviation_kwh": float(tables["portfolio"]["deviation_kw"].abs().sum() * m.period_hours),
        "deviation_kvarh": float(
            tables["portfolio"]["deviation_kvar"].abs().sum() * m.period_hours
        ),
        "max_follower_gap": max((abs(c.gap) for c in checks if c.checked), default=0.0),
        "followers_unchecked": int(sum(not c.checked for c in checks)),
        "multipliers_at_big_m": int(sum(len(c.at_bound) for c in checks)),
        "multipliers_at_derived_bound": int(sum(len(c.at_derived_bound) for c in checks)),
        "mip_gap": float(solution.gap),
        "time_limit_hit": int(solution.status == "time_limit"),
    }
    return Result("aggregator", tables, kpis, solution)


def _incentive_table(m) -> pd.DataFrame:
    if m.control != "incentive":
        return pd.DataFrame(columns=["period", "group", "incentive_per_mwh"])
    return pd.DataFrame(
        [(t, m.group_of[t], float(pyo.value(m.incentive_per_mwh[t]))) for t in m.PERIODS],
        columns=["period", "group", "incentive_per_mwh"],
    )


def _portfolio_table(m) -> pd.DataFrame:
    rows = []
    for t in m.PERIODS:
        p = float(pyo.value(m.p_portfolio_kw[t]))
        q = float(pyo.value(m.q_portfolio_kvar[t]))
        p_ref = float(pyo.value(m.commitment_kw[t])) if t in m.COMMITTED else np.nan
        q_ref = float(pyo.value(m.commitment_kvar[t])) if t in m.COMMITTED_Q else np.nan
        rows.append((t, p_ref, p, p - p_ref, q_ref, q, q - q_ref))
    columns = ["period", "commitment_kw", "p_net_kw", "deviation_kw"]
    columns += ["commitment_kvar", "q_net_kvar", "deviation_kvar"]
    return pd.DataFrame(rows, columns=columns)


def _power_table(m) -> pd.DataFrame:
    rows = [
        (
            h,
            t,
            float(pyo.value(m.home[h].p_import_kw[t])),
            float(pyo.value(m.home[h].p_export_kw[t])),
            float(pyo.value(m.home[h].q_net_kvar[t])),
        )
        for h in m.PROSUMERS
        for t in m.PERIODS
    ]
    table = pd.DataFrame(rows, columns=["prosumer", "period", "import_kw", "export_kw", "q_kvar"])
    table.insert(4, "p_net_kw", table["export_kw"] - table["import_kw"])
    return table


def _prosumer_table(m) -> pd.DataFrame:
    rows = []
    for h in m.PROSUMERS:
        cost = float(pyo.value(m.home[h].cost))
        paid = float(pyo.value(m.incentive_paid[h]))
        rows.append((h, m.standalone_cost[h], cost, paid, m.standalone_cost[h] - cost + paid))
    return pd.DataFrame(
        rows, columns=["prosumer", "standalone_cost", "cost", "incentive_paid", "gain"]
    )


def schedule(
    prosumers: Mapping[str, ProsumerSpec] | Sequence[ProsumerSpec],
    prices: PricesSpec,
    commitment_kw: assets.Profile,
    *,
    solve_options: Mapping[str, Any] | None = None,
    **build_options: Any,
) -> Result:
    """Build, solve and report in one call: :func:`build`, :func:`solve_bilevel`,
    :func:`results`.

    ``build_options`` are :func:`build`'s keyword arguments; ``solve_options`` are
    :func:`solve_bilevel`'s. A ``time_limit`` covers everything after the build: the
    start, HiGHS, its pricing LP and the homes' re-solves (see :func:`solve_bilevel`).
    """
    model = build(prosumers, prices, commitment_kw, **build_options)
    options = dict(solve_options or {})
    started = time.perf_counter()
    solution = solve_bilevel(model, **options)
    limit = options.get("time_limit")
    left = None if limit is None else max(limit - (time.perf_counter() - started), 0.0)
    return results(model, solution, time_limit=left)


VERIFY_SHARE = 0.1  # of the time limit kept for the homes' re-solves (verify)
SEARCH_SHARE = 0.25  # of the time limit at most spent searching the start's incentive


def solve_bilevel(
    model: pyo.ConcreteModel,
    *,
    time_limit: float | None = None,
    start: bool = True,
    **solve_options: Any,
) -> Solution:
    """Solve an aggregator model, from a bilevel-feasible start found by the homes' LPs.

    With ``start`` (bilevel models): :func:`search_incentive` tries incentives on the
    homes' own EMS (their best responses, one LP per candidate) and :func:`set_start`
    turns the best into a complete MIP start (every variable valued, so HiGHS need not
    complete it); HiGHS then proves the gap from there. Without one, or when the start
    LP fails (e.g. a grid limit the responses break), HiGHS starts cold.

    Time: ``time_limit`` (seconds) bounds the search (at most ``SEARCH_SHARE`` of it),
    the start LP, HiGHS and its pricing LP together, keeping ``VERIFY_SHARE`` for
    :func:`results`' re-solves; each stage gets the time left. Stages that cannot be
    interrupted (one homes' LP, the model's translation) can overrun it by their own
    duration: about a second at 40 homes x 24 periods.

    ``solve_options`` are :func:`gridmarkets.solvers.solve`'s (``mip_gap``, ``threads``,
    ``options``).
    """
    deadline = math.inf if time_limit is None else time.perf_counter() + time_limit
    reserve = 0.0 if time_limit is None else VERIFY_SHARE * time_limit

    def left() -> float | None:
        return None if time_limit is None else max(deadline - time.perf_counter() - reserve, 0.1)

    warm = False
    if start and model.followers:
        budget = math.inf if time_limit is None else SEARCH_SHARE * time_limit
        incentive, _ = search_incentive(model, budget)
        warm = set_start(model, incentive, time_limit=left())
    return solve(model, time_limit=left(), warm_start=warm, **solve_options)


def level_grid(levels: Sequence[float], periods: int) -> np.ndarray:
    """Every incentive schedule over a menu of levels: (len(levels)**periods x periods)."""
    return np.array(np.meshgrid(*[levels] * periods, indexing="ij")).reshape(periods, -1).T


def example_portfolio(
    homes: int, periods: int = 24, seed: int = 0
) -> tuple[dict[str, ProsumerSpec], PricesSpec, np.ndarray]:
    """A synthetic hourly portfolio for notebooks and benchmarks.

    Homes with an evening-peaked load, PV on two in three and a relaxed battery (larger
    than the home's own evening needs) on every other, a time-of-use tariff, and a
    commitment covering the evening only (17:00-21:00, NaN elsewhere) that asks the
    portfolio to export 1 kW per home instead of its stand-alone import.

    Parameters
    ----------
    homes : number of homes.
    periods : hourly periods (the day repeats).
    seed : random seed of the loads and sizes.

    Returns
    -------
    (homes by id, tariff, commitment_kw per period).
    """
    rng = np.random.default_rng(seed)
    hour = np.arange(periods) % 24
    shape = 0.4 + 0.6 * np.exp(-((hour - 19) ** 2) / 6.0) + 0.3 * np.exp(-((hour - 8) ** 2) / 4.0)
    sun = np.clip(np.sin((hour - 6) / 12 * np.pi), 0, None)
    specs = {}
    for k in range(homes):
        load = np.round(shape * rng.uniform(1.5, 3.5), 3)
        pv = PVSpec(profile_kw=list(np.round(sun * rng.uniform(3, 6), 3))) if k % 3 else None
        battery = (
            BatterySpec(
                capacity_kwh=float(rng.choice([10.0, 12.5, 15.0])),
                p_charge_max_kw=5.0,
                soc_initial_kwh=2.0,
                degradation_cost_per_mwh=10.0,
                relaxed=True,
            )
            if k % 2 == 0
            else None
        )
        specs[f"h{k:02d}"] = ProsumerSpec(
            load_kw=list(load), pv=pv, battery=battery, import_limit_kw=15, export_limit_kw=15
        )
    price = [420.0 if 17 <= h < 21 else 300.0 if 6 <= h < 22 else 220.0 for h in hour]
    prices = PricesSpec(import_price=price, export_price=80.0)
    evening = (hour >= 17) & (hour < 21)
    commitment = np.where(evening, float(homes), np.nan)
    return specs, prices, commitment
