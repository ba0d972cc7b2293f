"""Test-set evaluation of a trained model: predictions, metrics, calibration, confusions and leakage.

Everything here works on a *predictions frame*: one row per image with columns `path`, `sha1`,
`label` (true class), `pred` (predicted class) and `prob_<class>` for every class of the model.
That frame is what 04_evaluate logs as `predictions_<split>.csv`, so every number can be recomputed
from the artifact alone (05_compare does, for McNemar's test).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from fer_lab import tracking
from fer_lab.data.labels import probability_column
from fer_lab.errors import ConfigError, DataError, FerLabWarning
from fer_lab.training import augment
from fer_lab.training.predict import predict_probabilities

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_TENCROP = 44  # ten-crop side for a model trained without crops
HEADLINE_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "top2_accuracy", "ece")


class LeakageWarning(FerLabWarning):
    """Test images that are pixel-identical to training images inflate test accuracy."""


class UnknownClassWarning(FerLabWarning):
    """Evaluated images of classes the model was not trained on are left out."""


def metric_prefix(split: str) -> str:
    """Prefix for metrics of `split`: `test_` for the test split, `eval_<split>_` otherwise.

    Other splits get their own prefix so that evaluating on `val` never overwrites the
    per-epoch `val_*` history that training logs on the same run.
    """
    return "test_" if split == "test" else f"eval_{split}_"


def select_split(manifest: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Readable manifest rows of `split`.

    `split` is a manifest split (`train`, `val`, `test`), `all` (every readable image: a dataset from
    elsewhere used as an external test set) or an original usage (`PrivateTest`, `PublicTest`, `Training`). `test` means PrivateTest where the test rows carry that usage, so
    FER2013's usual protocol (PublicTest for selection, PrivateTest for the final number) holds.
    """
    rows = manifest[manifest["readable"].astype(bool)] if "readable" in manifest else manifest
    if split == "all":
        pass  # a dataset used whole as an external test set
    elif split in ("train", "val", "test"):
        rows = rows[rows["split"] == split]
        if split == "test" and "usage" in rows and (rows["usage"] == "PrivateTest").any():
            rows = rows[rows["usage"] == "PrivateTest"]
    elif "usage" in rows and (rows["usage"] == split).any():
        rows = rows[rows["usage"] == split]
    else:
        raise ConfigError(f"split {split!r} has no readable rows in the manifest "
                          "(use train, val, test, all or a usage such as PrivateTest)")
    if rows.empty:
        raise ConfigError(f"split {split!r} has no readable rows in the manifest")
    return rows.reset_index(drop=True)


def predictions_frame(rows: pd.DataFrame, probabilities: np.ndarray,
                      labels: Sequence[str]) -> pd.DataFrame:
    """Per-image predictions: path, sha1, label, pred and one probability column per class."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(rows), len(labels)):
        raise DataError(f"probabilities have shape {probabilities.shape}, expected "
                          f"({len(rows)}, {len(labels)}) for {len(rows)} images and {len(labels)} classes")
    frame = pd.DataFrame({
        "path": rows["path"].to_numpy(),
        "sha1": rows["sha1"].to_numpy() if "sha1" in rows else "",
        "label": rows["label"].to_numpy(),
        "pred": np.asarray(labels, dtype=object)[probabilities.argmax(axis=1)],
    })
    probs = pd.DataFrame(probabilities, columns=[probability_column(label) for label in labels])
    return pd.concat([frame, probs], axis=1)


def probability_matrix(predictions: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    """The (N, classes) probability block of a predictions frame, in `labels` order."""
    missing = [probability_column(label) for label in labels if probability_column(label) not in predictions]
    if missing:
        raise DataError(f"predictions lack probability columns {missing}")
    return predictions[[probability_column(label) for label in labels]].to_numpy(dtype=np.float64)


def _check_labels(predictions: pd.DataFrame, labels: Sequence[str]) -> None:
    unknown = sorted(set(predictions["label"]) - set(labels))
    if unknown:
        raise DataError(f"predictions contain true labels {unknown} that the model does not know "
                          f"(model labels: {list(labels)})")


def with_known_classes(rows: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """`rows` without the images whose class the model does not know (warns when there are any)."""
    unknown = ~rows["label"].isin(list(labels))
    if unknown.any():
        warnings.warn(f"{int(unknown.sum())} images have classes the model does not know and are left out: "
                      f"{sorted(rows.loc[unknown, 'label'].unique())}", UnknownClassWarning, stacklevel=2)
    return rows[~unknown].reset_index(drop=True)


def class_coverage(rows: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Per class: images of it in the evaluated rows, images the model gave it, and whether each side knows it.

    `rows` are the evaluated split before `with_known_classes`; a class the model knows but the dataset
    lacks shows how often the model predicted it anyway, and a class only the dataset has shows how many
    images were left out.
    """
    classes = list(labels) + sorted(set(rows["label"]) - set(labels))
    table = pd.DataFrame({
        "images": rows["label"].value_counts().reindex(classes, fill_value=0),
        "predicted": predictions["pred"].value_counts().reindex(classes, fill_value=0),
        "model_knows": [name in labels for name in classes],
    }, index=pd.Index(classes, name="class"))
    table["in_dataset"] = table["images"] > 0
    table["note"] = np.select(
        [~table["in_dataset"], ~table["model_knows"]],
        ["the dataset has no images of this class", "left out: the model does not know this class"], "")
    return table


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
        # Over the classes the images have: a class the dataset lacks has no F1 to average.
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=[c for c in labels if (y_true == c).any()],
                                       average="macro", zero_division=0)),
        "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred)),
        # With two classes both are in the top 2 (and sklearn refuses two probability columns).
        "top2_accuracy": float(skm.top_k_accuracy_score(true_index, probs, k=2, labels=np.arange(len(labels))))
        if len(labels) > 2 else 1.0,
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


