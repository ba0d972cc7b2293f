"""An exponential moving average (EMA) of a model's weights, kept beside the weights being trained.

The average is smoother than the weights of the last step, so it usually validates better; training
validates, checkpoints and logs the averaged weights while the optimizer keeps updating the raw ones.
It is kept as backend tensors, where the weights are (on a GPU, it never travels to the host while training),
and updated by one compiled function: op by op, EfficientNetB0's 313 weights cost 87 ms a step on a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import keras
import numpy as np

from fer_lab.errors import FerLabError


class WeightAverage(keras.callbacks.Callback):
    """Updates the average after every training batch: `average = d * average + (1 - d) * weights`.

    The decay `d` warms up as `min(decay, (1 + steps) / (10 + steps))`, so the first average is not
    dominated by the random initial weights. BatchNorm statistics are averaged the same way.
    """

    def __init__(self, model: keras.Model, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise FerLabError(f"ema must be a decay in (0, 1), e.g. 0.999, not {decay}")
        self.decay = decay
        self.steps = 0
        self.tracked = [weight for weight in model.weights if "float" in str(weight.dtype)]
        self.average = [keras.ops.copy(weight.value) for weight in self.tracked]
        self._update = _compiled(_moving_average)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        _ = self.model  # on JAX, reading the model writes the training state back into its variables
        self.average = self._update(self.average, [weight.value for weight in self.tracked],
                                    keras.ops.convert_to_tensor(decay, "float32"))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; the raw ones come back afterwards."""
        raw = [np.array(keras.ops.convert_to_numpy(weight)) for weight in self.tracked]
        for weight, average in zip(self.tracked, self.average):
            weight.assign(keras.ops.copy(average))  # a copy: JAX may donate (delete) what the model computes with
        try:
            yield
        finally:
            for weight, value in zip(self.tracked, raw):
                weight.assign(value)

    def save(self, path: Path) -> None:
        """Write the average and its step count atomically (a kill mid-write keeps the previous file)."""
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, *(keras.ops.convert_to_numpy(average) for average in self.average), steps=self.steps)
        os.replace(partial, path)

    def load(self, path: Path) -> None:
        """Restore what `save` wrote; a file that does not fit this model is an error naming it."""
        with np.load(path) as stored:
            average = [stored[f"arr_{index}"] for index in range(len(stored.files) - 1)]
            steps = int(stored["steps"])
        if [a.shape for a in average] != [tuple(a.shape) for a in self.average]:
            raise FerLabError(f"{path}: the stored weight average does not fit this model")
        self.average, self.steps = [keras.ops.convert_to_tensor(a) for a in average], steps


def _moving_average(averages: list[Any], weights: list[Any], decay: Any) -> list[Any]:
    return [keras.ops.cast(decay, average.dtype) * average
            + keras.ops.cast(1 - decay, average.dtype) * keras.ops.stop_gradient(weight)
            for average, weight in zip(averages, weights)]


def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` compiled by the Keras backend (one call instead of an op per weight), where it can be."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    return function
