"""A fer-lab model vs the `fer` package's classifier on the same FER2013 PrivateTest images.

    python benchmarks/bench_peers.py --model MODEL [MODEL ...] [--data PATH] [--limit N]
                                     [--tta none|flip|tencrop ...] [--ensemble] [--export RUNTIME ...]
                                     [--peer-python PATH] [--out FILE.json]

Several MODELs (a recipe trained with several seeds) are scored one after another and, below their
rows, their mean: what a recipe is worth, not its luckiest seed. `--ensemble` also scores the average of
their class probabilities, per view (plain, test-time averaged): what the models are worth together.
`--tta` takes one choice for every model or one per model (a model trained on crops is scored with the
ten crops it was made for, the others with their mirror), never `none` beside another choice.
MODEL is a run id, `runs:/ID/model`, `models:/NAME@ALIAS`, `models:/NAME/VERSION` (labels from the MLflow
model's metadata; tracking URI $MLFLOW_TRACKING_URI, else the project's mlruns/mlflow.db) or a `.keras` file
(labels: the seven classes in alphabetical order).

The images are the `PrivateTest_` files of `test/<class>/` in the Kaggle folder layout (3,589 in
FER2013; `--limit N` keeps N of them, evenly spaced). They are already aligned 48x48 face crops, so
no face detector runs: each model classifies the whole image.
  fer-lab  float32 (N, 48, 48, 1) pixels in 0..255, in fixed-size batches (one compiled shape).
           With `--export onnx-int8` (or onnx, tflite, tflite-int8) each model is also written by
           `fer-lab export` into a temporary folder and that file classifies the same batches in ONNX
           Runtime or LiteRT, as a deployment without fer-lab runs it (int8 ONNX: activations calibrated
           on 512 training images of `--data`): the row to hold against `fer`'s quantized TFLite file.
  fer      `fer` 25.10.3's bundled mini-Xception (`fer/data/emotion_model_quantized.tflite`, what
           `FER()` uses by default), fed as `FER.detect_emotions` feeds a face crop: cv2.resize to
           the model's 64x64, then (x / 255 - 0.5) * 2, through `FER._classify_emotions` (one
           TFLite invoke per face). Its outputs are mapped to our classes by `FER._get_labels()`.
Reported per model: accuracy, macro-F1 and recall per class, and images/s: the wall-clock rate of
preprocessing plus classification of the decoded pixels, after a warm-up batch that is not timed
(file decoding is shared and excluded). The machine may be busy, so the CPU time of that same step is
also reported (images per CPU second). Below, each fer-lab row is paired with `fer` image by image: the
images only one of the two gets right and McNemar's p on them (as 05_compare computes it), so a lead
reads as more or less than chance.

`fer`'s own requirements pull PyTorch (facenet-pytorch, for its optional MTCNN detector), moviepy
and more, so it lives in a separate virtual environment and runs in a worker subprocess there
(default `/work/peers-venv/bin/python`, or $FER_PEER_PYTHON, or `--peer-python`). Create it with:

    python3.11 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install "setuptools<81"
    /work/peers-venv/bin/pip install --no-deps fer==25.10.3
    /work/peers-venv/bin/pip install "tensorflow>=2.21,<2.22" "opencv-python-headless<5" pillow requests

`setuptools<81` keeps `pkg_resources`, which `fer.fer` uses to find its model file; `fer.fer` itself
imports only cv2, numpy, requests, tensorflow (for `tf.lite.Interpreter`) and PIL; OpenCV 5 has no
`cv2.CascadeClassifier`, which `FER()` builds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013"
DEFAULT_PEER_PYTHON = "/work/peers-venv/bin/python"
CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
IMAGE_SIZE = 48
BATCH_SIZE = 64
WARM_UP = 64
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
EXPORT_RUNTIMES = ("onnx", "onnx-int8", "tflite", "tflite-int8")

# Runs under the peer Python: argv = pixels.npy (N, 48, 48) uint8, result.npz, warm-up count.
PEER_WORKER = r'''
import logging, sys, time, warnings

warnings.filterwarnings("ignore")  # tf.lite.Interpreter's deprecation notice
import cv2
import numpy as np
import fer
from fer.fer import FER

logging.getLogger("fer").setLevel(logging.WARNING)
pixels_path, result_path, warm_up = sys.argv[1], sys.argv[2], int(sys.argv[3])
detector = FER()  # use_tflite=True by default: the bundled quantized mini-Xception
height, width = FER._tflite_interpreter_cache.get_input_details()[0]["shape"][1:3]


def classify(gray):
    # detect_emotions' steps for a face crop: resize, scale to [-1, 1], classify.
    faces = np.array([cv2.resize(face, (int(width), int(height))) for face in gray], dtype="float32")
    return np.asarray(detector._classify_emotions((faces / 255.0 - 0.5) * 2.0), dtype=np.float32)


pixels = np.load(pixels_path)
classify(pixels[:warm_up])
started, cpu = time.perf_counter(), time.process_time()
probabilities = classify(pixels)
seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
labels = FER._get_labels()
np.savez(result_path, probabilities=probabilities, labels=np.array([labels[i] for i in range(len(labels))]),
         seconds=seconds, cpu_seconds=cpu_seconds, version=fer.__version__)
'''


@dataclass
class Predictions:
    """One model's class probabilities on the benchmark images and the time they took."""

    name: str
    probabilities: np.ndarray
    labels: tuple[str, ...]
    seconds: float
    cpu_seconds: float


