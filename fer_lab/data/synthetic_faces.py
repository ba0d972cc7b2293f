"""Procedural faces for the synthetic sample: one expression geometry per class, random identity, pose, light.

Faces are drawn at 4x resolution in face coordinates and averaged down to 48x48 grayscale, shaded
like photos (skin gradient, eye sockets, nose shadow, hair) so a HOG detector finds them upsampled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SIZE = 48
SUPERSAMPLE = 4
FACE_HALF_WIDTH = 0.35  # of the frame: faces fill FER2013 crops about this much


@dataclass(frozen=True)
class Expression:
    """Face geometry of one class, in face half-widths (v points down)."""

    eye_open: float
    brow_raise: float  # upward shift of both brows
    brow_slant: float  # inner ends lowered (angry) when positive, raised (sad) when negative
    brow_arch: float
    mouth_curve: float  # corners up (smile) when positive
    mouth_open: float
    mouth_width: float
    teeth: bool = False
    lip_raise: float = 0.0  # one-sided upper-lip raise (disgust)
    cheek_raise: float = 0.0
    forehead_lines: float = 0.0
    frown_lines: float = 0.0
    nose_wrinkle: float = 0.0


EXPRESSIONS = {
    "angry": Expression(0.55, -0.08, 0.2, 0.0, -0.05, 0.0, 0.25, frown_lines=0.6),
    "disgust": Expression(0.45, -0.05, 0.08, 0.0, -0.07, 0.05, 0.28, teeth=True, lip_raise=0.12, nose_wrinkle=0.7,
                          frown_lines=0.3),
    "fear": Expression(1.6, 0.1, -0.12, 0.0, -0.05, 0.15, 0.42, teeth=True, forehead_lines=0.6),
    "happy": Expression(0.5, 0.02, 0.0, 0.03, 0.22, 0.12, 0.42, teeth=True, cheek_raise=0.9),
    "neutral": Expression(1.0, 0.0, 0.0, 0.02, 0.0, 0.0, 0.28),
    "sad": Expression(0.75, 0.02, -0.18, 0.0, -0.17, 0.0, 0.27),
    "surprise": Expression(1.65, 0.15, 0.0, 0.1, 0.0, 0.32, 0.2, forehead_lines=0.8),
}


def render_face(label: str, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 uint8 face showing `label`, with random identity, pose and lighting."""
    return _FaceRenderer(EXPRESSIONS[label], rng).render()


def downsample(canvas: np.ndarray) -> np.ndarray:
    """A supersampled canvas averaged down to a 48x48 uint8 image."""
    blocks = canvas.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))
    return np.clip(np.round(blocks), 0, 255).astype(np.uint8)


