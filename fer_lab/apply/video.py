"""Moment-by-moment expressions in a video: sampled frames, tracked faces, timelines and summaries.

Frames are read with OpenCV and sampled at `sample_fps`. Faces are detected on every
`detect_every`-th sampled frame (default 2: detection is most of the cost); in between, each face
keeps its last box (faces move little in a tenth of a second, expressions more), so the
expression is still measured on every sampled frame. The price: a face that leaves is still
reported until the next detection. A face keeps its id while each new detection lies nearest to its previous box (see
`FaceTracker`). All faces of a group of sampled frames go through the model in one call.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image as PILImage

from fer_lab.apply import inference
from fer_lab.data import imaging
from fer_lab.errors import FerLabError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
# Codecs this project's OpenCV wheel can write without extra libraries (checked: mp4v and MJPG work,
# H.264 does not), by output suffix.
WRITER_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
FRAME_COLUMNS = ("time", "frame", "face_id", *inference.BOX_COLUMNS, "detected", "score", "label", "confidence")


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a video file by its suffix."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


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
) -> VideoAnalysis:
    """Sample `path` at `sample_fps`, find, track and classify faces; optionally write an annotated video.

    Raises FerLabError when the file cannot be opened as a video or has no frames. A read error
    or an interrupt (Ctrl-C) part way through ends the analysis with a warning; the rows up to
    there are kept.
    """
    from tqdm.auto import tqdm

    if sample_fps <= 0:
        raise FerLabError(f"sample_fps must be positive, not {sample_fps}")
    if detect_every < 1:
        raise FerLabError(f"detect_every must be at least 1, not {detect_every}")
    path = Path(path)
    tracker = tracker or FaceTracker()
    reader = VideoReader(path)
    warnings = list(reader.warnings)
    sample_fps = min(sample_fps, reader.fps)
    limit = reader.frame_count  # 0 when the container does not say
    if max_seconds is not None:
        limit = min(limit or math.inf, math.ceil(max_seconds * reader.fps))
    expected = math.ceil(limit * sample_fps / reader.fps) if limit else None
    writer = _Writer(Path(annotated_path), sample_fps) if annotated_path is not None else None
    rows: list[pd.DataFrame] = []
    pending: list[_Sampled] = []
    sampled = 0
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
                boxes, scores = predictor.detector(gray)
                ids = tracker.update(time_s, boxes)
                detected = True
            else:
                ids, boxes = tracker.visible()
                scores, detected = np.full(len(ids), np.nan), False
            pending.append(_Sampled(time_s, frame_index, ids, boxes, scores, detected,
                                    predictor.inputs(gray, boxes), rgb if writer else None))
            sampled += 1
            if len(pending) >= batch_frames:
                rows.extend(_classify(pending, predictor, writer))
                pending = []
            bar.update()
        read_to_end = True
    except cv2.error as error:
        warnings.append(f"{path}: reading stopped after {sampled} sampled frames: {' '.join(str(error).split())}")
    except KeyboardInterrupt:
        # Long videos get interrupted on purpose; what was analysed so far is still worth keeping.
        warnings.append(f"{path}: interrupted after {sampled} sampled frames; the results cover only those")
    finally:
        bar.close()
        reader.release()
    rows.extend(_classify(pending, predictor, writer))
    if writer is not None:
        writer.release()
    seconds = time.perf_counter() - started
    if sampled == 0:
        raise FerLabError(f"{path}: the video has no frames OpenCV can decode")
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


def _classify(pending: list[_Sampled], predictor: inference.Predictor, writer: "_Writer | None") -> Iterator[pd.DataFrame]:
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
    table[list(inference.BOX_COLUMNS)] = boxes
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
                writer.write(inference.draw_boxes(item.rgb, item.boxes, captions,
                                                list(table["label"].iloc[row:row + len(item.ids)])))
            row += count
    yield table


class VideoReader:
    """cv2.VideoCapture with checks that turn OpenCV's silent failures into messages."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FerLabError(f"{path}: no such video file")
        if path.stat().st_size == 0:
            raise FerLabError(f"{path}: empty file (0 bytes)")
        self.path = path
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise FerLabError(f"{path}: OpenCV cannot open this file as a video (not a video, damaged, or an unsupported codec)")
        self.warnings: list[str] = []
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        if not fps or not math.isfinite(fps) or fps <= 0 or fps > 1000:
            self.warnings.append(f"{path}: the video reports no frame rate; assuming 25 fps")
            fps = 25.0
        self.fps = float(fps)
        count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count and math.isfinite(count) and count > 0 else 0
        self.frames_read = 0

    def sampled(self, sample_fps: float, limit: float | None) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, BGR frame) of the first frame at or after each multiple of 1/sample_fps seconds."""
        target = 0  # number of the next sample, due at target / sample_fps seconds
        index = 0
        while limit is None or index < limit:
            take = index * sample_fps >= target * self.fps - 1e-6
            # grab() skips a frame without converting it to an image, much cheaper than read().
            ok, frame = self.capture.read() if take else (self.capture.grab(), None)
            if not ok:
                break
            self.frames_read = index + 1
            if take:
                yield index, frame
                target = math.floor(index * sample_fps / self.fps + 1e-6) + 1
            index += 1

    def end_warnings(self, limit: float) -> list[str]:
        """A warning when the video ended well before the frame count its header announced."""
        if limit and self.frames_read < 0.98 * limit:
            return [f"{self.path}: the video ended after {self.frames_read} of {limit} frames "
                    f"({self.frames_read / self.fps:.1f} s); it may be truncated"]
        return []

    def release(self) -> None:
        self.capture.release()


class _Writer:
    """cv2.VideoWriter for annotated RGB frames, with the codec that suits the file suffix."""

    def __init__(self, path: Path, fps: float) -> None:
        suffix = path.suffix.lower()
        if suffix not in WRITER_CODECS:
            raise FerLabError(f"{path}: annotated video must end in {' or '.join(WRITER_CODECS)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps = path, fps
        self._writer = None

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            height, width = rgb.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*WRITER_CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
            if not self._writer.isOpened():
                raise FerLabError(f"{self.path}: OpenCV cannot write this video (codec {WRITER_CODECS[self.path.suffix.lower()]})")
        self._writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))

    def release(self) -> None:
        if self._writer is not None:
            self._writer.release()


def face_rows(frames: pd.DataFrame) -> pd.DataFrame:
    """Only the rows that are faces (drops the rows of frames without faces)."""
    return frames[frames["face_id"].notna()]


def face_summary(frames: pd.DataFrame, labels: Sequence[str], sample_fps: float) -> pd.DataFrame:
    """Per face id: first, last, frames, seconds (frames / sample_fps), dominant label, share_<label>.

    `share_<label>` is the fraction of the face's sampled frames whose top label is `<label>`.
    """
    faces = face_rows(frames)
    columns = ["face_id", "first", "last", "frames", "seconds", "dominant", *(f"share_{label}" for label in labels)]
    if faces.empty:
        return pd.DataFrame(columns=columns)
    grouped = faces.groupby("face_id")
    summary = pd.DataFrame({"first": grouped["time"].min(), "last": grouped["time"].max(),
                            "frames": grouped.size()})
    summary["seconds"] = summary["frames"] / sample_fps
    shares = pd.crosstab(faces["face_id"], faces["label"], normalize="index").reindex(columns=list(labels),
                                                                                         fill_value=0.0)
    summary["dominant"] = shares.idxmax(axis=1)
    summary[[f"share_{label}" for label in labels]] = shares.to_numpy()
    return summary.reset_index()[columns]


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


def smooth(frames: pd.DataFrame, labels: Sequence[str], seconds: float = 1.0) -> pd.DataFrame:
    """Face rows with each p_<label> replaced by its centred moving average over `seconds`, per face."""
    faces = face_rows(frames).sort_values(["face_id", "time"])
    columns = inference.probability_columns(labels)
    if faces.empty or seconds <= 0:
        return faces.reset_index(drop=True)
    window = pd.Timedelta(seconds=seconds)
    smoothed = []
    for _, face in faces.groupby("face_id"):
        indexed = face[columns].set_axis(pd.to_timedelta(face["time"], unit="s"))
        # Samples can share a timestamp only for different faces, so the index is strictly increasing here.
        averaged = indexed.rolling(window, center=True, min_periods=1).mean()
        smoothed.append(face.assign(**{column: averaged[column].to_numpy() for column in columns}))
    return pd.concat(smoothed, ignore_index=True)


def peaks(frames: pd.DataFrame, labels: Sequence[str], smooth_seconds: float = 1.0) -> pd.DataFrame:
    """For each face and emotion: the time its smoothed probability is highest, and that probability."""
    smoothed = smooth(frames, labels, smooth_seconds)
    rows = []
    for face_id, face in smoothed.groupby("face_id"):
        for label, column in zip(labels, inference.probability_columns(labels)):
            best = face[column].idxmax()
            rows.append({"face_id": face_id, "label": label, "time": face.at[best, "time"],
                         "probability": face.at[best, column]})
    return pd.DataFrame(rows, columns=["face_id", "label", "time", "probability"])


def timeline_figure(frames: pd.DataFrame, labels: Sequence[str], smooth_seconds: float = 1.0,
                    max_faces: int = 6) -> Figure:
    """One panel per face (the `max_faces` seen longest): smoothed probability of each emotion over time."""
    smoothed = smooth(frames, labels, smooth_seconds)
    if smoothed.empty:
        fig = Figure(figsize=(6, 1), layout="constrained")
        fig.text(0.5, 0.5, "no faces found", ha="center", va="center")
        return fig
    longest = smoothed["face_id"].value_counts().head(max_faces).index.sort_values()
    fig = Figure(figsize=(9, 1.0 + 1.9 * len(longest)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(longest), 1, sharex=True, squeeze=False).ravel())
    end = frames["time"].max()
    for ax, face_id in zip(axes, longest):
        face = smoothed[smoothed["face_id"] == face_id]
        for label, column in zip(labels, inference.probability_columns(labels)):
            ax.plot(face["time"], face[column], color=inference.label_color(label), label=label, linewidth=1.5,
                    marker="." if len(face) < 3 else None)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, max(end, 1e-3))
        ax.set_ylabel(f"face {face_id}")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"emotion probabilities, {smooth_seconds:g} s moving average")
    return fig


@dataclass
class DemoInputs:
    """Generated inputs for trying a model without footage: a video, stills, and what they show."""

    video: Path
    stills: list[Path]
    truth: pd.DataFrame  # file, person, x (centre), start, end (s; NaN for stills), label


def make_demo_inputs(
    out_dir: str | os.PathLike[str],
    faces: np.ndarray,
    labels: Sequence[str],
    *,
    seed: int = 0,
    seconds: float = 6.0,
    fps: float = 30.0,
    face_px: int = 170,
    detector: inference.FaceDetector | None = None,
) -> DemoInputs:
    """Write `demo.mp4` (640x360) and two stills made of dataset faces on a synthetic background.

    In the video, person 1 changes expression twice and person 2 (entering after one second)
    once; both drift slowly and leave for the last half second, so the timeline shows changes,
    a face appearing and frames without faces. `faces` are 48x48 grayscale images with their
    `labels`; with `detector`, only faces it finds once enlarged to `face_px` are used.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chosen = _demo_faces(faces, labels, rng, face_px, detector, needed=9)
    enlarged = [_enlarge(faces[index], face_px) for index in chosen]
    names = [str(labels[index]) for index in chosen]
    width, height = 640, 360
    background = _background(rng, width, height)
    frame_count = int(round(seconds * fps))
    leave = seconds - 0.5
    people = [  # (faces used, enters, centre x, centre y, drift)
        ([0, 1, 2], 0.0, 190, 175, 35),
        ([3, 4], 1.0, 460, 190, 25),
    ]
    truth = []
    for person, (indices, enters, centre_x, _, _) in enumerate(people, start=1):
        bounds = np.linspace(enters, leave, len(indices) + 1)
        truth += [{"file": "demo.mp4", "person": person, "x": centre_x, "start": float(start), "end": float(end),
                   "label": names[index]} for index, start, end in zip(indices, bounds[:-1], bounds[1:])]
    video_path = out_dir / "demo.mp4"
    writer = _Writer(video_path, fps)
    for frame_index in range(frame_count):
        time_s = frame_index / fps
        frame = background.copy()
        for person, (indices, enters, centre_x, centre_y, drift) in enumerate(people):
            if not enters <= time_s < leave:
                continue
            segment = min(int((time_s - enters) / (leave - enters) * len(indices)), len(indices) - 1)
            x = centre_x + drift * math.sin(2 * math.pi * time_s / 4.0 + person)
            y = centre_y + 0.4 * drift * math.sin(2 * math.pi * time_s / 3.0)
            _paste(frame, enlarged[indices[segment]], x, y)
        noise = rng.normal(0, 2.0, frame.shape)
        writer.write(np.clip(frame + noise, 0, 255).astype(np.uint8))
    writer.release()
    stills = [out_dir / "group.jpg", out_dir / "portrait_gray.png"]
    group = _background(rng, 1024, 640)
    placements = ((230, 330, 170), (520, 300, 240), (820, 350, 200))
    for index, (x, y, size) in zip((5, 6, 7), placements):
        _paste(group, _enlarge(faces[chosen[index]], size), x, y)
    PILImage.fromarray(group.astype(np.uint8)).save(stills[0], quality=92)
    portrait = imaging.to_gray(_background(rng, 320, 400).astype(np.uint8)).astype(float)[..., None]
    _paste(portrait, _enlarge(faces[chosen[8]], 190)[..., :1], 160, 190)
    PILImage.fromarray(portrait[..., 0].astype(np.uint8)).save(stills[1])
    truth += [{"file": stills[0].name, "person": person, "x": x, "start": np.nan, "end": np.nan, "label": names[index]}
              for person, (index, (x, _, _)) in enumerate(zip((5, 6, 7), placements), start=1)]
    truth.append({"file": stills[1].name, "person": 1, "x": 160, "start": np.nan, "end": np.nan, "label": names[8]})
    return DemoInputs(video_path, stills, pd.DataFrame(truth))


