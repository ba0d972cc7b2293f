"""Face detectors on real faces: dlib HOG vs MediaPipe, faces found vs present, frames/s, and alignment.

    nice -n 19 python benchmarks/bench_detectors.py [--scenes 20] [--seconds 10] [--model REF]

Material (all real photographs that ship with scikit-image and matplotlib, so nothing is downloaded):
the astronaut (skimage) and Grace Hopper (matplotlib), each cut around the face, scaled (face side 28-140 px), rotated (up to +-30 degrees), mirrored
and placed on a 640x360 backdrop:
  photos  `--scenes` group photos of 6 people each;
  video   `--seconds` of 10 fps video of 5 people drifting, turning their heads in the image plane and
          changing size (a face found counts per frame).
A detection finds a face when its centre lies within half a face side of the face's centre and its
side is 0.5-2x the face's. Frames/s: detection alone on the 640x360 frames, one process, wall clock;
frames per CPU-s: the same per second of CPU time of all the process' threads (what a busy machine
cannot distort: on two free cores, wall-clock speed is at least this); real time
for `fer-lab predict` at 10 sampled fps with detection on every 2nd frame needs >= 5 (>= 10 to detect
on every frame). With `--model`, the alignment check: each source face upright and rotated by
+-10/20/30 degrees, classified with and without levelling the eyes (MediaPipe's eye keypoints); the
share of rotated faces whose top expression matches the upright face's is reported for both.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import matplotlib.cbook  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

from fer_lab.data import imaging  # noqa: E402
from fer_lab.faces.detector import DetectorConfig, FaceDetector  # noqa: E402

DETECTORS = ("hog", "mediapipe")
WIDTH, HEIGHT = 640, 360


def sources() -> list[tuple[np.ndarray, float]]:
    """Grayscale patches centred on a real face, and the face's side in the patch (patch side / 2.2)."""
    patches = []
    astronaut = imaging.to_gray(skimage.data.astronaut())
    hopper = imaging.to_gray(np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg",
                                                                                       asfileobj=False))))
    for image, (x0, y0, x1, y1) in ((astronaut, (175, 70, 278, 172)), (hopper, (180, 130, 330, 300))):
        side = max(x1 - x0, y1 - y0)
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 1.1 * side
        padded = np.pad(image, int(half) + 1, mode="edge")
        left, top = int(cx - half) + int(half) + 1, int(cy - half) + int(half) + 1
        patches.append((padded[top:top + int(2 * half), left:left + int(2 * half)], side))
    return patches


def place(canvas: np.ndarray, patch: np.ndarray, face_side: float, size: float, angle: float, mirror: bool,
          cx: float, cy: float) -> None:
    """Paste `patch` scaled so its face is `size` px, rotated by `angle` degrees, centred at (cx, cy)."""
    scale = size / face_side
    side = max(4, int(round(patch.shape[0] * scale)))
    image = Image.fromarray(patch[:, ::-1] if mirror else patch).resize((side, side), Image.Resampling.BICUBIC)
    image = np.asarray(image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=0)).astype(float)
    mask = np.asarray(Image.fromarray(np.full((side, side), 255, np.uint8)).rotate(
        angle, resample=Image.Resampling.BILINEAR)).astype(float) / 255
    ramp = np.clip(np.minimum.outer(*(2 * [np.minimum(np.arange(side), np.arange(side)[::-1])]))
                   / (0.12 * side), 0, 1)
    alpha = mask * ramp
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    y0, y1, x0, x1 = max(0, top), min(canvas.shape[0], top + side), max(0, left), min(canvas.shape[1], left + side)
    part = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    canvas[y0:y1, x0:x1] = alpha[part] * image[part] + (1 - alpha[part]) * canvas[y0:y1, x0:x1]


def backdrop(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / WIDTH
    image = rng.uniform(60, 180) + rng.uniform(-60, 60) * x + rng.uniform(-60, 60) * y
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255)


def matched(boxes: np.ndarray, truth: list[dict]) -> list[bool]:
    """Per true face: whether some box (used once) finds it."""
    used, found = set(), []
    for face in truth:
        hit = False
        for index, (x0, y0, x1, y1) in enumerate(boxes):
            side = max(x1 - x0, y1 - y0)
            close = math.hypot((x0 + x1) / 2 - face["cx"], (y0 + y1) / 2 - face["cy"]) < face["size"] / 2
            if index not in used and close and 0.5 < side / face["size"] < 2.0:
                used.add(index)
                hit = True
                break
        found.append(hit)
    return found


