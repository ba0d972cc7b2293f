"""The one home of MLflow: where runs are tracked, how they are found, and how models go in and out.

Every other module reaches MLflow through this package (`from fer_lab import tracking`), so MLflow's API,
its search syntax and the model flavour are handled here once. A base package: it knows notebooks only by
their runs' `notebook` tag.
"""

from fer_lab.tracking.lookup import (
    find_runs,
    load_csv_artifact,
    metric_history,
    resolve_training_run,
    run_params,
    training_run_of,
)
from fer_lab.tracking.models import (
    load_model,
    load_run_model,
    log_model,
)
from fer_lab.tracking.registry import ModelRef, is_reference
from fer_lab.tracking.registry import load as load_reference
from fer_lab.tracking.registry import register as register_model
from fer_lab.tracking.registry import resolve as resolve_model
from fer_lab.tracking.store import (
    DEFAULT_EXPERIMENT,
    METRICS_PER_REQUEST,
    MODEL_ARTIFACT,
    PROGRESS_BAR_VARIABLE,
    TRAIN_NOTEBOOK,
    UNFINISHED,
    active_parent_run_id,
    active_run_id,
    base_tags,
    configure,
    create_run,
    default_tracking_uri,
    experiment_id,
    finish_run,
    git_commit,
    log_artifact,
    log_artifacts,
    log_figure,
    log_metrics,
    log_params,
    log_table,
    log_to_run,
    notebook_run,
    quoted,
    search_filter,
    set_tags,
    start_notebook_run,
    tag_dataset,
)

__all__ = [
    "DEFAULT_EXPERIMENT",
    "METRICS_PER_REQUEST",
    "MODEL_ARTIFACT",
    "ModelRef",
    "PROGRESS_BAR_VARIABLE",
    "TRAIN_NOTEBOOK",
    "UNFINISHED",
    "active_parent_run_id",
    "active_run_id",
    "base_tags",
    "configure",
    "create_run",
    "default_tracking_uri",
    "experiment_id",
    "find_runs",
    "finish_run",
    "git_commit",
    "is_reference",
    "load_csv_artifact",
    "load_model",
    "load_reference",
    "load_run_model",
    "log_artifact",
    "log_artifacts",
    "log_figure",
    "log_metrics",
    "log_model",
    "log_params",
    "log_table",
    "log_to_run",
    "metric_history",
    "notebook_run",
    "quoted",
    "register_model",
    "resolve_model",
    "resolve_training_run",
    "run_params",
    "search_filter",
    "set_tags",
    "start_notebook_run",
    "tag_dataset",
    "training_run_of",
]