@dataclass
class Result:
    """One model's row of the report."""

    model: str
    images: int
    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    images_per_s: float
    images_per_cpu_s: float


def private_test_files(data_dir: Path, limit: int = 0) -> tuple[list[Path], np.ndarray]:
    """PrivateTest image files and their class indices into `CLASSES`, `limit` of them evenly spaced if set.

    Raises:
        SystemExit: when `data_dir` has no PrivateTest images of the seven classes.
    """
    files, targets = [], []
    for index, name in enumerate(CLASSES):
        found = sorted((data_dir / "test" / name).glob("PrivateTest_*"))
        files += found
        targets += [index] * len(found)
    if not files:
        sys.exit(f"bench_peers: no test/<class>/PrivateTest_* images under {data_dir}")
    if 0 < limit < len(files):
        # Evenly spaced over the class-sorted list, so a quick run still sees every class.
        keep = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files, targets = [files[i] for i in keep], [targets[i] for i in keep]
    return files, np.array(targets)


def read_pixels(files: list[Path]) -> np.ndarray:
    """Decode image files to (N, 48, 48) uint8 grayscale (bilinear resize for any other size)."""
    pixels = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for index, path in enumerate(files):
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
                gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            pixels[index] = np.asarray(gray)
    return pixels


def load_fer_lab_model(reference: str) -> tuple[Any, tuple[str, ...]]:
    """The Keras model and its labels in output order, from a `.keras` file or an MLflow reference.

    Raises:
        SystemExit: when the model cannot be loaded or an MLflow model has no labels in its metadata.
    """
    try:
        if reference.endswith(".keras"):
            import keras

            return keras.saving.load_model(reference, compile=False), CLASSES
        import mlflow

        uri = f"runs:/{reference}/model" if RUN_ID.match(reference) else reference
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}")
        labels = (mlflow.models.get_model_info(uri).metadata or {}).get("labels")
        if not labels:
            sys.exit(f"bench_peers: model {uri} has no labels in its MLflow metadata")
        return mlflow.keras.load_model(uri), tuple(labels)
    except Exception as error:  # Keras and MLflow raise many types for a missing file, run or registry entry
        sys.exit(f"bench_peers: cannot load model {reference!r}: {' '.join(str(error).split())[:300]}")


