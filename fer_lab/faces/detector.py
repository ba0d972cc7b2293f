"""The one face detector every stage uses, and its box convention.

`Detector` is the only place in fer_lab that constructs a face detector: dlib's HOG frontal face
detector (`model="hog"`), its MMOD CNN (`model="cnn"`, far slower on a CPU), or MediaPipe's
full-range BlazeFace (`model="mediapipe"`: small, turned and tilted faces, in real time on a CPU;
its model ships inside the `mediapipe` wheel, so it works offline). Its two users
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
its confidence, only for detections it accepts (so from 0 up); MediaPipe its confidence (0..1, only
detections from MEDIAPIPE_MIN_SCORE up). MediaPipe also gives each face's eye centres, which
`FaceDetector.detect` returns so crops can be rotated upright (eyes level) before classification.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator, Literal

import numpy as np
from PIL import Image

from fer_lab import _native
from fer_lab.errors import ConfigError

Model = Literal["hog", "cnn", "mediapipe"]
MODELS: tuple[Model, ...] = ("hog", "cnn", "mediapipe")
# MediaPipe's own default confidence threshold; its boxes below it are never returned.
MEDIAPIPE_MIN_SCORE = 0.5
# The smallest face (detection-image pixels) MediaPipe's full-range model finds reliably (measured:
# benchmarks/bench_detectors.py).
MEDIAPIPE_MIN_FACE = 24
# Side (detection-image pixels) of the overlapping tiles MediaPipe also runs on, for small faces.
MEDIAPIPE_TILE = 256
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
    """dlib's HOG or CNN, or MediaPipe's face detector: boxes (see the module docstring) and scores, best first.

    `eyes` holds, after each call, the (K, 2, 2) eye centres (x, y; the person's right eye first) of
    the boxes returned, NaN where the model gives none (dlib's).
    """

    def __init__(self, model: Model = "hog") -> None:
        check_model(model)
        self.model = model
        self.eyes = np.zeros((0, 2, 2))
        if model == "mediapipe":
            self._mediapipe = _mediapipe_detector()
            return
        import dlib

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
        if self.model == "mediapipe":
            return self._run_mediapipe(image, score_floor)
        if self.model == "hog":
            rects, scores, _ = self._hog.run(image, upsample, score_floor)
        else:
            found = [d for d in self._cnn(image, upsample) if d.confidence >= score_floor]
            rects, scores = [d.rect for d in found], [d.confidence for d in found]
        if not len(rects):
            self.eyes = np.zeros((0, 2, 2))
            return np.zeros((0, 4)), np.zeros(0)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=float)
        scores = np.asarray(scores, dtype=float)
        order = np.argsort(-scores, kind="stable")
        self.eyes = np.full((len(boxes), 2, 2), np.nan)
        return boxes[order], scores[order]

    def _run_mediapipe(self, image: np.ndarray, score_floor: float) -> tuple[np.ndarray, np.ndarray]:
        """MediaPipe on the whole image and on overlapping MEDIAPIPE_TILE tiles, duplicates merged.

        The model sees its input at 192x192: a 30 px face in a 640x360 frame shrinks below what it
        finds, the same face in a 256 px tile does not.
        """
        rgb = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3])
        height, width = rgb.shape[:2]
        views = [(0, 0, width, height)] + [(x, y, min(width, x + MEDIAPIPE_TILE), min(height, y + MEDIAPIPE_TILE))
                                           for y in _tile_starts(height) for x in _tile_starts(width)]
        boxes, scores, eyes = [], [], []
        for x0, y0, x1, y1 in dict.fromkeys(views):
            tile = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            size = np.array([x1 - x0, y1 - y0])
            for detection in self._mediapipe.process(tile).detections or []:
                score = float(detection.score[0])
                box = detection.location_data.relative_bounding_box
                if score < score_floor or box.width <= 0:
                    continue
                corner = np.array([box.xmin, box.ymin]) * size + (x0, y0)
                boxes.append([*corner, *(corner + np.array([box.width, box.height]) * size)])
                points = detection.location_data.relative_keypoints
                eyes.append([np.array([points[k].x, points[k].y]) * size + (x0, y0) for k in (0, 1)])
                scores.append(score)
        keep = _non_maximum(np.asarray(boxes, dtype=float).reshape(-1, 4), np.asarray(scores, dtype=float))
        self.eyes = np.asarray(eyes, dtype=float).reshape(-1, 2, 2)[keep]
        return np.asarray(boxes, dtype=float).reshape(-1, 4)[keep], np.asarray(scores, dtype=float)[keep]


def _tile_starts(length: int) -> list[int]:
    """Starts of MEDIAPIPE_TILE-long windows covering `length` with at least a quarter overlap."""
    if length <= MEDIAPIPE_TILE:
        return []
    count = math.ceil((length - MEDIAPIPE_TILE) / (0.75 * MEDIAPIPE_TILE)) + 1
    return [round(start) for start in np.linspace(0, length - MEDIAPIPE_TILE, count)]


def _non_maximum(boxes: np.ndarray, scores: np.ndarray, overlap: float = 0.3) -> np.ndarray:
    """Indices of the boxes kept, best first: each drops the weaker ones it overlaps (IoU or containment)."""
    keep: list[int] = []
    for index in np.argsort(-scores, kind="stable"):
        x0, y0, x1, y1 = boxes[index]
        area = (x1 - x0) * (y1 - y0)
        clash = False
        for kept in keep:
            a0, b0, a1, b1 = boxes[kept]
            inter = max(0.0, min(x1, a1) - max(x0, a0)) * max(0.0, min(y1, b1) - max(y0, b0))
            smaller = min(area, (a1 - a0) * (b1 - b0))
            if inter > overlap * (area + (a1 - a0) * (b1 - b0) - inter) or inter > 0.6 * smaller:
                clash = True
                break
        if not clash:
            keep.append(int(index))
    return np.asarray(keep, dtype=int)


@contextlib.contextmanager
def _tensorflow_hidden() -> Iterator[None]:
    """`import tensorflow` fails meanwhile, unless TensorFlow is loaded already.

    MediaPipe imports TensorFlow (seconds) only for a documentation decorator, which it replaces with a
    no-op when TensorFlow is missing; a `fer-lab predict` that runs a TFLite model needs it nowhere else.
    """
    if "tensorflow" in sys.modules:
        yield
        return
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # an import of it now raises ModuleNotFoundError
    try:
        yield
    finally:
        if "tensorflow" in sys.modules and sys.modules["tensorflow"] is None:
            del sys.modules["tensorflow"]


def _mediapipe_detector() -> object:
    """MediaPipe's full-range face detector (faces up to about 5 m from the camera), or a ConfigError saying how to install it."""
    import os

    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
    try:
        # On import MediaPipe's bindings print an AttributeError (protobuf >= 5 dropped MessageFactory.GetPrototype);
        # face detection works all the same (tests/faces/test_detector.py), so the line would only mislead.
        # It goes through sys.excepthook (a Jupyter kernel's shows it as a cell error), hence Python's own hook.
        hook, sys.excepthook = sys.excepthook, sys.__excepthook__
        try:
            with contextlib.redirect_stderr(io.StringIO()), _tensorflow_hidden():
                from mediapipe.python.solutions import face_detection
        finally:
            sys.excepthook = hook
    except ImportError as error:
        raise ConfigError("detector 'mediapipe' needs the mediapipe package: pip install --no-deps mediapipe==0.10.21 "
                          f"(its pinned dependencies conflict with TensorFlow's; the ones it needs are installed) "
                          f"[{' '.join(str(error).split())}]") from error
    with _native.quiet_stderr():  # the first frame is where TensorFlow Lite logs its start-up note
        detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=MEDIAPIPE_MIN_SCORE)
        detector.process(np.zeros((MEDIAPIPE_TILE, MEDIAPIPE_TILE, 3), np.uint8))
    return detector


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
        return (MEDIAPIPE_MIN_FACE if self.model == "mediapipe" else HOG_MIN_FACE) / scale


class FaceDetector:
    """The detector on a downscaled copy of a full-size image, boxes in the original's pixels."""

    def __init__(self, config: DetectorConfig = DetectorConfig()) -> None:
        self.config = config
        self._detector = Detector(config.model)

    def __call__(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (K, 4) as x0, y0, x1, y1 in `gray`'s pixels and their scores (K,), best first."""
        boxes, scores, _ = self.detect(gray)
        return boxes, scores

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes and scores as `__call__`, and eye centres (K, 2, 2) in `gray`'s pixels (NaN: none given)."""
        height, width = gray.shape
        scale = min(1.0, self.config.max_side / max(height, width))
        small = gray
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
        threshold = max(self.config.threshold, 0.0) if self.config.model == "mediapipe" else self.config.threshold
        boxes, scores = self._detector(small, self.config.upsample, threshold)
        factor = np.array([width / small.shape[1], height / small.shape[0]])
        eyes = self._detector.eyes * factor
        return to_original(boxes, tuple(factor), gray.shape), scores, eyes
