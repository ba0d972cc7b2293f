"""Face alignment: a face turned upright (eyes level) before it is cropped like the training images.

FER2013's faces are mostly upright; a head tilted by 20 degrees is a face the model rarely saw. When the
detector gives eye centres (MediaPipe does, see `fer_lab.faces.detector`), the region around the face
is rotated about the box centre so the line between the eyes is horizontal; the box keeps its size
and centre, and the crop is then cut from the rotated region exactly as from an unrotated image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# Tilts below this many degrees are left alone: resampling would only blur the crop.
MIN_TILT = 3.0
# Tilts beyond this are more likely a bad eye estimate than a head at that angle.
MAX_TILT = 45.0


def eye_tilt(eyes: np.ndarray) -> float:
    """Degrees the line from the person's right eye (image left) to their left eye descends (0: level)."""
    (right_x, right_y), (left_x, left_y) = np.asarray(eyes, dtype=float)
    return math.degrees(math.atan2(left_y - right_y, left_x - right_x))


def level_eyes(gray: np.ndarray, box: np.ndarray, eyes: np.ndarray, margin: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """The region around `box` rotated so the eyes are level, and the box in that region's pixels.

    Args:
        gray: The 2-D uint8 image.
        box: The face box (x0, y0, x1, y1) in its pixels.
        eyes: Eye centres ((x, y) of the person's right eye, then left eye) in its pixels.
        margin: Half the region's side, in box sides (enough for any crop framing up to 3x the box).

    Returns:
        (region, box): `gray` itself and `box` when the tilt is below MIN_TILT, above MAX_TILT or
        unknown (NaN eyes); else the rotated region (borders replicated) and the box within it.
    """
    tilt = eye_tilt(eyes) if np.isfinite(eyes).all() else 0.0
    if not MIN_TILT <= abs(tilt) <= MAX_TILT:
        return gray, np.asarray(box, dtype=float)
    x0, y0, x1, y1 = box
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * margin
    side = max(1, int(round(2 * half)))
    matrix = cv2.getRotationMatrix2D((float(centre_x), float(centre_y)), tilt, 1.0)
    matrix[:, 2] += (half - centre_x, half - centre_y)  # the box centre lands in the region's centre
    region = cv2.warpAffine(gray, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    width, height = x1 - x0, y1 - y0
    return region, np.array([half - width / 2, half - height / 2, half + width / 2, half + height / 2])
