"""The one face detector: its box convention, both of its users agreeing, and it being the only dlib site."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from fer_lab import project
from fer_lab.data import imaging
from fer_lab.errors import ConfigError
from fer_lab.faces import detection
from fer_lab.faces.detection import DetectorSettings
from fer_lab.faces.detector import Detector, DetectorConfig, FaceDetector, to_original


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return imaging.to_gray(skimage.data.astronaut())


def test_boxes_end_one_past_dlibs_inclusive_corner(astronaut: np.ndarray) -> None:
    import dlib

    rect = dlib.get_frontal_face_detector()(astronaut)[0]
    boxes, scores = Detector()(astronaut)
    assert len(boxes) == 1 and scores[0] > 0
    assert tuple(boxes[0]) == (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)


def test_both_users_find_identical_boxes(astronaut: np.ndarray) -> None:
    """The 48 px filter's detection and the photo predictor's, on the same image at the same scale."""
    height, width = astronaut.shape
    photo_boxes, photo_scores = FaceDetector(DetectorConfig(max_side=max(height, width)))(astronaut)
    # detection.detect resizes to `size` (here the image's own, so no resampling) and keeps weaker detections.
    table = detection.detect(astronaut[None], DetectorSettings(size=width, threshold=0.0)).table
    cached = table.loc[0, ["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy(dtype=float)
    np.testing.assert_array_equal(cached, photo_boxes[0])
    assert table.loc[0, "face_score"] == pytest.approx(photo_scores[0], abs=1e-4)


def test_boxes_map_back_through_resizing_and_padding() -> None:
    # A box found on a 96 px copy with a 10 px border, mapped to the 48 px original, clipped to it.
    boxes = np.array([[10.0, 20.0, 58.0, 106.0]])
    np.testing.assert_allclose(to_original(boxes, (0.5, 0.5), (48, 48), offset=10), [[0.0, 5.0, 24.0, 48.0]])


def test_bad_detector_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model"):
        Detector("mtcnn")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_side"):
        DetectorConfig(max_side=10)
    with pytest.raises(ConfigError, match="model"):
        DetectorSettings(model="mtcnn")  # type: ignore[arg-type]


def test_one_dlib_detector_construction_site() -> None:
    """Only fer_lab/faces/detector.py imports dlib or face_recognition and constructs dlib detectors."""
    construction = re.compile(r"dlib\.\w+\(")
    imports = re.compile(r"^\s*(import|from)\s+(dlib|face_recognition)\b", re.MULTILINE)
    sites, importers = [], []
    for path in sorted((project.ROOT / "fer_lab").rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(project.ROOT))
        sites += [(name, match) for match in construction.findall(text)]
        importers += [name for _ in imports.finditer(text)]
    detector = str(Path("fer_lab", "faces", "detector.py"))
    assert importers == [detector]
    assert sites == [(detector, "dlib.get_frontal_face_detector("), (detector, "dlib.cnn_face_detection_model_v1(")]


# ---- MediaPipe: smaller, tilted faces in real photos ----------------------------------------------


def group_photo(sizes: tuple[int, ...], angles: tuple[int, ...]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Real faces (skimage's astronaut, matplotlib's Grace Hopper) scaled, rotated and placed on a 640x360 scene."""
    import matplotlib.cbook
    from PIL import Image

    hopper = imaging.to_gray(np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg",
                                                                                       asfileobj=False))))
    heads = [(imaging.to_gray(skimage.data.astronaut())[40:205, 145:310], 103), (hopper[100:340, 135:375], 150)]
    scene = np.full((360, 640), 128, np.uint8)
    centres = []
    for index, (size, angle) in enumerate(zip(sizes, angles)):
        head, face = heads[index % 2]
        side = round(head.shape[0] * size / face)
        patch = np.asarray(Image.fromarray(head).resize((side, side)).rotate(angle, fillcolor=128))
        x, y = 64 + index * 128, 180 - side // 2
        scene[y:y + side, x - side // 2:x - side // 2 + side] = patch
        centres.append((float(x), 180.0))
    return scene, centres


def test_mediapipe_finds_small_and_tilted_faces_hog_misses() -> None:
    scene, centres = group_photo(sizes=(30, 36, 44, 52, 78), angles=(0, 20, 25, -25, 0))
    found = {}
    for model in ("hog", "mediapipe"):
        boxes, scores = FaceDetector(DetectorConfig(max_side=640, model=model))(scene)
        hits = [any(abs((b[0] + b[2]) / 2 - x) < 30 and abs((b[1] + b[3]) / 2 - y) < 40 for b in boxes)
                for x, y in centres]
        found[model] = sum(hits)
        if model == "mediapipe":
            assert len(boxes) == sum(hits) and ((scores >= 0.5) & (scores <= 1)).all()  # no false or duplicate boxes
    assert found["mediapipe"] == 5 and found["hog"] <= 3, found


def test_mediapipe_box_and_eyes_on_the_astronaut(astronaut: np.ndarray) -> None:
    hog_box = FaceDetector(DetectorConfig(max_side=512))(astronaut)[0][0]
    boxes, _, eyes = FaceDetector(DetectorConfig(max_side=512, model="mediapipe")).detect(astronaut)
    assert len(boxes) == 1 and eyes.shape == (1, 2, 2)
    np.testing.assert_allclose(boxes[0], hog_box, atol=20)  # the same box convention, the same face
    (right_x, right_y), (left_x, left_y) = eyes[0]
    assert hog_box[0] < right_x < left_x < hog_box[2] and abs(right_y - left_y) < 6  # her right eye is image-left
    assert np.isnan(FaceDetector(DetectorConfig(max_side=512)).detect(astronaut)[2]).all()  # dlib gives no eyes
