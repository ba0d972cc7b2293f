"""The one home of MLflow: where runs are tracked, how they are found, and how models go in and out.

Every other module reaches MLflow through this package (`from fer_lab import tracking`), so MLflow's API,
its search syntax and the model flavour are handled here once. A base package: it knows notebooks only by
their runs' `notebook` tag.

Importing the package costs nothing: each name loads its module, and MLflow with it, on first use, so
`fer-lab predict` reading a local model (`local.py`) never starts MLflow.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> the module of this package that defines it (`module:attribute` where the name differs)
_EXPORTS = {
    "find_runs": "lookup", "load_csv_artifact": "lookup", "metric_history": "lookup",
    "resolve_training_run": "lookup", "run_params": "lookup", "training_run_of": "lookup",
    "load_model": "models", "load_run_model": "models", "log_model": "models", "log_model_run": "models",
    "DEFAULT_EXPERIMENT": "store", "METRICS_PER_REQUEST": "store", "MODEL_ARTIFACT": "store",
    "PROGRESS_BAR_VARIABLE": "store", "TRAIN_NOTEBOOK": "store", "UNFINISHED": "store",
    "active_parent_run_id": "store", "active_run_id": "store", "base_tags": "store", "configure": "store",
    "create_run": "store", "default_tracking_uri": "store", "experiment_id": "store",
    "fail_orphaned_runs": "store", "finish_run": "store", "git_commit": "store", "log_artifact": "store",
    "log_artifacts": "store", "log_figure": "store", "log_metrics": "store", "log_params": "store",
    "log_table": "store", "log_to_run": "store", "notebook_run": "store", "quoted": "store",
    "search_filter": "store", "set_tags": "store", "start_notebook_run": "store", "tag_dataset": "store",
    "log_dataset": "store", "ModelRef": "registry", "is_reference": "references", "log_lineage": "registry",
    "run_tags": "lookup", "STOP_TAG": "store",
    "load_reference": "registry:load", "register_model": "registry:register", "resolve_model": "registry:resolve",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """`name` from the module that defines it, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    value = getattr(import_module(f"{__name__}.{module}"), attribute or name)
    globals()[name] = value
    return value
