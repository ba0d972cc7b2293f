"""Runs together: the average of their class probabilities (an ensemble), scored from logged predictions.

04_evaluate logs every run's per-image probabilities, plain (`predictions_<split>.csv`) and averaged over
its test-time views (`predictions_<split>_tta.csv`), so an ensemble of runs is scored from those files
alone, without loading a model. 05_compare scores each arm's seeds this way: what several runs of one
recipe are worth together, at the sum of their training and inference costs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fer_lab.analysis import compare, evaluate
from fer_lab.data.labels import probability_column
from fer_lab.errors import DataError

PROBABILITY_PREFIX = probability_column("")
VIEWS = {"": False, "_tta": True}  # column suffix -> whether the test-time averaged predictions are meant


def probability_classes(predictions: pd.DataFrame) -> list[str]:
    """The classes a predictions frame holds probabilities for, in column order."""
    return [column[len(PROBABILITY_PREFIX):] for column in predictions.columns
            if column.startswith(PROBABILITY_PREFIX)]


def average_predictions(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The ensemble of predictions frames over the same images: their probabilities averaged, `pred` the
    most probable class, rows in the first frame's order.

    Args:
        frames: Two or more predictions frames (path, label, pred, `prob_<class>` columns).

    Returns:
        A predictions frame like 04_evaluate's.

    Raises:
        DataError: The frames lack probabilities, hold other classes or other images, or disagree on a label.
    """
    first = frames[0]
    classes = probability_classes(first)
    if first["path"].duplicated().any():
        raise DataError(f"the predictions list {first['path'][first['path'].duplicated()].iloc[0]} twice")
    total = np.zeros((len(first), len(classes)))
    for number, frame in enumerate(frames, start=1):
        if not probability_classes(frame):
            raise DataError(f"predictions {number} have no prob_<class> columns to average (04_evaluate logs them)")
        if sorted(probability_classes(frame)) != sorted(classes):
            raise DataError(f"predictions {number} hold classes {probability_classes(frame)}, the first {classes}")
        if len(frame) != len(first) or set(frame["path"]) != set(first["path"]):
            raise DataError(f"predictions {number} cover other images than the first ({len(frame)} against "
                            f"{len(first)}): not the same split of the same dataset")
        aligned = frame.drop_duplicates("path").set_index("path").reindex(first["path"])
        disagree = aligned["label"].to_numpy() != first["label"].to_numpy()
        if disagree.any():
            raise DataError(f"predictions {number} give {first['path'][disagree].iloc[0]} another true label than the first")
        total += evaluate.probability_matrix(aligned, classes)
    return evaluate.predictions_frame(first, total / len(frames), classes)


def _view_row(run_ids: Sequence[str], split: str, tta: bool, suffix: str) -> dict[str, float]:
    """The ensemble's accuracy and macro-F1 and its runs' mean and best accuracy in one view; empty (with a
    warning) when a run did not log that view."""
    try:
        frames = [compare.load_predictions(run_id, split, tta=tta) for run_id in run_ids]
        ensemble = average_predictions(frames)
    except DataError as error:
        warnings.warn(f"no {'test-time averaged ' if tta else ''}ensemble: {error}",
                      compare.MissingPredictionsWarning, stacklevel=3)
        return {}
    classes = probability_classes(ensemble)
    members = [evaluate.summary_metrics(frame, classes) for frame in frames]
    together = evaluate.summary_metrics(ensemble, classes)
    return {f"accuracy{suffix}": together["accuracy"], f"macro_f1{suffix}": together["macro_f1"],
            f"runs' mean accuracy{suffix}": float(np.mean([member["accuracy"] for member in members])),
            f"best run's accuracy{suffix}": float(np.max([member["accuracy"] for member in members]))}


def arm_ensembles(runs: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Each arm with two or more runs (its seeds) as one model: the average of their probabilities.

    Args:
        runs: Training runs as `compare.select_runs` returns them.
        split: The split 04_evaluate scored.

    Returns:
        One row per such arm: its runs, then the ensemble's accuracy and macro-F1 with its runs' mean and
        best accuracy, plain and (suffix `_tta`) averaged over each run's test-time views; a view some run
        did not log is left empty with a `MissingPredictionsWarning`.
    """
    seeded = compare.seeded_runs(runs)
    rows = []
    for arm, group in seeded.groupby("arm", sort=False):
        if len(group) < 2:
            continue
        run_ids = runs.loc[group.index, "run_id"].tolist()
        row: dict[str, object] = {"arm": arm, "runs": len(run_ids)}
        for suffix, tta in VIEWS.items():
            row.update(_view_row(run_ids, split, tta, suffix))
        rows.append(row)
    columns = ["runs"] + [f"{name}{suffix}" for suffix in VIEWS for name in
                          ("accuracy", "macro_f1", "runs' mean accuracy", "best run's accuracy")]
    return pd.DataFrame(rows, columns=["arm", *columns]).set_index("arm")
