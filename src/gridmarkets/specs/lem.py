"""Case files of the local electricity market (``model: lem``): bids from a case."""

from __future__ import annotations

import json
from typing import Any, Literal

import pandas as pd
from pydantic import (
    Field,
    FiniteFloat,
    NonNegativeFloat,
    PositiveFloat,
    field_validator,
    model_validator,
)

from gridmarkets import pipeline
from gridmarkets.models import participants as parts
from gridmarkets.models.lem import BID_COLUMNS, Upstream, build, results, update
from gridmarkets.results import Result
from gridmarkets.solvers.persistent import PersistentLP
from gridmarkets.specs.adapter import LOSS_MODES, Built, grid_checks
from gridmarkets.specs.base import CaseBase, Spec


class BlockSpec(Spec):
    """One block: a quantity (kW; one value, or one per period) at a price (currency/MWh)."""

    quantity_kw: NonNegativeFloat | list[NonNegativeFloat]
    price: FiniteFloat
    indivisible: bool = False


class ParticipantSpec(Spec):
    """A buyer or seller with its blocks, at a bus of the feeder when there is one."""

    side: Literal["buy", "sell"]
    bus: int | None = None
    phase: str | None = Field(
        None,
        description=(
            "the phases it is connected to on a three-phase network (network.phases: "
            "three): 'a', 'b', 'c' (single-phase PV, an EV charger), two of them or 'abc'; "
            "absent: 'abc', balanced. A block on k phases puts a k-th of its power on each "
            "and settles at the mean of their prices."
        ),
    )
    blocks: list[BlockSpec] = Field(min_length=1)

    @field_validator("phase")
    @classmethod
    def _known_phase(cls, value: str | None) -> str | None:
        from gridmarkets.networks.three_phase import connection

        if value is None:
            return None
        if connection(value) is None:
            raise ValueError(f"{value!r} is not a, b, c or a combination of them (e.g. 'bc')")
        return connection(value)


class ShareBlock(Spec):
    """A share of a profile bid at one price."""

    share: float = Field(gt=0, le=1)
    price: FiniteFloat


class ProfileBidsSpec(Spec):
    """Bids of the feeder's own loads (buy) and static generators (sell) from their profiles.

    Each load bids its consumption per period split into ``buy_blocks`` by share; each
    generator offers its production split into ``sell_blocks``. Shares on a side must sum
    to 1, so the whole profile is bid.
    """

    buy_blocks: list[ShareBlock] = Field(min_length=1)
    sell_blocks: list[ShareBlock] = Field(min_length=1)
    scale: PositiveFloat = Field(1.0, description="multiplies every profile")

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> ProfileBidsSpec:
        for side in ("buy_blocks", "sell_blocks"):
            total = sum(b.share for b in getattr(self, side))
            if abs(total - 1) > 1e-9:
                raise ValueError(f"{side}: shares sum to {total:g}, not 1")
        return self


class UpstreamSpec(Spec):
    """Tariffs at the root (currency/MWh; one value or one per period) and a capacity."""

    import_price: FiniteFloat | list[FiniteFloat]
    export_price: FiniteFloat | list[FiniteFloat]
    capacity_kw: PositiveFloat | None = None


class _Keyed(Spec):
    """A participant with its own model in a case file: its key is its name."""

    participant: str = Field("", description="(set from its key)")


class CurveCase(_Keyed, parts.CurveBid):
    """A quadratic cost (sell) or utility (buy) (:class:`~gridmarkets.models.
    participants.CurveBid`)."""


class StorageCase(_Keyed, parts.StorageBid):
    """A battery offered to the market, :class:`~gridmarkets.models.participants.StorageBid`."""


class FlexibleLoadCase(_Keyed, parts.FlexibleLoad):
    """An energy budget over a window, :class:`~gridmarkets.models.participants.FlexibleLoad`."""


class DeviceCase(_Keyed, parts.DeviceBid):
    """A home's devices scheduled by the market (:class:`~gridmarkets.models.
    participants.DeviceBid`)."""


