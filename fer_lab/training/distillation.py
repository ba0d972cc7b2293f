"""Knowledge distillation: a smaller student learns from the averaged probabilities of trained teachers.

The teachers (any model references fer-lab reads, e.g. a recipe's runs over several seeds) classify every
training image and its mirror once, before training; their averaged probabilities are blended into the
student's targets the way FER+ votes are (`datasets.vote_targets`). The per-image loss weights stay those of
the dataset's own labels, so class weighting means the same with and without a teacher.

With a cache folder, each teacher's probabilities are kept as a `.npz` keyed by the model it resolves to (a
registered version, a run's model, a file's path and modification time) and the images' digest, so resuming a
run, or training another student on the same images, skips the teachers' pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

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
                          cache_dir: str | os.PathLike[str] | None = None,
                          log: Callable[[str], None] = print) -> np.ndarray:
    """The teachers' class probabilities for `pixels`, averaged over the teachers and each image's mirror.

    Args:
        teachers: Model references (run id, `runs:/ID/model`, `models:/NAME@ALIAS`, a `.keras` file).
        pixels: uint8 images (N, H, W) at the size the teachers take.
        labels: The student's classes, in its output order.
        cache_dir: Where each teacher's probabilities are kept for the next run on the same images; None: nowhere.
        log: Where progress lines go.

    Returns:
        float32 (N, len(labels)) probabilities; a teacher's classes the student lacks are dropped and the
        rest renormalised.

    Raises:
        ConfigError: when a teacher cannot be loaded, takes other images, or lacks one of `labels`.
    """
    total = np.zeros((len(pixels), len(labels)), dtype=np.float64)
    images_digest = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()
    for reference in teachers:
        probabilities, teacher_labels = _one_teacher(reference, pixels, labels, images_digest, cache_dir, log)
        kept = probabilities[:, [teacher_labels.index(label) for label in labels]]
        total += kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)
    return (total / len(teachers)).astype(np.float32)


def _one_teacher(reference: str, pixels: np.ndarray, labels: Sequence[str], images_digest: str,
                 cache_dir: str | os.PathLike[str] | None, log: Callable[[str], None]) -> tuple[np.ndarray, list[str]]:
    """One teacher's flip-averaged probabilities for `pixels` in its own class order, and that order."""
    from fer_lab import tracking

    def check_classes(teacher_labels: Sequence[str]) -> None:
        missing = [label for label in labels if label not in teacher_labels]
        if missing:
            raise ConfigError(f"teacher {reference} does not know {', '.join(missing)} (its classes: "
                              f"{', '.join(teacher_labels)})")

    ref = tracking.resolve_model(reference)
    model_identity = ref.uri
    if ref.is_file:  # a file can be overwritten in place: its time and size tell versions apart
        stat = Path(ref.uri).stat()
        model_identity = f"{ref.uri}:{stat.st_mtime_ns}:{stat.st_size}"
    key = hashlib.sha1(f"{model_identity}|{images_digest}|flip".encode()).hexdigest()[:20]
    cache_file = Path(cache_dir) / f"teacher-{key}.npz" if cache_dir is not None else None
    cached = _read_cache(cache_file, len(pixels)) if cache_file is not None else None
    if cached is not None:
        check_classes(cached[1])
        log(f"teacher {reference}: probabilities of {len(pixels)} training images from {cache_file}")
        return cached
    model, teacher_labels, _ = tracking.load_reference(ref)
    check_classes(teacher_labels)
    size = tuple(model.input_shape[1:3])
    if size != pixels.shape[1:3]:
        raise ConfigError(f"teacher {reference} takes {size[0]}x{size[1]} images, the training images are "
                          f"{pixels.shape[1]}x{pixels.shape[2]}")
    probabilities = predict.predict_probabilities(model, pixels, tta="flip")
    log(f"teacher {reference}: {len(pixels)} training images classified, with their mirrors")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
        np.savez(partial, probabilities=probabilities, labels=np.array(teacher_labels))
        os.replace(partial, cache_file)
    return probabilities, list(teacher_labels)


def _read_cache(cache_file: Path, images: int) -> tuple[np.ndarray, list[str]] | None:
    """A teacher's cached probabilities and class order, or None when there are none or they do not fit."""
    try:
        with np.load(cache_file) as cached:
            probabilities, teacher_labels = cached["probabilities"], [str(label) for label in cached["labels"]]
    except (OSError, ValueError, KeyError):  # missing or truncated: classified again and rewritten
        return None
    if probabilities.shape != (images, len(teacher_labels)):
        return None
    return probabilities, teacher_labels


def with_teachers(split: datasets.Split, teachers: Sequence[str], weight: float, labels: Sequence[str], *,
                  cache_dir: str | os.PathLike[str] | None = None,
                  log: Callable[[str], None] = print) -> datasets.Split:
    """`split` with `weight` of its targets replaced by the teachers' averaged probabilities.

    Args:
        split: The training split; its per-image weights are kept.
        teachers: Model references.
        weight: The teachers' share of each target, in [0, 1].
        labels: The split's classes, in target order.
        cache_dir: Where the teachers' probabilities are kept between runs (see `teacher_probabilities`).
        log: Where progress lines go.

    Returns:
        A new split; each target row still sums to 1.
    """
    check(teachers, weight)
    teacher = teacher_probabilities(teachers, split.pixels, labels, cache_dir=cache_dir, log=log)
    hard = split.targets.argmax(1)
    log(f"teachers agree with the training labels on {np.mean(teacher.argmax(1) == hard):.1%} of the images")
    targets = ((1.0 - weight) * split.targets + weight * teacher).astype(np.float32)
    return dataclasses.replace(split, targets=targets)
