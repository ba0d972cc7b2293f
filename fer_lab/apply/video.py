"""Moment-by-moment expressions in a video: sampled frames, tracked faces, timelines and summaries.

Frames are read with OpenCV and sampled at `sample_fps`. Faces are detected on every
`detect_every`-th sampled frame (default 2: detection is most of the cost); in between, each face
keeps its last box (faces move little in a tenth of a second, expressions more), so the
expression is still measured on every sampled frame. The price: a face that leaves is still
reported until the next detection. A face keeps its id while each new detection lies nearest to its previous box (see
`FaceTracker`). All faces of a group of sampled frames go through the model in one call.

Reading and writing video is `fer_lab.apply.video_io`'s, the per-face summaries and timelines
`fer_lab.apply.timeline`'s, and the generated demo inputs `fer_lab.apply.demo`'s.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_lab._shared import one_line
from fer_lab.apply import inference
from fer_lab.apply.annotate import draw_boxes
from fer_lab.apply.timeline import face_rows, face_summary, peaks, timeline_figure
from fer_lab.apply.video_io import FrameWriter, is_video, open_frames, preview_frames
from fer_lab.data import imaging
from fer_lab.errors import ConfigError, DataError
from fer_lab.faces.detector import BOX_COLUMNS, DetectorConfig, FaceDetector, Model

FRAME_COLUMNS = ("time", "frame", "face_id", *BOX_COLUMNS, "detected", "score", "label", "confidence")


@dataclass
class _Track:
    face_id: int
    box: np.ndarray
    last_seen: float


class FaceTracker:
    """Nearest-box tracking: a detection continues the track whose last box centre is nearest.

    A detection matches a track when the centres are less than `max_shift` box sides apart and
    the sizes differ by less than a factor of `max_scale`; pairs are taken nearest first. Tracks
    unseen for more than `max_gap` seconds end; unmatched detections start new tracks.
    """

    def __init__(self, max_shift: float = 0.5, max_scale: float = 1.5, max_gap: float = 1.0) -> None:
        self.max_shift, self.max_scale, self.max_gap = max_shift, max_scale, max_gap
        self._tracks: list[_Track] = []
        self._visible: list[_Track] = []
        self._next_id = 1

    def update(self, time_s: float, boxes: np.ndarray) -> list[int]:
        """Assign face ids to the boxes detected at `time_s` (in box order)."""
        self._tracks = [track for track in self._tracks if time_s - track.last_seen <= self.max_gap]
        ids: list[int | None] = [None] * len(boxes)
        pairs = sorted((self._distance(track.box, box), t, b) for t, track in enumerate(self._tracks)
                       for b, box in enumerate(boxes))
        used_tracks: set[int] = set()
        for distance, t, b in pairs:
            if distance >= self.max_shift or t in used_tracks or ids[b] is not None:
                continue
            if not self._similar_size(self._tracks[t].box, boxes[b]):
                continue
            used_tracks.add(t)
            ids[b] = self._tracks[t].face_id
            self._tracks[t].box, self._tracks[t].last_seen = np.asarray(boxes[b], float), time_s
        for b, face_id in enumerate(ids):
            if face_id is None:
                self._tracks.append(_Track(self._next_id, np.asarray(boxes[b], float), time_s))
                ids[b] = self._next_id
                self._next_id += 1
        self._visible = [track for track in self._tracks if track.last_seen == time_s]
        return [int(face_id) for face_id in ids if face_id is not None]

    def visible(self) -> tuple[list[int], np.ndarray]:
        """Ids and boxes of the faces found by the latest `update`, to carry to frames without detection."""
        return [t.face_id for t in self._visible], np.array([t.box for t in self._visible]).reshape(-1, 4)

    @staticmethod
    def _distance(a: np.ndarray, b: np.ndarray) -> float:
        side = (a[2] - a[0] + a[3] - a[1] + b[2] - b[0] + b[3] - b[1]) / 4
        return math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / max(side, 1e-9)

    def _similar_size(self, a: np.ndarray, b: np.ndarray) -> bool:
        ratio = (a[2] - a[0]) / max(b[2] - b[0], 1e-9)
        return 1 / self.max_scale < ratio < self.max_scale


@dataclass
class VideoAnalysis:
    """Everything measured on one video; `frames` has one row per face per sampled frame.

    Sampled frames without a face have one row with no face_id and label "". `warnings` lists
    what a user should know (early end, no faces); the rows gathered before a failure are kept.
    """

    path: Path
    frames: pd.DataFrame
    labels: tuple[str, ...]
    source_fps: float
    sample_fps: float
    announced_frames: int
    sampled: int
    seconds: float
    annotated_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def processing_fps(self) -> float:
        """Sampled frames analysed per second of wall time (>= sample_fps keeps up with real time).

        The model's one-time compilation happens before the clock starts and is not counted.
        """
        return self.sampled / self.seconds if self.seconds > 0 else float("nan")

    @property
    def duration(self) -> float:
        """Seconds of video covered by the sampled frames."""
        return self.sampled / self.sample_fps

    def face_summary(self) -> pd.DataFrame:
        """Per face: first/last time, seconds seen, dominant emotion and the share of its time in each."""
        return face_summary(self.frames, self.labels, self.sample_fps)

    def video_summary(self) -> pd.Series:
        """The whole video in one row (see `video_summary`)."""
        return video_summary(self)

    def peaks(self, smooth_seconds: float = 1.0) -> pd.DataFrame:
        """Per face and emotion, when its smoothed probability peaks and how high."""
        return peaks(self.frames, self.labels, smooth_seconds)

    def timeline(self, smooth_seconds: float = 1.0, max_faces: int = 6) -> Figure:
        """Smoothed probability of each emotion over time, one panel per face."""
        return timeline_figure(self.frames, self.labels, smooth_seconds, max_faces)

    def annotated_frames(self, count: int = 6) -> list[np.ndarray]:
        """`count` RGB frames spread over the annotated video (none when it was not written)."""
        return preview_frames(self.annotated_path, count) if self.annotated_path is not None else []

    def save(self, out_dir: str | os.PathLike[str], stem: str | None = None) -> list[Path]:
        """Write `<stem>_frames.csv/.parquet`, `<stem>_faces.csv`, `<stem>_summary.csv`; return the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = stem or self.path.stem
        written = [out_dir / f"{stem}_frames.csv", out_dir / f"{stem}_frames.parquet",
                   out_dir / f"{stem}_faces.csv", out_dir / f"{stem}_summary.csv"]
        self.frames.to_csv(written[0], index=False)
        self.frames.to_parquet(written[1], index=False)
        self.face_summary().to_csv(written[2], index=False)
        self.video_summary().to_frame("value").rename_axis("measure").reset_index().to_csv(written[3], index=False)
        return written


