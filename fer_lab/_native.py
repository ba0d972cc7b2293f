"""A quiet TensorFlow start: its C++ start-up lines kept out of notebooks and terminals (and the note
TensorFlow Lite writes when MediaPipe's face detector sees its first frame).

TensorFlow logs through absl before absl's logging is initialised, and absl then writes every message to
fd 2 whatever TF_CPP_MIN_LOG_LEVEL says (abseil-cpp pull requests 1718 and 1957). Measured with TensorFlow
2.21 on a machine without a GPU: TF_CPP_MIN_LOG_LEVEL=2 leaves five lines (twice "WARNING: All log messages
before absl::InitializeLog() ..." and "cudart_stub.cc ... Could not find cuda drivers", once "cuda_platform.cc
... failed call to cuInit"), and on some CPUs twice "port.cc ... oneDNN custom operations are on"; 3 removes
only the cuInit line; CUDA_VISIBLE_DEVICES="" removes none. So the import and the first device query run with
fd 2 sent to a file, and what was written there, less those known lines, is written back to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

# absl's line format: severity and date (0000 before initialisation), time, thread id, source file:line]
_ABSL_LINE = r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ "
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rf"|{_ABSL_LINE}(cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics|cuda_dnn|cuda_fft|cuda_blas)\.cc:\d+\].*"
    # on CPUs where TensorFlow's oneDNN custom operations are on (seen 2026-12-02 on an AMD EPYC 2-core machine)
    rf"|{_ABSL_LINE}port\.cc:\d+\] oneDNN custom operations are on\..*"
    # MediaPipe's face detector, on its first frame: TensorFlow Lite's note about its model's signatures
    rf"|{_ABSL_LINE}inference_feedback_manager\.cc:\d+\] Feedback manager requires a model with a single signature.*"
    # TensorFlow Lite (MediaPipe's detector, a model's TFLite copy) when its interpreter first runs
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r")\s*$")
_LOCK = threading.Lock()


def drop_noise(text: str) -> str:
    """`text` without TensorFlow's known start-up lines (see the module's docstring)."""
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.match(line))


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send fd 2 (native code's stderr) to a file for the block, then write its lines but the known noise back."""
    with _LOCK, tempfile.TemporaryFile(mode="w+b") as caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = drop_noise(caught.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def keras_backend() -> str:
    """The backend Keras loads, read as Keras reads it but without importing it: `KERAS_BACKEND`, else the
    `backend` of `$KERAS_HOME/keras.json` (default ~/.keras), else tensorflow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as file:
            return str(json.load(file).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def accelerator() -> str:
    """The name of the GPU Keras' backend computes on, or '' when it computes on the CPU."""
    import keras

    backend = keras.config.backend()
    if backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        return gpus[0].device_kind if gpus else ""
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else ""


def cpu_computes_bfloat16() -> bool:
    """Whether this machine's CPU has bfloat16 arithmetic units (x86 AVX512-BF16 or AMX, Arm BF16), from
    /proc/cpuinfo; False where that file is missing (not Linux)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported and its devices queried (where CUDA start-up logs) without the start-up noise."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf
