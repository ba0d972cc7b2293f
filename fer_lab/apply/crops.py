"""Face crops classified directly: each image is one face, framed as FER2013's 48 px images are; no detection.

The face detector needs faces of about 80 px in a photo; a 48 px crop holds a face too small and too
tightly framed for it. `fer-lab predict --crops` takes this path instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab._shared import chunks
from fer_lab.apply.inference import (
    ImagePredictions,
    LoadedModel,
    Predictor,
    face_table,
    no_face_row,
    read_image,
)
from fer_lab.data import imaging
from fer_lab.errors import FerLabError

CROP_MAX_SIDE = 128  # an image no larger than this on either side is a face crop rather than a photo


def predict_crops(loaded: LoadedModel, paths: Sequence[str | os.PathLike[str]], *, chunk: int = 256,
                  progress: bool = False) -> ImagePredictions:
    """Classify each image file whole, as one face.

    Args:
        loaded: The model.
        paths: Image files, each a face crop.
        chunk: Files per model call.
        progress: Show a progress bar.

    Returns:
        Rows as `Predictor.predict_files` gives them, one per file: the face's box is the whole image (no
        detector score); a file that cannot be read gets its `error` and no prediction.
    """
    from tqdm.auto import tqdm

    predictor = Predictor(loaded)
    tables = []
    with tqdm(total=len(paths), desc="crops", unit="img", disable=not progress) as bar:
        for batch in chunks([Path(path) for path in paths], chunk):
            grays: list[np.ndarray | None] = []
            errors = []
            for path in batch:
                try:
                    grays.append(read_image(path))
                    errors.append("")
                except FerLabError as error:
                    grays.append(None)
                    errors.append(str(error))
            readable = [gray for gray in grays if gray is not None]
            inputs = np.stack([imaging.to_model_input(gray, loaded.input_size) for gray in readable]) if readable \
                else np.zeros((0, loaded.input_size, loaded.input_size), np.uint8)
            probabilities = iter(predictor.probabilities(inputs))
            for path, gray, error in zip(batch, grays, errors):
                if gray is None:
                    table = no_face_row(loaded.labels)
                else:
                    box = np.array([[0.0, 0.0, gray.shape[1], gray.shape[0]]])
                    table = face_table(box, np.array([np.nan]), next(probabilities)[None], loaded.labels)
                table.insert(0, "path", str(path))
                table.insert(1, "height", gray.shape[0] if gray is not None else pd.NA)
                table.insert(2, "width", gray.shape[1] if gray is not None else pd.NA)
                table["error"] = error
                tables.append(table)
            bar.update(len(batch))
    table = pd.concat(tables, ignore_index=True)
    table[["height", "width"]] = table[["height", "width"]].astype("Int64")
    return ImagePredictions(table, loaded.labels)


def crop_hint(result: ImagePredictions) -> str:
    """A note for images as small as face crops, on which a detector's answer means little ("" otherwise)."""
    readable = result.table[result.table["error"] == ""]
    if readable.empty:
        return ""
    small = readable[readable[["height", "width"]].max(axis=1) <= CROP_MAX_SIDE]
    if small.empty:
        return ""
    first = small.iloc[0]
    return (f"{Path(first['path']).name} is {first['width']}x{first['height']} px: it looks like a face crop, not a "
            f"photo ({len(small)} of {len(readable)} readable images are that small); the face detector needs photos. "
            "Classify crops directly, each image as one face: fer-lab predict PATH --crops --model REF")
