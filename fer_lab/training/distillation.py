"""Knowledge distillation: a smaller student learns from the averaged probabilities of trained teachers.

The teachers (any model references fer-lab reads, e.g. a recipe's runs over several seeds) classify every
training image and its mirror once, before training; their averaged probabilities are blended into the
student's targets the way FER+ votes are (`datasets.vote_targets`). The per-image loss weights stay those of
the dataset's own labels, so class weighting means the same with and without a teacher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from fer_lab.errors import ConfigError
from fer_lab.training import datasets, predict


def check(teachers: Sequence[str], weight: float) -> None:
    """Raise ConfigError unless `weight` is in [0, 1] and teachers are named exactly when it is above 0."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"distill must be in [0, 1] (the teachers' share of the targets), not {weight}")
    if weight > 0 and not teachers:
        raise ConfigError(f"distill = {weight} needs a teacher: one or more model references")
    if teachers and weight == 0:
        raise ConfigError(f"teacher {', '.join(teachers)} is set but distill is 0: set distill (e.g. 0.5) or drop it")


def teacher_probabilities(teachers: Sequence[str], pixels: np.ndarray, labels: Sequence[str], *,
                          log: Callable[[str], None] = print) -> np.ndarray:
    """The teachers' class probabilities for `pixels`, averaged over the teachers and each image's mirror.

    Args:
        teachers: Model references (run id, `runs:/ID/model`, `models:/NAME@ALIAS`, a `.keras` file).
        pixels: uint8 images (N, H, W) at the size the teachers take.
        labels: The student's classes, in its output order.
        log: Where progress lines go.

    Returns:
        float32 (N, len(labels)) probabilities; a teacher's classes the student lacks are dropped and the
        rest renormalised.

    Raises:
        ConfigError: when a teacher cannot be loaded, takes other images, or lacks one of `labels`.
    """
    from fer_lab import tracking

    total = np.zeros((len(pixels), len(labels)), dtype=np.float64)
    for reference in teachers:
        model, teacher_labels, _ = tracking.load_reference(reference)
        missing = [label for label in labels if label not in teacher_labels]
        if missing:
            raise ConfigError(f"teacher {reference} does not know {', '.join(missing)} (its classes: "
                              f"{', '.join(teacher_labels)})")
        size = tuple(model.input_shape[1:3])
        if size != pixels.shape[1:3]:
            raise ConfigError(f"teacher {reference} takes {size[0]}x{size[1]} images, the training images are "
                              f"{pixels.shape[1]}x{pixels.shape[2]}")
        probabilities = predict.predict_probabilities(model, pixels, tta="flip")
        kept = probabilities[:, [teacher_labels.index(label) for label in labels]]
        total += kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)
        log(f"teacher {reference}: {len(pixels)} training images classified, with their mirrors")
    return (total / len(teachers)).astype(np.float32)


def with_teachers(split: datasets.Split, teachers: Sequence[str], weight: float, labels: Sequence[str], *,
                  log: Callable[[str], None] = print) -> datasets.Split:
    """`split` with `weight` of its targets replaced by the teachers' averaged probabilities.

    Args:
        split: The training split; its per-image weights are kept.
        teachers: Model references.
        weight: The teachers' share of each target, in [0, 1].
        labels: The split's classes, in target order.
        log: Where progress lines go.

    Returns:
        A new split; each target row still sums to 1.
    """
    check(teachers, weight)
    teacher = teacher_probabilities(teachers, split.pixels, labels, log=log)
    hard = split.targets.argmax(1)
    log(f"teachers agree with the training labels on {np.mean(teacher.argmax(1) == hard):.1%} of the images")
    targets = ((1.0 - weight) * split.targets + weight * teacher).astype(np.float32)
    return dataclasses.replace(split, targets=targets)
