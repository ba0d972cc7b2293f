"""Export a fer-lab model for deployment: an ONNX or TFLite file that runs without fer-lab, and its contract.

Beside the model file goes a JSON contract: the class labels in output order, the input (float32
grayscale pixels 0..255, NHWC, the face cropped as the training images frame it) and the output
(softmax probabilities), where the model came from, and how closely the exported file reproduced the
Keras model's probabilities on a fixed probe batch when it was written. ONNX goes through tf2onnx from
an inference-mode trace; TFLite through Keras' LiteRT exporter with TFLite built-in ops only, so the
file runs in the plain interpreter (`ai_edge_litert`). `quantize` makes a TFLite file's weights int8
(dynamic range: no calibration data, activations stay float) and an ONNX file's weights and activations
int8 (static: activation ranges calibrated on CALIBRATION_IMAGES training images of a dataset the caller
names, so its convolutions run as int8; about 1.5x the float file's images/s on these CPUs).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fer_lab import __version__
from fer_lab._shared import one_line, write_atomic
from fer_lab.apply import inference
from fer_lab.errors import ConfigError
from fer_lab.training.deploy import (
    PROBE_IMAGES,
    probe_batch,
    write_onnx,
    write_onnx_int8,
    write_tflite,
)

FORMATS = ("onnx", "tflite")
MODEL_STEM = "model"
CALIBRATION_IMAGES = 512


@dataclass(frozen=True)
class Exported:
    """What `export_model` wrote."""

    model_file: Path
    contract_file: Path
    contract: dict[str, Any]


def export_model(reference: str, fmt: str, out_dir: str | os.PathLike[str], *, quantize: bool = False,
                 calibration: str | os.PathLike[str] | None = None, tracking_uri: str = "") -> Exported:
    """Write model `reference` as `<out_dir>/model.onnx` or `model.tflite`, with `model.json` beside it.

    Args:
        reference: Any model reference (`fer_lab.tracking.resolve_model`).
        fmt: onnx or tflite.
        out_dir: The folder to write to (created).
        quantize: int8 weights (tflite), int8 weights and activations (onnx, needs `calibration`).
        calibration: A dataset fer-lab reads whose training images calibrate an int8 ONNX file's activations.
        tracking_uri: The store; empty: $MLFLOW_TRACKING_URI, else the project's.

    Returns:
        The files written and the contract.
    """
    from fer_lab import tracking

    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r}: choose {' or '.join(FORMATS)}")
    if calibration is not None and not (quantize and fmt == "onnx"):
        raise ConfigError("--calibration goes with --format onnx --quantize (int8 activations need it)")
    if quantize and fmt == "onnx" and calibration is None:
        raise ConfigError("--quantize with onnx makes activations int8 too: name the images that calibrate their "
                          f"ranges with --calibration DATA ({CALIBRATION_IMAGES} of its training images are used)")
    loaded = inference.load_model(reference, tracking_uri, runtime="keras")
    ref = tracking.resolve_model(reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_file = out / f"{MODEL_STEM}.{fmt}"
    model, labels, input_size = loaded.model, loaded.labels, loaded.input_size
    probe = probe_batch(input_size)
    calibration_pixels = held_out = None
    if calibration is not None:
        calibration_pixels, held_out = calibration_split(calibration, input_size)
    # Before the export: Keras' exporters refuse a loaded model that has never been called.
    expected = np.asarray(model.predict(probe, verbose=0), dtype=np.float64)
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        partial = Path(scratch) / model_file.name
        try:
            _write(model, fmt, partial, quantize, calibration_pixels)
        except Exception as error:  # converters raise many types; the message says which step failed
            raise ConfigError(f"cannot export {reference!r} to {fmt}: {one_line(error)[:300]}") from error
        os.replace(partial, model_file)
    got = run_exported(model_file, probe)
    contract = {
        "format": fmt, "quantized": bool(quantize), "file": model_file.name,
        "labels": list(labels),
        "input": {"shape": [None, input_size, input_size, 1], "dtype": "float32", "layout": "NHWC",
                  "range": [0, 255], "color": "grayscale",
                  "crop": {"scale": inference.FER2013_SCALE, "lift": inference.FER2013_LIFT,
                           "meaning": "square crop side = scale x face box side, its centre lift x box side above "
                                      "the box centre (dlib HOG boxes), resized to the input size"}},
        "output": {"shape": [None, len(labels)], "dtype": "float32", "meaning": "softmax probabilities"},
        "source": {"reference": ref.reference, "run_id": ref.run_id, "name": ref.name, "version": ref.version,
                   "fer_lab_version": __version__},
        "parity": {"probe_images": PROBE_IMAGES, **_parity(got, expected)},
    }
    if calibration_pixels is not None:
        contract["calibration"] = {"dataset": str(calibration), "images": len(calibration_pixels)}
    if held_out is not None and len(held_out):
        # int8 is judged on faces: smooth random probe images say little about how often the class changes.
        contract["held_out_parity"] = {"dataset": str(calibration), "images": len(held_out), **_parity(
            run_exported(model_file, held_out), np.asarray(model.predict(held_out, verbose=0), dtype=np.float64))}
    contract_file = out / f"{MODEL_STEM}.json"
    write_atomic(contract_file, json.dumps(contract, indent=1) + "\n")
    return Exported(model_file, contract_file, contract)


def _write(model: Any, fmt: str, path: Path, quantize: bool, calibration: np.ndarray | None) -> None:
    if fmt == "tflite":
        write_tflite(model, path, quantize=quantize)
    elif calibration is not None:
        write_onnx_int8(model, path, calibration)
    else:
        write_onnx(model, path)


def _parity(got: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    return {"max_abs_diff": float(np.abs(got - expected).max()),
            "same_class": float((got.argmax(1) == expected.argmax(1)).mean())}


def calibration_split(dataset: str | os.PathLike[str], size: int, count: int = CALIBRATION_IMAGES,
                      held_out: int = CALIBRATION_IMAGES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded draw of `count` training images of `dataset` (all its images when it has no training split) to
    calibrate an int8 file, and up to `held_out` other readable images (any split) to check it on.

    Args:
        dataset: Any dataset fer-lab reads.
        size: The model's input size.
        count: At most this many calibration images.
        held_out: At most this many check images; 0: none.
        seed: The draws' seed.

    Returns:
        The calibration pixels and the held-out pixels (possibly none), float32 (N, size, size, 1) 0..255.
    """
    from fer_lab import data

    manifest = data.build_manifest(dataset)
    readable = manifest[manifest["readable"].astype(bool)]
    train = readable[readable["split"] == "train"]
    rows = train if len(train) else readable
    if rows.empty:
        raise ConfigError(f"{dataset}: no readable images to calibrate with")
    drawn = rows.sample(min(count, len(rows)), random_state=seed)
    rest = readable.drop(drawn.index)
    checked = rest.sample(min(held_out, len(rest)), random_state=seed + 1)
    return tuple(data.load_pixels(dataset, part.reset_index(drop=True), size=size)[..., None].astype(np.float32)
                 if len(part) else np.zeros((0, size, size, 1), np.float32) for part in (drawn, checked))


def run_exported(model_file: str | os.PathLike[str], pixels: np.ndarray) -> np.ndarray:
    """Probabilities of an exported file on float32 pixels (N, size, size, 1), in its own runtime.

    Args:
        model_file: A `.onnx` or `.tflite` file written by `export_model`.
        pixels: float32 (N, size, size, 1) in 0..255.

    Returns:
        (N, classes) float64 probabilities.
    """
    return exported_predictor(model_file)(pixels)


def exported_predictor(model_file: str | os.PathLike[str]) -> Callable[[np.ndarray], np.ndarray]:
    """A function from float32 pixels (N, size, size, 1) to float64 probabilities, for an exported file.

    ONNX runs in ONNX Runtime, TFLite in the LiteRT interpreter: what a deployment without fer-lab uses.
    The session or interpreter is created once and kept, so repeated calls measure inference alone.

    Args:
        model_file: A `.onnx` or `.tflite` file written by `export_model`.

    Returns:
        The predictor.
    """
    from fer_lab.runtime import ExportedModel

    model = ExportedModel(model_file)
    return lambda pixels: np.asarray(model.predict_on_batch(pixels), dtype=np.float64)
