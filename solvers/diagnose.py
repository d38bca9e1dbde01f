"""Explain infeasibility by the constraints that conflict, in bounded time.

An elastic re-solve first: every row gets a nonnegative slack in each direction and
the total slack is minimised over the LP (a MILP's relaxation); the rows that need
slack are where the model fails (its *extent*). Then an irreducible infeasible
subsystem (IIS, HiGHS) near the row that needs the most: the rows within k steps of it
(row - column - row), k growing until they are infeasible on their own, and their IIS,
which is an IIS of the whole model. A market infeasible in every period gets the
conflict of one period in seconds where the IIS of the whole model took minutes.

A MILP whose relaxation is feasible: the elastic re-solve keeps the integers, and its
relaxed rows are the conflict; to say what they conflict with, a second elastic
re-solve holds those rows exactly, the integers are fixed where it put them, and the
IIS of that LP names the constraints and bounds they meet there (an appliance that must
run meets the import limit and the balance of the periods it runs in).

The diagnosis has a time limit of its own (the caller's ``time_limit``, else
:data:`DEFAULT_TIME_LIMIT_S`): when it runs out before an IIS, the extent is reported as
a partial answer, marked as such.

Members carry their Pyomo names, so a family such as
``prosumers[h3].battery.soc_dynamics[5]`` carries its participant, asset and period;
:meth:`Diagnosis.in_case_terms` adds the case element each comes from (a participant,
a device, a case field), given a function that knows the case
(:func:`gridmarkets.case_terms.labeler`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import highspy
import numpy as np
import scipy.sparse as sp

from gridmarkets.solvers.highs import INF, StandardForm, new_highs

DEFAULT_TIME_LIMIT_S = 30.0
LABELER_ATTR = "_gridmarkets_labeler"  # a model's own Labeler, set by whoever built it
_TOL = 1e-7
_SHOWN = 4  # members listed per family in a report
_TAILS = 8  # elements listed per report line
_BOUND_NAMES = {
    int(highspy.IisBoundStatus.kIisBoundStatusLower): "lower",
    int(highspy.IisBoundStatus.kIisBoundStatusUpper): "upper",
    int(highspy.IisBoundStatus.kIisBoundStatusBoxed): "lower and upper",
}
_MARGINAL = (
    f": an elastic re-solve holds every constraint within {_TOL:g}, so the model is "
    "infeasible only by the solver's tolerances (a limit at the very edge of what the data "
    "allow, or badly scaled numbers)"
)
_HOW = {
    "iis": "irreducible infeasible subsystem (HiGHS IIS)",
    "elastic": "elastic re-solve (least total violation)",
    "elastic+iis": "elastic re-solve, then the IIS where its integers lie",
}

#: the case element a member (its ``component``, ``kind`` and ``detail``) comes from,
#: and its period, or None
Labeler = Callable[["Conflict"], "tuple[str, Any] | None"]


@dataclass(frozen=True)
class Conflict:
    """One member of a conflicting set: a constraint or a variable bound.

    ``element`` is the case element it comes from (``participants.pv_a``,
    ``prosumers.h3.ev.stays.0``, ``prosumers.h3.import_limit_kw``; "" until
    :meth:`Diagnosis.in_case_terms` or when no element is known) and ``period`` its
    period, if any. ``component`` is the Pyomo constraint or variable.
    """

    name: str
    family: str
    kind: str  # "constraint" or "variable bound"
    detail: str
    element: str = ""
    period: Any = None
    component: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Diagnosis:
    """The constraints (and bounds) that cannot hold together, and how they were found.

    ``complete`` is False when the time limit stopped the search: the conflicts are
    then what was found by then (possibly none).
    """

    method: str  # "iis", "elastic" or "elastic+iis"
    conflicts: tuple[Conflict, ...]
    complete: bool = True
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    extent: tuple[Conflict, ...] = ()  # the rows an elastic re-solve relaxes
    seconds: float | None = None  # how long the diagnosis took

    @property
    def families(self) -> list[str]:
        """Names of the constraint families involved, in first-seen order."""
        return list(dict.fromkeys(c.family for c in self.conflicts))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.conflicts]

    @property
    def elements(self) -> list[str]:
        """The case elements involved, in first-seen order ("" not counted)."""
        return list(dict.fromkeys(c.element for c in self.conflicts if c.element))

    def in_case_terms(self, label: Labeler) -> Diagnosis:
        """The same diagnosis with each member's case element and period from ``label``
        (called with the member; None: no element)."""
        return replace(
            self, conflicts=_labelled(self.conflicts, label), extent=_labelled(self.extent, label)
        )

    def report(self) -> str:
        """A few lines a user can act on: by case element where known, else by family."""
        how = _HOW[self.method]
        partial = ""
        if not self.complete:
            partial = (
                f"\npartial answer: the diagnosis stopped at its {self.time_limit_s:g} s time "
                "limit (give a longer --time-limit for a complete one)"
            )
        took = "" if self.seconds is None else f" in {self.seconds:.1f} s"
        if not self.conflicts:
            why = "" if partial else _MARGINAL
            return f"diagnosis ({how}{took}): no conflicting set could be isolated{why}{partial}"
        if self.elements:
            lines = [f"conflicting case elements, by {how}{took}:"]
            groups = _grouped(self.conflicts, lambda c: _head(c.element) or f"(model) {c.family}")
        else:
            lines = [f"conflicting constraints, by {how}{took}, by family:"]
            groups = _grouped(self.conflicts, lambda c: c.family)
        for key, members in groups.items():
            lines.append(f"  - {key}{_tails(members)}: {_describe(members)}")
        if self.method == "iis" and len(self.extent) > 1:
            periods = _ranges([c.period for c in self.extent if c.period is not None])
            where = f" in period(s) {periods}" if periods else ""
            lines.append(
                f"where it fails: an elastic re-solve relaxes {len(self.extent)} "
                f"constraint(s){where}; the set above is the conflict around one of them"
            )
        return "\n".join(lines) + partial


def _labelled(conflicts: tuple[Conflict, ...], label: Labeler) -> tuple[Conflict, ...]:
    labelled = []
    for conflict in conflicts:
        try:
            found = label(conflict) if conflict.component is not None else None
        except Exception:  # a label that fails must not hide the diagnosis: no element
            found = None
        element, period = found or ("", None)
        labelled.append(replace(conflict, element=element, period=period))
    return tuple(labelled)


def _head(element: str) -> str:
    """An element's text before its last word when it has several (``network bus 5``:
    ``network bus``): elements that differ only there share a report line."""
    return element.rsplit(" ", 1)[0]


def _tails(members: list[Conflict]) -> str:
    tails = list(dict.fromkeys(c.element.rsplit(" ", 1)[1] for c in members if " " in c.element))
    if not tails:
        return ""
    more = f" and {len(tails) - _TAILS} more" if len(tails) > _TAILS else ""
    return " " + ", ".join(tails[:_TAILS]) + more


def _grouped(conflicts, key) -> dict[str, list[Conflict]]:
    groups: dict[str, list[Conflict]] = {}
    for conflict in conflicts:
        groups.setdefault(key(conflict), []).append(conflict)
    return groups


def _describe(members: list[Conflict]) -> str:
    """``family (kind) in periods 0-5, 9 [names...]`` per family of the members."""
    parts = []
    for group in _grouped(members, lambda c: f"{c.family}|{c.kind}").values():
        what = group[0].family.rsplit(".", 1)[-1]
        if group[0].kind != "constraint":
            what += f" ({group[0].detail.split(',')[0]})"
        periods = _ranges([c.period for c in group if c.period is not None])
        shown = ", ".join(c.name + (f" ({c.detail})" if c.detail else "") for c in group[:_SHOWN])
        more = f", and {len(group) - _SHOWN} more" if len(group) > _SHOWN else ""
        when = f" in period(s) {periods}" if periods else ""
        parts.append(f"{what}{when} [{shown}{more}]")
    return "; ".join(parts)


def _ranges(periods: list) -> str:
    """``0-5, 9, 12-13`` for integer periods; their text otherwise."""
    values = sorted(set(periods), key=str)
    if not all(isinstance(p, int | np.integer) for p in values):
        return ", ".join(map(str, values))
    values = sorted(int(p) for p in values)
    spans: list[list[int]] = []
    for p in values:
        if spans and p == spans[-1][1] + 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class _Clock:
    """The diagnosis's time budget."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def elapsed(self) -> float:
        return self.seconds - (self.deadline - time.monotonic())