def scene_faces(rng: np.random.Generator, count: int, patches: list) -> list[dict]:
    """`count` faces spread over the frame without overlapping much."""
    faces: list[dict] = []
    while len(faces) < count:
        size = float(rng.uniform(28, 140))
        cx, cy = rng.uniform(size, WIDTH - size), rng.uniform(size * 0.8, HEIGHT - size * 0.8)
        if all(math.hypot(cx - f["cx"], cy - f["cy"]) > 1.3 * (size + f["size"]) for f in faces):
            faces.append({"patch": int(rng.integers(len(patches))), "size": size, "cx": cx, "cy": cy,
                          "angle": float(rng.uniform(-30, 30)), "mirror": bool(rng.integers(2))})
    return faces


def render(faces: list[dict], patches: list, background: np.ndarray) -> np.ndarray:
    canvas = background.copy()
    for face in faces:
        patch, side = patches[face["patch"]]
        place(canvas, patch, side, face["size"], face["angle"], face["mirror"], face["cx"], face["cy"])
    return np.clip(canvas, 0, 255).astype(np.uint8)


def bucket(face: dict) -> str:
    size = "small <60px" if face["size"] < 60 else "medium 60-100px" if face["size"] < 100 else "large >100px"
    return f"{size}, {'tilted >15deg' if abs(face['angle']) > 15 else 'upright'}"


def evaluate(frames: list[tuple[np.ndarray, list[dict]]], material: str) -> pd.DataFrame:
    rows = []
    for name in DETECTORS:
        detector = FaceDetector(DetectorConfig(max_side=WIDTH, model=name))
        detector(frames[0][0])  # start-up outside the clock
        hits, seconds, cpu, boxes_total = [], 0.0, 0.0, 0
        for image, truth in frames:
            started, cpu_started = time.perf_counter(), time.process_time()
            boxes, _ = detector(image)
            seconds += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            boxes_total += len(boxes)
            hits += [(bucket(face), hit) for face, hit in zip(truth, matched(boxes, truth))]
        table = pd.DataFrame(hits, columns=["bucket", "hit"])
        rows.append({"material": material, "detector": name, "faces present": len(table),
                     "found": int(table["hit"].sum()), "found %": round(100 * table["hit"].mean(), 1),
                     "false boxes": boxes_total - int(table["hit"].sum()),
                     "frames/s": round(len(frames) / seconds, 1),
                     "frames per CPU-s": round(len(frames) / cpu, 1),
                     **{b: f"{100 * g['hit'].mean():.0f}% of {len(g)}" for b, g in table.groupby("bucket")}})
    return pd.DataFrame(rows)


def video_frames(rng: np.random.Generator, patches: list, seconds: float) -> list[tuple[np.ndarray, list[dict]]]:
    start = scene_faces(rng, 5, patches)
    background = backdrop(rng)
    frames = []
    for index in range(int(seconds * 10)):
        t = index / 10
        faces = [{**f, "cx": f["cx"] + 25 * math.sin(0.4 * t + k), "cy": f["cy"] + 10 * math.cos(0.3 * t + k),
                  "angle": 30 * math.sin(0.5 * t + 2 * k), "size": f["size"] * (1 + 0.25 * math.sin(0.2 * t + k))}
                 for k, f in enumerate(start)]
        frames.append((render(faces, patches, background), faces))
    return frames


def alignment(reference: str, patches: list) -> pd.DataFrame:
    """Top-expression agreement of rotated faces with the upright face, with and without eye levelling."""
    from fer_lab.apply import inference

    loaded = inference.load_model(reference)
    rows = []
    for align in (False, True):
        predictor = inference.Predictor(loaded, FaceDetector(DetectorConfig(max_side=WIDTH, model="mediapipe")),
                                        align=align)
        agree = total = 0
        for patch, side in patches:
            canvas = np.full((300, 300), 128.0)
            labels = []
            for angle in (0, -30, -20, -10, 10, 20, 30):
                image = canvas.copy()
                place(image, patch, side, 120, angle, False, 150, 150)
                table = predictor.predict_gray(image.astype(np.uint8))
                labels.append(table["label"].iloc[0] if len(table) and table["label"].iloc[0] else None)
            if labels[0] is None:
                continue
            judged = [label for label in labels[1:] if label is not None]
            agree += sum(label == labels[0] for label in judged)
            total += len(judged)
        rows.append({"alignment": "eyes levelled" if align else "none", "rotated faces": total,
                     "same top expression as upright %": round(100 * agree / max(total, 1), 1)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", default="", help="run id or model URI for the alignment check")
    args = parser.parse_args()
    cv2.setNumThreads(2)
    rng = np.random.default_rng(0)
    patches = sources()
    photos = []
    for _ in range(args.scenes):
        faces = scene_faces(rng, 6, patches)
        photos.append((render(faces, patches, backdrop(rng)), faces))
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    results = pd.concat([evaluate(photos, f"{args.scenes} group photos"),
                         evaluate(video_frames(rng, patches, args.seconds), f"{args.seconds:g} s video")])
    print(results.to_string(index=False))
    print(f"(load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if args.model:
        print(alignment(args.model, patches).to_string(index=False))


if __name__ == "__main__":
    main()
