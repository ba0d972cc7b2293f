"""Exported models (ONNX, TFLite) behind the calls fer-lab's inference makes of a Keras model.

03_train logs a TFLite copy beside the Keras model (`fer_lab.training.deploy.log_inference_copy`, its
probabilities checked against Keras' on a probe batch). `inference.load_model` prefers it: the LiteRT interpreter
starts in a fraction of a second where TensorFlow takes seconds, most of a one-photo `fer-lab predict`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fer_lab import _native
from fer_lab.errors import ConfigError

# Where 03_train logs the TFLite copy of its model, among the run's artifacts.
INFERENCE_ARTIFACT = "inference"
# Largest difference from the Keras model's probabilities for which an exported file counts as the same model.
INFERENCE_TOLERANCE = 1e-4


class ExportedModel:
    """An exported classifier with the Keras methods inference uses: shapes, `predict_on_batch`, `predict`,
    `get_weights`. ONNX files run in ONNX Runtime, TFLite files in the LiteRT interpreter."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.suffix == ".onnx":
            import onnxruntime

            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            given, output = self._session.get_inputs()[0], self._session.get_outputs()[0]
            self._input_name = given.name
            shapes = given.shape, output.shape
        elif self.path.suffix == ".tflite":
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=str(self.path))
            self._given = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
            self._batch_shape: tuple[int, ...] = ()
            shapes = self._given["shape_signature"], self._output["shape_signature"]
        else:
            raise ConfigError(f"{self.path}: not an exported model (.onnx or .tflite)")
        self.input_shape, self.output_shape = (
            tuple(int(size) if isinstance(size, (int, np.integer)) and size > 0 else None for size in shape)
            for shape in shapes)

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for float32 pixels (N, size, size, 1) in 0..255."""
        pixels = np.ascontiguousarray(pixels, np.float32)
        if self.path.suffix == ".onnx":
            return self._session.run(None, {self._input_name: pixels})[0]
        if pixels.shape != self._batch_shape:  # the interpreter is sized for one batch shape at a time
            self._interpreter.resize_tensor_input(self._given["index"], pixels.shape)
            with _native.quiet_stderr():  # its first run logs which delegate it created
                self._interpreter.allocate_tensors()
                self._interpreter.set_tensor(self._given["index"], pixels)
                self._interpreter.invoke()
            self._batch_shape = pixels.shape
        else:
            self._interpreter.set_tensor(self._given["index"], pixels)
            self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output["index"]))

    def predict(self, pixels: np.ndarray, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
        """`predict_on_batch` over `pixels` in batches of `batch_size` (`verbose` is accepted and ignored)."""
        parts = [self.predict_on_batch(pixels[start:start + batch_size]) for start in range(0, len(pixels), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.output_shape[-1]), np.float32)

    def get_weights(self) -> list[np.ndarray]:
        """The file's bytes as one array: what identifies these weights (a model fingerprint hashes it)."""
        return [np.frombuffer(self.path.read_bytes(), dtype=np.uint8)]
