"""Models as assets: registering a run's model, one resolver for every model reference, in a real sqlite store."""

from __future__ import annotations

import json

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fer_lab import cli, data, tracking
from fer_lab.apply import inference
from fer_lab.errors import ConfigError

EXPERIMENT = "registry-tests"


def tiny_model(classes: int, seed: int = 0) -> keras.Model:
    """A random-weight classifier honouring the model contract: float 0..255 (N, 48, 48, 1) in, softmax out."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str, str]:
    """(tracking_uri, run_a, run_b): two 03_train runs that logged a model each."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    runs = []
    for seed in (0, 1):
        with tracking.start_notebook_run("03_train", {}, tracking_uri=uri, experiment=EXPERIMENT) as run:
            tracking.log_model(tiny_model(len(data.CLASSES), seed), data.CLASSES)
        runs.append(run.info.run_id)
    return uri, runs[0], runs[1]


def test_register_and_resolve_by_alias_and_version(store, capsys) -> None:
    uri, run_a, run_b = store
    assert cli.main(["register", run_a, "--name", "fer-cnn", "--alias", "champion", "--tracking-uri", uri]) == 0
    assert "use it as models:/fer-cnn@champion" in capsys.readouterr().out
    tracking.configure(uri)
    second = tracking.register_model(f"runs:/{run_b}/model", "fer-cnn", "champion")
    assert (second.version, second.run_id, second.uri) == ("2", run_b, "models:/fer-cnn/2")

    by_alias = tracking.resolve_model("models:/fer-cnn@champion")  # the alias moved to version 2
    assert (by_alias.uri, by_alias.run_id, by_alias.version, by_alias.alias) == ("models:/fer-cnn/2", run_b, "2", "champion")
    assert by_alias.lineage() == {"parent_model": "models:/fer-cnn@champion", "parent_model_name": "fer-cnn",
                                  "parent_model_version": "2", "parent_model_alias": "champion",
                                  "parent_model_run_id": run_b}
    assert tracking.resolve_model("models:/fer-cnn/1").run_id == run_a
    assert tracking.resolve_model(run_a).uri == f"runs:/{run_a}/model"
    # 04's model_run_id and 06/predict's model take every form; 04 scores the version's source run.
    assert tracking.resolve_training_run(EXPERIMENT, run_id="models:/fer-cnn@champion") == run_b
    assert tracking.resolve_training_run(EXPERIMENT, run_id="models:/fer-cnn/1") == run_a
    by_version = inference.load_model("models:/fer-cnn/1", uri)
    direct = inference.load_model(run_a, uri)
    champion = inference.load_model("models:/fer-cnn@champion", uri)
    assert by_version.labels == champion.labels == data.CLASSES
    np.testing.assert_array_equal(by_version.model.get_weights()[-2], direct.model.get_weights()[-2])
    assert not np.array_equal(champion.model.get_weights()[-2], direct.model.get_weights()[-2])


def test_bad_references_say_what_exists(store, capsys) -> None:
    uri, run_a, _ = store
    tracking.configure(uri)
    tracking.register_model(run_a, "fer-bad-refs", "staging")
    cases = {
        "models:/fer-bad-refs@champ": r"has no alias 'champ'; its aliases: @staging -> v1",
        "models:/fer-bad-refs/7": r"has no version 7; its versions: 1",
        "models:/nobody@x": r"no registered model 'nobody' .* registered: .*fer-bad-refs",
        "models:/fer-bad-refs": r"models:/NAME@ALIAS or models:/NAME/VERSION",
        "0" * 32: r"run 0{32} is not in the tracking store",
        "missing.keras": r"model file .*missing.keras not found",
        "latest": r"'latest' is not a model reference: pass a run id, runs:/ID/model",
        "": r"no model given",
    }
    for reference, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            tracking.resolve_model(reference)
    with pytest.raises(ConfigError, match="register takes a training run"):
        tracking.register_model("models:/fer-bad-refs/1", "again")
    assert cli.main(["predict", ".", "--model", "models:/fer-bad-refs@nope", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: registered model 'fer-bad-refs' has no alias 'nope'")
    with mlflow.start_run(experiment_id=tracking.experiment_id(EXPERIMENT, uri)) as empty:
        pass
    with pytest.raises(ConfigError, match=f"run {empty.info.run_id} has no logged model"):
        tracking.register_model(empty.info.run_id, "empty")
    assert [m.name for m in MlflowClient().search_registered_models(filter_string="name = 'empty'")] == []


def test_a_keras_file_with_its_labels_is_a_model(tmp_path) -> None:
    labels = ["happy", "sad", "contempt"]
    path = tmp_path / "best.keras"
    tiny_model(len(labels)).save(path)
    with pytest.raises(ConfigError, match="no best.json or labels.json beside it"):
        tracking.load_reference(str(path))
    (tmp_path / "labels.json").write_text(json.dumps({"labels": labels}))
    model, found, ref = tracking.load_reference(str(path))
    assert found == labels and ref.is_file and ref.run_id == "" and model.output_shape == (None, 3)
    (tmp_path / "best.json").write_text(json.dumps({"labels": labels[:2]}))
    with pytest.raises(ConfigError, match="lists 2 labels but best.keras has 3 outputs"):
        tracking.load_reference(str(path))
    with pytest.raises(ConfigError, match="model file without an MLflow run"):
        tracking.resolve_training_run(EXPERIMENT, run_id=str(path))
