"""Training: inputs and targets, resume after SIGKILL in the same MLflow run, and the MLflow model round trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from fer_lab import plots, project, tracking
from fer_lab.errors import ConfigError, FerLabError
from fer_lab.training import augment, datasets, precision, splits, train

LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def toy_rows(n_train: int, n_val: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Random images with a learnable cue: the class sets the brightness of the top half."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, 3, n_train + n_val)
    pixels = rng.integers(0, 120, (n_train + n_val, 48, 48), dtype=np.uint8)
    pixels[:, :24] += (index * 60).astype(np.uint8)[:, None, None]
    rows = pd.DataFrame({"path": [f"img{i}.png" for i in range(len(index))],
                         "label": [LABELS[i] for i in index],
                         "split": ["train"] * n_train + ["val"] * n_val})
    return rows, pixels


def tiny_config(**overrides) -> train.TrainConfig:
    """Head-then-all phases from scratch: the mechanics of phases, not a recipe (hence the override)."""
    params = dict(backbone="cnn", image_size=48, weights="none", cnn={"widths": [8, 16]},
                  head={"dropout": 0.0}, batch_size=32, allow_untrained_head=True,
                  phases=[{"name": "head", "epochs": 1, "trainable": "head", "lr": 0.01},
                          {"name": "all", "epochs": 1, "trainable": "all", "lr": 0.01}])
    params.update(overrides)
    return train.TrainConfig.from_params(**params)


# --- inputs ----------------------------------------------------------------------------------


def test_vote_targets_blend_one_hot_labels_with_fer_plus_votes():
    rows = pd.DataFrame({"label": ["happy", "sad", "fear"],
                         "vote_happiness": [8, 0, np.nan], "vote_sadness": [0, 6, np.nan], "vote_neutral": [2, 4, np.nan],
                         "vote_anger": 0, "vote_disgust": 0, "vote_fear": 0, "vote_surprise": 0})
    targets = datasets.vote_targets(rows, LABELS, mix=0.5)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0)
    assert targets[0, LABELS.index("happy")] == pytest.approx(0.5 + 0.5 * 0.8)
    assert targets[1, LABELS.index("neutral")] == pytest.approx(0.5 * 0.4)
    np.testing.assert_array_equal(targets[2], np.eye(7)[LABELS.index("fear")])  # no votes: one-hot
    np.testing.assert_array_equal(datasets.vote_targets(rows, LABELS, mix=0), datasets.one_hot(rows["label"], LABELS))
    with pytest.raises(FerLabError, match="vote_"):
        datasets.vote_targets(rows[["label"]], LABELS, mix=0.3)


def test_class_weights_favour_rare_classes_and_average_one():
    index = np.array([0] * 90 + [1] * 10)
    balanced = datasets.class_weights(index, 3, "balanced")
    assert balanced[1] > balanced[0] and balanced[2] == 0
    assert balanced[index].mean() == pytest.approx(1.0)
    sqrt = datasets.class_weights(index, 3, "sqrt")
    assert 1 < sqrt[1] / sqrt[0] < balanced[1] / balanced[0]
    np.testing.assert_array_equal(datasets.class_weights(index, 3, "none"), np.ones(3))
    with pytest.raises(FerLabError):
        datasets.class_weights(index, 3, "inverse")


def test_training_batches_are_augmented_shuffled_and_reproducible():
    rows, pixels = toy_rows(100, 20)
    split = datasets.make_split(rows.iloc[:100], pixels[:100], LABELS, weights=np.ones(7, dtype=np.float32))
    config = augment.AugmentConfig(dropout=0.5)

    def epoch(seed, number):
        return [tuple(t.numpy() for t in batch)
                for batch in datasets.training_dataset(split, batch_size=32, augmentation=config, seed=seed, epoch=number)]

    first = epoch(0, 1)
    assert len(first) == 3 and first[0][0].shape == (32, 48, 48, 1) and first[0][0].dtype == np.float32
    assert first[0][1].shape == (32, 7) and first[0][2].shape == (32,)
    assert all(np.array_equal(a, b) for x, y in zip(first, epoch(0, 1)) for a, b in zip(x, y))
    assert not np.array_equal(first[0][0], epoch(0, 2)[0][0])
    augmented = first[0][0][..., 0].astype(np.uint8)
    assert not any(np.array_equal(augmented[0], image) for image in pixels[:100])  # altered, not copied


def test_tf_data_pipelines_run_without_autotuning():
    """Autotuning's optimisation thread held up the end of each epoch until its next wake-up (up to 60 s)."""
    rows, pixels = toy_rows(40, 8)
    split = datasets.make_split(rows.iloc[:40], pixels[:40], LABELS)
    evaluated = datasets.eval_dataset(split)
    trained = datasets.training_dataset(split, batch_size=16, augmentation=augment.AugmentConfig(), seed=0, epoch=1)
    for dataset, images in ((evaluated, 40), (trained, 32)):  # training batches are whole: the last 8 wait
        assert dataset.options().autotune.enabled is False
        assert sum(len(batch[0]) for batch in dataset) == images


