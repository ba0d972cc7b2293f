"""Which images to train on: the face-detection noise filter, its decision rules and its scores.

Reject reasons, in the order they are checked (the first that applies is recorded):

- `unreadable`: the manifest could not decode the file.
- `blank`: near-constant pixels (2nd-98th percentile range below `blank_contrast`).
- `noise`: pixel noise large relative to the image's contrast (random textures). The noisiest
  FER2013 images are halftone comics; the default limit rejects five of them.
- `no_face`: the detector's best score is below the threshold (or it found nothing).
- `weak_face`: the score alone passes, but the face evidence `face_score - flat_weight *
  flatness` does not: a weak detection on an image with large perfectly flat areas. On FER2013
  HOG scores text placeholders and icons about as high as faces at odd crops; their flatness
  separates them (and also costs a few weak faces on plain white backgrounds).
- `conflicting_labels`: exact pixel duplicates (same sha1, any split) that disagree on the
  label. Copies carrying the strict-majority label stay (then deduplicated below); every copy
  is rejected when no label has a strict majority, as with the usual two-copy conflicts.
- `cross_split_duplicate`: a copy of an image that also appears in a later split (train <
  val < test); the held-out copy stays so held-out scores are not inflated by training on it.
- `duplicate`: a second copy within the same split (the first copy by path stays), so no
  image weighs double in training.

The filter never touches raw files: it returns the manifest plus `face_found`, `n_faces`,
`face_score`, the best box, the pixel statistics, `face_evidence`, `keep` and `reject_reason`.

Scoring needs to know which images really are faces. Crowd NF votes are noisy: of the 180
FER2013 images with NF = 10 (177 of them dropped by FER+), fewer than half are non-faces.
`benchmarks/fer2013_nonface_review.csv` holds those 180 paths (no pixels) with a kind given by
looking at each image: `text` (placeholders), `icon`, `blank`, `no_face` (photos without a
visible face: a tie, an arm, a product box), `face`, `face_partial` (a mouth or an eye filling
the frame) and `ambiguous` (drawings, masks, crowds; left out of both sides of the score).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lab import project
from fer_lab.data.labels import SPLITS
from fer_lab.errors import DataError
from fer_lab.faces import detection
from fer_lab.faces.detection import DetectorSettings

# Reasons that judge the image itself, i.e. what the face filter is scored on.
CONTENT_REASONS = ("unreadable", "blank", "noise", "no_face", "weak_face")
DUPLICATE_REASONS = ("conflicting_labels", "cross_split_duplicate", "duplicate")
REJECT_REASONS = CONTENT_REASONS + DUPLICATE_REASONS
# Hand-verified kinds of the FER2013 images FER+ calls non-faces (benchmarks/fer2013_nonface_review.csv).
REVIEW_NONFACE_KINDS = ("text", "icon", "blank", "no_face")
REVIEW_FACE_KINDS = ("face", "face_partial")
# Kinds in the embedded sample's sample_truth.csv.
TRUTH_NONFACE_KINDS = ("nonface_text", "nonface_icon", "blank", "texture")
DEFAULT_REVIEW = project.ROOT / "benchmarks" / "fer2013_nonface_review.csv"


@dataclass(frozen=True)
class FilterRules:
    """Thresholds of the rules other than the detector's own (see the module docstring)."""

    blank_contrast: float = 10.0
    noise_limit: float = 0.3
    flat_weight: float = 2.0
    drop_duplicates: bool = True


def face_evidence(detections: pd.DataFrame, flat_weight: float) -> pd.Series:
    """Best detector score minus `flat_weight` times flatness; -inf where nothing was detected."""
    return detections["face_score"].fillna(-np.inf) - flat_weight * detections["flatness"].fillna(1.0)


def content_reasons(detections: pd.DataFrame, threshold: float, rules: FilterRules = FilterRules()) -> pd.Series:
    """Per image: the content reject reason, or "" when the image is kept on content."""
    unreadable = detections["contrast"].isna()
    blank = ~unreadable & (detections["contrast"] < rules.blank_contrast)
    noise = ~unreadable & (detections["noise"] > rules.noise_limit)
    no_face = ~(detections["face_score"] >= threshold)
    graphic = face_evidence(detections, rules.flat_weight) < threshold
    reasons = np.select([unreadable, blank, noise, no_face, graphic], list(CONTENT_REASONS), default="")
    return pd.Series(reasons, index=detections.index, dtype=object)