def true_labels(table: pd.DataFrame, file: str, truth: pd.DataFrame) -> pd.Series:
    """The label each face row of `table` (from `file`) really shows, per `DemoInputs.truth` ("" for no face).

    A face is the person in view at its time (stills: always) whose nominal centre is nearest to its box.
    """
    shown = truth[truth["file"] == Path(file).name]
    labels = pd.Series("", index=table.index, dtype=object)
    for index, row in table[table["label"] != ""].iterrows():
        in_view = shown if "time" not in row else shown[(shown["start"] <= row["time"]) & (row["time"] < shown["end"])]
        if len(in_view):
            centre = (row["x0"] + row["x1"]) / 2
            labels[index] = in_view.loc[(in_view["x"] - centre).abs().idxmin(), "label"]
    return labels


def preview_frames(path: str | os.PathLike[str], count: int = 6) -> list[np.ndarray]:
    """`count` RGB frames spread evenly over a video (e.g. an annotated one), for display."""
    reader = VideoReader(Path(path))
    try:
        total = reader.frame_count or count
        wanted = set(np.linspace(0, total - 1, count).round().astype(int).tolist())
        frames = []
        for index in range(total):
            ok, frame = reader.capture.read() if index in wanted else (reader.capture.grab(), None)
            if not ok:
                break
            if frame is not None:
                frames.append(np.ascontiguousarray(frame[:, :, ::-1]))
        return frames
    finally:
        reader.release()