def analyze_video(
    path: str | os.PathLike[str],
    predictor: inference.Predictor,
    *,
    sample_fps: float = 10.0,
    detect_every: int = 2,
    tracker: FaceTracker | None = None,
    annotated_path: str | os.PathLike[str] | None = None,
    batch_frames: int = 16,
    max_seconds: float | None = None,
    progress: bool = False,
    frame_rate: float = 10.0,
) -> VideoAnalysis:
    """Sample `path` at `sample_fps`, find, track and classify faces; optionally write an annotated video.

    A read error or an interrupt (Ctrl-C) part way through ends the analysis with a warning; the
    rows up to there are kept.

    Args:
        path: The video file, or a folder of images read as one (`video_io.ImageSequence`).
        predictor: Detector, framing and model.
        sample_fps: Frames analysed per second of video (at most the video's rate).
        detect_every: Detect on every Nth sampled frame; in between, faces keep their last box.
        tracker: Assigns face ids (default: a new `FaceTracker`).
        annotated_path: Where to write the annotated video (.mp4 or .avi); None: not written.
        batch_frames: Sampled frames whose faces go through the model in one call.
        max_seconds: Analyse at most this much of the video.
        progress: Show a progress bar.
        frame_rate: Frames per second of a folder of images (videos carry their own).

    Returns:
        The per-frame table and what was measured.

    Raises:
        ConfigError: `sample_fps` or `detect_every` is out of range.
        DataError: The file cannot be opened as a video or has no frames.
    """
    from tqdm.auto import tqdm

    if sample_fps <= 0:
        raise ConfigError(f"sample_fps must be positive, not {sample_fps}")
    if detect_every < 1:
        raise ConfigError(f"detect_every must be at least 1, not {detect_every}")
    path = Path(path)
    tracker = tracker or FaceTracker()
    reader = open_frames(path, frame_rate)
    warnings: list[str] = []
    sample_fps = min(sample_fps, reader.fps)
    limit = reader.frame_count  # 0 when the container does not say
    if max_seconds is not None:
        limit = min(limit or math.inf, math.ceil(max_seconds * reader.fps))
    expected = math.ceil(limit * sample_fps / reader.fps) if limit else None
    writer = FrameWriter(Path(annotated_path), sample_fps) if annotated_path is not None else None
    rows: list[pd.DataFrame] = []
    pending: list[_Sampled] = []
    sampled = 0
    last_eyes: dict[int, np.ndarray] = {}
    frame_shape = (0, 0)
    read_to_end = False
    predictor.warm_up()
    started = time.perf_counter()
    bar = tqdm(total=expected, desc=path.name, unit="frame", disable=not progress, mininterval=0.5)
    try:
        for frame_index, frame in reader.sampled(sample_fps, limit or None):
            rgb = frame[:, :, ::-1]
            gray = imaging.to_gray(rgb)
            frame_shape = gray.shape
            time_s = frame_index / reader.fps
            if sampled % detect_every == 0:
                boxes, scores, eyes = predictor.detector.detect(gray)
                ids = tracker.update(time_s, boxes)
                last_eyes = dict(zip(ids, eyes))  # a carried box keeps its eyes: crops stay aligned alike
                detected = True
            else:
                ids, boxes = tracker.visible()
                eyes = np.array([last_eyes.get(face_id, np.full((2, 2), np.nan)) for face_id in ids]).reshape(-1, 2, 2)
                scores, detected = np.full(len(ids), np.nan), False
            pending.append(_Sampled(time_s, frame_index, ids, boxes, scores, detected,
                                    predictor.inputs(gray, boxes, eyes), rgb if writer else None))
            sampled += 1
            if len(pending) >= batch_frames:
                rows.extend(_classify(pending, predictor, writer))
                pending = []
            bar.update()
        read_to_end = True
    except cv2.error as error:
        warnings.append(f"{path}: reading stopped after {sampled} sampled frames: {one_line(error)}")
    except KeyboardInterrupt:
        # Long videos get interrupted on purpose; what was analysed so far is still worth keeping.
        warnings.append(f"{path}: interrupted after {sampled} sampled frames; the results cover only those")
    finally:
        bar.close()
        reader.release()
    warnings = [*reader.warnings, *warnings]
    rows.extend(_classify(pending, predictor, writer))
    if writer is not None:
        writer.release()
    seconds = time.perf_counter() - started
    if sampled == 0:
        raise DataError(f"{path}: the video has no frames OpenCV can decode")
    if read_to_end:
        warnings += reader.end_warnings(limit)
    table = pd.concat(rows, ignore_index=True)
    if table["face_id"].isna().all():
        warnings.append(f"{path}: no faces found in any of the {sampled} sampled frames "
                        f"(faces must be at least {predictor.detector.config.min_face(*frame_shape):.0f} px)")
    return VideoAnalysis(path, table, predictor.labels, reader.fps, sample_fps, reader.frame_count, sampled, seconds,
                         Path(annotated_path) if annotated_path is not None else None, warnings)


