"""Apply a trained model to photos: find faces, crop them as the training images frame them, classify in batches.

A full-size photo is not a 48x48 FER image: faces are anywhere, at any size. The face detector
(`fer_lab.faces.detector`, the one `fer_lab.faces.detection` uses on FER images) finds faces of
about 80 pixels and up in the image it is given, so `FaceDetector` downscales a large photo to at
most `max_side` pixels and maps the boxes back (x1/y1 exclusive, as that module documents). Each
face is then cut from the full-resolution grayscale image as a square framed the way the training
images frame their faces (`Framing`, measured on the training data by `measure_framing`) and
converted with `imaging.to_model_input`, the function training's pixel loading uses, so the model
sees pixels prepared exactly as in training.
Drawing boxes and labels is `fer_lab.apply.annotate`'s.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from fer_lab._shared import chunks, one_line
from fer_lab.apply.align import level_eyes
from fer_lab.apply.annotate import annotate
from fer_lab.apply.framing import (  # noqa: F401  (re-exported: callers take the framing from inference)
    FER2013_LIFT,
    FER2013_SCALE,
    Framing,
    measure_framing,
    training_framing,
)
from fer_lab.data import IMAGE_EXTENSIONS, imaging
from fer_lab.data.labels import probability_column
from fer_lab.errors import ConfigError, DataError, FerLabError
from fer_lab.faces.detector import BOX_COLUMNS, FaceDetector
from fer_lab.runtime import INFERENCE_ARTIFACT, ExportedModel

# Larger images are refused rather than decoded: 100 Mpx is several times any camera's output.
MAX_PIXELS = 100_000_000
RUNTIMES = ("auto", "keras")
# References `load_model` may read from disk without MLflow: a run id, or that run's logged model.
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})/model/?$")


def face_square(box: Sequence[float], framing: Framing = Framing()) -> tuple[int, int, int]:
    """The square crop (left, top, side) framing a detected face box like a training image."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    crop = max(1, round(side * framing.scale))
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2 - framing.lift * side
    return round(centre_x - crop / 2), round(centre_y - crop / 2), crop


def crop_face(gray: np.ndarray, box: Sequence[float], framing: Framing = Framing()) -> np.ndarray:
    """The square around a face box, with borders replicated where it reaches past the image."""
    left, top, side = face_square(box, framing)
    height, width = gray.shape
    pad_left, pad_top = max(0, -left), max(0, -top)
    pad_right, pad_bottom = max(0, left + side - width), max(0, top + side - height)
    inside = gray[max(0, top):min(height, top + side), max(0, left):min(width, left + side)]
    if not (pad_left or pad_top or pad_right or pad_bottom):
        return inside
    if inside.size == 0:
        raise ConfigError(f"face box {tuple(round(v) for v in box)} lies outside the {width}x{height} image")
    return np.pad(inside, ((pad_top, pad_bottom), (pad_left, pad_right)), mode="edge")


