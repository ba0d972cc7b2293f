"""A small synthetic dataset in FER2013's formats, with deliberate noise for the notebooks to find.

Faces are drawn procedurally at 4x resolution and averaged down to 48x48 grayscale. Each class
has its own expression geometry (mouth curve and opening, brow height and slant, eye opening,
wrinkles) and every face gets random identity, pose and lighting, so a small CNN can learn the
classes but has to generalise. Faces are shaded like photos (skin gradient, eye sockets, nose
shadow, hair) so a HOG face detector finds them once the image is upsampled.

Noise, recorded in `sample_truth.csv`: non-face images (text placeholders, icons, flat and black
frames, random texture), exact duplicates, train images repeated in test, and mislabelled copies.
`ferplus_votes.csv` (or `fer2013new.csv` for the CSV format) holds simulated crowd votes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from fer_lab import project
from fer_lab.data.labels import CLASSES, FER2013_EMOTIONS, FERPLUS_NAMES
from fer_lab.data.synthetic_faces import SIZE, SUPERSAMPLE, downsample, render_face
from fer_lab.data.votes import VOTES_FILENAME
from fer_lab.errors import FerLabError

DEFAULT_PER_CLASS = 48
SAMPLE_VERSION = 1
NONFACE_KINDS = ("nonface_text", "nonface_icon", "blank", "texture")
FERPLUS_NAME = {
    "angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
    "neutral": "neutral", "sad": "sadness", "surprise": "surprise",
}
# Which expression a crowd most often confuses each one with.
CONFUSED_WITH = {
    "angry": "disgust", "disgust": "angry", "fear": "surprise", "happy": "neutral",
    "neutral": "sad", "sad": "neutral", "surprise": "fear",
}
PLACEHOLDER_TEXTS = ("NO IMAGE", "404", "N/A", "?", "IMG", "photo", "error", "ABC", "x_x", "null")

SampleFormat = Literal["folder", "csv"]
_USAGE_ORDER = ("Training", "PublicTest", "PrivateTest")


def make_sample(
    out_dir: str | os.PathLike[str],
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
    fmt: SampleFormat = "folder",
) -> Path:
    """Write the sample dataset to `out_dir` (replacing an earlier sample there); returns it.

    `per_class` training faces per class, a quarter as many test faces (split between
    PublicTest and PrivateTest), plus noise scaled to the size. Same arguments, same bytes.
    """
    if per_class < 4:
        raise FerLabError(f"per_class must be at least 4, not {per_class}")
    if fmt not in ("folder", "csv"):
        raise FerLabError(f"format must be 'folder' or 'csv', not {fmt!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "sample.json").is_file():
        raise FerLabError(f"{out_dir}: not empty and not an earlier sample; choose another folder")
    images = _sample_images(per_class, seed)
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if fmt == "folder":
        _write_folder(staging, images, seed)
    else:
        _write_csv(staging, images, seed)
    settings = {"version": SAMPLE_VERSION, "per_class": per_class, "seed": seed, "format": fmt}
    (staging / "sample.json").write_text(json.dumps(settings, indent=1) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return out_dir


def ensure_sample(out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Create the default sample at `out_dir` (project.SAMPLE_DIR) unless it is already there."""
    out_dir = Path(out_dir) if out_dir is not None else project.SAMPLE_DIR
    expected = {"version": SAMPLE_VERSION, "per_class": DEFAULT_PER_CLASS, "seed": 0, "format": "folder"}
    try:
        if json.loads((out_dir / "sample.json").read_text()) == expected:
            return out_dir
    except (OSError, json.JSONDecodeError):
        pass
    return make_sample(out_dir, per_class=DEFAULT_PER_CLASS)


def resolve_dataset(path: str | os.PathLike[str]) -> Path:
    """`path` as an absolute path; when it names the default sample, the sample is generated first if missing."""
    resolved = project.resolve(path)
    if resolved == project.SAMPLE_DIR:
        ensure_sample()
    return resolved


# --- dataset assembly ------------------------------------------------------------------------


@dataclass
class _SampleImage:
    pixels: np.ndarray
    label: str
    usage: str
    kind: str
    true_label: str = ""
    source: int = -1  # index of the image this one copies


