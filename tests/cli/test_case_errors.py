"""Bad case files are rejected with a message naming the file, the field path and why."""

import copy

import pytest
import yaml

from gridmarkets.case import load_case, parse_override, set_path, validate
from gridmarkets.errors import CaseError

pytestmark = pytest.mark.unit

VALID = {
    "model": "lem",
    "name": "two_bids",
    "horizon": {"periods": 2, "resolution_minutes": 60},
    "upstream": {"import_price": 200, "export_price": 40, "capacity_kw": 50},
    "participants": {
        "pv1": {"side": "sell", "blocks": [{"quantity_kw": [10, 4], "price": 20}]},
        "home1": {"side": "buy", "blocks": [{"quantity_kw": 6, "price": 300}]},
    },
}


def mutated(path: str, value):
    return set_path(VALID, path, value)


def test_the_valid_case_validates():
    case = validate(copy.deepcopy(VALID))
    assert case.participants["pv1"].blocks[0].quantity_kw == [10, 4]


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({**VALID, "colour": "blue"}, "colour", "Extra inputs are not permitted"),
        (mutated("horizon.periods", "many"), "horizon.periods", "valid integer"),
        (mutated("horizon.periods", 0), "horizon.periods", "greater than or equal to 1"),
        (
            mutated("participants.home1.blocks", [{"quantity_kw": -6, "price": 300}]),
            "participants.home1.blocks.0.quantity_kw",
            "greater than or equal to 0",
        ),
        (mutated("participants.home1.side", "lend"), "participants.home1.side", "'buy' or 'sell'"),
        (mutated("upstream.capacity_kw", -5), "upstream.capacity_kw", "greater than 0"),
        (
            mutated("participants.pv1.blocks", [{"quantity_kw": [1, 2, 3], "price": 1}]),
            "participants.pv1.blocks.0.quantity_kw",
            "3 values for 2 periods",
        ),
        (mutated("upstream.import_price", [1]), "upstream.import_price", "1 values for 2"),
        (mutated("min_acceptance", 1.5), "min_acceptance", "less than or equal to 1"),
        ({**VALID, "model": "teleport"}, "model", "is not one of the models"),
    ],
)
def test_bad_values_name_the_field(data, field, reason):
    with pytest.raises(CaseError) as err:
        validate(data, "case.yaml")
    message = str(err.value)
    assert message.startswith("case.yaml: ")
    assert field in message and reason in message


def test_yaml_syntax_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: lem\nparticipants: [unclosed\n")
    with pytest.raises(CaseError, match="broken.yaml: not valid YAML"):
        load_case(path)


def test_missing_file_is_a_case_error(tmp_path):
    with pytest.raises(CaseError, match="no such file"):
        load_case(tmp_path / "nope.yaml")


def test_overrides_replace_values_and_reject_unknown_paths(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(VALID))
    case = load_case(path, ["participants.home1.blocks.0.price=250", "horizon.periods=2"])
    assert case.participants["home1"].blocks[0].price == 250
    with pytest.raises(CaseError, match="participants.home9: no such field"):
        load_case(path, ["participants.home9.side=buy"])
    with pytest.raises(CaseError, match="expected path.to.field=value"):
        parse_override("horizon.periods")


def test_case_name_defaults_to_the_file_stem(tmp_path):
    data = {k: v for k, v in VALID.items() if k != "name"}
    path = tmp_path / "my_market.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_case(path).name == "my_market"
