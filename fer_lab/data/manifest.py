"""Read facial-expression datasets in their common formats into one manifest, then load pixels.

One entry point, `build_manifest(path)`, recognises:
- `fer2013.csv` / `.csv.gz` (columns emotion, pixels, Usage), or a folder holding one, with an
  optional FER+ `fer2013new.csv` beside it (same row order) giving crowd votes;
- the Kaggle image-folder layout (`train/<class>/Training_*.jpg`, `test/<class>/PublicTest_*`...);
- any class-per-folder dataset: a root of class folders, or split folders of class folders;
- a per-file votes CSV keyed by relative path (`ferplus_votes.csv` in the root is attached).

A bad image never stops a load: its row is kept with `readable=False` and an `error` reason.
Problems with the dataset as a whole raise `DataError` naming the file or row.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import multiprocessing
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fer_lab.data import imaging
from fer_lab.data.labels import (
    CLASSES,
    FER2013_EMOTIONS,
    FERPLUS_NAMES,
    SPLITS,
    USAGE_SPLIT,
    VOTE_COLUMNS,
    canonical_label,
)
from fer_lab.errors import DataError, FerLabError

MANIFEST_COLUMNS = ("path", "label", "split", "usage", "sha1", "height", "width", "channels", "readable", "error")
VOTES_FILENAME = "ferplus_votes.csv"
FER2013_CSV_NAMES = ("fer2013.csv", "fer2013.csv.gz")
FERPLUS_CSV_NAMES = ("fer2013new.csv", "fer2013new.csv.gz")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm"}
)
SPLIT_FOLDERS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
MANIFEST_FORMAT_VERSION = 1
# Below this many files a worker pool costs more to start than it saves.
MIN_FILES_FOR_POOL = 2000

_USAGE_PREFIX = re.compile(r"^(training|publictest|privatetest)_", re.IGNORECASE)
_USAGE_BY_LOWER = {usage.lower(): usage for usage in USAGE_SPLIT}
_ROW_PATH = re.compile(r"^row:(\d+)$")
_TEXT_COLUMNS = ("path", "label", "split", "usage", "sha1", "error")

UnknownClasses = Literal["keep", "drop"]


@dataclass(frozen=True)
class DataSource:
    """Where a dataset lives: `root` is the folder manifest paths are relative to."""

    kind: Literal["csv", "folders"]
    root: Path
    csv_file: Path | None = None


def detect_source(path: str | os.PathLike[str]) -> DataSource:
    """Recognise the dataset format at `path` (a CSV file, a folder with one, or image folders)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if _is_csv(path):
            return DataSource("csv", path.parent, path)
        raise DataError(f"{path}: not a dataset (expected fer2013.csv, a .csv.gz or a folder of images)")
    for name in FER2013_CSV_NAMES:
        if (path / name).is_file():
            return DataSource("csv", path, path / name)
    return DataSource("folders", path)


def data_root(path: str | os.PathLike[str]) -> Path:
    """The folder that manifest `path` values are relative to."""
    return detect_source(path).root


