"""Face alignment: a tilted real face comes out with its eyes level, an upright or eyeless one untouched."""

from __future__ import annotations

import numpy as np
import skimage.data
from PIL import Image

from fer_lab.apply import align, inference
from fer_lab.data import imaging
from fer_lab.faces.detector import DetectorConfig, FaceDetector


def test_tilted_astronaut_is_levelled_before_the_crop() -> None:
    detector = FaceDetector(DetectorConfig(max_side=512, model="mediapipe"))
    tilted = np.asarray(Image.fromarray(imaging.to_gray(skimage.data.astronaut())).rotate(25, fillcolor=128))
    boxes, _, eyes = detector.detect(tilted)
    before = align.eye_tilt(eyes[0])
    assert before < -10  # rotated counter-clockwise: her left eye (image right) is higher
    region, box = align.level_eyes(tilted, boxes[0], eyes[0])
    _, _, eyes_after = detector.detect(region)
    assert abs(align.eye_tilt(eyes_after[0])) < abs(before) - 8
    np.testing.assert_allclose(box[2:] - box[:2], boxes[0][2:] - boxes[0][:2])  # same box size, centred
    assert abs((box[0] + box[2]) / 2 - region.shape[1] / 2) < 1
    crops = inference.face_inputs(tilted, boxes, eyes=eyes)
    assert crops.shape == (1, 48, 48) and not np.array_equal(crops, inference.face_inputs(tilted, boxes))


def test_upright_or_eyeless_faces_are_not_resampled() -> None:
    gray = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100).astype(np.uint8)
    box = np.array([20.0, 20.0, 60.0, 60.0])
    for eyes in (np.array([[30.0, 35.0], [50.0, 36.0]]), np.full((2, 2), np.nan)):
        region, same = align.level_eyes(gray, box, eyes)
        assert region is gray and np.array_equal(same, box)
