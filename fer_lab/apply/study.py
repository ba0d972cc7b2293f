"""A study: many recordings of many participants under conditions, each analysed once and cached.

Input is a study CSV (one row per recording: `path`, `participant`, `condition`; any other column is
a covariate) with an optional events CSV (`path` or `condition`, `name`, `start`, `end` in seconds:
the segments that matter), or a folder of recordings (one participant per video or image folder,
one condition). Recordings are videos or folders of images read at `frame_rate`.

A recording that is missing or cannot be read is listed in `StudyResult.problems` with the reason;
the study goes on with the rest. Each recording is analysed by `fer_lab.apply.video.analyze_video`
once per (content fingerprint, model fingerprint, settings): the per-frame table is cached as a
Parquet file whose metadata carries that key, written atomically and checked when read, so adding
participants to a finished study analyses only the new recordings. Recordings run in parallel
processes (`fer_lab._shared.map_in_processes`), each loading the model once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_lab._shared import (
    available_cores,
    map_in_processes,
    one_line,
    read_csv,
    require_columns,
    write_atomic,
)
from fer_lab.apply import inference, video
from fer_lab.apply.video_io import is_video, open_frames
from fer_lab.errors import DataError, FerLabError
from fer_lab.faces.detector import DetectorConfig, FaceDetector, Model

STUDY_COLUMNS = ("path", "participant", "condition")
EVENT_COLUMNS = ("name", "start", "end")
# Bump when the cached table's meaning changes: older entries are then recomputed, never misread.
CACHE_VERSION = 1
# Sampled frames a worker process must have ahead of it to be worth starting: a worker spends ~8 CPU-s
# importing TensorFlow and loading the model and MediaPipe, the time one process analyses ~300 frames in.
FRAMES_PER_WORKER = 1500
_METADATA_KEY = b"fer_lab_study"


@dataclass
class Study:
    """Recordings (`path` as an absolute path string, `participant`, `condition`, covariates) and events.

    `events` has `name`, `start`, `end` and either `path` or `condition` (which recordings it applies to).
    """

    recordings: pd.DataFrame
    events: pd.DataFrame
    covariates: list[str] = field(default_factory=list)


def read_study(study_csv: str | os.PathLike[str], events_csv: str | os.PathLike[str] | None = None) -> Study:
    """A study from its CSV (paths relative to the CSV's folder) and optional events CSV.

    Args:
        study_csv: One row per recording: path, participant, condition, optional covariate columns.
        events_csv: Segments: `path` or `condition`, name, start, end (seconds).

    Returns:
        The study; missing recordings stay in it (the analysis reports them and goes on).

    Raises:
        DataError: A missing column, an empty value, a duplicate path, or a bad event row (naming file and line).
    """
    study_csv = Path(study_csv)
    table = read_csv(study_csv, dtype=str, keep_default_na=False)
    require_columns(table, STUDY_COLUMNS, str(study_csv))
    if table.empty:
        raise DataError(f"{study_csv}: no recordings listed")
    for column in table.columns:
        empty = table.index[table[column].str.strip() == ""]
        if len(empty):
            raise DataError(f"{study_csv}: line {empty[0] + 2}: empty {column!r}")
    table = table.apply(lambda column: column.str.strip())
    table["path"] = [str((study_csv.parent / value).resolve()) for value in table["path"]]
    duplicated = table.index[table["path"].duplicated()]
    if len(duplicated):
        raise DataError(f"{study_csv}: line {duplicated[0] + 2}: recording {table.at[duplicated[0], 'path']} "
                        "is listed twice")
    covariates = [column for column in table.columns if column not in STUDY_COLUMNS]
    for column in covariates:
        numbers = pd.to_numeric(table[column], errors="coerce")
        if numbers.notna().all():
            table[column] = numbers
    events = _read_events(Path(events_csv), table) if events_csv else _no_events()
    return Study(table.reset_index(drop=True), events, covariates)


def _no_events() -> pd.DataFrame:
    return pd.DataFrame({"condition": pd.Series(dtype=str), "name": pd.Series(dtype=str),
                         "start": pd.Series(dtype=float), "end": pd.Series(dtype=float)})


def _read_events(events_csv: Path, recordings: pd.DataFrame) -> pd.DataFrame:
    """The events CSV, checked: one key column, known columns, known keys, 0 <= start < end."""
    events = read_csv(events_csv, dtype=str, keep_default_na=False)
    keys = [column for column in ("path", "condition") if column in events.columns]
    if len(keys) != 1:
        raise DataError(f"{events_csv}: needs exactly one of the columns path or condition "
                        f"(found: {', '.join(events.columns)})")
    key = keys[0]
    require_columns(events, EVENT_COLUMNS, str(events_csv))
    unknown = [column for column in events.columns if column not in (key, *EVENT_COLUMNS)]
    if unknown:
        raise DataError(f"{events_csv}: unknown column(s) {', '.join(unknown)} "
                        f"(expected {key}, {', '.join(EVENT_COLUMNS)})")
    events = events.apply(lambda column: column.str.strip())
    if key == "path":
        events["path"] = [str((events_csv.parent / value).resolve()) for value in events["path"]]
    known = set(recordings[key])
    for index, row in events.iterrows():
        where = f"{events_csv}: line {index + 2}"
        if not row["name"]:
            raise DataError(f"{where}: empty event name")
        if row[key] not in known:
            raise DataError(f"{where}: {key} {row[key]!r} is not in the study")
        try:
            start, end = float(row["start"]), float(row["end"])
        except ValueError as error:
            raise DataError(f"{where}: start and end must be seconds, not {row['start']!r}, {row['end']!r}") from error
        if not (np.isfinite(start) and np.isfinite(end) and 0 <= start < end):
            raise DataError(f"{where}: event {row['name']!r} needs 0 <= start < end, not {start:g} to {end:g}")
    return events.astype({"start": float, "end": float}).reset_index(drop=True)


def folder_study(folder: str | os.PathLike[str], condition: str = "all") -> Study:
    """A study of every video (or image folder) in `folder`: one participant each, named after the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    paths = sorted(path for path in folder.iterdir() if not path.name.startswith(".") and (
        is_video(path) or path.is_dir()))
    if not paths:
        raise DataError(f"{folder}: holds no videos or folders of images")
    recordings = pd.DataFrame({"path": [str(path.resolve()) for path in paths],
                               "participant": [path.stem for path in paths], "condition": condition})
    return Study(recordings, _no_events())


def load_study(source: str | os.PathLike[str], events_csv: str | os.PathLike[str] | None = None) -> Study:
    """`read_study` for a CSV, `folder_study` (with the events, keyed by condition `all`) for a folder."""
    source = Path(source)
    if source.is_dir():
        study = folder_study(source)
        if events_csv:
            study.events = _read_events(Path(events_csv), study.recordings)
        return study
    return read_study(source, events_csv)


@dataclass(frozen=True)
class AnalysisSettings:
    """How each recording is analysed; every field is part of the cache key."""

    sample_fps: float = 10.0
    detect_every: int = 2
    frame_rate: float = 10.0  # of folders of images
    max_side: int = video.VIDEO_MAX_SIDE
    threshold: float = 0.0
    framing_scale: float = inference.FER2013_SCALE
    framing_lift: float = inference.FER2013_LIFT
    detector: Model = "mediapipe"

    def key(self, model_fingerprint: str) -> str:
        """The settings and the model as one string."""
        return json.dumps({**asdict(self), "model": model_fingerprint, "version": CACHE_VERSION}, sort_keys=True)


def model_fingerprint(loaded: inference.LoadedModel) -> str:
    """A hash of the model's weights and labels: a retrained model under the same name is a new model."""
    digest = hashlib.sha256(json.dumps(list(loaded.labels)).encode())
    for weights in loaded.model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:20]


