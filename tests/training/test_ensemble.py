"""Several models as one: the averaging model, and `fer-lab ensemble` on a real sqlite MLflow store."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fer_lab import cli, data, tracking
from fer_lab.analysis import evaluate
from fer_lab.errors import ConfigError
from fer_lab.training import ensemble

EXPERIMENT = "ensemble-tests"


def tiny_model(classes: int, seed: int, size: int = 48) -> keras.Model:
    """A random-weight classifier honouring the model contract: float 0..255 (N, size, size, 1) in, softmax out."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x), name="cnn")


def pixels(count: int = 6) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, 48, 48, 1)).astype(np.float32)


def test_the_ensemble_outputs_the_mean_of_its_members_probabilities() -> None:
    members = [tiny_model(3, seed) for seed in (0, 1, 2)]
    expected = np.mean([member.predict(pixels(), verbose=0) for member in members], axis=0)
    together = ensemble.average_models(members, [["a", "b", "c"]] * 3)
    np.testing.assert_allclose(together.predict(pixels(), verbose=0), expected, atol=1e-6)
    assert [layer.name for layer in together.layers[1:4]] == ["member_1", "member_2", "member_3"]


@pytest.mark.parametrize(("second", "second_labels", "message"), [
    (lambda: tiny_model(3, 1, size=64), ["a", "b", "c"], r"model 2 takes input \(64, 64, 1\)"),
    (lambda: tiny_model(3, 1), ["a", "c", "b"], r"model 2 gives classes \['a', 'c', 'b'\]"),
])
def test_the_ensemble_refuses_members_that_take_other_images_or_give_other_classes(second, second_labels,
                                                                                   message) -> None:
    with pytest.raises(ConfigError, match=message):
        ensemble.average_models([tiny_model(3, 0), second()], [["a", "b", "c"], second_labels])
    with pytest.raises(ConfigError, match="two or more models, got 1"):
        ensemble.average_models([tiny_model(3, 0)], [["a", "b", "c"]])


def test_shared_params_keep_what_every_member_trained_with_except_the_seed() -> None:
    shared = ensemble.shared_params([{"seed": "0", "augment": "{crop: 44}", "epochs": "40"},
                                     {"seed": "1", "augment": "{crop: 44}", "epochs": "20"}])
    assert shared == {"augment": "{crop: 44}"}


def test_fer_lab_ensemble_logs_one_model_that_04_scores_like_any_run(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    members = []
    for seed in (0, 1):
        params = {"seed": seed, "augment": '{"crop": 44, "hflip": 0.5}', "backbone": "cnn"}
        with tracking.start_notebook_run("03_train", params, tracking_uri=uri, experiment=EXPERIMENT) as run:
            tracking.log_model(tiny_model(len(data.CLASSES), seed), data.CLASSES)
        members.append(run.info.run_id)

    assert cli.main(["ensemble", *members, "--name", "two-seeds", "--experiment", EXPERIMENT,
                     "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    run_id = printed.split(" as run ")[1].split()[0]
    assert f"04_evaluate.model_run_id={run_id}" in printed

    model, labels = tracking.load_run_model(run_id, uri)
    expected = np.mean([tracking.load_run_model(member)[0].predict(pixels(), verbose=0) for member in members], axis=0)
    np.testing.assert_allclose(model.predict(pixels(), verbose=0), expected, atol=1e-6)
    assert labels == list(data.CLASSES)
    params, tags = tracking.run_params(run_id), tracking.run_tags(run_id)
    assert params["members"] == ", ".join(members) and "seed" not in params and params["backbone"] == "cnn"
    assert tags["ensemble_of"] == ", ".join(members) and tags["has_model"] == "true" and "notebook" not in tags
    # 04's ten-crop takes the crop side the members trained with; 04 never picks the ensemble by default
    assert evaluate.tta_settings("tencrop", 0, run_id) == ("tencrop", 44)
    assert tracking.resolve_training_run(EXPERIMENT) == members[1]


def test_fer_lab_ensemble_refuses_a_single_model_in_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "one.keras"
    tiny_model(len(data.CLASSES), 0).save(path)
    assert cli.main(["ensemble", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    assert capsys.readouterr().err.strip() == "error: an ensemble needs two or more models, got 1"
