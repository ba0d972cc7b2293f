"""Figures shared by the notebooks: confusion heatmaps, image grids, reliability diagrams, curves, training curves.

Figures are built as `matplotlib.figure.Figure` objects outside pyplot's registry, so a notebook
shows each one exactly once (as the cell's value or through `display`) and loops that make many
figures do not accumulate open pyplot windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

Box = tuple[float, float, float, float]


def confusion_heatmap(matrix: pd.DataFrame, *, title: str = "", normalized: bool | None = None) -> Figure:
    """Heatmap of a confusion matrix (rows true, columns predicted) with class names on both axes.

    `normalized` picks the number format; by default integer matrices are counts, others rates.
    """
    if normalized is None:
        normalized = not np.issubdtype(matrix.to_numpy().dtype, np.integer)
    size = 1.0 + 0.75 * len(matrix)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(matrix, ax=ax, annot=True, fmt=".2f" if normalized else "d", cmap="Blues",
                vmin=0, vmax=1 if normalized else None, square=True, cbar=True,
                annot_kws={"fontsize": 8})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalized)" if normalized else "confusion matrix (counts)"))
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)
    return fig


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str] | None = None, *,
               ncols: int = 8, boxes: Sequence[Sequence[Box]] | None = None,
               caption_colors: Sequence[str] | None = None, title: str = "",
               cell_size: float = 1.4, cmap: str = "gray", box_color: str = "lime") -> Figure:
    """Images in a grid with optional captions and boxes.

    `images`: 2-D grayscale or (H, W, 3) arrays, any size. `boxes[i]` lists rectangles for image `i`
    as (x, y, width, height) in its pixel coordinates. `caption_colors[i]` colours caption `i`
    (e.g. red for mistakes). An empty `images` gives a small figure saying so.
    """
    count = len(images)
    if count == 0:
        fig = Figure(figsize=(4, 1), layout="constrained")
        fig.text(0.5, 0.5, f"{title}: no images" if title else "no images", ha="center", va="center")
        return fig
    ncols = max(1, min(ncols, count))
    nrows = math.ceil(count / ncols)
    caption_space = 0.35 if captions is not None else 0.0
    title_space = 0.4 if title else 0.0
    height = nrows * (cell_size + caption_space) + title_space
    fig = Figure(figsize=(ncols * cell_size, height))
    # Fixed margins in inches, not constrained layout: its solver takes seconds on a grid of 50 axes.
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": 0.02 / ncols, "right": 1 - 0.02 / ncols, "bottom": 0.05 / height,
        "top": 1 - (title_space + caption_space) / height, "wspace": 0.06,
        "hspace": caption_space / cell_size}).ravel())
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        if index >= count:
            continue
        image = np.asarray(images[index])
        ax.imshow(image, cmap=cmap if image.ndim == 2 else None, vmin=0, vmax=255 if image.dtype == np.uint8 else None)
        for x, y, width, height in (boxes[index] if boxes is not None else ()):
            ax.add_patch(Rectangle((x, y), width, height, fill=False, edgecolor=box_color, linewidth=1.5))
        if captions is not None:
            color = caption_colors[index] if caption_colors is not None else "black"
            ax.set_title(str(captions[index]), fontsize=7, color=color)
    if title:
        fig.suptitle(title, y=1 - 0.08 / height, va="top")
    return fig


def reliability_diagram(table: pd.DataFrame, *, title: str = "reliability diagram", ece: float | None = None) -> Figure:
    """Accuracy per confidence bin against the diagonal, with the bin counts underneath.

    `table` is `evaluate.reliability_table(...)` (columns lower, upper, count, confidence, accuracy).
    """
    fig = Figure(figsize=(4.5, 5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = (table["upper"] - table["lower"]).to_numpy()
    top.bar(table["lower"], table["accuracy"].fillna(0), width=width, align="edge",
            edgecolor="black", color="tab:blue", label="accuracy")
    gap_bottom = np.minimum(table["accuracy"].fillna(0), table["confidence"].fillna(0))
    gap = (table["confidence"] - table["accuracy"]).abs().fillna(0)
    top.bar(table["lower"], gap, bottom=gap_bottom, width=width, align="edge",
            color="tab:red", alpha=0.3, label="gap to confidence")
    top.plot([0, 1], [0, 1], "--", color="gray")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title if ece is None else f"{title} (ECE {ece:.3f})")
    bottom.bar(table["lower"], table["count"], width=width, align="edge", color="gray", edgecolor="black")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)
    return fig


def classwise_reliability(tables: pd.DataFrame, eces: pd.Series | None = None, *, ncols: int = 4) -> Figure:
    """Small multiples of one-vs-rest reliability curves (`evaluate.classwise_reliability`), one per class."""
    classes = list(dict.fromkeys(tables["class"]))
    nrows = math.ceil(len(classes) / ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax, label in zip(axes, classes):
        rows = tables[(tables["class"] == label) & (tables["count"] > 0)]
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        ax.plot(rows["confidence"], rows["accuracy"], "o-", markersize=3)
        suffix = f" (ECE {eces[label]:.3f})" if eces is not None and label in eces else ""
        ax.set_title(f"{label}{suffix}", fontsize=9)
    for ax in axes[len(classes):]:
        ax.set_axis_off()
    fig.supxlabel("predicted P(class)")
    fig.supylabel("observed frequency")
    return fig


def curves(history: pd.DataFrame, *, x: str = "step", y: str = "value", hue: str = "run",
           title: str = "", ylabel: str = "") -> Figure:
    """Overlaid line curves from a long table (one line per `hue` value), e.g. validation accuracy per run."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    if history.empty:
        ax.text(0.5, 0.5, "no history logged", ha="center", va="center", transform=ax.transAxes)
    else:
        sns.lineplot(data=history, x=x, y=y, hue=hue, marker="o", ax=ax)
        ax.legend(fontsize=8, title=hue)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    return fig