OWN_MODELS = ("curves", "storage", "flexible_loads", "devices")


class OwnModelSections(Spec):
    """The sections of a LEM or P2P case whose participants bring their own model
    (:mod:`gridmarkets.models.participants`), each keyed by the participant's name."""

    curves: dict[str, CurveCase] = Field(
        default_factory=dict, description="quadratic costs and utilities, by participant"
    )
    storage: dict[str, StorageCase] = Field(
        default_factory=dict, description="batteries offered to the market, by participant"
    )
    flexible_loads: dict[str, FlexibleLoadCase] = Field(
        default_factory=dict, description="energy budgets over windows, by participant"
    )
    devices: dict[str, DeviceCase] = Field(
        default_factory=dict, description="homes whose devices the market schedules"
    )

    def own_models(self) -> list:
        """The participants with their own model, each named by its key."""
        return [
            spec.model_copy(update={"participant": name})
            for section in OWN_MODELS
            for name, spec in getattr(self, section).items()
        ]


class CaseSpec(CaseBase, OwnModelSections):
    """A local electricity market case (``model: lem``)."""

    model: Literal["lem"]
    pricing: Literal["uniform", "pay_as_bid"] = "uniform"
    upstream: UpstreamSpec | None = Field(None, description="absent: an islanded market")
    participants: dict[str, ParticipantSpec] = Field(default_factory=dict)
    profile_bids: ProfileBidsSpec | None = None
    indivisible: bool = False
    min_acceptance: float | None = Field(None, gt=0, le=1)
    decompose: Literal["auto", "periods", "none"] = Field(
        "auto",
        description="solve the periods as LPs of their own, in parallel: 'auto' when "
        "nothing links them (no storage, flexible load, device bid with storage or "
        "shiftable devices, integer block), 'periods' (refused, naming what links "
        "them, when something does) or 'none' (one LP)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CaseSpec:
        n = self.horizon.periods
        if not self.participants and self.profile_bids is None and not self.own_models():
            raise ValueError(
                "a market needs participants, profile_bids, curves, storage, flexible_loads "
                "or devices"
            )
        if self.profile_bids is not None and self.network is None:
            raise ValueError("profile_bids: needs a network whose loads and generators bid")
        for pid, p in self.participants.items():
            if self.network is not None and p.bus is None:
                raise ValueError(f"participants.{pid}.bus: required on a network")
            if p.phase is not None and (self.network is None or self.network.phases != "three"):
                raise ValueError(
                    f"participants.{pid}.phase: needs a three-phase network (network.phases: "
                    "three); a single-phase network reads every participant balanced"
                )
            for k, block in enumerate(p.blocks):
                _check_length(block.quantity_kw, n, f"participants.{pid}.blocks.{k}.quantity_kw")
        self._check_own_models(n)
        if self.upstream is not None:
            _check_length(self.upstream.import_price, n, "upstream.import_price")
            _check_length(self.upstream.export_price, n, "upstream.export_price")
        return self

    def _check_own_models(self, n: int) -> None:
        check_own_models(self, set(self.participants), "participant", n)


def check_own_models(case: OwnModelSections, seen: set[str], what: str, n: int) -> set[str]:
    """The :data:`OWN_MODELS` sections of a LEM or P2P case over ``n`` periods: names
    unique across sections and the ``seen`` block bidders (each a ``what``); a bus on a
    network; per-period values and windows within the horizon. Every name, ``seen``
    included."""
    seen = set(seen)
    for section in OWN_MODELS:
        for name, spec in getattr(case, section).items():
            path = f"{section}.{name}"
            if name in seen:
                raise ValueError(f"{path}: the name {name!r} is already a {what}")
            seen.add(name)
            if case.network is not None and spec.bus is None:
                raise ValueError(f"{path}.bus: required on a network")
            for field in ("a", "b", "p_min_kw", "p_max_kw", "utility_per_mwh"):
                _check_length(getattr(spec, field, None), n, f"{path}.{field}")
            end = getattr(spec, "end", None)
            if end is not None and end > n:
                raise ValueError(f"{path}.end: {end} is after the horizon's {n} periods")
    return seen


def _check_length(value, periods: int, path: str) -> None:
    if isinstance(value, list) and len(value) != periods:
        raise ValueError(f"{path}: {len(value)} values for {periods} periods")


def case_bids(case: CaseSpec, feeder=None) -> pd.DataFrame:
    """The bids table of a case: its participants' blocks and its profile bids."""
    periods = range(case.horizon.periods)
    rows = [
        {
            "participant": pid,
            "side": p.side,
            "quantity_kw": q,
            "price": block.price,
            "period": t,
            "block": k,
            "bus": p.bus,
            "indivisible": block.indivisible,
            "phase": p.phase,
        }
        for pid, p in case.participants.items()
        for k, block in enumerate(p.blocks)
        for t, q in zip(periods, _values(block.quantity_kw, len(periods)), strict=True)
    ]
    tables = [pd.DataFrame(rows, columns=[*BID_COLUMNS, "indivisible", "phase"])] if rows else []
    if case.profile_bids is not None:
        tables.append(profile_bids(case, feeder).assign(indivisible=False))
    bids = pd.concat(tables, ignore_index=True)
    if case.network is None or case.network.phases != "three":
        bids = bids.drop(columns="phase", errors="ignore")  # balanced: no connections
    return bids


def profile_bids(case: CaseSpec, feeder) -> pd.DataFrame:
    """Bids of the feeder's loads and offers of its generators from their profiles.

    One buyer ``load_<bus>`` and one seller ``pv_<bus>`` per bus that has loads or
    static generators, each block with the elements' own reactive power in proportion
    (their profiles' kvar); SimBench's yearly 15-minute profiles are read from the
    horizon's start (1 January 00:00 when it has none).
    """
    from gridmarkets.networks import feeder_profiles

    spec, horizon = case.profile_bids, case.horizon
    start = 0
    if horizon.start is not None:
        new_year = horizon.start.replace(month=1, day=1, hour=0, minute=0, second=0)
        start = int((horizon.start - new_year).total_seconds() // 900)
    profiles = feeder_profiles(feeder, start, horizon.periods, horizon.resolution_minutes)
    sides = (
        ("buy", "load", "load", spec.buy_blocks),
        ("sell", "pv", "sgen", spec.sell_blocks),
    )
    frames = []
    for side, prefix, element, blocks in sides:
        column = f"{element}_p_kw"
        present = profiles.groupby("bus")[column].transform("max") > 0
        rows = profiles[present]
        for k, block in enumerate(blocks):
            frames.append(
                pd.DataFrame(
                    {
                        "participant": prefix + "_" + rows["bus"].astype(str),
                        "side": side,
                        "quantity_kw": rows[column].clip(lower=0) * block.share * spec.scale,
                        "q_kvar": rows[f"{element}_q_kvar"] * block.share * spec.scale,
                        "price": block.price,
                        "period": rows["period"],
                        "block": k,
                        "bus": rows["bus"],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _values(value, n: int) -> list:
    return value if isinstance(value, list) else [value] * n


def _case_market(case: CaseSpec, feeder) -> tuple[pd.DataFrame | None, Upstream | None]:
    upstream = None if case.upstream is None else Upstream(**case.upstream.model_dump())
    has_bids = case.participants or case.profile_bids is not None
    return (case_bids(case, feeder) if has_bids else None), upstream


def _build_options(case: CaseSpec) -> dict[str, Any]:
    options = {
        "period_hours": case.horizon.period_hours,
        "indivisible": case.indivisible,
        "min_acceptance": case.min_acceptance,
        "decompose": case.decompose,
    }
    own = case.own_models()
    if own:  # only then: a block market builds as before
        options |= {"participants": own, "periods": list(range(case.horizon.periods))}
    return options


class LemAdapter:
    """A market case is one clearing; on a feeder its bids meet the network formulation
    (every losses mode), whose injections (P and Q of the bids) the AC check runs."""

    three_phase = True  # network.phases: three clears on LinDist3Flow (lossless)

    def losses(self, case: CaseSpec) -> tuple[str, ...]:
        """Every mode on a single-phase feeder; none without one, or on a three-phase
        feeder (LinDist3Flow has no loss model)."""
        if case.network is None or case.network.phases == "three":
            return ("none",)
        return LOSS_MODES

    def build(self, case: CaseSpec, feeder, formulation) -> Built:
        bids, upstream = _case_market(case, feeder)
        m = build(
            bids, upstream=upstream, network=feeder, formulation=formulation, **_build_options(case)
        )
        return market(m, case)

    def finish(self, case: CaseSpec, result: Result, feeder, solve_options: dict) -> None:
        """Nothing to add (the plots are :func:`gridmarkets.plots.plots_for`'s)."""


def market(m, case: CaseSpec) -> Built:
    """A built (or updated) market model as the pipeline's :class:`Built`."""
    return Built(
        model=m,
        read=lambda solution: results(m, solution, case.pricing),
        checks=grid_checks(m.handles),
        grid=m.handles,
    )


ADAPTER = LemAdapter()


def structure_key(case: CaseSpec) -> str:
    """The case without the data :func:`update` can change: blocks' prices and
    quantities and the upstream tariffs. Cases with equal keys build the same model."""
    data = case.model_dump(mode="json")
    for participant in data["participants"].values():
        for block in participant["blocks"]:
            del block["price"], block["quantity_kw"]
    if data["upstream"] is not None:
        del data["upstream"]["import_price"], data["upstream"]["export_price"]
    return json.dumps(data, sort_keys=True)


class ReusingRunner(pipeline.ReusingRunner):
    """:func:`gridmarkets.pipeline.run_case` that keeps, between calls, what the next
    case can reuse.

    - The Feeder, while the network is the same (:class:`gridmarkets.pipeline.ReusingRunner`).
    - The built LP compiled to HiGHS arrays, while the next case differs only in data
      (:func:`structure_key` is equal): :func:`~gridmarkets.models.lem.update` changes
      the model in place and a :class:`~gridmarkets.solvers.persistent.PersistentLP`
      solves it from the same arrays, so the answer is the one ``run_case`` gets. A MILP
      market (indivisible blocks, minimum acceptances), a market with curves, storage,
      flexible loads or devices, and ``network.losses: linear`` or
      ``iterate`` (which change the model's loss coefficients) are built for every case.

    Not thread-safe: one per worker thread. After a call that raises, nothing but the
    Feeder is kept. ``reused`` says whether the last call reused a built model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reused = False
        self._market: tuple[str, PersistentLP] | None = None

    def __call__(self, case: CaseSpec, solve_options: dict[str, Any]) -> Result:
        key = structure_key(case)
        lp = self._kept(key)
        self.reused = lp is not None
        run = pipeline.CaseRun.start(case, self.feeder(case))
        if lp is not None:
            bids, upstream = _case_market(case, run.feeder)
            update(lp.model, bids, upstream=upstream)
            built = market(lp.model, case)
        else:
            built = run.build()
            if _built_every_time(built.model) or run.losses in ("linear", "iterate"):
                result, iteration = run.solve(built, solve_options)
                return run.complete(built, result, iteration, solve_options)
            lp = PersistentLP(built.model)
        result = built.read(lp.solve(**solve_options))
        self._market = (key, lp)
        return run.complete(built, result, None, solve_options)

    def _kept(self, key: str) -> PersistentLP | None:
        """The kept LP if it was built for ``key``; forgotten until this call succeeds."""
        kept, self._market = self._market, None
        return kept[1] if kept is not None and kept[0] == key else None


def _built_every_time(m) -> bool:
    """A MILP (indivisible blocks, minimum acceptances) or a market with participants of
    their own model (:func:`~gridmarkets.models.lem.update` changes blocks only)."""
    return hasattr(m, "INTEGER_BIDS") or bool(m.participant_specs) or bool(len(m.curves))