def _row_conflict(con, detail: str) -> Conflict:
    return Conflict(con.name, con.parent_component().name, "constraint", detail, component=con)


def _bound_conflict(var, side: str, lower: float, upper: float) -> Conflict:
    bounds = f"fixed at {lower:g}" if lower == upper else f"[{lower:g}, {upper:g}]"
    detail = f"{side} bound, {bounds}"
    return Conflict(var.name, var.parent_component().name, "variable bound", detail, component=var)


def _highs(options: dict, clock: _Clock) -> highspy.Highs:
    highs = new_highs()
    for name, value in options.items():
        highs.setOptionValue(name, value)
    highs.setOptionValue("time_limit", max(clock.left(), 1e-3))
    return highs


def _elastic(
    lp: highspy.HighsLp, options: dict, clock: _Clock, relax: bool, hard: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Minimise the total slack the rows of ``lp`` need (its integers kept unless
    ``relax``); rows in ``hard`` get none. Returns (slack per row, column values), or
    (None, None) without an answer (no such point, or the time ran out)."""
    n, m = lp.num_col_, lp.num_row_
    highs = _highs(options, clock)
    highs.passModel(lp)
    if relax and len(lp.integrality_):
        highs.changeColsIntegrality(
            n, np.arange(n, dtype=np.int32), np.full(n, highspy.HighsVarType.kContinuous)
        )
    highs.changeObjectiveSense(highspy.ObjSense.kMinimize)
    highs.changeColsCost(n, np.arange(n, dtype=np.int32), np.zeros(n))
    upper = np.full(m, INF)
    if hard is not None:
        upper[hard] = 0.0
    rows = np.arange(m, dtype=np.int32)
    for sign in (1.0, -1.0):  # one slack that adds to each row, one that subtracts
        highs.addCols(m, np.ones(m), np.zeros(m), upper, m, rows, rows, np.full(m, sign))
    highs.run()
    if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None, None
    values = np.asarray(highs.getSolution().col_value)
    return values[n : n + m] + values[n + m : n + 2 * m], values[:n]


def _slack_conflicts(form: StandardForm, slack: np.ndarray) -> list[Conflict]:
    conflicts: dict[str, Conflict] = {}
    for i in np.flatnonzero(slack > _TOL):
        con = form.rows[i]
        detail = f"needs {slack[i]:.6g} of relaxation"
        conflicts.setdefault(con.name, _row_conflict(con, detail))
    return list(conflicts.values())


def _matrix(lp: highspy.HighsLp) -> sp.csc_array:
    a = lp.a_matrix_
    shape = (lp.num_row_, lp.num_col_)
    parts = (np.asarray(a.value_), np.asarray(a.index_), np.asarray(a.start_))
    if a.format_ == highspy.MatrixFormat.kColwise:
        return sp.csc_array(parts, shape=shape)
    return sp.csr_array(parts, shape=shape).tocsc()


def _sub_lp(lp: highspy.HighsLp, a: sp.csc_array, rows, cols) -> highspy.HighsLp:
    """The LP of ``rows`` over ``cols`` (every column those rows touch), no objective."""
    part = a[rows][:, cols].tocsc()
    matrix = highspy.HighsSparseMatrix()
    matrix.format_ = highspy.MatrixFormat.kColwise
    matrix.num_row_, matrix.num_col_ = len(rows), len(cols)
    matrix.start_, matrix.index_, matrix.value_ = part.indptr, part.indices, part.data
    sub = highspy.HighsLp()
    sub.num_col_, sub.num_row_ = len(cols), len(rows)
    sub.col_cost_ = np.zeros(len(cols))
    sub.col_lower_ = np.asarray(lp.col_lower_)[cols]
    sub.col_upper_ = np.asarray(lp.col_upper_)[cols]
    sub.row_lower_ = np.asarray(lp.row_lower_)[rows]
    sub.row_upper_ = np.asarray(lp.row_upper_)[rows]
    sub.a_matrix_ = matrix
    return sub


def _iis(form: StandardForm, lp, rows, cols, options: dict, clock: _Clock) -> list[Conflict]:
    """The IIS of the sub-LP ``lp`` (its rows and columns are ``rows`` and ``cols`` of
    the model), or [] when it is feasible (or the time ran out)."""
    highs = _highs(options, clock)
    highs.setOptionValue("iis_strategy", int(highspy.IisStrategy.kIisStrategyIrreducible))
    highs.setOptionValue("iis_time_limit", max(clock.left(), 1e-3))
    highs.passModel(lp)
    status, iis = highs.getIis()
    if status != highspy.HighsStatus.kOk or not iis.valid_ or not len(iis.row_index_):
        return []
    members = {
        form.rows[rows[i]].name: _row_conflict(form.rows[rows[i]], "") for i in iis.row_index_
    }
    conflicts = list(members.values())
    for j, bound in zip(iis.col_index_, iis.col_bound_, strict=True):
        if int(bound) in _BOUND_NAMES:
            side, lower, upper = _BOUND_NAMES[int(bound)], lp.col_lower_[j], lp.col_upper_[j]
            conflicts.append(_bound_conflict(form.columns[cols[j]], side, lower, upper))
    return conflicts


def _local_iis(
    form: StandardForm, lp: highspy.HighsLp, slack: np.ndarray, options: dict, clock: _Clock
) -> tuple[list[Conflict], bool]:
    """An IIS found near the row that needs the most slack: the rows within k steps of it
    (row - column - row), k growing until they are infeasible on their own, then their
    IIS (an IIS of a part is an IIS of the whole). Far faster than the IIS of a large
    model whose conflict repeats (every period of a market). Returns (conflicts,
    whether it finished in time)."""
    a = _matrix(lp)
    by_row = a.tocsr()
    rows = np.array([int(np.argmax(slack))])
    while clock.left() > 0:
        grown = np.unique(a[:, np.unique(by_row[rows].indices)].indices)
        cols = np.unique(by_row[grown].indices)
        conflicts = _iis(form, _sub_lp(lp, a, grown, cols), grown, cols, options, clock)
        if conflicts or len(grown) == len(rows):
            return conflicts, clock.left() > 0
        rows = grown
    return [], False


def _with_integers_fixed(form: StandardForm, x: np.ndarray) -> highspy.HighsLp:
    lp = highspy.HighsLp()
    for name in ("num_col_", "num_row_", "col_cost_", "row_lower_", "row_upper_", "a_matrix_"):
        setattr(lp, name, getattr(form.lp, name))
    lower = np.array(form.lp.col_lower_, dtype=float)
    upper = np.array(form.lp.col_upper_, dtype=float)
    lower[form.integer] = upper[form.integer] = np.round(x[form.integer]) + 0.0  # no -0
    lp.col_lower_, lp.col_upper_ = lower, upper
    return lp


def _explained(
    method: str, form: StandardForm, lp, slack: np.ndarray, extent: list, options, clock
) -> Diagnosis:
    """An IIS of the infeasible LP ``lp`` near where its elastic re-solve needs slack;
    without one in time, the ``extent`` (the rows an elastic re-solve relaxes) as a
    partial answer."""
    found, finished = _local_iis(form, lp, slack, options, clock)
    if not found:
        return Diagnosis("elastic", tuple(extent), finished, clock.seconds)
    first = [c for c in extent if method == "elastic+iis"]
    seen = {c.name for c in first}
    conflicts = first + [c for c in found if c.name not in seen]
    return Diagnosis(method, tuple(conflicts), finished, clock.seconds, tuple(extent))


def _integer_conflict(form: StandardForm, options: dict, clock: _Clock) -> Diagnosis:
    """A MILP whose relaxation is feasible: the rows an elastic re-solve (integers kept)
    relaxes, and what they meet where they hold (module docstring)."""
    slack, _ = _elastic(form.lp, options, clock, relax=False)
    if slack is None:
        return Diagnosis("elastic", (), False, clock.seconds)
    relaxed = _slack_conflicts(form, slack)
    if not relaxed:
        return Diagnosis("elastic", (), True, clock.seconds)
    _, x = _elastic(form.lp, options, clock, relax=False, hard=np.flatnonzero(slack > _TOL))
    if x is None:  # they conflict among themselves (or the time ran out)
        return Diagnosis("elastic", tuple(relaxed), clock.left() > 0, clock.seconds)
    fixed = _with_integers_fixed(form, x)
    slack, _ = _elastic(fixed, options, clock, relax=False)
    if slack is None or not (slack > _TOL).any():
        return Diagnosis("elastic", tuple(relaxed), slack is not None, clock.seconds)
    return _explained("elastic+iis", form, fixed, slack, relaxed, options, clock)


def diagnose(
    form: StandardForm, options: dict | None = None, label: Labeler | None = None
) -> Diagnosis:
    """Name the constraints of an infeasible compiled model that conflict.

    Parameters
    ----------
    form : the compiled model.
    options : HiGHS options for the diagnosing solves; its ``time_limit`` (e.g. the
        caller's, so a diagnosis never outlasts the solve it explains) bounds the whole
        diagnosis, :data:`DEFAULT_TIME_LIMIT_S` without one.
    label : the case element of a member (:meth:`Diagnosis.in_case_terms`); default:
        the model's own, its attribute :data:`LABELER_ATTR` (the case pipeline sets it).
    """
    options = dict(options or {})
    clock = _Clock(float(options.pop("time_limit", DEFAULT_TIME_LIMIT_S)))
    diagnosis = replace(_diagnosis(form, options, clock), seconds=clock.elapsed())
    members = form.rows or form.columns
    label = label or (getattr(members[0].model(), LABELER_ATTR, None) if members else None)
    return diagnosis if label is None else diagnosis.in_case_terms(label)


def _diagnosis(form: StandardForm, options: dict, clock: _Clock) -> Diagnosis:
    slack, _ = _elastic(form.lp, options, clock, relax=True)
    if slack is None:
        diagnosis = Diagnosis("elastic", (), False, clock.seconds)
    elif (slack > _TOL).any():  # the LP (the relaxation of a MILP) is infeasible
        extent = _slack_conflicts(form, slack)
        diagnosis = _explained("iis", form, form.lp, slack, extent, options, clock)
    elif form.is_mip:
        diagnosis = _integer_conflict(form, options, clock)
    else:  # every row holds: infeasible only by the solver's tolerances
        diagnosis = Diagnosis("elastic", (), True, clock.seconds)
    return diagnosis
