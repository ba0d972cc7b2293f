"""Shared fixtures: generated datasets (never the real data in ../shared) written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow's telemetry thread sets and unsets a variable in os.environ while requests iterates it in another
# thread (KeyError: '_MLFLOW_TELEMETRY_SESSION_ID' from a tracking-server call); tests send none.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default embedded sample (Kaggle folder layout), generated once per test session.

    Read-only for tests: copy it (`shutil.copytree`) before changing anything in it.
    """
    from fer_lab.data import synthetic

    return synthetic.make_sample(tmp_path_factory.mktemp("sample") / "sample")


@pytest.fixture(scope="session")
def sample_csv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default sample in fer2013.csv form (+ fer2013new.csv votes), generated once per session."""
    from fer_lab.data import synthetic

    return synthetic.make_sample(tmp_path_factory.mktemp("sample_csv") / "sample", fmt="csv")


@pytest.fixture
def write_image():
    """Write a uint8 array (H, W) or (H, W, C) as an image file, creating folders; returns the path."""

    def write(path: Path, pixels: np.ndarray, **save_options: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, **save_options)
        return path

    return write


# The shared parameters the runner injects into every notebook, as a test notebook declares them.
SHARED_NOTEBOOK_PARAMETERS = ('data_dir = "data/sample"\nwork_dir = ""\nseed = 0\ntracking_uri = ""\n'
                              'experiment = "fer-lab"\nparent_run_id = ""\n')


@pytest.fixture
def write_notebook():
    """Write a two-cell notebook: the shared parameters plus `parameters` (tagged), then `body`."""
    import nbformat

    def write(path: Path, parameters: str, body: str) -> Path:
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(SHARED_NOTEBOOK_PARAMETERS + parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell(body)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, path)
        return path

    return write


@pytest.fixture
def gradient_image():
    """Make a smooth random uint8 grayscale image, distinct per seed: gradient_image(seed, height, width)."""

    def make(seed: int = 0, height: int = 48, width: int = 48) -> np.ndarray:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:height, 0:width]
        base = rng.uniform(20, 80) + rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y
        return np.clip(base + rng.normal(0, 5, (height, width)), 0, 255).astype(np.uint8)

    return make


BASE_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise")  # the sample's classes less neutral


@pytest.fixture(scope="session")
def base_model_store(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(tracking_uri, run_id): a tiny plain CNN trained briefly on the sample's classes less neutral, logged
    by a 03_train run; the base model that transfer and export tests start from."""
    import keras
    import mlflow

    from fer_lab import data, tracking
    from fer_lab.training import models

    uri = f"sqlite:///{tmp_path_factory.mktemp('base_model') / 'mlflow.db'}"
    manifest = data.build_manifest(sample_dir)
    rows = manifest[manifest["readable"] & (manifest["split"] == "train")
                    & manifest["label"].isin(BASE_CLASSES)].reset_index(drop=True)
    pixels = data.load_pixels(sample_dir, rows)
    config = models.model_config_from_params("cnn", 48, "none", head={"pooling": "avg", "dropout": 0.0},
                                             cnn={"widths": [8, 16], "convs_per_block": 1, "batchnorm_momentum": 0.9})
    model = models.build_model(config, len(BASE_CLASSES))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    targets = np.array([BASE_CLASSES.index(label) for label in rows["label"]])
    model.fit(pixels[..., None].astype("float32"), targets, epochs=3, batch_size=32, verbose=0)
    with tracking.start_notebook_run("03_train", {"backbone": "cnn"}, tracking_uri=uri, experiment="base") as run:
        tracking.log_dataset(rows[["path", "label"]], "sample:fer2013:raw:no-neutral", str(sample_dir))
        tracking.log_model(model, BASE_CLASSES)
    mlflow.end_run()
    return uri, run.info.run_id
