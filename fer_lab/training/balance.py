"""Decision offsets: per-class shifts of the output logits that make rare expressions win when they should.

FER2013 has 16x more happy than disgust faces, so a model trained for accuracy rarely predicts disgust
(recall ~0.2) and macro-F1 suffers. Adding a per-class offset `b` to the logits (prediction =
argmax(log p + b)) moves the decision boundaries without retraining. The offsets are fitted on the
validation split, the split that also picks the best epoch, and written into the output layer's bias,
so the logged model, 04, 06 and `predict` all use the balanced decisions and the test split stays unseen.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from fer_lab.errors import ConfigError

OUTPUT_LAYER = "predictions"
OFFSET_GRID = tuple(np.round(np.linspace(-1.5, 1.5, 31), 2))  # log-odds steps of 0.1, up to e^1.5 ~ 4.5x


def macro_f1(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Macro-averaged F1 over the classes present in `truth` or `predicted`."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    hits = np.diag(counts).astype(float)
    actual, chosen = counts.sum(axis=1), counts.sum(axis=0)
    present = (actual + chosen) > 0
    f1 = np.divide(2 * hits, actual + chosen, out=np.zeros(num_classes), where=present)
    return float(f1[present].mean())


def fit_decision_offsets(probabilities: np.ndarray, truth: np.ndarray, *, grid: Sequence[float] = OFFSET_GRID,
                         rounds: int = 3) -> np.ndarray:
    """Per-class logit offsets that maximise macro-F1 of `argmax(log p + offsets)` on these images.

    Coordinate ascent: each class's offset in turn takes the grid value that scores best, for `rounds`
    passes; ties keep the smaller change, so classes the data says nothing about stay at 0.

    Args:
        probabilities: (N, classes) predicted probabilities of the validation images.
        truth: (N,) their true class indices.
        grid: Candidate offsets per class.
        rounds: Passes over the classes.

    Returns:
        (classes,) float32 offsets.
    """
    probabilities, truth = np.asarray(probabilities, dtype=np.float64), np.asarray(truth)
    if probabilities.ndim != 2 or len(probabilities) != len(truth) or len(truth) == 0:
        raise ConfigError(f"decision offsets need (N, classes) probabilities and N labels, got "
                          f"{probabilities.shape} and {truth.shape}")
    num_classes = probabilities.shape[1]
    log_p = np.log(np.clip(probabilities, 1e-12, 1.0))
    offsets = np.zeros(num_classes)
    best = macro_f1(truth, log_p.argmax(1), num_classes)
    ordered_grid = sorted(grid, key=abs)
    for _ in range(rounds):
        improved = False
        for cls in range(num_classes):
            for value in ordered_grid:
                trial = offsets.copy()
                trial[cls] = value
                score = macro_f1(truth, (log_p + trial).argmax(1), num_classes)
                if score > best + 1e-9:
                    best, offsets, improved = score, trial, True
        if not improved:
            break
    return offsets.astype(np.float32)


def shift_output_bias(model: keras.Model, offsets: np.ndarray) -> None:
    """Add `offsets` to the bias of the model's softmax output layer (in place).

    softmax(z + b) is p * exp(b) renormalised, so the argmax is argmax(log p + b) as fitted.
    """
    layer = model.get_layer(OUTPUT_LAYER)
    kernel, bias = layer.get_weights()
    if bias.shape != np.shape(offsets):
        raise ConfigError(f"{len(offsets)} offsets for an output layer of {bias.shape[0]} classes")
    layer.set_weights([kernel, bias + np.asarray(offsets, dtype=bias.dtype)])


def balance_model(model: keras.Model, pixels: np.ndarray, truth: np.ndarray, classes: Sequence[str], *,
                  crop: int = 0) -> dict[str, float]:
    """Fit decision offsets on validation images and write them into `model`; return what changed.

    The validation predictions average the test-time views the recipes score with (ten crops of the
    training crop side when the model trained on crops, else the image and its mirror), so the offsets
    are fitted to the decisions that will be scored.

    Args:
        model: The trained classifier (changed in place).
        pixels: uint8 validation images (N, H, W).
        truth: Their class indices.
        classes: The model's classes, naming the offsets.
        crop: The training crop side (0: trained without crops).

    Returns:
        `offset_<class>` for each class and val macro-F1 / accuracy before and after.
    """
    from fer_lab.training import predict

    probabilities = predict.predict_probabilities(model, pixels, tta="tencrop" if crop else "flip", crop=crop)
    offsets = fit_decision_offsets(probabilities, truth)
    shifted = np.log(np.clip(probabilities, 1e-12, 1.0)) + offsets
    shift_output_bias(model, offsets)
    num_classes = len(classes)
    report = {f"offset_{name}": float(value) for name, value in zip(classes, offsets)}
    for when, predicted in (("before", probabilities.argmax(1)), ("after", shifted.argmax(1))):
        report[f"val_macro_f1_{when}"] = macro_f1(truth, predicted, num_classes)
        report[f"val_accuracy_{when}"] = float((predicted == truth).mean())
    return report
