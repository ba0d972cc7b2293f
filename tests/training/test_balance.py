"""Decision offsets: fitted for macro-F1 on made-up predictions with a known answer, and written into the model."""

from __future__ import annotations

import numpy as np
import pytest

from fer_lab.errors import ConfigError
from fer_lab.training import balance, models


def skewed_predictions(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes; the model's probabilities under-rate class 2 by a factor e^-1.2 for every image."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), truth] += 1.5
    logits[:, 2] -= 1.2
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probabilities, truth


def test_macro_f1_matches_a_hand_count():
    truth = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    # class 0: P 1/2 R 1/2 -> 0.5; class 1: P 2/3 R 1 -> 0.8; class 2: 0
    assert balance.macro_f1(truth, predicted, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_offsets_undo_a_bias_against_a_class_and_raise_macro_f1():
    probabilities, truth = skewed_predictions()
    before = balance.macro_f1(truth, probabilities.argmax(1), 3)
    offsets = balance.fit_decision_offsets(probabilities, truth)
    after = balance.macro_f1(truth, (np.log(probabilities) + offsets).argmax(1), 3)
    assert after > before + 0.05
    assert offsets[2] - offsets[[0, 1]].mean() > 0.5  # the under-rated class is lifted


def test_offsets_stay_zero_when_nothing_is_wrong():
    truth = np.repeat(np.arange(3), 50)
    probabilities = np.full((150, 3), 0.1)
    probabilities[np.arange(150), truth] = 0.8
    assert np.all(balance.fit_decision_offsets(probabilities, truth) == 0)


def test_output_bias_shift_gives_the_fitted_decisions():
    config = models.ModelConfig(backbone="cnn", cnn=models.CnnConfig(widths=(8,)), head=models.HeadConfig(pooling="avg"))
    model = models.build_model(config, num_classes=3)
    pixels = np.random.default_rng(0).uniform(0, 255, (16, 48, 48, 1)).astype("float32")
    before = model.predict(pixels, verbose=0)
    offsets = np.array([0.0, -0.5, 1.0], dtype=np.float32)
    balance.shift_output_bias(model, offsets)
    after = model.predict(pixels, verbose=0)
    expected = before * np.exp(offsets)
    np.testing.assert_allclose(after, expected / expected.sum(1, keepdims=True), rtol=1e-4)
    with pytest.raises(ConfigError, match="2 offsets"):
        balance.shift_output_bias(model, np.zeros(2, dtype=np.float32))
