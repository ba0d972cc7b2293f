"""Dataset exploration (01_explore): class balance, pixel statistics, duplicates, leakage, near-constant images, votes.

Vocabulary: `contrast` here is the RMS contrast (a pixel standard deviation) and *near-constant*
means a standard deviation below `max_std`: statistics that describe the dataset. The face filter
judges content with different statistics (`fer_lab.faces.content`: `grey_range`, and `is_blank`,
the 2-98% grey range below a limit, the one definition of a *blank* image); the two agree on
all-black or flat frames but are not interchangeable.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lab.data.labels import FERPLUS_CLASS, SPLITS


def class_distribution(manifest: pd.DataFrame) -> pd.DataFrame:
    """Image count per class (rows) and split (columns), with totals."""
    table = pd.crosstab(manifest["label"], manifest["split"], margins=True, margins_name="total")
    ordered = [split for split in SPLITS if split in table.columns] + ["total"]
    return table[ordered]


def imbalance_ratio(manifest: pd.DataFrame, split: str = "train") -> float:
    """Largest over smallest class count in `split` (1.0 is perfectly balanced)."""
    counts = manifest.loc[manifest["split"] == split, "label"].value_counts()
    return float(counts.max() / counts.min()) if len(counts) else float("nan")


def pixel_statistics(pixels: np.ndarray) -> pd.DataFrame:
    """Per-image brightness (mean), contrast (RMS contrast: the standard deviation) and range (max - min)."""
    flat = pixels.reshape(len(pixels), -1).astype(np.float32)
    return pd.DataFrame({
        "brightness": flat.mean(axis=1),
        "contrast": flat.std(axis=1),
        "range": flat.max(axis=1) - flat.min(axis=1),
    })


def near_constant_mask(pixels: np.ndarray, max_std: float = 3.0) -> np.ndarray:
    """True for near-constant images (all black, all white, flat grey): standard deviation below `max_std`."""
    return pixels.reshape(len(pixels), -1).std(axis=1) < max_std


def mean_faces(pixels: np.ndarray, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """The average image of each class."""
    labels = np.asarray(labels)
    return {label: pixels[labels == label].mean(axis=0) for label in sorted(set(labels))}


def duplicate_groups(manifest: pd.DataFrame) -> pd.DataFrame:
    """Groups of pixel-identical images (same sha1), largest first, with their labels and splits."""
    readable = manifest[manifest["readable"]] if "readable" in manifest else manifest
    repeated = readable[readable.duplicated("sha1", keep=False)]
    groups = repeated.groupby("sha1", sort=False).agg(
        size=("path", "size"),
        labels=("label", lambda s: ",".join(sorted(set(s)))),
        splits=("split", lambda s: ",".join(sorted(set(s)))),
        paths=("path", list),
    ).reset_index()
    groups["conflicting_labels"] = groups["labels"].str.contains(",")
    return groups.sort_values(["size", "sha1"], ascending=[False, True], ignore_index=True)


def cross_split_leaks(manifest: pd.DataFrame, evaluated: Sequence[str] = ("val", "test")) -> pd.DataFrame:
    """Rows of the evaluated splits whose pixels also occur in train (they inflate held-out accuracy)."""
    train_hashes = set(manifest.loc[manifest["split"] == "train", "sha1"])
    held_out = manifest[manifest["split"].isin(evaluated)]
    return held_out[held_out["sha1"].isin(train_hashes)]


def vote_agreement(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per class: share of images whose FER+ majority vote agrees with the dataset label, and NF majorities."""
    columns = [column for column in FERPLUS_CLASS if column in manifest]
    voted = manifest.dropna(subset=columns)
    voted = voted[voted[columns].sum(axis=1) > 0]
    majority = voted[columns].idxmax(axis=1).map(FERPLUS_CLASS)
    return pd.DataFrame({
        "label": voted["label"],
        "agrees": majority == voted["label"],
        "not_a_face": majority == "not a face",
    }).groupby("label").agg(images=("agrees", "size"), agreement=("agrees", "mean"),
                            nf_majority=("not_a_face", "sum"))


