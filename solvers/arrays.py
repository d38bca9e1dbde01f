"""Indexed constraints stored as arrays: the rows of large linear families, built at once.

A Pyomo constraint normally holds one expression tree per row: a relational
expression, a LinearExpression and a monomial per term. For the network families of
gridmarkets (hundreds of thousands of rows with two to four terms each) creating those
objects costs several times what HiGHS needs to solve the LP. An :class:`ArrayConstraint`
keeps the family as arrays, ``lower <= A x <= upper`` with A in compressed-row form, and
one light data object per index, so the user still sees an indexed Pyomo constraint:
``c[l, t].expr``, ``.body``, ``.lb``, ``.ub``, ``.deactivate()`` and duals work, and
the expression of a row is built when it is read. The solve layer reads the arrays
directly. Setting a row's expression turns it into an ordinary Pyomo row (the pattern
of Pyomo's own templated constraints), which the solve layer then compiles as one.

Pyomo's ``MatrixConstraint`` does the same with integer indices only; this one keeps
the family's index sets, so ``thermal_limit[branch, side, period]`` reads like the math.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from weakref import ref as weakref_ref

import numpy as np
import pyomo.environ as pyo
import scipy.sparse as sp
from pyomo.core.base.constraint import ConstraintData, IndexedConstraint
from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression
from pyomo.core.expr.relational_expr import (
    EqualityExpression,
    InequalityExpression,
    RangedExpression,
)


@dataclass(frozen=True)
class RowArrays:
    """``lower[k] <= sum_p values[p] * variables[columns[p]] <= upper[k]`` for p in row k.

    Rows in compressed form: row k's entries are ``indptr[k]:indptr[k + 1]``; ``variables``
    are the distinct VarData the rows use; infinite bounds are ``-inf`` / ``inf``.
    """

    indptr: np.ndarray
    columns: np.ndarray
    values: np.ndarray
    variables: list
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_coo(cls, n: int, rows, values, variables, lower, upper) -> RowArrays:
        """Rows from COO entries (row number, coefficient, VarData), in any order."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        variables = np.asarray(variables, dtype=object).ravel()
        order = np.argsort(rows, kind="stable")
        ids = np.fromiter(map(id, variables), dtype=np.int64, count=len(variables))
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        appearance = np.argsort(first)  # columns in order of first use, not of memory address
        rank = np.empty_like(appearance)
        rank[appearance] = np.arange(len(appearance))
        columns, first = rank[inverse.ravel()], first[appearance]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
        bounds = (np.broadcast_to(np.asarray(b, dtype=float), (n,)).copy() for b in (lower, upper))
        return cls(
            indptr,
            columns[order],
            np.asarray(values, dtype=float).ravel()[order],
            variables[first].tolist(),
            *bounds,
        )

    @classmethod
    def from_columns(cls, n: int, rows, values, columns, variables, lower, upper) -> RowArrays:
        """Rows from COO entries naming their variables by position in ``variables``
        (distinct VarData), in any order, in time linear in the entries: a counting sort
        by row (scipy's COO to CSR; a row's repeated variable is summed) and no look-up by
        identity. Only the variables used are kept, in their order in ``variables``."""
        matrix = sp.csr_array(
            (np.asarray(values, dtype=float).ravel(), (np.ravel(rows), np.ravel(columns))),
            shape=(n, len(variables)),
        )
        used = np.zeros(len(variables), dtype=bool)
        used[matrix.indices] = True
        rank = np.cumsum(used) - 1
        bounds = (np.broadcast_to(np.asarray(b, dtype=float), (n,)).copy() for b in (lower, upper))
        return cls(
            matrix.indptr.astype(np.int64),
            rank[matrix.indices],
            matrix.data,
            np.asarray(variables, dtype=object)[used].tolist(),
            *bounds,
        )

    def body(self, k: int) -> LinearExpression:
        """Row k's linear expression."""
        span = range(self.indptr[k], self.indptr[k + 1])
        return LinearExpression(
            [
                MonomialTermExpression((float(self.values[p]), self.variables[self.columns[p]]))
                for p in span
            ]
        )

    def entries(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """COO entries (position in ``rows``, column, value) of the given rows."""
        counts = self.indptr[rows + 1] - self.indptr[rows]
        position = np.repeat(np.arange(len(rows)), counts)
        starts = np.repeat(self.indptr[rows] - np.cumsum(counts) + counts, counts)
        at = starts + np.arange(counts.sum())
        return position, self.columns[at], self.values[at]

    def bounds(self, k: int) -> tuple[float | None, float | None]:
        """Row k's finite bounds (None where infinite)."""
        lower, upper = float(self.lower[k]), float(self.upper[k])
        return (lower if lower > -np.inf else None, upper if upper < np.inf else None)


def relation(lower: float | None, body, upper: float | None):
    """The relational expression ``lower <= body <= upper`` (None: no bound)."""
    if lower is not None and lower == upper:
        return EqualityExpression((body, upper))
    if lower is not None and upper is not None:
        return RangedExpression((lower, body, upper), (False, False))
    if upper is not None:
        return InequalityExpression((body, upper), False)
    return InequalityExpression((lower, body), False)


class ArrayRowData(ConstraintData):
    """One row of an :class:`ArrayConstraint`; its expression is built when read.

    ``_expr`` holds the row number until the row is given an expression of its own, at
    which point the object becomes an ordinary ``ConstraintData``.
    """

    __slots__ = ()

    def __init__(self, component, index, row: int):
        self._component = component
        self._active = True
        self._index = index
        self._expr = row

    @property
    def row(self) -> int:
        """Position of this row in the component's arrays."""
        return self._expr

    @property
    def expr(self):
        return relation(*self.to_bounded_expression())

    def to_bounded_expression(self, evaluate_bounds: bool = False):
        lower, upper = self._arrays().bounds(self._expr)
        return lower, self._arrays().body(self._expr), upper

    def set_value(self, expr) -> None:
        self.__class__ = ConstraintData
        self.set_value(expr)

    def _arrays(self) -> RowArrays:
        return self.parent_component().arrays


class ArrayConstraint(IndexedConstraint):
    """An indexed linear constraint given as arrays, one row per index in set order.

    Parameters
    ----------
    *sets : the index sets; row k is the k-th element of their product.
    arrays : the rows (:class:`RowArrays`), as many as the product of the sets.
    doc : the equation in plain text, with units.
    """

    def __init__(self, *sets, arrays: RowArrays, doc: str | None = None):
        super().__init__(*sets, doc=doc)
        self.arrays = arrays

    def construct(self, data=None) -> None:
        if self._constructed:
            return
        self._constructed = True
        subsets = list(self.index_set().subsets())
        keys = list(itertools.product(*subsets) if len(subsets) > 1 else subsets[0])
        if len(keys) != len(self.arrays.lower):
            raise ValueError(f"{self.name}: {len(keys)} indices for {len(self.arrays.lower)} rows")
        component = weakref_ref(self)
        self._data = {key: ArrayRowData(component, key, k) for k, key in enumerate(keys)}

    def __delitem__(self, index) -> None:
        raise TypeError(f"{self.name}: rows of an ArrayConstraint are deactivated, not deleted")


def array_rows(constraint: ArrayConstraint) -> tuple[np.ndarray, list, list]:
    """Row numbers still read from the arrays (active, expression untouched), their data
    objects, and the active rows that were given expressions of their own."""
    lazy, lazy_data, own = [], [], []
    for data in constraint._data.values():
        if not data._active:
            continue
        if data.__class__ is ArrayRowData:
            lazy.append(data._expr)
            lazy_data.append(data)
        else:
            own.append(data)
    return np.asarray(lazy, dtype=np.int64), lazy_data, own


def array_constraints(model: pyo.Block) -> list[ArrayConstraint]:
    """The active array constraints of a model, in component order."""
    found = model.component_objects(pyo.Constraint, active=True, descend_into=True)
    return [c for c in found if isinstance(c, ArrayConstraint)]


def dense_values(component: pyo.Component) -> list:
    """The data objects of a dense indexed component (a Var built over its whole index
    set), in index order, read from its storage in one sequential pass rather than
    looked up index by index (which, for millions of indices, costs a cache miss each)."""
    data = component._data
    if len(data) != len(component.index_set()):
        raise ValueError(
            f"{component.name}: not dense ({len(data)} of {len(component.index_set())})"
        )
    return list(data.values())
