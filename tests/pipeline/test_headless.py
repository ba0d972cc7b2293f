"""`fer-lab train`: 03's training where neither MLflow nor Jupyter can be imported, then `fer-lab run`
logging and evaluating the finished checkpoint it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient

from fer_lab import project, tracking
from fer_lab.pipeline import runner
from fer_lab.training import train

TINY = ["03_train.run_name=headless", "03_train.ema=0.9", "03_train.cnn={widths: [8, 16], convs_per_block: 1}",
        "03_train.phases=[{name: all, epochs: 2, trainable: all, lr: 0.005, lr_schedule: onecycle}]"]
# A machine with a Keras backend but without the tracking store or Jupyter's kernel stack.
WITHOUT_MLFLOW_OR_JUPYTER = ("import sys; sys.modules.update(dict.fromkeys(['mlflow', 'zmq', 'papermill', 'nbclient'])); "
                             "from fer_lab.cli import main; sys.exit(main())")


def _fer_lab_train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", WITHOUT_MLFLOW_OR_JUPYTER, "train", *args], capture_output=True,
                          text=True, env=env, cwd=project.ROOT, timeout=300)


@pytest.mark.extended  # a minute: a training process, then 03 and 04 through papermill
def test_a_headless_training_is_logged_and_evaluated_by_the_pipeline(sample_dir, tmp_path):
    work = tmp_path / "work"
    overrides = [f"work_dir={work}", *TINY]
    trained = _fer_lab_train("--data", str(sample_dir), *(arg for pair in overrides for arg in ("-p", pair)))
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    checkpoint = work / "checkpoints" / "headless"
    assert f"checkpoint {checkpoint}" in trained.stdout and "fer-lab run" in trained.stdout
    for name in (train.LAST_MODEL, train.EMA_FILE):  # what comes back from a GPU machine: best.keras and state
        (checkpoint / name).unlink()
    state = json.loads((checkpoint / train.STATE_FILE).read_text())
    assert state["run_id"] == "" and state["completed_epochs"] == 2

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = runner.run_pipeline(data_dir=sample_dir, overrides={"tracking_uri": uri, **runner.parse_overrides(overrides)},
                                 only=["03", "04"], out_dir=tmp_path / "report", log=lambda line: None)
    assert result.ok, [nb.error for nb in result.notebooks]
    run_id = result.notebooks[0].run_id
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (row["epoch"], row["val_accuracy"]) for row in state["history"]]
    run = client.get_run(run_id)
    assert run.data.tags[train.TRAINED_ON_TAG] == "tensorflow cpu"
    assert "all 2 epochs finished" in (result.notebooks[0].notebook).read_text()
    assert json.loads((checkpoint / train.STATE_FILE).read_text())["run_id"] == run_id
    model, labels = tracking.load_run_model(run_id)
    assert len(labels) == 7 and model.output_shape == (None, 7)
    assert "test_accuracy" in client.get_run(result.notebooks[1].run_id).data.metrics


def test_headless_training_needs_a_run_name_and_mlflow_for_model_references(sample_dir):
    failed = _fer_lab_train("--data", str(sample_dir))
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        "error: fer-lab train needs 03_train.run_name: 03 finds the finished checkpoint by it "
        "(e.g. -p 03_train.run_name=fer2013-gpu)"]
    run_id = "0123456789abcdef0123456789abcdef"
    failed = _fer_lab_train("--data", str(sample_dir), "-p", "03_train.run_name=x", "-p", f"03_train.weights={run_id}")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"error: 03_train.weights '{run_id}' names a trained model, which is read through MLflow, and MLflow is not "
        "installed here: install it, or pass the weights as an .h5 file"]
