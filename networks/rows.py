"""Constraint families written from arrays, shared by the network formulations.

A family is COO terms (row, coefficient, variable) plus a constant per row; it becomes
an :class:`~gridmarkets.solvers.arrays.ArrayConstraint`, or ordinary Pyomo rows where
some row has a symbolic part (a term with mutable parameters, a nonlinear market
expression). A market's injections enter as such terms too, read in bulk from
:class:`~gridmarkets.networks.handles.LinearInjections` or from linear expressions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression

from gridmarkets.errors import NetworkError
from gridmarkets.inputs import plain
from gridmarkets.networks.handles import LinearInjections
from gridmarkets.solvers.arrays import ArrayConstraint, RowArrays, relation
from gridmarkets.solvers.highs import linear_pairs, monomial_pairs


def var_array(var: pyo.Var, shape: tuple[int, ...]) -> np.ndarray:
    """The data of an indexed variable as an object array, in index order."""
    return objects(list(var.values())).reshape(shape)


def objects(items: list) -> np.ndarray:
    """A list as a one-dimensional object array (items kept as they are)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def keys_of(*sets) -> list:
    """The index tuples of the product of ``sets``, in order."""
    return list(itertools.product(*(list(s) for s in sets)))


def check_keys(buses, periods: list, *tables: Mapping) -> None:
    """Every injection at a known bus (unless ``buses`` is None) and a market period."""
    known = set(periods)
    for table in tables:
        for bus, t in table:
            if buses is not None and bus not in buses:
                raise NetworkError(
                    f"injection at bus {plain(bus)}, which is not a bus of the feeder"
                )
            if t not in known:
                raise NetworkError(
                    f"injection at bus {plain(bus)} in period {plain(t)}, not a market period"
                )


@dataclass
class Rows:
    """A family of rows as COO terms: row k is ``constants[k] + sum coefs * variables``."""

    n: int
    rows: np.ndarray
    coefs: np.ndarray
    variables: np.ndarray
    constants: np.ndarray

    @classmethod
    def of(cls, n: int, parts: list[tuple], constants=0.0) -> Rows:
        """Rows from (rows, coefs, variables) parts, each broadcast to a common shape."""
        arrays = [np.broadcast_arrays(r, c, v) for r, c, v in parts]
        rows, coefs, variables = (np.concatenate([a[i].ravel() for a in arrays]) for i in range(3))
        constants = np.broadcast_to(np.asarray(constants, dtype=float), (n,)).ravel()
        return cls(n, rows.astype(np.int64), coefs.astype(float), variables, constants)

    def arrays(self, lower, upper) -> RowArrays:
        """``lower <= rows <= upper`` with the constants moved into the bounds."""
        bounds = (np.broadcast_to(b, (self.n,)) - self.constants for b in (lower, upper))
        return RowArrays.from_coo(self.n, self.rows, self.coefs, self.variables, *bounds)


def add_family(block, name: str, sets: tuple, rows: Rows, lower, upper, doc: str, extra=None):
    """Add ``lower <= rows <= upper`` over ``sets`` (in index order) as constraint ``name``.

    ``extra`` holds per-row Pyomo expressions (or None) added symbolically. Without any,
    the family is an :class:`ArrayConstraint`, read by the solve layer from its arrays.
    """
    arrays = rows.arrays(lower, upper)
    if extra is None:
        block.add_component(name, ArrayConstraint(*sets, arrays=arrays, doc=doc))
        return

    def symbolic(k: int, more):
        lower, upper = arrays.bounds(k)
        body = arrays.body(k)
        return relation(lower, body if more is None else body + more, upper)

    keys = keys_of(*sets)
    relations = {key: symbolic(k, e) for k, (key, e) in enumerate(zip(keys, extra, strict=True))}
    block.add_component(name, pyo.Constraint(*sets, rule=lambda _, *key: relations[key], doc=doc))


def market_terms(
    injections: Mapping, row_of: Callable[[Any], int], n: int, scale: float
) -> tuple[tuple, np.ndarray, list | None]:
    """A market's injections as terms of ``n`` rows (``row_of(key)`` is a key's row),
    scaled: COO terms, the constant of each row, and each row's symbolic rest (None)."""
    keys = list(injections)
    row = np.fromiter(map(row_of, keys), np.int64, len(keys))
    if isinstance(injections, LinearInjections):
        terms = (row[injections.rows], injections.coefs * scale, injections.variables)
        return terms, np.zeros(n), None
    (at, coefs, variables), constants, symbolic = _expression_terms(list(injections.values()))
    extra: list = [None] * n
    for k, expr in symbolic.items():
        extra[row[k]] = expr * scale if extra[row[k]] is None else extra[row[k]] + expr * scale
    constants = np.bincount(row, weights=constants * scale, minlength=n)
    terms = (row[at], coefs * scale, variables)
    return terms, constants, extra if symbolic else None


def _expression_terms(expressions: list) -> tuple[tuple, np.ndarray, dict]:
    """Linear expressions as COO terms (by position), their constants, and the others.

    Sums of numeric monomials (what markets build from their bids) are read together in
    one pass; anything else expression by expression.
    """
    sums = [k for k, e in enumerate(expressions) if e.__class__ is LinearExpression]
    args = [expressions[k].args for k in sums]
    pairs = monomial_pairs(list(itertools.chain.from_iterable(args))) if sums else []
    if pairs is None:
        sums, args, pairs = [], [], []
    rows = np.repeat(np.array(sums, dtype=np.int64), [len(a) for a in args]).tolist()
    coefs, variables = (list(c) for c in zip(*pairs, strict=True)) if pairs else ([], [])
    constants = np.zeros(len(expressions))
    symbolic: dict[int, Any] = {}
    for k in np.setdiff1d(np.arange(len(expressions)), sums).tolist():
        part = linear_pairs(expressions[k])
        if part is None:
            symbolic[k] = expressions[k]
            continue
        constants[k] = part[0]
        rows += [k] * len(part[1])
        coefs += [c for c, _ in part[1]]
        variables += [v for _, v in part[1]]
    terms = (np.array(rows, dtype=np.int64), np.array(coefs, dtype=float), objects(variables))
    return terms, constants, symbolic


def merge_extra(*extras) -> list | None:
    """Per-row sums of symbolic extras (None where a row has none); None if no row has any."""
    present = [e for e in extras if e is not None]
    if not present:
        return None
    merged = []
    for items in zip(*present, strict=True):
        terms = [e for e in items if e is not None]
        merged.append(None if not terms else terms[0] if len(terms) == 1 else sum(terms))
    return merged if any(e is not None for e in merged) else None
