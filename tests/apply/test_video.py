"""Video analysis on videos written here with OpenCV: sampling, tracking, tables, outputs and bad files."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from fer_lab import data
from fer_lab.apply import annotate, demo, inference, video, video_io
from fer_lab.data import synthetic_faces
from fer_lab.errors import FerLabError
from fer_lab.faces.detector import DetectorConfig, FaceDetector

WIDTH, HEIGHT = 640, 360


@pytest.fixture(scope="module")
def predictor() -> inference.Predictor:
    """A random-weight model that honours the model contract (the real loader is tested in test_predict)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(data.CLASSES), activation="softmax")(x))
    config = DetectorConfig(max_side=video.VIDEO_MAX_SIDE)
    return inference.Predictor(inference.LoadedModel(model, data.CLASSES, "test"), FaceDetector(config))


@pytest.fixture(scope="module")
def face_patch() -> np.ndarray:
    """The astronaut's head and shoulders enlarged 1.5x (face about 130 px), BGR."""
    patch = skimage.data.astronaut()[20:260, 100:340]
    return np.asarray(Image.fromarray(patch).resize((360, 360)))[:, :, ::-1][40:320, 40:320]


def write_video(path: Path, frames: int, fps: float, face: np.ndarray | None, face_until: int | None = None,
                codec: str = "mp4v") -> Path:
    """A 640x360 video; `face` drifts right 2 px per frame and is shown on frames below `face_until`."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for index in range(frames):
        frame = np.full((HEIGHT, WIDTH, 3), (90, 120, 150), np.uint8)
        if face is not None and (face_until is None or index < face_until):
            left = 100 + 2 * index
            frame[40:40 + face.shape[0], left:left + face.shape[1]] = face
        writer.write(frame)
    writer.release()
    return path


def test_per_frame_table_rows_times_and_outputs(predictor: inference.Predictor, face_patch: np.ndarray,
                                                tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", frames=45, fps=30, face=face_patch)
    annotated = tmp_path / "out" / "clip_annotated.mp4"
    analysis = video.analyze_video(clip, predictor, sample_fps=10, detect_every=2, annotated_path=annotated)
    frames = analysis.frames
    assert analysis.sampled == 15 and len(frames) == 15 and analysis.warnings == []
    np.testing.assert_allclose(frames["time"], np.arange(15) / 10)
    assert frames["frame"].tolist() == list(range(0, 45, 3))
    assert frames["face_id"].tolist() == [1] * 15
    assert frames["detected"].tolist() == [True, False] * 7 + [True]
    np.testing.assert_allclose(frames[inference.probability_columns(data.CLASSES)].sum(axis=1), 1.0, atol=1e-5)
    # The box follows the face, which moved 2 px per source frame.
    detected = frames[frames["detected"]]
    shift = np.polyfit(detected["frame"], detected["x0"], 1)[0]
    assert 1.5 < shift < 2.5
    assert list(frames.columns[:len(video.FRAME_COLUMNS)]) == list(video.FRAME_COLUMNS)

    capture = cv2.VideoCapture(str(annotated))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 15 and capture.get(cv2.CAP_PROP_FPS) == 10
    capture.release()

    faces = analysis.face_summary()
    assert faces["face_id"].tolist() == [1] and faces.loc[0, "frames"] == 15
    assert faces.loc[0, "seconds"] == pytest.approx(1.5)
    assert faces[[f"share_{label}" for label in data.CLASSES]].sum(axis=1).iloc[0] == pytest.approx(1.0)
    summary = analysis.video_summary()
    assert summary["frames_with_faces"] == 1.0 and summary["faces"] == 1 and summary["duration_s"] == 1.5
    assert len(analysis.peaks()) == len(data.CLASSES)
    written = analysis.save(tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_parquet(written[1]), frames)
    assert len(pd.read_csv(written[0])) == 15


def test_frames_without_faces_are_recorded(predictor: inference.Predictor, face_patch: np.ndarray,
                                           tmp_path: Path) -> None:
    clip = write_video(tmp_path / "leaves.avi", frames=20, fps=20, face=face_patch, face_until=10, codec="MJPG")
    frames = video.analyze_video(clip, predictor, sample_fps=5, detect_every=1).frames
    assert frames["time"].tolist() == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert frames["face_id"].notna().tolist() == [True, True, True, False, False]
    assert frames["label"].tolist()[3:] == ["", ""] and frames["confidence"].isna().tolist()[3:] == [True, True]
    assert frames["frame"].tolist() == [0, 4, 8, 12, 16]


def test_no_faces_anywhere_gives_a_warning(predictor: inference.Predictor, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "empty_room.mp4", frames=10, fps=10, face=None)
    analysis = video.analyze_video(clip, predictor, sample_fps=10)
    assert len(analysis.frames) == 10 and analysis.frames["face_id"].isna().all()
    assert analysis.warnings == [f"{clip}: no faces found in any of the 10 sampled frames (faces must be at least 80 px)"]
    assert analysis.face_summary().empty and analysis.video_summary()["faces"] == 0


def test_unreadable_and_empty_videos(predictor: inference.Predictor, tmp_path: Path) -> None:
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is text, not a video\n" * 20)
    with pytest.raises(FerLabError, match="OpenCV cannot open this file as a video"):
        video.analyze_video(not_video, predictor)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(FerLabError, match=r"empty\.mp4: empty file"):
        video.analyze_video(empty, predictor)
    no_frames = write_video(tmp_path / "no_frames.avi", frames=0, fps=10, face=None, codec="MJPG")
    with pytest.raises(FerLabError, match="no_frames.avi: the video has no frames OpenCV can decode"):
        video.analyze_video(no_frames, predictor)
    with pytest.raises(FerLabError, match="no such video file"):
        video.analyze_video(tmp_path / "missing.mp4", predictor)


def test_truncated_video_keeps_partial_results(predictor: inference.Predictor, face_patch: np.ndarray,
                                               tmp_path: Path) -> None:
    clip = write_video(tmp_path / "cut.avi", frames=30, fps=10, face=face_patch, codec="MJPG")
    content = clip.read_bytes()
    clip.write_bytes(content[: len(content) // 2])
    analysis = video.analyze_video(clip, predictor, sample_fps=10)
    assert 5 <= analysis.sampled < 30 and len(analysis.frames) == analysis.sampled
    assert analysis.warnings[0].startswith(f"{clip}: the video ended after {analysis.sampled} of 30 frames")


def test_tracker_keeps_ids_for_nearby_boxes_and_ends_lost_tracks() -> None:
    tracker = video.FaceTracker(max_gap=1.0)
    left, right = np.array([0, 0, 100, 100.0]), np.array([300, 0, 400, 100.0])
    assert tracker.update(0.0, np.array([left, right])) == [1, 2]
    assert tracker.update(0.1, np.array([right + 20, left + 20])) == [2, 1]
    assert tracker.visible()[0] == [1, 2]
    assert tracker.update(0.2, np.array([left + 400])) == [3]  # too far from both: a new face
    assert tracker.update(0.5, np.array([left + 30])) == [1]  # gone 0.4 s: still face 1
    assert tracker.update(2.0, np.array([left + 30])) == [4]  # gone 1.5 s: a new face
    assert tracker.update(2.1, np.array([left + 30, left + 30])) == [4, 5]
    assert tracker.update(2.2, np.zeros((0, 4))) == [] and tracker.visible()[0] == []


def test_demo_inputs_hold_detectable_faces(predictor: inference.Predictor, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = [data.CLASSES[i % len(data.CLASSES)] for i in range(14)]
    faces = np.stack([synthetic_faces.render_face(label, rng) for label in labels])
    inputs = demo.make_demo_inputs(tmp_path, faces, labels, seconds=1.5, detector=predictor.detector)
    capture = cv2.VideoCapture(str(inputs.video))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 45
    capture.release()
    assert [path.name for path in inputs.stills] == ["group.jpg", "portrait_gray.png"]
    assert Image.open(inputs.stills[1]).mode == "L"
    assert inputs.truth.groupby("file").size().to_dict() == {"demo.mp4": 5, "group.jpg": 3, "portrait_gray.png": 1}
    stills = inference.Predictor(predictor.loaded).predict_files(inputs.stills)
    assert stills.faces.groupby("path").size().to_dict() == {str(inputs.stills[0]): 3, str(inputs.stills[1]): 1}
    group = stills.table[stills.table["path"] == str(inputs.stills[0])]
    shown = inputs.truth[inputs.truth["file"] == "group.jpg"]
    assert sorted(demo.true_labels(group, inputs.stills[0].name, inputs.truth)) == sorted(shown["label"])
    clip = video.analyze_video(inputs.video, predictor, sample_fps=10)
    truth = demo.true_labels(clip.frames, "demo.mp4", inputs.truth)
    first_person = inputs.truth[(inputs.truth["file"] == "demo.mp4") & (inputs.truth["person"] == 1)]
    on_left = clip.frames["x1"] < 320
    assert truth[on_left & (clip.frames["time"] < first_person["end"].iloc[0])].isin(
        ["", first_person["label"].iloc[0]]).all()
    assert (truth != "").sum() >= 0.8 * (clip.frames["label"] != "").sum()
    assert len(video_io.preview_frames(inputs.video, 4)) == 4
    # 06's overview: speed, and agreement with what the generated inputs really show.
    photos = demo.photo_table([stills], inputs.truth)
    assert set(photos["true_label"]) <= {"", *data.CLASSES}
    overview, metrics = demo.overview([clip], photos, inputs.truth)
    assert list(overview["kind"]) == ["video", "images"] and overview["agreement"].between(0, 1).all()
    assert set(metrics) == {"demo_processing_fps", "demo_video_agreement", "demo_photo_agreement"}
    assert len(annotate.photos_figure([stills]).axes) == 2


def test_a_dataset_whose_faces_the_detector_cannot_see_skips_the_demo_with_a_note(tmp_path):
    from PIL import Image

    from fer_lab.apply import demo
    from fer_lab.errors import FerLabWarning

    for index in range(4):
        folder = tmp_path / "faces" / "test" / "happy"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 48), 90 + index, np.uint8)).save(folder / f"flat{index}.png")
    manifest = data.build_manifest(tmp_path / "faces")
    with pytest.warns(FerLabWarning, match="no generated demo: none of the 4 faces is found"):
        targets, truth = demo.choose_inputs("", tmp_path / "faces", manifest, tmp_path / "demo")
    assert targets == [] and truth is None
    overview, metrics = demo.overview([], demo.photo_table([]), None)
    assert overview.empty and metrics == {}
