"""A model in the project's own store, read straight from disk: `fer-lab predict` without MLflow's start-up.

Loading through MLflow imports most of MLflow and opens the store through SQLAlchemy: seconds before the
first prediction. In the common case, a local sqlite store whose artifacts are local files, the model's
folder is one query away and its Keras file loads directly. Anything else (a server, another schema, an
exported model) returns None here and goes through MLflow (`fer_lab.tracking.models`). MLflow is not
imported by this module.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from fer_lab import project
from fer_lab._native import import_tensorflow


def default_tracking_uri() -> str:
    """The project's own store: an sqlite database with artifacts beside it under mlruns/."""
    return f"sqlite:///{project.MLRUNS_DIR / 'mlflow.db'}"


def local_model_dir(run_id: str, tracking_uri: str = "", name: str = "model") -> Path | None:
    """The folder of the model `name` that run `run_id` logged, when the store is a local sqlite file.

    Args:
        run_id: The run.
        tracking_uri: The store (default: $MLFLOW_TRACKING_URI, else the project's).
        name: The model's name in the run (`runs:/<run_id>/<name>`).

    Returns:
        The folder holding its MLmodel file, or None when it cannot be found this way.
    """
    folder = _local_folder(tracking_uri, "SELECT artifact_location FROM logged_models WHERE source_run_id = ? "
                           "AND name = ? AND lifecycle_stage = 'active' ORDER BY creation_timestamp_ms DESC LIMIT 1",
                           (run_id, name))
    return folder if folder is not None and (folder / "MLmodel").is_file() else None


def run_artifact(run_id: str, path: str, tracking_uri: str = "") -> Path | None:
    """The file `path` among run `run_id`'s artifacts, when the store is a local sqlite file and it exists."""
    folder = _local_folder(tracking_uri, "SELECT artifact_uri FROM runs WHERE run_uuid = ? "
                           "AND lifecycle_stage = 'active'", (run_id,))
    return folder / path if folder is not None and (folder / path).is_file() else None


def _local_folder(tracking_uri: str, query: str, parameters: tuple[str, ...]) -> Path | None:
    """The local folder a one-column `query` of the sqlite store names as a file:// URI; None otherwise."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    database = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or not database.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as store:
            row = store.execute(query, parameters).fetchone()
    except sqlite3.Error:  # another MLflow schema, or a store being migrated: MLflow's loader decides
        return None
    if row is None or not str(row[0]).startswith("file://"):
        return None
    return Path(unquote(urlparse(row[0]).path))


def load_local_model(folder: Path) -> tuple[Any, dict[str, Any]] | None:
    """The Keras model saved in MLflow model folder `folder` and its metadata; None for other kinds of model."""
    try:
        spec = yaml.safe_load((folder / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    flavor = (spec.get("flavors") or {}).get("keras") or {}
    model_file = folder / str(flavor.get("data", "data")) / "model.keras"
    if not flavor or flavor.get("save_exported_model") or not model_file.is_file():
        return None
    import_tensorflow()
    import keras

    return keras.saving.load_model(model_file), dict(spec.get("metadata") or {})
