"""The one dlib face detector every stage uses, and its box convention.

`Detector` is the only place in fer_lab that constructs a dlib detector: dlib's HOG frontal face
detector (`model="hog"`) or its MMOD CNN (`model="cnn"`, far slower on a CPU). Its two users
prepare the image their own way and map the boxes back with `to_original`:

- `fer_lab.faces.detection` enlarges 48x48 dataset images (cached, in parallel) for the noise filter;
- `FaceDetector` below downscales full-size photos and video frames for `fer_lab.apply`.

Box convention (everywhere in fer_lab): a box is `(x0, y0, x1, y1)` in the pixels of the image
it was found in, `x0, y0` the first column and row inside the face, `x1, y1` the first column and
row *past* it (exclusive, like Python slices and PIL crops). dlib's `rect.right()` and
`rect.bottom()` are inclusive pixel indices, hence `x1 = right() + 1`, `y1 = bottom() + 1`; so
`x1 - x0` is the box's width in pixels and `gray[y0:y1, x0:x1]` is the face. Boxes mapped to
another image size are scaled as real-valued coordinates and clipped to that image.

Scores: HOG reports a detection's SVM margin (dlib's own decision threshold is 0); the CNN reports
its confidence, only for detections it accepts (so from 0 up).
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np
from PIL import Image

from fer_lab.errors import ConfigError

Model = Literal["hog", "cnn"]
MODELS: tuple[Model, ...] = ("hog", "cnn")
# Column names of a box in fer_lab's tables, in the order of the convention above.
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
# The smallest face (in detection-image pixels) dlib's HOG detector finds without upsampling.
HOG_MIN_FACE = 80


def import_quietly(module: str) -> ModuleType:
    """Import `face_recognition` or `face_recognition_models` without their pkg_resources deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return importlib.import_module(module)


def check_model(model: str) -> None:
    """Raise ConfigError unless `model` names one of the detector's MODELS."""
    if model not in MODELS:
        raise ConfigError(f"detector model must be one of {', '.join(MODELS)}, not {model!r}")


class Detector:
    """dlib's HOG or CNN face detector: boxes (see the module docstring) and scores, best first."""

    def __init__(self, model: Model = "hog") -> None:
        import dlib

        check_model(model)
        self.model = model
        if model == "hog":
            self._hog = dlib.get_frontal_face_detector()
        else:
            models = import_quietly("face_recognition_models")
            self._cnn = dlib.cnn_face_detection_model_v1(models.cnn_face_detector_model_location())

    def __call__(self, image: np.ndarray, upsample: int = 0, score_floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (K, 4) in `image`'s pixels, not clipped, and scores (K,), best first; none below `score_floor`.

        `image` is 2-D uint8 grayscale (or RGB); `upsample` is dlib's pyramid upsampling (each
        step finds faces half as small, at about four times the cost).
        """
        if self.model == "hog":
            rects, scores, _ = self._hog.run(image, upsample, score_floor)
        else:
            found = [d for d in self._cnn(image, upsample) if d.confidence >= score_floor]
            rects, scores = [d.rect for d in found], [d.confidence for d in found]
        if not len(rects):
            return np.zeros((0, 4)), np.zeros(0)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=float)
        scores = np.asarray(scores, dtype=float)
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order]


def to_original(boxes: np.ndarray, scale: tuple[float, float], shape: tuple[int, int],
                offset: float = 0.0) -> np.ndarray:
    """Boxes found in a resized (and `offset`-padded) copy, in the original image's pixels.

    Args:
        boxes: (K, 4) boxes in the detection image's pixels.
        scale: (x, y) original pixels per detection-image pixel.
        shape: (height, width) of the original image; boxes are clipped to it.
        offset: the border (in detection-image pixels) added around the resized image.

    Returns:
        (K, 4) float boxes in the original image's pixels.
    """
    height, width = shape
    placed = (np.asarray(boxes, dtype=float).reshape(-1, 4) - offset) * np.array([*scale, *scale])
    return np.clip(placed, 0.0, [width, height, width, height])


@dataclass(frozen=True)
class DetectorConfig:
    """How faces are found in a full-size image (photo or video frame).

    `max_side`: the detector sees the image downscaled so its longer side is at most this many
    pixels (never upscaled); faces smaller than about HOG_MIN_FACE / scale pixels are missed.
    `upsample`: dlib pyramid upsampling (each step finds faces half as small, at ~4x the time).
    `threshold`: minimum detector score (dlib's own default is 0).
    """

    max_side: int = 1024
    upsample: int = 0
    threshold: float = 0.0
    model: Model = "hog"

    def __post_init__(self) -> None:
        check_model(self.model)
        if not 64 <= self.max_side <= 8192:
            raise ConfigError(f"detector max_side must be between 64 and 8192 pixels, not {self.max_side}")
        if not 0 <= self.upsample <= 2:
            raise ConfigError(f"detector upsample must be 0, 1 or 2, not {self.upsample}")

    def min_face(self, height: int, width: int) -> float:
        """The smallest face (in original pixels) this configuration can find in a height x width image."""
        scale = min(1.0, self.max_side / max(height, width)) * 2**self.upsample
        return HOG_MIN_FACE / scale


class FaceDetector:
    """The detector on a downscaled copy of a full-size image, boxes in the original's pixels."""

    def __init__(self, config: DetectorConfig = DetectorConfig()) -> None:
        self.config = config
        self._detector = Detector(config.model)

    def __call__(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (K, 4) as x0, y0, x1, y1 in `gray`'s pixels and their scores (K,), best first."""
        height, width = gray.shape
        scale = min(1.0, self.config.max_side / max(height, width))
        small = gray
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
        boxes, scores = self._detector(small, self.config.upsample, self.config.threshold)
        return to_original(boxes, (width / small.shape[1], height / small.shape[0]), gray.shape), scores
