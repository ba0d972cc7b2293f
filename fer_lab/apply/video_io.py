"""Reading and writing video with OpenCV, with checks that turn its silent failures into messages."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fer_lab.data import IMAGE_EXTENSIONS
from fer_lab.errors import ConfigError, DataError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
# Codecs this project's OpenCV wheel can write without extra libraries (checked: mp4v and MJPG work,
# H.264 does not), by output suffix.
WRITER_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}

def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a video file by its suffix."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class VideoReader:
    """cv2.VideoCapture with checks that turn OpenCV's silent failures into messages."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise DataError(f"{path}: no such video file")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        self.path = path
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise DataError(f"{path}: OpenCV cannot open this file as a video (not a video, damaged, or an unsupported codec)")
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
        """Close the video file."""
        self.capture.release()


class FrameWriter:
    """cv2.VideoWriter for RGB frames (annotated or generated), with the codec that suits the file suffix."""

    def __init__(self, path: Path, fps: float) -> None:
        suffix = path.suffix.lower()
        if suffix not in WRITER_CODECS:
            raise ConfigError(f"{path}: a written video must end in {' or '.join(WRITER_CODECS)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps = path, fps
        self._writer = None

    def write(self, rgb: np.ndarray) -> None:
        """Append an RGB frame; the first one fixes the video's size."""
        if self._writer is None:
            height, width = rgb.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*WRITER_CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
            if not self._writer.isOpened():
                raise DataError(f"{self.path}: OpenCV cannot write this video (codec {WRITER_CODECS[self.path.suffix.lower()]})")
        self._writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))

    def release(self) -> None:
        """Finish the file (nothing was written when no frame came)."""
        if self._writer is not None:
            self._writer.release()


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


class ImageSequence:
    """A folder of images read as a video (files in name order, one frame each at `fps`), like `VideoReader`.

    An image that cannot be decoded is skipped with a warning: one bad frame of a recording should not
    cost the rest of it.
    """

    def __init__(self, folder: Path, fps: float) -> None:
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder of images")
        if not (0 < fps <= 1000):
            raise ConfigError(f"frame rate of an image folder must be positive (at most 1000), not {fps}")
        self.files = sorted(path for path in folder.iterdir()
                            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."))
        if not self.files:
            raise DataError(f"{folder}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.path, self.fps, self.frame_count = folder, float(fps), len(self.files)
        self.warnings: list[str] = []

    def sampled(self, sample_fps: float, limit: float | None) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, BGR frame) of the first image at or after each multiple of 1/sample_fps seconds."""
        target = 0
        for index, file in enumerate(self.files):
            if limit is not None and index >= limit:
                break
            if index * sample_fps < target * self.fps - 1e-6:
                continue
            target = math.floor(index * sample_fps / self.fps + 1e-6) + 1
            try:
                with Image.open(file) as image:
                    rgb = np.asarray(image.convert("RGB"))
            except (OSError, ValueError, SyntaxError, EOFError) as error:
                self.warnings.append(f"{file}: skipped, not a readable image ({' '.join(str(error).split())})")
                continue
            yield index, np.ascontiguousarray(rgb[:, :, ::-1])

    def end_warnings(self, limit: float) -> list[str]:
        """None: a folder's frame count is exact."""
        return []

    def release(self) -> None:
        """Nothing to close."""


def open_frames(path: Path, frame_rate: float = 10.0) -> VideoReader | ImageSequence:
    """A video file's reader, or a folder of images read as a video at `frame_rate` frames per second."""
    return ImageSequence(path, frame_rate) if path.is_dir() else VideoReader(path)
