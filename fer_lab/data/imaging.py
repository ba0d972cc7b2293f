"""Turn any image (file, PIL image or array) into the 8-bit grayscale pixels the models see.

`data.load_pixels` and prediction both go through `to_model_input`, so a model is always
fed pixels prepared exactly as in training.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from fer_lab._shared import one_line

MODEL_SIZE = 48
# Transparent pixels are shown over white, as an image viewer (and a labeller) would see them.
ALPHA_BACKGROUND = 255

def to_gray(image: Image.Image | np.ndarray) -> np.ndarray:
    """Return `image` as a 2-D uint8 grayscale array at its own size.

    Handles any PIL mode (palette, CMYK, 1-bit, 16/32-bit integer, float) and arrays shaped
    (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA of dtype bool, uint8, uint16 or float
    (floats are read as 0..1 when their maximum is at most 1, else as 0..255). Alpha is
    composited over white; 16-bit values are scaled down rather than clipped.
    """
    if isinstance(image, Image.Image):
        return _pil_to_gray(image)
    return _array_to_gray(np.asarray(image))


def to_model_input(image: Image.Image | np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """Return the (size, size) uint8 grayscale model input: centre square crop, then resize."""
    gray = to_gray(image)
    height, width = gray.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = gray[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    # PIL's bilinear filter widens its support when shrinking, so downscaling is antialiased.
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def load_model_input(path: str | os.PathLike[str], size: int = MODEL_SIZE) -> np.ndarray:
    """Read an image file straight into a model input (used for training and prediction alike).

    Large JPEGs are decoded at a reduced scale (never below `size`), which is much faster and
    changes the result only by resampling rounding.
    """
    with Image.open(path) as image:
        if image.format == "JPEG" and min(image.size) >= 2 * size:
            image.draft(image.mode, (size, size))
        return to_model_input(image, size)


def pixel_sha1(gray: np.ndarray) -> str:
    """Hash of decoded 8-bit grayscale pixels: equal pixels give equal hashes across formats."""
    return hashlib.sha1(np.ascontiguousarray(gray, dtype=np.uint8).tobytes()).hexdigest()


def channel_count(image: Image.Image) -> int:
    """Number of colour channels the stored image has (a palette counts as RGB or RGBA)."""
    if image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        return 4 if has_alpha else 3
    return len(image.getbands())


def inspect_image(path: str | os.PathLike[str]) -> tuple[str, int, int, int, str]:
    """Decode one image file fully: (sha1, height, width, channels, error).

    Never raises for a bad file: `error` is "" when readable, else "<reason>: <detail>" with
    reason one of: empty file, not an image, truncated, corrupt. Sizes stay 0 when unknown.
    """
    path = Path(path)
    height = width = channels = 0
    try:
        if path.stat().st_size == 0:
            return "", 0, 0, 0, "empty file: 0 bytes"
        with Image.open(path) as image:
            width, height = image.size
            channels = channel_count(image)
            gray = to_gray(image)
    except Image.UnidentifiedImageError:
        return "", 0, 0, 0, "not an image: no image format recognises the file"
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        return "", height, width, channels, f"{reason}: {one_line(exc)}"
    return pixel_sha1(gray), height, width, channels, ""


def inspect_images(paths: list[str]) -> list[tuple[str, int, int, int, str]]:
    """`inspect_image` over a batch; the unit of work handed to each worker process."""
    with warnings.catch_warnings():
        # Odd files (EXIF quirks, palette transparency) warn per image; the result records problems.
        warnings.simplefilter("ignore")
        return [inspect_image(path) for path in paths]


def load_model_inputs(paths: list[str], size: int) -> np.ndarray:
    """`load_model_input` over a batch, stacked as (N, size, size) uint8."""
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, path in enumerate(paths):
            out[index] = load_model_input(path, size)
    return out


def _pil_to_gray(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit (and 32-bit integer, read as 16-bit range) data: scale, PIL's convert would clip.
        values = np.clip(np.asarray(image).astype(np.float64), 0, 65535)
        return np.round(values / 257.0).astype(np.uint8)
    if mode == "F":
        return _array_to_gray(np.asarray(image, dtype=np.float64))
    has_alpha = "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        image = Image.alpha_composite(background, rgba)
    if image.mode not in ("RGB", "1"):
        # CMYK, YCbCr, LAB, HSV: through RGB so every colour space gets the same luma weights.
        image = image.convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _array_to_gray(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {array.shape}")
    pixels = _to_uint8(array)
    if pixels.ndim == 2:
        return pixels
    # Through PIL so arrays and files get the same integer luma and alpha arithmetic.
    return _pil_to_gray(Image.fromarray(pixels, "RGB" if pixels.shape[2] == 3 else "RGBA"))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        scaled = array.astype(np.float64) * 255.0
    elif array.dtype == np.uint16:
        scaled = array / 257.0
    elif np.issubdtype(array.dtype, np.integer):
        scaled = array.astype(np.float64)
    elif np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float64))
        scaled = values * 255.0 if array.size and values.max() <= 1.0 else values
    else:
        raise ValueError(f"unsupported pixel type {array.dtype}")
    return np.round(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def parse_pixel_string(text: str) -> tuple[np.ndarray | None, str]:
    """Parse a fer2013.csv `pixels` cell into a square uint8 image, or (None, "<reason>: <detail>")."""
    text = text if isinstance(text, str) else ""
    try:
        with warnings.catch_warnings():
            # Older NumPy only warns when parsing stops at a non-number; make that an error too.
            warnings.simplefilter("error", DeprecationWarning)
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        bad = next((token for token in text.split() if not token.isdigit()), "?")
        return None, f"non-numeric pixels: {bad[:20]!r}"
    side = int(round(len(values) ** 0.5))
    if len(values) == 0 or side * side != len(values):
        return None, f"wrong pixel count: {len(values)} values, not a square image (48x48 is 2304)"
    if values.min() < 0 or values.max() > 255:
        bad_value = values[(values < 0) | (values > 255)][0]
        return None, f"pixel out of range: {bad_value} (expected 0-255)"
    return values.astype(np.uint8).reshape(side, side), ""
