"""The exceptions gridmarkets raises for things a user can fix or must know.

Two families, matching the CLI's exit codes:

- :class:`InputError` (exit 2): the input is wrong — a case file, a network, a
  parameter. The message names the file, the field path or the element.
- :class:`NoSolutionError` (exit 1): the input is well formed but the model has no
  solution — infeasible (with a :class:`~gridmarkets.solvers.diagnose.Diagnosis`),
  unbounded, or stopped by a limit before any feasible point was found.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gridmarkets.solvers.diagnose import Diagnosis


class GridmarketsError(Exception):
    """Base class of every error gridmarkets raises on purpose."""

    exit_code = 1


class InputError(GridmarketsError, ValueError):
    """Bad input: the message names the file, field or element and the reason."""

    exit_code = 2


class CaseError(InputError):
    """A case or study file that does not validate."""


class NetworkError(InputError):
    """A network that cannot be turned into a radial feeder."""


class SolverOptionError(InputError):
    """An option HiGHS does not accept."""


class NoSolutionError(GridmarketsError):
    """The model was solved but has no solution to report."""

    exit_code = 1


class InfeasibleError(NoSolutionError):
    """The model is infeasible; ``diagnosis`` names the constraints that conflict."""

    def __init__(self, message: str, diagnosis: Diagnosis | None = None):
        super().__init__(message)
        self.diagnosis = diagnosis

    def __str__(self) -> str:
        text = super().__str__()
        if self.diagnosis is not None:
            text += "\n" + self.diagnosis.report()
        return text


class UnboundedError(NoSolutionError):
    """The objective can improve without limit: a price or bound is missing."""


class LimitReachedError(NoSolutionError):
    """A time or iteration limit stopped the solver before any feasible point."""