@dataclass
class _Sampled:
    """One sampled frame waiting for its model call."""

    time: float
    frame: int
    ids: list[int]
    boxes: np.ndarray
    scores: np.ndarray
    detected: bool
    inputs: np.ndarray
    rgb: np.ndarray | None


def _classify(pending: list[_Sampled], predictor: inference.Predictor, writer: FrameWriter | None) -> Iterator[pd.DataFrame]:
    """Rows for `pending` frames after one model call over all their faces; annotated frames go to `writer`.

    Built column-wise with numpy: per-frame DataFrames would cost more than the model call.
    """
    if not pending:
        return
    labels = predictor.labels
    probabilities = predictor.probabilities(np.concatenate([item.inputs for item in pending]))
    rows_per_frame = [max(1, len(item.ids)) for item in pending]
    total = sum(rows_per_frame)
    columns: dict[str, np.ndarray] = {
        "time": np.repeat([round(item.time, 6) for item in pending], rows_per_frame),
        "frame": np.repeat([item.frame for item in pending], rows_per_frame),
    }
    face_ids = pd.array([pd.NA] * total, dtype="Int64")
    boxes, scores = np.full((total, 4), np.nan), np.full(total, np.nan)
    probs, detected = np.full((total, len(labels)), np.nan), np.zeros(total, dtype=bool)
    row = offset = 0
    for item, count in zip(pending, rows_per_frame):
        found = len(item.ids)
        if found:
            face_ids[row:row + found] = item.ids
            boxes[row:row + found], scores[row:row + found] = item.boxes, item.scores
            probs[row:row + found] = probabilities[offset:offset + found]
            detected[row:row + found] = item.detected
            offset += found
        row += count
    has_face = ~np.isnan(probs[:, 0])
    top = np.where(has_face, np.nan_to_num(probs).argmax(axis=1), 0)
    table = pd.DataFrame(columns)
    table["face_id"] = face_ids
    table[list(BOX_COLUMNS)] = boxes
    table["detected"], table["score"] = detected, scores
    table["label"] = np.where(has_face, np.asarray(labels, dtype=object)[top], "").astype(object)
    table["confidence"] = np.where(has_face, np.nan_to_num(probs).max(axis=1), np.nan)
    table[inference.probability_columns(labels)] = probs
    if writer is not None:
        row = 0
        for item, count in zip(pending, rows_per_frame):
            if item.rgb is not None:
                captions = [f"#{face_id} {label} {confidence:.2f}" for face_id, label, confidence in zip(
                    item.ids, table["label"].iloc[row:row + count], table["confidence"].iloc[row:row + count])]
                writer.write(draw_boxes(item.rgb, item.boxes, captions,
                                                list(table["label"].iloc[row:row + len(item.ids)])))
            row += count
    yield table


