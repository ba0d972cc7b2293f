"""The setup every notebook's first code cell runs: its parameters, its data and its MLflow run.

A notebook's signature is its `parameters` cell; papermill (or the user, in JupyterLab) sets the
values. `start` reads those values back by name from the notebook's namespace, so what MLflow logs
is exactly what the notebook ran with, and no notebook repeats the list.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Mapping

from fer_lab import project, tracking
from fer_lab.data import synthetic

# Where a run is tracked, not what it computes: kept out of the logged parameters.
TRACKING_PARAMETERS = ("tracking_uri", "experiment", "parent_run_id", "work_dir", "run_name", "optuna_trial")


def declared_parameters(notebook: Path) -> dict[str, str]:
    """Names and default expressions (source text) of the notebook's `parameters` cell, in order.

    Read with `ast` rather than `papermill.inspect_notebook`: importing papermill costs a kernel seconds
    (its JSON-schema stack builds dozens of grammars), and every notebook calls this in its first cell.
    """
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            declared = {}
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                    node, ast.AnnAssign) and node.value is not None else []
                for target in targets:
                    if isinstance(target, ast.Name):
                        declared[target.id] = ast.get_source_segment(source, node.value)
            return declared
    return {}


def code_cells(notebook: Path) -> list[str]:
    """The source of each code cell, IPython magics and shell lines left out (plain Python)."""
    return ["\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
            for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"] if cell["cell_type"] == "code"]


def import_statements(notebook: Path) -> list[str]:
    """The notebook's top-level import statements, in order (what its kernel can load ahead of time)."""
    statements = []
    for source in code_cells(notebook):
        try:
            tree = ast.parse(source)
        except SyntaxError:  # a cell the notebook itself will report
            continue
        statements += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return list(dict.fromkeys(statements))


def parameter_values(notebook: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The current value of each parameter `notebook` declares, read from its `namespace` (its globals)."""
    declared = declared_parameters(project.NOTEBOOKS_DIR / f"{notebook}.ipynb")
    return {name: namespace[name] for name in declared if name in namespace}


def start(
    notebook: str,
    namespace: Mapping[str, Any],
    *,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Any, Path | None, Path | None]:
    """Resolve the notebook's data and work folders and start its MLflow run with every parameter logged.

    Args:
        notebook: The notebook's name, e.g. `03_train`.
        namespace: The notebook's globals, holding its parameter values.
        extra: Values logged beside (or instead of) the parameters, e.g. a resolved model run id.

    Returns:
        The active MLflow run, the absolute data path and the work path (None where the notebook has
        no `data_dir` / `work_dir`). The embedded sample is generated first when `data_dir` names it.
    """
    values = parameter_values(notebook, namespace)
    data_path = project.resolve(values["data_dir"]) if "data_dir" in values else None
    work_path = project.resolve(values["work_dir"]) if "work_dir" in values else None
    if data_path == project.SAMPLE_DIR:
        synthetic.ensure_sample()
    logged = {name: _loggable(value) for name, value in values.items() if name not in TRACKING_PARAMETERS}
    if data_path is not None:
        logged["data_dir"] = str(data_path)
    logged.update({name: _loggable(value) for name, value in (extra or {}).items()})
    run = tracking.start_notebook_run(
        notebook, logged, tracking_uri=values.get("tracking_uri", ""),
        experiment=values.get("experiment", tracking.DEFAULT_EXPERIMENT),
        parent_run_id=values.get("parent_run_id", ""), run_name=values.get("run_name", ""),
    )
    return run, data_path, work_path


def _loggable(value: Any) -> Any:
    """Lists and dicts as JSON, so a logged parameter can be pasted back into a params file."""
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else value
