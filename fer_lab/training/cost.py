"""What a model costs and what the machine offers: FLOPs per image, and the measured fp32 matrix-multiply rate.

Images/s alone says little across machines that differ up to 3x; the share of the machine's matmul rate a
training reaches says whether the cores are used well (benchmarks/bench_train.py prints both).
"""

from __future__ import annotations

import math
import time

import keras

# A training step is one forward and a backward pass that costs about twice the forward one.
TRAINING_FLOPS_PER_FORWARD = 3.0


def forward_flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of one image's forward pass through the convolutions and dense layers.

    Nested models (a backbone inside the classifier) are walked. Element-wise layers (BatchNorm,
    activations, pooling) are left out: they are a few percent of a CNN's cost.

    Args:
        model: A built Keras model.

    Returns:
        FLOPs per image.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            # (kh, kw, in / groups, out), or depthwise (kh, kw, channels, multiplier): the product either way
            total += 2 * _positions(layer) * math.prod(layer.kernel.shape)
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * math.prod(layer.kernel.shape)
    return int(total)


def _positions(layer: keras.layers.Layer) -> int:
    """Output positions (height x width) of a convolution."""
    shape = layer.output.shape
    return int(shape[1]) * int(shape[2])


def matmul_flops_per_s(size: int = 1024, repeats: int = 20) -> float:
    """The measured fp32 rate of square matrix products on this machine's backend (best of `repeats`).

    Args:
        size: Matrix side.
        repeats: Timed products; the best one counts, as the least disturbed by other processes.

    Returns:
        FLOP/s.
    """
    ops = keras.ops
    a = keras.random.normal((size, size), seed=0)
    b = keras.random.normal((size, size), seed=1)
    ops.convert_to_numpy(ops.matmul(a, b))  # warm-up: kernels chosen, memory allocated
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        ops.convert_to_numpy(ops.matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best
