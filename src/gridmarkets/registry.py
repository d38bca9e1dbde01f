"""Which models a case file may name, and where their specs and runners live.

Each model's case module, ``gridmarkets.specs.<model>``, exposes ``CaseSpec`` (a
:class:`~gridmarkets.specs.base.CaseBase` subclass whose ``model`` field is
``Literal[<name>]``) and ``ADAPTER`` (a :class:`~gridmarkets.specs.adapter.CaseAdapter`,
which :func:`gridmarkets.pipeline.run_case` drives). The model modules
themselves (``gridmarkets.models.<model>``) know nothing of case files. Adding a model is
one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, TypeAdapter

from gridmarkets.errors import CaseError

if TYPE_CHECKING:
    from gridmarkets.specs.adapter import CaseAdapter

MODELS: dict[str, str] = {
    "aggregator": "gridmarkets.specs.aggregator",
    "flexibility": "gridmarkets.specs.flexibility",
    "lem": "gridmarkets.specs.lem",
    "community": "gridmarkets.specs.community",
    "p2p": "gridmarkets.specs.p2p",
    "prosumer": "gridmarkets.specs.prosumer",
}


def model_module(name: str) -> ModuleType:
    """The case module (spec and runner) of model ``name``."""
    return importlib.import_module(MODELS[name])


def adapter(name: str) -> CaseAdapter:
    """How the case pipeline runs model ``name``'s cases (its module's ``ADAPTER``)."""
    return model_module(name).ADAPTER


def case_class(name: Any, source: str = "<case>") -> type:
    """The pydantic spec of model ``name``; an unknown name is a CaseError."""
    if not isinstance(name, str) or name not in MODELS:
        known = ", ".join(sorted(MODELS))
        raise CaseError(f"{source}: model: {name!r} is not one of the models ({known})")
    return model_module(name).CaseSpec


def json_schema() -> dict[str, Any]:
    """JSON Schema of a case file: one alternative per model, chosen by ``model``."""
    specs = tuple(case_class(name) for name in sorted(MODELS))
    union = specs[0] if len(specs) == 1 else Union[specs]  # noqa: UP007
    adapter = TypeAdapter(Annotated[union, Field(discriminator="model")])
    return adapter.json_schema()
