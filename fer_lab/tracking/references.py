"""The forms of a model reference, checked without MLflow: training tells a trained model from weights
with it, also where MLflow is not installed (`fer-lab train` on a GPU machine)."""

from __future__ import annotations

import re
from pathlib import Path

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def is_reference(text: str) -> bool:
    """Whether `text` has the form of a model reference (not whether the model exists)."""
    text = str(text).strip()
    return bool(RUN_ID.match(text) or text.startswith(("runs:/", "models:/")) or text.endswith(".keras")
                or (Path(text).is_dir() and (Path(text) / "MLmodel").is_file()))
