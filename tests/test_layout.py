"""The package's shape, checked from the source: one-way imports, small modules, thin notebooks."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fer_lab"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_MODULE_LINES = 450
# Lower layers never import higher ones; packages on one layer do not import each other.
LAYERS = {"base": 0, "data": 1, "faces": 2, "training": 2, "analysis": 3, "apply": 3, "pipeline": 4, "cli": 5}
NOTEBOOK_STAGE = {"01": "analysis", "02": "faces", "03": "training", "04": "analysis", "05": "analysis",
                  "06": "apply", "07": "apply"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    if parts[1] in LAYERS:
        return parts[1]
    return "base"


def fer_lab_imports(source: str, module: str) -> set[str]:
    """Every fer_lab module `source` imports, at any depth (function-level imports count too)."""
    tree = ast.parse(source)
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
                   for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fer_lab"):
            found.add(node.module)
            # `from fer_lab.data import imaging` imports the submodule fer_lab.data.imaging
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists())
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fer_lab"))
    found.discard(module)
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {name: {imported for imported in fer_lab_imports(path.read_text(), name) if imported in MODULES}
         for name, path in MODULES.items()}


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in GRAPH[node]:
            # A package's __init__ is not a dependency edge of its own modules.
            if nxt == node.rsplit(".", 1)[0] and nxt in MODULES and MODULES[nxt].name == "__init__.py":
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if state.get(nxt) is None:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_imports_point_one_way() -> None:
    wrong = []
    for module, imported in GRAPH.items():
        group = group_of(module)
        for target in imported:
            other = group_of(target)
            if other != group and LAYERS[other] >= LAYERS[group]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines"


def test_mlflow_is_imported_only_in_tracking() -> None:
    importers = [module for module, path in MODULES.items()
                 if re.search(r"^\s*(import mlflow|from mlflow)", path.read_text(), flags=re.M)]
    assert importers and all(module.startswith("fer_lab.tracking") for module in importers), importers


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_thin_and_import_their_stage(notebook: Path) -> None:
    code = "\n".join("".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"]
                     if cell["cell_type"] == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    tree = ast.parse(code)
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    imported = fer_lab_imports(code, "")
    stages = {group_of(module) for module in imported} - {"base", "data", "pipeline"}
    assert stages <= {NOTEBOOK_STAGE[notebook.stem[:2]]}, sorted(imported)
