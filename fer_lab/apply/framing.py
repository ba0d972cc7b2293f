"""How a dataset frames its faces: where the face sits in a training image, relative to a detector's box.

Crops cut from photos and video with a dataset's framing show faces at the scale and position its
model was trained on (`fer_lab.apply.inference` cuts them).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fer_lab import data
from fer_lab.errors import ConfigError, FerLabError
from fer_lab.faces.detector import DetectorConfig, FaceDetector

# A dlib HOG box covers about 1/1.19 of a FER2013 image's side, with its centre 8% of the box side
# below the image centre (`measure_framing` on FER2013 training images, two seeds): the default framing.
FER2013_SCALE = 1.19
FER2013_LIFT = 0.08
# Bump when `measure_framing` measures differently: cached measurements are then taken again.
FRAMING_VERSION = 1
# Detections weaker than this are not used to measure a dataset's framing.
FRAMING_MIN_SCORE = 0.0


@dataclass(frozen=True)
class Framing:
    """Where a face sits in a training image, relative to the detector's box around it.

    `scale`: image side / box side. `lift`: how far the image centre lies above the box centre,
    in box sides. Crops cut with the same framing show faces at the scale and position the
    model was trained on.
    """

    scale: float = FER2013_SCALE
    lift: float = FER2013_LIFT
    measured_on: int = 0  # training images the values are medians over; 0 = FER2013 defaults

    def __post_init__(self) -> None:
        if not 0.5 <= self.scale <= 4.0 or not -1.0 <= self.lift <= 1.0:
            raise ConfigError(f"implausible face framing: scale {self.scale:.2f}, lift {self.lift:.2f}")


def measure_framing(pixels: np.ndarray, *, max_images: int = 300, seed: int = 0) -> Framing:
    """The median framing of the faces in square training images `pixels` (N, S, S), per dlib's HOG detector.

    Each of up to `max_images` images is enlarged (bicubic) to a random size between 120 and 200
    pixels, so dlib's pyramid steps (factors of 1.2 in box size) average out, and given an edge
    border so the detector's window fits. Detections scoring below FRAMING_MIN_SCORE are ignored.
    Falls back to the FER2013 framing when fewer than 20 faces are found.
    """
    pixels = np.asarray(pixels, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(pixels))[:max_images]
    sizes = rng.integers(120, 201, len(chosen))
    detector = FaceDetector(DetectorConfig(max_side=8192))
    scales, lifts = [], []
    for index, size in zip(chosen, sizes):
        enlarged = np.asarray(Image.fromarray(pixels[index]).resize((size, size), Image.Resampling.BICUBIC))
        border = size // 4
        boxes, scores = detector(np.pad(enlarged, border, mode="edge"))
        if not len(boxes) or scores[0] < FRAMING_MIN_SCORE:
            continue
        x0, y0, x1, y1 = boxes[0] - border
        side = max(x1 - x0, y1 - y0)
        scales.append(size / side)
        lifts.append(((y0 + y1) / 2 - size / 2) / side)
    if len(scales) < 20:
        return Framing()
    return Framing(round(float(np.median(scales)), 3), round(float(np.median(lifts)), 3), len(scales))


def training_framing(data_path: str | os.PathLike[str], manifest: pd.DataFrame, *, count: int = 300,
                     seed: int = 0, cache_dir: str | os.PathLike[str] | None = None) -> Framing:
    """`measure_framing` on `count` random readable training images of a dataset.

    Args:
        data_path: The dataset.
        manifest: Its manifest.
        count: How many training images to sample.
        seed: Chooses the images (and `measure_framing`'s sizes).
        cache_dir: Where the measurement is kept, keyed by the images chosen (06 and 07 measure the same
            dataset, each for seconds of face detection); None: measured every time.

    Returns:
        The measured framing (FER2013's when too few faces are found).
    """
    readable = manifest[manifest["readable"].astype(bool)].reset_index(drop=True)
    train = readable[readable["split"] == "train"]
    rows = train.sample(n=min(count, len(train)), random_state=seed).reset_index(drop=True)
    key = hashlib.sha1("\n".join([f"{FRAMING_VERSION} {count} {seed}", *(rows["path"] + "\t" + rows["sha1"])])
                       .encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"framing-{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            return Framing(**json.loads(cached.read_text()))
        except (ValueError, TypeError, FerLabError):  # unreadable: measured again and rewritten
            pass
    framing = measure_framing(data.load_pixels(data_path, rows), seed=seed)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(framing)))
        os.replace(partial, cached)
    return framing
