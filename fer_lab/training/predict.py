"""Class probabilities of a trained model, averaged over test-time views.

The one prediction loop that training (validating its best model) and evaluation share, so both
score a model the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fer_lab.training import augment


def predict_probabilities(model: Any, pixels: np.ndarray, *, batch_size: int = 256, tta: str = "none",
                          crop: int = 0) -> np.ndarray:
    """Class probabilities for uint8 images, averaged over the test-time views of `tta`.

    Args:
        model: A classifier taking (N, H, W, 1) float32 pixels 0..255.
        pixels: uint8 images (N, H, W).
        batch_size: Images per model call.
        tta: none, flip (the image and its mirror) or tencrop (corner and centre crops of side `crop`,
            and their mirrors); see `augment.test_time_views`.
        crop: The ten-crop side in pixels.

    Returns:
        (N, classes) float64 probabilities.
    """
    views = augment.test_time_views(np.asarray(pixels), tta, crop)
    total = sum(np.asarray(model.predict(np.asarray(view, dtype=np.float32)[..., None], batch_size=batch_size,
                                         verbose=0), dtype=np.float64) for view in views)
    return total / len(views)


def flip_accuracy(model: Any, pixels: np.ndarray, truth: np.ndarray, name: str = "accuracy") -> dict[str, float]:
    """Accuracy of a model without and with test-time flip averaging.

    Args:
        model: A classifier taking (N, H, W, 1) float32 pixels 0..255.
        pixels: uint8 images (N, H, W).
        truth: Their true class indices.
        name: The metric name.

    Returns:
        `{name: plain accuracy, name + "_tta": accuracy with the image and its mirror averaged}`.
    """
    return {f"{name}{suffix}": float((predict_probabilities(model, pixels, tta=tta).argmax(1) == truth).mean())
            for suffix, tta in (("", "none"), ("_tta", "flip"))}
