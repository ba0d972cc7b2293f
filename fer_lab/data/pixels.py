"""Pixels of a manifest's images as one uint8 array, decoded once and cached as a `.npy`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab._shared import one_line, read_csv, require_columns
from fer_lab.data import imaging
from fer_lab.data.manifest import (
    ROW_PATH,
    detect_source,
    manifest_fingerprint,
    map_batches,
)
from fer_lab.errors import CorruptCacheWarning, DataError


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
    require_columns(manifest, ("path", "sha1", "readable"), "manifest")
    unreadable = manifest.loc[~manifest["readable"].astype(bool), "path"]
    if len(unreadable):
        raise DataError(
            f"manifest has {len(unreadable)} unreadable rows (first: {unreadable.iloc[0]}); "
            "keep only readable rows before loading pixels"
        )
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"pixels-{manifest_fingerprint(manifest)[:20]}-{size}.npy"
        cached = _read_cache(cache_file, (len(manifest), size, size))
        if cached is not None:
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


def _csv_pixels(csv_file: Path, manifest: pd.DataFrame, size: int) -> np.ndarray:
    table = read_csv(csv_file, dtype=str, usecols=["pixels"])
    pixels = np.empty((len(manifest), size, size), dtype=np.uint8)
    for index, (path, sha1) in enumerate(zip(manifest["path"], manifest["sha1"])):
        match = ROW_PATH.match(path)
        if not match or int(match.group(1)) >= len(table):
            raise DataError(f"{csv_file.name}: manifest row {path!r} is not a row of this CSV")
        image, error = imaging.parse_pixel_string(table["pixels"].iat[int(match.group(1))])
        if image is None or imaging.pixel_sha1(image) != sha1:
            raise DataError(f"{csv_file.name} {path}: changed since the manifest was built ({error or 'new pixels'})")
        pixels[index] = imaging.to_model_input(image, size)
    return pixels


def _folder_pixels(root: Path, manifest: pd.DataFrame, size: int, workers: int | None) -> np.ndarray:
    files = [str(root / relative) for relative in manifest["path"]]
    missing = next((f for f in files if not os.path.isfile(f)), None)
    if missing is not None:
        raise DataError(f"{missing}: listed in the manifest but missing")
    try:
        batches = map_batches(imaging.load_model_inputs, files, workers, size, flatten=False)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{root}: an image could not be read ({one_line(exc)}); rebuild the manifest") from exc
    if not batches:
        return np.empty((0, size, size), dtype=np.uint8)
    return np.concatenate(batches)


def _read_cache(cache_file: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached pixels, or None when there are none; a truncated or mismatched file is discarded."""
    if not cache_file.is_file():
        return None
    try:
        cached = np.load(cache_file)
        if cached.shape == shape and cached.dtype == np.uint8:
            return cached
        problem = f"holds {cached.dtype} {cached.shape}, expected uint8 {shape}"
    except (OSError, ValueError, EOFError) as error:
        problem = one_line(error)
    warnings.warn(f"{cache_file}: corrupt pixel cache ({problem}); rebuilding it", CorruptCacheWarning, stacklevel=3)
    cache_file.unlink(missing_ok=True)
    return None