def training_curves(history: pd.DataFrame, plan: Sequence[Any]) -> Figure:
    """Loss, accuracy and learning rate per global epoch of a training history, phase boundaries marked.

    Args:
        history: One row per epoch: epoch, train_/val_ loss and accuracy, lr.
        plan: The schedule's phases (`Schedule.plan()`), each with `first_epoch` and `tag`.

    Returns:
        Three panels side by side.
    """
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes[:2], ("loss", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{metric}"], "o-", label="train", markersize=3)
        ax.plot(history["epoch"], history[f"val_{metric}"], "o-", label="val", markersize=3)
        ax.set_title(metric)
        ax.legend(loc="best")
    axes[2].plot(history["epoch"], history["lr"], "o-", color="tab:green", markersize=3)
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate (start of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        for planned in plan:
            ax.axvline(planned.first_epoch - 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.text(planned.first_epoch - 0.4, 1.0, planned.tag, transform=ax.get_xaxis_transform(),
                    fontsize=7, va="top", color="grey")
    fig.tight_layout()
    return fig


def class_bars(table: pd.DataFrame, *, title: str = "", ylabel: str = "", center: bool = False) -> Figure:
    """Grouped bars: one group per row (class), one bar per column (e.g. run or metric).

    `center` draws a zero line and a symmetric axis, for differences.
    """
    fig = Figure(figsize=(max(6.0, 0.9 * len(table) + 2), 4), layout="constrained")
    ax = fig.subplots()
    long = table.rename_axis("class").reset_index().melt(id_vars="class", var_name="series", value_name="value")
    sns.barplot(data=long, x="class", y="value", hue="series", ax=ax)
    if center:
        ax.axhline(0, color="black", linewidth=0.8)
        limit = float(np.nanmax(np.abs(long["value"].to_numpy(dtype=float)))) if len(long) else 1.0
        ax.set_ylim(-limit * 1.1 - 1e-9, limit * 1.1 + 1e-9)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=8)
    return fig
