"""Test-set evaluation of a trained model: predictions, metrics, calibration, confusions and leakage.

Everything here works on a *predictions frame*: one row per image with columns `path`, `sha1`,
`label` (true class), `pred` (predicted class) and `prob_<class>` for every class of the model.
That frame is what 04_evaluate logs as `predictions_<split>.csv`, so every number can be recomputed
from the artifact alone (05_compare does, for McNemar's test).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from sklearn import metrics as skm

from fer_lab.errors import FerLabError
from fer_lab.training import augment

PREDICTION_COLUMNS = ("path", "sha1", "label", "pred")
DEFAULT_TENCROP = 44  # ten-crop side for a model trained without crops


class LeakageWarning(UserWarning):
    """Test images that are pixel-identical to training images inflate test accuracy."""


def prob_column(label: str) -> str:
    """Column name holding the predicted probability of `label`."""
    return f"prob_{label}"


def metric_prefix(split: str) -> str:
    """Prefix for metrics of `split`: `test_` for the test split, `eval_<split>_` otherwise.

    Other splits get their own prefix so that evaluating on `val` never overwrites the
    per-epoch `val_*` history that training logs on the same run.
    """
    return "test_" if split == "test" else f"eval_{split}_"


def select_split(manifest: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Readable manifest rows of `split`.

    `split` is a manifest split (`train`, `val`, `test`) or an original usage (`PrivateTest`,
    `PublicTest`, `Training`). `test` means PrivateTest where the test rows carry that usage, so
    FER2013's usual protocol (PublicTest for selection, PrivateTest for the final number) holds.
    """
    rows = manifest[manifest["readable"].astype(bool)] if "readable" in manifest else manifest
    if split in ("train", "val", "test"):
        rows = rows[rows["split"] == split]
        if split == "test" and "usage" in rows and (rows["usage"] == "PrivateTest").any():
            rows = rows[rows["usage"] == "PrivateTest"]
    elif "usage" in rows and (rows["usage"] == split).any():
        rows = rows[rows["usage"] == split]
    else:
        raise FerLabError(f"split {split!r} has no readable rows in the manifest "
                          "(use train, val, test or a usage such as PrivateTest)")
    if rows.empty:
        raise FerLabError(f"split {split!r} has no readable rows in the manifest")
    return rows.reset_index(drop=True)


def predict_probabilities(model: Any, pixels: np.ndarray, *, batch_size: int = 256, tta: str = "none",
                          crop: int = 0) -> np.ndarray:
    """Class probabilities for uint8 images (N, H, W), averaged over the test-time views of `tta`.

    `tta` is none, flip (the image and its mirror) or tencrop (corner and centre crops of side `crop`,
    and their mirrors); see `augment.test_time_views`.
    """
    views = augment.test_time_views(np.asarray(pixels), tta, crop)
    total = sum(np.asarray(model.predict(np.asarray(view, dtype=np.float32)[..., None], batch_size=batch_size,
                                         verbose=0), dtype=np.float64) for view in views)
    return total / len(views)


def predictions_frame(rows: pd.DataFrame, probabilities: np.ndarray,
                      labels: Sequence[str]) -> pd.DataFrame:
    """Per-image predictions: path, sha1, label, pred and one probability column per class."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(rows), len(labels)):
        raise FerLabError(f"probabilities have shape {probabilities.shape}, expected "
                          f"({len(rows)}, {len(labels)}) for {len(rows)} images and {len(labels)} classes")
    frame = pd.DataFrame({
        "path": rows["path"].to_numpy(),
        "sha1": rows["sha1"].to_numpy() if "sha1" in rows else "",
        "label": rows["label"].to_numpy(),
        "pred": np.asarray(labels, dtype=object)[probabilities.argmax(axis=1)],
    })
    probs = pd.DataFrame(probabilities, columns=[prob_column(label) for label in labels])
    return pd.concat([frame, probs], axis=1)


def probability_matrix(predictions: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """The (N, classes) probability block of a predictions frame, in `labels` order."""
    missing = [prob_column(label) for label in labels if prob_column(label) not in predictions]
    if missing:
        raise FerLabError(f"predictions lack probability columns {missing}")
    return predictions[[prob_column(label) for label in labels]].to_numpy(dtype=np.float64)


def _check_labels(predictions: pd.DataFrame, labels: Sequence[str]) -> None:
    unknown = sorted(set(predictions["label"]) - set(labels))
    if unknown:
        raise FerLabError(f"predictions contain true labels {unknown} that the model does not know "
                          f"(model labels: {list(labels)})")


def confusion(predictions: pd.DataFrame, labels: Sequence[str], *,
              normalize: bool = False) -> pd.DataFrame:
    """Confusion matrix (rows: true class, columns: predicted); `normalize` divides each row by its total.

    Rows of classes absent from the split stay zero instead of becoming NaN.
    """
    _check_labels(predictions, labels)
    counts = skm.confusion_matrix(predictions["label"], predictions["pred"], labels=list(labels))
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        counts = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    index = pd.Index(labels, name="true")
    return pd.DataFrame(counts, index=index, columns=pd.Index(labels, name="predicted"))


def per_class_metrics(predictions: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (sklearn; 0 where a class is never predicted)."""
    _check_labels(predictions, labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        predictions["label"], predictions["pred"], labels=list(labels), zero_division=0)
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support},
                        index=pd.Index(labels, name="class"))