def _demo_faces(faces: np.ndarray, labels: Sequence[str], rng: np.random.Generator, face_px: int,
                detector: inference.FaceDetector | None, needed: int) -> list[int]:
    """Indices of `needed` faces, consecutive ones of different labels where possible, detectable if asked."""
    if len(faces) == 0:
        raise FerLabError("no faces to build demo inputs from")
    chosen: list[int] = []
    for index in rng.permutation(len(faces)):
        if chosen and labels[index] == labels[chosen[-1]] and len(set(labels)) > 1:
            continue
        if detector is not None:
            canvas = np.full((face_px * 2, face_px * 2, 3), 110.0)
            _paste(canvas, _enlarge(faces[index], face_px), face_px, face_px)
            if len(detector(imaging.to_gray(canvas.astype(np.uint8)))[0]) != 1:
                continue
        chosen.append(int(index))
        if len(chosen) == needed:
            return chosen
    if not chosen:
        raise FerLabError(f"none of the {len(faces)} faces is found by the face detector at {face_px} px")
    return [chosen[i % len(chosen)] for i in range(needed)]


def _enlarge(face: np.ndarray, size: int) -> np.ndarray:
    """A 48x48 grayscale face as a (size, size, 3) float RGB image."""
    big = np.asarray(PILImage.fromarray(np.asarray(face, np.uint8)).resize((size, size), PILImage.Resampling.BICUBIC))
    return np.repeat(big[..., None].astype(float), 3, axis=2)


