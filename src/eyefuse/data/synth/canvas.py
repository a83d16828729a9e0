"""The drawing canvas and the camera: coordinates, drawing primitives, and what the camera adds.

A `_Canvas` is the bounding box of the field of view in float32 "albedo" (0..255 scale). Anatomy is
placed in eye coordinates (a, b) in units of the FOV radius, centred on the circle: a points nasally
(towards the disc), b up; `_Canvas.px` maps them to pixels, applying the left/right mirror and a
small camera rotation. The camera part (`CAMERAS`, illumination, media haze, a small pupil, lens
dust, eyelash shadows, composing into the frame with noise and gamma) acts on the whole photograph
and decides no label by itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from eyefuse import ODIR_LABELS

#: mask bit of every label (bit 0, N, is never set)
LABEL_BIT: dict[str, int] = {lab: 1 << i for i, lab in enumerate(ODIR_LABELS)}


@dataclass(frozen=True)
class Camera:
    """One camera model: frame size and where the round field of view sits in it."""

    name: str
    width: int
    height: int
    fov_diameter: float  #: circle diameter as a fraction of the frame height (> 1: cut off top and bottom)
    notch: bool  #: a small notch in the circle's edge, as some cameras print
    weight: float  #: share of patients photographed with it

    def size(self, max_side: int) -> tuple[int, int]:
        """(width, height) scaled proportionally so that the longer side is at most `max_side` (0: full)."""
        scale = 1.0 if max_side <= 0 else min(1.0, max_side / max(self.width, self.height))
        return max(1, round(self.width * scale)), max(1, round(self.height * scale))


CAMERAS: tuple[Camera, ...] = (
    Camera("2976x2976", 2976, 2976, 0.93, False, 0.15),
    Camera("2592x1728", 2592, 1728, 0.97, False, 0.30),
    Camera("1936x1296", 1936, 1296, 1.16, False, 0.20),
    Camera("1444x1444", 1444, 1444, 0.92, True, 0.15),
    Camera("2048x1536", 2048, 1536, 1.10, True, 0.10),
    Camera("1280x960", 1280, 960, 0.96, False, 0.10),
)


@dataclass(frozen=True)
class FieldOfView:
    """The drawn field-of-view circle in pixels (x right, y down, pixel centres at integers)."""

    cx: float
    cy: float
    radius: float


def _camera_fov(rng: np.random.Generator, camera: Camera, width: int, height: int) -> FieldOfView:
    r = 0.5 * camera.fov_diameter * height * rng.uniform(0.97, 1.02)
    return FieldOfView(
        round(width / 2 + rng.uniform(-0.015, 0.015) * width, 2),
        round(height / 2 + rng.uniform(-0.01, 0.01) * height, 2),
        round(r, 2),
    )


# ----------------------------------------------------------------------------------------------
# Drawing canvas: the bounding box of the field of view, in float32 "albedo" (0..255 scale).
# Anatomy is placed in eye coordinates (a, b) in units of the FOV radius, centred on the circle:
# a points nasally (towards the disc), b up. `_Canvas.px` maps them to pixels, which applies the
# left/right mirror and a small camera rotation.


class _Canvas:
    def __init__(self, width: int, height: int, fov: FieldOfView, side: str, rotation: float):
        r = fov.radius
        self.x0 = max(0, math.floor(fov.cx - r - 2))
        self.y0 = max(0, math.floor(fov.cy - r - 2))
        x1 = min(width, math.ceil(fov.cx + r + 3))
        y1 = min(height, math.ceil(fov.cy + r + 3))
        self.w, self.h = x1 - self.x0, y1 - self.y0
        self.cx, self.cy, self.r = fov.cx - self.x0, fov.cy - self.y0, r
        self.nasal = 1.0 if side == "right" else -1.0
        self.rotation = rotation
        self.cos, self.sin = math.cos(rotation), math.sin(rotation)
        self.ex = ((np.arange(self.w, dtype=np.float32) - self.cx) / r)[None, :]
        self.ey = ((np.arange(self.h, dtype=np.float32) - self.cy) / r)[:, None]
        self.rho2 = self.ex**2 + self.ey**2  # squared distance from the FOV centre, in radii
        self.albedo = np.empty((self.h, self.w, 3), np.float32)
        self.mask = np.zeros((self.h, self.w), np.uint8)

    def px(self, a: np.ndarray | float, b: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Eye coordinates -> canvas pixel coordinates."""
        dx, dy = self.nasal * np.asarray(a, np.float64), -np.asarray(b, np.float64)
        x = self.cx + self.r * (dx * self.cos - dy * self.sin)
        y = self.cy + self.r * (dx * self.sin + dy * self.cos)
        return x, y

    def angle_deg(self, theta: np.ndarray | float) -> np.ndarray:
        """An eye-coordinate direction (radians, b up) -> OpenCV image angle in degrees."""
        dx, dy = self.nasal * np.cos(theta), -np.sin(theta)
        return np.degrees(np.arctan2(dx * self.sin + dy * self.cos, dx * self.cos - dy * self.sin))

    def visible(self, a: np.ndarray, b: np.ndarray, rmax: float = 0.92) -> np.ndarray:
        """Points inside the circle (radius `rmax`) and inside the frame (cut-off cameras)."""
        x, y = self.px(a, b)
        m = 0.02 * self.r + 1
        return (np.hypot(a, b) <= rmax) & (x >= m) & (x <= self.w - 1 - m) & (y >= m) & (y <= self.h - 1 - m)

    def layer(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)

    def smooth_field(self, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], factor: int = 4) -> np.ndarray:
        """Evaluate a smooth function of the centred coordinates (ex, ey) on a grid `factor` times
        coarser and upsample it: illumination and haze vary slowly, so this is exact enough and
        `factor**2` times cheaper."""
        f = max(1, min(factor, int(self.r // 16)))
        if f == 1:
            return np.asarray(fn(self.ex, self.ey), np.float32)
        small = np.asarray(fn(self.ex[:, ::f], self.ey[::f, :]), np.float32)
        return cv2.resize(small, (self.w, self.h), interpolation=cv2.INTER_LINEAR)

    def paint(
        self,
        layer: np.ndarray,
        color: Sequence[float],
        *,
        mode: str = "blend",
        strength: float = 1.0,
        blur: float = 0.0,
        label: str | None = None,
    ) -> None:
        """Apply a drawn uint8 coverage `layer` to the albedo, only inside its bounding box.

        mode "blend" moves pixels towards `color` (RGB 0..255); "darken" multiplies them by
        (1 - coverage * color) with `color` per-channel factors; `label` marks the mask bit where the
        layer was drawn (before blurring, so a sign is marked where it really is).
        """
        x, y, bw, bh = cv2.boundingRect(layer)
        if bw == 0 or bh == 0:
            return
        pad = math.ceil(3 * blur) + 1
        sl = (
            slice(max(0, y - pad), min(self.h, y + bh + pad)),
            slice(max(0, x - pad), min(self.w, x + bw + pad)),
        )
        cover = layer[sl]
        if label is not None:  # tiny antialiased dots may stay faint: then any drawn pixel counts
            self.mask[sl][cover > (40 if cover.max() > 40 else 0)] |= LABEL_BIT[label]
        if blur > 0.3:  # blurring the 8-bit coverage is faster than blurring floats, and as good
            cover = cv2.GaussianBlur(cover, (0, 0), blur)
        alpha = cover.astype(np.float32) * np.float32(strength / 255.0)
        region = self.albedo[sl]
        col = np.asarray(color, np.float32)
        if mode == "blend":
            region += alpha[..., None] * (col - region)
        elif mode == "darken":
            region *= 1.0 - alpha[..., None] * col
        else:
            raise ValueError(f"unknown paint mode {mode!r}")

    def patch(self, x: float, y: float, half: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Slices of a square patch around pixel (x, y) and its pixel offsets from (x, y)."""
        xa, xb = max(0, int(x - half)), min(self.w, int(x + half) + 2)
        ya, yb = max(0, int(y - half)), min(self.h, int(y + half) + 2)
        dx = (np.arange(xa, xb, dtype=np.float32) - np.float32(x))[None, :]
        dy = (np.arange(ya, yb, dtype=np.float32) - np.float32(y))[:, None]
        return (slice(ya, yb), slice(xa, xb)), dx, dy


def _noise_grid(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Unit Gaussian noise on a grid with about `cells` points along the canvas's longer side."""
    gh, gw = max(2, round(cells * h / max(h, w)) + 2), max(2, round(cells * w / max(h, w)) + 2)
    return rng.standard_normal((gh, gw)).astype(np.float32)


def _smooth_noise(
    rng: np.random.Generator, h: int, w: int, cells: float, interpolation: int = cv2.INTER_CUBIC
) -> np.ndarray:
    """Zero-mean unit-ish noise with about `cells` blobs across the canvas (upsampled grid)."""
    return cv2.resize(_noise_grid(rng, h, w, cells), (w, h), interpolation=interpolation)


def _fast_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas run on a downscaled copy (the result is smooth anyway)."""
    if sigma <= 0.3:
        return img
    if sigma <= 4:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    f = sigma / 2.0
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(2, round(w / f)), max(2, round(h / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2.0)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _circles(
    c: _Canvas,
    layer: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    radius: float | np.ndarray,
    value: int | np.ndarray = 255,
) -> None:
    """Filled antialiased circles at eye coordinates; `radius` in FOV radii (at least 0.8 px)."""
    x, y = c.px(a, b)
    rad = np.broadcast_to(np.maximum(np.asarray(radius) * c.r, 0.8), x.shape)
    val = np.broadcast_to(np.asarray(value), x.shape)
    for xi, yi, ri, vi in zip(x, y, rad, val, strict=True):
        cv2.circle(layer, (round(xi * 8), round(yi * 8)), round(ri * 8), int(vi), -1, cv2.LINE_AA, 3)


def _ellipses(
    c: _Canvas,
    layer: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    ax1: float | np.ndarray,
    ax2: float | np.ndarray,
    theta: float | np.ndarray,
    value: int | np.ndarray = 255,
) -> None:
    """Filled antialiased ellipses; axes in FOV radii, `theta` the long axis in eye coordinates."""
    x, y = c.px(a, b)
    n = x.shape[0]
    ax1 = np.broadcast_to(np.maximum(np.asarray(ax1) * c.r, 0.8), (n,))
    ax2 = np.broadcast_to(np.maximum(np.asarray(ax2) * c.r, 0.8), (n,))
    ang = np.broadcast_to(c.angle_deg(np.asarray(theta)), (n,))
    val = np.broadcast_to(np.asarray(value), (n,))
    for i in range(n):
        cv2.ellipse(
            layer,
            (round(x[i] * 8), round(y[i] * 8)),
            (round(ax1[i] * 8), round(ax2[i] * 8)),
            float(ang[i]),
            0,
            360,
            int(val[i]),
            -1,
            cv2.LINE_AA,
            3,
        )


def _polyline(c: _Canvas, layer: np.ndarray, pts: np.ndarray, width: np.ndarray, value: int = 255) -> None:
    """A polyline in eye coordinates whose width (FOV radii, per point) varies along it.

    Widths under one pixel are drawn one pixel wide but fainter, so thin vessels fade out smoothly
    instead of disappearing at low resolutions."""
    x, y = c.px(pts[:, 0], pts[:, 1])
    t = width * c.r
    thick = np.maximum(1, np.rint(t)).astype(np.int32)
    # np.clip is slow on the short arrays drawn here; levels of 48 keep the number of chunks small
    val = np.minimum(np.maximum(t, 0.35), 1.0) * value
    val = np.minimum(np.rint(val / 48) * 48, 255).astype(np.int32)
    key = thick * 1000 + val
    starts = np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1])
    xy = np.empty((len(x), 2), np.int32)
    xy[:, 0], xy[:, 1] = np.rint(x * 8), np.rint(y * 8)
    for k, s in enumerate(starts):
        e = starts[k + 1] + 1 if k + 1 < len(starts) else len(xy)
        seg = xy[s:e]
        if len(seg) < 2:
            continue
        cv2.polylines(layer, [seg], False, int(val[s]), int(thick[s]), cv2.LINE_AA, 3)


def _scatter(
    c: _Canvas,
    rng: np.random.Generator,
    n: int,
    center: tuple[float, float],
    sigma: float,
    rmax: float = 0.92,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` Gaussian-scattered points around `center` (eye coordinates) that are visible in the photo."""
    if n <= 0:
        return np.zeros(0), np.zeros(0)
    got_a: list[np.ndarray] = []
    got_b: list[np.ndarray] = []
    have = 0
    for _ in range(12):
        if have >= n:
            break
        a = center[0] + rng.normal(0, sigma, 2 * n + 4)
        b = center[1] + rng.normal(0, sigma, 2 * n + 4)
        ok = c.visible(a, b, rmax)
        got_a.append(a[ok])
        got_b.append(b[ok])
        have += int(ok.sum())
    a, b = np.concatenate(got_a)[:n], np.concatenate(got_b)[:n]
    if len(a) < n:  # a centre far outside the photo: the FOV centre is always visible
        a = np.concatenate([a, np.zeros(n - len(a))])
        b = np.concatenate([b, np.zeros(n - len(b))])
    return a, b


# ----------------------------------------------------------------------------------------------
# Camera and optics: applied to the whole photograph after the fundus is drawn


def _illuminate(c: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Light the albedo: radial falloff around a slightly off-centre hot spot, uneven exposure and a
    colour cast. Returns the lit image (the canvas's albedo array, changed in place) and the sensor
    noise level that `_compose` will add."""
    ia, ib = rng.uniform(-0.1, 0.1, 2)
    vign, power, floor = rng.uniform(0.3, 0.6), rng.uniform(2.0, 3.0), 0.2
    k = -math.log((1.0 - vign - floor) / (1.0 - floor))
    exposure = _noise_grid(rng, c.h, c.w, 3)

    def illumination(ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
        # smooth exponential falloff to a floor: reaches 1 - vign at the rim, never a visible kink
        falloff = floor + (1.0 - floor) * np.exp(-k * ((ex - ia) ** 2 + (ey - ib) ** 2) ** (power / 2))
        uneven = cv2.resize(exposure, (falloff.shape[1], falloff.shape[0]), interpolation=cv2.INTER_CUBIC)
        return falloff * (1.0 + 0.05 * uneven)

    illum = c.smooth_field(illumination)
    gain = rng.uniform(0.75, 1.25) * np.array(
        [rng.uniform(0.95, 1.05), rng.uniform(0.93, 1.07), rng.uniform(0.9, 1.1)], np.float32
    )
    img = c.albedo
    img *= illum[..., None]
    img *= gain
    return img, rng.uniform(0.8, 2.5)


def _media_haze(c: _Canvas, rng: np.random.Generator, img: np.ndarray, s: float) -> np.ndarray:
    """Media haze of strength `s` (lens, small pupil, defocus): scattered light blurs and veils."""
    img = _fast_blur(img, c.r * 0.03 * s)
    centre = img[int(c.cy) - 2 : int(c.cy) + 3, int(c.cx) - 2 : int(c.cx) + 3].reshape(-1, 3).mean(0)
    veil = centre * np.array([1.05, 1.1, 1.15], np.float32) + np.float32(rng.uniform(20, 45))
    haze = c.smooth_field(lambda ex, ey: 0.55 * s * (0.6 + 0.4 * np.exp(-(ex**2 + ey**2) / 0.5)))
    img += haze[..., None] * (veil - img)
    img *= 1.0 - 0.15 * s * rng.uniform(0.5, 1.0)
    return img


def _poor_capture(c: _Canvas, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """A "low image quality" photograph: often a small pupil's dark crescent from one side of the
    rim, and underexposure."""
    if rng.random() < 0.7:
        t = rng.uniform(0, 2 * np.pi)
        ca, cb = math.cos(t), math.sin(t)
        shade = c.smooth_field(lambda ex, ey: np.clip((ex * ca + ey * cb - 0.35) / 0.6, 0, 1) ** 1.5)
        img *= 1.0 - rng.uniform(0.35, 0.65) * shade[..., None]
    img *= rng.uniform(0.8, 1.0)
    return img


def _eyelash_shadows(c: _Canvas, rng: np.random.Generator, img: np.ndarray, n: int) -> np.ndarray:
    """Eyelash shadows: `n` dark, tapered, slightly curved strands reaching in from the upper rim (a
    lid not held open). Like a cataract's spokes they are dark, sharp-edged and radial and cover a
    few per cent of the field, so "dark structure at the rim" is not cataract's alone; unlike spokes
    they curve, bunch in one sector at the top and have no vacuoles between them."""
    layer = c.layer()
    centre = math.pi / 2 + rng.uniform(-0.6, 0.6)  # the upper lid, the camera a little tilted
    steps = 10
    for th in centre + rng.uniform(-0.7, 0.7, n):
        r = np.linspace(1.05, rng.uniform(0.3, 0.7), steps)
        t = th + rng.uniform(-0.3, 0.3) * (1.05 - r)
        _polyline(
            c,
            layer,
            np.stack([r * np.cos(t), r * np.sin(t)], 1),
            np.linspace(rng.uniform(0.03, 0.08), 0.01, steps),
        )
    c.albedo = img  # in front of the eye: painted on the image, like the spokes
    c.paint(layer, (0.5, 0.5, 0.5), mode="darken", strength=rng.uniform(0.5, 0.7), blur=0.012 * c.r)
    return c.albedo


def _lens_dust(c: _Canvas, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Out-of-focus dust shadows on the camera lens."""
    n_dust = int(rng.integers(2, 7))
    t, rr = rng.uniform(0, 2 * np.pi, n_dust), np.sqrt(rng.uniform(0, 0.8, n_dust))
    layer = c.layer()
    c.albedo = img  # dust shadows the final image, not the fundus: paint on the image
    _circles(c, layer, rr * np.cos(t), rr * np.sin(t), rng.uniform(0.015, 0.04, n_dust))
    c.paint(layer, (0.3, 0.3, 0.3), mode="darken", strength=rng.uniform(0.15, 0.3), blur=0.01 * c.r)
    return c.albedo


def _compose(
    c: _Canvas,
    rng: np.random.Generator,
    img: np.ndarray,
    size: tuple[int, int],
    border: int,
    notch: bool,
    noise_sigma: float,
    fov_bits: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Put the canvas into the (width, height) frame: soft circle edge, border grey, notch, sensor
    noise, gamma. Returns (rgb, mask); `fov_bits` are set on the whole field of view (C's lens lies
    in front of all of it)."""
    width, height = size
    dist_px = np.sqrt(c.rho2) * c.r
    alpha = np.clip(c.r - dist_px + 0.5, 0.0, 1.0)
    if notch:
        ang = -math.pi / 4 if rng.random() < 0.5 else 0.0
        nx, ny = c.cx + c.r * math.cos(ang), c.cy + c.r * math.sin(ang)
        half = max(1, round(0.035 * c.r))
        cv2.rectangle(
            alpha, (round(nx - 2 * half), round(ny - half)), (round(nx + 2 * half), round(ny + half)), 0, -1
        )
    img += rng.standard_normal((c.h, c.w), dtype=np.float32)[..., None] * np.float32(noise_sigma) - border
    img *= alpha[..., None]
    img += border
    rgb = np.full((height, width, 3), border, np.uint8)
    rgb[c.y0 : c.y0 + c.h, c.x0 : c.x0 + c.w] = np.clip(img, 0, 255)
    gamma = rng.uniform(0.85, 1.15)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    rgb = cv2.LUT(rgb, lut)

    mask = np.zeros((height, width), np.uint8)
    inside = alpha > 0.5
    roi_mask = c.mask
    if fov_bits:
        roi_mask = roi_mask | np.where(inside, fov_bits, 0).astype(np.uint8)
    mask[c.y0 : c.y0 + c.h, c.x0 : c.x0 + c.w] = np.where(inside, roi_mask, 0)
    return rgb, mask
