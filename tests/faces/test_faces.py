"""The face detector on real faces shipped with scikit-image and matplotlib, its cache and resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image

from fer_lab import data, project
from fer_lab.errors import CorruptCacheWarning, FerLabError
from fer_lab.faces import content, detection
from fer_lab.faces.detection import DetectorSettings

# dlib's own detector on the full-size photos finds these face boxes (left, top, right, bottom).
ASTRONAUT_FACE = (175, 76, 265, 166)
GRACE_HOPPER_FACE = (180, 139, 366, 325)


def _fer_crops(image: Image.Image, box: tuple[int, int, int, int]) -> list[np.ndarray]:
    """48x48 grayscale crops framed like FER2013 (face filling the frame), at 3 zooms x 3 shifts."""
    left, top, right, bottom = box
    side, centre_x, centre_y = right - left, (left + right) / 2, (top + bottom) / 2
    crops = []
    for zoom in (1.2, 1.35, 1.5):
        for shift_x, shift_y in ((0.0, -0.2), (-0.1, -0.1), (0.1, -0.25)):
            half, x, y = zoom * side / 2, centre_x + shift_x * side, centre_y + shift_y * side
            crop = image.convert("L").crop((x - half, y - half, x + half, y + half))
            crops.append(np.asarray(crop.resize((48, 48), Image.Resampling.LANCZOS)))
    return crops


def _lfw_48() -> np.ndarray:
    """skimage's LFW subset (100 faces, then 100 non-faces, 25x25 floats) as 48x48 uint8."""
    images = (skimage.data.lfw_subset() * 255).round().astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(x).resize((48, 48), Image.Resampling.LANCZOS)) for x in images])


def test_finds_astronaut_and_grace_hopper_at_48_pixels():
    astronaut = Image.fromarray(skimage.data.astronaut())
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    crops = np.stack(_fer_crops(astronaut, ASTRONAUT_FACE) + _fer_crops(hopper, GRACE_HOPPER_FACE))

    table = detection.detect(crops).table

    assert table["face_found"].all()
    assert (table["n_faces"] == 1).all()
    assert table["face_score"].min() > DetectorSettings().threshold + 1
    # Boxes are in the 48x48 image's pixels and cover its middle, where the faces are.
    assert table[["box_x0", "box_y0"]].min().min() >= 0 and table[["box_x1", "box_y1"]].max().max() <= 48
    assert ((table["box_x0"] < 24) & (table["box_x1"] > 24) & (table["box_y0"] < 30) & (table["box_y1"] > 30)).all()


def test_lfw_faces_are_found_and_non_faces_mostly_not():
    images = _lfw_48()
    table = detection.detect(images).table
    found = table["face_found"].to_numpy()
    assert found[:100].mean() >= 0.95
    assert found[100:].mean() <= 0.25
    # A stricter threshold trades found faces for fewer false alarms, from the same detections.
    strict = detection.results_table(_cached_rows(images), threshold=0.0)["face_found"].to_numpy()
    assert strict[100:].sum() <= found[100:].sum() and strict[:100].mean() >= 0.7


def _cached_rows(images: np.ndarray) -> list[tuple]:
    detector = detection._Detector(DetectorSettings())
    return [detection._cache_row(detection.pixel_key(image), image, detector) for image in images]


def test_content_statistics_tell_blank_flat_and_noise_apart():
    rng = np.random.default_rng(0)
    face = _lfw_48()[0]
    blank = np.full((48, 48), 17, np.uint8)
    icon = np.full((48, 48), 230, np.uint8)
    icon[12:36, 12:36] = 40
    noise = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    stats = {name: content.content_statistics(image) for name, image in
             {"face": face, "blank": blank, "icon": icon, "noise": noise}.items()}
    assert stats["blank"] == (0.0, 1.0, 0.0)
    assert stats["icon"][1] > 0.7 and stats["face"][1] < 0.2
    assert stats["noise"][2] > 0.8 and stats["face"][2] < 0.2
    assert [name for name, values in stats.items() if content.is_blank(values[0])] == ["blank"]


