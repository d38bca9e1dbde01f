"""The case element each constraint and variable of a built model comes from.

A diagnosis (:mod:`gridmarkets.solvers.diagnose`) names Pyomo components such as
``home[h3].ev.soc_dynamics[5]`` or ``accepted_kw[1235]``; :func:`labeler` maps them back
to the case file: ``prosumers.h3.ev.stays.0``, ``participants.pv_a.blocks.0`` or
``profile_bids.sell_blocks.0 for pv_12``, ``prosumers.h3.import_limit_kw``,
``upstream.capacity_kw``, ``network bus 5`` — with the period where there is one.

The labels are derived from the models' own structure, without a table per model:

- a block indexed by a key that is a key of one of the case's (or the enclosing
  element's) mappings is that entry (``home[h3]`` in a case with ``prosumers: {h3:
  ...}`` is ``prosumers.h3``; ``appliance[kiln]`` inside it ``...appliances.kiln``);
- an unindexed block named as a field of the enclosing element is that field
  (``battery``, ``ev``, ``pv``, ``heat_pump``; the inflexible ``load`` is ``load_kw``);
- a variable whose bound is a case field is that field (a home's import and export
  are bounded by its ``import_limit_kw`` and ``export_limit_kw``, a community's
  connection by ``connection.capacity_kw``, the LEM's upstream import and export by
  ``upstream.capacity_kw``);
- an EV's members are the stay their period falls in;
- an LEM or P2P block ``b`` (``accepted_kw[b]``, ...) is row ``b`` of the model's bids
  table: a participant's or peer's block (``peers.pv_a.blocks.0``) or a profile bid;
- a member indexed by a key of one of the case's mappings is that entry (a P2P peer's
  balance and trades ``energy_balance[pv_a, 2]``: ``peers.pv_a``); a community
  manager's is its community (``community north``);
- a flexibility offer ``o`` is row ``o`` of the model's offers table: a seller's offer
  (``sellers.battery_9.offers.1``) or a PV bus's (``pv_offers for pv_12``); a seller's
  limits are its ``up_kw``, ``down_kw`` and ``s_max_kva`` (a PV bus's rating
  ``pv_offers.inverter_kva_factor for pv_12``); a TSO requirement is
  ``tso_requirements.<product>``; a DSO need, row ``n`` of the model's needs table, is
  the margin that sets it at its bus or branch (``loading_margin_percent at network
  trafo 0``);
- the aggregator's commitment and incentive rows are ``commitment_kw``,
  ``commitment_kvar``, ``incentive.levels``, ``incentive.min_per_mwh`` and
  ``incentive.max_per_mwh``; a follower's KKT rows are its home (``prosumers.c``), their
  big-M bound on a multiplier ``big_m``, and have no period (they are numbered);
- the network formulation's members are the feeder's bus or branch (``network bus 5``,
  ``network line 12``), in a flexibility market with their scenario (``scenario
  tso_up, network bus 5``);
- the period is the member's index in the model's ``PERIODS`` (last position), or the
  period of the table row the member stands for.
"""

from __future__ import annotations

from typing import Any

import pyomo.environ as pyo

from gridmarkets.models.p2p import MANAGER_PREFIX
from gridmarkets.solvers.diagnose import Conflict, Diagnosis, Labeler

_FIELD_ALIASES = {"load": "load_kw"}
_BOUND_FIELDS = {  # a variable's upper bound (lower for those in _LOWER_FIELDS)
    "p_import_kw": "import_limit_kw",
    "p_export_kw": "export_limit_kw",
    "import_kw": "upstream.capacity_kw",
    "export_kw": "upstream.capacity_kw",
    "p_grid_import_kw": "connection.capacity_kw",
    "p_grid_export_kw": "connection.capacity_kw",
    "group_incentive_per_mwh": "incentive.max_per_mwh",
}
_LOWER_FIELDS = {"group_incentive_per_mwh": "incentive.min_per_mwh"}
_FAMILY_FIELDS = {  # model-level families that stand for one case field
    "commitment_balance": "commitment_kw",
    "deviation_up_kw": "commitment_kw",
    "deviation_down_kw": "commitment_kw",
    "reactive_commitment_balance": "commitment_kvar",
    "deviation_up_kvar": "commitment_kvar",
    "deviation_down_kvar": "commitment_kvar",
    "one_level": "incentive.levels",
    "level_chosen": "incentive.levels",
    "multiplier_bigm": "big_m",  # a follower's KKT multiplier held by the big-M
}
_SELLER_LIMITS = {
    "headroom_up": "up_kw",
    "headroom_down": "down_kw",
    "inverter_rating": "s_max_kva",
}
_NEED_MARGINS = {"need_thermal": "loading_margin_percent", "need_voltage": "voltage_margin_pu"}
_NOT_PERIODS = {"STAYS"}  # index sets of integers that are not periods
_BID_FAMILIES = {"accepted_kw", "is_accepted", "acceptance_upper", "acceptance_lower"}