def reliability(predictions: pd.DataFrame, labels: Sequence[str], bins: int = 10) -> tuple[pd.DataFrame, float]:
    """The top-label reliability table of a predictions frame and its expected calibration error."""
    confidence = probability_matrix(predictions, labels).max(axis=1)
    correct = (predictions["label"] == predictions["pred"]).to_numpy()
    return reliability_table(confidence, correct, bins), expected_calibration_error(confidence, correct, bins)


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


def mistake_figures(predictions: pd.DataFrame, labels: Sequence[str], pixels: np.ndarray, *,
                    pairs: int = 3, per_pair: int = 8) -> dict[str, "Figure"]:
    """Galleries of the most confident mistakes of the `pairs` most confused (true, predicted) pairs.

    Args:
        predictions: The predictions frame, in `pixels`' row order.
        labels: The model's classes.
        pixels: The evaluated images.
        pairs: How many of the most confused pairs get a gallery.
        per_pair: Images per gallery.

    Returns:
        Figures by name, `mistakes_<true>_as_<predicted>`, most confused pair first.
    """
    from fer_lab import plots

    figures = {}
    for true, predicted in confused_pairs(predictions, labels)[["true", "predicted"]].head(pairs).itertuples(index=False):
        mistakes = confident_mistakes(predictions, true, predicted, k=per_pair)
        figures[f"mistakes_{true}_as_{predicted}"] = plots.image_grid(
            pixels[mistakes.index], [f"p={c:.2f}" for c in mistakes["confidence"]],
            ncols=per_pair, title=f"true {true}, predicted {predicted}")
    return figures


def confident_mistakes(predictions: pd.DataFrame, true: str, predicted: str, k: int = 8) -> pd.DataFrame:
    """The images of class `true` predicted as `predicted` with the highest confidence.

    Args:
        predictions: The predictions frame.
        true: The true class.
        predicted: The predicted class.
        k: At most this many images.

    Returns:
        Their rows, most confident first, with the confidence in column `confidence`.
    """
    wrong = predictions[(predictions["label"] == true) & (predictions["pred"] == predicted)]
    wrong = wrong.assign(confidence=wrong[probability_column(predicted)])
    return wrong.sort_values("confidence", ascending=False).head(k)


def training_sha1(manifest: pd.DataFrame) -> pd.Series:
    """Pixel hashes of the manifest's readable training images, to look for leaks with `leakage_report`."""
    return manifest.loc[(manifest["split"] == "train") & manifest["readable"].astype(bool), "sha1"]


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
        raise ConfigError(f"tta must be one of {', '.join(augment.TTA_MODES)}, not {tta!r}")
    try:
        if mode == "tencrop" and not crop:
            augmented = json.loads(tracking.run_params(training_run_id).get("augment") or "{}")
            crop = int(augmented.get("crop") or DEFAULT_TENCROP)
        return mode, int(crop)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"no ten-crop side from tta_crop={crop!r} or the training run's augment parameter "
                          f"({error})") from error