def test_a_corrupt_detection_cache_is_rebuilt_with_a_notice(tmp_path):
    images = _lfw_48()[90:100]
    first = detection.detect(images, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.sqlite")
    for leftover in tmp_path.glob("*.sqlite-*"):  # WAL files: the damage is in the main file alone
        leftover.unlink()
    cache_file.write_bytes(cache_file.read_bytes()[:100] + b"\0garbage" * 200)
    with pytest.warns(CorruptCacheWarning, match="corrupt face-detection cache"):
        again = detection.detect(images, cache_dir=tmp_path)
    assert (again.computed, again.cached) == (10, 0)
    pd.testing.assert_frame_equal(again.table, first.table)
    assert detection.detect(images, cache_dir=tmp_path).cached == 10


def test_second_run_detects_nothing_and_threshold_changes_need_no_detection(tmp_path):
    images = _lfw_48()[90:130]  # faces and non-faces
    first = detection.detect(images, cache_dir=tmp_path)
    assert (first.computed, first.cached) == (40, 0)

    again = detection.detect(images, cache_dir=tmp_path)
    assert (again.computed, again.cached) == (0, 40)
    pd.testing.assert_frame_equal(again.table, first.table)

    looser = detection.detect(images, DetectorSettings(threshold=-2.4), cache_dir=tmp_path)
    assert looser.computed == 0
    assert (looser.table["n_faces"] >= first.table["n_faces"]).all()
    assert looser.table["face_found"].sum() > first.table["face_found"].sum()

    other_geometry = detection.detect(images, DetectorSettings(size=80), cache_dir=tmp_path)
    assert other_geometry.computed == 40
    assert len(list(tmp_path.glob("*.sqlite"))) == 2


def test_duplicates_are_detected_once(tmp_path):
    images = _lfw_48()[:5]
    doubled = np.concatenate([images, images[::-1]])
    result = detection.detect(doubled, cache_dir=tmp_path)
    assert result.computed == 5 and len(result.table) == 10
    np.testing.assert_array_equal(result.table["face_score"][:5], result.table["face_score"][5:][::-1])


def test_manifest_rerun_reads_no_pixels(sample_dir, tmp_path):
    manifest = data.build_manifest(sample_dir)
    work = tmp_path / "work"
    first = detection.detect_manifest(manifest, sample_dir, work_dir=work)
    assert first.computed == manifest.loc[manifest["readable"], "sha1"].nunique()
    assert len(first.table) == len(manifest)
    assert first.table.index.equals(manifest.index)

    # Without the images a cached run still answers: it never opens them.
    moved = tmp_path / "moved"
    moved.mkdir()
    again = detection.detect_manifest(manifest, moved, work_dir=work)
    assert again.computed == 0
    pd.testing.assert_frame_equal(again.table, first.table)


RESUMABLE_RUN = """
import sys
import numpy as np
from fer_lab.faces import detection

if __name__ == "__main__":
    images = np.load(sys.argv[1])
    detection.detect(images, detection.DetectorSettings(size=int(sys.argv[3])), cache_dir=sys.argv[2],
                 workers=2, chunk_size=30)
"""


def _distinct_images(count: int) -> np.ndarray:
    """`count` different face-like 48x48 images: LFW faces with a few pixels changed per copy."""
    base = _lfw_48()[:100]
    images = np.concatenate([base] * (count // 100 + 1))[:count].copy()
    rng = np.random.default_rng(1)
    for index, image in enumerate(images):
        image[rng.integers(0, 48, 4), rng.integers(0, 48, 4)] = index % 251
    assert len({detection.pixel_key(image) for image in images}) == count
    return images


def test_interrupted_run_resumes_without_redoing_finished_images(tmp_path):
    images = _distinct_images(600)
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(RESUMABLE_RUN))
    cache_dir, size = tmp_path / "cache", 160  # a large size slows detection so the kill lands mid-run
    settings = DetectorSettings(size=size)
    database = cache_dir / f"{settings.cache_name()}.sqlite"
    env = {**os.environ, "PYTHONPATH": str(project.ROOT)}
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path / "images.npy"), str(cache_dir), str(size)],
                               env=env, start_new_session=True)
    try:
        done = _wait_for_rows(database, process, minimum=60)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the run and its worker processes, as a crash would
        process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = _rows(database)
    assert done <= finished < len(images), "the kill should land mid-run"

    resumed = detection.detect(images, settings, cache_dir=cache_dir, workers=1)

    assert resumed.cached == finished
    assert resumed.computed == len(images) - finished
    assert _rows(database) == len(images)
    sample = np.r_[0:10, len(images) - 10:len(images)]
    fresh = detection.detect(images[sample], settings).table
    pd.testing.assert_frame_equal(resumed.table.iloc[sample].reset_index(drop=True), fresh)


def _rows(database: Path) -> int:
    if not database.is_file():
        return 0
    with sqlite3.connect(database) as connection:
        try:
            return connection.execute("SELECT COUNT(*) FROM detections").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def _wait_for_rows(database: Path, process: subprocess.Popen, minimum: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(database)
        if rows >= minimum:
            return rows
        if process.poll() is not None:
            pytest.fail(f"the detection run ended (code {process.returncode}) before it could be interrupted")
        time.sleep(0.02)
    pytest.fail(f"no {minimum} cached rows within {timeout} s")


@pytest.mark.parametrize("options, message", [
    ({"model": "mtcnn"}, "model"),
    ({"size": 8}, "size"),
    ({"padding": 2.0}, "padding"),
    ({"upsample": 5}, "upsample"),
])
def test_bad_settings_name_the_problem(options, message):
    with pytest.raises(FerLabError, match=message):
        DetectorSettings(**options)


def test_bad_images_are_refused():
    with pytest.raises(FerLabError, match="uint8"):
        detection.detect(np.zeros((2, 48, 48), np.float32))
    with pytest.raises(FerLabError, match="keys"):
        detection.detect(np.zeros((2, 48, 48), np.uint8), keys=["a"])


def test_cnn_model_finds_a_face():
    astronaut = Image.fromarray(skimage.data.astronaut())
    crop = _fer_crops(astronaut, ASTRONAUT_FACE)[0]
    table = detection.detect(crop[None], DetectorSettings(model="cnn", size=160, threshold=0.0)).table
    assert table["face_found"].iloc[0] and table["face_score"].iloc[0] > 0