def labeler(case: Any, model: Any) -> Labeler:
    """The function :meth:`~gridmarkets.solvers.diagnose.Diagnosis.in_case_terms` takes:
    a member (a component of ``model``, built from ``case``) -> (case element, period)
    or None."""
    periods = set(model.PERIODS) if hasattr(model, "PERIODS") else set()

    def label(conflict: Conflict) -> tuple[str, Any] | None:
        component = conflict.component
        blocks = _ancestry(component, model)
        index = _index(component)
        period = index[-1] if index and _hashable(index[-1]) and index[-1] in periods else None
        if _last_set(component) in _NOT_PERIODS or _is_list(component):
            period = None
        name = component.parent_component().local_name
        if "network" in [b.parent_component().local_name for b in blocks]:  # attach_grid's
            return _network_element(component, model, blocks, index), period
        if not blocks:
            row = _row_element(case, model, name, index)
            if row is not None:
                return row
        path, spec = _walk(case, blocks)
        bound = _bound_field(name, conflict)
        if bound and hasattr(spec, bound.split(".")[0]):
            path, spec = [*path, bound], None  # the bound is that case field
        elif hasattr(case, _FAMILY_FIELDS.get(name, "-").split(".")[0]):
            path = [_FAMILY_FIELDS[name]]
        elif not path and index:  # indexed by a case entry: a P2P peer, its community
            path = _keyed(case, index[0])
        if hasattr(spec, "stays"):  # an EV: the stay of the period (or the stay indexed)
            stay = _stay(spec, name, index, period)
            path = path if stay is None else [*path, "stays", str(stay)]
        return ".".join(path), period

    return label


def in_case_terms(diagnosis: Diagnosis | None, case: Any) -> Diagnosis | None:
    """``diagnosis`` with the elements of ``case``, unless it has them already (a model
    the pipeline built carries its labels; one a case module built itself, such as a
    coalition's re-solve, gets them here)."""
    if diagnosis is None or diagnosis.elements or not diagnosis.conflicts:
        return diagnosis
    model = diagnosis.conflicts[0].component.model()
    return diagnosis.in_case_terms(labeler(case, model))


def _bound_field(name: str, conflict: Conflict) -> str:
    """The case field a variable's bound in ``conflict`` is, or ""."""
    if conflict.kind != "variable bound":
        return ""
    if "upper" in conflict.detail:
        return _BOUND_FIELDS.get(name, "")
    return _LOWER_FIELDS.get(name, "")


def _keyed(case: Any, key: Any) -> list[str]:
    """The case entry ``key`` is a key of (``peers.pv_a``), a community manager's
    community (``community north``), or []."""
    entry = _entry(case, key) if _hashable(key) else None
    if entry is not None:
        return entry[0]
    if isinstance(key, str) and key.startswith(MANAGER_PREFIX):
        return [f"community {key.removeprefix(MANAGER_PREFIX)}"]
    return []


def _ancestry(component: Any, model: Any) -> list:
    """The block datas between the model and the component, outermost first."""
    blocks = []
    block = component.parent_block()
    while block is not None and block is not model:
        blocks.append(block)
        block = block.parent_block()
    return blocks[::-1]


def _index(component: Any) -> tuple:
    index = component.index()
    return index if isinstance(index, tuple) else ((index,) if index is not None else ())


def _last_set(component: Any) -> str:
    sets = list(component.parent_component().index_set().subsets())
    return sets[-1].local_name if sets else ""


def _is_list(component: Any) -> bool:
    """A ConstraintList or VarList (a follower's KKT rows): numbered, not by period."""
    return isinstance(component.parent_component(), pyo.ConstraintList | pyo.VarList)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _walk(case: Any, blocks: list) -> tuple[list[str], Any]:
    """The case path and the spec object the blocks stand for."""
    path: list[str] = []
    spec = case
    for block in blocks:
        name, key = block.parent_component().local_name, block.index()
        entry = _entry(spec, key) if key is not None else None
        if entry is not None:
            path += entry[0]
            spec = entry[1]
        elif key is None:
            name = _FIELD_ALIASES.get(name, name)
            if hasattr(spec, name):  # a device; not a block of the model's own (kkt)
                path, spec = [*path, name], getattr(spec, name)
        else:
            path.append(f"{name}[{key}]")
    return path, spec


def _entry(spec: Any, key: Any) -> tuple[list[str], Any] | None:
    """The mapping field of ``spec`` that has ``key``: ([field, key], its value)."""
    for name in type(spec).model_fields if hasattr(type(spec), "model_fields") else ():
        value = getattr(spec, name)
        if isinstance(value, dict) and key in value:
            return [name, str(key)], value[key]
    return None