@dataclass(frozen=True)
class TtaResult:
    """Test-time augmentation of an evaluation: its mode, the metrics it adds and the tags to set."""

    mode: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    predictions: pd.DataFrame | None = None  # from the averaged probabilities; None for mode none

    def summary(self, accuracy: float) -> str:
        """One line: the accuracy without and with averaging, or that averaging is off."""
        if not self.metrics:
            return "test-time augmentation is off (tta = none)"
        return (f"accuracy {accuracy:.4f} -> {self.metrics['accuracy_tta']:.4f} with {self.mode} averaging "
                f"({self.metrics['tta_gain']:+.4f}; macro-F1 {self.metrics['macro_f1_tta']:.4f})")


def evaluate_tta(model: Any, pixels: np.ndarray, plain: pd.DataFrame, labels: Sequence[str], *,
                 mode: str, crop: int, batch_size: int = 256) -> TtaResult:
    """Predict `pixels` again averaged over the views of `mode` and measure the gain over `plain`.

    Args:
        model: The classifier `plain` came from.
        pixels: The evaluated images, in `plain`'s row order.
        plain: The predictions frame without augmentation.
        labels: The model's classes, in output order.
        mode: none, flip or tencrop (see `tta_settings`).
        crop: The ten-crop side in pixels.
        batch_size: Images per model call.

    Returns:
        The mode, metrics `accuracy_tta`, `macro_f1_tta` and `tta_gain` (none for mode none), tag `tta`
        and the averaged predictions frame.
    """
    if mode == "none":
        return TtaResult(mode)
    averaged = predict_probabilities(model, pixels, batch_size=batch_size, tta=mode, crop=crop)
    predictions, gain = tta_report(plain, averaged, labels)
    return TtaResult(mode, gain, {"tta": mode + (f"@{crop}px" if mode == "tencrop" else "")}, predictions)


def tta_report(plain: pd.DataFrame, averaged_probabilities: np.ndarray,
               labels: Sequence[str]) -> tuple[pd.DataFrame, dict[str, float]]:
    """The predictions from test-time averaged probabilities, their accuracy and macro-F1, and the accuracy
    gain over `plain`."""
    tta = predictions_frame(plain, np.asarray(averaged_probabilities), labels)
    plain_accuracy = float((plain["label"] == plain["pred"]).mean())
    averaged = summary_metrics(tta, labels)
    return tta, {"accuracy_tta": averaged["accuracy"], "macro_f1_tta": averaged["macro_f1"],
                 "tta_gain": averaged["accuracy"] - plain_accuracy}


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


def prefixed(values: Mapping[str, float], prefix: str, skip: Sequence[str] = ()) -> dict[str, float]:
    """`values` with `prefix` before every name, leaving out the names in `skip`."""
    return {prefix + name: value for name, value in values.items() if name not in skip}


def headline_metrics(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """The `HEADLINE_METRICS` of flat metrics named `<prefix><name>`, without the prefix."""
    return {name: metrics[prefix + name] for name in HEADLINE_METRICS}


def headline_table(headline: dict[str, float], leakage: dict[str, float]) -> pd.DataFrame:
    """The report's metric table: the headline numbers, then accuracy without leaked images and their count."""
    names = [*headline, "accuracy_without_leaked", "leaked_images"]
    values = [*headline.values(), leakage["accuracy_without_leaked"], leakage["leaked_images"]]
    return pd.DataFrame({"metric": names, "value": values})


def predictions_artifact(split: str, *, tta: bool = False) -> str:
    """The file 04_evaluate logs its per-image predictions of `split` in; with `tta`, those averaged over
    the test-time views (only when `tta` is not none)."""
    return f"predictions_{split}{'_tta' if tta else ''}.csv"


def evaluation_set_tag(split: str) -> str:
    """Tag holding `evaluation_set_fingerprint` for `split` on evaluated runs (e.g. `test_set_fingerprint`)."""
    return f"{metric_prefix(split)}set_fingerprint"