def video_summary(analysis: VideoAnalysis) -> pd.Series:
    """The whole video: duration, sampled frames, share of frames with a face, faces tracked,
    processing speed, the dominant emotion and the share of face-time in each emotion."""
    frames = analysis.frames
    faces = face_rows(frames)
    with_face = frames.groupby("frame")["face_id"].apply(lambda ids: ids.notna().any())
    shares = faces["label"].value_counts(normalize=True).reindex(list(analysis.labels), fill_value=0.0)
    values = {
        "duration_s": analysis.duration, "sampled_frames": analysis.sampled, "sample_fps": analysis.sample_fps,
        "frames_with_faces": float(with_face.mean()) if len(with_face) else 0.0,
        "faces": int(faces["face_id"].nunique()),
        "processing_fps": analysis.processing_fps,
        "dominant": shares.idxmax() if len(faces) else "",
        **{f"share_{label}": float(share) for label, share in shares.items()},
    }
    return pd.Series(values, dtype=object)


# Detection image size when none is given: photos keep detail for small faces, video frames keep up with real time.
IMAGE_MAX_SIDE = 1024
VIDEO_MAX_SIDE = 640


def analyze_path(
    path: str | os.PathLike[str],
    loaded: inference.LoadedModel,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    max_side: int | None = None,
    threshold: float = 0.0,
    framing: inference.Framing = inference.Framing(),
    sample_fps: float = 10.0,
    detect_every: int = 2,
    smooth_seconds: float = 1.0,
    progress: bool = False,
    detector: Model = "mediapipe",
) -> inference.ImagePredictions | VideoAnalysis:
    """Apply a model to an image, a folder of images or a video; with `out_dir`, write tables and annotated copies.

    Videos write `<stem>_frames.csv/.parquet`, `<stem>_faces.csv`, `<stem>_summary.csv`,
    `<stem>_annotated.mp4` and `<stem>_timeline.png`; images write `predictions.csv` and
    `<name>_annotated.jpg`. What was computed is written even when the result has warnings.

    Args:
        path: An image, a folder of images or a video.
        loaded: The model.
        out_dir: Where outputs go; None: nothing is written.
        max_side: Longer side of the image the detector sees (default IMAGE_MAX_SIDE for photos,
            VIDEO_MAX_SIDE for video frames).
        threshold: Minimum detector score.
        framing: The training data's (`inference.measure_framing`); the default is FER2013's.
        sample_fps: Video frames analysed per second.
        detect_every: Detect on every Nth sampled video frame.
        smooth_seconds: Moving-average window of the written timeline.
        progress: Show progress bars.
        detector: The face detector model (`fer_lab.faces.detector.MODELS`).

    Returns:
        The photos' predictions, or the video's analysis.
    """
    path = Path(path)
    if is_video(path):
        config = DetectorConfig(max_side=max_side or VIDEO_MAX_SIDE, threshold=threshold, model=detector)
        predictor = inference.Predictor(loaded, FaceDetector(config), framing=framing)
        annotated = Path(out_dir) / f"{path.stem}_annotated.mp4" if out_dir is not None else None
        analysis = analyze_video(path, predictor, sample_fps=sample_fps, detect_every=detect_every,
                                 annotated_path=annotated, progress=progress)
        if out_dir is not None:
            analysis.save(out_dir)
            analysis.timeline(smooth_seconds).savefig(Path(out_dir) / f"{path.stem}_timeline.png", dpi=100)
        return analysis
    config = DetectorConfig(max_side=max_side or IMAGE_MAX_SIDE, threshold=threshold, model=detector)
    predictor = inference.Predictor(loaded, FaceDetector(config), framing=framing)
    result = predictor.predict_files(inference.image_files(path), progress=progress)
    if out_dir is not None:
        result.save(out_dir)
    return result


def result_text(result: inference.ImagePredictions | VideoAnalysis, max_rows: int = 40) -> str:
    """A plain-text table of a result for the terminal: faces per image, or per face and per video."""
    if isinstance(result, VideoAnalysis):
        summary = result.video_summary()
        head = (f"{result.path.name}: {result.sampled} frames at {result.sample_fps:g} fps "
                f"({result.duration:.1f} s), {summary['faces']} faces, "
                f"analysed at {result.processing_fps:.1f} frames/s")
        faces = result.face_summary()
        return head if faces.empty else head + "\n" + faces.round(2).to_string(index=False)
    columns = ["path", "face", *BOX_COLUMNS, "label", "confidence"]
    table = result.table[columns].assign(path=result.table["path"].map(result.short_names()))
    text = table.head(max_rows).round(2).to_string(index=False)
    more = len(table) - max_rows
    return text + (f"\n... {more} more rows" if more > 0 else "")

