"""Model builders: the input/output contract, backbones, and weights that cannot be had."""

from __future__ import annotations

import numpy as np
import pytest

from fer_lab.errors import FerLabError
from fer_lab.training import models

UNREACHABLE = "http://127.0.0.1:9/weights"  # the discard port: nothing answers


def pixels(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, 48, 48, 1)).astype("float32")


def test_cnn_takes_48px_gray_pixels_and_returns_probabilities():
    config = models.ModelConfig(backbone="cnn", cnn=models.CnnConfig(widths=(8, 16)),
                                head=models.HeadConfig(pooling="flatten", dense=(16,)))
    model = models.build_model(config, num_classes=7)
    assert model.input_shape == (None, 48, 48, 1)
    probabilities = model.predict(pixels(), verbose=0)
    assert probabilities.shape == (4, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert [name for name, _ in models.layer_groups(models.backbone_of(model))] == ["block1", "block2"]
    assert {layer.name for layer in models.head_layers(model)} >= {"head_pool", "head_dense1", "predictions"}


def test_cnn_takes_a_convolution_count_per_block():
    cnn = models.CnnConfig.from_dict({"widths": [8, 16, 16], "convs_per_block": [1, 2, 1]})
    model = models.build_model(models.ModelConfig(backbone="cnn", cnn=cnn), num_classes=7)
    convs = [layer.name for layer in models.backbone_of(model).layers if "_conv" in layer.name]
    assert convs == ["block1_conv1", "block2_conv1", "block2_conv2", "block3_conv1"]
    assert models.CnnConfig.from_dict({"widths": [8, 16], "convs_per_block": 3}).convs() == (3, 3)
    for counts in ([1, 2], [1, 0, 2]):
        with pytest.raises(FerLabError, match="positive count for each of the widths"):
            models.CnnConfig.from_dict({"widths": [8, 16, 16], "convs_per_block": counts})


def test_efficientnet_resizes_and_repeats_gray_inside_the_model():
    config = models.model_config_from_params("EfficientNetB0", 64, "none", {"pooling": "max", "dropout": 0.1})
    model = models.build_model(config, num_classes=3)
    assert model.get_layer("resize").output.shape[1:3] == (64, 64)
    assert model.get_layer("gray_to_rgb").output.shape[-1] == 3
    assert models.backbone_of(model).input_shape == (None, 64, 64, 3)
    groups = [name for name, _ in models.layer_groups(models.backbone_of(model))]
    assert groups[0] == "stem" and groups[-1] == "top" and "block7a" in groups
    assert model.predict(pixels(2), verbose=0).shape == (2, 3)


def test_bad_configurations_are_rejected():
    with pytest.raises(FerLabError, match="unknown backbone"):
        models.build_model(models.ModelConfig(backbone="resnet50"), num_classes=7)
    with pytest.raises(FerLabError, match="at least 32"):
        models.build_model(models.ModelConfig(backbone="cnn", image_size=24), num_classes=7)
    with pytest.raises(FerLabError, match="pooling"):
        models.HeadConfig.from_dict({"pooling": "mean"})
    with pytest.raises(FerLabError, match="unknown keys"):
        models.HeadConfig.from_dict({"units": 3})


def test_missing_imagenet_weights_fail_early_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(FerLabError) as error:
        models.resolve_weights("efficientnetb2", "imagenet", base_url=UNREACHABLE, timeout=2)
    message = str(error.value)
    assert str(tmp_path / "models" / "efficientnetb2_notop.h5") in message
    assert "weights=none" in message and "weights=<path" in message

    cached = tmp_path / "models" / "efficientnetb2_notop.h5"
    cached.parent.mkdir()
    cached.write_bytes(b"stand-in")  # only its presence is checked here
    assert models.resolve_weights("efficientnetb2", "imagenet", base_url=UNREACHABLE) == "imagenet"
    assert models.imagenet_weights_file("efficientnetv2s")[0].name == "efficientnetv2-s_notop.h5"


def test_weights_file_must_exist_and_is_loaded_into_the_backbone(tmp_path):
    with pytest.raises(FerLabError, match="not found"):
        models.build_model(models.ModelConfig(backbone="efficientnetb0", weights=str(tmp_path / "nope.h5")), 7)
    first = models.build_model(models.ModelConfig(backbone="efficientnetb0"), 7, seed=1)
    weights_file = tmp_path / "b0.weights.h5"
    models.backbone_of(first).save_weights(weights_file)
    second = models.build_model(models.ModelConfig(backbone="efficientnetb0", weights=str(weights_file)), 7, seed=2)
    for a, b in zip(models.backbone_of(first).weights, models.backbone_of(second).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert models.ModelConfig(weights=str(weights_file)).pretrained and not models.ModelConfig(weights="none").pretrained

