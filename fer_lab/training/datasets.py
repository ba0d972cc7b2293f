"""Training inputs: targets (hard, smoothed by FER+ votes), class weights, and fast input pipelines.

Pixels are decoded once (`data.load_pixels`, cached as .npy) and kept in memory as uint8. Each
training epoch draws a seeded permutation; a batch is gathered and augmented with albumentations
inside `tf.numpy_function`, with several batches prepared in parallel and prefetched, so the model
rarely waits for its input. Batch `i` of epoch `e` is augmented with a seed derived from
(seed, e, i): the same run sees the same images, also when it is resumed after a crash.

On another Keras backend (JAX on a GPU machine, where TensorFlow is often not installed) the same
batches come from a `keras.utils.PyDataset` instead of tf.data, prepared on worker threads, or on forked
worker processes (`loader="processes"`), which albumentations' Python work cannot hold up with the GIL.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import keras
import numpy as np
import pandas as pd

from fer_lab.data.labels import VOTE_CLASS
from fer_lab.errors import FerLabError
from fer_lab.training import augment

CLASS_WEIGHT_MODES = ("none", "balanced", "sqrt")
# Batches tf.data prepares at once and keeps ready: fixed, as tf.data's autotuning stalls epochs (`_fixed_pipeline`).
PARALLEL_BATCHES = max(2, os.cpu_count() or 1)
PREFETCH_BATCHES = 4
LOADERS = ("auto", "tf.data", "threads", "processes")  # auto: tf.data on the TensorFlow backend, threads on others


@dataclass
class Split:
    """Images of one split with their training targets (probability vectors) and per-image weights."""

    pixels: np.ndarray  # uint8 (N, H, W)
    targets: np.ndarray  # float32 (N, C), rows sum to 1
    weights: np.ndarray | None = None  # float32 (N,), None = all equal

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.dtype != np.uint8:
            raise FerLabError(f"pixels must be uint8 (N, H, W), got {self.pixels.dtype} {self.pixels.shape}")
        if len(self.targets) != len(self.pixels):
            raise FerLabError(f"{len(self.pixels)} images but {len(self.targets)} targets")
        if len(self.pixels) == 0:
            raise FerLabError("a split with no images cannot be used for training or validation")

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def label_index(self) -> np.ndarray:
        return self.targets.argmax(axis=1)


def label_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class index of each label; an unknown label is an error naming it."""
    lookup = {name: index for index, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(lookup))
    if unknown:
        raise FerLabError(f"labels {unknown} are not among the classes {list(classes)}")
    return np.array([lookup[label] for label in labels], dtype=np.int64)


