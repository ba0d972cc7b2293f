"""A study's numbers: per participant x condition x segment, per condition with confidence intervals, timelines.

Each sampled frame counts once, through its **main face** (the largest box): in a participant's
recording that is the participant, and a passer-by in the background does not dilute them. Measures:

- `visible`: share of the segment's sampled frames with a face; `face_time_s`: seconds with a face;
- `share_<label>`: share of face-time whose top expression is `<label>`;
- `prob_<label>`: mean probability of `<label>` over face-time;
- `valence`: mean of P(happy) minus the summed probabilities of the negative expressions (angry,
  disgust, fear, sad; contempt for FER+ models), between -1 and +1. Surprise can be good or bad news
  and neutral is neither, so both count as 0;
- `peak_<label>`: the highest probability of `<label>` after a `smooth_seconds` moving average, and
  `peak_<label>_time` when it happened (seconds from the recording's start).

A participant with several recordings in one condition gets the mean of their recordings. Condition
means and t-intervals treat participants, never frames, as the unit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from fer_lab.apply import inference
from fer_lab.apply.annotate import label_color
from fer_lab.apply.study import Study, StudyResult
from fer_lab.apply.timeline import smooth
from fer_lab.data.labels import probability_column

POSITIVE = ("happy",)
NEGATIVE = ("angry", "disgust", "fear", "sad", "contempt")
WHOLE = "whole"  # the segment covering each whole recording
KEYS = ("participant", "condition", "segment")


def main_face(frames: pd.DataFrame) -> pd.DataFrame:
    """One row per sampled frame: its largest face, or the frame's no-face row."""
    area = (frames["x1"] - frames["x0"]) * (frames["y1"] - frames["y0"])
    ordered = frames.assign(_area=area.fillna(-1.0)).sort_values(["frame", "_area"], ascending=[True, False])
    return ordered.drop_duplicates("frame").drop(columns="_area").sort_values("time").reset_index(drop=True)


def valence(frames: pd.DataFrame, labels: Sequence[str]) -> pd.Series:
    """Per face row: P(positive) minus P(negative) (see the module docstring)."""
    positive = [probability_column(label) for label in labels if label in POSITIVE]
    negative = [probability_column(label) for label in labels if label in NEGATIVE]
    return frames[positive].sum(axis=1) - frames[negative].sum(axis=1)


def segments(study: Study, path: str, condition: str) -> list[tuple[str, float, float]]:
    """(name, start, end) of the segments of one recording: `WHOLE` and the events keyed by its path or condition."""
    events = study.events
    key, value = ("path", path) if "path" in events.columns else ("condition", condition)
    mine = events[events[key] == value]
    return [(WHOLE, 0.0, np.inf), *((row.name, row.start, row.end) for row in mine.itertuples(index=False))]


def _main_faces(result: StudyResult) -> Iterator[tuple[Any, pd.DataFrame]]:
    """(recording row, `main_face` table) of each analysed recording, in study order."""
    for recording in result.study.recordings.itertuples(index=False):
        frames = result.frames.get(recording.path)
        if frames is not None:
            yield recording, main_face(frames)


def measure_columns(labels: Sequence[str]) -> list[str]:
    """The measures `participant_table` computes, in order."""
    return ["visible", "face_time_s", *(f"share_{label}" for label in labels),
            *inference.probability_columns(labels), "valence",
            *(f"peak_{label}" for label in labels), *(f"peak_{label}_time" for label in labels)]


def participant_table(result: StudyResult, smooth_seconds: float = 1.0) -> pd.DataFrame:
    """One row per participant x condition x segment with every measure (the module docstring) and covariates."""
    labels = result.labels
    probs = inference.probability_columns(labels)
    rows = []
    for recording, main in _main_faces(result):
        has_face = main["face_id"].notna()
        main["valence"] = valence(main, labels).where(has_face)
        smoothed = smooth(main[has_face], labels, smooth_seconds) if has_face.any() else main[has_face]
        for name, start, end in segments(result.study, recording.path, recording.condition):
            inside = main[(main["time"] >= start) & (main["time"] < end)]
            faces = inside[inside["face_id"].notna()]
            peaks = smoothed[(smoothed["time"] >= start) & (smoothed["time"] < end)]
            row = {"participant": recording.participant, "condition": recording.condition, "segment": name,
                   "recordings": 1, "frames": len(inside),
                   "visible": float(len(faces) / len(inside)) if len(inside) else np.nan,
                   "face_time_s": len(faces) / result.sample_fps}
            shares = faces["label"].value_counts(normalize=True)
            row.update({f"share_{label}": float(shares.get(label, 0.0)) if len(faces) else np.nan
                        for label in labels})
            row.update({column: float(faces[column].mean()) if len(faces) else np.nan for column in probs})
            row["valence"] = float(faces["valence"].mean()) if len(faces) else np.nan
            for label, column in zip(labels, probs):
                best = peaks[column].idxmax() if len(peaks) else None
                row[f"peak_{label}"] = float(peaks.at[best, column]) if best is not None else np.nan
                row[f"peak_{label}_time"] = float(peaks.at[best, "time"]) if best is not None else np.nan
            rows.append(row)
    columns = [*KEYS, "recordings", "frames", *measure_columns(labels)]
    table = pd.DataFrame(rows, columns=columns)
    sums = table.groupby(list(KEYS), sort=False)[["recordings", "frames", "face_time_s"]].sum()
    means = table.groupby(list(KEYS), sort=False)[[c for c in measure_columns(labels) if c != "face_time_s"]].mean()
    merged = sums.join(means).reset_index()[columns]
    covariates = result.study.recordings.drop_duplicates(["participant", "condition"])[
        ["participant", "condition", *result.study.covariates]]
    return merged.merge(covariates, on=["participant", "condition"], how="left")