def findings(manifest: pd.DataFrame, pixels: np.ndarray, *, max_std: float = 3.0) -> pd.DataFrame:
    """The exploration's headline numbers as one table a reviewer can read without the code.

    `pixels` are the readable rows' images, in manifest order. The `metric` column names each
    number as it is logged to MLflow.
    """
    readable = manifest[manifest["readable"]] if "readable" in manifest else manifest
    groups = duplicate_groups(manifest)
    leaks = cross_split_leaks(readable)
    per_split = ", ".join(f"{split}: {n}" for split, n in leaks["split"].value_counts().sort_index().items())
    rows = [
        ("images", "images", len(manifest), "all files/rows found"),
        ("unreadable_images", "unreadable", len(manifest) - len(readable), "kept in the manifest with the reason"),
        ("classes", "classes", readable["label"].nunique(), ", ".join(sorted(readable["label"].unique()))),
        ("train_imbalance_ratio", "train imbalance ratio", round(imbalance_ratio(readable), 2),
         "largest / smallest train class"),
        ("duplicate_groups", "duplicate groups", len(groups), "pixel-identical images (same sha1)"),
        ("duplicated_images", "images in duplicate groups", int(groups["size"].sum()), ""),
        ("conflicting_duplicate_groups", "groups with conflicting labels", int(groups["conflicting_labels"].sum()),
         "same pixels, different labels"),
        ("leaked_images", "val/test images also in train", len(leaks), per_split),
        ("near_constant_images", "near-constant images", int(near_constant_mask(pixels, max_std).sum()),
         f"pixel standard deviation < {max_std}"),
    ]
    if any(column in manifest for column in FERPLUS_CLASS):
        agreement = vote_agreement(readable)
        voted = int(agreement["images"].sum())
        if voted:
            share = float((agreement["agreement"] * agreement["images"]).sum() / voted)
            rows.append(("ferplus_agreement", "FER+ majority agrees with label", round(share, 4),
                         f"share of {voted} voted images"))
            rows.append(("ferplus_nf_majority", "FER+ 'not a face' majority", int(agreement["nf_majority"].sum()),
                         "crowd evidence, not proof"))
    return pd.DataFrame(rows, columns=["metric", "finding", "value", "note"])


def findings_metrics(table: pd.DataFrame) -> dict[str, float]:
    """The findings as MLflow metrics, keyed by their `metric` name."""
    return dict(zip(table["metric"], table["value"].astype(float)))


def distribution_figure(distribution: pd.DataFrame) -> Figure:
    """Bar chart of images per class, one bar per split."""
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax = fig.subplots()
    distribution.drop(index="total", columns="total", errors="ignore").plot.bar(ax=ax, rot=0)
    ax.set_ylabel("images")
    ax.set_title("class distribution per split")
    return fig


def statistics_figure(stats: pd.DataFrame, labels: Sequence[str]) -> Figure:
    """Brightness and contrast distributions per class (box plots)."""
    import seaborn as sns

    frame = stats.assign(label=list(labels))
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    for ax, column in zip(fig.subplots(1, 2), ("brightness", "contrast")):
        sns.boxplot(data=frame, x="label", y=column, ax=ax, fliersize=1)
        ax.set_title(f"{column} per class")
        ax.set_xlabel("")
    return fig


def intensity_figure(pixels: np.ndarray, labels: Sequence[str]) -> Figure:
    """Normalized pixel-intensity histogram of each class."""
    labels = np.asarray(labels)
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    for label in sorted(set(labels)):
        counts = np.bincount(pixels[labels == label].ravel(), minlength=256)
        ax.plot(counts / max(counts.sum(), 1), label=label, linewidth=1)
    ax.set_xlabel("pixel intensity")
    ax.set_ylabel("share of pixels")
    ax.legend(fontsize=7)
    return fig