def summary_metrics(predictions: pd.DataFrame, labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, macro-F1, balanced accuracy, top-2 accuracy and top-label ECE over all images."""
    _check_labels(predictions, labels)
    y_true, y_pred = predictions["label"], predictions["pred"]
    probs = probability_matrix(predictions, labels)
    true_index = pd.Categorical(y_true, categories=list(labels)).codes
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=list(labels), average="macro", zero_division=0)),
        "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred)),
        "top2_accuracy": float(skm.top_k_accuracy_score(true_index, probs, k=min(2, len(labels)),
                                                        labels=np.arange(len(labels)))),
        "ece": expected_calibration_error(probs.max(axis=1), y_pred.to_numpy() == y_true.to_numpy()),
        "n_images": float(len(predictions)),
    }


def _balanced_accuracy(y_true: pd.Series, y_pred: pd.Series) -> float:
    """Mean recall over the classes present in `y_true` (sklearn's definition, without its warning
    about predicted classes that never occur in the truth)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return skm.balanced_accuracy_score(y_true, y_pred)


def reliability_table(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Equal-width confidence bins: count, mean confidence and accuracy per bin (empty bins kept as NaN)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins with 0 in the first one, so confidence 1.0 lands in the last bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table = pd.DataFrame({"bin": which, "confidence": confidence, "correct": correct})
    grouped = table.groupby("bin").agg(count=("correct", "size"), confidence=("confidence", "mean"),
                                       accuracy=("correct", "mean"))
    grouped = grouped.reindex(range(bins))
    grouped["count"] = grouped["count"].fillna(0).astype(int)
    grouped.insert(0, "lower", edges[:-1])
    grouped.insert(1, "upper", edges[1:])
    return grouped.rename_axis("bin")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean |accuracy - confidence| over equal-width bins (Guo et al., 2017)."""
    table = reliability_table(confidence, correct, bins).dropna()
    if table["count"].sum() == 0:
        return float("nan")
    gaps = (table["accuracy"] - table["confidence"]).abs()
    return float((gaps * table["count"]).sum() / table["count"].sum())


def classwise_ece(predictions: pd.DataFrame, labels: Sequence[str], bins: int = 10) -> pd.Series:
    """One-vs-rest ECE per class: is P(class) calibrated against 'the image is that class'?"""
    probs = probability_matrix(predictions, labels)
    truth = predictions["label"].to_numpy()
    return pd.Series({label: expected_calibration_error(probs[:, i], truth == label, bins)
                      for i, label in enumerate(labels)}, name="ece").rename_axis("class")


def classwise_reliability(predictions: pd.DataFrame, labels: Sequence[str], bins: int = 10) -> pd.DataFrame:
    """One-vs-rest reliability tables of every class stacked, with a `class` column."""
    probs = probability_matrix(predictions, labels)
    truth = predictions["label"].to_numpy()
    tables = [reliability_table(probs[:, i], truth == label, bins).assign(**{"class": label})
              for i, label in enumerate(labels)]
    return pd.concat(tables).reset_index()


def confused_pairs(predictions: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Off-diagonal (true, predicted) pairs ranked by count, with the share of the true class they take."""
    counts = confusion(predictions, labels)
    rates = confusion(predictions, labels, normalize=True)
    pairs = [(true, pred, int(counts.loc[true, pred]), float(rates.loc[true, pred]))
             for true in labels for pred in labels if true != pred and counts.loc[true, pred] > 0]
    table = pd.DataFrame(pairs, columns=["true", "predicted", "count", "rate"])
    return table.sort_values(["count", "rate", "true", "predicted"],
                             ascending=[False, False, True, True]).reset_index(drop=True)


def confident_mistakes(predictions: pd.DataFrame, true: str, predicted: str, k: int = 8) -> pd.DataFrame:
    """The `k` images of class `true` predicted as `predicted` with the highest confidence."""
    wrong = predictions[(predictions["label"] == true) & (predictions["pred"] == predicted)]
    wrong = wrong.assign(confidence=wrong[prob_column(predicted)])
    return wrong.sort_values("confidence", ascending=False).head(k)


def leaked_mask(predictions: pd.DataFrame, train_sha1: Sequence[str]) -> np.ndarray:
    """True for evaluated images whose pixels (sha1) also occur among the training images."""
    known = set(pd.Series(train_sha1).dropna().astype(str)) - {""}
    return predictions["sha1"].astype(str).isin(known).to_numpy()


def leakage_report(predictions: pd.DataFrame, train_sha1: Sequence[str]) -> dict[str, float]:
    """Accuracy with and without test images that duplicate training images; warns when any exist."""
    leaked = leaked_mask(predictions, train_sha1)
    correct = (predictions["label"] == predictions["pred"]).to_numpy()
    report = {
        "leaked_images": float(leaked.sum()),
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "accuracy_without_leaked": float(correct[~leaked].mean()) if (~leaked).any() else float("nan"),
        "accuracy_on_leaked": float(correct[leaked].mean()) if leaked.any() else float("nan"),
    }
    if leaked.any():
        warnings.warn(
            f"{int(leaked.sum())} of {len(leaked)} evaluated images also appear in the training split "
            f"(same pixels): accuracy {report['accuracy']:.4f} with them, "
            f"{report['accuracy_without_leaked']:.4f} without", LeakageWarning, stacklevel=2)
    return report


def tta_settings(tta: bool | str, crop: int, training_run_id: str) -> tuple[str, int]:
    """The test-time augmentation mode and ten-crop side for 04_evaluate's `tta` and `tta_crop` parameters.

    `tta` True/False mean flip/none. A `crop` of 0 takes the crop side the training run augmented with
    (its `augment` parameter), else 44 px.
    """
    mode = {True: "flip", False: "none"}.get(tta, tta) if isinstance(tta, bool) else str(tta).lower()
    if mode not in augment.TTA_MODES:
        raise FerLabError(f"tta must be one of {', '.join(augment.TTA_MODES)}, not {tta!r}")
    if mode == "tencrop" and not crop:
        augmented = json.loads(mlflow.get_run(training_run_id).data.params.get("augment") or "{}")
        crop = int(augmented.get("crop") or DEFAULT_TENCROP)
    return mode, int(crop)


def tta_report(plain: pd.DataFrame, averaged_probabilities: np.ndarray,
               labels: Sequence[str]) -> tuple[pd.DataFrame, dict[str, float]]:
    """The predictions from test-time averaged probabilities, and their accuracy gain over `plain`."""
    tta = predictions_frame(plain, np.asarray(averaged_probabilities), labels)
    plain_accuracy = float((plain["label"] == plain["pred"]).mean())
    tta_accuracy = float((tta["label"] == tta["pred"]).mean())
    return tta, {"accuracy_tta": tta_accuracy, "tta_gain": tta_accuracy - plain_accuracy}


def flat_metrics(predictions: pd.DataFrame, labels: Sequence[str], prefix: str = "test_") -> dict[str, float]:
    """Every scalar metric of a predictions frame under MLflow-friendly names.

    Summary metrics become `<prefix><name>`, per-class ones `<prefix><precision|recall|f1>_<class>`
    and `<prefix>ece_<class>`; 05_compare and the recomputation test rely on these names.
    """
    flat = {f"{prefix}{name}": value for name, value in summary_metrics(predictions, labels).items()}
    per_class = per_class_metrics(predictions, labels)
    for label in labels:
        for column in ("precision", "recall", "f1"):
            flat[f"{prefix}{column}_{label}"] = float(per_class.loc[label, column])
    for label, value in classwise_ece(predictions, labels).items():
        flat[f"{prefix}ece_{label}"] = value
    return {name: value for name, value in flat.items() if np.isfinite(value)}


def evaluation_set_fingerprint(predictions: pd.DataFrame) -> str:
    """Hash of the evaluated images and their labels: runs sharing it can be compared image by image."""
    rows = (predictions["path"].astype(str) + "\t" + predictions["label"].astype(str)).sort_values()
    return hashlib.sha1("\n".join(rows).encode()).hexdigest()


def evaluation_set_tag(split: str) -> str:
    """Tag holding `evaluation_set_fingerprint` for `split` on evaluated runs (e.g. `test_set_fingerprint`)."""
    return f"{metric_prefix(split)}set_fingerprint"


def record_on_training_run(run_id: str, metrics: dict[str, float], artifacts: Sequence[str | Path] = (),
                           tags: dict[str, str] | None = None) -> None:
    """Copy evaluation metrics, tags and files onto the evaluated training run (it may already be finished),
    so that 05_compare finds test numbers and predictions next to the parameters that produced them."""
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    stamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), stamp, 0) for key, value in metrics.items() if np.isfinite(value)]
    for start in range(0, len(batch), 500):  # MLflow's per-request metric limit is 1000
        client.log_batch(run_id, metrics=batch[start:start + 500])
    for artifact in artifacts:
        client.log_artifact(run_id, str(artifact))
