"""Which images to train on: the face-detection noise filter, its decision rules and its scores.

Reject reasons, in the order they are checked (the first that applies is recorded):

- `unreadable`: the manifest could not decode the file.
- `blank`: near-constant pixels (`content.is_blank`: 2nd-98th percentile grey range below
  `blank_contrast`, a historic name kept for the CLI option and the notebook parameter).
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
`face_score`, the best box (x0/y0/x1/y1 as `fer_lab.faces.detector` defines them, in the 48x48
image's pixels), the pixel statistics (`grey_range`, `flatness`, `noise`), `face_evidence`, `keep` and `reject_reason`.

Scoring needs to know which images really are faces. Crowd NF votes are noisy: of the 180
FER2013 images with NF = 10 (177 of them dropped by FER+), fewer than half are non-faces.
`benchmarks/fer2013_nonface_review.csv` holds those 180 paths (no pixels) with a kind given by
looking at each image: `text` (placeholders), `icon`, `blank`, `no_face` (photos without a
visible face: a tie, an arm, a product box), `face`, `face_partial` (a mouth or an eye filling
the frame) and `ambiguous` (drawings, masks, crowds; left out of both sides of the score).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lab import data, project
from fer_lab.data.labels import SPLITS
from fer_lab.errors import DataError
from fer_lab.faces import detection
from fer_lab.faces.content import BLANK_RANGE, is_blank
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
    """Thresholds of the rules other than the detector's own (see the module docstring).

    `blank_contrast` is the grey range below which an image is blank (`content.is_blank`).
    """

    blank_contrast: float = BLANK_RANGE
    noise_limit: float = 0.3
    flat_weight: float = 2.0
    drop_duplicates: bool = True


def face_evidence(detections: pd.DataFrame, flat_weight: float) -> pd.Series:
    """Best detector score minus `flat_weight` times flatness; -inf where nothing was detected."""
    return detections["face_score"].fillna(-np.inf) - flat_weight * detections["flatness"].fillna(1.0)


def content_reasons(detections: pd.DataFrame, threshold: float, rules: FilterRules = FilterRules()) -> pd.Series:
    """Per image: the content reject reason, or "" when the image is kept on content."""
    unreadable = detections["grey_range"].isna()
    blank = ~unreadable & is_blank(detections["grey_range"], rules.blank_contrast)
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
    """The filtered manifest: `manifest` plus detection columns, `face_evidence`, `keep`, `reject_reason`.

    Args:
        manifest: The dataset manifest (`fer_lab.data`), one row per image.
        detections: `detection.RESULT_COLUMNS` for the same rows, in the same order.
        threshold: The minimum face evidence an image needs to be kept.
        rules: The other rules' thresholds.

    Returns:
        The manifest with the detection columns, `face_evidence`, `keep` and `reject_reason`.
    """
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
    """Detect faces (cached under `<work_dir>/cache/faces/`) and decide.

    Args:
        manifest: The dataset manifest; unreadable rows are rejected as such.
        data_path: The dataset the manifest describes.
        settings: How to detect faces; its threshold decides.
        rules: The other rules' thresholds.
        work_dir: Where the detection cache lives; None: no cache.
        workers: Detector processes (default: all cores for large jobs).
        progress: Show a progress bar.

    Returns:
        (the filtered manifest as `decide` returns it, the detections).
    """
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
    result["nonface_recall"] = rejection_rate(rejected, reference == "nonface")
    result["face_false_rejection"] = rejection_rate(rejected, reference == "face")
    if "vote_NF" in filtered:
        nf = filtered["vote_NF"]
        result["nf_majority_n"] = float((nf > 5).sum())
        result["nf_majority_recall"] = rejection_rate(rejected, nf > 5)
        result["zero_nf_n"] = float((nf == 0).sum())
        result["zero_nf_false_rejection"] = rejection_rate(rejected, nf == 0)
    return result


def rejection_rate(rejected: pd.Series, mask: pd.Series) -> float:
    """Share of the rows in `mask` that are `rejected` (NaN when `mask` selects none)."""
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


def boxes_of(filtered: pd.DataFrame) -> list[list[tuple[float, float, float, float]]]:
    """Per row, the best detection as [(x, y, width, height)] for `plots.image_grid` ([] when none)."""
    result = []
    columns = ["box_x0", "box_y0", "box_x1", "box_y1", "face_found"]
    for x0, y0, x1, y1, found in filtered[columns].itertuples(index=False):
        result.append([(x0, y0, x1 - x0, y1 - y0)] if found and x0 == x0 else [])
    return result


# --- notebook 02's views -------------------------------------------------------------------


def scores_table(metrics: dict[str, float]) -> pd.DataFrame:
    """`scores` as a two-column table for the report: rates as percentages, counts as integers."""
    values = [f"{v:.2%}" if ("recall" in k or "rejection" in k) else f"{v:.0f}" for k, v in metrics.items()]
    return pd.DataFrame({"metric": list(metrics), "value": values})


def review_samples(filtered: pd.DataFrame, size: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Rows to look at: `rejected` (random content rejections, by reason), `kept` (random kept images)
    and `borderline` (the kept images with the least face evidence), at most `size` each."""
    rng = np.random.default_rng(seed)
    content = filtered[filtered["reject_reason"].isin(CONTENT_REASONS[1:])]
    rejected = content.iloc[np.sort(rng.choice(len(content), min(size, len(content)), replace=False))]
    kept = filtered[filtered["keep"]]
    return {
        "rejected": rejected.sort_values(["reject_reason", "face_evidence"]),
        "kept": kept.iloc[np.sort(rng.choice(len(kept), min(size, len(kept)), replace=False))],
        "borderline": kept.nsmallest(size, "face_evidence"),
    }


def review_figure(rows: pd.DataFrame, data_path: str | os.PathLike[str], title: str, *,
                  with_boxes: bool = False) -> Figure:
    """The readable `rows` as an image grid captioned with reason (or "kept") and face evidence.

    Args:
        rows: Rows of the filtered manifest (e.g. from `review_samples`).
        data_path: The dataset, to load their pixels.
        title: The figure's title.
        with_boxes: Draw each image's best detection.

    Returns:
        The figure.
    """
    # Imported here: seaborn, which plots imports, is slow to import and only figures need it.
    from fer_lab import plots

    rows = rows[rows["readable"].astype(bool)]
    pixels = data.load_pixels(data_path, rows.reset_index(drop=True)) if len(rows) else []
    captions = [f"{reason or 'kept'} {evidence:.2f}" if evidence == evidence else (reason or "kept")
                for reason, evidence in zip(rows["reject_reason"], rows["face_evidence"])]
    return plots.image_grid(pixels, captions, boxes=boxes_of(rows) if with_boxes else None, title=title)


def output_manifest(filtered: pd.DataFrame, apply_filter: bool = True) -> pd.DataFrame:
    """The manifest 03_train reads: `filtered`, or with `apply_filter` False every image kept (the baseline)."""
    output = filtered.copy()
    if not apply_filter:
        output["keep"], output["reject_reason"] = True, ""
    return output
