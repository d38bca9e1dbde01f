"""Case files of peer-to-peer trading (``model: p2p``)."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import pandas as pd
from pydantic import (
    Field,
    FiniteFloat,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    model_validator,
)

from gridmarkets.models.lem import Upstream
from gridmarkets.models.p2p import (
    build,
    clear_admm,
    dso_check,
    hop_costs,
    results,
    trading_graph,
)
from gridmarkets.results import Result
from gridmarkets.specs.adapter import (
    Built,
    Injections,
    grid_checks,
    table_injections,
)
from gridmarkets.specs.base import CaseBase, Spec
from gridmarkets.specs.lem import OwnModelSections, check_own_models


class PeerBlockSpec(Spec):
    """One block of a peer: buy or sell a quantity (kW; one value or one per period)."""

    side: Literal["buy", "sell"]
    quantity_kw: NonNegativeFloat | list[NonNegativeFloat]
    price: FiniteFloat


class PeerSpec(Spec):
    """A peer: its blocks, its bus on the feeder and its community."""

    bus: int | None = None
    community: str | None = None
    blocks: list[PeerBlockSpec] = Field(min_length=1)


class PreferenceSpec(Spec):
    """Peer's preference cost of trading with partner (currency/MWh, >= 0), in one
    period or (no period) in every period without a row of its own."""

    peer: str
    partner: str
    cost: NonNegativeFloat
    period: NonNegativeInt | None = None


class BoundaryCostSpec(Spec):
    """What a community's agents pay per MWh bought from / sold to another community."""

    import_cost: NonNegativeFloat = Field(description="currency/MWh bought from outside")
    export_cost: NonNegativeFloat = Field(description="currency/MWh sold outside")


class BudgetSpec(Spec):
    """An energy budget over a window of a peer's buy (or sell) blocks (kWh)."""

    participant: str
    side: Literal["buy", "sell"] = "buy"
    first_period: NonNegativeInt
    last_period: NonNegativeInt
    min_kwh: NonNegativeFloat | None = None
    max_kwh: NonNegativeFloat | None = None


class UpstreamSpec(Spec):
    """Tariffs (currency/MWh; one value or one per period) and per-peer capacity (kW)."""

    import_price: FiniteFloat | list[FiniteFloat]
    export_price: FiniteFloat | list[FiniteFloat]
    capacity_kw: PositiveFloat | None = None


class ADMMSpec(Spec):
    """Options of the consensus ADMM."""

    rho: PositiveFloat = 1.0
    max_iterations: int = Field(5000, ge=1)
    eps_abs: PositiveFloat = 1e-6
    eps_rel: PositiveFloat = 1e-6


class CaseSpec(CaseBase, OwnModelSections):
    """A peer-to-peer trading case (``model: p2p``)."""

    model: Literal["p2p"]
    architecture: Literal["full", "community", "hybrid"] = "full"
    graph: Literal["complete", "neighbours"] | list[list[str]] = "complete"
    method: Literal["central", "admm"] = "central"
    dso: Literal["none", "network_aware", "check"] = Field(
        "none", description="network_aware: LinDistFlow in the clearing; check: clear then check"
    )
    quadratic: NonNegativeFloat = 0.0
    hop_cost: NonNegativeFloat = Field(0.0, description="currency/MWh per branch between peers")
    upstream: UpstreamSpec | None = None
    peers: dict[str, PeerSpec] = Field(default_factory=dict, description="block peers")
    communities: dict[str, str] = Field(
        default_factory=dict, description="community of each curve, storage, load or device peer"
    )
    preferences: list[PreferenceSpec] = Field(default_factory=list)
    boundary_costs: dict[str, BoundaryCostSpec] = Field(
        default_factory=dict, description="import and export costs by community"
    )
    budgets: list[BudgetSpec] = Field(default_factory=list)
    admm: ADMMSpec = Field(default_factory=ADMMSpec)

    def community_of(self) -> dict[str, str | None]:
        """Every peer's community (None: none given)."""
        own = {
            spec.participant: self.communities.get(spec.participant) for spec in self.own_models()
        }
        return {**{pid: p.community for pid, p in self.peers.items()}, **own}

    @model_validator(mode="after")
    def _consistent(self) -> CaseSpec:
        n = self.horizon.periods
        self._check_own_models(n)
        self._check_costs_and_budgets(n)
        for pid, p in self.peers.items():
            for k, block in enumerate(p.blocks):
                q = block.quantity_kw
                if isinstance(q, list) and len(q) != n:
                    raise ValueError(f"peers.{pid}.blocks.{k}.quantity_kw: {len(q)} values for {n}")
            if self.network is not None and p.bus is None:
                raise ValueError(f"peers.{pid}.bus: required on a network")
            if self.architecture != "full" and p.community is None:
                raise ValueError(f"peers.{pid}.community: required by {self.architecture}")
        if self.dso != "none" and self.network is None:
            raise ValueError(f"dso: {self.dso} needs a network")
        if self.dso == "network_aware" and self.method == "admm":
            raise ValueError("dso: network_aware clearing is central only (method: central)")
        if (self.hop_cost > 0 or self.graph == "neighbours") and self.network is None:
            raise ValueError("hop_cost and graph 'neighbours' need a network")
        return self

    def _check_own_models(self, n: int) -> None:
        """:func:`~gridmarkets.specs.lem.check_own_models`, a community for each where
        the architecture needs one, at least two peers, communities of peers only."""
        seen = check_own_models(self, set(self.peers), "peer", n)
        if self.architecture != "full":
            for spec in self.own_models():
                if spec.participant not in self.communities:
                    raise ValueError(
                        f"communities.{spec.participant}: required by {self.architecture}"
                    )
        if len(seen) < 2:
            raise ValueError("peers: a market needs at least two peers (any section)")
        unknown = set(self.communities) - seen
        if unknown:
            raise ValueError(f"communities.{sorted(unknown)[0]}: not a peer")

    def _check_costs_and_budgets(self, n: int) -> None:
        known = {c for c in self.community_of().values() if c is not None}
        for name in self.boundary_costs:
            if name not in known:
                raise ValueError(f"boundary_costs.{name}: not a community of any peer")
        for k, row in enumerate(self.preferences):
            if row.period is not None and row.period >= n:
                raise ValueError(f"preferences.{k}.period: {row.period} is not below {n}")
        for k, budget in enumerate(self.budgets):
            path = f"budgets.{k}"
            if budget.participant not in self.peers:
                raise ValueError(f"{path}.participant: {budget.participant!r} is not a block peer")
            if budget.last_period >= n or budget.first_period > budget.last_period:
                raise ValueError(
                    f"{path}: periods {budget.first_period}..{budget.last_period} are not a "
                    f"window of the {n} periods"
                )
            if budget.min_kwh is None and budget.max_kwh is None:
                raise ValueError(f"{path}: give min_kwh, max_kwh or both")


