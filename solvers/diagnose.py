"""Explain infeasibility by the constraints that conflict.

First HiGHS's irreducible infeasible subsystem (IIS) of the LP (or of the LP
relaxation of a MILP); when that finds nothing (a MILP whose relaxation is feasible),
an elastic re-solve: every row gets a nonnegative slack in each direction, the total
slack is minimised with the integers kept, and the rows that needed slack are the
conflict. Members are reported by their Pyomo names, so a family such as
``prosumers[h3].battery.soc_dynamics[5]`` carries its participant, asset and period.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from gridmarkets.solvers.highs import INF, StandardForm, new_highs

_TOL = 1e-7
_SHOWN = 4  # members listed per family in a report
_BOUND_NAMES = {
    int(highspy.IisBoundStatus.kIisBoundStatusLower): "lower",
    int(highspy.IisBoundStatus.kIisBoundStatusUpper): "upper",
    int(highspy.IisBoundStatus.kIisBoundStatusBoxed): "lower and upper",
}


@dataclass(frozen=True)
class Conflict:
    """One member of a conflicting set: a constraint or a variable bound."""

    name: str
    family: str
    kind: str  # "constraint" or "variable bound"
    detail: str


@dataclass(frozen=True)
class Diagnosis:
    """The constraints (and bounds) that cannot hold together, and how they were found."""

    method: str  # "iis" or "elastic"
    conflicts: tuple[Conflict, ...]

    @property
    def families(self) -> list[str]:
        """Names of the constraint families involved, in first-seen order."""
        return list(dict.fromkeys(c.family for c in self.conflicts))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.conflicts]

    def report(self) -> str:
        """A few lines a user can act on."""
        how = (
            "irreducible infeasible subsystem (HiGHS IIS)"
            if self.method == "iis"
            else "elastic re-solve (least total violation)"
        )
        if not self.conflicts:
            return f"diagnosis ({how}): no conflicting set could be isolated"
        lines = [f"conflicting constraints, by {how}, by family:"]
        for family in self.families:
            members = [c for c in self.conflicts if c.family == family]
            shown = ", ".join(
                c.name + (f" ({c.detail})" if c.detail else "") for c in members[:_SHOWN]
            )
            more = f", and {len(members) - _SHOWN} more" if len(members) > _SHOWN else ""
            lines.append(f"  - {family} [{len(members)}]: {shown}{more}")
        return "\n".join(lines)


def _row_conflict(con, detail: str) -> Conflict:
    return Conflict(con.name, con.parent_component().name, "constraint", detail)


def _highs(options: dict) -> highspy.Highs:
    highs = new_highs()
    for name, value in options.items():
        highs.setOptionValue(name, value)
    return highs


def _from_iis(form: StandardForm, options: dict) -> Diagnosis | None:
    highs = _highs(options)
    highs.setOptionValue("iis_strategy", int(highspy.IisStrategy.kIisStrategyIrreducible))
    highs.passModel(form.lp)
    if form.is_mip:
        n = form.lp.num_col_
        highs.changeColsIntegrality(
            n,
            np.arange(n, dtype=np.int32),
            np.full(n, highspy.HighsVarType.kContinuous),
        )
    status, iis = highs.getIis()
    if status != highspy.HighsStatus.kOk or not iis.valid_ or not len(iis.row_index_):
        return None
    conflicts = [_row_conflict(form.rows[i], "") for i in iis.row_index_]
    seen = set()
    conflicts = [c for c in conflicts if not (c.name in seen or seen.add(c.name))]
    for j, bound in zip(iis.col_index_, iis.col_bound_, strict=True):
        if int(bound) in _BOUND_NAMES:
            var = form.columns[j]
            side = _BOUND_NAMES[int(bound)]
            detail = f"{side} bound ({var.lb}, {var.ub})"
            conflicts.append(
                Conflict(var.name, var.parent_component().name, "variable bound", detail)
            )
    return Diagnosis("iis", tuple(conflicts))


def _from_elastic(form: StandardForm, options: dict) -> Diagnosis:
    lp = form.lp
    n, m = lp.num_col_, lp.num_row_
    highs = _highs(options)
    highs.passModel(lp)
    highs.changeObjectiveSense(highspy.ObjSense.kMinimize)
    highs.changeColsCost(n, np.arange(n, dtype=np.int32), np.zeros(n))
    rows = np.arange(m, dtype=np.int32)
    for sign in (1.0, -1.0):  # one slack that adds to each row, one that subtracts
        highs.addCols(
            m,
            np.ones(m),
            np.zeros(m),
            np.full(m, INF),
            m,
            np.arange(m, dtype=np.int32),
            rows,
            np.full(m, sign),
        )
    highs.run()
    if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return Diagnosis("elastic", ())
    values = np.asarray(highs.getSolution().col_value)
    slack = values[n : n + m] + values[n + m : n + 2 * m]
    conflicts, seen = [], set()
    for i in np.flatnonzero(slack > _TOL):
        con = form.rows[i]
        if con.name not in seen:
            seen.add(con.name)
            conflicts.append(_row_conflict(con, f"needs {slack[i]:.6g} of relaxation"))
    return Diagnosis("elastic", tuple(conflicts))


def diagnose(form: StandardForm, options: dict | None = None) -> Diagnosis:
    """Name the constraints of an infeasible compiled model that conflict.

    ``options`` are HiGHS options for the diagnosing solves (e.g. the caller's
    ``time_limit``, so a diagnosis never outlasts the solve it explains).
    """
    return _from_iis(form, options or {}) or _from_elastic(form, options or {})
