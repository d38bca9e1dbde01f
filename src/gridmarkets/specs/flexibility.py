"""Case files of the flexibility market (``model: flexibility``)."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from gridmarkets.models.assets import Phase
from gridmarkets.models.flexibility import (
    DSO_PRODUCT,
    DSO_PRODUCTS,
    OFFER_COLUMNS,
    REACTIVE_PRODUCT,
    RESOURCE_COLUMNS,
    _activated,
    bilateral,
    build,
    compare,
    dso_needs,
    load_products,
    results,
    tso_requirements,
)
from gridmarkets.results import Result
from gridmarkets.specs.adapter import Built, Injections, handles_injections, three_phase
from gridmarkets.specs.base import CaseBase, Spec


class OfferSpec(Spec):
    """One offer of a seller: a product, a direction, a quantity and its prices."""

    product: str = Field(description="a TSO product, 'dso' or 'reactive'")
    direction: Literal["up", "down", "symmetric"]
    quantity_kw: NonNegativeFloat | list[NonNegativeFloat] = Field(
        description="kW (kvar for reactive), one value or one per period"
    )
    capacity_price: float = Field(description="currency per MW and hour")
    activation_price: float = Field(0.0, description="currency per MWh")


class SellerSpec(Spec):
    """A seller at a bus with its offers and, optionally, the limits of its resource."""

    bus: int
    offers: list[OfferSpec] = Field(min_length=1)
    p_baseline_kw: float = Field(0.0, description="its own scheduled injection")
    up_kw: NonNegativeFloat | None = Field(None, description="upward headroom, all offers")
    down_kw: NonNegativeFloat | None = Field(None, description="downward headroom, all offers")
    s_max_kva: PositiveFloat | None = Field(None, description="inverter apparent-power rating")
    phase: Phase = Field(
        None,
        description="phases its resource is connected to on a three-phase network "
        "(network.phases: three): 'a', 'b', 'c', two of them or 'abc' (absent)",
    )


class BaselineSpec(Spec):
    """The baseline: the feeder's own loads and PV, scaled: from its SimBench profiles,
    or on a three-phase network the net's own elements per phase, in every period."""

    load_scale: NonNegativeFloat = 1.0
    pv_scale: NonNegativeFloat = 1.0
    sellers: bool = Field(
        False,
        description="add every seller's p_baseline_kw to the baseline at its bus (and "
        "phases): resources the feeder's own elements do not hold",
    )


class PVOffersSpec(Spec):
    """Every PV bus of the feeder offers curtailment and reactive power to the DSO."""

    curtailment_price: float = Field(description="activation price of 'dso' down, per MWh")
    reactive_price: float | None = Field(None, description="per Mvarh; None: no reactive")
    capacity_price: float = Field(0.0, description="per MW and hour")
    inverter_kva_factor: float = Field(1.1, ge=1.0, description="rating / peak PV power")