def build_manifest(
    path: str | os.PathLike[str],
    votes: str | os.PathLike[str] | None = None,
    unknown_classes: UnknownClasses = "keep",
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int | None = None,
) -> pd.DataFrame:
    """Describe every image of the dataset at `path`: one manifest row per image.

    `votes` names a votes file; without it `ferplus_votes.csv` in the root (folders) or
    `fer2013new.csv` beside the CSV is attached when present. Classes outside `CLASSES` are
    kept as extra labels or, with `unknown_classes="drop"`, left out. When the dataset has no
    validation split, a stratified `val_fraction` of train becomes val (fixed by `seed`).
    """
    if unknown_classes not in ("keep", "drop"):
        raise FerLabError(f"unknown_classes must be 'keep' or 'drop', not {unknown_classes!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise FerLabError(f"val_fraction must be in [0, 1), not {val_fraction}")
    source = detect_source(path)
    if source.kind == "csv":
        manifest = _csv_manifest(source.csv_file)
    else:
        manifest = _folder_manifest(source.root, workers)
    if unknown_classes == "drop":
        manifest = manifest[manifest["label"].isin(CLASSES)].reset_index(drop=True)
        if manifest.empty:
            raise DataError(f"{path}: no images of the classes {', '.join(CLASSES)} (unknown classes dropped)")
    if not (manifest["split"] == "val").any() and val_fraction > 0:
        manifest = _stratified_val_split(manifest, val_fraction, seed)
    votes_file = Path(votes).expanduser().resolve() if votes is not None else _default_votes_file(source)
    if votes_file is not None:
        manifest = attach_votes(manifest, votes_file, source)
    return manifest


def attach_votes(manifest: pd.DataFrame, votes_file: Path, source: DataSource) -> pd.DataFrame:
    """Add the ten `vote_*` columns from a per-file votes CSV or a FER+ `fer2013new.csv`.

    Rows without votes get NaN; votes for files not in the manifest are ignored.
    """
    if not votes_file.is_file():
        raise DataError(f"{votes_file}: votes file not found")
    table = _read_csv(votes_file)
    if "path" in table.columns:
        votes = _vote_table(table, votes_file)
        votes.index = table["path"].str.replace("\\", "/", regex=False).str.removeprefix("./")
        repeated = votes.index[votes.index.duplicated()]
        if len(repeated):
            raise DataError(f"{votes_file}: {len(repeated)} paths appear twice, e.g. {repeated[0]}")
        joined = votes.reindex(manifest["path"])
    elif {"Usage", "Image name"} & set(table.columns):
        if source.kind != "csv":
            raise DataError(f"{votes_file}: FER+ row-order votes fit only fer2013.csv; folders need a 'path' column")
        joined = _ferplus_row_votes(manifest, table, votes_file, source.csv_file)
    else:
        raise DataError(f"{votes_file}: a votes file needs a 'path' column (or be FER+ fer2013new.csv)")
    manifest = manifest.drop(columns=[c for c in VOTE_COLUMNS if c in manifest.columns])
    for column in VOTE_COLUMNS:
        values = joined[column].to_numpy()
        manifest[column] = values.astype(np.int64) if not np.isnan(values).any() else values
    return manifest


def load_pixels(
    path: str | os.PathLike[str],
    manifest: pd.DataFrame,
    size: int = imaging.MODEL_SIZE,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Pixels of every manifest row as uint8 (N, size, size) grayscale, in row order.

    All rows must be readable. With `cache_dir`, the array is kept as a `.npy` keyed by the
    manifest fingerprint and size, so a second load is a single file read.
    """
    _require_columns(manifest, ("path", "sha1", "readable"), "manifest")
    unreadable = manifest.loc[~manifest["readable"].astype(bool), "path"]
    if len(unreadable):
        raise DataError(
            f"manifest has {len(unreadable)} unreadable rows (first: {unreadable.iloc[0]}); "
            "keep only readable rows before loading pixels"
        )
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"pixels-{manifest_fingerprint(manifest)[:20]}-{size}.npy"
        if cache_file.is_file():
            cached = np.load(cache_file)
            if cached.shape == (len(manifest), size, size):
                return cached
    source = detect_source(path)
    if source.kind == "csv":
        pixels = _csv_pixels(source.csv_file, manifest, size)
    else:
        pixels = _folder_pixels(source.root, manifest, size, workers)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npy")
        np.save(partial, pixels)
        os.replace(partial, cache_file)
    return pixels


def load_or_build_manifest(
    path: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    votes: str | os.PathLike[str] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """`build_manifest`, reusing `<work_dir>/manifest.csv` while its data and options are unchanged.

    The sidecar `manifest.json` records the resolved data path, votes file, options and the
    size/mtime of every source file; any difference rebuilds the manifest.
    """
    workers = options.pop("workers", None)
    defaults = {
        name: parameter.default for name, parameter in inspect.signature(build_manifest).parameters.items()
        if name in ("unknown_classes", "val_fraction", "seed")
    }
    unexpected = set(options) - set(defaults)
    if unexpected:
        raise TypeError(f"unexpected options: {', '.join(sorted(unexpected))}")
    source = detect_source(path)
    votes_file = Path(votes).expanduser().resolve() if votes is not None else _default_votes_file(source)
    record = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "data_path": str(source.csv_file or source.root),
        "votes": str(votes_file) if votes_file else None,
        "options": {**defaults, **options},
        "source_signature": _source_signature(source, votes_file),
    }
    work_dir = Path(work_dir)
    manifest_file, sidecar = work_dir / "manifest.csv", work_dir / "manifest.json"
    if manifest_file.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()) == record:
                return read_manifest(manifest_file)
        except (json.JSONDecodeError, DataError):
            pass  # an unreadable cache is simply rebuilt
    manifest = build_manifest(source.csv_file or source.root, votes=votes_file, workers=workers, **options)
    write_manifest(manifest, manifest_file)
    _write_atomic(sidecar, json.dumps(record, indent=1))
    return manifest


def read_manifest(csv: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a manifest CSV written by `write_manifest`, restoring column types."""
    csv = Path(csv)
    if not csv.is_file():
        raise DataError(f"{csv}: manifest not found")
    try:
        manifest = pd.read_csv(
            csv,
            dtype={column: str for column in _TEXT_COLUMNS},
            keep_default_na=False,
            na_values={column: [""] for column in VOTE_COLUMNS},
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{csv}: not a manifest CSV ({_one_line(exc)})") from exc
    _require_columns(manifest, MANIFEST_COLUMNS, str(csv))
    manifest["readable"] = manifest["readable"].astype(str).str.lower() == "true"
    return manifest


def write_manifest(manifest: pd.DataFrame, csv: str | os.PathLike[str]) -> Path:
    """Write a manifest as CSV (atomically, creating folders); returns the path."""
    csv = Path(csv)
    _write_atomic(csv, manifest.to_csv(index=False))
    return csv


def manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """Hash of each row's path, label, split and pixel sha1, in order: names a dataset version."""
    rows = (manifest["path"] + "\t" + manifest["label"] + "\t" + manifest["split"] + "\t" + manifest["sha1"])
    return hashlib.sha1("\n".join(rows).encode()).hexdigest()


def class_names(manifest: pd.DataFrame) -> list[str]:
    """The seven canonical classes followed by any extra labels present, sorted."""
    extras = sorted(set(manifest["label"]) - set(CLASSES))
    return [*CLASSES, *extras]


def count_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per split (rows, with a total) and class (columns, with a total)."""
    table = pd.crosstab(manifest["split"], manifest["label"])
    table = table.reindex(index=[s for s in SPLITS if s in table.index], columns=class_names(manifest), fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name, table.columns.name = "split", None
    return table


def unreadable_summary(manifest: pd.DataFrame) -> pd.Series:
    """Count of unreadable rows per reason (the part of `error` before the colon)."""
    errors = manifest.loc[~manifest["readable"].astype(bool), "error"]
    return errors.str.split(":", n=1).str[0].value_counts().rename("rows").rename_axis("reason")


def manifest_report(manifest: pd.DataFrame) -> str:
    """Plain-text summary: split x class counts, usage counts, vote coverage, unreadable rows."""
    lines = [count_table(manifest).to_string(), ""]
    usages = manifest["usage"].replace("", "(none)").value_counts().sort_index()
    lines.append("usage: " + ", ".join(f"{usage} {count}" for usage, count in usages.items()))
    if all(column in manifest.columns for column in VOTE_COLUMNS):
        with_votes = int(manifest[list(VOTE_COLUMNS)].notna().all(axis=1).sum())
        lines.append(f"votes: {with_votes} of {len(manifest)} rows")
    summary = unreadable_summary(manifest)
    if summary.empty:
        lines.append(f"unreadable: none of {len(manifest)} rows")
    else:
        reasons = ", ".join(f"{reason} {count}" for reason, count in summary.items())
        first = manifest.loc[~manifest["readable"].astype(bool)].iloc[0]
        lines.append(f"unreadable: {int(summary.sum())} of {len(manifest)} rows ({reasons}); "
                     f"first: {first['path']}: {first['error']}")
    return "\n".join(lines)


def parse_pixel_string(text: str) -> tuple[np.ndarray | None, str]:
    """Parse a fer2013.csv `pixels` cell into a square uint8 image, or (None, "<reason>: <detail>")."""
    text = text if isinstance(text, str) else ""
    try:
        with warnings.catch_warnings():
            # Older NumPy only warns when parsing stops at a non-number; make that an error too.
            warnings.simplefilter("error", DeprecationWarning)
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        bad = next((token for token in text.split() if not token.isdigit()), "?")
        return None, f"non-numeric pixels: {bad[:20]!r}"
    side = int(round(len(values) ** 0.5))
    if len(values) == 0 or side * side != len(values):
        return None, f"wrong pixel count: {len(values)} values, not a square image (48x48 is 2304)"
    if values.min() < 0 or values.max() > 255:
        bad_value = values[(values < 0) | (values > 255)][0]
        return None, f"pixel out of range: {bad_value} (expected 0-255)"
    return values.astype(np.uint8).reshape(side, side), ""


# --- formats ---------------------------------------------------------------------------------


def _csv_manifest(csv_file: Path) -> pd.DataFrame:
    table = _read_csv(csv_file, dtype=str)
    _require_columns(table, ("emotion", "pixels", "Usage"), csv_file.name)
    if table.empty:
        raise DataError(f"{csv_file}: no rows")
    labels = [_csv_label(value, row, csv_file) for row, value in enumerate(table["emotion"])]
    usages = [_csv_usage(value, row, csv_file) for row, value in enumerate(table["Usage"])]
    records = []
    for row, text in enumerate(table["pixels"]):
        image, error = parse_pixel_string(text)
        side = image.shape[0] if image is not None else 0
        sha1 = imaging.pixel_sha1(image) if image is not None else ""
        records.append((f"row:{row}", sha1, side, side, 1 if image is not None else 0, image is not None, error))
    manifest = pd.DataFrame(records, columns=["path", "sha1", "height", "width", "channels", "readable", "error"])
    manifest.insert(1, "label", labels)
    manifest.insert(2, "split", [USAGE_SPLIT[usage] for usage in usages])
    manifest.insert(3, "usage", usages)
    return manifest


def _csv_label(value: str, row: int, csv_file: Path) -> str:
    text = str(value).strip() if isinstance(value, str) else ""
    if text.isdigit() and int(text) < len(FER2013_EMOTIONS):
        return FER2013_EMOTIONS[int(text)]
    raise DataError(
        f"{csv_file.name} row:{row} (line {row + 2}): unknown emotion id {text!r} "
        f"(expected 0-{len(FER2013_EMOTIONS) - 1})"
    )


def _csv_usage(value: str, row: int, csv_file: Path) -> str:
    text = str(value).strip() if isinstance(value, str) else ""
    if text in USAGE_SPLIT:
        return text
    raise DataError(
        f"{csv_file.name} row:{row} (line {row + 2}): unknown Usage {text!r} (expected {', '.join(USAGE_SPLIT)})"
    )


def _csv_pixels(csv_file: Path, manifest: pd.DataFrame, size: int) -> np.ndarray:
    table = _read_csv(csv_file, dtype=str, usecols=["pixels"])
    pixels = np.empty((len(manifest), size, size), dtype=np.uint8)
    for index, (path, sha1) in enumerate(zip(manifest["path"], manifest["sha1"])):
        match = _ROW_PATH.match(path)
        if not match or int(match.group(1)) >= len(table):
            raise DataError(f"{csv_file.name}: manifest row {path!r} is not a row of this CSV")
        image, error = parse_pixel_string(table["pixels"].iat[int(match.group(1))])
        if image is None or imaging.pixel_sha1(image) != sha1:
            raise DataError(f"{csv_file.name} {path}: changed since the manifest was built ({error or 'new pixels'})")
        pixels[index] = imaging.to_model_input(image, size)
    return pixels


def _folder_manifest(root: Path, workers: int | None) -> pd.DataFrame:
    entries = _scan_folders(root)
    files = [str(root / relative) for relative, *_ in entries]
    inspected = _map_batches(imaging.inspect_images, files, workers)
    manifest = pd.DataFrame(
        [(*entry, *details) for entry, details in zip(entries, inspected)],
        columns=["path", "label", "split", "usage", "sha1", "height", "width", "channels", "error"],
    )
    manifest.insert(len(manifest.columns) - 1, "readable", manifest["error"] == "")
    return manifest


def _folder_pixels(root: Path, manifest: pd.DataFrame, size: int, workers: int | None) -> np.ndarray:
    files = [str(root / relative) for relative in manifest["path"]]
    missing = next((f for f in files if not os.path.isfile(f)), None)
    if missing is not None:
        raise DataError(f"{missing}: listed in the manifest but missing")
    try:
        batches = _map_batches(imaging.load_model_inputs, files, workers, size, flatten=False)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{root}: an image could not be read ({_one_line(exc)}); rebuild the manifest") from exc
    if not batches:
        return np.empty((0, size, size), dtype=np.uint8)
    return np.concatenate(batches)


def _scan_folders(root: Path) -> list[tuple[str, str, str, str]]:
    """(relative path, label, split, usage) of every image file, sorted by path."""
    folders = _visible_subfolders(root)
    if not folders:
        raise DataError(f"{root}: no class folders and no fer2013.csv (nothing to load)")
    split_folders = [folder for folder in folders if folder.name.lower() in SPLIT_FOLDERS]
    others = [folder.name for folder in folders if folder.name.lower() not in SPLIT_FOLDERS]
    if split_folders and others:
        raise DataError(
            f"{root}: mixes split folders ({', '.join(f.name for f in split_folders)}) with other folders "
            f"({', '.join(others)}); point at one split or move the others away"
        )
    if split_folders:
        class_folders = [(folder, split) for split in split_folders for folder in _visible_subfolders(split)]
    else:
        class_folders = [(folder, None) for folder in folders]
    entries = []
    for class_folder, split_folder in class_folders:
        label = canonical_label(class_folder.name)
        for file in _image_files(class_folder):
            prefix = _USAGE_PREFIX.match(file.name)
            if prefix:
                usage = _USAGE_BY_LOWER[prefix.group(1).lower()]
                split = USAGE_SPLIT[usage]
            elif split_folder is not None:
                usage, split = split_folder.name, SPLIT_FOLDERS[split_folder.name.lower()]
            else:
                usage, split = "", "train"
            entries.append((file.relative_to(root).as_posix(), label, split, usage))
    if not entries:
        raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in its class folders")
    return sorted(entries)


def _visible_subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _image_files(folder: Path) -> Iterable[Path]:
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith((".", "_")))
        for name in sorted(names):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(directory, name)


def _stratified_val_split(manifest: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    manifest = manifest.copy()
    train = manifest[manifest["split"] == "train"]
    for label in sorted(train["label"].unique()):
        rows = train.index[train["label"] == label].to_numpy()
        chosen = rng.permutation(rows)[: int(round(len(rows) * val_fraction))]
        manifest.loc[chosen, "split"] = "val"
    return manifest


# --- votes -----------------------------------------------------------------------------------


def _default_votes_file(source: DataSource) -> Path | None:
    if source.kind == "csv":
        names = FERPLUS_CSV_NAMES
    else:
        names = (VOTES_FILENAME,)
    return next((source.root / name for name in names if (source.root / name).is_file()), None)


def _vote_table(table: pd.DataFrame, votes_file: Path) -> pd.DataFrame:
    by_name = {column.lower().removeprefix("vote_"): column for column in table.columns}
    missing = [name for name in FERPLUS_NAMES if name.lower() not in by_name]
    if missing:
        raise DataError(f"{votes_file}: missing vote column(s) {', '.join(missing)}")
    votes = pd.DataFrame({f"vote_{name}": table[by_name[name.lower()]] for name in FERPLUS_NAMES})
    numeric = votes.apply(pd.to_numeric, errors="coerce")
    bad_rows = np.flatnonzero((numeric.isna() & votes.notna()).any(axis=1).to_numpy())
    if len(bad_rows):
        raise DataError(f"{votes_file} row {bad_rows[0]} (line {bad_rows[0] + 2}): vote counts must be numbers")
    return numeric.astype(np.float64)


def _ferplus_row_votes(manifest: pd.DataFrame, table: pd.DataFrame, votes_file: Path, csv_file: Path) -> pd.DataFrame:
    votes = _vote_table(table, votes_file)
    rows = manifest["path"].str.removeprefix("row:").astype(int).to_numpy()
    if len(table) <= rows.max():
        raise DataError(f"{votes_file}: {len(table)} rows but {csv_file.name} has {rows.max() + 1}; not the same rows")
    if "Usage" in table.columns:
        theirs = table["Usage"].astype(str).str.strip().to_numpy()[rows]
        differs = np.flatnonzero(theirs != manifest["usage"].to_numpy())
        if len(differs):
            row = rows[differs[0]]
            raise DataError(
                f"{votes_file} row:{row}: Usage {theirs[differs[0]]!r} but {csv_file.name} says "
                f"{manifest['usage'].iat[differs[0]]!r}; the files are not in the same row order"
            )
    return votes.iloc[rows].reset_index(drop=True)


# --- helpers ---------------------------------------------------------------------------------


def _source_signature(source: DataSource, votes_file: Path | None) -> str:
    if source.kind == "csv":
        files = [source.csv_file]
    else:
        files = [source.root / relative for relative, *_ in _scan_folders(source.root)]
    if votes_file is not None:
        files.append(votes_file)
    digest = hashlib.sha1()
    for file in files:
        stat = file.stat()
        digest.update(f"{file}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _map_batches(
    function: Callable[..., Any], items: list[str], workers: int | None, *args: Any, flatten: bool = True
) -> list[Any]:
    """Apply a batch function over `items` in worker processes (in order), or inline when small."""
    workers = workers or min(_available_cores(), 8)
    if workers <= 1 or len(items) < MIN_FILES_FOR_POOL:
        batches = [function(items, *args)] if items else []
    else:
        batch_size = max(256, -(-len(items) // (workers * 8)))
        chunks = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
        context = multiprocessing.get_context(_start_method())
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            batches = list(pool.map(function, chunks, *[[arg] * len(chunks) for arg in args]))
    if not flatten:
        return batches
    return [result for batch in batches for result in batch]


def _start_method() -> str:
    """fork while single-threaded (works from unguarded scripts), else spawn.

    Forking a process with other threads (a Jupyter kernel, TensorFlow's pools) can copy a lock
    some thread holds and hang the child; spawn starts clean but needs an importable __main__.
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _read_csv(csv_file: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(csv_file, **kwargs)
    except FileNotFoundError as exc:
        raise DataError(f"{csv_file}: file not found") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{csv_file}: empty file (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{csv_file}: not a readable CSV ({_one_line(exc)})") from exc


def _require_columns(table: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns)) or "none"
        raise DataError(f"{name}: missing column(s) {', '.join(missing)} (found: {found})")


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith((".csv", ".csv.gz"))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
