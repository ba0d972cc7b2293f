"""Training precision: the policy mixed_precision picks, and float32 copies of mixed-precision models."""

from __future__ import annotations

import keras
import numpy as np

from fer_lab import _native
from fer_lab.training import models, precision

PIXELS = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 1)).astype("float32")


def test_a_mixed_precision_model_gets_a_float32_copy_with_the_same_weights():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = models.build_model(models.ModelConfig(backbone="cnn", cnn=models.CnnConfig(widths=(8, 16))), 7)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in mixed.layers}
    copy = precision.float32_copy(mixed)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    for ours, theirs in zip(copy.get_weights(), mixed.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    # bfloat16 keeps 8 bits of mantissa: the copy agrees with it to that precision, not to float32's
    np.testing.assert_allclose(copy.predict(PIXELS, verbose=0), mixed.predict(PIXELS, verbose=0), atol=0.02)
    assert precision.float32_copy(copy) is copy


def test_bfloat16_is_used_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(_native, "cpu_computes_bfloat16", lambda: False)
    assert precision.precision_policy("bfloat16") == ("mixed_bfloat16" if _native.accelerator() else "float32")
    assert precision.precision_policy("false") == "float32" and precision.precision_policy("true") == "mixed_float16"
