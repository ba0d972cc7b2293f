"""Metric correctness of fer_lab.analysis.evaluate on hand-made predictions with answers worked out by hand."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest

from fer_lab import plots
from fer_lab.analysis import evaluate
from fer_lab.errors import FerLabError
from fer_lab.training import augment

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


def test_a_two_class_model_is_summarised_too() -> None:
    rows = pd.DataFrame({"path": ["x.png", "y.png", "z.png"], "label": ["yes", "no", "no"]})
    two = evaluate.predictions_frame(rows, np.array([[0.2, 0.8], [0.7, 0.3], [0.1, 0.9]]), ["no", "yes"])
    summary = evaluate.summary_metrics(two, ["no", "yes"])
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["top2_accuracy"] == 1.0


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


def test_flip_averages_the_image_and_its_mirror() -> None:
    image = np.zeros((1, 4, 4), dtype=np.uint8)
    image[:, :, :2] = 255
    model = LeftBrightnessModel()
    np.testing.assert_allclose(evaluate.predict_probabilities(model, image), [[1.0, 0.0]])
    np.testing.assert_allclose(evaluate.predict_probabilities(model, image, tta="flip"), [[0.5, 0.5]])


def test_tencrop_averages_corner_and_centre_crops_and_their_mirrors() -> None:
    image = np.zeros((1, 48, 48), dtype=np.uint8)
    image[:, :, :12] = 255  # a bright band that only the left-hand crops keep at full width
    views = augment.test_time_views(image, "tencrop", crop=40)
    assert len(views) == 10 and all(view.shape == (1, 48, 48) for view in views)
    np.testing.assert_array_equal(views[5], views[0][:, :, ::-1])  # the mirrors follow the five crops
    assert views[0].mean() > views[1].mean()  # top-left keeps more of the band than top-right
    expected = np.mean([LeftBrightnessModel().predict(view.astype(np.float32)[..., None]) for view in views], axis=0)
    np.testing.assert_allclose(evaluate.predict_probabilities(LeftBrightnessModel(), image, tta="tencrop", crop=40),
                               expected, rtol=1e-6)
    with pytest.raises(FerLabError, match="crop side"):
        augment.test_time_views(image, "tencrop", crop=48)


def test_tta_averages_plain_and_flipped(predictions: pd.DataFrame) -> None:
    plain = evaluate.probability_matrix(predictions, LABELS)
    flipped = plain.copy()
    flipped[3] = [0.9, 0.05, 0.05]  # the mirrored view of img3 is confidently 'a': averaged it becomes right
    tta, gain = evaluate.tta_report(predictions, (plain + flipped) / 2, LABELS)
    assert tta.loc[3, "pred"] == "a"
    assert tta.loc[3, "prob_a"] == pytest.approx(0.5)
    assert gain["accuracy_tta"] == pytest.approx(0.7)
    assert gain["macro_f1_tta"] == pytest.approx(evaluate.summary_metrics(tta, LABELS)["macro_f1"])
    assert gain["macro_f1_tta"] != pytest.approx(evaluate.summary_metrics(predictions, LABELS)["macro_f1"])
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


@pytest.fixture(scope="module")
def evaluated_pipeline(sample_dir, tmp_path_factory):
    """A small CNN trained briefly on the sample and logged as a 03_train run, then 04 and 05 via papermill."""
    import keras
    import mlflow

    from fer_lab import data, tracking
    from fer_lab.pipeline import runner
    from fer_lab.training import models

    tmp = tmp_path_factory.mktemp("evaluate")
    uri = tracking.configure(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = "evaluate-test"
    mlflow.set_experiment(experiment_id=tracking.experiment_id(experiment, uri))
    manifest = data.build_manifest(sample_dir)
    rows = manifest[manifest["readable"] & (manifest["split"] == "train")].reset_index(drop=True)
    pixels = data.load_pixels(sample_dir, rows)
    labels = list(data.CLASSES)
    config = models.model_config_from_params("cnn", 48, "none", cnn={"widths": [8, 16], "convs_per_block": 1})
    model = models.build_model(config, len(labels))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    targets = np.array([labels.index(label) for label in rows["label"]])
    model.fit(pixels[..., None].astype("float32"), targets, epochs=4, batch_size=32, verbose=0)
    with mlflow.start_run(run_name="tiny-cnn") as training:
        mlflow.set_tag("notebook", "03_train")
        for step, value in enumerate((0.2, 0.3)):
            mlflow.log_metric("val_accuracy", value, step=step)
        tracking.log_model(model, labels)
    result = runner.run_pipeline(
        data_dir=sample_dir, only=["04_evaluate", "05_compare"], out_dir=tmp / "report", log=lambda *_: None,
        overrides={"tracking_uri": uri, "work_dir": str(tmp / "work"), "experiment": experiment,
                   "04_evaluate.batch_size": 64},
    )
    mlflow.set_tracking_uri(uri)
    return result, training.info.run_id, manifest, tmp / "work"


def _run_of(result, name: str) -> str:
    return next(nb.run_id for nb in result.notebooks if nb.name == name)


@pytest.mark.slow
def test_notebooks_run_and_mlflow_numbers_match_sklearn_on_logged_predictions(evaluated_pipeline, sample_dir) -> None:
    import mlflow
    from sklearn import metrics as skm

    from fer_lab import data, tracking
    from fer_lab.analysis import compare

    result, training_run, manifest, _ = evaluated_pipeline
    assert result.ok, [nb.error for nb in result.notebooks if not nb.ok]
    predictions = compare.load_predictions(training_run, "test")
    test_rows = manifest[manifest["readable"] & (manifest["usage"] == "PrivateTest")]
    assert sorted(predictions["path"]) == sorted(test_rows["path"])
    labels = list(data.CLASSES)
    probs = predictions[[f"prob_{label}" for label in labels]].to_numpy()
    assert (predictions["pred"] == np.array(labels)[probs.argmax(axis=1)]).all()

    model, model_labels = tracking.load_run_model(training_run)
    assert model_labels == labels
    rows = test_rows.set_index("path").loc[predictions["path"]].reset_index()
    direct = model.predict(data.load_pixels(sample_dir, rows)[..., None].astype("float32"), verbose=0)
    np.testing.assert_allclose(probs, direct, atol=1e-5)

    y_true, y_pred = predictions["label"], predictions["pred"]
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    expected = {
        "test_accuracy": skm.accuracy_score(y_true, y_pred),
        "test_macro_f1": skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        "test_balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        "test_top2_accuracy": skm.top_k_accuracy_score([labels.index(v) for v in y_true], probs, k=2,
                                                       labels=range(len(labels))),
        **{f"test_recall_{label}": value for label, value in zip(labels, recall)},
        **{f"test_precision_{label}": value for label, value in zip(labels, precision)},
        **{f"test_f1_{label}": value for label, value in zip(labels, f1)},
    }
    client = mlflow.MlflowClient()
    for run_id in (training_run, _run_of(result, "04_evaluate")):
        logged = client.get_run(run_id).data.metrics
        for name, value in expected.items():
            assert logged[name] == pytest.approx(value, abs=1e-9), (run_id, name)


@pytest.mark.slow
def test_evaluate_notebook_reports_leakage_figures_and_summary(evaluated_pipeline) -> None:
    import mlflow

    result, training_run, manifest, work = evaluated_pipeline
    client = mlflow.MlflowClient()
    logged = client.get_run(training_run).data
    train_sha1 = set(manifest.loc[manifest["split"] == "train", "sha1"])
    test_rows = manifest[manifest["readable"] & (manifest["usage"] == "PrivateTest")]
    leaked = int(test_rows["sha1"].isin(train_sha1).sum())
    assert leaked > 0  # the sample injects cross-split duplicates
    assert logged.metrics["test_leaked_images"] == leaked
    assert "test_accuracy_without_leaked" in logged.metrics and "test_tta_gain" in logged.metrics
    assert logged.tags["test_set_fingerprint"]
    executed = next(nb for nb in result.notebooks if nb.name == "04_evaluate").notebook.read_text()
    assert "LeakageWarning" in executed and f"{leaked} of {len(test_rows)} evaluated images" in executed
    evaluate_run = _run_of(result, "04_evaluate")
    figures = {item.path for item in client.list_artifacts(evaluate_run, "figures")}
    assert {"figures/confusion_counts_test.png", "figures/confusion_normalized_test.png",
            "figures/reliability_test.png", "figures/reliability_per_class_test.png"} <= figures
    from fer_lab.pipeline import report

    summary = report.summary_dir(work, result.parent_run_id)  # each pipeline run has its own summaries
    assert {"04_1_metrics.html", "04_2_per_class.html", "04_2_per_class.csv",
            "04_3_confusion_normalized.png"} <= {path.name for path in summary.iterdir()}
    per_class = pd.read_csv(summary / "04_2_per_class.csv", index_col=0)
    assert per_class.loc["happy", "recall"] == pytest.approx(logged.metrics["test_recall_happy"])
    index = result.index.read_text()
    assert "Per-class metrics on test" in index and "04_3_confusion_normalized.png" in index
    compare_output = next(nb for nb in result.notebooks if nb.name == "05_compare").notebook.read_text()
    assert "1 run to compare; baseline tiny-cnn" in compare_output


@pytest.mark.slow
def test_split_all_scores_a_class_per_folder_dataset_without_a_test_split(evaluated_pipeline, sample_dir,
                                                                           tmp_path) -> None:
    """04 with `split: all` on another lab's folders: every readable image of a class the model knows is scored;
    a class only the dataset has is left out with its count, and a class only the model has shows how often
    the model predicted it."""
    import shutil

    import mlflow
    from sklearn import metrics as skm

    from fer_lab import data, tracking
    from fer_lab.analysis import compare
    from fer_lab.pipeline import runner

    _, training_run, _, _ = evaluated_pipeline
    external = tmp_path / "other-lab"
    for folder, source in [("happiness", "happy"), ("sad", "sad"), ("angry", "angry"), ("contempt", "neutral")]:
        (external / folder).mkdir(parents=True)
        for image in sorted((sample_dir / "test" / source).glob("*.png"))[:4 if folder != "contempt" else 2]:
            shutil.copy(image, external / folder / image.name)
    (external / "sad" / "truncated.png").write_bytes(b"\x89PNG\r\n")
    uri = mlflow.get_tracking_uri()
    result = runner.run_pipeline(
        data_dir=external, only=["04_evaluate"], out_dir=tmp_path / "report", log=lambda *_: None,
        overrides={"tracking_uri": uri, "work_dir": str(tmp_path / "work"), "experiment": "evaluate-test",
                   "04_evaluate.model_run_id": training_run, "04_evaluate.split": "all"},
    )
    assert result.ok, [nb.error for nb in result.notebooks if not nb.ok]

    evaluation_run = _run_of(result, "04_evaluate")
    predictions = compare.load_predictions(evaluation_run, "all")
    readable = [path for folder in ("happiness", "sad", "angry") for path in (external / folder).glob("*.png")
                if path.name != "truncated.png"]
    assert sorted(predictions["path"]) == sorted(str(path.relative_to(external)) for path in readable)
    assert set(predictions["label"]) == {"happy", "sad", "angry"}
    labels = list(data.CLASSES)
    logged = mlflow.MlflowClient().get_run(evaluation_run).data.metrics
    assert logged["eval_all_accuracy"] == pytest.approx(skm.accuracy_score(predictions["label"], predictions["pred"]))
    recall = skm.recall_score(predictions["label"], predictions["pred"], labels=labels, average=None, zero_division=0)
    assert logged["eval_all_recall_happy"] == pytest.approx(recall[labels.index("happy")])
    assert "eval_all_macro_f1" in logged

    coverage = tracking.load_csv_artifact(evaluation_run, "tables/class_coverage_all.csv").set_index("class")
    assert coverage.loc["contempt", ["images", "model_knows"]].tolist() == [2, False]
    assert coverage.loc["contempt", "note"] == "left out: the model does not know this class"
    assert coverage.loc["disgust", ["images", "in_dataset"]].tolist() == [0, False]
    assert coverage.loc["disgust", "predicted"] == (predictions["pred"] == "disgust").sum()
    assert coverage.loc["happy", "images"] == 4
    executed = result.notebooks[0].notebook.read_text()
    assert "2 images have classes the model does not know and are left out: ['contempt']" in executed
