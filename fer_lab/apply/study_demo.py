"""A generated study whose answer is known: synthetic participants, two conditions, a built-in effect.

Every recording (a short video, one participant's face on a backdrop) has the same script:
neutral, then the `reveal` event (surprise, the same in every condition: no effect built in), then the
`response` event, where the participant shows the condition's expression (`happy` in A, `sad` in B
by default) for 60-100% of the segment before returning to neutral. A study of this recording set
should find more happiness, less sadness and a higher valence in A during `response` and in the
whole recordings, and no difference during `reveal`.
Faces are drawn by `fer_lab.data.synthetic_faces`, the generator of the embedded sample.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fer_lab.apply.demo import _background, _enlarge, _paste
from fer_lab.apply.video_io import FrameWriter
from fer_lab.data import imaging
from fer_lab.data.synthetic_faces import render_face
from fer_lab.errors import ConfigError, DataError
from fer_lab.faces.detector import DetectorConfig, FaceDetector

DEFAULT_RESPONSES = {"A": "happy", "B": "sad"}
REVEAL = (1.0, 2.0)  # seconds: the reveal event, surprise in every condition
# Written beside a finished study: its arguments, so the same call reuses it (bump the version when the
# drawing of faces or recordings changes).
RECIPE_FILE = "generated.json"
GENERATOR_VERSION = 1


@dataclass
class GeneratedStudy:
    """The files of a generated study and what each recording shows when."""

    study_csv: Path
    events_csv: Path
    truth: pd.DataFrame  # path, participant, condition, start, end, label


def make_study(out_dir: str | os.PathLike[str], *, participants: int = 10,
               responses: Mapping[str, str] | None = None, seconds: float = 4.0, fps: float = 10.0,
               face_px: int = 150, seed: int = 0, checked: bool = True) -> GeneratedStudy:
    """Write one video per participant and condition, `study.csv`, `events.csv` and `truth.csv`.

    Args:
        out_dir: Where the files go (videos under `videos/`).
        participants: How many synthetic participants (each sees every condition).
        responses: Condition name -> the expression shown during `response` (default DEFAULT_RESPONSES).
        seconds: Length of each recording (the response runs from 2 s to the end).
        fps: Frame rate of the videos.
        face_px: Side of a face in the 400x300 frames.
        seed: Chooses faces, timings, covariates and backdrops.
        checked: Use only faces dlib's HOG detector finds (the stricter of fer_lab's detectors).

    Returns:
        The study's files and truth (those already in `out_dir` when it holds this very study).
    """
    responses = dict(responses or DEFAULT_RESPONSES)
    if participants < 2 or len(responses) < 2 or seconds <= REVEAL[1]:
        raise ConfigError(f"a generated study needs >= 2 participants, >= 2 conditions and more than "
                          f"{REVEAL[1]:g} s per recording (got {participants}, {len(responses)}, {seconds:g} s)")
    out_dir = Path(out_dir)
    recipe = json.dumps({"participants": participants, "responses": responses, "seconds": seconds, "fps": fps,
                         "face_px": face_px, "seed": seed, "checked": checked, "version": GENERATOR_VERSION})
    made = _already_made(out_dir, recipe)
    if made is not None:
        return made
    (out_dir / RECIPE_FILE).unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    labels = sorted({"neutral", "surprise", *responses.values()})
    detector = FaceDetector(DetectorConfig(model="hog")) if checked else None
    pool = {label: _faces(label, rng, face_px, detector) for label in labels}
    recordings, truth = [], []
    for number in range(1, participants + 1):
        participant = f"p{number:02d}"
        age = int(rng.integers(20, 65))
        for condition, response in responses.items():
            held = float(rng.uniform(0.6, 1.0)) * (seconds - REVEAL[1])
            script = [(0.0, REVEAL[0], "neutral"), (*REVEAL, "surprise"),
                      (REVEAL[1], REVEAL[1] + held, response), (REVEAL[1] + held, seconds, "neutral")]
            path = Path("videos") / f"{participant}_{condition}.mp4"
            faces = {label: options[rng.integers(len(options))] for label, options in pool.items()}
            _write_recording(out_dir / path, script, faces, fps, seconds, face_px, rng)
            recordings.append({"path": str(path), "participant": participant, "condition": condition, "age": age})
            truth += [{"path": str(path), "participant": participant, "condition": condition, "start": start,
                       "end": end, "label": label} for start, end, label in script if end > start]
    study_csv, events_csv = out_dir / "study.csv", out_dir / "events.csv"
    pd.DataFrame(recordings).to_csv(study_csv, index=False)
    pd.DataFrame([{"condition": condition, "name": name, "start": start, "end": end}
                  for condition in responses
                  for name, start, end in (("reveal", *REVEAL), ("response", REVEAL[1], seconds))]
                 ).to_csv(events_csv, index=False)
    table = pd.DataFrame(truth)
    table.to_csv(out_dir / "truth.csv", index=False)
    (out_dir / RECIPE_FILE).write_text(recipe)  # last: a study cut short is made again
    return GeneratedStudy(study_csv, events_csv, table)


def _already_made(out_dir: Path, recipe: str) -> GeneratedStudy | None:
    """The study in `out_dir` when it was generated whole from `recipe`, else None."""
    try:
        if (out_dir / RECIPE_FILE).read_text() != recipe:
            return None
        table = pd.read_csv(out_dir / "truth.csv")
    except (OSError, ValueError):
        return None
    if not all((out_dir / path).is_file() for path in table["path"].unique()):
        return None
    return GeneratedStudy(out_dir / "study.csv", out_dir / "events.csv", table)


def _faces(label: str, rng: np.random.Generator, face_px: int, detector: FaceDetector | None,
           wanted: int = 6, tries: int = 60) -> list[np.ndarray]:
    """`wanted` rendered 48x48 faces showing `label` (only ones `detector` finds, when given)."""
    found = []
    for _ in range(tries):
        face = render_face(label, rng)
        if detector is not None:
            canvas = np.full((face_px * 2, face_px * 2, 3), 110.0)
            _paste(canvas, _enlarge(face, face_px), face_px, face_px)
            if len(detector(imaging.to_gray(canvas.astype(np.uint8)))[0]) != 1:
                continue
        found.append(face)
        if len(found) == wanted:
            return found
    if not found:
        raise DataError(f"none of {tries} generated {label} faces is found by the face detector at {face_px} px")
    return found


def _write_recording(path: Path, script: list[tuple[float, float, str]], faces: Mapping[str, np.ndarray],
                     fps: float, seconds: float, face_px: int, rng: np.random.Generator) -> None:
    """One participant's video: their face, drifting slightly, showing the script's expressions."""
    width, height = 400, 300
    background = _background(rng, width, height)
    enlarged = {label: _enlarge(face, face_px) for label, face in faces.items()}
    writer = FrameWriter(path, fps)
    phase = rng.uniform(0, 2 * math.pi)
    for index in range(int(round(seconds * fps))):
        time_s = index / fps
        label = next(label for start, end, label in script if start <= time_s < end)
        frame = background.copy()
        _paste(frame, enlarged[label], width / 2 + 20 * math.sin(time_s + phase), height / 2 + 8 * math.cos(time_s))
        writer.write(np.clip(frame + rng.normal(0, 2.0, frame.shape), 0, 255).astype(np.uint8))
    writer.release()
