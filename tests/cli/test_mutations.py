"""Randomly broken case files end as a solved case or as gridmarkets' own error."""

import copy

import pytest
from cli_run import paths
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridmarkets import pipeline
from gridmarkets.case import validate
from gridmarkets.errors import GridmarketsError

pytestmark = pytest.mark.solve

BASE = {
    "model": "lem",
    "name": "fuzz",
    "horizon": {"periods": 2, "resolution_minutes": 30},
    "pricing": "uniform",
    "upstream": {"import_price": [200, 180], "export_price": 40, "capacity_kw": 5},
    "participants": {
        "pv1": {"side": "sell", "blocks": [{"quantity_kw": [10, 4], "price": 20}]},
        "home1": {
            "side": "buy",
            "blocks": [{"quantity_kw": 6, "price": 300}, {"quantity_kw": 3, "price": 90}],
        },
        "gen": {"side": "sell", "blocks": [{"quantity_kw": 4, "price": 50, "indivisible": True}]},
    },
}


PATHS = list(paths(BASE))
REPLACEMENTS = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-5, 5), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def mutate(case, path, kind, replacement):
    case = copy.deepcopy(case)
    *parents, last = path
    node = case
    for key in parents:
        node = node[key]
    value = node[last]
    if kind == "drop":
        del node[last]
    elif kind == "retype":
        node[last] = replacement
    elif kind == "negate" and isinstance(value, int | float) and not isinstance(value, bool):
        node[last] = -value
    elif kind == "enlarge" and isinstance(value, int | float) and not isinstance(value, bool):
        node[last] = value * 10**7
    return case


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(PATHS),
    st.sampled_from(["drop", "retype", "negate", "enlarge"]),
    REPLACEMENTS,
)
def test_a_mutated_case_solves_or_raises_our_error(path, kind, replacement):
    data = mutate(BASE, path, kind, replacement)
    try:
        case = validate(data, "fuzz.yaml")
        result = pipeline.run_case(case, {})
    except GridmarketsError:
        return
    assert result.solution.status == "optimal"
