"""Face detection on small grayscale images, in parallel over all cores, cached on disk.

dlib's HOG detector looks at 80x80 windows, so a 48x48 FER image is first resized once to
`size` pixels (bicubic) and given a replicated border of `padding` (a fraction of `size`) so the
window fits around a face that fills the frame. Resizing once (to 96 pixels by default) and
running the detector without its own upsampling (`upsample=0`) costs what dlib's `upsample=1`
costs on the 48x48 image, but lets the size be chosen freely; every further upsampling step
multiplies the cost by about four. At size 96 the window already covers most of the frame, and
padding, which adds a pyramid level (about 1.5-2x the time), did not improve the trade-off on
FER2013, so the default uses none (see the sweep in notebook 02 and benchmarks/bench_faces.py).

The detector is `fer_lab.faces.detector.Detector` (the one dlib detector, with its box convention:
x1/y1 exclusive); boxes are mapped back to the 48x48 image's pixels and rounded to 0.01 pixel.

Every detection is stored in an sqlite file per detector configuration, keyed by the sha1 of the
image's pixels. The HOG detector is run with a low score floor and its detections above it are kept,
so the decision threshold can change without detecting again. Finished chunks are committed as
they arrive, so an interrupted run resumes where it stopped.

Besides detections, each image gets the cheap pixel statistics of `fer_lab.faces.content`
(`grey_range`, `flatness`, `noise`) that `fer_lab.faces.filtering` decides with.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from fer_lab._shared import available_cores, chunks, one_line
from fer_lab.errors import ConfigError, CorruptCacheWarning, DataError
from fer_lab.faces.content import STATISTICS, content_statistics
from fer_lab.faces.detector import Detector, Model, check_model, to_original

if TYPE_CHECKING:  # pandas is imported where tables are built: detector workers never need it
    import pandas as pd

# The lowest HOG score kept in the cache; far below any useful threshold, so sweeps reuse it.
HOG_SCORE_FLOOR = -2.5
# At most this many detections are stored per image (best first).
MAX_DETECTIONS = 8
# Two detections whose intersection covers more than this share of the smaller box are one face.
SAME_FACE_OVERLAP = 0.3
# The CNN (MMOD) detector reports only detections it accepts, so its scores start at 0.
CNN_SCORE_FLOOR = 0.0
# 4: boxes follow the detector's convention (x1/y1 exclusive) and the statistic is named grey_range.
CACHE_VERSION = 4
# Below this many images a process pool costs more to start than it saves.
MIN_IMAGES_FOR_POOL = 2000
RESULT_COLUMNS = ("face_found", "n_faces", "face_score", "box_x0", "box_y0", "box_x1", "box_y1",
                  *STATISTICS)


@dataclass(frozen=True)
class DetectorSettings:
    """How to detect faces; `threshold` only decides, the other fields define what is cached."""

    model: Model = "hog"
    size: int = 96
    padding: float = 0.0
    upsample: int = 0
    threshold: float = -1.8

    def __post_init__(self) -> None:
        check_model(self.model)
        if not 16 <= self.size <= 1024:
            raise ConfigError(f"detector size must be between 16 and 1024 pixels, not {self.size}")
        if not 0.0 <= self.padding <= 1.0:
            raise ConfigError(f"detector padding must be a fraction between 0 and 1, not {self.padding}")
        if not 0 <= self.upsample <= 3:
            raise ConfigError(f"detector upsample must be 0..3, not {self.upsample}")

    @property
    def score_floor(self) -> float:
        """The lowest score the detector is asked to report."""
        if self.model == "cnn":
            return CNN_SCORE_FLOOR
        return min(HOG_SCORE_FLOOR, self.threshold)

    @property
    def pad_pixels(self) -> int:
        """The replicated border around the resized image, in pixels."""
        return int(round(self.padding * self.size))

    def cache_name(self) -> str:
        """File stem naming everything that changes a detection (not the decision threshold)."""
        fields = {k: v for k, v in asdict(self).items() if k != "threshold"}
        fields.update(floor=self.score_floor, version=CACHE_VERSION)
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.model}-s{self.size}-p{self.padding:g}-u{self.upsample}-{digest}"

    def label(self) -> str:
        """Short human-readable description, for tables and plots."""
        return f"{self.model} size={self.size} pad={self.padding:g} up={self.upsample} thr={self.threshold:g}"


@dataclass
class Detections:
    """Per-image results in input order, and how many were computed vs read from the cache."""

    table: pd.DataFrame
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0
    settings: DetectorSettings = field(default_factory=DetectorSettings)


def pixel_key(image: np.ndarray) -> str:
    """sha1 of an image's uint8 pixels: the cache key, identical for exact duplicates."""
    return hashlib.sha1(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


def prepare(image: np.ndarray, settings: DetectorSettings) -> np.ndarray:
    """The image the detector sees: resized to `size` (bicubic) with a replicated border."""
    resized = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((settings.size, settings.size),
                                                                          Image.Resampling.BICUBIC)
    pixels = np.asarray(resized)
    pad = settings.pad_pixels
    return np.pad(pixels, pad, mode="edge") if pad else pixels


class _Detector:
    """The detector on `prepare`d images, boxes mapped back to the original image's pixels."""

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self._detector = Detector(settings.model)

    def __call__(self, image: np.ndarray) -> list[list[float]]:
        """Detections as [score, x0, y0, x1, y1] in `image`'s pixels, best first, at most MAX_DETECTIONS."""
        boxes, scores = self._detector(prepare(image, self.settings), self.settings.upsample, self.settings.score_floor)
        height, width = image.shape
        scale = (width / self.settings.size, height / self.settings.size)
        placed = to_original(boxes[:MAX_DETECTIONS], scale, image.shape, self.settings.pad_pixels).round(2)
        return [[round(float(score), 4), *map(float, box)] for score, box in zip(scores, placed)]


_worker_detector: _Detector | None = None


def _init_worker(settings: DetectorSettings) -> None:
    global _worker_detector
    _worker_detector = _Detector(settings)


def _detect_chunk(chunk: tuple[list[str], np.ndarray]) -> list[tuple[Any, ...]]:
    """Cache rows for one chunk of images (runs in a worker process)."""
    keys, images = chunk
    assert _worker_detector is not None
    return [_cache_row(key, image, _worker_detector) for key, image in zip(keys, images)]


def _cache_row(key: str, image: np.ndarray, detector: _Detector) -> tuple[Any, ...]:
    return (key, json.dumps(detector(image)), *content_statistics(image))


class FaceCache:
    """sqlite table of detections for one detector configuration under `cache_dir`."""

    def __init__(self, cache_dir: str | os.PathLike[str], settings: DetectorSettings) -> None:
        self.path = Path(cache_dir) / f"{settings.cache_name()}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as error:
            # A truncated or overwritten cache holds nothing worth keeping: detect again.
            warnings.warn(f"{self.path}: corrupt face-detection cache ({one_line(error)}); rebuilding it",
                          CorruptCacheWarning, stacklevel=2)
            for stale in self.path.parent.glob(f"{self.path.name}*"):
                stale.unlink()
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS detections (sha1 TEXT PRIMARY KEY, detections TEXT NOT NULL, "
                "grey_range REAL NOT NULL, flatness REAL NOT NULL, noise REAL NOT NULL)"
            )
            db.commit()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def get(self, keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """Stored rows for those of `keys` that are cached."""
        wanted = set(keys)
        rows = self._db.execute("SELECT * FROM detections").fetchall() if len(wanted) > 5000 else [
            row for batch in chunks(sorted(wanted), 900) for row in self._db.execute(
                f"SELECT * FROM detections WHERE sha1 IN ({','.join('?' * len(batch))})", batch)]
        return {row[0]: row for row in rows if row[0] in wanted}

    def put(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Store rows and commit at once, so they survive an interruption."""
        self._db.executemany("INSERT OR REPLACE INTO detections VALUES (?,?,?,?,?)", rows)
        self._db.commit()

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()


def detect(
    images: np.ndarray,
    settings: DetectorSettings = DetectorSettings(),
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    keys: Sequence[str] | None = None,
    workers: int | None = None,
    chunk_size: int = 256,
    progress: bool = False,
) -> Detections:
    """Detect faces in grayscale images; one result row per image, in order.

    Args:
        images: uint8 (N, H, W) pixels.
        settings: How to detect (and, by its threshold, decide).
        cache_dir: Where the sqlite cache lives; None: nothing is stored.
        keys: Names of the images in the cache (default: pixel sha1); equal keys are detected once.
        workers: Detector processes; default all cores, or this process alone for fewer than
            MIN_IMAGES_FOR_POOL images to detect.
        chunk_size: Images per worker task (and per cache commit).
        progress: Show a progress bar.

    Returns:
        RESULT_COLUMNS per image and how many were computed or read from the cache.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"detect expects uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    keys = [pixel_key(image) for image in images] if keys is None else list(keys)
    if len(keys) != len(images):
        raise ConfigError(f"{len(keys)} keys for {len(images)} images")
    started = time.perf_counter()
    stored, computed = _detect_keys(keys, lambda rows: images[rows], settings, cache_dir, workers, chunk_size,
                                    progress)
    table = results_table([stored[key] for key in keys], settings.threshold)
    return Detections(table, computed=computed, cached=len(stored) - computed,
                      seconds=time.perf_counter() - started, settings=settings)


def detect_manifest(
    manifest: pd.DataFrame,
    data_path: str | os.PathLike[str],
    settings: DetectorSettings = DetectorSettings(),
    work_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> Detections:
    """Detections for every readable manifest row; unreadable rows get no face and NaN statistics.

    Args:
        manifest: The dataset manifest (its `readable` and `sha1` columns are used).
        data_path: The dataset; pixels are loaded only for rows not cached yet, so a cached
            re-run reads no image.
        settings: How to detect and decide.
        work_dir: The cache lives in `<work_dir>/cache/faces/`, keyed by the manifest's pixel
            sha1; None: no cache.
        workers: Detector processes (see `detect`).
        progress: Show a progress bar.

    Returns:
        RESULT_COLUMNS per manifest row (same index) and the computed/cached counts.
    """
    from fer_lab import data

    readable = manifest["readable"].astype(bool).to_numpy()
    rows = np.flatnonzero(readable)
    readable_rows = manifest.iloc[rows].reset_index(drop=True)

    def load(positions: np.ndarray) -> np.ndarray:
        """Pixels of the readable rows at `positions`."""
        return data.load_pixels(data_path, readable_rows.iloc[positions].reset_index(drop=True))

    cache_dir = Path(work_dir) / "cache" / "faces" if work_dir is not None else None
    keys = list(readable_rows["sha1"].astype(str))
    started = time.perf_counter()
    stored, computed = _detect_keys(keys, load, settings, cache_dir, workers, 256, progress)
    found = iter(keys)
    table = results_table([stored[next(found)] if ok else _UNREADABLE_ROW for ok in readable], settings.threshold)
    table.index = manifest.index
    return Detections(table, computed=computed, cached=len(set(keys)) - computed,
                      seconds=time.perf_counter() - started, settings=settings)


# What an unreadable image gets: no detections, unknown statistics.
_UNREADABLE_ROW = ("", "[]", None, None, None)


def _detect_keys(
    keys: list[str],
    load: Callable[[np.ndarray], np.ndarray],
    settings: DetectorSettings,
    cache_dir: str | os.PathLike[str] | None,
    workers: int | None,
    chunk_size: int,
    progress: bool,
) -> tuple[dict[str, tuple[Any, ...]], int]:
    """Cache rows for `keys` and how many were computed; missing ones are detected on `load(rows)`."""
    first_row = {key: row for row, key in reversed(list(enumerate(keys)))}
    cache = FaceCache(cache_dir, settings) if cache_dir is not None else None
    try:
        stored = cache.get(list(first_row)) if cache is not None else {}
        missing = [key for key in first_row if key not in stored]
        if missing:
            images = load(np.array([first_row[key] for key in missing]))
            for computed in _compute(missing, images, settings, workers, chunk_size, progress):
                if cache is not None:
                    cache.put(computed)
                stored.update((row[0], row) for row in computed)
    finally:
        if cache is not None:
            cache.close()
    return stored, len(missing)


def _compute(
    keys: list[str],
    images: np.ndarray,
    settings: DetectorSettings,
    workers: int | None,
    chunk_size: int,
    progress: bool,
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield cache rows chunk by chunk as they finish, in a process pool when worth it."""
    from tqdm import tqdm

    pieces = list(zip(chunks(keys, chunk_size), chunks(images, chunk_size)))
    if workers is None:
        workers = available_cores() if len(keys) >= MIN_IMAGES_FOR_POOL else 1
    workers = min(workers, len(pieces))
    bar = tqdm(total=len(keys), desc=f"faces ({settings.model})", unit="img", disable=not progress,
               mininterval=2.0)
    try:
        if workers <= 1:
            _init_worker(settings)
            for chunk in pieces:
                computed = _detect_chunk(chunk)
                bar.update(len(computed))
                yield computed
            return
        # Always spawn, not `_shared.map_in_processes`' fork-when-single-threaded: that check sees only
        # Python threads, while a kernel that imported TensorFlow or a BLAS holds native threads whose
        # locks fork would copy into dlib's workers. An executor (unlike multiprocessing.Pool) fails
        # instead of hanging when a worker dies.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(settings,)) as pool:
            pending = [pool.submit(_detect_chunk, chunk) for chunk in pieces]
            try:
                for future in as_completed(pending):
                    computed = future.result()
                    bar.update(len(computed))
                    yield computed
            finally:
                for future in pending:
                    future.cancel()
    finally:
        bar.close()


def results_table(rows: Sequence[tuple[Any, ...]], threshold: float) -> pd.DataFrame:
    """Result columns (RESULT_COLUMNS) from cache rows, deciding faces at `threshold`.

    `n_faces` counts detections at or above the threshold that do not overlap a better one: at
    low thresholds the detector also reports shifted copies of the same face.
    """
    import pandas as pd

    detections = [json.loads(row[1]) for row in rows]
    n_faces = np.array([_distinct_faces(found, threshold) for found in detections], dtype=np.int64)
    best = np.array([found[0] if found else [np.nan] * 5 for found in detections], dtype=float).reshape(-1, 5)
    table = pd.DataFrame({"face_found": n_faces > 0, "n_faces": n_faces, "face_score": best[:, 0],
                          "box_x0": best[:, 1], "box_y0": best[:, 2], "box_x1": best[:, 3], "box_y1": best[:, 4]})
    for position, column in enumerate(STATISTICS, start=2):
        table[column] = np.array([row[position] for row in rows], dtype=float)
    return table[list(RESULT_COLUMNS)]


def _distinct_faces(detections: list[list[float]], threshold: float) -> int:
    counted: list[list[float]] = []
    for score, *box in detections:
        if score >= threshold and all(_overlap(box, other) <= SAME_FACE_OVERLAP for other in counted):
            counted.append(box)
    return len(counted)


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection area over the smaller box's area."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(0.0, width) * max(0.0, height) / smaller if smaller > 0 else 1.0
