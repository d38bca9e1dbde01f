"""Explain infeasibility by the constraints that conflict, within a time limit.

First HiGHS's irreducible infeasible subsystem (IIS) of the LP (or of the LP
relaxation of a MILP). When that finds nothing (a MILP whose relaxation is feasible),
an elastic re-solve: every row gets a nonnegative slack in each direction, the total
slack is minimised with the integers kept, and the rows that needed slack are the
conflict; then, to say what they conflict with, a second elastic re-solve holds those
rows exactly, the integers are fixed where it put them, and the IIS of that LP names the
constraints and bounds they meet there (an appliance that must run meets the import
limit and the balance of the periods it runs in).

The diagnosis has a time limit of its own (the caller's ``time_limit``, else
:data:`DEFAULT_TIME_LIMIT_S`): when the IIS runs out of time, the elastic re-solve
(one LP) gives a partial answer, marked as such.

Members carry their Pyomo names, so a family such as
``prosumers[h3].battery.soc_dynamics[5]`` carries its participant, asset and period;
:meth:`Diagnosis.in_case_terms` adds the case element each comes from (a participant,
a device, a case field), given a function that knows the case.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import highspy
import numpy as np

from gridmarkets.solvers.highs import INF, StandardForm

DEFAULT_TIME_LIMIT_S = 30.0
_IIS_SHARE = 0.75  # of the time limit for the IIS; the rest is the elastic re-solve's
_TOL = 1e-7
_SHOWN = 4  # members listed per family in a report
_BOUND_NAMES = {
    int(highspy.IisBoundStatus.kIisBoundStatusLower): "lower",
    int(highspy.IisBoundStatus.kIisBoundStatusUpper): "upper",
    int(highspy.IisBoundStatus.kIisBoundStatusBoxed): "lower and upper",
}
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
        labelled = []
        for conflict in self.conflicts:
            found = label(conflict) if conflict.component is not None else None
            element, period = found or ("", None)
            labelled.append(replace(conflict, element=element, period=period))
        return replace(self, conflicts=tuple(labelled))

    def report(self) -> str:
        """A few lines a user can act on: by case element where known, else by family."""
        how = _HOW[self.method]
        partial = ""
        if not self.complete:
            partial = (
                f"\npartial answer: the diagnosis stopped at its {self.time_limit_s:g} s time "
                "limit (give a longer --time-limit for a complete one)"
            )
        if not self.conflicts:
            return f"diagnosis ({how}): no conflicting set could be isolated{partial}"
        if self.elements:
            lines = [f"conflicting case elements, by {how}:"]
            groups = _grouped(self.conflicts, lambda c: c.element or f"(model) {c.family}")
        else:
            lines = [f"conflicting constraints, by {how}, by family:"]
            groups = _grouped(self.conflicts, lambda c: c.family)
        for key, members in groups.items():
            lines.append(f"  - {key}: {_describe(members)}")
        return "\n".join(lines) + partial


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

    def share(self, fraction: float) -> _Clock:
        """A clock of ``fraction`` of the time left."""
        return _Clock(self.left() * fraction)


def _row_conflict(con, detail: str) -> Conflict:
    return Conflict(con.name, con.parent_component().name, "constraint", detail, component=con)


def _bound_conflict(var, side: str, lower: float, upper: float) -> Conflict:
    bounds = f"fixed at {lower:g}" if lower == upper else f"[{lower:g}, {upper:g}]"
    detail = f"{side} bound, {bounds}"
    return Conflict(var.name, var.parent_component().name, "variable bound", detail, component=var)


def _highs(options: dict, clock: _Clock) -> highspy.Highs:
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    for name, value in options.items():
        highs.setOptionValue(name, value)
    highs.setOptionValue("time_limit", max(clock.left(), 1e-3))
    return highs


def _relaxed(highs: highspy.Highs, n: int) -> None:
    highs.changeColsIntegrality(
        n, np.arange(n, dtype=np.int32), np.full(n, highspy.HighsVarType.kContinuous)
    )


def _iis(form: StandardForm, options: dict, clock: _Clock, lp=None) -> tuple[list, bool]:
    """(conflicts of the IIS of ``lp`` (default: the LP relaxation), whether HiGHS had
    the time to finish it)."""
    highs = _highs(options, clock)
    highs.setOptionValue("iis_strategy", int(highspy.IisStrategy.kIisStrategyIrreducible))
    highs.setOptionValue("iis_time_limit", max(clock.left(), 1e-3))
    lp = form.lp if lp is None else lp
    highs.passModel(lp)
    if form.is_mip:
        _relaxed(highs, form.lp.num_col_)
    status, iis = highs.getIis()
    finished = clock.left() > 0
    if status != highspy.HighsStatus.kOk or not iis.valid_ or not len(iis.row_index_):
        return [], finished
    conflicts = list(
        {form.rows[i].name: _row_conflict(form.rows[i], "") for i in iis.row_index_}.values()
    )
    for j, bound in zip(iis.col_index_, iis.col_bound_, strict=True):
        if int(bound) in _BOUND_NAMES:
            side, lower, upper = _BOUND_NAMES[int(bound)], lp.col_lower_[j], lp.col_upper_[j]
            conflicts.append(_bound_conflict(form.columns[j], side, lower, upper))
    return conflicts, finished


def _elastic(
    form: StandardForm, options: dict, clock: _Clock, hard: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Minimise the total slack the rows need (integers kept); rows in ``hard`` get
    none. Returns (slack per row, column values), or (None, None) without an answer."""
    lp = form.lp
    n, m = lp.num_col_, lp.num_row_
    highs = _highs(options, clock)
    highs.passModel(lp)
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