class CaseSpec(CaseBase):
    """A flexibility market case (``model: flexibility``) on a SimBench feeder."""

    model: Literal["flexibility"]
    mode: Literal["pool", "bilateral", "both"] = "pool"
    pricing: Literal["pay_as_bid", "uniform"] = "pay_as_bid"
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    tso_requirements: dict[str, NonNegativeFloat | list[NonNegativeFloat]] = Field(
        default_factory=dict, description="kW per product: one value or one per period"
    )
    pv_offers: PVOffersSpec | None = None
    sellers: dict[str, SellerSpec] = Field(default_factory=dict)
    loading_margin_percent: NonNegativeFloat = 2.0
    voltage_margin_pu: NonNegativeFloat = 0.002
    shortfall_price: PositiveFloat = 10_000.0

    @model_validator(mode="after")
    def _consistent(self) -> CaseSpec:
        n = self.horizon.periods
        if self.network is None:
            raise ValueError("network: a flexibility case needs a network")
        if three_phase(self):
            self._check_three_phase()
        elif self.network.source != "simbench":
            raise ValueError(
                "network: a flexibility case needs a SimBench network (profiles), or "
                "network.phases: three (the net's own elements as the baseline)"
            )
        for sid, seller in self.sellers.items():
            if seller.phase is not None and not three_phase(self):
                raise ValueError(
                    f"sellers.{sid}.phase: needs a three-phase network (network.phases: three)"
                )
        known = set(load_products().index)
        for name, value in self.tso_requirements.items():
            if name not in known:
                raise ValueError(f"tso_requirements.{name}: not a product ({sorted(known)})")
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"tso_requirements.{name}: {len(value)} values for {n} periods")
        for sid, seller in self.sellers.items():
            for k, offer in enumerate(seller.offers):
                if offer.product not in known | set(DSO_PRODUCTS):
                    raise ValueError(f"sellers.{sid}.offers.{k}.product: {offer.product!r} unknown")
                q = offer.quantity_kw
                if isinstance(q, list) and len(q) != n:
                    raise ValueError(f"sellers.{sid}.offers.{k}.quantity_kw: {len(q)} values")
        return self

    def _check_three_phase(self) -> None:
        """What a three-phase case cannot do: the bilateral mode (balanced
        sensitivities) and, off SimBench, PV offers (they need PV profiles)."""
        if self.mode != "pool":
            raise ValueError(
                f"mode: {self.mode!r} is not available on network.phases: three (the "
                "bilateral procurement is balanced); use 'pool'"
            )
        if self.network.source != "simbench" and self.pv_offers is not None:
            raise ValueError("pv_offers: needs a SimBench network (its PV profiles)")


def case_baseline(case: CaseSpec, feeder) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Baseline p_kw and q_kvar (buses x periods; rows (bus, phase) from a net's own
    elements on three phases) and PV output (kW, SimBench only), with the sellers'
    baselines when ``baseline.sellers``."""
    if case.network.source == "simbench":
        p_kw, q_kvar, pv_kw = profile_baseline(case, feeder)
    else:
        p_kw, q_kvar = net_baseline(case, feeder)
        pv_kw = pd.DataFrame(columns=p_kw.columns, dtype=float)
    if case.baseline.sellers:
        p_kw = p_kw.add(seller_baseline(case, p_kw), fill_value=0.0)
    return p_kw, q_kvar, pv_kw


def seller_baseline(case: CaseSpec, like: pd.DataFrame) -> pd.DataFrame:
    """The sellers' p_baseline_kw in every period of ``like``, with its rows: by bus,
    or by (bus, phase) with a seller on k phases putting a k-th on each."""
    phased = "phase" in (like.index.names or ())
    rows = []
    for s in case.sellers.values():
        if phased:
            phases = s.phase or "abc"
            rows += [(s.bus, phase, s.p_baseline_kw / len(phases)) for phase in phases]
        else:
            rows.append((s.bus, "abc", s.p_baseline_kw))
    table = pd.DataFrame(rows, columns=["bus", "phase", "p_kw"])
    per_row = table.groupby(["bus", "phase"] if phased else "bus")["p_kw"].sum()
    return pd.DataFrame({t: per_row for t in like.columns})


def net_baseline(case: CaseSpec, feeder) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The net's own elements per phase (``networks.three_phase.phase_injections``),
    loads times ``baseline.load_scale`` and static generators times ``pv_scale``, in
    every period: rows (bus, phase), columns periods (kW, kvar)."""
    from gridmarkets.networks.three_phase import phase_injections

    net = copy.deepcopy(feeder.net)
    scales = {"load": case.baseline.load_scale, "sgen": case.baseline.pv_scale}
    for table, scale in scales.items():
        for name in (table, f"asymmetric_{table}"):
            frame = getattr(net, name, None)
            if frame is not None and len(frame):
                frame["scaling"] = frame["scaling"] * scale
    tables = phase_injections(dataclasses.replace(feeder, net=net))
    periods = range(case.horizon.periods)
    frames = []
    for table in tables:
        stacked = table.rename_axis(index="bus", columns="phase").stack()
        frames.append(pd.DataFrame({t: stacked for t in periods}))
    return frames[0], frames[1]


