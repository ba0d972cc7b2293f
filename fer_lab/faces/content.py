"""What an image's pixels say about its content, for the face filter: grey range, flatness, noise, blank.

Vocabulary (one name per concept across fer_lab):

- `grey_range`: the 2nd-98th percentile range of the grey levels. Robust to a few stray pixels,
  so a black frame with a speck of noise still has a range near 0.
- `is_blank`: the one definition of a blank image, `grey_range < max_range` (default BLANK_RANGE);
  the filter's `blank` reject reason. (`fer_lab.analysis.explore` reports a different, descriptive
  statistic, *near-constant* images by pixel standard deviation, and calls "contrast" the RMS
  contrast, i.e. that standard deviation.)
- `flatness`: share of pixels whose 3x3 neighbourhood varies by at most FLAT_RANGE grey levels:
  large for text, icons and flat placeholders, small for photos.
- `noise`: robust pixel-noise estimate relative to the image's standard deviation: near 1 for
  random noise, below 0.36 for every FER2013 image.
"""

from __future__ import annotations

import numpy as np

# Images whose 2-98% grey range is below this are blank (FilterRules.blank_contrast's default).
BLANK_RANGE = 10.0
# A 3x3 neighbourhood varying by at most this many grey levels is flat.
FLAT_RANGE = 4
STATISTICS = ("grey_range", "flatness", "noise")
_LEVELS = np.arange(256, dtype=np.float64)


def is_blank(grey_range: np.ndarray | float, max_range: float = BLANK_RANGE) -> np.ndarray | bool:
    """Whether images with these grey ranges (see `content_statistics`) are blank; NaN (unknown) is not."""
    return np.asarray(grey_range, dtype=float) < max_range


def content_statistics(image: np.ndarray) -> tuple[float, float, float]:
    """(grey_range, flatness, noise) of a 2-D uint8 image; see the module docstring.

    Written for speed on small images (it runs once per image, beside the detector): histograms
    instead of sorting, slices instead of np.pad.
    """
    pixels = np.asarray(image, dtype=np.uint8)
    count = pixels.size
    histogram = np.bincount(pixels.ravel(), minlength=256)
    cumulative = np.cumsum(histogram)
    grey_range = float(np.searchsorted(cumulative, 0.98 * count) - np.searchsorted(cumulative, 0.02 * count))
    mean = float(histogram @ _LEVELS) / count
    spread = max(0.0, float(histogram @ _LEVELS**2) / count - mean * mean) ** 0.5

    height, width = pixels.shape
    padded = np.empty((height + 2, width + 2), np.int16)  # edge-replicated border
    padded[1:-1, 1:-1] = pixels
    padded[0, 1:-1], padded[-1, 1:-1] = pixels[0], pixels[-1]
    padded[:, 0], padded[:, -1] = padded[:, 1], padded[:, -2]
    # 3x3 max and min, separably: rows first, then columns.
    row_max = np.maximum(np.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    row_min = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    local_max = np.maximum(np.maximum(row_max[:-2], row_max[1:-1]), row_max[2:])
    local_min = np.minimum(np.minimum(row_min[:-2], row_min[1:-1]), row_min[2:])
    flatness = float(np.count_nonzero(local_max - local_min <= FLAT_RANGE)) / count

    # Immerkaer's noise estimate (a Laplacian-difference mask that cancels edges and ramps), with
    # the median, not the mean, so that the sparse strong edges of drawings do not count as noise.
    x = padded[1:-1, 1:-1]
    residual = (x[:-2, :-2] - 2 * x[:-2, 1:-1] + x[:-2, 2:] - 2 * x[1:-1, :-2] + 4 * x[1:-1, 1:-1]
                - 2 * x[1:-1, 2:] + x[2:, :-2] - 2 * x[2:, 1:-1] + x[2:, 2:])
    magnitudes = np.cumsum(np.bincount(np.abs(residual).ravel()))
    middle = residual.size // 2  # the median of an even count averages the two middle values
    median = (np.searchsorted(magnitudes, middle) + np.searchsorted(magnitudes, middle + 1)) / 2
    if residual.size % 2:
        median = float(np.searchsorted(magnitudes, middle + 1))
    sigma = float(median) / 0.6745 / 6
    return grey_range, flatness, sigma / spread if spread > 0 else 0.0
