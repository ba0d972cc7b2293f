"""Training-time augmentation with albumentations, configured from plain parameters."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402  (the variable above must be set before the import)
import cv2  # noqa: E402

from fer_lab.errors import FerLabError  # noqa: E402


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strong they are; a probability of 0 switches one off."""

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
        config = cls(**{key: (int(v) if key == "dropout_holes" else float(v)) for key, v in values.items()})
        for name in ("hflip", "affine", "brightness_contrast", "dropout"):
            if not 0.0 <= getattr(config, name) <= 1.0:
                raise FerLabError(f"augment.{name} is a probability in [0, 1], not {getattr(config, name)}")
        return config

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(hflip=0.0, affine=0.0, brightness_contrast=0.0, dropout=0.0)

    @property
    def enabled(self) -> bool:
        return any((self.hflip, self.affine, self.brightness_contrast, self.dropout))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_pipeline(config: AugmentConfig, seed: int | None = None) -> A.Compose:
    """The albumentations pipeline for 2-D uint8 grayscale images."""
    transforms: list[A.BasicTransform] = []
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
