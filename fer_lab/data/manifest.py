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
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fer_lab._shared import (
    available_cores,
    chunks,
    map_in_processes,
    one_line,
    read_csv,
    require_columns,
    write_atomic,
)
from fer_lab.data import imaging
from fer_lab.data.labels import (
    CLASSES,
    FER2013_EMOTIONS,
    SPLITS,
    USAGE_SPLIT,
    VOTE_COLUMNS,
    canonical_label,
)
from fer_lab.data.votes import (
    attach_votes,
    default_votes_file,
)
from fer_lab.errors import DataError, FerLabError

MANIFEST_COLUMNS = ("path", "label", "split", "usage", "sha1", "height", "width", "channels", "readable", "error")
FER2013_CSV_NAMES = ("fer2013.csv", "fer2013.csv.gz")
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
ROW_PATH = re.compile(r"^row:(\d+)$")
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
    votes_file = Path(votes).expanduser().resolve() if votes is not None else default_votes_file(source)
    if votes_file is not None:
        manifest = attach_votes(manifest, votes_file, source)
    return manifest


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
    votes_file = Path(votes).expanduser().resolve() if votes is not None else default_votes_file(source)
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
    write_atomic(sidecar, json.dumps(record, indent=1))
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
        raise DataError(f"{csv}: not a manifest CSV ({one_line(exc)})") from exc
    require_columns(manifest, MANIFEST_COLUMNS, str(csv))
    manifest["readable"] = manifest["readable"].astype(str).str.lower() == "true"
    return manifest


def write_manifest(manifest: pd.DataFrame, csv: str | os.PathLike[str]) -> Path:
    """Write a manifest as CSV (atomically, creating folders); returns the path."""
    csv = Path(csv)
    write_atomic(csv, manifest.to_csv(index=False))
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


# --- formats ---------------------------------------------------------------------------------


def _csv_manifest(csv_file: Path) -> pd.DataFrame:
    table = read_csv(csv_file, dtype=str)
    require_columns(table, ("emotion", "pixels", "Usage"), csv_file.name)
    if table.empty:
        raise DataError(f"{csv_file}: no rows")
    labels = [_csv_label(value, row, csv_file) for row, value in enumerate(table["emotion"])]
    usages = [_csv_usage(value, row, csv_file) for row, value in enumerate(table["Usage"])]
    records = []
    for row, text in enumerate(table["pixels"]):
        image, error = imaging.parse_pixel_string(text)
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


def _folder_manifest(root: Path, workers: int | None) -> pd.DataFrame:
    entries = _scan_folders(root)
    files = [str(root / relative) for relative, *_ in entries]
    inspected = map_batches(imaging.inspect_images, files, workers)
    manifest = pd.DataFrame(
        [(*entry, *details) for entry, details in zip(entries, inspected)],
        columns=["path", "label", "split", "usage", "sha1", "height", "width", "channels", "error"],
    )
    manifest.insert(len(manifest.columns) - 1, "readable", manifest["error"] == "")
    return manifest


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


def map_batches(
    function: Callable[..., Any], items: list[str], workers: int | None, *args: Any, flatten: bool = True
) -> list[Any]:
    """Apply a batch function over `items` in worker processes (in order), or inline when small."""
    workers = workers or min(available_cores(), 8)
    if workers <= 1 or len(items) < MIN_FILES_FOR_POOL:
        batches = [function(items, *args)] if items else []
    else:
        batch_size = max(256, -(-len(items) // (workers * 8)))
        batches = map_in_processes(function, list(chunks(items, batch_size)), workers, *args)
    if not flatten:
        return batches
    return [result for batch in batches for result in batch]


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith((".csv", ".csv.gz"))