def face_inputs(gray: np.ndarray, boxes: np.ndarray, size: int = imaging.MODEL_SIZE,
                framing: Framing = Framing(), eyes: np.ndarray | None = None) -> np.ndarray:
    """Model inputs for the faces at `boxes`, via `imaging.to_model_input`.

    Args:
        gray: The 2-D uint8 image.
        boxes: (K, 4) face boxes in its pixels.
        size: The model's input side.
        framing: How training images frame their faces.
        eyes: (K, 2, 2) eye centres; faces with them are turned upright first (`align.level_eyes`).

    Returns: (K, size, size) uint8 pixels.
    """
    out = np.empty((len(boxes), size, size), dtype=np.uint8)
    for index, box in enumerate(boxes):
        image, box = (gray, box) if eyes is None else level_eyes(gray, box, eyes[index])
        out[index] = imaging.to_model_input(crop_face(image, box, framing), size)
    return out


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as 2-D uint8 grayscale (`imaging.to_gray`), upright per its EXIF orientation.

    Raises DataError naming the file when it cannot be decoded or has more than `max_pixels`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise DataError(_too_large(path, width, height, max_pixels))
                return imaging.to_gray(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:
        sizes = re.findall(r"\d+", str(error))
        pixels = f"{int(sizes[0]) / 1e6:.0f} Mpx" if sizes else "too many pixels"
        raise DataError(f"{path}: image is too large to read ({pixels}; the limit is {max_pixels / 1e6:.0f} Mpx)") from error
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such file") from error
    except Image.UnidentifiedImageError as error:
        raise DataError(f"{path}: not an image this predictor can read") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise DataError(f"{path}: cannot decode image ({one_line(error)})") from error


def _too_large(path: Path, width: int, height: int, max_pixels: int) -> str:
    return (f"{path}: image is {width}x{height} ({width * height / 1e6:.0f} Mpx), more than the "
            f"{max_pixels / 1e6:.0f} Mpx limit; downscale it first")


def image_files(path: str | os.PathLike[str]) -> list[Path]:
    """The image files to predict on: `path` itself, or the images in folder `path` (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(f"{path}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


@dataclass
class LoadedModel:
    """A trained classifier with its class names, as `load_model` returns it."""

    model: Any
    labels: tuple[str, ...]
    reference: str
    input_size: int = imaging.MODEL_SIZE
    runtime: str = "keras"  # or tflite: the run's TFLite copy in the LiteRT interpreter (`fer_lab.runtime`)


def load_model(reference: str, tracking_uri: str = "", runtime: str = "auto") -> LoadedModel:
    """Load a model from any model reference `fer_lab.tracking.resolve_model` takes.

    A run's model in a local sqlite store is read from disk without starting MLflow (`tracking.local`):
    its TFLite copy when the run logged one (no TensorFlow start-up), else its Keras file. Everything
    else goes through `tracking.load_reference`.

    Args:
        reference: A run id, `runs:/ID/model`, `models:/NAME@ALIAS`, `models:/NAME/VERSION`, an MLflow
            model folder or a `.keras` file written by fer-lab.
        tracking_uri: The store; empty: $MLFLOW_TRACKING_URI, else the project's.
        runtime: auto (the run's TFLite copy where there is one) or keras (always the Keras model).

    Returns:
        The model with its class labels, checked against the input and output contract.
    """
    from fer_lab import tracking
    from fer_lab.tracking import local

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r}: choose {' or '.join(RUNTIMES)}")
    reference = str(reference).strip()
    if not reference:
        raise FerLabError("no model given: pass a run id or a model reference such as runs:/<run id>/model")
    run_match = _RUN_ID.match(reference) or _RUNS_URI.match(reference)
    run_id = (run_match.group(1) if run_match.re is _RUNS_URI else reference) if run_match else ""
    copy = local.run_artifact(run_id, f"{INFERENCE_ARTIFACT}/model.json", tracking_uri) if (
        run_id and runtime == "auto") else None
    if copy is not None:
        try:
            contract = json.loads(copy.read_text())
            model = ExportedModel(copy.parent / contract["file"])
            return _checked(model, tuple(contract["labels"]), reference, contract["format"])
        except ImportError:  # no LiteRT here: the Keras model
            pass
        except Exception as error:  # the interpreter raises types of its own for a damaged file
            warnings.warn(f"{copy.parent}: the TFLite copy cannot be used ({one_line(error)}); loading the Keras model",
                          stacklevel=2)
    folder = local.local_model_dir(run_id, tracking_uri) if run_id else None
    found = local.load_local_model(folder) if folder else None
    if found and found[1].get("labels"):
        return _checked(found[0], tuple(found[1]["labels"]), reference)
    tracking.configure(tracking_uri)
    model, labels, _ = tracking.load_reference(reference)
    return _checked(model, tuple(labels), reference)


def _checked(model: Any, labels: tuple[str, ...], reference: str, runtime: str = "keras") -> LoadedModel:
    input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    if len(input_shape) != 4 or input_shape[1] != input_shape[2] or input_shape[3] != 1:
        raise FerLabError(f"model {reference} takes {input_shape}, not (N, size, size, 1) grayscale pixels")
    if output_shape[-1] != len(labels):
        raise FerLabError(f"model {reference} has {output_shape[-1]} outputs but {len(labels)} labels")
    return LoadedModel(model, labels, reference, int(input_shape[1]), runtime)


def default_model_reference(experiment: str = "fer-lab", parent_run_id: str = "", tracking_uri: str = "") -> str:
    """The run id of the training run (tag notebook=03_train) of pipeline `parent_run_id`, else the latest finished one."""
    from fer_lab import tracking

    tracking.configure(tracking_uri)
    try:
        return tracking.resolve_training_run(experiment, parent_run_id)
    except FerLabError as error:
        raise FerLabError(f"no model given and none found: experiment {experiment!r} has no finished 03_train run; "
                          "run 03_train first or name a model (run id, runs:/ID/model or models:/NAME/VERSION)") from error


def probability_columns(labels: Iterable[str]) -> list[str]:
    """Column names of the class probabilities in prediction tables."""
    return [probability_column(label) for label in labels]


@dataclass
class Predictor:
    """Faces in, class probabilities out: detection, FER-style crops and batched model calls."""

    loaded: LoadedModel
    detector: FaceDetector = field(default_factory=FaceDetector)
    batch_size: int = 32
    framing: Framing = field(default_factory=Framing)
    align: bool = True  # turn faces upright (eyes level) when the detector gives eyes

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's class names, in output order."""
        return self.loaded.labels

    def inputs(self, gray: np.ndarray, boxes: np.ndarray, eyes: np.ndarray | None = None) -> np.ndarray:
        """Model inputs for the faces at `boxes` in a grayscale image, upright when `eyes` are given and `align` is on."""
        return face_inputs(gray, boxes, self.loaded.input_size, self.framing, eyes if self.align else None)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 model inputs (N, size, size), `batch_size` at a time.

        Every call to the model gets exactly `batch_size` images (the last batch padded): Keras
        compiles its predict function once per input shape, which costs seconds for a large
        network, so a single shape keeps a video's varying face counts from recompiling it.
        """
        count = len(inputs)
        if count == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        padded = -(-count // self.batch_size) * self.batch_size
        size = self.loaded.input_size
        pixels = np.zeros((padded, size, size, 1), dtype=np.float32)
        pixels[:count, ..., 0] = inputs
        parts = [np.asarray(self.loaded.model.predict_on_batch(pixels[start:start + self.batch_size]))
                 for start in range(0, padded, self.batch_size)]
        return np.concatenate(parts)[:count].astype(np.float32)

    def warm_up(self) -> None:
        """Compile the model's predict function now (one batch of blank images), so timings exclude it."""
        self.probabilities(np.zeros((1, self.loaded.input_size, self.loaded.input_size), dtype=np.uint8))

    def predict_gray(self, gray: np.ndarray) -> pd.DataFrame:
        """One row per face found in a grayscale image (see `face_table`)."""
        boxes, scores, eyes = self.detector.detect(gray)
        return face_table(boxes, scores, self.probabilities(self.inputs(gray, boxes, eyes)), self.labels)

    def predict_image(self, image: Image.Image | np.ndarray) -> pd.DataFrame:
        """One row per face in an image (PIL or array, any size, colour or grayscale)."""
        return self.predict_gray(imaging.to_gray(image))

    def predict_files(self, paths: Sequence[str | os.PathLike[str]], *, chunk: int = 16,
                      progress: bool = False) -> ImagePredictions:
        """Faces in image files: detection per file, one model call per `chunk` files.

        A file that cannot be read gets one row with its `error`; the others go on. A file
        without faces gets one row with no face and no probabilities.
        """
        from tqdm.auto import tqdm

        tables = []
        with tqdm(total=len(paths), desc="images", unit="img", disable=not progress) as bar:
            for batch in chunks([Path(path) for path in paths], chunk):
                # Only boxes and 48x48 inputs are kept per file, not the decoded photos.
                found = [self._faces_in_file(path) for path in batch]
                inputs = [face.inputs for face in found]
                probabilities = np.split(self.probabilities(np.concatenate(inputs)),
                                         np.cumsum([len(part) for part in inputs])[:-1])
                for path, face, probs in zip(batch, found, probabilities):
                    table = face_table(face.boxes, face.scores, probs, self.labels) if len(face.boxes) \
                        else no_face_row(self.labels)
                    table.insert(0, "path", str(path))
                    table.insert(1, "height", face.height)
                    table.insert(2, "width", face.width)
                    table["error"] = face.error
                    tables.append(table)
                bar.update(len(batch))
        table = pd.concat(tables, ignore_index=True)
        table[["height", "width"]] = table[["height", "width"]].astype("Int64")
        return ImagePredictions(table, self.labels)

    def _faces_in_file(self, path: Path) -> _FileFaces:
        """Detections and model inputs of one file; an unreadable file gives none and its error."""
        try:
            gray = read_image(path)
        except FerLabError as error:
            size = self.loaded.input_size
            return _FileFaces(pd.NA, pd.NA, np.zeros((0, 4)), np.zeros(0), np.zeros((0, size, size), np.uint8), str(error))
        boxes, scores = self.detector(gray)
        return _FileFaces(gray.shape[0], gray.shape[1], boxes, scores, self.inputs(gray, boxes), "")


@dataclass
class _FileFaces:
    height: Any
    width: Any
    boxes: np.ndarray
    scores: np.ndarray
    inputs: np.ndarray
    error: str


def face_table(boxes: np.ndarray, scores: np.ndarray, probabilities: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Per-face rows: face (0.. in score order), box x0,y0,x1,y1, detector score, label, confidence, p_<label>.

    Args:
        boxes: (K, 4) face boxes.
        scores: (K,) detector scores.
        probabilities: (K, classes) model outputs.
        labels: The class names, in output order.

    Returns:
        One row per face.
    """
    probabilities = np.asarray(probabilities, dtype=float).reshape(-1, len(labels))
    table = pd.DataFrame(np.asarray(boxes, dtype=float).reshape(-1, 4), columns=list(BOX_COLUMNS))
    table.insert(0, "face", pd.array(np.arange(len(table)), dtype="Int64"))
    table["score"] = np.asarray(scores, dtype=float)
    table["label"] = np.asarray(labels, dtype=object)[probabilities.argmax(axis=1)] if len(table) else []
    table["label"] = table["label"].astype(object)
    table["confidence"] = probabilities.max(axis=1) if len(table) else np.zeros(0)
    table[probability_columns(labels)] = probabilities
    return table


def no_face_row(labels: Sequence[str]) -> pd.DataFrame:
    """The single row recorded for an image or frame without faces: no face id, label "", NaN numbers."""
    table = face_table(np.full((1, 4), np.nan), np.full(1, np.nan), np.zeros((1, len(labels))), labels)
    table["face"] = pd.array([pd.NA], dtype="Int64")
    table["label"] = ""
    table[["confidence", *probability_columns(labels)]] = np.nan
    return table


@dataclass
class ImagePredictions:
    """Per-face rows for a set of image files, with rows for files without faces or unreadable."""

    table: pd.DataFrame
    labels: tuple[str, ...]

    @property
    def faces(self) -> pd.DataFrame:
        """Only the rows that are faces."""
        return self.table[self.table["face"].notna()].reset_index(drop=True)

    @property
    def errors(self) -> pd.DataFrame:
        """path and error of the files that could not be read."""
        return self.table.loc[self.table["error"] != "", ["path", "error"]].reset_index(drop=True)

    def messages(self) -> list[str]:
        """One-line problems a user should see: unreadable files, and no faces anywhere."""
        lines = [f"{len(self.errors)} of {self.table['path'].nunique()} files unreadable; first: "
                 f"{self.errors['error'].iloc[0]}"] if len(self.errors) else []
        readable = self.table.loc[self.table["error"] == "", "path"].nunique()
        if readable and self.faces.empty:
            lines.append(f"no faces found in any of the {readable} readable images; the detector needs faces of "
                         "about 80 px and more in photos or frames; face crops such as FER2013's 48 px images "
                         "are classified directly with fer-lab predict PATH --crops")
        return lines

    def annotated(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The image file `path` in colour, upright, with its faces' boxes and labels drawn on it."""
        with Image.open(path) as image:
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        return annotate(rgb, self.table[self.table["path"] == str(path)])

    def short_names(self) -> dict[str, str]:
        """Each image's path relative to the folder holding all of them: unique where base names are not."""
        paths = list(self.table["path"].unique())
        root = Path(os.path.commonpath([str(Path(path).parent) for path in paths])) if paths else Path()
        return {path: Path(path).relative_to(root).as_posix() for path in paths}

    def save(self, out_dir: str | os.PathLike[str], *, annotated: bool = True) -> list[Path]:
        """Write `predictions.csv` (every row) and, with `annotated`, `<name>_annotated.jpg` per readable image.

        Annotated images keep the input's subfolders (`happy/001.jpg` and `sad/001.jpg` both get one), and
        images that differ only in extension (`a.jpg`, `a.png`) keep it in the name (`a_png_annotated.jpg`).
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [out_dir / "predictions.csv"]
        self.table.to_csv(written[0], index=False)
        if annotated:
            readable = set(self.table.loc[self.table["error"] == "", "path"])
            relative = {path: Path(name) for path, name in self.short_names().items() if path in readable}
            stems = pd.Series([name.with_suffix("").as_posix().lower() for name in relative.values()])
            shared = set(stems[stems.duplicated(keep=False)])
            for path, name in relative.items():
                keep_suffix = name.with_suffix("").as_posix().lower() in shared
                target = out_dir / name.parent / (f"{name.stem}_{name.suffix[1:]}_annotated.jpg" if keep_suffix
                                                  else f"{name.stem}_annotated.jpg")
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(self.annotated(path)).save(target, quality=90)
                written.append(target)
        return written
