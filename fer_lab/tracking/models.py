"""Models in and out of MLflow: the Keras flavour with fer-lab's labels in its metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
import numpy as np

from fer_lab._native import import_tensorflow
from fer_lab._shared import one_line
from fer_lab.errors import ConfigError
from fer_lab.tracking.store import MODEL_ARTIFACT, base_tags, configure, experiment_id, log_params


def log_model(model: Any, labels: Sequence[str]) -> str:
    """Log a Keras model to the active run at `model` (Keras 3 flavour, pyfunc-loadable); return its URI.

    Its signature is the model's input, (N, size, size, 1) float32 pixels, and the class probabilities.
    """
    tf = import_tensorflow()
    import keras
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    input_size = int(model.input_shape[1])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, input_size, input_size, 1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(labels)))]),
    )
    mlflow.set_tag("has_model", "true")  # what run lookups require: a run interrupted before this has no model
    info = mlflow.keras.log_model(
        model, name=MODEL_ARTIFACT, signature=signature,
        metadata={"labels": list(labels), "input_size": input_size},
        # Pinned here: inferring requirements would load the model again in a subprocess.
        pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"],
    )
    return info.model_uri


def log_model_run(model: Any, labels: Sequence[str], *, experiment: str, run_name: str,
                  params: Mapping[str, Any], tags: Mapping[str, str]) -> tuple[str, str]:
    """A new, finished run of `experiment` holding `model` (as `log_model` logs it), `params` and `tags`.

    Returns:
        The run's id and its model's URI.
    """
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name) as run:
        mlflow.set_tags({**base_tags(), **tags})
        log_params(params)
        uri = log_model(model, labels)
    return run.info.run_id, uri


def load_model(uri: str, failure: str = "") -> tuple[Any, dict[str, Any]]:
    """A Keras model from any MLflow model URI (`runs:/`, `models:/`, a folder) and its metadata."""
    import_tensorflow()
    try:
        info = mlflow.models.get_model_info(uri)
        model = mlflow.keras.load_model(uri)
    except Exception as error:  # MLflow raises several types for a missing run, model or registry entry
        raise ConfigError(f"{failure or f'cannot load model {uri!r}'}: {one_line(error)[:300]}") from error
    return model, dict(info.metadata or {})


def load_run_model(run_id: str, tracking_uri: str = "") -> tuple[Any, list[str]]:
    """The model a 03_train run logged, with its class labels in output order."""
    if tracking_uri:
        configure(tracking_uri)
    uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    model, metadata = load_model(uri, f"run {run_id} has no loadable model at {MODEL_ARTIFACT}")
    labels = metadata.get("labels")
    if not labels:
        raise ConfigError(f"model of run {run_id} carries no labels in its metadata")
    return model, list(labels)