def content_fingerprint(path: Path) -> str:
    """A hash of a recording's bytes (a folder: its image files' names and bytes, in order)."""
    digest = hashlib.sha256()
    files = sorted(item for item in path.iterdir() if item.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode() if path.is_dir() else b"")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


@dataclass
class _Job:
    """What a worker needs to analyse recordings: the model by reference, the settings, the cache."""

    reference: str
    tracking_uri: str
    settings: AnalysisSettings
    settings_key: str
    cache_dir: Path
    progress: bool = False


@dataclass
class StudyResult:
    """The study with each readable recording's per-frame table; `problems` lists the rest with reasons."""

    study: Study
    frames: dict[str, pd.DataFrame]
    labels: tuple[str, ...]
    sample_fps: float
    status: pd.DataFrame  # path, participant, condition, status (analysed, cached, failed, missing), seconds, reason
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> pd.DataFrame:
        """The recordings left out, with the reason."""
        return self.status[self.status["status"].isin(["missing", "failed"])].reset_index(drop=True)


def analyze_study(study: Study, reference: str, *, tracking_uri: str = "",
                  settings: AnalysisSettings = AnalysisSettings(),
                  cache_dir: str | os.PathLike[str], workers: int = 0, progress: bool = False) -> StudyResult:
    """Analyse every recording not yet cached for this model and these settings; read the rest from the cache.

    Args:
        study: The recordings.
        reference: The model (run id or model URI, as `inference.load_model` takes).
        tracking_uri: The MLflow store the model is in.
        settings: Sampling, detection and framing.
        cache_dir: Where per-recording tables are cached.
        workers: Processes for the recordings to analyse (0: one per core when there are enough frames to
            repay their start, see FRAMES_PER_WORKER; at most one per recording).
        progress: Show a bar per recording and one over the study.

    Returns:
        The per-frame tables and a status row per recording.
    """
    from tqdm.auto import tqdm

    loaded = inference.load_model(reference, tracking_uri)
    job = _Job(reference, tracking_uri, settings, settings.key(model_fingerprint(loaded)), Path(cache_dir), progress)
    rows: list[dict[str, Any]] = []
    todo: list[tuple[str, Path]] = []
    cached: dict[str, pd.DataFrame] = {}
    notices: list[str] = []
    for path in study.recordings["path"]:
        if not Path(path).exists():
            rows.append({"path": path, "status": "missing", "reason": f"{path}: no such file or folder"})
            continue
        cache_file = _cache_file(job, Path(path))
        table, notice = _read_cached(cache_file, job.settings_key)
        notices += [notice] if notice else []
        if table is None:
            todo.append((path, cache_file))
        else:
            cached[path] = table
            rows.append({"path": path, "status": "cached", "reason": ""})
    workers = min(workers or _useful_workers(todo, settings), max(1, len(todo)))
    if workers > 1:
        outcomes = map_in_processes(_analyze_one, todo, workers, job, progress="study" if progress else "")
    else:
        outcomes = [_analyze_one(item, job, loaded) for item in tqdm(todo, desc="study", disable=not progress)]
    frames = dict(cached)
    for (path, cache_file), outcome in zip(todo, outcomes):
        rows.append({"path": path, **{key: value for key, value in outcome.items() if key != "warnings"}})
        notices += outcome.get("warnings", [])
        if outcome["status"] == "analysed":
            table, notice = _read_cached(cache_file, job.settings_key)
            if table is None:
                rows[-1].update(status="failed", reason=notice or f"{path}: the analysis left no table")
            else:
                frames[path] = table
    status = study.recordings[list(STUDY_COLUMNS)].merge(pd.DataFrame(rows), on="path", how="left")
    return StudyResult(study, frames, loaded.labels, settings.sample_fps, status, notices)