def _stay(ev: Any, name: str, index: tuple, period: Any) -> int | None:
    if name == "energy_at_departure" and index:
        return int(index[0])
    for k, stay in enumerate(ev.stays):
        if period is not None and stay.arrival <= period < stay.departure:
            return k
    return None


def _row_element(case: Any, model: Any, name: str, index: tuple) -> tuple[str, Any] | None:
    """A model-level member that stands for a row of one of the model's tables (bids,
    offers, needs) or for a seller or a TSO product of a flexibility case."""
    if not index:
        return None
    if name in _BID_FAMILIES:
        bids = getattr(model, "bids", None)
        if bids is None and hasattr(model, "market"):  # P2P: its market's bids
            bids = getattr(model.market, "bids", None)
        if bids is not None:
            return _bid_element(case, bids, index[0])
        offers = getattr(model, "offers", None)
        return None if offers is None else _offer_element(case, offers, index[0])
    if name in ("tso_requirement", "shortfall_kw"):
        return f"tso_requirements.{index[0]}", index[1]
    if name in _SELLER_LIMITS:
        return _seller_limit(case, name, index[0]), index[1]
    if name in _NEED_MARGINS and hasattr(model, "needs"):
        need = model.needs.loc[index[0]]
        where = _feeder_element(model.feeder, need["element"], int(need["index"]))
        return f"{_NEED_MARGINS[name]} at {where}", int(need["period"])
    return None


def _bid_element(case: Any, bids: Any, row: Any) -> tuple[str, Any] | None:
    """A participant's or peer's block, or the profile bid a generated participant
    comes from."""
    if row not in bids.index:
        return None
    bid = bids.loc[row]
    period = int(bid["period"])
    owner, block = bid["participant"], int(bid["block"])
    for field in ("participants", "peers"):
        if owner in (getattr(case, field, None) or {}):
            return f"{field}.{owner}.blocks.{block}", period
    return f"profile_bids.{bid['side']}_blocks.{block} for {owner}", period


def _offer_element(case: Any, offers: Any, row: Any) -> tuple[str, Any] | None:
    """A seller's offer (its position among the seller's offers of the period, in the
    order of the case), or the PV offers of a PV bus."""
    if row not in offers.index:
        return None
    offer = offers.loc[row]
    seller, period = offer["seller"], int(offer["period"])
    if seller not in (getattr(case, "sellers", None) or {}):
        return _seller(case, seller), period
    same = offers[(offers["seller"] == seller) & (offers["period"] == period)]
    return f"sellers.{seller}.offers.{same.index.get_loc(row)}", period


def _seller_limit(case: Any, name: str, seller: str) -> str:
    """A seller's headroom or rating; a PV bus's rating is ``pv_offers.inverter_kva_factor``
    and its downward room its output (``pv_offers``)."""
    if seller in (getattr(case, "sellers", None) or {}):
        return f"sellers.{seller}.{_SELLER_LIMITS[name]}"
    if name == "inverter_rating":
        return f"pv_offers.inverter_kva_factor for {seller}"
    return _seller(case, seller)


def _seller(case: Any, seller: str) -> str:
    if seller in (getattr(case, "sellers", None) or {}):
        return f"sellers.{seller}"
    return f"pv_offers for {seller}"


def _network_element(component: Any, model: Any, blocks: list, index: tuple) -> str:
    """``network bus <b>`` or ``network <kind> <element>`` of the feeder's branch;
    ``scenario <s>, ...`` inside a flexibility market's scenario."""
    scenario = next(
        (b.index() for b in blocks if b.parent_component().local_name == "scenario"), None
    )
    prefix = "" if scenario is None else f"scenario {scenario}, "
    feeder = _feeder(model, blocks)
    sets = [s.local_name for s in component.parent_component().index_set().subsets()]
    if feeder is None or not index or not sets:
        return f"{prefix}network"
    if "BUSES" in sets[0]:  # BUSES, BUSES_BELOW_ROOT
        return f"{prefix}network bus {index[0]}"
    if "BRANCHES" in sets[0] and index[0] in feeder.branches.index:
        return f"{prefix}{_feeder_element(feeder, 'branch', index[0])}"
    return f"{prefix}network"


def _feeder_element(feeder: Any, element: str, index: int) -> str:
    """``network bus <b>`` or ``network <kind> <element>`` of the feeder's branch."""
    if element != "bus" and index in feeder.branches.index:
        branch = feeder.branches.loc[index]
        return f"network {branch['kind']} {branch['element']}"
    return f"network bus {index}"


def _feeder(model: Any, blocks: list) -> Any:
    """The feeder of the nearest block (or the model) that has one or its grid's handles."""
    for owner in (*reversed(blocks), model):
        handles = getattr(owner, "handles", None)
        for feeder in (getattr(owner, "feeder", None), getattr(handles, "feeder", None)):
            if feeder is not None:
                return feeder
    return None