def test_the_thread_loader_gives_the_batches_tf_data_gives():
    """Backends other than TensorFlow (JAX on a GPU machine) read batches from threads: the same batches."""
    import keras

    rows, pixels = toy_rows(100, 20)
    split = datasets.make_split(rows.iloc[:100], pixels[:100], LABELS, weights=np.ones(7, dtype=np.float32))
    config = augment.AugmentConfig(dropout=0.5)

    def batches(dataset):
        items = dataset if hasattr(dataset, "as_numpy_iterator") else (dataset[i] for i in range(len(dataset)))
        return [tuple(np.asarray(t) for t in batch) for batch in items]

    def training(loader):
        return batches(datasets.training_dataset(split, batch_size=32, augmentation=config, seed=0, epoch=1,
                                                 mixup=0.2, loader=loader))

    tf_data = training("tf.data")
    assert len(tf_data) == 3
    for loader in ("threads", "processes"):
        assert all(np.array_equal(a, b) for x, y in zip(training(loader), tf_data) for a, b in zip(x, y)), loader
    val = datasets.make_split(rows.iloc[100:], pixels[100:], LABELS)
    evaluated = [batches(datasets.eval_dataset(val, batch_size=8, loader=loader)) for loader in ("threads", "tf.data")]
    assert [len(batch[0]) for batch in evaluated[0]] == [8, 8, 4]
    assert all(np.array_equal(a, b) for x, y in zip(*evaluated) for a, b in zip(x, y))

    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7, "softmax")])
    model.compile("adam", "categorical_crossentropy")
    for loader in ("threads", "processes"):  # Keras' worker pool prepares them
        fitted = model.fit(datasets.training_dataset(split, batch_size=32, augmentation=config, seed=0, epoch=1,
                                                     loader=loader), verbose=0)
        assert np.isfinite(fitted.history["loss"][0]), loader
    with pytest.raises(FerLabError, match="loader must be one of"):
        datasets.eval_dataset(val, loader="torch")


def test_make_splits_needs_train_and_val_rows():
    rows, pixels = toy_rows(20, 0)
    with pytest.raises(FerLabError, match="train and val"):
        splits.make_splits(rows, pixels, LABELS, tiny_config())


# --- training and tracking -------------------------------------------------------------------


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()


