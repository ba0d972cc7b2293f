"""What 03_train trains on: the manifest (face-filtered or not), the rows kept, and the train / val splits.

`prepare` is the one data-preparation step that 03_train and `fer-lab train` share, so that a model
trained without the notebook sees exactly the images the notebook's run would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from fer_lab.errors import ConfigError, FerLabError
from fer_lab.training import datasets, distillation

if TYPE_CHECKING:
    from fer_lab.training.train import TrainConfig

FILTERED_MANIFEST = "filtered_manifest.csv"


@dataclass(frozen=True)
class TrainingData:
    """The images a run trains and validates on, and where they came from."""

    manifest: pd.DataFrame  # every readable row of the manifest used, test rows included
    manifest_name: str  # manifest.csv, or 02_filter_faces' filtered_manifest.csv
    rows: pd.DataFrame  # the train and val rows kept (after `per_class`), in the order of the splits' pixels
    classes: list[str]
    train_split: datasets.Split
    val_split: datasets.Split
    class_weights: np.ndarray  # the loss weight of each class (all ones when class_weights is none)


def prepare(data_path: str | os.PathLike[str], work_path: str | os.PathLike[str], config: TrainConfig, *,
            use_filtered: bool, labels: str = "fer2013", per_class: int = 0, seed: int = 0) -> TrainingData:
    """Read the manifest, keep the train and val rows, decode their pixels (cached) and make the splits.

    Args:
        data_path: The dataset.
        work_path: Its derived files: manifests, the pixel cache, teachers' predictions.
        config: The run's training settings (class weights, soft labels, distillation).
        use_filtered: Train on 02_filter_faces' filtered manifest when there is one.
        labels: `fer2013` (the dataset's labels) or `ferplus` (FER+ majority labels).
        per_class: Training images kept per class, a seeded draw; 0: all.
        seed: The seed of the manifest's splits and of the `per_class` draw.

    Returns:
        The `TrainingData`.
    """
    from fer_lab import data

    manifest, manifest_name = training_manifest(data_path, work_path, use_filtered=use_filtered, seed=seed,
                                                labels=labels)
    rows = datasets.per_class_subset(manifest[manifest["split"].isin(["train", "val"])], per_class, seed)
    cache_dir = Path(work_path) / "cache"
    pixels = data.load_pixels(data_path, rows, cache_dir=cache_dir)
    classes = data.class_names(manifest)
    train_split, val_split, weights = make_splits(rows, pixels, classes, config, cache_dir=cache_dir)
    return TrainingData(manifest, manifest_name, rows, classes, train_split, val_split, weights)


def make_splits(rows: pd.DataFrame, pixels: np.ndarray, labels: Sequence[str], config: TrainConfig, *,
                cache_dir: str | os.PathLike[str] | None = None) -> tuple[datasets.Split, datasets.Split, np.ndarray]:
    """Train and val `Split`s from rows (column `split`) and pixels, and the class weights; `cache_dir`: see distillation."""
    if len(rows) != len(pixels):
        raise FerLabError(f"{len(rows)} manifest rows but {len(pixels)} images")
    is_train = (rows["split"] == "train").to_numpy()
    is_val = (rows["split"] == "val").to_numpy()
    if not is_train.any() or not is_val.any():
        raise FerLabError(f"training needs train and val images; the manifest has {int(is_train.sum())} train "
                          f"and {int(is_val.sum())} val rows")
    train_rows = rows[is_train]
    weights = datasets.class_weights(datasets.label_indices(train_rows["label"].tolist(), labels), len(labels),
                                   config.class_weights)
    per_class = None if config.class_weights == "none" else weights
    train_split = datasets.make_split(train_rows, pixels[is_train], labels, soft_labels=config.soft_labels,
                                    weights=per_class)
    if config.distill:
        train_split = distillation.with_teachers(train_split, config.teacher, config.distill, labels,
                                                  cache_dir=cache_dir)
    val_split = datasets.make_split(rows[is_val], pixels[is_val], labels)
    return train_split, val_split, weights


def training_manifest(data_path: str | os.PathLike[str], work_path: str | os.PathLike[str], *,
                      use_filtered: bool = True, seed: int = 0, labels: str = "fer2013") -> tuple[pd.DataFrame, str]:
    """The readable rows to train on and the manifest's name.

    With `use_filtered` and a `filtered_manifest.csv` from 02_filter_faces in `work_path`, training images
    that the filter rejected (`keep` false) are left out; otherwise the full manifest is used. `labels`
    is `fer2013` (the dataset's labels) or `ferplus` (FER+ majority labels, `votes.with_label_source`).
    """
    from fer_lab import data
    from fer_lab.data import votes

    manifest = data.load_or_build_manifest(data_path, work_path, seed=seed)
    readable = manifest[manifest["readable"].astype(bool)].reset_index(drop=True)
    filtered_file = Path(work_path) / FILTERED_MANIFEST
    if not (use_filtered and filtered_file.is_file()):
        return votes.with_label_source(readable, labels), "manifest.csv"
    filtered = data.read_manifest(filtered_file)
    # Against every row, unreadable ones included: the filter keeps those rows too, marked unreadable.
    strangers = set(filtered["path"]) - set(manifest["path"])
    if strangers:
        raise ConfigError(f"{filtered_file} lists {len(strangers)} images that are not in {data_path} "
                          f"(e.g. {sorted(strangers)[0]}); re-run 02_filter_faces for this dataset")
    filtered = filtered[filtered["readable"].astype(bool)]
    if "keep" in filtered:
        # Only training images are filtered: validation stays the same set in both arms of the experiment.
        keep = filtered["keep"].astype(str).str.lower().isin(("true", "1"))
        filtered = filtered[keep | (filtered["split"] != "train")]
    return votes.with_label_source(filtered.reset_index(drop=True), labels), FILTERED_MANIFEST


def class_table(rows: pd.DataFrame, labels: Sequence[str], weights: np.ndarray) -> pd.DataFrame:
    """Images per class in train and val, with the loss weight each class gets."""
    counts = pd.crosstab(rows["label"], rows["split"]).reindex(index=list(labels), fill_value=0)
    table = pd.DataFrame({split: counts[split] if split in counts else 0 for split in ("train", "val")})
    table["train_share"] = (table["train"] / max(1, table["train"].sum())).round(4)
    table["loss_weight"] = np.round(weights, 3)
    return table
