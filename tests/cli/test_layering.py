"""Models hold maths and results only: no model module imports the case glue.

Walks every import statement (top level and inside functions) of every module in
models/ with ``ast``, so a lazy import inside a function counts too.
"""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

MODELS = Path(__file__).resolve().parents[2] / "models"
GLUE = (
    "gridmarkets.case",
    "gridmarkets.registry",
    "gridmarkets.cli",
    "gridmarkets.study",
    "gridmarkets.batch",
    "gridmarkets.pipeline",
)
ALLOWED_SPECS = {"gridmarkets.specs.base"}


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of the file names (``from x import y`` gives x
    and x.y, since y may be a sub-module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_glue(name: str) -> bool:
    if any(name == a or name.startswith(a + ".") for a in ALLOWED_SPECS):
        return False
    if name == "gridmarkets.specs" or name.startswith("gridmarkets.specs."):
        return True
    return any(name == g or name.startswith(g + ".") for g in GLUE)


def test_the_walk_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gridmarkets.case import load_case\n")
    assert {n for n in imported_modules(module) if is_glue(n)} == {
        "gridmarkets.case",
        "gridmarkets.case.load_case",
    }


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.py")), ids=lambda p: p.stem)
def test_models_do_not_import_the_glue(path):
    assert sorted(n for n in imported_modules(path) if is_glue(n)) == []
