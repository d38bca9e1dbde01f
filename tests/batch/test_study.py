"""Study files: designs expand as stated, and every mistake names its file and field."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from gridmarkets.case import load_case
from gridmarkets.errors import CaseError
from gridmarkets.study import load_study, make_study

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHP = "participants.chp_c.blocks.0.price"
HOME = "participants.home_1.blocks.0.quantity_kw"


def study(**fields):
    data = {"base": "lem_copperplate", "parameters": {CHP: {"values": [60, 90]}}, **fields}
    return make_study(data, source="s.yaml")


def test_grid_is_the_product_in_file_order_with_ranges_evenly_spaced():
    s = study(parameters={CHP: {"values": [60, 90]}, HOME: {"range": [1.0, 2.0], "num": 3}})
    points = [tuple(sc.values.values()) for sc in s.scenarios]
    assert points == [(p, q) for p in (60, 90) for q in (1.0, 1.5, 2.0)]


def test_each_scenario_case_carries_its_values_and_only_them():
    s = study(parameters={CHP: {"values": [60, 90]}, HOME: {"values": [1.0, 2.0]}})
    base = load_case(ROOT / "data/cases/lem_copperplate.yaml").model_dump(mode="json")
    for sc in s.scenarios:
        case = sc.case
        assert case["participants"]["chp_c"]["blocks"][0]["price"] == sc.values[CHP]
        assert case["participants"]["home_1"]["blocks"][0]["quantity_kw"] == sc.values[HOME]
        for pid in ("pv_a", "pv_b", "home_2", "home_3", "shop_4"):
            assert case["participants"][pid] == base["participants"][pid]
    assert len({sc.case_hash for sc in s.scenarios}) == 4


def test_zip_runs_lists_side_by_side():
    s = study(design="zip", parameters={CHP: {"values": [60, 90]}, HOME: {"values": [1, 2]}})
    assert [tuple(sc.values.values()) for sc in s.scenarios] == [(60, 1), (90, 2)]


@pytest.mark.parametrize("design", ["random", "latin_hypercube"])
def test_sampled_designs_are_reproducible_and_stay_in_range(design):
    params = {CHP: {"range": [50.0, 150.0]}, HOME: {"values": [0.5, 1.0, 2.0]}}
    first = study(design=design, samples=12, seed=7, parameters=params)
    again = study(design=design, samples=12, seed=7, parameters=params)
    other = study(design=design, samples=12, seed=8, parameters=params)
    values = [sc.values for sc in first.scenarios]
    assert values == [sc.values for sc in again.scenarios]
    assert values != [sc.values for sc in other.scenarios]
    assert all(50 <= v[CHP] <= 150 and v[HOME] in (0.5, 1.0, 2.0) for v in values)


def test_latin_hypercube_puts_one_sample_in_each_stratum():
    s = study(design="latin_hypercube", samples=10, seed=3, parameters={CHP: {"range": [0, 100]}})
    strata = sorted(int(sc.values[CHP] // 10) for sc in s.scenarios)
    assert strata == list(range(10))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"colour": "red"}, "s.yaml: colour: Extra inputs are not permitted"),
        ({"parameters": {CHP: {"values": [1], "step": 2}}}, f"s.yaml: parameters.{CHP}.step"),
        ({"parameters": {CHP: {"range": [2, 1], "num": 2}}}, "low 2.0 is above high 1.0"),
        ({"parameters": {CHP: {"range": [1, 2]}}}, f"parameters.{CHP}.num: a range needs num"),
        ({"design": "random"}, "s.yaml: samples: design 'random' needs a number of samples"),
        ({"samples": 4}, "s.yaml: samples: only for designs random and latin_hypercube"),
        ({"design": "zip", "parameters": {CHP: {"values": [1, 2]}, HOME: {"values": [1]}}}, "zip"),
        ({"base": "no_such_case"}, "s.yaml: base: 'no_such_case' is neither a case file"),
        ({"parameters": {"participants.nobody.side": {"values": ["buy"]}}}, "participants.nobody"),
    ],
)
def test_a_bad_study_names_the_file_and_the_field(fields, expected):
    with pytest.raises(CaseError) as info:
        study(**fields)
    assert expected in str(info.value)


def test_a_value_that_breaks_the_case_names_the_scenario():
    with pytest.raises(CaseError) as info:
        study(parameters={HOME: {"values": [1.0, -2.0]}})
    message = str(info.value)
    assert "scenario 1" in message and f"{HOME}=-2.0" in message
    assert "participants.home_1.blocks.0.quantity_kw" in message.split(")", 1)[1]


def test_a_relative_base_is_read_next_to_the_study_file(tmp_path):
    case = yaml.safe_load((ROOT / "data/cases/lem_copperplate.yaml").read_text())
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "mine.yaml").write_text(yaml.safe_dump(case))
    spec = {"base": "cases/mine.yaml", "parameters": {CHP: {"values": [1, 2]}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_study(tmp_path / "sweep.yaml")
    assert loaded.name == "sweep" and loaded.model == "lem"
    assert [sc.case["name"] for sc in loaded.scenarios] == ["mine", "mine"]


@pytest.mark.parametrize("path", sorted((ROOT / "data" / "studies").glob("*.yaml")), ids=str)
def test_shipped_studies_load(path):
    loaded = load_study(path)
    assert loaded.scenarios and loaded.spec.kpis
    assert np.all([sc.case["model"] == loaded.model for sc in loaded.scenarios])