def in_batches(predict: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], np.ndarray]:
    """`predict` over (N, 48, 48) uint8 pixels in batches of exactly BATCH_SIZE (the last one padded).

    One input shape: a Keras predict function is traced once, during the warm-up, never inside the timed run.
    """
    def run(gray: np.ndarray) -> np.ndarray:
        padded = np.zeros((-(-len(gray) // BATCH_SIZE) * BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
        padded[: len(gray), ..., 0] = gray
        parts = [np.asarray(predict(padded[start:start + BATCH_SIZE])) for start in range(0, len(padded), BATCH_SIZE)]
        return np.concatenate(parts)[: len(gray)]
    return run


def timed(name: str, run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray,
          labels: tuple[str, ...]) -> Predictions:
    """`run` over `pixels` after one untimed warm-up batch, with its wall-clock and CPU time."""
    run(pixels[:WARM_UP])
    started, cpu = time.perf_counter(), time.process_time()
    probabilities = run(pixels)
    return Predictions(name, probabilities, labels, time.perf_counter() - started, time.process_time() - cpu)


def predict_fer_lab(reference: str, pixels: np.ndarray, tta: str = "none", crop: int = 44) -> list[Predictions]:
    """Class probabilities of a fer-lab model, timed after one untimed warm-up batch.

    With `tta` (flip or tencrop, as 04_evaluate averages them) a second row scores the averaged views.
    """
    model, labels = load_fer_lab_model(reference)
    size = int(model.input_shape[1])
    if size != IMAGE_SIZE:
        sys.exit(f"bench_peers: model {reference} takes {size}x{size} images, the data is {IMAGE_SIZE}x{IMAGE_SIZE}")
    run = in_batches(model.predict_on_batch)
    rows = [timed(f"fer-lab {reference}", run, pixels, labels)]
    if tta != "none":
        from fer_lab.training.augment import test_time_views

        started, cpu = time.perf_counter(), time.process_time()
        views = test_time_views(pixels, tta, crop)
        averaged = sum(run(view) for view in views) / len(views)
        rows.append(Predictions(f"fer-lab {reference} + {tta}", averaged, labels,
                                time.perf_counter() - started, time.process_time() - cpu))
    return rows


def predict_exported(reference: str, runtime: str, pixels: np.ndarray, calibration: Path) -> Predictions:
    """Class probabilities of `reference` exported by `fer-lab export` and run in ONNX Runtime or LiteRT.

    Raises:
        SystemExit: when fer-lab cannot export the model.
    """
    from fer_lab import tracking
    from fer_lab.apply import export
    from fer_lab.errors import FerLabError

    fmt, _, quantized = runtime.partition("-")
    tracking.configure()
    with tempfile.TemporaryDirectory(prefix="bench_peers_export_") as scratch:
        try:
            exported = export.export_model(reference, fmt, scratch, quantize=bool(quantized),
                                           calibration=calibration if runtime == "onnx-int8" else None)
        except FerLabError as error:
            sys.exit(f"bench_peers: cannot export {reference} as {runtime}: {error}")
        labels = tuple(exported.contract["labels"])
        return timed(f"fer-lab {reference} ({runtime})", in_batches(export.exported_predictor(exported.model_file)),
                     pixels, labels)


def predict_peer(peer_python: str, pixels: np.ndarray) -> Predictions:
    """Class probabilities of `fer`'s classifier, computed by the worker under `peer_python`.

    Raises:
        SystemExit: when the peer environment is missing or the worker fails.
    """
    if not Path(peer_python).exists():
        sys.exit(f"bench_peers: no peer Python at {peer_python}; create it with the commands in "
                 f"{Path(__file__).name}'s docstring (python3.11 -m venv /work/peers-venv, then pip install "
                 f"--no-deps fer==25.10.3 and its classifier's dependencies) or pass --peer-python")
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as scratch:
        pixels_path, result_path = Path(scratch) / "pixels.npy", Path(scratch) / "result.npz"
        np.save(pixels_path, pixels)
        done = subprocess.run([peer_python, "-c", PEER_WORKER, str(pixels_path), str(result_path), str(WARM_UP)],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if done.returncode != 0:
            sys.exit(f"bench_peers: the fer worker under {peer_python} failed:\n{done.stderr[-3000:]}")
        with np.load(result_path) as result:
            return Predictions(f"fer {result['version']} mini-Xception (TFLite)", result["probabilities"],
                               tuple(str(label) for label in result["labels"]),
                               float(result["seconds"]), float(result["cpu_seconds"]))


def in_class_order(predictions: Predictions) -> np.ndarray:
    """The class probabilities with column j the class CLASSES[j] (a model orders its outputs by its labels).

    Raises:
        SystemExit: when the model's labels are not the seven classes.
    """
    if sorted(predictions.labels) != sorted(CLASSES):
        sys.exit(f"bench_peers: {predictions.name} has labels {predictions.labels}, expected {CLASSES}")
    return predictions.probabilities[:, [predictions.labels.index(label) for label in CLASSES]]


def predicted_classes(predictions: Predictions) -> np.ndarray:
    """The index in CLASSES of each image's most probable class."""
    return in_class_order(predictions).argmax(axis=1)


def ensemble(name: str, members: list[Predictions]) -> Predictions:
    """The average of several models' class probabilities, columns in CLASSES order; its time is theirs summed."""
    return Predictions(name, sum(in_class_order(m) for m in members) / len(members), tuple(CLASSES),
                       sum(m.seconds for m in members), sum(m.cpu_seconds for m in members))


def paired_with_peer(ours: list[Predictions], peer: Predictions, targets: np.ndarray) -> list[dict[str, Any]]:
    """McNemar's test of each fer-lab row against the peer on the same images: is the lead more than chance?"""
    from fer_lab.analysis.compare import mcnemar_from_table

    peer_right = predicted_classes(peer) == targets
    rows = []
    for predictions in ours:
        right = predicted_classes(predictions) == targets
        test = mcnemar_from_table(int((right & peer_right).sum()), int((right & ~peer_right).sum()),
                                  int((~right & peer_right).sum()), int((~right & ~peer_right).sum()))
        rows.append({"model": predictions.name, "only_ours": test.only_a, "only_peer": test.only_b,
                     "p_value": test.p_value})
    return rows


def score(predictions: Predictions, targets: np.ndarray) -> Result:
    """Accuracy, macro-F1 (over the classes present in `targets`) and recall per class.

    Raises:
        SystemExit: when the model's labels are not the seven classes.
    """
    predicted = predicted_classes(predictions)
    recall, f1 = {}, []
    for index, name in enumerate(CLASSES):
        actual, chosen = targets == index, predicted == index
        if not actual.any():
            continue
        hits = int((actual & chosen).sum())
        recall[name] = hits / int(actual.sum())
        precision = hits / int(chosen.sum()) if chosen.any() else 0.0
        f1.append(2 * precision * recall[name] / (precision + recall[name]) if hits else 0.0)
    count = len(targets)
    return Result(predictions.name, count, float((predicted == targets).mean()), float(np.mean(f1)), recall,
                  count / predictions.seconds, count / predictions.cpu_seconds)


def mean_result(name: str, results: list[Result]) -> Result:
    """The row of the mean of several models' results (each metric and recall averaged)."""
    return Result(name, results[0].images, float(np.mean([r.accuracy for r in results])),
                  float(np.mean([r.macro_f1 for r in results])),
                  {label: float(np.mean([r.recall[label] for r in results])) for label in results[0].recall},
                  float(np.mean([r.images_per_s for r in results])),
                  float(np.mean([r.images_per_cpu_s for r in results])))


def markdown(results: list[Result]) -> str:
    """The summary table (one row per model) and the recall table (one row per class)."""
    lines = ["| model | images | accuracy | macro-F1 | images/s | images/CPU-s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.model} | {r.images} | {r.accuracy:.2%} | {r.macro_f1:.3f} | {r.images_per_s:,.0f} "
              f"| {r.images_per_cpu_s:,.0f} |" for r in results]
    lines += ["", "| recall | " + " | ".join(r.model for r in results) + " |", "|---|" + "---:|" * len(results)]
    lines += [f"| {name} | " + " | ".join(f"{r.recall[name]:.2f}" for r in results) + " |"
              for name in CLASSES if name in results[0].recall]
    return "\n".join(lines)


def tta_per_model(choices: list[str], models: int, parser: argparse.ArgumentParser) -> list[str]:
    """One `--tta` choice per model: a single choice applies to all; `none` cannot mix with the others."""
    if len(choices) not in (1, models):
        parser.error(f"--tta takes one choice or one per model ({models}), got {len(choices)}")
    if "none" in choices and set(choices) != {"none"}:
        parser.error("--tta none cannot be mixed with flip or tencrop: every model needs the same rows")
    return choices * models if len(choices) == 1 else choices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, nargs="+",
                        help="run id, runs:/ID/model, models:/NAME@ALIAS, models:/NAME/VERSION or a .keras file; "
                             "several: each, then their mean")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"FER2013 in the Kaggle folder layout (default {DEFAULT_DATA})")
    parser.add_argument("--limit", type=int, default=0, help="use N evenly spaced PrivateTest images (default: all)")
    parser.add_argument("--peer-python", default=os.environ.get("FER_PEER_PYTHON", DEFAULT_PEER_PYTHON),
                        help="Python of the environment with `fer` (default $FER_PEER_PYTHON or %(default)s)")
    parser.add_argument("--tta", nargs="+", choices=("none", "flip", "tencrop"), default=["flip"],
                        help="also score fer-lab's models with test-time averaging: one choice for all, or one "
                             "per model (default flip)")
    parser.add_argument("--ensemble", action="store_true",
                        help="with several models, also score the average of their probabilities (per view)")
    parser.add_argument("--tta-crop", type=int, default=44, help="ten-crop side in pixels (default %(default)s)")
    parser.add_argument("--export", nargs="+", default=[], choices=EXPORT_RUNTIMES, metavar="RUNTIME",
                        help=f"also score each model exported by fer-lab export: {', '.join(EXPORT_RUNTIMES)}")
    parser.add_argument("--out", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    ttas = tta_per_model(args.tta, len(args.model), parser)

    files, targets = private_test_files(args.data, args.limit)
    pixels = read_pixels(files)
    # The peer first: a missing peer environment fails before the slow Keras and MLflow imports.
    peer = predict_peer(args.peer_python, pixels)
    our_predictions = [predict_fer_lab(model, pixels, tta, args.tta_crop) for model, tta in zip(args.model, ttas)]
    views = range(len(our_predictions[0]))  # plain, then test-time averaged
    suffixes = ["", " + " + "/".join(dict.fromkeys(ttas))]
    ours = [[score(row, targets) for row in rows] for rows in our_predictions]
    exported = [score(predict_exported(model, runtime, pixels, args.data), targets)
                for model in args.model for runtime in args.export]
    means, ensembles = [], []
    if len(args.model) > 1:
        means = [mean_result(f"fer-lab mean of {len(ours)}{suffixes[view]}", [rows[view] for rows in ours])
                 for view in views]
        if args.ensemble:
            ensembles = [ensemble(f"fer-lab ensemble of {len(ours)}{suffixes[view]}",
                                  [rows[view] for rows in our_predictions]) for view in views]
    results = [*(row for rows in ours for row in rows), *means, *(score(row, targets) for row in ensembles),
               *exported, score(peer, targets)]
    print(f"FER2013 PrivateTest, {len(files)} images from {args.data}\n")
    print(markdown(results))
    paired = paired_with_peer([*(row for rows in our_predictions for row in rows), *ensembles], peer, targets)
    print(f"\n| paired with {peer.name} | right only here | right only in {peer.name} | McNemar p |\n|---|---:|---:|---:|")
    print("\n".join(f"| {row['model']} | {row['only_ours']} | {row['only_peer']} | {row['p_value']:.2g} |" for row in paired))
    if args.out:
        args.out.write_text(json.dumps({"data": str(args.data), "images": len(files),
                                        "models": [asdict(r) for r in results], "paired_with_peer": paired},
                                       indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