class _FaceRenderer:
    """Draws one face on a supersampled canvas in face coordinates (u right, v down)."""

    def __init__(self, expression: Expression, rng: np.random.Generator) -> None:
        self.rng = rng
        self.expression = self._vary(expression)
        canvas = SIZE * SUPERSAMPLE
        self.half_width = canvas * FACE_HALF_WIDTH * rng.uniform(0.95, 1.05)
        self.centre = (canvas / 2 + rng.normal(0, 0.015) * canvas, canvas * 0.55 + rng.normal(0, 0.015) * canvas)
        self.angle = float(np.deg2rad(rng.normal(0, 4)))
        y, x = _pixel_centres(canvas)
        dx, dy = x - np.float32(self.centre[0]), y - np.float32(self.centre[1])
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        self.u = (dx * cos + dy * sin) / self.half_width
        self.v = (-dx * sin + dy * cos) / self.half_width
        self.edge = 1.2 / self.half_width  # antialiasing width: a little over one canvas pixel
        self.yaw = rng.normal(0, 0.05)  # features shift sideways as the head turns
        light_angle = rng.uniform(0, 2 * np.pi)
        strength = rng.uniform(0.1, 0.7)
        self.light = (strength * float(np.cos(light_angle)), strength * float(np.sin(light_angle)))

    def _vary(self, expression: Expression) -> Expression:
        """Random intensity and small independent wobble on each geometric parameter."""
        neutral = EXPRESSIONS["neutral"]
        strength = self.rng.uniform(0.85, 1.15)

        def jitter(name: str, spread: float) -> float:
            base = getattr(neutral, name)
            return base + (getattr(expression, name) - base) * strength + self.rng.normal(0, spread)

        return Expression(
            eye_open=max(0.3, jitter("eye_open", 0.08)),
            brow_raise=jitter("brow_raise", 0.02),
            brow_slant=jitter("brow_slant", 0.02),
            brow_arch=jitter("brow_arch", 0.015),
            mouth_curve=jitter("mouth_curve", 0.02),
            mouth_open=max(0.0, jitter("mouth_open", 0.015)),
            mouth_width=jitter("mouth_width", 0.02),
            teeth=expression.teeth,
            lip_raise=max(0.0, jitter("lip_raise", 0.01)),
            cheek_raise=expression.cheek_raise,
            forehead_lines=expression.forehead_lines,
            frown_lines=expression.frown_lines,
            nose_wrinkle=expression.nose_wrinkle,
        )

    def render(self) -> np.ndarray:
        rng, u, v = self.rng, self.u, self.v
        skin = rng.uniform(120, 215)
        hair = rng.uniform(15, 80) if rng.random() < 0.8 else rng.uniform(130, 190)
        if abs(hair - skin) < 50:  # blond hair on pale skin hides the face outline from HOG detectors
            hair = max(15.0, skin - 90)
        image = self._background(skin)
        clothes = rng.uniform(20, 230)
        image = _blend(image, clothes, self._ellipse(0, 2.35, 1.9, 0.95))
        image = _blend(image, skin * 0.72, self._box(-0.48, 0.9, 0.48, 2.2))
        long_hair = rng.random() < 0.35
        crown = self._ellipse(0, -0.28 + rng.normal(0, 0.03), 1.13 + rng.uniform(0, 0.12), 1.18)
        if long_hair:
            crown = np.maximum(crown, self._box(-1.12, -0.3, 1.12, rng.uniform(0.6, 1.3)))
        image = _blend(image, hair, crown)
        for side in (-1, 1):
            image = _blend(image, skin * 0.85, self._ellipse(side * 0.98, 0.05, 0.13, 0.22))
        if long_hair:
            image = _blend(image, hair, self._box(-1.12, -0.3, -0.9, 1.0))
            image = _blend(image, hair, self._box(0.9, -0.3, 1.12, 1.0))
        face = self._ellipse(0, 0.0, 1.0, 1.32)
        image = _blend(image, self._skin_shading(skin), face)
        hairline = -0.72 + 0.3 * u**2 + rng.uniform(-0.08, 0.12)
        fringe = np.clip((hairline - v) / self.edge + 0.5, 0, 1) * face
        image = _blend(image, hair, fringe)

        yaw = self.yaw
        spacing, eye_height = rng.uniform(0.34, 0.4), -0.12 + rng.normal(0, 0.02)
        gaze = (float(rng.normal(0, 0.03)), float(rng.normal(0, 0.03)))
        iris_tone = rng.uniform(25, 70)
        for side in (-1, 1):
            centre = side * spacing + yaw
            self._draw(image, (centre - 0.6, eye_height - 0.4, centre + 0.6, eye_height + 0.36),
                       self._eye, skin, centre, eye_height, gaze, iris_tone)
        brow_height = -0.38 - self.expression.brow_raise + rng.normal(0, 0.015)
        self._draw(image, (yaw - 0.75, brow_height - 0.25, yaw + 0.75, brow_height + 0.3),
                   self._brows, hair, brow_height)
        self._draw(image, (yaw - 0.5, -0.35, yaw + 0.5, 0.55), self._nose)
        mouth_height = 0.68 + rng.normal(0, 0.02)
        self._draw(image, (yaw - 0.95, -0.1, yaw + 0.95, 1.15), self._mouth, skin, mouth_height)
        self._draw(image, (yaw - 0.45, -0.8, yaw + 0.45, -0.15), self._wrinkles)

        image = image * (1 + 0.25 * (self.light[0] * u + self.light[1] * v) / 1.5)
        contrast, brightness = rng.uniform(0.8, 1.15), rng.normal(0, 12)
        image = (image - 128) * contrast + 128 + brightness
        pixels = downsample(np.clip(image, 0, 255)).astype(np.float64)
        return np.clip(np.round(pixels + rng.normal(0, 2.5, pixels.shape)), 0, 255).astype(np.uint8)

    def _draw(
        self, image: np.ndarray, box: tuple[float, float, float, float],
        feature: Callable[..., np.ndarray], *args: object,
    ) -> None:
        """Run `feature` on the canvas patch covering face-space `box` only: far cheaper than all of it."""
        corners_u = np.array([box[0], box[2], box[0], box[2]])
        corners_v = np.array([box[1], box[1], box[3], box[3]])
        x = self.centre[0] + self.half_width * (corners_u * np.cos(self.angle) - corners_v * np.sin(self.angle))
        y = self.centre[1] + self.half_width * (corners_u * np.sin(self.angle) + corners_v * np.cos(self.angle))
        canvas = image.shape[0]
        rows = slice(int(np.clip(np.floor(y.min()), 0, canvas)), int(np.clip(np.ceil(y.max()) + 1, 0, canvas)))
        cols = slice(int(np.clip(np.floor(x.min()), 0, canvas)), int(np.clip(np.ceil(x.max()) + 1, 0, canvas)))
        full_u, full_v = self.u, self.v
        self.u, self.v = full_u[rows, cols], full_v[rows, cols]
        try:
            image[rows, cols] = feature(image[rows, cols], *args)
        finally:
            self.u, self.v = full_u, full_v

    def _background(self, skin: float) -> np.ndarray:
        rng = self.rng
        level = rng.uniform(20, 235)
        while abs(level - skin) < 25:  # a face lost in its background would be unfair to detect
            level = rng.uniform(20, 235)
        gradient = (rng.normal(0, 25), rng.normal(0, 25))
        return level + gradient[0] * self.u / 2 + gradient[1] * self.v / 2

    def _skin_shading(self, skin: float) -> np.ndarray:
        u, v = self.u, self.v
        roundness = np.sqrt(np.clip(1 - u**2 - (v / 1.32) ** 2, 0, 1))
        directional = 1 + 0.35 * (self.light[0] * u + self.light[1] * v)
        return skin * (0.68 + 0.32 * roundness) * directional

    def _eye(
        self, image: np.ndarray, skin: float, centre: float, height: float,
        gaze: tuple[float, float], iris_tone: float,
    ) -> np.ndarray:
        e = self.expression
        image = image * (1 - 0.33 * _gaussian(self.u, self.v, centre, height - 0.02, 0.2, 0.12))
        half_width, upper = 0.155, 0.085 * e.eye_open
        lower = 0.05 * e.eye_open * (1 - 0.35 * e.cheek_raise)

        def lid(uu: np.ndarray) -> np.ndarray:
            return np.clip(1 - ((uu - centre) / half_width) ** 2, 0, None)

        opening = self._between(height - upper * lid(self.u), height + lower * lid(self.u))
        opening = opening * (np.abs(self.u - centre) < half_width)
        image = _blend(image, skin * 0.95 + 35, opening * 0.85)
        iris_u, iris_v = centre + gaze[0], height + gaze[1]
        image = _blend(image, iris_tone, self._ellipse(iris_u, iris_v, 0.08, 0.08) * opening)
        image = _blend(image, 15, self._ellipse(iris_u, iris_v, 0.035, 0.035) * opening)
        lash = self._stroke(lambda uu: height - upper * lid(uu), centre - half_width, centre + half_width, 0.035)
        image = _blend(image, 25, lash * 0.9)
        crease = self._stroke(lambda uu: height - upper - 0.07 - 0.03 * lid(uu),
                              centre - 0.8 * half_width, centre + 0.8 * half_width, 0.02)
        return image * (1 - 0.25 * crease)

    def _brows(self, image: np.ndarray, hair: float, height: float) -> np.ndarray:
        e, rng = self.expression, self.rng
        thickness = rng.uniform(0.07, 0.09)
        tone = min(hair, 70) + rng.uniform(0, 20)
        for side in (-1, 1):
            inner, outer = side * 0.1 + self.yaw, side * 0.62 + self.yaw

            def curve(uu: np.ndarray, inner: float = inner, outer: float = outer) -> np.ndarray:
                t = np.clip((uu - inner) / (outer - inner), 0, 1)
                return height + e.brow_slant * (1 - t) - e.brow_arch * 4 * t * (1 - t) + 0.04 * t

            image = _blend(image, tone, self._stroke(curve, min(inner, outer), max(inner, outer), thickness) * 0.9)
        return image

    def _nose(self, image: np.ndarray) -> np.ndarray:
        e, u, v, yaw = self.expression, self.u, self.v, self.yaw
        shadow_side = -1.0 if self.light[0] > 0 else 1.0  # the bridge shadow falls away from the light
        image = image * (1 - 0.22 * _gaussian(u, v, yaw + shadow_side * 0.1, 0.12, 0.05, 0.15))
        image = image * (1 + 0.12 * _gaussian(u, v, yaw, 0.27, 0.07, 0.05))
        image = image * (1 - 0.35 * _gaussian(u, v, yaw, 0.4, 0.16, 0.035))
        for side in (-1, 1):
            image = image * (1 - 0.5 * self._ellipse(yaw + side * 0.085, 0.36, 0.045, 0.025))
        if e.nose_wrinkle:
            for side in (-1, 1):
                near, far = yaw + side * 0.06, yaw + side * 0.16
                for offset in (0.0, 0.06):
                    wrinkle = self._stroke(lambda uu, o=offset: -0.02 + o + 0.15 * np.abs(uu - yaw),
                                           min(near, far), max(near, far), 0.02)
                    image = image * (1 - 0.3 * e.nose_wrinkle * wrinkle)
        return image

    def _mouth(self, image: np.ndarray, skin: float, height: float) -> np.ndarray:
        e, u = self.expression, self.u
        centre = self.yaw * 1.2
        width = max(0.12, e.mouth_width)

        def middle(uu: np.ndarray) -> np.ndarray:
            return height - e.mouth_curve * np.clip((uu - centre) / width, -1, 1) ** 2 + e.mouth_curve * 0.35

        x = np.clip((u - centre) / width, -1, 1)
        inside = np.abs(u - centre) < width
        span = np.sqrt(np.clip(1 - x**2, 0, None))
        top = middle(u) - (e.mouth_open * 0.3 + e.lip_raise * np.clip(x, 0, None) * 2.2) * span
        bottom = middle(u) + e.mouth_open * 0.7 * span
        lip = 0.05 * span
        image = _blend(image, skin * 0.72, self._between(top - lip * 0.9, bottom + lip * 1.3) * inside * 0.8)
        if e.mouth_open > 0.03:
            image = _blend(image, 30, self._between(top, bottom) * inside)
            if e.teeth:
                teeth = self._between(top, np.minimum(bottom, top + 0.07)) * inside
                image = _blend(image, min(235.0, skin + 40), teeth * 0.9)
        image = _blend(image, 30, self._stroke(middle, centre - width, centre + width, 0.045) * 0.9)
        if e.cheek_raise or e.lip_raise:
            for side in (-1, 1):
                start, end = self.yaw + side * 0.17, centre + side * (width + 0.06)
                fold = self._stroke(
                    lambda uu, a=start, b=end: 0.38 + (height - 0.38) * np.clip((uu - a) / (b - a), 0, 1) ** 1.5,
                    min(start, end), max(start, end), 0.03,
                )
                image = image * (1 - 0.3 * fold)
        if e.cheek_raise:
            for side in (-1, 1):
                image = image * (1 + 0.12 * e.cheek_raise * _gaussian(u, self.v, side * 0.45, 0.2, 0.14, 0.1))
        return image

    def _wrinkles(self, image: np.ndarray) -> np.ndarray:
        e = self.expression
        for height in (-0.6, -0.68):
            line = self._stroke(lambda uu, h=height: h + 0.05 * uu**2, -0.35, 0.35, 0.02)
            image = image * (1 - 0.3 * e.forehead_lines * line)
        for side in (-1, 1):
            crease = self._box(self.yaw + side * 0.05 - 0.012, -0.42, self.yaw + side * 0.05 + 0.012, -0.22)
            image = image * (1 - 0.45 * e.frown_lines * crease)
        return image

    # shapes: soft masks in 0..1 with antialiased edges

    def _ellipse(self, centre_u: float, centre_v: float, radius_u: float, radius_v: float) -> np.ndarray:
        distance = np.sqrt(((self.u - centre_u) / radius_u) ** 2 + ((self.v - centre_v) / radius_v) ** 2) - 1
        return np.clip(0.5 - distance * min(radius_u, radius_v) / self.edge, 0, 1)

    def _box(self, left: float, top: float, right: float, bottom: float) -> np.ndarray:
        inside_u = np.minimum(self.u - left, right - self.u)
        inside_v = np.minimum(self.v - top, bottom - self.v)
        return np.clip(0.5 + np.minimum(inside_u, inside_v) / self.edge, 0, 1)

    def _between(self, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        inside = np.minimum(self.v - top, bottom - self.v)
        return np.clip(0.5 + inside / self.edge, 0, 1)

    def _stroke(
        self, curve: Callable[[np.ndarray], np.ndarray], start: float, end: float, thickness: float
    ) -> np.ndarray:
        """A line of `thickness` along v = curve(u) for u in [start, end], with round ends."""
        clamped = np.clip(self.u, start, end)
        distance = np.hypot(self.v - curve(clamped), self.u - clamped) - thickness / 2
        return np.clip(0.5 - distance / self.edge, 0, 1)


@functools.cache
def _pixel_centres(canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of every canvas pixel centre, float32 (half the work of float64)."""
    y, x = np.mgrid[0:canvas, 0:canvas].astype(np.float32) + np.float32(0.5)
    return y, x


def _blend(image: np.ndarray, value: float | np.ndarray, mask: np.ndarray) -> np.ndarray:
    return image * (1 - mask) + value * mask


def _gaussian(
    u: np.ndarray, v: np.ndarray, centre_u: float, centre_v: float, sigma_u: float, sigma_v: float
) -> np.ndarray:
    return np.exp(-(((u - centre_u) / sigma_u) ** 2 + ((v - centre_v) / sigma_v) ** 2) / 2)
