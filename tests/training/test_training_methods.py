"""The training methods beyond the baseline: crops, mixup/CutMix, weight EMA, reduce-on-plateau, the ResNet,
distillation from trained teachers."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from fer_lab.errors import ConfigError, FerLabError
from fer_lab.training import (
    augment,
    datasets,
    distillation,
    ema,
    models,
    schedule,
    train,
)

LABELS = ["angry", "happy", "sad"]


def random_split(count: int, seed: int = 0) -> datasets.Split:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, 48, 48), dtype=np.uint8)
    return datasets.Split(pixels, np.eye(len(LABELS), dtype=np.float32)[rng.integers(0, len(LABELS), count)])


def test_random_crops_are_scaled_back_to_the_input_size() -> None:
    pipeline = augment.build_pipeline(augment.AugmentConfig.from_dict({"crop": 40, "hflip": 0, "affine": 0,
                                                                        "brightness_contrast": 0}), 48, seed=1)
    image = np.arange(48 * 48, dtype=np.uint32).reshape(48, 48).astype(np.uint8)
    cropped = pipeline(image=image)["image"]
    assert cropped.shape == (48, 48) and cropped.dtype == np.uint8
    assert not np.array_equal(cropped, image)
    with pytest.raises(FerLabError, match="larger than"):
        augment.build_pipeline(augment.AugmentConfig.from_dict({"crop": 60}), 48)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_still_sum_to_one(mixup: float, cutmix: float) -> None:
    split = random_split(32)
    rng = np.random.default_rng(3)
    images, targets, weights = datasets.mix_batch(split.pixels.astype(np.float32), split.targets,
                                                  np.ones(32, np.float32), mixup=mixup, cutmix=cutmix, rng=rng)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert (targets.max(axis=1) < 1).any()  # some rows really are mixtures
    assert images.shape == split.pixels.shape and weights.shape == (32,)


def test_cutmix_target_share_is_the_pasted_area() -> None:
    images = np.zeros((2, 48, 48), np.float32)
    images[1] = 255.0
    targets = np.eye(2, dtype=np.float32)
    rng = np.random.default_rng(0)
    mixed, mixed_targets, _ = datasets.mix_batch(images, targets, None, mixup=0.0, cutmix=1.0, rng=rng)
    pasted_share = (mixed[0] == 255.0).mean()  # image 0 is black: what is white came from image 1
    assert pasted_share > 0
    assert mixed_targets[0, 1] == pytest.approx(pasted_share, abs=1e-6)
    assert mixed_targets[0, 0] == pytest.approx(1 - pasted_share, abs=1e-6)


def test_plateau_lowers_the_rate_after_patience_flat_epochs_and_restarts_the_count() -> None:
    flat = [0.50, 0.50, 0.50, 0.50, 0.50]
    decisions = [schedule.plateau_reduces(flat[:n], higher_is_better=True, patience=2) for n in range(1, 6)]
    assert decisions == [False, False, True, False, True]
    assert not schedule.plateau_reduces([0.4, 0.5, 0.6], higher_is_better=True, patience=1)
    assert schedule.plateau_reduces([0.9, 1.0], higher_is_better=False, patience=1)  # a loss that went up


def test_resnet_builds_with_stage_blocks_and_trains_a_step() -> None:
    config = models.model_config_from_params("resnet", 48, "none", {"pooling": "avg", "dropout": 0.0},
                                             resnet={"widths": [8, 16], "blocks": [1, 2]})
    model = models.build_model(config, len(LABELS))
    groups = [name for name, _ in models.layer_groups(models.backbone_of(model))]
    assert groups == ["stem", "stage1", "stage2"]
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    split = random_split(8)
    before = [np.array(w) for w in model.trainable_weights]
    model.train_on_batch(split.pixels[..., None].astype(np.float32), split.targets)
    assert any(not np.allclose(a, np.array(b)) for a, b in zip(before, model.trainable_weights))
    with pytest.raises(FerLabError, match="blocks"):
        models.ResnetConfig.from_dict({"widths": [8, 16], "blocks": [1]})


def test_efficientnet_drop_connect_rate_scales_stochastic_depth_and_zero_turns_it_off() -> None:
    def block_drop_rates(rate: float | None) -> tuple[keras.Model, list[float]]:
        settings = None if rate is None else {"drop_connect_rate": rate}
        config = models.model_config_from_params("efficientnetb0", 48, "none", efficientnet=settings)
        backbone = models.backbone_of(models.build_model(config, len(LABELS)))
        return backbone, [layer.rate for layer in backbone.layers if layer.name.endswith("_drop")]

    _, keras_rates = block_drop_rates(None)
    _, halved = block_drop_rates(0.1)
    backbone, off = block_drop_rates(0.0)
    assert keras_rates == sorted(keras_rates) and 0 < keras_rates[0] < keras_rates[-1] < 0.2  # rising with depth
    assert np.allclose(halved, np.array(keras_rates) / 2)
    assert off == [0.0] * len(keras_rates)
    faces = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 3)).astype(np.float32)
    assert np.allclose(backbone(faces, training=True), backbone(faces, training=True))
    with pytest.raises(FerLabError, match="drop_connect_rate"):
        models.EfficientNetConfig.from_dict({"drop_connect_rate": 1.0})
    with pytest.raises(FerLabError, match="unknown keys"):
        models.EfficientNetConfig.from_dict({"stem_stride": 1})
    phases = [{"name": "all", "epochs": 1, "trainable": "all"}]
    keras_default = train.TrainConfig.from_params(backbone="efficientnetb0", image_size=48, weights="none", phases=phases)
    no_depth = train.TrainConfig.from_params(backbone="efficientnetb0", image_size=48, weights="none", phases=phases,
                                             efficientnet={"drop_connect_rate": 0.0})
    assert "efficientnet" not in keras_default.to_dict()["model"]  # checkpoints from before the option resume
    assert no_depth.to_dict()["model"]["efficientnet"] == {"drop_connect_rate": 0.0}


def test_weight_average_differs_from_raw_weights_and_is_what_training_returns(tmp_path) -> None:
    config = train.TrainConfig.from_params(
        backbone="cnn", image_size=48, weights="none", head={"pooling": "avg", "dropout": 0.0},
        cnn={"widths": [8, 16], "convs_per_block": 1}, ema=0.9, batch_size=16,
        phases=[{"name": "all", "epochs": 1, "trainable": "all", "lr": 0.05, "lr_schedule": "constant",
                 "optimizer": "sgd"}],
    )
    result = train.train(config, random_split(64), random_split(32, seed=1), LABELS, tmp_path, log=lambda _: None)
    average = np.load(tmp_path / train.EMA_FILE)
    raw = keras.models.load_model(tmp_path / train.LAST_MODEL)
    tracked = [w for w in result.model.weights if "float" in str(w.dtype)]
    raw_tracked = [w for w in raw.weights if "float" in str(w.dtype)]
    for index, weight in enumerate(tracked):
        np.testing.assert_allclose(np.array(weight), average[f"arr_{index}"], rtol=1e-6)
    assert any(not np.allclose(np.array(a), np.array(b)) for a, b in zip(tracked, raw_tracked))
    assert "val_accuracy_raw" in result.history.columns


def test_weight_average_state_round_trips(tmp_path) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    average = ema.WeightAverage(model, 0.5)
    model.layers[0].kernel.assign(np.ones((4, 2)))
    average.on_train_batch_end(0)
    average.save(tmp_path / "ema.npz")
    restored = ema.WeightAverage(model, 0.5)
    restored.load(tmp_path / "ema.npz")
    assert restored.steps == 1
    np.testing.assert_allclose(restored.average[0], average.average[0])
    with average.applied():
        np.testing.assert_allclose(np.array(model.layers[0].kernel), average.average[0])
    np.testing.assert_allclose(np.array(model.layers[0].kernel), 1.0)


def brightness_teacher(path, labels: list[str], slope: list[float], bias: list[float]) -> str:
    """A `.keras` teacher whose probabilities are softmax(mean brightness * slope + bias), labels beside it."""
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(len(labels), activation="softmax")])
    model.layers[-1].set_weights([np.array([slope], np.float32), np.array(bias, np.float32)])
    model.save(path)
    path.with_suffix(".json").write_text(json.dumps({"labels": labels}))
    return str(path)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_distillation_blends_the_teachers_averaged_probabilities_in_the_student_class_order(tmp_path) -> None:
    # The teachers list the classes in another order and one more (contempt), which the student drops.
    first = brightness_teacher(tmp_path / "first.keras", ["sad", "contempt", "happy", "angry"],
                               [0.02, -0.01, 0.0, -0.02], [0.0, 0.5, 1.0, 0.5])
    second = brightness_teacher(tmp_path / "second.keras", ["angry", "happy", "sad"], [0.01, 0.0, -0.01], [0.2, 0, 0])
    split = random_split(24)
    split = datasets.Split(split.pixels, split.targets, np.linspace(0.5, 2, 24, dtype=np.float32))
    brightness = split.pixels.reshape(24, -1).mean(axis=1, keepdims=True)
    from_first = softmax(brightness * np.array([0.02, -0.01, 0.0, -0.02]) + [0.0, 0.5, 1.0, 0.5])[:, [3, 2, 0]]
    from_second = softmax(brightness * np.array([0.01, 0.0, -0.01]) + [0.2, 0, 0])
    expected = (from_first / from_first.sum(axis=1, keepdims=True) + from_second) / 2

    distilled = distillation.with_teachers(split, [first, second], 0.25, LABELS, log=lambda _: None)

    np.testing.assert_allclose(distilled.targets, 0.75 * split.targets + 0.25 * expected, atol=1e-5)
    np.testing.assert_allclose(distilled.targets.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(distilled.weights, split.weights)  # loss weights stay those of the labels
    np.testing.assert_array_equal(distilled.pixels, split.pixels)


def test_distillation_settings_are_checked_and_leave_other_runs_fingerprints_alone(tmp_path) -> None:
    phases = [{"name": "all", "epochs": 1, "trainable": "all"}]
    plain = train.TrainConfig.from_params(backbone="cnn", image_size=48, weights="none", phases=phases)
    assert "teacher" not in plain.to_dict()  # checkpoints made before distillation existed still resume
    one = train.TrainConfig.from_params(backbone="cnn", image_size=48, weights="none", phases=phases,
                                        teacher="models:/fer2013-cnn@champion", distill=0.5)
    assert one.teacher == ("models:/fer2013-cnn@champion",) and one.fingerprint() != plain.fingerprint()
    for teacher, weight, message in (([], 0.5, "needs a teacher"), (["run"], 0.0, "distill is 0"),
                                     (["run"], 1.5, r"in \[0, 1\]")):
        with pytest.raises(ConfigError, match=message):
            train.TrainConfig.from_params(backbone="cnn", image_size=48, weights="none", phases=phases,
                                          teacher=teacher, distill=weight)
    stranger = brightness_teacher(tmp_path / "two.keras", ["angry", "happy"], [0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ConfigError, match="does not know sad"):
        distillation.with_teachers(random_split(4), [stranger], 0.5, LABELS, log=lambda _: None)


def test_teacher_probabilities_are_cached_per_model_and_images(tmp_path) -> None:
    teacher = brightness_teacher(tmp_path / "teacher.keras", list(LABELS), [0.02, 0.0, -0.02], [0.0, 0.3, 0.0])
    split, cache = random_split(8), tmp_path / "cache"

    def probabilities(pixels: np.ndarray) -> tuple[np.ndarray, list[str]]:
        lines: list[str] = []
        result = distillation.teacher_probabilities([teacher], pixels, LABELS, cache_dir=cache, log=lines.append)
        return result, lines

    first, first_lines = probabilities(split.pixels)
    again, again_lines = probabilities(split.pixels)
    assert "classified" in first_lines[0] and "from" in again_lines[0] and len(list(cache.glob("teacher-*.npz"))) == 1
    np.testing.assert_array_equal(again, first)

    _, other_lines = probabilities(split.pixels[::-1].copy())  # other images: another entry
    assert "classified" in other_lines[0] and len(list(cache.glob("teacher-*.npz"))) == 2
    brightness_teacher(tmp_path / "teacher.keras", list(LABELS), [-0.02, 0.0, 0.02], [0.0, 0.3, 0.0])
    os.utime(teacher, ns=(1, 1))  # overwritten in place, whatever the clock's resolution
    retrained, retrained_lines = probabilities(split.pixels)
    assert "classified" in retrained_lines[0] and not np.allclose(retrained, first)
    for entry in cache.glob("teacher-*.npz"):
        entry.write_bytes(b"truncated")
    rebuilt, rebuilt_lines = probabilities(split.pixels)
    assert "classified" in rebuilt_lines[0]
    np.testing.assert_allclose(rebuilt, retrained, rtol=1e-6)
