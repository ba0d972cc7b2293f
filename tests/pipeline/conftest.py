"""A project of its own for tests that start `fer-lab` processes with the defaults (reports/, mlruns/, data/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fer_lab import project


@pytest.fixture
def temp_project(tmp_path: Path, sample_dir: Path) -> Path:
    """A project root (for FER_LAB_ROOT) with the notebooks, params and benchmarks' review file, and the sample
    in data/sample where the notebooks' defaults look for it."""
    root = tmp_path / "project"
    for folder in ("notebooks", "params"):
        shutil.copytree(project.ROOT / folder, root / folder)
    (root / "benchmarks").mkdir()
    for review in (project.ROOT / "benchmarks").glob("*.csv"):
        shutil.copy(review, root / "benchmarks" / review.name)
    shutil.copytree(sample_dir, root / "data" / "sample")
    return root
