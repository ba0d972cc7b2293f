"""Training-time augmentation with albumentations, configured from plain parameters."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402  (the variable above must be set before the import)
import cv2  # noqa: E402

from fer_lab.errors import FerLabError  # noqa: E402


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strong they are; a probability of 0 switches one off."""

    crop: int = 0  # side in pixels of a random square crop, scaled back to the input size (0: off)
    hflip: float = 0.5  # faces are near-symmetric, so mirroring is the safest augmentation
    affine: float = 0.7  # probability of a random shift / scale / rotation
    shift: float = 0.08  # fraction of the image size
    scale: float = 0.1  # +- relative zoom
    rotate: float = 12.0  # +- degrees
    brightness_contrast: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    dropout: float = 0.0  # probability of coarse dropout (random erased rectangles)
    dropout_holes: int = 2
    dropout_size: float = 0.2  # hole side as a fraction of the image size

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "AugmentConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise FerLabError(f"augment: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        config = cls(**{key: (int(v) if key in ("dropout_holes", "crop") else float(v)) for key, v in values.items()})
        if config.crop < 0:
            raise FerLabError(f"augment.crop is a side in pixels (0: off), not {config.crop}")
        for name in ("hflip", "affine", "brightness_contrast", "dropout"):
            if not 0.0 <= getattr(config, name) <= 1.0:
                raise FerLabError(f"augment.{name} is a probability in [0, 1], not {getattr(config, name)}")
        return config

    @property
    def enabled(self) -> bool:
        return any((self.crop, self.hflip, self.affine, self.brightness_contrast, self.dropout))


def build_pipeline(config: AugmentConfig, image_size: int, seed: int | None = None) -> A.Compose:
    """The albumentations pipeline for 2-D uint8 grayscale images of `image_size` pixels."""
    transforms: list[A.BasicTransform] = []
    if config.crop:
        if config.crop > image_size:
            raise FerLabError(f"augment.crop ({config.crop} px) is larger than the {image_size} px images")
        # The same crop-then-resize (bilinear) as `crops.ten_crop` at test time.
        transforms.append(A.RandomCrop(config.crop, config.crop))
        transforms.append(A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR))
    if config.hflip:
        transforms.append(A.HorizontalFlip(p=config.hflip))
    if config.affine:
        transforms.append(A.Affine(
            translate_percent=(-config.shift, config.shift),
            scale=(1 - config.scale, 1 + config.scale),
            rotate=(-config.rotate, config.rotate),
            border_mode=cv2.BORDER_REFLECT_101,  # a black border would be a cue no test image has
            p=config.affine,
        ))
    if config.brightness_contrast:
        transforms.append(A.RandomBrightnessContrast(
            brightness_limit=config.brightness, contrast_limit=config.contrast, p=config.brightness_contrast
        ))
    if config.dropout:
        transforms.append(A.CoarseDropout(
            num_holes_range=(1, max(1, config.dropout_holes)),
            hole_height_range=(config.dropout_size / 2, config.dropout_size),
            hole_width_range=(config.dropout_size / 2, config.dropout_size),
            fill=0,
            p=config.dropout,
        ))
    return A.Compose(transforms, seed=seed)


def augment_batch(pipeline: A.Compose, images: np.ndarray) -> np.ndarray:
    """Augment each uint8 (H, W) image of a (B, H, W) batch; returns a new uint8 array."""
    out = np.empty_like(images)
    for index, image in enumerate(images):
        out[index] = pipeline(image=image)["image"]
    return out


TTA_MODES = ("none", "flip", "tencrop")


def test_time_views(pixels: np.ndarray, mode: str, crop: int = 0) -> list[np.ndarray]:
    """The views of uint8 images (N, H, W) whose predictions test-time augmentation averages.

    `flip`: the image and its mirror. `tencrop`: the four corner crops and the centre crop of side
    `crop`, each scaled back to the image size as in training (`AugmentConfig.crop`), and their mirrors.
    """
    if mode not in TTA_MODES:
        raise FerLabError(f"tta must be one of {', '.join(TTA_MODES)}, not {mode!r}")
    views = [pixels]
    if mode == "tencrop":
        size = pixels.shape[1]
        if not 0 < crop < size:
            raise FerLabError(f"ten-crop needs a crop side between 1 and {size - 1} pixels, not {crop}")
        far, centre = size - crop, (size - crop) // 2
        views = [_crop_and_resize(pixels, top, left, crop)
                 for top, left in ((0, 0), (0, far), (far, 0), (far, far), (centre, centre))]
    if mode != "none":
        views += [view[:, :, ::-1] for view in views]
    return views


def _crop_and_resize(pixels: np.ndarray, top: int, left: int, crop: int) -> np.ndarray:
    size = (pixels.shape[2], pixels.shape[1])
    return np.stack([cv2.resize(image[top:top + crop, left:left + crop], size, interpolation=cv2.INTER_LINEAR)
                     for image in pixels])