def profile_baseline(case: CaseSpec, feeder) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Baseline p_kw and q_kvar (buses x periods) and PV output (kW) from the profiles."""
    from gridmarkets.networks import feeder_profiles

    horizon = case.horizon
    start = 0
    if horizon.start is not None:
        new_year = horizon.start.replace(month=1, day=1, hour=0, minute=0, second=0)
        start = int((horizon.start - new_year).total_seconds() // 900)
    prof = feeder_profiles(feeder, start, horizon.periods, horizon.resolution_minutes)
    pv = prof["sgen_p_kw"] * case.baseline.pv_scale
    load = prof["load_p_kw"] * case.baseline.load_scale
    prof = prof.assign(p_kw=pv - load, q_kvar=-prof["load_q_kvar"] * case.baseline.load_scale)
    prof = prof.assign(pv_kw=pv)
    frames = [prof.pivot(index="bus", columns="period", values=c) for c in ("p_kw", "q_kvar")]
    return frames[0], frames[1], prof.pivot(index="bus", columns="period", values="pv_kw")


def case_offers(case: CaseSpec, pv_kw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The case's offers and resources: its sellers' and its PV buses' (``pv_offers``)."""
    periods = list(range(case.horizon.periods))
    offers, resources = [], []
    for sid, s in case.sellers.items():
        for o in s.offers:
            q = o.quantity_kw if isinstance(o.quantity_kw, list) else [o.quantity_kw] * len(periods)
            offers += [
                (sid, s.bus, t, o.product, o.direction, q[t], o.capacity_price, o.activation_price)
                for t in periods
            ]
        limits = [np.nan if v is None else v for v in (s.up_kw, s.down_kw, s.s_max_kva)]
        resources += [(sid, t, s.p_baseline_kw, 0.0, *limits) for t in periods]
    table = pd.DataFrame(offers, columns=OFFER_COLUMNS)
    if three_phase(case):  # every seller's phases; PV buses (SimBench) are balanced
        phases = {sid: s.phase or "abc" for sid, s in case.sellers.items()}
        table["phase"] = table["seller"].map(phases)
    offers = list(table.itertuples(index=False, name=None))
    spec = case.pv_offers
    if spec is not None:
        for bus in pv_kw.index[pv_kw.max(axis=1) > 0]:
            sid, s_max = f"pv_{bus}", spec.inverter_kva_factor * float(pv_kw.loc[bus].max())
            for t in periods:
                p0 = float(pv_kw.at[bus, t])
                row = (sid, bus, t, DSO_PRODUCT, "down", p0, spec.capacity_price)
                offers.append((*row, spec.curtailment_price))
                resources.append((sid, t, p0, 0.0, np.nan, p0, s_max))
                if spec.reactive_price is not None:
                    q_room = math.sqrt(max(s_max**2 - p0**2, 0.0))
                    for direction in ("up", "down"):
                        row = (sid, bus, t, REACTIVE_PRODUCT, direction, q_room)
                        offers.append((*row, spec.capacity_price, spec.reactive_price))
    return (
        pd.DataFrame(offers, columns=list(table.columns)).fillna({"phase": "abc"}),
        pd.DataFrame(resources, columns=RESOURCE_COLUMNS),
    )


@dataclass(frozen=True)
class Market:
    """A case's market inputs on its feeder: baseline, offers, resources and needs."""

    baseline_p_kw: pd.DataFrame
    baseline_q_kvar: pd.DataFrame
    offers: pd.DataFrame
    resources: pd.DataFrame
    needs: pd.DataFrame

    @classmethod
    def of(cls, case: CaseSpec, feeder) -> Market:
        """The baseline, the offers, and the DSO's needs (on three phases none: the
        LinDist3Flow's own per-phase limits are the needs)."""
        base_p, base_q, pv_kw = case_baseline(case, feeder)
        offers, resources = case_offers(case, pv_kw)
        if three_phase(case):
            return cls(base_p, base_q, offers, resources, pd.DataFrame())
        needs = dso_needs(
            feeder,
            base_p,
            base_q,
            loading_margin_percent=case.loading_margin_percent,
            voltage_margin_pu=case.voltage_margin_pu,
        )
        return cls(base_p, base_q, offers, resources, needs)

    def bilateral(self, case: CaseSpec, feeder, solve_options: dict, ac: bool) -> Result:
        """The DSO's bilateral procurement (:func:`~gridmarkets.models.flexibility.bilateral`)."""
        return bilateral(
            feeder,
            self.offers,
            self.needs,
            self.baseline_p_kw,
            self.baseline_q_kvar,
            period_hours=case.horizon.period_hours,
            solve_options=solve_options,
            ac=ac,
        )

    def before(self) -> Injections:
        """The baseline's injections (no market cleared them: no limit was enforced)."""
        return Injections(self.baseline_p_kw, self.baseline_q_kvar)