def long_table(participants: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """`participant_table` in tidy form: participant, condition, segment, measure, value."""
    measures = [column for column in measure_columns(labels) if column in participants.columns]
    return participants.melt(id_vars=list(KEYS), value_vars=measures, var_name="measure",
                             value_name="value").dropna(subset=["value"]).reset_index(drop=True)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t-interval (NaN bounds for fewer than two values)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, np.nan, np.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def condition_table(long: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per condition x segment x measure: participants, mean and its confidence interval across participants."""
    rows = []
    for (condition, segment, measure), group in long.groupby(["condition", "segment", "measure"], sort=False):
        mean, low, high = mean_ci(group["value"], level)
        rows.append({"condition": condition, "segment": segment, "measure": measure,
                     "participants": group["participant"].nunique(), "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["condition", "segment", "measure", "participants", "mean", "ci_low",
                                       "ci_high"])


def profile_table(conditions: pd.DataFrame, labels: Sequence[str], segment: str = WHOLE) -> pd.DataFrame:
    """Share of face-time per expression (rows) and condition (columns) in one segment."""
    shares = conditions[(conditions["segment"] == segment)
                        & conditions["measure"].isin([f"share_{label}" for label in labels])]
    profile = shares.pivot(index="measure", columns="condition", values="mean")
    return profile.rename(index=lambda measure: measure.removeprefix("share_")).reindex(list(labels))


def condition_timelines(result: StudyResult, align: str = "", step: float = 0.5, smooth_seconds: float = 1.0,
                        level: float = 0.95) -> pd.DataFrame:
    """Main-face probabilities per condition over time, participants as the unit.

    Args:
        result: The analysed study.
        align: An event name: time 0 is that event's start in each recording (recordings without it are left
            out); empty: the recording's start.
        step: Width of the time bins, seconds.
        smooth_seconds: Moving average applied to each recording first.
        level: Confidence level of the band.

    Returns:
        condition, time (bin start, relative to `align`), label, participants, mean, ci_low, ci_high.
    """
    labels = result.labels
    probs = inference.probability_columns(labels)
    rows = []
    for recording, main in _main_faces(result):
        starts = {name: start for name, start, _ in segments(result.study, recording.path, recording.condition)}
        if align and align not in starts:
            continue
        faces = smooth(main[main["face_id"].notna()], labels, smooth_seconds)
        if faces.empty:
            continue
        binned = np.floor((faces["time"] - (starts[align] if align else 0.0)) / step) * step
        means = faces[probs].groupby(binned.round(6).to_numpy()).mean()
        rows.append(means.assign(participant=recording.participant, condition=recording.condition))
    columns = ["condition", "time", "label", "participants", "mean", "ci_low", "ci_high"]
    if not rows:
        return pd.DataFrame(columns=columns)
    per_recording = pd.concat(rows).rename_axis("time").reset_index()
    per_participant = per_recording.groupby(["condition", "participant", "time"])[probs].mean().reset_index()
    out = []
    for (condition, time), group in per_participant.groupby(["condition", "time"]):
        for label, column in zip(labels, probs):
            mean, low, high = mean_ci(group[column], level)
            out.append({"condition": condition, "time": time + step / 2, "label": label,
                        "participants": len(group), "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(out, columns=columns)


def timelines_figure(timelines: pd.DataFrame, labels: Sequence[str], events: pd.DataFrame | None = None,
                     min_peak: float = 0.15) -> Figure:
    """One panel per expression that reaches `min_peak` somewhere: a line and confidence band per condition.

    `events` (name, start, end; relative to the timelines' zero) are shaded and named.
    """
    shown = [label for label in labels
             if (timelines.loc[timelines["label"] == label, "mean"].max() if len(timelines) else 0) >= min_peak]
    fig = Figure(figsize=(9, 1.2 + 1.8 * max(1, len(shown))), layout="constrained")
    if not shown:
        fig.text(0.5, 0.5, "no expression reaches the display threshold", ha="center", va="center")
        return fig
    axes = np.atleast_1d(fig.subplots(len(shown), 1, sharex=True, squeeze=False).ravel())
    conditions = sorted(timelines["condition"].unique())
    styles = ["-", "--", ":", "-."]
    for ax, label in zip(axes, shown):
        for index, condition in enumerate(conditions):
            line = timelines[(timelines["label"] == label) & (timelines["condition"] == condition)]
            ax.plot(line["time"], line["mean"], styles[index % len(styles)], color=label_color(label),
                    label=condition, linewidth=1.6)
            ax.fill_between(line["time"], line["ci_low"], line["ci_high"], color=label_color(label), alpha=0.15)
        for event in (events.drop_duplicates("name").itertuples(index=False) if events is not None else []):
            ax.axvspan(event.start, event.end, color="0.5", alpha=0.08)
            if ax is axes[0]:
                ax.text(event.start, 1.02, event.name, fontsize=8, va="bottom")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"P({label})")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False, title="condition")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("per condition: mean over participants with 95% confidence band")
    return fig


def profile_figure(profile: pd.DataFrame) -> Figure:
    """Grouped bars: share of face-time per expression, one bar per condition."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(profile.columns))
    x = np.arange(len(profile.index))
    for index, condition in enumerate(profile.columns):
        ax.bar(x + index * width, profile[condition].fillna(0), width, label=str(condition))
    ax.set_xticks(x + width * (len(profile.columns) - 1) / 2, profile.index)
    ax.set_ylabel("share of face-time")
    ax.legend(fontsize=8, frameon=False, title="condition")
    return fig
