"""Model cost: FLOPs counted by hand on small models, and a matmul rate that is a rate."""

from __future__ import annotations

import keras

from fer_lab.training import cost, models


def test_flops_of_a_convolution_and_a_dense_layer_match_the_hand_count():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8 positions x 3*3*1 x 4 filters
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 4*4 positions x 3*3 x 4 channels
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)  # 64 x 5
    model = keras.Model(inputs, outputs)
    assert cost.forward_flops(model) == 2 * (8 * 8 * 9 * 4 + 4 * 4 * 9 * 4 + 64 * 5)


def test_flops_walk_into_the_nested_backbone():
    config = models.ModelConfig(backbone="cnn", cnn=models.CnnConfig(widths=(8, 16)),
                                head=models.HeadConfig(pooling="avg"))
    model = models.build_model(config, num_classes=7)
    convs = 48 * 48 * 9 * (1 * 8 + 8 * 8) + 24 * 24 * 9 * (8 * 16 + 16 * 16)
    assert cost.forward_flops(model) == 2 * (convs + 16 * 7)


def test_matmul_rate_is_positive_and_finite():
    rate = cost.matmul_flops_per_s(size=128, repeats=3)
    assert 1e6 < rate < 1e15