class FlexibilityAdapter:
    """Flexibility cases by ``mode``.

    ``pool``: one clearing with one network formulation per scenario (dispatch after the
    DSO's activation, tso_up, tso_down); the AC check runs on the ``before`` baseline
    and on each scenario's injections (P and Q), and the KPIs ``violations_<name>``
    count each check's violations. Losses none or linear: ``iterate`` re-linearises one
    grid, and the pool holds one per scenario. ``bilateral``: the DSO's procurement (no
    network formulation: losses none), checked ``before`` and at ``dispatch``. ``both``:
    the pool, plus the bilateral result's accepted offers (``bilateral_accepted``) and
    the comparison (``comparison``). On a three-phase network (``network.phases:
    three``): the pool on LinDist3Flow, the sellers on their phases, the baseline
    per phase, checked with pandapower's ``runpp_3ph``.
    """

    three_phase = True  # network.phases: three: pool on LinDist3Flow, runpp_3ph (lossless)

    def losses(self, case: CaseSpec) -> tuple[str, ...]:
        """none and linear for the pool on a single-phase network; otherwise none."""
        single_pool = case.mode != "bilateral" and not three_phase(case)
        return ("none", "linear") if single_pool else ("none",)

    def build(self, case: CaseSpec, feeder, formulation) -> Built:
        market = Market.of(case, feeder)
        if case.mode == "bilateral":
            run = partial(market.bilateral, case, feeder, ac=False)
            return Built(run=run, checks=partial(_bilateral_checks, market, feeder))
        products = load_products()
        periods = list(range(case.horizon.periods))
        m = build(
            market.offers,
            products=products,
            requirements=tso_requirements(products, periods, case.tso_requirements),
            network=feeder,
            baseline_p_kw=market.baseline_p_kw,
            baseline_q_kvar=market.baseline_q_kvar,
            needs=market.needs,
            resources=market.resources,
            period_hours=case.horizon.period_hours,
            formulation=formulation,
            shortfall_price=case.shortfall_price,
        )
        return Built(
            m,
            lambda solution: results(m, solution, case.pricing, ac=False),
            lambda result: _pool_checks(market, scenario_handles(m)),
            grid=list(scenario_handles(m).values()),
        )

    def finish(self, case: CaseSpec, result: Result, feeder, solve_options: dict) -> None:
        for name, summary in result.ac_check.items():
            if isinstance(summary, dict):
                result.kpis[f"violations_{name}"] = summary["violations_count"]
        if case.mode == "both":
            other = Market.of(case, feeder).bilateral(case, feeder, solve_options, ac=True)
            result.tables["bilateral_accepted"] = other.accepted
            result.tables["comparison"] = compare(result, other)
            result.kpis["bilateral_dso_cost"] = other.kpis["dso_cost"]


def scenario_handles(m) -> dict[str, Any]:
    """The pool's network formulation of each scenario, by scenario: the AC check's hook."""
    return {s: m.scenario[s].handles for s in m.SCENARIOS}


def _pool_checks(market: Market, handles: dict[str, Any]) -> dict[str, Injections]:
    grids = {s: handles_injections(h) for s, h in handles.items()}
    return {"before": market.before(), **grids}


def _bilateral_checks(market: Market, feeder, result: Result) -> dict[str, Injections]:
    p, q = _activated(feeder, result.accepted, market.baseline_p_kw, market.baseline_q_kvar)
    return {"before": market.before(), "dispatch": Injections(p, q)}


ADAPTER = FlexibilityAdapter()
