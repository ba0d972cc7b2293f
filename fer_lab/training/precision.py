"""Training precision: the Keras dtype policy `mixed_precision` picks on this machine, and float32 copies of
models trained in mixed precision.
"""

from __future__ import annotations

from typing import Any

import keras

from fer_lab import _native

PRECISIONS = ("auto", "true", "false", "bfloat16")  # 03_train's mixed_precision values


def precision_policy(mode: str) -> str:
    """The Keras dtype policy that `mixed_precision` = `mode` trains with on this machine.

    `auto`: mixed_float16 on a GPU, float32 on a CPU. `bfloat16`: mixed_bfloat16 where the device computes
    bfloat16 natively (a GPU, or a CPU with AVX512-BF16 or AMX, where the plain CNN trained 2.1x as fast as in
    float32 on ready tensors), else float32: emulated bfloat16 would be slower than float32.
    """
    mode = str(mode).lower()
    if mode == "true" or (mode == "auto" and _native.accelerator()):
        return "mixed_float16"
    if mode == "bfloat16" and (_native.accelerator() or _native.cpu_computes_bfloat16()):
        return "mixed_bfloat16"
    return "float32"


def float32_copy(model: keras.Model) -> keras.Model:
    """`model` with every layer computing in float32 and the same weights; `model` itself when it already does.

    A model trained under a mixed precision policy saves that policy with each layer, so it would also predict
    in float16 or bfloat16 wherever it is loaded: slow on CPUs without those units, and not the numbers the
    float32 exports (TFLite, ONNX) give. Its variables are float32 already, so the copy loses nothing.
    """
    serialized = keras.saving.serialize_keras_object(model)
    if not _set_float32(serialized):
        return model
    caller_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # nested models take the global policy, not a saved one
    try:
        copy = keras.saving.deserialize_keras_object(serialized)
    finally:
        keras.mixed_precision.set_global_policy(caller_policy)
    copy.set_weights(model.get_weights())
    return copy


def _set_float32(config: Any) -> bool:
    """Rewrite every mixed dtype policy inside a serialized Keras object to float32; True if one was found."""
    found = False
    if isinstance(config, dict):
        name = str(config.get("config", {}).get("name", "")) if config.get("class_name") == "DTypePolicy" else ""
        if name.startswith("mixed_"):
            config["config"]["name"] = "float32"
            return True
        for value in config.values():
            found = _set_float32(value) or found
    elif isinstance(config, list):
        for value in config:
            found = _set_float32(value) or found
    return found