def _sample_images(per_class: int, seed: int) -> list[_SampleImage]:
    """All images in a fixed order; each draws from its own seeded stream, so order is stable."""
    images: list[_SampleImage] = []
    per_test = max(2, per_class // 4)
    for class_index, label in enumerate(CLASSES):
        for i in range(per_class):
            face = render_face(label, _rng(seed, 1, class_index, i))
            images.append(_SampleImage(face, label, "Training", "face", label))
        for i in range(per_test):
            face = render_face(label, _rng(seed, 2, class_index, i))
            usage = "PublicTest" if i % 2 == 0 else "PrivateTest"
            images.append(_SampleImage(face, label, usage, "face", label))
    makers: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
        "nonface_text": _text_image, "nonface_icon": _icon_image, "blank": _blank_image, "texture": _texture_image,
    }
    per_noise_train = max(1, per_class // 12)
    for kind_index, (kind, maker) in enumerate(makers.items()):
        for i in range(per_noise_train + 1):
            rng = _rng(seed, 3, kind_index, i)
            usage = "Training" if i < per_noise_train else ("PublicTest", "PrivateTest")[kind_index % 2]
            images.append(_SampleImage(maker(rng), str(rng.choice(CLASSES)), usage, kind))
    rng = _rng(seed, 4)
    train_faces = [i for i, image in enumerate(images) if image.kind == "face" and image.usage == "Training"]
    chosen = rng.choice(train_faces, size=max(2, per_class // 8) + max(2, per_class // 12) + 2, replace=False)
    n_dup, n_cross = max(2, per_class // 8), max(2, per_class // 12)
    for position, source in enumerate(chosen):
        original = images[source]
        if position < n_dup:
            copy = _SampleImage(original.pixels, original.label, "Training", "duplicate", original.label, source)
        elif position < n_dup + n_cross:
            usage = ("PublicTest", "PrivateTest")[position % 2]
            copy = _SampleImage(original.pixels, original.label, usage, "cross_split_duplicate", original.label, source)
        else:
            wrong = str(rng.choice([c for c in CLASSES if c != original.label]))
            copy = _SampleImage(original.pixels, wrong, "Training", "mislabelled", original.label, source)
        images.append(copy)
    return images


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _file_names(images: list[_SampleImage], seed: int) -> list[str]:
    """Kaggle-style relative paths with random 8-digit ids, so names do not give away the kind."""
    ids = 10_000_000 + _rng(seed, 5).choice(30_000_000, size=len(images), replace=False)
    names = []
    for image, image_id in zip(images, ids):
        folder = "train" if image.usage == "Training" else "test"
        names.append(f"{folder}/{image.label}/{image.usage}_{image_id}.png")
    return names


def _write_folder(out_dir: Path, images: list[_SampleImage], seed: int) -> None:
    names = _file_names(images, seed)
    for name, image in zip(names, images):
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.pixels, "L").save(target, format="PNG")
    _truth_table(images, names).sort_values("path").to_csv(out_dir / "sample_truth.csv", index=False)
    votes = _votes(images, seed)
    table = pd.DataFrame({
        "path": names,
        "usage": [image.usage for image in images],
        "fer2013_label": [image.label for image in images],
        "ferplus_row": "",
    })
    table = pd.concat([table, votes], axis=1).sort_values("path", kind="stable")
    table.to_csv(out_dir / VOTES_FILENAME, index=False)


def _write_csv(out_dir: Path, images: list[_SampleImage], seed: int) -> None:
    # fer2013.csv lists Training rows, then PublicTest, then PrivateTest.
    order = sorted(range(len(images)), key=lambda i: _USAGE_ORDER.index(images[i].usage))
    row_of = {original: row for row, original in enumerate(order)}
    ordered = [
        dataclasses.replace(images[i], source=row_of[images[i].source] if images[i].source >= 0 else -1)
        for i in order
    ]
    rows = pd.DataFrame({
        "emotion": [FER2013_EMOTIONS.index(image.label) for image in ordered],
        "pixels": [" ".join(map(str, image.pixels.ravel().tolist())) for image in ordered],
        "Usage": [image.usage for image in ordered],
    })
    rows.to_csv(out_dir / "fer2013.csv", index=False)
    ferplus = pd.DataFrame({
        "Usage": rows["Usage"],
        "Image name": [f"fer{row:07d}.png" for row in range(len(ordered))],
    })
    pd.concat([ferplus, _votes(ordered, seed)], axis=1).to_csv(out_dir / "fer2013new.csv", index=False)
    names = [f"row:{row}" for row in range(len(ordered))]
    _truth_table(ordered, names).to_csv(out_dir / "sample_truth.csv", index=False)


def _truth_table(images: list[_SampleImage], names: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "path": names,
        "kind": [image.kind for image in images],
        "label": [image.label for image in images],
        "true_label": [image.true_label for image in images],
        "source": [names[image.source] if image.source >= 0 else "" for image in images],
    })


def _votes(images: list[_SampleImage], seed: int) -> pd.DataFrame:
    """Ten simulated FER+ votes per image: faces mostly get their true expression, noise NF."""
    counts = np.zeros((len(images), len(FERPLUS_NAMES)), dtype=np.int64)
    index = {name: i for i, name in enumerate(FERPLUS_NAMES)}
    for row, image in enumerate(images):
        rng = _rng(seed, 6, row)
        probabilities = np.full(len(FERPLUS_NAMES), 0.01)
        if image.true_label:
            probabilities[index[FERPLUS_NAME[image.true_label]]] = 0.72
            probabilities[index[FERPLUS_NAME[CONFUSED_WITH[image.true_label]]]] += 0.12
            probabilities[index["neutral"]] += 0.05
            probabilities[index["unknown"]] += 0.02
        else:
            probabilities[index["NF"]] = 0.85
            probabilities[index["unknown"]] += 0.06
            probabilities[index["neutral"]] += 0.03
        counts[row] = rng.multinomial(10, probabilities / probabilities.sum())
    return pd.DataFrame(counts, columns=list(FERPLUS_NAMES))


# --- non-face images -------------------------------------------------------------------------


def _text_image(rng: np.random.Generator) -> np.ndarray:
    canvas = SIZE * SUPERSAMPLE
    background = int(rng.integers(170, 256)) if rng.random() < 0.7 else int(rng.integers(0, 60))
    ink = 255 - background if abs(255 - 2 * background) > 80 else 0
    image = Image.new("L", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    text = str(rng.choice(PLACEHOLDER_TEXTS))
    font = ImageFont.load_default(size=int(rng.integers(34, 60)) if len(text) > 3 else int(rng.integers(70, 110)))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (canvas - (right - left)) / 2 - left + rng.integers(-10, 11)
    y = (canvas - (bottom - top)) / 2 - top + rng.integers(-10, 11)
    draw.text((x, y), text, fill=ink, font=font)
    if rng.random() < 0.5:
        draw.rectangle((6, 6, canvas - 7, canvas - 7), outline=ink, width=4)
    return downsample(np.asarray(image, dtype=np.float64))


def _icon_image(rng: np.random.Generator) -> np.ndarray:
    canvas = SIZE * SUPERSAMPLE
    background = int(rng.integers(0, 256))
    ink = int((background + rng.integers(90, 166)) % 256)
    image = Image.new("L", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    centre = [float(c) for c in canvas / 2 + rng.integers(-12, 13, size=2)]
    radius = float(rng.integers(45, 80))
    box = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
    shape = int(rng.integers(0, 5))
    if shape == 0:
        draw.ellipse(box, fill=ink)
    elif shape == 1:
        draw.rectangle(box, fill=ink)
    elif shape == 2:
        draw.regular_polygon((*centre, radius), n_sides=3, rotation=float(rng.integers(0, 120)), fill=ink)
    elif shape == 3:
        width = radius / 3
        draw.rectangle((centre[0] - width, box[1], centre[0] + width, box[3]), fill=ink)
        draw.rectangle((box[0], centre[1] - width, box[2], centre[1] + width), fill=ink)
    else:
        draw.regular_polygon((*centre, radius), n_sides=int(rng.integers(5, 9)), fill=ink)
    return downsample(np.asarray(image, dtype=np.float64))


def _blank_image(rng: np.random.Generator) -> np.ndarray:
    level = 0 if rng.random() < 0.5 else int(rng.integers(30, 240))
    return np.full((SIZE, SIZE), level, dtype=np.uint8)


def _texture_image(rng: np.random.Generator) -> np.ndarray:
    noise = rng.random((SIZE, SIZE))
    if rng.random() < 0.5:
        coarse = rng.random((SIZE // 6, SIZE // 6))
        smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC))
        noise = 0.75 * smooth / 255.0 + 0.25 * noise
    return np.clip(noise * 255, 0, 255).astype(np.uint8)