def one_hot(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    return np.eye(len(classes), dtype=np.float32)[label_indices(labels, classes)]


def vote_targets(rows: pd.DataFrame, classes: Sequence[str], mix: float) -> np.ndarray:
    """Targets that blend the one-hot label with the FER+ crowd-vote distribution.

    `mix` = 0 gives one-hot labels, 1 the vote distribution alone. Rows without usable votes (no
    vote columns, NaN, or no votes for any of `classes`) keep their one-hot label.
    """
    hard = one_hot(rows["label"].tolist(), classes)
    if mix <= 0:
        return hard
    if not 0 < mix <= 1:
        raise FerLabError(f"soft_labels must be in [0, 1], not {mix}")
    columns = [column for column, name in VOTE_CLASS.items() if name in classes]
    if not set(columns) <= set(rows.columns):
        raise FerLabError("soft_labels needs the manifest's vote_* columns (a ferplus_votes.csv in the data root)")
    votes = np.zeros_like(hard)
    for column in columns:
        votes[:, list(classes).index(VOTE_CLASS[column])] = pd.to_numeric(rows[column], errors="coerce").fillna(0).to_numpy()
    totals = votes.sum(axis=1, keepdims=True)
    has_votes = totals[:, 0] > 0
    soft = hard.copy()
    soft[has_votes] = (1 - mix) * hard[has_votes] + mix * votes[has_votes] / totals[has_votes]
    return soft


def class_weights(label_index: np.ndarray, num_classes: int, mode: str = "none") -> np.ndarray:
    """Per-class loss weights: `balanced` = N / (C * count), `sqrt` = its square root (gentler).

    Weights are scaled so the average image weight is 1, which keeps the learning rate meaningful.
    """
    if mode not in CLASS_WEIGHT_MODES:
        raise FerLabError(f"class_weights must be one of {', '.join(CLASS_WEIGHT_MODES)}, not {mode!r}")
    counts = np.bincount(label_index, minlength=num_classes).astype(np.float64)
    if mode == "none":
        return np.ones(num_classes, dtype=np.float32)
    weights = np.where(counts > 0, len(label_index) / (num_classes * np.maximum(counts, 1)), 0.0)
    if mode == "sqrt":
        weights = np.sqrt(weights)
    weights /= (weights[label_index]).mean()
    return weights.astype(np.float32)


def make_split(rows: pd.DataFrame, pixels: np.ndarray, classes: Sequence[str], *, soft_labels: float = 0.0,
               weights: np.ndarray | None = None) -> Split:
    """A `Split` for manifest `rows` and their pixels; `weights` are per-class weights."""
    targets = vote_targets(rows, classes, soft_labels)
    per_image = None if weights is None else (targets @ weights).astype(np.float32)
    return Split(np.ascontiguousarray(pixels, dtype=np.uint8), targets, per_image)


def per_class_subset(rows: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """Keep at most `per_class` training images of each class (a seeded draw); other splits stay whole.

    "I have 50 labelled faces per class" as one parameter: the same seed draws the same images, so
    every arm of an experiment trains on the same subset.

    Args:
        rows: Manifest rows with `split` and `label`.
        per_class: Training images kept per class; 0 keeps them all.
        seed: Seeds the draw.

    Returns:
        The kept rows in their original order, index reset.
    """
    if per_class < 0:
        raise FerLabError(f"per_class must be >= 0 (0: all training images), not {per_class}")
    if per_class == 0:
        return rows.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    train = rows[rows["split"] == "train"]
    dropped = []
    for label in sorted(train["label"].unique()):
        members = train.index[train["label"] == label].to_numpy()
        dropped.extend(rng.permutation(members)[per_class:])
    return rows.drop(index=dropped).reset_index(drop=True)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped, so every step has the same shape)."""
    return max(1, num_images // batch_size)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch) % (2**31 - 1)


def mix_batch(images: np.ndarray, targets: np.ndarray, weights: np.ndarray | None, *, mixup: float, cutmix: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Mixup or CutMix a batch with a shuffled copy of itself; the targets mix in the same proportion.

    `mixup` and `cutmix` are the Beta(alpha, alpha) parameters of the mixing proportion (0: off); with
    both on, each batch uses one of them at random. Images are float32 (B, H, W); targets still sum to one.
    """
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    if alpha <= 0:
        return images, targets, weights
    share = float(rng.beta(alpha, alpha))
    partner = rng.permutation(len(images))
    if use_cutmix:
        height, width = images.shape[1:3]
        cut_h, cut_w = int(round(height * np.sqrt(1 - share))), int(round(width * np.sqrt(1 - share)))
        top, left = rng.integers(0, height - cut_h + 1), rng.integers(0, width - cut_w + 1)
        images = images.copy()
        images[:, top:top + cut_h, left:left + cut_w] = images[partner, top:top + cut_h, left:left + cut_w]
        share = 1.0 - cut_h * cut_w / (height * width)  # the pasted area decides the target share
    else:
        images = share * images + (1 - share) * images[partner]
    targets = (share * targets + (1 - share) * targets[partner]).astype(np.float32)
    if weights is not None:
        weights = (share * weights + (1 - share) * weights[partner]).astype(np.float32)
    return images.astype(np.float32), targets, weights


def training_dataset(split: Split, *, batch_size: int, augmentation: augment.AugmentConfig, seed: int,
                     epoch: int, mixup: float = 0.0, cutmix: float = 0.0, loader: str = "auto") -> Any:
    """One epoch of shuffled, augmented (and optionally mixed) batches: (float32 images (B, H, W, 1), targets[, weights]).

    `loader` picks tf.data or a `PyDataset` on threads or processes (see `LOADERS`); all give the same batches.
    """
    size = len(split)
    batch_size = min(batch_size, size)
    steps = steps_per_epoch(size, batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(size)
    local = threading.local()  # albumentations pipelines keep state: one per worker thread

    def load(index: Any) -> tuple[np.ndarray, ...]:
        chosen = np.sort(order[int(index) * batch_size:(int(index) + 1) * batch_size])
        images = split.pixels[chosen]
        if augmentation.enabled:
            if not hasattr(local, "pipeline"):
                local.pipeline = augment.build_pipeline(augmentation, images.shape[1])
            local.pipeline.set_random_seed(batch_seed(seed, epoch, int(index)))
            images = augment.augment_batch(local.pipeline, images)
        weights = None if split.weights is None else split.weights[chosen]
        images, targets, weights = mix_batch(images.astype(np.float32), split.targets[chosen], weights,
                                             mixup=mixup, cutmix=cutmix,
                                             rng=np.random.default_rng(batch_seed(seed, epoch, int(index))))
        batch = (images[..., None], targets)
        return batch if weights is None else (*batch, weights)

    if not uses_tf_data(loader):
        return _Batches(load, steps, workers=min(8, os.cpu_count() or 1), processes=loader == "processes")
    import tensorflow as tf

    height, width = split.pixels.shape[1:]
    shapes = [(batch_size, height, width, 1), (batch_size, split.targets.shape[1])]
    if split.weights is not None:
        shapes.append((batch_size,))

    def load_tensors(index: tf.Tensor) -> tuple[tf.Tensor, ...]:
        tensors = tf.numpy_function(load, [index], [tf.float32] * len(shapes), stateful=False)
        for tensor, shape in zip(tensors, shapes):
            tensor.set_shape(shape)
        return tuple(tensors)

    return _fixed_pipeline(tf.data.Dataset.range(steps)
                           .map(load_tensors, num_parallel_calls=PARALLEL_BATCHES, deterministic=True)
                           .prefetch(PREFETCH_BATCHES))


def eval_dataset(split: Split, batch_size: int = 256, loader: str = "auto") -> Any:
    """Un-augmented batches in order, for validation."""
    if not uses_tf_data(loader):
        def load(index: int) -> tuple[np.ndarray, np.ndarray]:
            rows = slice(index * batch_size, (index + 1) * batch_size)
            return split.pixels[rows, ..., None].astype(np.float32), split.targets[rows]

        return _Batches(load, math.ceil(len(split) / batch_size))
    import tensorflow as tf

    images = split.pixels[..., None]
    return _fixed_pipeline(tf.data.Dataset.from_tensor_slices((images, split.targets))
                           .batch(batch_size)
                           .map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=PARALLEL_BATCHES)
                           .prefetch(PREFETCH_BATCHES))


def _fixed_pipeline(dataset: Any) -> Any:
    """`dataset` with tf.data's autotuning off: its parallelism and prefetch stay as given.

    With autotuning on (tf.data.AUTOTUNE), an epoch of the 30-minute recipe often ended only at the next
    wake-up of the autotuner's optimisation thread, whose period doubles from 10 ms to 60 s: the iterator's
    destructor waits for that thread. Epochs measured exactly 81.9 s (10 ms x (2^13 - 1)) or 141.9 s (60 s
    later) for the same work that took 77-145 s in the others (params/fer2013-cpu.yaml).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def uses_tf_data(loader: str) -> bool:
    """Whether `loader` (one of `LOADERS`) prepares batches with tf.data rather than a `PyDataset`."""
    if loader not in LOADERS:
        raise FerLabError(f"loader must be one of {', '.join(LOADERS)}, not {loader!r}")
    return loader == "tf.data" or (loader == "auto" and keras.config.backend() == "tensorflow")


class _Batches(keras.utils.PyDataset):
    """Batches `load(0..steps-1)`, prepared ahead on `workers` threads or forked processes."""

    def __init__(self, load: Callable[[int], tuple[np.ndarray, ...]], steps: int, workers: int = 1,
                 processes: bool = False) -> None:
        super().__init__(workers=workers, use_multiprocessing=processes, max_queue_size=4 * workers)
        self._load, self._steps = load, steps

    def __len__(self) -> int:
        return self._steps

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return self._load(index)
