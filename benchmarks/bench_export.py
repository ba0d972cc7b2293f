"""Exported models: images/s and agreement of ONNX Runtime and LiteRT (float and int8) against Keras.

    python benchmarks/bench_export.py [--model REF] [--data PATH] [--split test] [--limit N] [--batch 64]

The model (any reference `fer-lab export` takes; default: the CPU recipe's CNN with random weights,
since speed does not depend on the weights) is exported to ONNX, int8 ONNX (calibrated on 512 training
images of `--data`), TFLite and int8-weight TFLite in a temporary folder, and each file classifies the
same images (the `--split` images of `--data`, default the embedded sample) in batches of `--batch`,
after one untimed warm-up batch:
  keras        the model as fer-lab runs it (`model.predict_on_batch`);
  onnx         ONNX Runtime, CPU provider;
  onnx-int8    ONNX Runtime, int8 weights and activations (static quantization, QDQ);
  tflite       the LiteRT interpreter, float32;
  tflite-int8  the LiteRT interpreter, dynamic-range int8 weights.
Reported per runtime: images/s (wall clock), max |p - p_keras| and the share of images given the same
class as Keras, and accuracy when the images have labels the model knows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from fer_lab import data, project, tracking  # noqa: E402
from fer_lab.apply import export  # noqa: E402
from fer_lab.data import synthetic  # noqa: E402


def timed(predict, pixels: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """Probabilities over `pixels` in batches, and images/s after an untimed warm-up batch."""
    predict(pixels[:batch])
    started = time.perf_counter()
    out = np.concatenate([predict(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])
    return out, len(pixels) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model reference (default: the recipe CNN, random weights)")
    parser.add_argument("--data", default="", help="dataset (default: the embedded sample)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    data_path = synthetic.resolve_dataset(args.data or project.SAMPLE_DIR)
    manifest = data.build_manifest(data_path)
    rows = manifest[manifest["readable"] & (manifest["split"] == args.split)].reset_index(drop=True)
    if args.limit:
        rows = rows.iloc[np.linspace(0, len(rows) - 1, min(args.limit, len(rows))).astype(int)].reset_index(drop=True)
    pixels = data.load_pixels(data_path, rows)[..., None].astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        if args.model:
            tracking.configure()
            reference = args.model
        else:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from bench_video import recipe_model

            loaded = recipe_model()
            reference = str(Path(scratch) / "recipe.keras")
            loaded.model.save(reference)
            Path(scratch, "labels.json").write_text(json.dumps({"labels": list(loaded.labels)}))
        model, labels, _ = tracking.load_reference(reference)
        files = {"onnx": export.export_model(reference, "onnx", Path(scratch) / "onnx").model_file,
                 "onnx-int8": export.export_model(reference, "onnx", Path(scratch) / "onnx-int8", quantize=True,
                                                  calibration=data_path).model_file,
                 "tflite": export.export_model(reference, "tflite", Path(scratch) / "tflite").model_file,
                 "tflite-int8": export.export_model(reference, "tflite", Path(scratch) / "int8", quantize=True).model_file}
        truth = np.array([labels.index(label) if label in labels else -1 for label in rows["label"]])
        expected, rate = timed(lambda x: np.asarray(model.predict_on_batch(x)), pixels, args.batch)
        print(f"{len(pixels)} {args.split} images of {data_path.name}, batches of {args.batch}, model {args.model or 'recipe CNN (random)'}")
        print(f"{'runtime':12} {'images/s':>9} {'max|dp|':>9} {'same class':>10} {'accuracy':>9} {'MB':>6}")
        known = truth >= 0
        rows_out = [("keras", expected, rate, 0.0)]
        for name, path in files.items():
            got, rate = timed(export.exported_predictor(path), pixels, args.batch)
            rows_out.append((name, got, rate, path.stat().st_size / 1e6))
        for name, got, rate, size in rows_out:
            accuracy = (got.argmax(1)[known] == truth[known]).mean() if known.any() else float("nan")
            print(f"{name:12} {rate:9.0f} {np.abs(got - expected).max():9.1e} "
                  f"{(got.argmax(1) == expected.argmax(1)).mean():10.1%} {accuracy:9.1%} {size or float('nan'):6.2f}")


if __name__ == "__main__":
    main()
