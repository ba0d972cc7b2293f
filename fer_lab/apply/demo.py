"""Generated inputs for 06_apply when no footage is given, and how well the model reads them.

From a dataset's test faces, `dataset_inputs` composes a short video and two stills (enlarged
faces on a synthetic backdrop, as a face looks in a real frame) whose expressions are known:
`DemoInputs.truth` says which expression is shown where and when. `true_labels` matches predicted
faces to it, and `overview` reports speed and agreement per input.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image as PILImage

from fer_lab import data, project
from fer_lab.apply.inference import ImagePredictions
from fer_lab.apply.video import VIDEO_MAX_SIDE, VideoAnalysis
from fer_lab.apply.video_io import FrameWriter
from fer_lab.data import imaging
from fer_lab.errors import DataError, FerLabWarning
from fer_lab.faces.detector import DetectorConfig, FaceDetector

# Test faces the demo chooses from (only those the detector finds once enlarged are used).
DEMO_CANDIDATES = 300


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
    detector: FaceDetector | None = None,
) -> DemoInputs:
    """Write `demo.mp4` (640x360) and two stills made of dataset faces on a synthetic background.

    In the video, person 1 changes expression twice and person 2 (entering after one second)
    once; both drift slowly and leave for the last half second, so the timeline shows changes,
    a face appearing and frames without faces.

    Args:
        out_dir: Where the files are written (created if needed).
        faces: 48x48 grayscale dataset images (N, 48, 48) uint8.
        labels: The N images' expressions.
        seed: Chooses faces, backgrounds and noise.
        seconds: Length of the video.
        fps: Frame rate of the video.
        face_px: Side of an enlarged face in the video.
        detector: When given, only faces it finds once enlarged to `face_px` are used.

    Returns:
        The files written and `truth`, what each shows where and when.
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
    writer = FrameWriter(video_path, fps)
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


def _demo_faces(faces: np.ndarray, labels: Sequence[str], rng: np.random.Generator, face_px: int,
                detector: FaceDetector | None, needed: int) -> list[int]:
    """Indices of `needed` faces, consecutive ones of different labels where possible, detectable if asked."""
    if len(faces) == 0:
        raise DataError("no faces to build demo inputs from")
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
        raise DataError(f"none of the {len(faces)} faces is found by the face detector at {face_px} px")
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


def dataset_inputs(
    data_path: str | os.PathLike[str],
    manifest: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    seconds: float = 6.0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DemoInputs:
    """`make_demo_inputs` from up to DEMO_CANDIDATES random readable test faces of the dataset.

    Args:
        data_path: The dataset.
        manifest: Its manifest.
        out_dir: Where the demo files are written.
        seed: Chooses the faces and everything `make_demo_inputs` draws.
        seconds: Length of the video.
        cache_dir: Pixel cache for `data.load_pixels`.

    Returns:
        The demo inputs; only faces the video-frame detector finds are used.
    """
    readable = manifest[manifest["readable"].astype(bool)].reset_index(drop=True)
    test = readable[readable["split"] == "test"]
    test = test.sample(n=min(DEMO_CANDIDATES, len(test)), random_state=seed).reset_index(drop=True)
    pixels = data.load_pixels(data_path, test, cache_dir=cache_dir)
    detector = FaceDetector(DetectorConfig(max_side=VIDEO_MAX_SIDE))
    return make_demo_inputs(out_dir, pixels, list(test["label"]), seed=seed, seconds=seconds, detector=detector)


def choose_inputs(
    input_path: str,
    data_path: str | os.PathLike[str],
    manifest: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    seconds: float = 6.0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[Path], pd.DataFrame | None]:
    """The files 06_apply analyses and, for generated inputs, their truth.

    Args:
        input_path: An image, a folder of images or a video (relative to the project root);
            empty: generated demo inputs (`dataset_inputs`).
        data_path: The dataset the demo is made from.
        manifest: Its manifest.
        out_dir: Where demo files are written.
        seed: For the demo.
        seconds: Length of the demo video.
        cache_dir: Pixel cache for the demo's faces.

    Returns:
        (paths, truth); truth is None for a given `input_path`.
    """
    if input_path:
        return [project.resolve(input_path)], None
    try:
        demo = dataset_inputs(data_path, manifest, out_dir, seed=seed, seconds=seconds, cache_dir=cache_dir)
    except DataError as error:
        # A dataset whose faces the detector cannot see in a scene still had its model trained and scored:
        # the demo is skipped with a note instead of failing the pipeline.
        warnings.warn(f"no generated demo: {error}; pass input_path to apply the model to your own photos or video",
                      FerLabWarning, stacklevel=2)
        return [], None
    return [*demo.stills, demo.video], demo.truth


def photo_table(photos: Sequence[ImagePredictions], truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """All photos' rows in one table; with `truth`, a `true_label` column (`true_labels`)."""
    if not photos:
        return pd.DataFrame()
    table = pd.concat([result.table for result in photos], ignore_index=True)
    if truth is not None:
        table["true_label"] = pd.concat(
            [true_labels(rows, path, truth) for path, rows in table.groupby("path", sort=False)])
    return table


def _agreement(table: pd.DataFrame) -> float:
    """Share of the rows with a known true label whose predicted label is it."""
    judged = table[table["true_label"] != ""]
    return float((judged["label"] == judged["true_label"]).mean())


def overview(videos: Sequence[VideoAnalysis], photos: pd.DataFrame,
             truth: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per input kind: faces, speed and, on generated inputs, agreement with the truth; and metrics to log.

    `agreement` is the share of detected faces (photos) or face-frames (video) whose top
    expression is the one really shown. `photos` is `photo_table`'s table.
    """
    metrics: dict[str, float] = {}
    rows = []
    for result in videos:
        metrics[f"{result.path.stem}_processing_fps"] = result.processing_fps
        rows.append({"input": result.path.name, "kind": "video", "faces": result.video_summary()["faces"],
                     "frames/s": round(result.processing_fps, 1),
                     "real time": result.processing_fps >= result.sample_fps})
        if truth is not None:
            frames = result.frames.assign(true_label=true_labels(result.frames, result.path.name, truth))
            rows[-1]["agreement"] = metrics["demo_video_agreement"] = _agreement(frames)
    if len(photos):
        rows.append({"input": f"{photos['path'].nunique()} photos", "kind": "images",
                     "faces": int(photos["face"].notna().sum())})
        if truth is not None:
            rows[-1]["agreement"] = metrics["demo_photo_agreement"] = _agreement(photos)
    return pd.DataFrame(rows), metrics
