"""Where the project's folders are, and how user paths are resolved against them."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("FER_LAB_ROOT", Path(__file__).resolve().parents[1]))
NOTEBOOKS_DIR = ROOT / "notebooks"
DATA_DIR = ROOT / "data"
SAMPLE_DIR = DATA_DIR / "sample"
WORK_DIR = DATA_DIR / "work"
REPORTS_DIR = ROOT / "reports"
MLRUNS_DIR = ROOT / "mlruns"
PARAMS_DIR = ROOT / "params"


def resolve(path: str | os.PathLike[str]) -> Path:
    """Return `path` as an absolute path; relative paths are taken from the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (ROOT / path).resolve()
