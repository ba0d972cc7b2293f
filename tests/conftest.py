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