def duplicate_reasons(manifest: pd.DataFrame) -> pd.Series:
    """Per row: conflicting_labels / cross_split_duplicate / duplicate, or "" (see module docstring)."""
    reasons = pd.Series("", index=manifest.index, dtype=object)
    readable = manifest[manifest["readable"].astype(bool)]
    copies = readable[readable.duplicated("sha1", keep=False)]
    if copies.empty:
        return reasons
    counts = copies.groupby(["sha1", "label"]).size()
    totals = counts.groupby(level="sha1").transform("sum")
    majority = counts[counts * 2 > totals].reset_index().set_index("sha1")["label"]
    outvoted = copies["label"].to_numpy() != copies["sha1"].map(majority).to_numpy()
    reasons.loc[copies.index[outvoted]] = "conflicting_labels"
    survivors = copies[~outvoted]
    rank = survivors["split"].map({split: i for i, split in enumerate(SPLITS)}).fillna(len(SPLITS))
    latest = rank.groupby(survivors["sha1"]).transform("max")
    reasons.loc[survivors.index[rank < latest]] = "cross_split_duplicate"
    same_split = survivors[rank == latest].sort_values("path", kind="stable")
    reasons.loc[same_split.index[same_split.duplicated("sha1")]] = "duplicate"
    return reasons


def decide(
    manifest: pd.DataFrame,
    detections: pd.DataFrame,
    threshold: float,
    rules: FilterRules = FilterRules(),
) -> pd.DataFrame:
    """The filtered manifest: `manifest` plus detection columns, `face_evidence`, `keep`, `reject_reason`."""
    if len(detections) != len(manifest):
        raise DataError(f"{len(detections)} detection rows for a manifest of {len(manifest)} rows")
    detections = detections.set_axis(manifest.index)
    reasons = content_reasons(detections, threshold, rules)
    if rules.drop_duplicates:
        duplicates = duplicate_reasons(manifest)
        reasons = reasons.where(reasons != "", duplicates)
    filtered = pd.concat([manifest.drop(columns=[c for c in detections if c in manifest]), detections], axis=1)
    filtered["face_evidence"] = face_evidence(detections, rules.flat_weight).replace(-np.inf, np.nan)
    filtered["keep"] = reasons == ""
    filtered["reject_reason"] = reasons
    return filtered


def filter_manifest(
    manifest: pd.DataFrame,
    data_path: str | os.PathLike[str],
    settings: DetectorSettings = DetectorSettings(),
    rules: FilterRules = FilterRules(),
    work_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, detection.Detections]:
    """Detect faces (cached under `<work_dir>/cache/faces/`) and decide; returns (filtered, detections)."""
    detections = detection.detect_manifest(manifest, data_path, settings, work_dir, workers=workers, progress=progress)
    return decide(manifest, detections.table, settings.threshold, rules), detections


# --- scoring ---------------------------------------------------------------------------------


def reference_labels(
    manifest: pd.DataFrame,
    data_path: str | os.PathLike[str] | None = None,
    review: str | os.PathLike[str] | None = DEFAULT_REVIEW,
) -> tuple[pd.Series, str]:
    """Per row "nonface", "face" or "" (unknown), and where that came from.

    In order of trust: the sample's `sample_truth.csv`; a hand-verified review CSV (path, kind)
    whose paths are in the manifest, with images of zero NF votes as faces; else the crowd votes
    alone (NF majority = non-face, no NF vote = face). "" when none applies.
    """
    labels = pd.Series("", index=manifest.index, dtype=object)
    truth_file = _data_root(data_path) / "sample_truth.csv" if data_path is not None else None
    if truth_file is not None and truth_file.is_file():
        truth = pd.read_csv(truth_file, dtype=str).set_index("path")["kind"]
        kinds = manifest["path"].map(truth)
        labels[kinds.isin(TRUTH_NONFACE_KINDS)] = "nonface"
        labels[kinds.notna() & ~kinds.isin(TRUTH_NONFACE_KINDS)] = "face"
        return labels, "sample_truth"
    has_votes = "vote_NF" in manifest
    if has_votes:
        labels[manifest["vote_NF"] == 0] = "face"
    reviewed = _review_kinds(review, manifest)
    if reviewed is not None:
        labels[reviewed.isin(REVIEW_NONFACE_KINDS)] = "nonface"
        labels[reviewed.isin(REVIEW_FACE_KINDS)] = "face"
        labels[reviewed == "ambiguous"] = ""
        return labels, "review+votes" if has_votes else "review"
    if has_votes:
        labels[manifest["vote_NF"] > 5] = "nonface"
        return labels, "votes"
    return labels, "none"


