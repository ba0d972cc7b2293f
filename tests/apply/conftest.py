"""Fixtures of the apply tests: a model that really reads the sample's expressions, fitted in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def expression_model(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Any]:
    """(tracking_uri, run_id, framing) of a 03_train-like run whose model is a ridge classifier on the sample's
    faces, and the sample's framing (`inference.measure_framing`), which its crops need.

    A Keras model (2x2 average pooling, per-image standardisation, one softmax layer) whose weights
    are solved in closed form: no training loop, so it costs seconds even on a busy CPU, and it reads
    the sample's generated expressions well enough for a study to find a built-in effect.
    """
    import keras

    from fer_lab import data, tracking
    from fer_lab.apply import inference

    manifest = data.build_manifest(sample_dir)
    train = manifest[(manifest["split"] == "train") & manifest["readable"].astype(bool)
                     & manifest["label"].isin(data.CLASSES)].reset_index(drop=True)
    pixels = data.load_pixels(sample_dir, train).astype(np.float32) / 255.0
    pooled = pixels.reshape(len(pixels), 24, 2, 24, 2).mean(axis=(2, 4)).reshape(len(pixels), -1)
    features = (pooled - pooled.mean(1, keepdims=True)) / np.sqrt(pooled.var(1, keepdims=True) + 1e-3)
    targets = np.eye(len(data.CLASSES))[[data.CLASSES.index(label) for label in train["label"]]] * 2 - 1
    weights = np.linalg.solve(features.T @ features + 10 * np.eye(features.shape[1]), features.T @ targets)
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.AveragePooling2D(2)(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.LayerNormalization(epsilon=1e-3, center=False, scale=False)(keras.layers.Flatten()(x))
    dense = keras.layers.Dense(len(data.CLASSES), activation="softmax")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([(5 * weights).astype(np.float32), np.zeros(len(data.CLASSES), np.float32)])
    uri = f"sqlite:///{tmp_path_factory.mktemp('expression_model')}/mlflow.db"
    with tracking.start_notebook_run("03_train", {}, tracking_uri=uri, experiment="study-tests") as run:
        tracking.log_model(model, data.CLASSES)
    framing = inference.measure_framing(data.load_pixels(sample_dir, train), max_images=60)
    return uri, run.info.run_id, framing
