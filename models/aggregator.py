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
strong duality (:func:`gridmarkets.solvers.kkt.bilinear_cost`). :func:`results`
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

from gridmarkets.errors import InputError
from gridmarkets.models import assets, prosumer
from gridmarkets.models.assets import BatterySpec, PVSpec
from gridmarkets.models.prosumer import PricesSpec, ProsumerSpec
from gridmarkets.results import Result
from gridmarkets.solvers import Solution, kkt, record_build_time, solve
from gridmarkets.specs.base import Spec

if TYPE_CHECKING:
    from gridmarkets.networks import Feeder, NetworkFormulation

Control = Literal["incentive", "full"]


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
        if self.levels is None and self.min_per_mwh > self.max_per_mwh:
            raise ValueError(f"min_per_mwh: {self.min_per_mwh} is above max_per_mwh")
        if self.levels is not None and not self.levels:
            raise ValueError("levels: give at least one level")
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
    big_m : bound on the followers' multipliers (currency per kW and period);
        :func:`results` reports any multiplier at it.
    extra : called with the model at the end, to add user constraints.

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
        m.followers = kkt.reformulate(m, [m.home[h] for h in homes], method=method, big_m=big_m)
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


# --- results ----------------------------------------------------------------------------


def results(model: pyo.ConcreteModel, solution: Solution) -> Result:
    """Tables and KPIs of a solved aggregator model, with the followers verified.

    Tables
    ------
    incentives : period, group, incentive_per_mwh (empty under full control).
    portfolio : period, commitment_kw, p_net_kw, deviation_kw, commitment_kvar,
        q_net_kvar, deviation_kvar (NaN commitment and deviation where none).
    power : prosumer, period, import_kw, export_kw, p_net_kw, q_kvar.
    prosumers : prosumer, standalone_cost, cost, incentive_paid, gain.
    verify : prosumer, value, optimum, gap, at_bound — each home re-solved alone at the
        incentives found (bilevel only).
    """
    m = model
    checks = kkt.verify(m) if m.followers else []
    tables = {
        "incentives": _incentive_table(m),
        "portfolio": _portfolio_table(m),
        "power": _power_table(m),
        "prosumers": _prosumer_table(m),
        "verify": pd.DataFrame(
            [(c.name, c.value, c.optimum, c.gap, "; ".join(c.at_bound)) for c in checks],
            columns=["prosumer", "value", "optimum", "gap", "at_bound"],
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
        "max_follower_gap": max((abs(c.gap) for c in checks), default=0.0),
        "multipliers_at_big_m": int(sum(len(c.at_bound) for c in checks)),
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
    """Build, solve and report in one call: :func:`build`, then :func:`results`.

    The MILP starts from the zero incentive (the leader's variables are initialised
    there and HiGHS completes the homes' part): every home keeping its baseline is
    feasible, so the search has an incumbent from the start.

    ``build_options`` are :func:`build`'s keyword arguments; ``solve_options`` are
    :func:`gridmarkets.solvers.solve`'s.
    """
    model = build(prosumers, prices, commitment_kw, **build_options)
    return results(model, solve(model, **{"warm_start": True, **dict(solve_options or {})}))


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