def _data_root(data_path: str | os.PathLike[str]) -> Path:
    from fer_lab import data

    return data.data_root(data_path)


def _review_kinds(review: str | os.PathLike[str] | None, manifest: pd.DataFrame) -> pd.Series | None:
    """The review's kind per manifest row (NaN when not reviewed), or None when it covers no row."""
    if review is None or not Path(review).is_file():
        return None
    table = pd.read_csv(review, dtype=str)
    if not {"path", "kind"} <= set(table.columns):
        raise DataError(f"{review}: a review CSV needs columns path and kind")
    kinds = manifest["path"].map(table.set_index("path")["kind"])
    return kinds if kinds.notna().any() else None


def scores(filtered: pd.DataFrame, reference: pd.Series) -> dict[str, float]:
    """How well content rejections match the reference and, when present, the crowd's NF votes.

    `nonface_recall`: share of reference non-faces rejected; `face_false_rejection`: share of
    reference faces rejected; vote-based `nf_majority_recall` (NF > 5 of 10 votes) and
    `zero_nf_false_rejection` (no NF vote). Rates in [0, 1]; only content reasons count.
    """
    rejected = filtered["reject_reason"].isin(CONTENT_REASONS)
    result: dict[str, float] = {
        "images": float(len(filtered)),
        "kept": float(filtered["keep"].sum()),
        "content_rejected": float(rejected.sum()),
    }
    for name, mask in (("nonface", reference == "nonface"), ("face", reference == "face")):
        result[f"{name}_n"] = float(mask.sum())
    result["nonface_recall"] = _rate(rejected, reference == "nonface")
    result["face_false_rejection"] = _rate(rejected, reference == "face")
    if "vote_NF" in filtered:
        nf = filtered["vote_NF"]
        result["nf_majority_n"] = float((nf > 5).sum())
        result["nf_majority_recall"] = _rate(rejected, nf > 5)
        result["zero_nf_n"] = float((nf == 0).sum())
        result["zero_nf_false_rejection"] = _rate(rejected, nf == 0)
    return result


def _rate(rejected: pd.Series, mask: pd.Series) -> float:
    return float(rejected[mask].mean()) if mask.any() else float("nan")


def rejection_table(filtered: pd.DataFrame, reference: pd.Series | None = None, by: str = "label") -> pd.DataFrame:
    """Per `by` value (class or split): images, kept, count per reject reason, content-rejection
    rate, and the false-rejection rate on reference faces when a reference is given."""
    reasons = pd.crosstab(filtered[by], filtered["reject_reason"]).reindex(columns=list(REJECT_REASONS), fill_value=0)
    table = pd.DataFrame({"images": filtered.groupby(by).size(), "kept": filtered.groupby(by)["keep"].sum()})
    table = table.join(reasons).fillna(0).astype(int)
    rejected = filtered["reject_reason"].isin(CONTENT_REASONS)
    table["content_rejected_%"] = (100 * rejected.groupby(filtered[by]).mean()).round(2)
    if reference is not None and (reference == "face").any():
        faces_mask = reference == "face"
        by_group = rejected[faces_mask].groupby(filtered.loc[faces_mask, by])
        table["face_false_rejection_%"] = (100 * by_group.mean()).round(2)
    total = table.sum(numeric_only=True)
    total["content_rejected_%"] = round(100 * float(rejected.mean()), 2)
    if "face_false_rejection_%" in table:
        total["face_false_rejection_%"] = round(100 * float(rejected[reference == "face"].mean()), 2)
    table.loc["total"] = total
    table.index.name = by
    return table


# --- settings sweep --------------------------------------------------------------------------


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
    threshold and flat weight is a re-decision. `img_per_s` is the detection rate of a geometry's
    fresh pass (NaN when it came from the cache).
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
                    "nonface_recall": _rate(rejected, nonface), "face_false_rejection": _rate(rejected, face),
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


def boxes_of(filtered: pd.DataFrame) -> list[list[tuple[float, float, float, float]]]:
    """Per row, the best detection as [(x, y, width, height)] for `plots.image_grid` ([] when none)."""
    result = []
    columns = ["box_x0", "box_y0", "box_x1", "box_y1", "face_found"]
    for x0, y0, x1, y1, found in filtered[columns].itertuples(index=False):
        result.append([(x0, y0, x1 - x0, y1 - y0)] if found and x0 == x0 else [])
    return result
