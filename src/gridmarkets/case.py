"""Case files: YAML validated by pydantic.

A case names its model, its network, its horizon, its participants and prices. The
parts every model shares live in :mod:`gridmarkets.specs.base` (:class:`CaseBase`,
:class:`Horizon`, :class:`NetworkSpec`, re-exported here); each model's own spec
subclasses :class:`CaseBase` in ``gridmarkets.specs.<model>`` and is found through
:mod:`gridmarkets.registry`. Participants are mappings
keyed by id, so a dotted path (``prosumers.h3.battery.capacity_kwh``) names any value;
``--set`` and sweeps use :func:`set_path`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gridmarkets.errors import CaseError, InputError
from gridmarkets.inputs import StrictLoader, read_yaml_file

if TYPE_CHECKING:
    from pydantic import ValidationError

    from gridmarkets.specs.base import CaseBase, Horizon, NetworkSpec, Spec

__all__ = [
    "CaseBase",
    "Horizon",
    "NetworkSpec",
    "Spec",
    "case_hash",
    "load_case",
    "read_yaml",
    "set_path",
    "shipped_cases_dir",
    "validate",
]


SHARED_SPECS = ("CaseBase", "Horizon", "NetworkSpec", "Spec")


def __getattr__(name: str) -> Any:
    """The shared specs re-exported from :mod:`gridmarkets.specs.base`, imported on first
    use: listing or reading case files (``gridmarkets cases``) does not load pydantic."""
    if name in SHARED_SPECS:
        from gridmarkets.specs import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shipped_cases_dir() -> Path:
    """The folder of the case files that ship with gridmarkets (package gridmarkets.data)."""
    return Path(str(resources.files("gridmarkets.data") / "cases"))


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``file: field.path: reason``."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{source}: {path}: {e['msg']}")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping through the input boundary (:mod:`gridmarkets.inputs`: size
    limit, UTF-8, no duplicate keys, bounded aliases), every failure a CaseError naming
    the file."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{path}: no such file")
    try:
        data = read_yaml_file(path)
    except InputError as err:
        raise CaseError(str(err)) from None
    if not isinstance(data, dict):
        raise CaseError(f"{path}: expected a mapping at the top level")
    return data


def validate(data: dict[str, Any], source: str = "<case>") -> CaseBase:
    """Validate a case mapping with the spec of the model it names."""
    from pydantic import ValidationError

    from gridmarkets.registry import case_class

    if not isinstance(data, dict):
        raise CaseError(f"{source}: expected a mapping at the top level")
    spec = case_class(data.get("model"), source)
    try:
        return spec.model_validate(data)
    except ValidationError as err:
        raise CaseError(format_validation_error(err, source)) from None


def load_case(path: str | Path, overrides: list[str] | None = None) -> CaseBase:
    """Read, override (``path.to.field=value``) and validate a case file."""
    data = read_yaml(path)
    for item in overrides or []:
        data = set_path(data, *parse_override(item))
    data.setdefault("name", Path(path).stem)
    return validate(data, str(path))


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b.c=value``; the value is read as YAML (numbers, lists, null)."""
    path, sep, raw = item.partition("=")
    if not sep or not path.strip():
        raise CaseError(f"--set {item!r}: expected path.to.field=value")
    try:
        value = yaml.load(raw, Loader=StrictLoader)
    except yaml.YAMLError:
        value = raw
    return path.strip(), value


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``data`` with the value at a dotted path replaced.

    Every key but the last must exist, so a typo is an error naming the path rather
    than a new field that validation might not notice.
    """
    result = copy.deepcopy(data)
    keys = path.split(".")
    node: Any = result
    for depth, key in enumerate(keys[:-1]):
        node = _child(node, key, ".".join(keys[: depth + 1]))
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise CaseError(f"{path}: {'.'.join(keys[:-1])} is a value, not a section")
    return result


def _child(node: Any, key: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, key, path)]
    if isinstance(node, dict):
        if key not in node:
            raise CaseError(f"{path}: no such field in the case")
        return node[key]
    raise CaseError(f"{path}: cannot descend into a value")


def _list_index(node: list, key: str, path: str) -> int:
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise CaseError(f"{path}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def case_hash(case: CaseBase) -> str:
    """A short, stable hash of a validated case (for provenance and caching)."""
    text = json.dumps(case.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
