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
- an LEM block ``b`` (``accepted_kw[b]``, ...) is row ``b`` of the model's bids table:
  a participant's block or a profile bid;
- the network formulation's members are the feeder's bus or branch (``network bus 5``,
  ``network line 12``);
- the period is the member's index in the model's ``PERIODS`` (last position).
"""

from __future__ import annotations

from typing import Any

from gridmarkets.solvers.diagnose import Conflict, Diagnosis, Labeler

_FIELD_ALIASES = {"load": "load_kw"}
_BOUND_FIELDS = {
    "p_import_kw": "import_limit_kw",
    "p_export_kw": "export_limit_kw",
    "import_kw": "upstream.capacity_kw",
    "export_kw": "upstream.capacity_kw",
    "p_grid_import_kw": "connection.capacity_kw",
    "p_grid_export_kw": "connection.capacity_kw",
}
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
        if _last_set(component) in _NOT_PERIODS:
            period = None
        if "network" in [b.parent_component().local_name for b in blocks]:  # attach_grid's
            return _network_element(component, model, index), period
        if not blocks and component.parent_component().local_name in _BID_FAMILIES:
            return _bid_element(case, model, index[0])
        path, spec = _walk(case, blocks)
        name = component.parent_component().local_name
        bound = _BOUND_FIELDS.get(name, "")
        upper = conflict.kind == "variable bound" and "upper" in conflict.detail
        if upper and hasattr(spec, bound.split(".")[0]):
            path, spec = [*path, bound], None  # the bound is that case field
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
            path, spec = [*path, name], getattr(spec, name, None)
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


def _bid_element(case: Any, model: Any, row: Any) -> tuple[str, Any] | None:
    """A participant's block, or the profile bid a generated participant comes from."""
    bids = getattr(model, "bids", None)
    if bids is None or row not in bids.index:
        return None
    bid = bids.loc[row]
    period = int(bid["period"])
    owner, block = bid["participant"], int(bid["block"])
    if owner in (getattr(case, "participants", None) or {}):
        return f"participants.{owner}.blocks.{block}", period
    return f"profile_bids.{bid['side']}_blocks.{block} for {owner}", period


def _network_element(component: Any, model: Any, index: tuple) -> str:
    """``network bus <b>`` or ``network <kind> <element>`` of the feeder's branch."""
    feeder = getattr(model, "feeder", None)
    sets = [s.local_name for s in component.parent_component().index_set().subsets()]
    if feeder is None or not index or not sets:
        return "network"
    if "BUSES" in sets[0]:  # BUSES, BUSES_BELOW_ROOT
        return f"network bus {index[0]}"
    if "BRANCHES" in sets[0] and index[0] in feeder.branches.index:
        branch = feeder.branches.loc[index[0]]
        return f"network {branch['kind']} {branch['element']}"
    return "network"