def test_trained_model_round_trips_through_mlflow(tmp_path, tracking_uri):
    rows, pixels = toy_rows(96, 32)
    config = tiny_config(class_weights="balanced")
    train_split, val_split, _ = splits.make_splits(rows, pixels, LABELS, config)
    run = tracking.start_notebook_run("03_train", {"schedule": config.schedule.describe()},
                                      tracking_uri=tracking_uri, experiment="train-tests")
    result = train.train(config, train_split, val_split, LABELS, tmp_path / "ckpt", log=lambda line: None)
    assert result.compiles == 2 and list(result.history["phase_tag"]) == ["head#1", "all#1"]
    assert result.best_epoch in (1, 2)
    figure = plots.training_curves(result.history, config.schedule.plan())
    assert len(figure.axes) == 3
    uri = tracking.log_model(result.model, LABELS)
    run_id = run.info.run_id
    mlflow.end_run()

    data = MlflowClient().get_run(run_id).data
    assert data.tags["schedule"] == "[head(head) 1ep, all(all) 1ep]" and data.tags["phase"] == "all#1"
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "val_accuracy")] == [1, 2]
    assert [m.value for m in MlflowClient().get_metric_history(run_id, "phase")] == [0, 1]
    assert {"lr", "epoch_time_s", "images_per_s", "train_loss"} <= set(data.metrics)

    batch = pixels[-5:, :, :, None].astype(np.float32)
    expected = result.model.predict(batch, verbose=0)
    pyfunc_model = mlflow.pyfunc.load_model(uri)
    np.testing.assert_allclose(pyfunc_model.predict(batch), expected, rtol=1e-5, atol=1e-6)
    assert pyfunc_model.metadata.metadata == {"labels": LABELS, "input_size": 48}
    model, labels = tracking.load_run_model(run_id)
    assert labels == LABELS
    np.testing.assert_allclose(model.predict(batch, verbose=0), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(FerLabError, match="no loadable model"):
        tracking.load_run_model("0" * 32)


def test_a_checkpoint_made_with_other_settings_is_not_resumed(tmp_path):
    rows, pixels = toy_rows(64, 16)
    config = tiny_config(phases=[{"name": "all", "epochs": 1}])
    train_split, val_split, _ = splits.make_splits(rows, pixels, LABELS, config)
    train.train(config, train_split, val_split, LABELS, tmp_path, run_id="a", log=lambda line: None)
    again = train.train(config, train_split, val_split, LABELS, tmp_path, run_id="a", log=lambda line: None)
    assert again.resumed_after == 1 and again.compiles == 0  # finished: nothing is trained again
    with pytest.raises(FerLabError, match="different settings"):
        train.train(tiny_config(phases=[{"name": "all", "epochs": 2}]), train_split, val_split, LABELS, tmp_path,
                    run_id="a", log=lambda line: None)
    fresh = train.train(config, train_split, val_split, LABELS, tmp_path, run_id="b", log=lambda line: None)
    assert fresh.resumed_after == 0 and fresh.compiles == 1  # another run's checkpoint is replaced


def test_a_finished_checkpoint_needs_only_its_best_model(tmp_path):
    """What `fer-lab train` brings back from a GPU machine: best.keras and state.json, made without a run."""
    rows, pixels = toy_rows(64, 16)
    config = tiny_config(phases=[{"name": "all", "epochs": 2}], ema=0.9)
    train_split, val_split, _ = splits.make_splits(rows, pixels, LABELS, config)
    first = train.train(config, train_split, val_split, LABELS, tmp_path, log=lambda line: None)
    for name in (train.LAST_MODEL, train.EMA_FILE):
        (tmp_path / name).unlink()
    lines: list[str] = []
    again = train.train(config, train_split, val_split, LABELS, tmp_path, run_id="a", log=lines.append)
    assert again.compiles == 0 and again.resumed_after == 2 and lines == [f"all 2 epochs finished in {tmp_path}"]
    batch = pixels[-4:, :, :, None].astype(np.float32)
    np.testing.assert_allclose(again.model.predict(batch, verbose=0), first.model.predict(batch, verbose=0))
    state = json.loads((tmp_path / train.STATE_FILE).read_text())
    assert state["run_id"] == "a"  # adopted by the run that picked it up
    assert [row["device"] for row in state["history"]] == ["tensorflow cpu"] * 2

    (tmp_path / train.STATE_FILE).write_text(json.dumps({**state, "completed_epochs": 1}))
    with pytest.raises(FerLabError, match="state says 1 epochs but last.keras is missing"):
        train.train(config, train_split, val_split, LABELS, tmp_path, run_id="a", log=lambda line: None)
    (tmp_path / train.STATE_FILE).write_text(json.dumps(state))
    (tmp_path / train.BEST_MODEL).unlink()
    with pytest.raises(FerLabError, match="best.keras is missing"):
        train.train(config, train_split, val_split, LABELS, tmp_path, run_id="a", log=lambda line: None)


RESUMABLE_SCRIPT = textwrap.dedent("""
    import sys
    import mlflow
    from fer_lab import tracking
    from fer_lab.training import splits, train
    from tests.training.test_train import LABELS, tiny_config, toy_rows

    tracking_uri, checkpoint_dir = sys.argv[1], sys.argv[2]
    rows, pixels = toy_rows(640, 64)
    config = tiny_config(cnn={"widths": [16, 32]}, phases=[
        {"name": "head", "epochs": 2, "trainable": "head", "lr": 0.01},
        {"name": "all", "epochs": 4, "trainable": "all", "lr": 0.01, "lr_schedule": "onecycle"}])
    train_split, val_split, _ = splits.make_splits(rows, pixels, LABELS, config)
    run = tracking.start_notebook_run("03_train", {"schedule": config.schedule.describe()}, tracking_uri=tracking_uri,
                                      experiment="resume-test", run_name="resumable")
    print("RUN", run.info.run_id, flush=True)
    result = train.train(config, train_split, val_split, LABELS, checkpoint_dir, log=lambda line: print(line, flush=True))
    print("BEST", result.best_epoch, flush=True)
    mlflow.end_run()
""")


def _completed_epochs(checkpoint_dir: Path) -> int:
    try:
        return json.loads((checkpoint_dir / train.STATE_FILE).read_text())["completed_epochs"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_bfloat16_training_gives_a_float32_model_and_leaves_the_policy_as_it_was(tmp_path, monkeypatch):
    import keras

    from fer_lab import _native

    # Every CPU computes mixed bfloat16 in Keras, natively or not; pretend this one does natively.
    monkeypatch.setattr(_native, "cpu_computes_bfloat16", lambda: True)
    assert precision.precision_policy("bfloat16") == "mixed_bfloat16"
    rows, pixels = toy_rows(64, 16)
    config = tiny_config(phases=[{"name": "all", "epochs": 1}], mixed_precision="bfloat16", ema=0.9)
    train_split, val_split, _ = splits.make_splits(rows, pixels, LABELS, config)
    result = train.train(config, train_split, val_split, LABELS, tmp_path, run_id="a", log=lambda line: None)
    assert keras.mixed_precision.global_policy().name == "float32"
    trained = keras.models.load_model(tmp_path / train.LAST_MODEL)
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in trained.layers}
    saved = keras.models.load_model(tmp_path / train.BEST_MODEL)
    for model in (result.model, saved):
        assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    batch = pixels[-4:, :, :, None].astype(np.float32)
    np.testing.assert_allclose(saved.predict(batch, verbose=0), result.model.predict(batch, verbose=0), atol=1e-6)
    with pytest.raises(ConfigError, match="mixed_precision must be one of auto, true, false, bfloat16, not 'half'"):
        tiny_config(mixed_precision="half")


def test_sigkilled_training_resumes_in_the_same_run_without_redoing_epochs(tmp_path):
    script = tmp_path / "resumable.py"
    script.write_text(RESUMABLE_SCRIPT)
    uri, checkpoint_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ckpt"
    command = [sys.executable, str(script), uri, str(checkpoint_dir)]
    env = {**os.environ, "PYTHONPATH": str(project.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}

    with open(tmp_path / "first.log", "w") as first_log:
        first = subprocess.Popen(command, stdout=first_log, stderr=subprocess.STDOUT, env=env, cwd=project.ROOT)
        deadline = time.monotonic() + 240
        while _completed_epochs(checkpoint_dir) < 3 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_after = _completed_epochs(checkpoint_dir)
    first_output = (tmp_path / "first.log").read_text()
    assert first.returncode == -signal.SIGKILL, first_output[-3000:]
    assert 3 <= killed_after < 6, first_output[-3000:]

    second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=project.ROOT, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    run_ids = {line.split()[1] for line in (first_output + second.stdout).splitlines() if line.startswith("RUN ")}
    assert len(run_ids) == 1, "the second process did not continue the same MLflow run"
    assert f"resuming after epoch {killed_after}/6" in second.stdout
    trained_again = [int(line.split()[1].split("/")[0]) for line in second.stdout.splitlines() if line.startswith("epoch ")]
    assert trained_again == list(range(killed_after + 1, 7))

    tracking.configure(uri)
    run_id = run_ids.pop()
    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # every epoch logged exactly once
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    state = json.loads((checkpoint_dir / train.STATE_FILE).read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3, 4, 5, 6]
    assert [row["phase_tag"] for row in state["history"]] == ["head#1"] * 2 + ["all#1"] * 4


def test_filtered_manifest_drops_rejected_training_images_only(sample_dir, tmp_path):
    from fer_lab import data

    full, name = splits.training_manifest(sample_dir, tmp_path, use_filtered=True)
    assert name == "manifest.csv"
    filtered = full.copy()
    rejected = filtered.index[filtered["split"].isin(["train", "val"])][:: 7]
    filtered["keep"] = True
    filtered.loc[rejected, "keep"] = False
    data.write_manifest(filtered, tmp_path / splits.FILTERED_MANIFEST)

    used, name = splits.training_manifest(sample_dir, tmp_path, use_filtered=True)
    rejected_train = filtered.loc[rejected, "split"].eq("train").sum()
    assert name == splits.FILTERED_MANIFEST and len(used) == len(full) - rejected_train
    assert (used["split"] == "val").sum() == (full["split"] == "val").sum()
    assert len(splits.training_manifest(sample_dir, tmp_path, use_filtered=False)[0]) == len(full)

    filtered.loc[0, "path"] = "elsewhere/img.png"
    data.write_manifest(filtered, tmp_path / splits.FILTERED_MANIFEST)
    with pytest.raises(FerLabError, match="02_filter_faces"):
        splits.training_manifest(sample_dir, tmp_path, use_filtered=True)


def test_unreadable_images_listed_by_the_filter_do_not_block_training(sample_dir, tmp_path):
    """02 keeps unreadable files as rows marked unreadable; 03 must accept that manifest and skip them."""
    import shutil

    from fer_lab import data

    dataset = tmp_path / "dataset"
    shutil.copytree(sample_dir, dataset)
    broken = next((dataset / "train").iterdir()) / "broken.png"
    broken.write_bytes(b"not an image")
    manifest = data.load_or_build_manifest(dataset, tmp_path / "work")
    assert not manifest.loc[manifest["path"].str.endswith("broken.png"), "readable"].any()
    data.write_manifest(manifest.assign(keep=manifest["readable"]), tmp_path / "work" / splits.FILTERED_MANIFEST)
    used, name = splits.training_manifest(dataset, tmp_path / "work", use_filtered=True)
    assert name == splits.FILTERED_MANIFEST
    assert len(used) == int(manifest["readable"].sum()) and not used["path"].str.endswith("broken.png").any()


def test_a_head_phase_on_an_untrained_backbone_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="phase head#1 trains only the head, but the backbone is untrained"):
        tiny_config(allow_untrained_head=False)
    after_all = [{"name": "all", "epochs": 1, "trainable": "all"}, {"name": "head", "epochs": 1, "trainable": "head"}]
    assert tiny_config(allow_untrained_head=False, phases=after_all).schedule.total_epochs == 2
