"""What a video analysis' per-frame table says over time: face rows, per-face summaries, smoothed
timelines and peaks (the tables and figures of `fer_lab.apply.video.VideoAnalysis`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lab.apply import inference
from fer_lab.apply.annotate import label_color


def face_rows(frames: pd.DataFrame) -> pd.DataFrame:
    """Only the rows that are faces (drops the rows of frames without faces)."""
    return frames[frames["face_id"].notna()]


def face_summary(frames: pd.DataFrame, labels: Sequence[str], sample_fps: float) -> pd.DataFrame:
    """Per face id: first, last, frames, seconds (frames / sample_fps), dominant label, share_<label>.

    `share_<label>` is the fraction of the face's sampled frames whose top label is `<label>`.
    """
    faces = face_rows(frames)
    columns = ["face_id", "first", "last", "frames", "seconds", "dominant", *(f"share_{label}" for label in labels)]
    if faces.empty:
        return pd.DataFrame(columns=columns)
    grouped = faces.groupby("face_id")
    summary = pd.DataFrame({"first": grouped["time"].min(), "last": grouped["time"].max(),
                            "frames": grouped.size()})
    summary["seconds"] = summary["frames"] / sample_fps
    shares = pd.crosstab(faces["face_id"], faces["label"], normalize="index").reindex(columns=list(labels),
                                                                                         fill_value=0.0)
    summary["dominant"] = shares.idxmax(axis=1)
    summary[[f"share_{label}" for label in labels]] = shares.to_numpy()
    return summary.reset_index()[columns]



def smooth(frames: pd.DataFrame, labels: Sequence[str], seconds: float = 1.0) -> pd.DataFrame:
    """Face rows with each p_<label> replaced by its centred moving average over `seconds`, per face."""
    faces = face_rows(frames).sort_values(["face_id", "time"])
    columns = inference.probability_columns(labels)
    if faces.empty or seconds <= 0:
        return faces.reset_index(drop=True)
    window = pd.Timedelta(seconds=seconds)
    smoothed = []
    for _, face in faces.groupby("face_id"):
        indexed = face[columns].set_axis(pd.to_timedelta(face["time"], unit="s"))
        # Samples can share a timestamp only for different faces, so the index is strictly increasing here.
        averaged = indexed.rolling(window, center=True, min_periods=1).mean()
        smoothed.append(face.assign(**{column: averaged[column].to_numpy() for column in columns}))
    return pd.concat(smoothed, ignore_index=True)


def peaks(frames: pd.DataFrame, labels: Sequence[str], smooth_seconds: float = 1.0) -> pd.DataFrame:
    """For each face and emotion: the time its smoothed probability is highest, and that probability."""
    smoothed = smooth(frames, labels, smooth_seconds)
    rows = []
    for face_id, face in smoothed.groupby("face_id"):
        for label, column in zip(labels, inference.probability_columns(labels)):
            best = face[column].idxmax()
            rows.append({"face_id": face_id, "label": label, "time": face.at[best, "time"],
                         "probability": face.at[best, column]})
    return pd.DataFrame(rows, columns=["face_id", "label", "time", "probability"])


def timeline_figure(frames: pd.DataFrame, labels: Sequence[str], smooth_seconds: float = 1.0,
                    max_faces: int = 6) -> Figure:
    """One panel per face (the `max_faces` seen longest): smoothed probability of each emotion over time.

    Args:
        frames: A video analysis' per-frame table.
        labels: The class names.
        smooth_seconds: Moving-average window.
        max_faces: Most panels.

    Returns:
        The figure ("no faces found" when there are none).
    """
    smoothed = smooth(frames, labels, smooth_seconds)
    if smoothed.empty:
        fig = Figure(figsize=(6, 1), layout="constrained")
        fig.text(0.5, 0.5, "no faces found", ha="center", va="center")
        return fig
    longest = smoothed["face_id"].value_counts().head(max_faces).index.sort_values()
    fig = Figure(figsize=(9, 1.0 + 1.9 * len(longest)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(longest), 1, sharex=True, squeeze=False).ravel())
    end = frames["time"].max()
    for ax, face_id in zip(axes, longest):
        face = smoothed[smoothed["face_id"] == face_id]
        for label, column in zip(labels, inference.probability_columns(labels)):
            ax.plot(face["time"], face[column], color=label_color(label), label=label, linewidth=1.5,
                    marker="." if len(face) < 3 else None)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, max(end, 1e-3))
        ax.set_ylabel(f"face {face_id}")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"emotion probabilities, {smooth_seconds:g} s moving average")
    return fig