BID_COLUMNS = ["participant", "side", "quantity_kw", "price", "period", "block", "bus"]


def case_bids(case: CaseSpec) -> pd.DataFrame:
    """The bids table of a case's block peers (one row per block and period)."""
    n = case.horizon.periods
    rows = [
        {
            "participant": pid,
            "side": block.side,
            "quantity_kw": q,
            "price": block.price,
            "period": t,
            "block": k,
            "bus": p.bus,
        }
        for pid, p in case.peers.items()
        for k, block in enumerate(p.blocks)
        for t, q in enumerate(
            block.quantity_kw if isinstance(block.quantity_kw, list) else [block.quantity_kw] * n
        )
    ]
    return pd.DataFrame(rows, columns=BID_COLUMNS)


def market_options(case: CaseSpec, feeder) -> dict[str, Any]:
    """:func:`~gridmarkets.models.p2p.build`'s market options for a case (no network)."""
    boundary = pd.DataFrame(
        [{"community": name, **c.model_dump()} for name, c in case.boundary_costs.items()],
        columns=["community", "import_cost", "export_cost"],
    )
    options: dict[str, Any] = {
        "architecture": case.architecture,
        "graph": case.graph,
        "communities": case.community_of(),
        "upstream": None if case.upstream is None else Upstream(**case.upstream.model_dump()),
        "period_hours": case.horizon.period_hours,
        "quadratic": case.quadratic,
        "preferences": _case_preferences(case, feeder),
        "boundary_costs": boundary if len(boundary) else None,
        "budgets": pd.DataFrame([b.model_dump() for b in case.budgets]) if case.budgets else None,
        "participants": case.own_models(),
        "periods": list(range(case.horizon.periods)),
    }
    if case.graph == "neighbours":
        bus = _case_buses(case)
        options["graph"] = trading_graph(list(bus), "neighbours", bus=bus, feeder=feeder)
    return options


def _case_buses(case: CaseSpec) -> dict[str, Any]:
    """Every peer's bus, block peers and peers with their own model alike."""
    own = {spec.participant: spec.bus for spec in case.own_models()}
    return {**{pid: p.bus for pid, p in case.peers.items()}, **own}


class P2PAdapter:
    """P2P cases by ``dso``: ``network_aware`` clears within the network formulation
    (lossless: the P2P market refuses losses, which no peer would pay for); ``none`` and ``check``
    clear without it, and the AC check (and with ``check`` the DSO's cuts) run on the
    trades' injections. ``method: admm`` is not one model solve."""

    three_phase = False  # reads a feeder balanced (network.phases: one)

    def losses(self, case: CaseSpec) -> tuple[str, ...]:
        return ("none",)

    def build(self, case: CaseSpec, feeder, formulation) -> Built:
        bids, options = case_bids(case), market_options(case, feeder)
        if case.method == "admm":
            run = partial(clear_admm, bids, admm=case.admm.model_dump(), **options)
            return Built(run=lambda solve_options: run(), checks=_trade_injections)
        if case.dso != "network_aware":
            m = build(bids, **options)
            return Built(m, partial(results, m), _trade_injections)
        m = build(bids, network=feeder, formulation=formulation, **options)
        checks = grid_checks(m.handles)
        return Built(m, partial(results, m), checks, grid=m.handles)

    def finish(self, case: CaseSpec, result: Result, feeder, solve_options: dict) -> None:
        if case.dso == "check":
            result.tables["dso_cuts"] = dso_check(result, feeder)
            result.kpis["dso_cut_kw"] = float(result.tables["dso_cuts"]["cut_kw"].sum())


def _trade_injections(result: Result) -> dict[str, Injections]:
    return {"": table_injections(result.injections)}


ADAPTER = P2PAdapter()


def _case_preferences(case: CaseSpec, feeder) -> pd.DataFrame | None:
    table = pd.DataFrame(
        [p.model_dump() for p in case.preferences], columns=["peer", "partner", "cost", "period"]
    )
    if case.hop_cost > 0 and case.architecture != "community":
        bus = _case_buses(case)
        graph = trading_graph(list(bus), case.graph, bus=bus, feeder=feeder)
        hops = hop_costs(bus, feeder, case.hop_cost, graph).reindex(columns=table.columns)
        if not hops.empty:  # explicit preferences win over hop costs
            frames = [hops, table] if len(table) else [hops]
            table = pd.concat(frames).drop_duplicates(["peer", "partner", "period"], keep="last")
    return table if len(table) else None
