"""Drawing predictions on images and video frames: face boxes in one fixed colour per emotion, captioned.

Boxes follow `fer_lab.faces.detector`'s convention (x0, y0 inside the face; x1, y1 one past it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lab.faces.detector import BOX_COLUMNS

if TYPE_CHECKING:  # inference imports this module for `ImagePredictions.annotated`
    from fer_lab.apply.inference import ImagePredictions

# One fixed colour per emotion so every figure and video uses the same ones (RGB, from tab10).
_LABEL_COLORS = {"angry": (214, 39, 40), "disgust": (188, 189, 34), "fear": (148, 103, 189), "happy": (255, 127, 14),
                 "neutral": (127, 127, 127), "sad": (31, 119, 180), "surprise": (44, 160, 44)}
_OTHER_COLOR = (23, 190, 207)


def annotate(image: np.ndarray, faces: pd.DataFrame) -> np.ndarray:
    """A copy of an RGB (or grayscale) uint8 image with each face's box and `label confidence` drawn on it."""
    faces = faces[faces["label"] != ""]
    captions = [f"{label} {confidence:.2f}" for label, confidence in zip(faces["label"], faces["confidence"])]
    return draw_boxes(image, faces[list(BOX_COLUMNS)].to_numpy(), captions, list(faces["label"]))


def draw_boxes(image: np.ndarray, boxes: np.ndarray, captions: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """A copy of an RGB (or grayscale) uint8 image with boxes in their label's colour, captioned.

    Args:
        image: (H, W) or (H, W, 3+) uint8 pixels.
        boxes: (K, 4) boxes as x0, y0, x1, y1 in the image's pixels.
        captions: K texts drawn above the boxes.
        labels: K emotion names choosing the colours (`label_color`).

    Returns:
        A new (H, W, 3) uint8 RGB image.
    """
    import cv2

    canvas = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]).copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1400)
    for box, caption, label in zip(boxes, captions, labels):
        # cv2.rectangle's corners are inclusive pixels; x1/y1 are one past the face.
        x0, y0, x1, y1 = (int(round(value)) for value in box)
        color = _label_rgb(label)
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), color, thickness)
        (text_width, text_height), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = max(0, y0 - text_height - baseline - 2)
        cv2.rectangle(canvas, (x0, top), (x0 + text_width + 2, top + text_height + baseline + 2), color, -1)
        cv2.putText(canvas, caption, (x0 + 1, top + text_height + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), thickness, cv2.LINE_AA)
    return canvas


def _label_rgb(label: str) -> tuple[int, int, int]:
    return _LABEL_COLORS.get(label, _OTHER_COLOR)


def label_color(label: str) -> str:
    """The matplotlib colour (hex) of an emotion, matching the boxes drawn by `annotate`."""
    return "#{:02x}{:02x}{:02x}".format(*_label_rgb(label))


def photos_figure(photos: Sequence[ImagePredictions], max_images: int = 12) -> Figure:
    """The first `max_images` readable photos of `photos` with their faces drawn (`ImagePredictions.annotated`)."""
    # Imported here: seaborn, which plots imports, is slow to import and only figures need it.
    from fer_lab import plots

    result_of = {path: result for result in photos for path in result.table.loc[result.table["error"] == "", "path"]}
    shown = list(result_of)[:max_images]
    return plots.image_grid([result_of[path].annotated(path) for path in shown], [Path(path).name for path in shown],
                            ncols=max(1, min(3, len(shown))), cell_size=4.0, title="faces found and their top expression")
