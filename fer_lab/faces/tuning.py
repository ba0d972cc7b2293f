"""Tuning the face filter (02_filter_faces): a sweep over detector settings, thresholds and flat
weights on a scored subset, the trade-off it shows, and the operating point chosen from it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lab.errors import ConfigError, DataError
from fer_lab.faces import detection
from fer_lab.faces.detection import DetectorSettings
from fer_lab.faces.filtering import FilterRules, content_reasons, rejection_rate

# "default": the given settings; "sweep": the best swept setting (`choose_operating_point`).
OPERATING_POINTS = ("default", "sweep")


def sweep_subset(reference: pd.Series, size: int, seed: int = 0) -> pd.Index:
    """Row labels for a sweep: every reference non-face, then random reference faces up to `size`."""
    nonfaces = reference.index[reference == "nonface"]
    candidates = reference.index[reference == "face"]
    count = max(0, min(len(candidates), size - len(nonfaces)))
    chosen = np.random.default_rng(seed).choice(len(candidates), size=count, replace=False)
    return nonfaces.append(candidates[np.sort(chosen)])


def sweep(
    manifest: pd.DataFrame,
    data_path: str | os.PathLike[str],
    reference: pd.Series,
    geometries: Iterable[DetectorSettings],
    thresholds: Sequence[float],
    flat_weights: Sequence[float] = (0.0, FilterRules().flat_weight),
    rules: FilterRules = FilterRules(),
    work_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Non-face recall and face false-rejection for each detector geometry x flat weight x threshold.

    Run it on a subset (`sweep_subset`): one detection pass per geometry (cached), then every
    threshold and flat weight is a re-decision.

    Args:
        manifest: The rows to sweep on.
        data_path: The dataset the manifest describes.
        reference: "nonface" / "face" / "" per row (`reference_labels`).
        geometries: Detector settings to try (their thresholds are ignored).
        thresholds: Face-evidence thresholds to try.
        flat_weights: Flatness weights to try.
        rules: The other rules' thresholds.
        work_dir: Where the detection cache lives; None: no cache.
        workers: Detector processes.
        progress: Show a progress bar.

    Returns:
        One row per geometry, flat weight and threshold; `img_per_s` is the detection rate of a
        geometry's fresh pass (NaN when it came from the cache).
    """
    rows = []
    nonface, face = reference == "nonface", reference == "face"
    for geometry in geometries:
        found = detection.detect_manifest(manifest, data_path, geometry, work_dir, workers=workers, progress=progress)
        rate = found.computed / found.seconds if found.computed else float("nan")
        for weight in flat_weights:
            weighted = replace(rules, flat_weight=weight)
            for threshold in thresholds:
                rejected = content_reasons(found.table, threshold, weighted) != ""
                rows.append({
                    "model": geometry.model, "size": geometry.size, "padding": geometry.padding,
                    "upsample": geometry.upsample, "flat_weight": weight, "threshold": float(threshold),
                    "nonface_recall": rejection_rate(rejected, nonface),
                    "face_false_rejection": rejection_rate(rejected, face),
                    "nonfaces": int(nonface.sum()), "faces": int(face.sum()), "img_per_s": rate,
                })
    return pd.DataFrame(rows)


def best_operating_point(table: pd.DataFrame, max_false_rejection: float) -> pd.Series:
    """The sweep row with the highest non-face recall among those rejecting at most
    `max_false_rejection` of faces (ties: fewer false rejections, then faster)."""
    allowed = table[table["face_false_rejection"] <= max_false_rejection]
    if allowed.empty:
        raise DataError(f"no swept setting rejects at most {max_false_rejection:.1%} of faces")
    ranked = allowed.assign(speed=allowed["img_per_s"].fillna(0)).sort_values(
        ["nonface_recall", "face_false_rejection", "speed"], ascending=[False, True, False], kind="stable")
    return table.loc[ranked.index[0]]


def settings_from_row(row: pd.Series) -> tuple[DetectorSettings, FilterRules]:
    """Detector settings and rules of one sweep row."""
    settings = DetectorSettings(model=row["model"], size=int(row["size"]), padding=float(row["padding"]),
                                upsample=int(row["upsample"]), threshold=float(row["threshold"]))
    return settings, replace(FilterRules(), flat_weight=float(row["flat_weight"]))


