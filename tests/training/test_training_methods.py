"""The training methods beyond the baseline: crops, mixup/CutMix, weight EMA, reduce-on-plateau, the ResNet."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fer_lab.errors import FerLabError
from fer_lab.training import augment, datasets, ema, models, schedule, train

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