def _paste(canvas: np.ndarray, face: np.ndarray, centre_x: float, centre_y: float) -> None:
    """Blend `face` into `canvas` (float, in place) centred at (x, y), its edges feathered into the background."""
    size = face.shape[0]
    ramp = np.minimum(np.arange(size), np.arange(size)[::-1]) / (0.08 * size)
    alpha = np.clip(np.minimum.outer(ramp, ramp), 0, 1)[..., None]
    left, top = int(round(centre_x - size / 2)), int(round(centre_y - size / 2))
    y0, y1 = max(0, top), min(canvas.shape[0], top + size)
    x0, x1 = max(0, left), min(canvas.shape[1], left + size)
    if y0 >= y1 or x0 >= x1:
        return
    part = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    canvas[y0:y1, x0:x1] = alpha[part] * face[part] + (1 - alpha[part]) * canvas[y0:y1, x0:x1]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A float RGB backdrop: a colour gradient with a few soft blobs, like an out-of-focus room."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    start, end = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    image = start + (end - start) * ((x + y) / (x.max() + y.max()))[..., None]
    for _ in range(6):
        centre, radius = rng.uniform(0, 1, 2) * (x.max(), y.max()), rng.uniform(0.05, 0.2)
        blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * radius**2))
        image += blob[..., None] * rng.uniform(-40, 40, 3)
    return np.clip(image, 0, 255)


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
) -> inference.ImagePredictions | VideoAnalysis:
    """Apply a model to an image, a folder of images or a video; with `out_dir`, write tables and annotated copies.

    Videos write `<stem>_frames.csv/.parquet`, `<stem>_faces.csv`, `<stem>_summary.csv`,
    `<stem>_annotated.mp4` and `<stem>_timeline.png`; images write `predictions.csv` and
    `<name>_annotated.jpg`. What was computed is written even when the result has warnings.
    `framing` should be the training data's (`inference.measure_framing`); the default is FER2013's.
    """
    path = Path(path)
    if is_video(path):
        config = inference.DetectorConfig(max_side=max_side or VIDEO_MAX_SIDE, threshold=threshold)
        predictor = inference.Predictor(loaded, inference.FaceDetector(config), framing=framing)
        annotated = Path(out_dir) / f"{path.stem}_annotated.mp4" if out_dir is not None else None
        analysis = analyze_video(path, predictor, sample_fps=sample_fps, detect_every=detect_every,
                                 annotated_path=annotated, progress=progress)
        if out_dir is not None:
            analysis.save(out_dir)
            analysis.timeline(smooth_seconds).savefig(Path(out_dir) / f"{path.stem}_timeline.png", dpi=100)
        return analysis
    config = inference.DetectorConfig(max_side=max_side or IMAGE_MAX_SIDE, threshold=threshold)
    predictor = inference.Predictor(loaded, inference.FaceDetector(config), framing=framing)
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
    columns = ["path", "face", *inference.BOX_COLUMNS, "label", "confidence"]
    table = result.table[columns].assign(path=result.table["path"].map(lambda value: Path(value).name))
    text = table.head(max_rows).round(2).to_string(index=False)
    more = len(table) - max_rows
    return text + (f"\n... {more} more rows" if more > 0 else "")
