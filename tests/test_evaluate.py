"""Metric correctness of fer_lab.evaluate on hand-made predictions with answers worked out by hand."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest

from fer_lab import evaluate, plots
from fer_lab.errors import FerLabError

LABELS = ("a", "b", "c")
# (true label, probabilities of a, b, c); predictions are the argmax.
ROWS = [
    ("a", (0.90, 0.05, 0.05)),  # a, right
    ("a", (0.60, 0.30, 0.10)),  # a, right
    ("a", (0.20, 0.70, 0.10)),  # b, wrong; a is second
    ("a", (0.10, 0.20, 0.70)),  # c, wrong; a is last
    ("b", (0.10, 0.80, 0.10)),  # b, right
    ("b", (0.30, 0.60, 0.10)),  # b, right
    ("b", (0.50, 0.40, 0.10)),  # a, wrong; b is second
    ("c", (0.10, 0.10, 0.80)),  # c, right
    ("c", (0.04, 0.90, 0.06)),  # b, wrong; c is second
    ("c", (0.20, 0.10, 0.70)),  # c, right
]


@pytest.fixture
def predictions() -> pd.DataFrame:
    rows = pd.DataFrame({"path": [f"img{i}.png" for i in range(len(ROWS))],
                         "sha1": [f"sha{i}" for i in range(len(ROWS))],
                         "label": [label for label, _ in ROWS]})
    return evaluate.predictions_frame(rows, np.array([probs for _, probs in ROWS]), LABELS)


def test_predictions_frame_columns_and_argmax(predictions: pd.DataFrame) -> None:
    assert list(predictions.columns) == ["path", "sha1", "label", "pred", "prob_a", "prob_b", "prob_c"]
    assert list(predictions["pred"]) == ["a", "a", "b", "c", "b", "b", "a", "c", "b", "c"]


def test_predictions_frame_rejects_wrong_shape() -> None:
    rows = pd.DataFrame({"path": ["x"], "sha1": ["s"], "label": ["a"]})
    with pytest.raises(FerLabError, match="expected"):
        evaluate.predictions_frame(rows, np.ones((1, 2)), LABELS)


def test_confusion_counts_and_row_normalized(predictions: pd.DataFrame) -> None:
    counts = evaluate.confusion(predictions, LABELS)
    assert counts.to_numpy().tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert list(counts.index) == list(LABELS) and list(counts.columns) == list(LABELS)
    rates = evaluate.confusion(predictions, LABELS, normalize=True)
    np.testing.assert_allclose(rates.to_numpy(), [[0.5, 0.25, 0.25], [1 / 3, 2 / 3, 0], [0, 1 / 3, 2 / 3]])


def test_confusion_row_of_absent_class_is_zero(predictions: pd.DataFrame) -> None:
    without_c = predictions[predictions["label"] != "c"]
    rates = evaluate.confusion(without_c, LABELS, normalize=True)
    assert rates.loc["c"].tolist() == [0.0, 0.0, 0.0]


def test_per_class_metrics(predictions: pd.DataFrame) -> None:
    table = evaluate.per_class_metrics(predictions, LABELS)
    np.testing.assert_allclose(table["precision"], [2 / 3, 2 / 4, 2 / 3])
    np.testing.assert_allclose(table["recall"], [2 / 4, 2 / 3, 2 / 3])
    np.testing.assert_allclose(table["f1"], [4 / 7, 4 / 7, 2 / 3])
    assert table["support"].tolist() == [4, 3, 3]


def test_summary_metrics(predictions: pd.DataFrame) -> None:
    summary = evaluate.summary_metrics(predictions, LABELS)
    assert summary["accuracy"] == pytest.approx(0.6)
    assert summary["macro_f1"] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)
    assert summary["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    assert summary["top2_accuracy"] == pytest.approx(0.9)  # only row 4 has its class outside the top two
    assert summary["n_images"] == 10


def test_unknown_true_label_is_an_error(predictions: pd.DataFrame) -> None:
    predictions.loc[0, "label"] = "contempt"
    with pytest.raises(FerLabError, match="contempt"):
        evaluate.summary_metrics(predictions, LABELS)


def test_confused_pairs_ranked_by_count_then_rate(predictions: pd.DataFrame) -> None:
    pairs = evaluate.confused_pairs(predictions, LABELS)
    assert list(zip(pairs["true"], pairs["predicted"])) == [("b", "a"), ("c", "b"), ("a", "b"), ("a", "c")]
    assert pairs["count"].tolist() == [1, 1, 1, 1]
    assert pairs["rate"].iloc[0] == pytest.approx(1 / 3)


def test_confident_mistakes_sorted_by_confidence(predictions: pd.DataFrame) -> None:
    extra = predictions.iloc[[2]].assign(path="img10.png", prob_b=0.95, prob_a=0.03, prob_c=0.02)
    frame = pd.concat([predictions, extra], ignore_index=True)
    mistakes = evaluate.confident_mistakes(frame, "a", "b", k=5)
    assert mistakes["path"].tolist() == ["img10.png", "img2.png"]
    assert mistakes["confidence"].tolist() == [0.95, 0.70]


def test_expected_calibration_error_by_hand() -> None:
    confidence = np.array([0.95] * 4 + [0.55] * 4)
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    # Two occupied bins, half the images each: |0.75 - 0.95| and |0.25 - 0.55|.
    assert evaluate.expected_calibration_error(confidence, correct) == pytest.approx(0.5 * 0.2 + 0.5 * 0.3)
    table = evaluate.reliability_table(confidence, correct)
    assert table["count"].tolist() == [0, 0, 0, 0, 0, 4, 0, 0, 0, 4]
    assert table.loc[9, "accuracy"] == pytest.approx(0.75)
    assert np.isnan(table.loc[0, "accuracy"])


def test_confidence_one_and_zero_fall_in_end_bins() -> None:
    table = evaluate.reliability_table(np.array([0.0, 1.0]), np.array([0, 1]))
    assert table.loc[0, "count"] == 1 and table.loc[9, "count"] == 1


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    confidence = np.array([0.75] * 4 + [0.25] * 4)
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    assert evaluate.expected_calibration_error(confidence, correct) == pytest.approx(0.0)


def test_classwise_ece_is_one_vs_rest(predictions: pd.DataFrame) -> None:
    eces = evaluate.classwise_ece(predictions, LABELS)
    truth_c = (predictions["label"] == "c").to_numpy()
    expected_c = evaluate.expected_calibration_error(predictions["prob_c"].to_numpy(), truth_c)
    assert list(eces.index) == list(LABELS)
    assert eces["c"] == pytest.approx(expected_c)
    assert ((eces >= 0) & (eces <= 1)).all()


def test_leakage_warns_and_reports_accuracy_without_leaked(predictions: pd.DataFrame) -> None:
    # img0 (right) and img3 (wrong) duplicate training images.
    with pytest.warns(evaluate.LeakageWarning, match="2 of 10"):
        report = evaluate.leakage_report(predictions, ["sha0", "sha3", "unrelated"])
    assert report["leaked_images"] == 2
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["accuracy_without_leaked"] == pytest.approx(5 / 8)
    assert report["accuracy_on_leaked"] == pytest.approx(0.5)


def test_no_leakage_no_warning(predictions: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = evaluate.leakage_report(predictions, ["other", ""])
    assert report["leaked_images"] == 0
    assert report["accuracy_without_leaked"] == report["accuracy"]


class LeftBrightnessModel:
    """Two classes: P(left) is the mean brightness of the image's left half."""

    def predict(self, batch: np.ndarray, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[-1] == 1
        left = batch[:, :, : batch.shape[2] // 2, 0].mean(axis=(1, 2)) / 255.0
        return np.stack([left, 1.0 - left], axis=1)


def test_predict_probabilities_flip_mirrors_left_right() -> None:
    image = np.zeros((1, 4, 4), dtype=np.uint8)
    image[:, :, :2] = 255
    model = LeftBrightnessModel()
    np.testing.assert_allclose(evaluate.predict_probabilities(model, image), [[1.0, 0.0]])
    np.testing.assert_allclose(evaluate.predict_probabilities(model, image, flip=True), [[0.0, 1.0]])


def test_tta_averages_plain_and_flipped(predictions: pd.DataFrame) -> None:
    flipped = evaluate.probability_matrix(predictions, LABELS).copy()
    flipped[3] = [0.9, 0.05, 0.05]  # the mirrored view of img3 is confidently 'a': averaged it becomes right
    tta, gain = evaluate.tta_report(predictions, flipped, LABELS)
    assert tta.loc[3, "pred"] == "a"
    assert tta.loc[3, "prob_a"] == pytest.approx(0.5)
    assert gain["accuracy_tta"] == pytest.approx(0.7)
    assert gain["tta_gain"] == pytest.approx(0.1)


def test_flat_metrics_names_match_parts(predictions: pd.DataFrame) -> None:
    flat = evaluate.flat_metrics(predictions, LABELS, prefix="test_")
    assert flat["test_accuracy"] == pytest.approx(0.6)
    assert flat["test_recall_a"] == pytest.approx(0.5)
    assert flat["test_precision_b"] == pytest.approx(0.5)
    assert flat["test_f1_c"] == pytest.approx(2 / 3)
    assert {f"test_ece_{label}" for label in LABELS} <= set(flat)
    assert evaluate.metric_prefix("val") == "eval_val_"


def _manifest() -> pd.DataFrame:
    return pd.DataFrame({
        "path": ["t0", "t1", "v0", "p0", "q0", "q1", "bad"],
        "label": ["a", "b", "a", "a", "b", "c", "a"],
        "split": ["train", "train", "val", "test", "test", "test", "test"],
        "usage": ["Training", "Training", "Training", "PublicTest", "PrivateTest", "PrivateTest", "PrivateTest"],
        "sha1": list("ABCDEFG"),
        "readable": [True, True, True, True, True, True, False],
    })


def test_select_split_prefers_private_test() -> None:
    manifest = _manifest()
    assert evaluate.select_split(manifest, "test")["path"].tolist() == ["q0", "q1"]
    assert evaluate.select_split(manifest, "PublicTest")["path"].tolist() == ["p0"]
    assert evaluate.select_split(manifest, "val")["path"].tolist() == ["v0"]
    with pytest.raises(FerLabError, match="holdout"):
        evaluate.select_split(manifest, "holdout")


def test_select_split_without_usage_column() -> None:
    manifest = _manifest().drop(columns="usage")
    assert evaluate.select_split(manifest, "test")["path"].tolist() == ["p0", "q0", "q1"]


def test_plots_render(predictions: pd.DataFrame) -> None:
    figures = [
        plots.confusion_heatmap(evaluate.confusion(predictions, LABELS)),
        plots.confusion_heatmap(evaluate.confusion(predictions, LABELS, normalize=True)),
        plots.reliability_diagram(evaluate.reliability_table(predictions[["prob_a", "prob_b", "prob_c"]]
                                                             .max(axis=1), predictions["label"] == predictions["pred"])),
        plots.classwise_reliability(evaluate.classwise_reliability(predictions, LABELS),
                                    evaluate.classwise_ece(predictions, LABELS)),
        plots.image_grid([np.zeros((48, 48), np.uint8)] * 3, ["x", "y", "z"], ncols=2,
                         boxes=[[(4, 4, 10, 10)], [], []], caption_colors=["red", "black", "black"], title="t"),
        plots.image_grid([], title="empty"),
        plots.curves(pd.DataFrame({"run": ["r1", "r1", "r2"], "step": [0, 1, 0], "value": [0.1, 0.2, 0.3]})),
        plots.class_bars(pd.DataFrame({"r1": [0.1, -0.2]}, index=["a", "b"]), center=True),
    ]
    for figure in figures:
        figure.savefig(io.BytesIO(), format="png")
        assert figure.get_axes() or figure.texts
    assert figures[0].get_axes()[0].get_xlabel() == "predicted"
    assert [tick.get_text() for tick in figures[0].get_axes()[0].get_xticklabels()] == list(LABELS)
