"""A trained model as a TFLite or ONNX file: what `fer-lab export` writes, and the copy 03 logs for inference.

`inference.load_model` runs a run's copy (artifact `inference/model.tflite`) in the LiteRT interpreter,
which starts in a fraction of a second where TensorFlow takes seconds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from fer_lab._shared import one_line
from fer_lab.runtime import INFERENCE_ARTIFACT, INFERENCE_TOLERANCE, ExportedModel

PROBE_IMAGES = 32  # images of the probe batch the parity is measured on
ONNX_OPSET = 17  # ONNX Runtime 1.14 and later run it


def probe_batch(size: int, images: int = PROBE_IMAGES, seed: int = 0) -> np.ndarray:
    """A fixed batch of smooth random float32 images (N, size, size, 1) in 0..255, for parity checks."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (images, 6, 6)).astype(np.float32)
    smooth = tf.image.resize(coarse[..., None], (size, size), method="bilinear").numpy()
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.float32)


def write_tflite(model: Any, path: str | Path, *, quantize: bool = False) -> None:
    """Keras `model` as a TFLite file of built-in ops only (the plain interpreter runs it); int8 weights with `quantize`."""
    options: dict[str, Any] = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize:
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    model.export(str(path), format="litert", verbose=False, **options)


def write_onnx(model: Any, path: str | Path) -> None:
    """Keras `model` as an ONNX file (float32), traced in inference mode.

    Not `model.export(format="onnx")`: on a model that resizes its input before a BatchNorm (the demo CNN
    takes 48 px and works at 32) it traced BatchNorm in training mode, moving-statistics updates in the
    graph, and changed the probabilities by up to 0.28. An explicit `training=False` trace reproduces them
    within 4e-7.
    """
    import onnx
    import tf2onnx

    size = int(model.input_shape[1])
    signature = (tf.TensorSpec((None, size, size, 1), tf.float32, name="pixels"),)
    traced = tf.function(lambda pixels: model(pixels, training=False))
    graph, _ = tf2onnx.convert.from_function(traced, input_signature=signature, opset=ONNX_OPSET)
    onnx.save(fold_input_scale(graph), str(path))


def fold_input_scale(graph: Any) -> Any:
    """The ONNX model `graph` with an input scaling (pixels * s + 0) folded into the first convolution's weights.

    The plain CNN and the ResNet start with `Rescaling(1/255)`; as its own operation on a one-channel image it
    took 7% of an int8 file's time in ONNX Runtime for no arithmetic that matters. Scaling the input of a
    convolution scales its output exactly, zero padding included, so the file computes the same function.
    A graph of another shape (an offset, a scale with other consumers, EfficientNet's normalisation) is
    returned unchanged.
    """
    from onnx import numpy_helper

    nodes, initializers = graph.graph.node, {init.name: init for init in graph.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str) -> Any | None:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 else None

    def constant_operand(node: Any, other: str) -> np.ndarray | None:
        names = [name for name in node.input if name != other]
        return numpy_helper.to_array(initializers[names[0]]) if len(names) == 1 and names[0] in initializers else None

    pixels = graph.graph.input[0].name
    scale_node = only_consumer(pixels)
    scale = constant_operand(scale_node, pixels) if scale_node is not None and scale_node.op_type == "Mul" else None
    if scale is None or scale.size != 1:
        return graph
    removed, output = [scale_node], scale_node.output[0]
    offset_node = only_consumer(output)
    if offset_node is not None and offset_node.op_type == "Add":
        offset = constant_operand(offset_node, output)
        if offset is None or np.any(offset != 0):
            return graph
        removed.append(offset_node)
        output = offset_node.output[0]
    conv = only_consumer(output)
    while conv is not None and conv.op_type in ("Reshape", "Transpose"):  # layout changes commute with a scale
        conv = only_consumer(conv.output[0])
    if conv is None or conv.op_type != "Conv" or len(consumers[conv.input[1]]) != 1 or conv.input[1] not in initializers:
        return graph
    weights = initializers[conv.input[1]]
    kernel = numpy_helper.to_array(weights)
    weights.CopyFrom(numpy_helper.from_array(kernel * scale.reshape(()).astype(kernel.dtype), weights.name))
    for node in consumers[output]:
        node.input[list(node.input).index(output)] = pixels
    for node in removed:
        nodes.remove(node)
    used = {name for node in nodes for name in node.input}
    for init in [init for init in graph.graph.initializer if init.name not in used]:
        graph.graph.initializer.remove(init)
    return graph


def write_onnx_int8(model: Any, path: str | Path, calibration: np.ndarray) -> None:
    """Keras `model` as an ONNX file with int8 weights and activations (static quantization).

    Weights are quantized per output channel to 7 bits (`reduce_range`); each activation's range is the
    min-max it takes on the `calibration` images (float32 (N, size, size, 1), 0..255: a few hundred training
    images), so the convolutions run as int8 in ONNX Runtime (QDQ format).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 64)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    with tempfile.TemporaryDirectory() as scratch:
        float_file, prepared = Path(scratch) / "float.onnx", Path(scratch) / "prepared.onnx"
        write_onnx(model, float_file)
        quant_pre_process(str(float_file), str(prepared), skip_symbolic_shape=True)
        # 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime's u8s8 kernels add pairs of
        # products in 16 bits, which saturate with full 8-bit weights; the 12-epoch student's int8 file then
        # agreed with its float file on 89% of PublicTest, and on 99% with 7 bits, at the same speed.
        quantize_static(str(prepared), str(path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def log_inference_copy(model: Any, labels: Sequence[str]) -> str:
    """Log a TFLite copy of `model` to the active run (`inference/model.tflite`, labels in `model.json`).

    The copy is logged only when its probabilities on the probe batch are within INFERENCE_TOLERANCE
    of the Keras model's; inference then runs it instead of the Keras model.

    Args:
        model: The Keras classifier the run logged.
        labels: Its class names in output order.

    Returns:
        One line saying what was logged, or why not.
    """
    from fer_lab import tracking

    probe = probe_batch(int(model.input_shape[1]))
    expected = np.asarray(model.predict(probe, verbose=0), dtype=np.float64)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.tflite"
        try:
            write_tflite(model, path)
            difference = float(np.abs(ExportedModel(path).predict_on_batch(probe) - expected).max())
        except Exception as error:  # converters raise many types; the message says which step failed
            return f"no TFLite copy, inference loads the Keras model ({one_line(error)[:300]})"
        if difference > INFERENCE_TOLERANCE:
            return f"no TFLite copy: it differs from the Keras model by up to {difference:.2g}"
        (Path(scratch) / "model.json").write_text(json.dumps(
            {"format": "tflite", "file": path.name, "labels": list(labels),
             "parity": {"probe_images": len(probe), "max_abs_diff": difference}}, indent=1) + "\n")
        megabytes = path.stat().st_size / 1e6
        tracking.log_artifacts(scratch, INFERENCE_ARTIFACT)
    return (f"logged a TFLite copy for inference ({megabytes:.1f} MB, probabilities within {difference:.1e} "
            "of the Keras model's)")