def tradeoff_figure(table: pd.DataFrame, chosen: tuple[DetectorSettings, FilterRules] | None = None) -> Figure:
    """False rejection of faces (x) against recall on non-faces (y): one line per geometry and
    flat weight, one point per threshold; the chosen operating point is circled."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    keys = ["model", "size", "padding", "upsample", "flat_weight"]
    for key, group in table.groupby(keys, sort=False):
        group = group.sort_values("threshold")
        model, size, padding, upsample, weight = key
        rate = group["img_per_s"].iloc[0]
        speed = f", {rate:.0f} img/s" if rate == rate else ""
        ax.plot(100 * group["face_false_rejection"], 100 * group["nonface_recall"], marker="o", markersize=3,
                linestyle="-" if weight else "--",
                label=f"{model} {size}px pad {padding:g} up {upsample} flat×{weight:g}{speed}")
    if chosen is not None:
        settings, rules = chosen
        point = table[(table["model"] == settings.model) & (table["size"] == settings.size)
                      & np.isclose(table["padding"], settings.padding) & (table["upsample"] == settings.upsample)
                      & np.isclose(table["flat_weight"], rules.flat_weight)
                      & np.isclose(table["threshold"], settings.threshold)]
        if len(point):
            ax.scatter(100 * point["face_false_rejection"], 100 * point["nonface_recall"], s=200,
                       facecolors="none", edgecolors="red", linewidths=2, label="operating point", zorder=5)
    ax.set_xlabel("faces rejected (%)")
    ax.set_ylabel("non-faces rejected (%)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("face filter trade-off (each point is a threshold)")
    return fig


def can_sweep(reference: pd.Series, size: int) -> bool:
    """Whether a sweep of `size` images can be scored: size > 0 and the reference has faces and non-faces."""
    return size > 0 and bool((reference == "nonface").any()) and bool((reference == "face").any())


def sweep_geometries(base: DetectorSettings, sizes: Iterable[int], paddings: Iterable[float]) -> list[DetectorSettings]:
    """`base`'s model and upsampling at every size x padding (thresholds do not matter: a sweep re-decides)."""
    return [DetectorSettings(model=base.model, size=int(size), padding=float(padding), upsample=base.upsample)
            for size in sizes for padding in paddings]


def choose_operating_point(
    name: str,
    settings: DetectorSettings,
    rules: FilterRules,
    sweep_table: pd.DataFrame | None = None,
    max_false_rejection: float = 0.005,
) -> tuple[DetectorSettings, FilterRules]:
    """The settings and rules to filter with: as given ("default"), or the sweep's best ("sweep").

    Args:
        name: One of OPERATING_POINTS.
        settings: The detector settings given.
        rules: The rules given; with "sweep" only the flat weight is taken from the sweep.
        sweep_table: `sweep`'s table; without one, "sweep" keeps the given settings.
        max_false_rejection: The most faces the swept setting may reject (`best_operating_point`).

    Returns:
        (detector settings, rules).

    Raises:
        ConfigError: `name` is not an operating point.
    """
    if name not in OPERATING_POINTS:
        raise ConfigError(f"operating_point must be one of {', '.join(map(repr, OPERATING_POINTS))}, not {name!r}")
    if name == "default" or sweep_table is None:
        return settings, rules
    best_settings, best_rules = settings_from_row(best_operating_point(sweep_table, max_false_rejection))
    return best_settings, replace(rules, flat_weight=best_rules.flat_weight)


def sweep_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """The sweep as text cells "faces rejected % / non-faces rejected %", per setting (rows) and threshold."""
    return table.assign(
        setting=table["size"].astype(str) + "px pad " + table["padding"].map("{:g}".format)
        + " flat×" + table["flat_weight"].map("{:g}".format),
        cell=(100 * table["face_false_rejection"]).map("{:.1f}".format) + " / "
        + (100 * table["nonface_recall"]).map("{:.0f}".format),
    ).pivot(index="setting", columns="threshold", values="cell")