def _with_integers_fixed(form: StandardForm, x: np.ndarray) -> highspy.HighsLp:
    lp = highspy.HighsLp()
    for name in ("num_col_", "num_row_", "col_cost_", "row_lower_", "row_upper_", "a_matrix_"):
        setattr(lp, name, getattr(form.lp, name))
    lower = np.array(form.lp.col_lower_, dtype=float)
    upper = np.array(form.lp.col_upper_, dtype=float)
    lower[form.integer] = upper[form.integer] = np.round(x[form.integer]) + 0.0  # no -0
    lp.col_lower_, lp.col_upper_ = lower, upper
    return lp


def _from_elastic(form: StandardForm, options: dict, clock: _Clock) -> Diagnosis:
    """The rows an elastic re-solve relaxes; for a MILP also what they meet where they
    hold (module docstring)."""
    slack, _ = _elastic(form, options, clock)
    if slack is None:
        return Diagnosis("elastic", (), False, clock.seconds)
    conflicts = _slack_conflicts(form, slack)
    if not form.is_mip or not conflicts:
        return Diagnosis("elastic", tuple(conflicts), time_limit_s=clock.seconds)
    _, x = _elastic(form, options, clock, hard=np.flatnonzero(slack > _TOL))
    if x is None:  # they conflict among themselves (or the time ran out)
        return Diagnosis("elastic", tuple(conflicts), clock.left() > 0, clock.seconds)
    met, finished = _iis(form, options, clock, _with_integers_fixed(form, x))
    seen = {c.name for c in conflicts}
    conflicts += [c for c in met if c.name not in seen]
    return Diagnosis("elastic+iis", tuple(conflicts), finished, clock.seconds)


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
    label : the case element of a Pyomo component (:meth:`Diagnosis.in_case_terms`).
    """
    options = dict(options or {})
    clock = _Clock(float(options.pop("time_limit", DEFAULT_TIME_LIMIT_S)))
    conflicts, finished = _iis(form, options, clock.share(_IIS_SHARE))
    if conflicts:
        diagnosis = Diagnosis("iis", tuple(conflicts), finished, clock.seconds)
    elif not finished:  # out of time: the one-LP elastic re-solve, as a partial answer
        diagnosis = replace(_from_elastic(form, options, clock), complete=False)
    else:
        diagnosis = _from_elastic(form, options, clock)
    return diagnosis if label is None else diagnosis.in_case_terms(label)