def _useful_workers(todo: list[tuple[str, Path]], settings: AnalysisSettings) -> int:
    """One process per core, fewer when the recordings' sampled frames would not repay their start."""
    frames = 0.0
    for path, _ in todo:
        try:
            reader = open_frames(Path(path), settings.frame_rate)
        except DataError:  # reported when the recording is analysed
            continue
        frames += reader.frame_count / reader.fps * min(settings.sample_fps, reader.fps)
        reader.release()
    return max(1, min(available_cores(), int(frames // FRAMES_PER_WORKER)))


def _cache_file(job: _Job, path: Path) -> Path:
    settings = hashlib.sha256(job.settings_key.encode()).hexdigest()[:12]
    return job.cache_dir / f"{content_fingerprint(path)}-{settings}.parquet"


# A worker process keeps the model it loaded for the next recording it is given.
_WORKER_MODELS: dict[tuple[str, str], inference.LoadedModel] = {}


def _analyze_one(item: tuple[str, Path], job: _Job, loaded: inference.LoadedModel | None = None) -> dict[str, Any]:
    """Analyse one recording (path, cache file) into the cache; its status, seconds, reason and warnings.

    Never raises FerLabError: a recording that fails is reported, and the study goes on.
    """
    import time

    path, cache_file = item
    started = time.perf_counter()
    try:
        if loaded is None:
            key = (job.reference, job.tracking_uri)
            if key not in _WORKER_MODELS:
                _WORKER_MODELS[key] = inference.load_model(job.reference, job.tracking_uri)
            loaded = _WORKER_MODELS[key]
        settings = job.settings
        detector = FaceDetector(DetectorConfig(max_side=settings.max_side, threshold=settings.threshold,
                                               model=settings.detector))
        framing = inference.Framing(settings.framing_scale, settings.framing_lift)
        predictor = inference.Predictor(loaded, detector, framing=framing)
        analysis = video.analyze_video(path, predictor, sample_fps=settings.sample_fps,
                                       detect_every=settings.detect_every, frame_rate=settings.frame_rate,
                                       progress=job.progress)
        _write_cached(cache_file, analysis.frames, job.settings_key)
    except FerLabError as error:
        return {"status": "failed", "seconds": time.perf_counter() - started, "reason": one_line(error)}
    return {"status": "analysed", "seconds": time.perf_counter() - started, "reason": "",
            "warnings": analysis.warnings}


def _write_cached(file: Path, frames: pd.DataFrame, key: str) -> None:
    """The per-frame table as Parquet with the cache key in its metadata, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frames, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), _METADATA_KEY: json.dumps({"key": key, "rows": len(frames)}).encode()}
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buffer)
    write_atomic(file, buffer.getvalue())


def _read_cached(file: Path, key: str) -> tuple[pd.DataFrame | None, str]:
    """The cached table when `file` holds one for `key`; else None and a notice when the file was unusable."""
    import pyarrow.parquet as pq

    if not file.is_file():
        return None, ""
    try:
        table = pq.read_table(file)
        stored = json.loads((table.schema.metadata or {}).get(_METADATA_KEY, b"{}"))
        frames = table.to_pandas()
        if stored.get("key") != key or stored.get("rows") != len(frames):
            raise ValueError("its key or row count does not match")
        missing = [column for column in video.FRAME_COLUMNS if column not in frames.columns]
        if missing:
            raise ValueError(f"missing columns {', '.join(missing)}")
    except (OSError, ValueError, KeyError) as error:
        return None, f"{file}: corrupt study cache entry, analysing the recording again ({one_line(error)})"
    return frames, ""

