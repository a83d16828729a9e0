"""Synthetic ODIR-format dataset: fundus-like photographs with drawn disease signs, for tests and demos.

`synthesize` writes a folder that the ODIR readers load like the real challenge release::

    OUT/ODIR-5K_Training_Annotations(Updated)_V2.xlsx        training patients (IDs 0 .. n-1)
    OUT/ODIR-5K_Training_Dataset/{ID}_left.jpg, {ID}_right.jpg
    OUT/Off-site Test Set/Annotation/off-site test annotation (English).xlsx   (IDs from 10000)
    OUT/Off-site Test Set/Images/{ID}_left.jpg, {ID}_right.jpg
    OUT/masks/{ID}_left.png, {ID}_right.png                 lesion masks (see below)
    OUT/synth_fov.csv                                       drawn field-of-view circle of every photograph
    OUT/SYNTHETIC.json                                      marker + generator settings

Both annotation files have the 15 ODIR columns; keywords use the ODIR vocabulary joined by the
full-width comma U+FF0C, and the patient labels follow the ODIR rule (N only when both eyes are
"normal fundus", otherwise the union of the two eyes' disease labels).

Orientation: photographs are drawn as the examiner sees the fundus, like the real data, so the
optic disc (nasal side) is on the viewer's RIGHT in a right-eye photograph and on the LEFT in a
left-eye photograph; the macula lies about 2.5 disc diameters temporal to the disc.

Masks: single-channel uint8 PNGs of the photograph's size. Bit i (value ``1 << i``) is set where a
sign of label ``ODIR_LABELS[i]`` (order N D G C A H M O) was drawn, so bit 0 (N) is never used;
D = 2, G = 4, C = 8 (the whole field of view: the lens lies in front of all of it), A = 16,
H = 32 (the narrowed arteries and nicked veins), M = 64, O = 128. Normal eyes, lens dust, haze and
"low image quality" set no bit.

Cameras: the resolutions of ODIR's cameras (2976x2976, 2592x1728, 1936x1296, 1444x1444, ...), some
with a circle taller than the frame (cut off at top and bottom), black or dark-grey borders, some
with a small notch in the circle. They are scaled down proportionally to `max_side` pixels on the
longer side. The default (`DEFAULT_MAX_SIDE` = 768) draws a photograph in about 40 ms of one core,
so a 300 + 60 patient set takes well under a minute on two cores, and every field of view is still
about 500 px or more across, larger than the 448 px model input. `max_side=0` draws at the full
camera resolution (slow; useful to exercise reduced-scale decoding).

Signs are drawn at sizes relative to the field of view (the smallest, microaneurysms, are at least
1/150 of its diameter, so they survive resizing to ~192 px), with nuisance variation that a model
must see past: fundus pigmentation, exposure, colour cast, vignetting, gamma, sensor noise, JPEG
quality 85-95, a few degrees of rotation, FOV scale and offset, lens dust.

No global trait gives a label away (`benchmarks/bench_shortcuts.py` measures it): the continuous
parameters that differ between healthy and diseased eyes overlap as in real eyes (`EyeParameters`:
cup-to-disc ratio, artery-to-vein ratio, tortuosity, tessellation, media haze), and the confounders
of real photographs are drawn in eyes without the disease: haze and blur in most eyes (age, small
pupil, defocus; strong in "low image quality" photographs, which may also show a small pupil's dark
crescent), mild tessellation, nerve-fibre sheen. What decides a label is a local sign: lens spokes
for C, rim and disc haemorrhages besides the cup for G, nicking and haemorrhages for H, pigment
clumps, atrophy or a membrane with the drusen for A (isolated drusen are O, as in ODIR), atrophy and
a tilted disc for M. O has eight conditions. The pictures show the machinery works; they are not a
model of real photographs, and figures on them say nothing about accuracy on real ones.

Determinism: every patient is drawn from its own numpy Generator seeded with (seed, patient ID), so
patients are independent, can be drawn by any number of worker processes, and the same seed gives
the same annotation content and byte-identical JPEG/PNG files. Disease categories are dealt in
shuffled blocks of 20 consecutive IDs so that every label occurs at least about 5 % of the time
even in a 300-patient demo set.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from eyefuse import ODIR_LABELS, __version__
from eyefuse.data.odir import ODIR_COLUMNS
from eyefuse.errors import ConfigError
from eyefuse.utils.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text

TRAIN_ANNOTATION = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
TRAIN_IMAGES = "ODIR-5K_Training_Dataset"
TEST_ANNOTATION = "Off-site Test Set/Annotation/off-site test annotation (English).xlsx"
TEST_IMAGES = "Off-site Test Set/Images"
MASKS = "masks"
FOV_CSV = "synth_fov.csv"
MARKER = "SYNTHETIC.json"
COLUMNS: tuple[str, ...] = ODIR_COLUMNS  # the annotation's 15 columns, as the readers expect them
KEYWORD_SEPARATOR = "\uff0c"
DEFAULT_MAX_SIDE = 768
#: first off-site test ID when the training set has fewer than 10000 patients (then the next 10000s)
TEST_ID_START = 10000
MIN_SIDE = 64  #: smallest allowed `max_side`: below this a field of view is a few dozen pixels

NORMAL_KEYWORD = "normal fundus"
#: disease keywords per label, each with its probability among that label's eyes
DISEASE_KEYWORDS: dict[str, tuple[tuple[str, float], ...]] = {
    "D": (
        ("mild nonproliferative retinopathy", 0.35),
        ("moderate non proliferative retinopathy", 0.40),
        ("severe nonproliferative retinopathy", 0.15),
        ("proliferative diabetic retinopathy", 0.10),
    ),
    "G": (("glaucoma", 0.75), ("suspected glaucoma", 0.25)),
    "C": (("cataract", 1.0),),
    "A": (("dry age-related macular degeneration", 0.7), ("wet age-related macular degeneration", 0.3)),
    "H": (("hypertensive retinopathy", 1.0),),
    "M": (("pathological myopia", 1.0),),
    "O": (
        ("drusen", 0.2),  # isolated drusen are O in ODIR; A needs pigment changes, atrophy or CNV too
        ("laser spot", 0.14),
        ("branch retinal vein occlusion", 0.14),
        ("tessellated fundus", 0.12),
        ("epiretinal membrane", 0.12),
        ("myelinated nerve fibers", 0.1),
        ("vitreous degeneration", 0.09),
        ("retinal pigmentation", 0.09),
    ),
}
#: keywords that do not decide labels (ODIR rule), with their probability per eye. "low image
#: quality" photographs are hazy and blurred like a cataract (small pupil, defocus, tear film): the
#: confounder that keeps cataract from being "the only blurred eyes"
NON_DECIDING_KEYWORDS: dict[str, float] = {"lens dust": 0.08, "low image quality": 0.2}
KEYWORD_LABEL: dict[str, str] = {kw: lab for lab, opts in DISEASE_KEYWORDS.items() for kw, _ in opts}
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


@dataclass
class RenderedEye:
    """One drawn photograph: `rgb` (H x W x 3 uint8), lesion `mask` (H x W uint8, bits as in the
    module docstring), the drawn `fov` circle, and the eye's `labels` and ODIR `keywords`."""

    rgb: np.ndarray
    mask: np.ndarray
    fov: FieldOfView
    labels: tuple[str, ...]
    keywords: tuple[str, ...]


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
# Anatomy


@dataclass
class _Vessel:
    pts: np.ndarray  # (n, 2) eye coordinates
    width: np.ndarray  # (n,) FOV radii
    kind: str  # "a" artery | "v" vein
    trunk: int


def _grow_vessel(
    rng: np.random.Generator,
    out: list[_Vessel],
    *,
    start: np.ndarray,
    theta0: float,
    width: float,
    length: float,
    kappa: tuple[float, float, float],
    tort: float,
    tort_wl: float,
    outward: float,
    fovea: np.ndarray,
    kind: str,
    trunk: int,
    depth: int,
    max_depth: int = 3,
) -> None:
    """Grow one vessel as a smooth random walk, then its branches.

    `kappa` = (start, end, decay length): the curvature (rad per FOV radius, positive turns
    counter-clockwise in eye coordinates) relaxes from start to end, which bends the temporal arcades
    around the macula. `tort` adds a sinusoidal wiggle (hypertensive tortuosity). `outward` (+1/-1)
    is the side most branches leave to, away from the macula. Vessels stop short of the fovea (the
    foveal avascular zone); the width tapers and drops at every branch."""
    step = 0.01
    n = max(3, int(length / step))
    s = np.arange(n) * step
    k0, k1, decay = kappa
    noise = rng.standard_normal(n) * (0.3 * math.sqrt(step))
    theta = theta0 + np.cumsum((k1 + (k0 - k1) * np.exp(-s / decay)) * step + noise)
    if tort > 0:
        theta = theta + tort * np.sin(2 * np.pi * s / tort_wl + rng.uniform(0, 2 * np.pi))
    z = np.empty(n + 1, np.complex128)  # complex positions: one cumsum instead of two
    z[0] = complex(start[0], start[1])
    z[1:] = z[0] + np.cumsum(np.exp(1j * theta)) * step
    stop = (np.abs(z) > 1.02) | (np.abs(z - complex(fovea[0], fovea[1])) < 0.1)
    stop[0] = False
    if stop.any():
        z = z[: np.flatnonzero(stop)[0] + 1]
    pts = np.stack([z.real, z.imag], 1)
    m = len(pts)
    if m < 2:
        return
    w = width * (1.0 - 0.5 * np.arange(m) / n)
    if depth < max_depth and m > 12:
        nb = int(rng.integers(2, 5)) if depth == 0 else int(rng.integers(1, 3))
        for i in np.sort(rng.integers(int(0.12 * m), int(0.9 * m), nb)):
            child_w = w[i] * rng.uniform(0.5, 0.75)
            side = outward if rng.random() < 0.7 else -outward
            child_theta = theta[max(i - 1, 0)] + side * rng.uniform(0.4, 1.0)
            child_len = (m - i) * step * rng.uniform(0.4, 0.9) + 0.08
            kappa_c, w_drop = rng.normal(0, 0.8), rng.uniform(0.82, 0.92)
            if child_w >= 0.0025:
                _grow_vessel(
                    rng,
                    out,
                    start=pts[i],
                    theta0=child_theta,
                    width=child_w,
                    length=child_len,
                    kappa=(kappa_c, kappa_c * 0.5, 0.4),
                    tort=tort * 0.8,
                    tort_wl=tort_wl,
                    outward=side if depth == 0 else outward,
                    fovea=fovea,
                    kind=kind,
                    trunk=trunk,
                    depth=depth + 1,
                    max_depth=max_depth,
                )
            w[i:] *= w_drop
    out.append(_Vessel(pts, w, kind, trunk))


def _vessel_tree(
    rng: np.random.Generator,
    disc: np.ndarray,
    fovea: np.ndarray,
    avr: float,
    art_tort: float,
    vein_scale: dict[int, float],
) -> list[_Vessel]:
    """Arteries and veins of the four arcades (0 superotemporal, 1 inferotemporal, 2 superonasal,
    3 inferonasal) plus small macular and nasal vessels, starting at the disc."""
    vessels: list[_Vessel] = []
    deg = math.radians
    # (start angle, width, curvature (start, end, decay), length, outward side)
    trunks: list[tuple[float, float, tuple[float, float, float], float, float]] = []
    for sign in (1.0, -1.0):  # temporal arcades: leave the disc vertically, arch around the macula
        k = (sign * rng.uniform(2.6, 3.4), sign * rng.uniform(0.7, 1.0), rng.uniform(0.2, 0.3))
        trunks.append((sign * deg(rng.uniform(80, 100)), 0.02, k, rng.uniform(1.3, 1.7), -sign))
    for sign in (1.0, -1.0):  # nasal trunks: straighter, towards the nasal periphery
        k0 = sign * rng.uniform(-0.8, 0.2)
        theta = sign * deg(rng.uniform(35, 75))
        trunks.append((theta, 0.016, (k0, k0 * 0.3, 0.5), rng.uniform(0.8, 1.0), sign))
    for _ in range(int(rng.integers(2, 6))):  # small macular vessels
        k0 = rng.normal(0, 0.5)
        trunks.append((deg(180 + rng.uniform(-35, 35)), 0.008, (k0, k0, 1.0), rng.uniform(0.25, 0.45), 1.0))
    for _ in range(int(rng.integers(1, 3))):  # small nasal vessels
        k0 = rng.normal(0, 0.5)
        trunks.append((deg(rng.uniform(-25, 25)), 0.009, (k0, k0, 1.0), rng.uniform(0.5, 0.8), 1.0))
    for t, (theta, w0, kappa, length, outward) in enumerate(trunks):
        w0 *= rng.uniform(0.85, 1.15)
        for kind in ("v", "a"):
            start = disc + rng.normal(0, 0.012, 2)
            th = theta + (rng.uniform(-0.2, 0.2) if kind == "a" else 0.0)
            width = w0 * (avr if kind == "a" else vein_scale.get(t, 1.0))
            tort = art_tort if kind == "a" else (0.25 if t in vein_scale else rng.uniform(0.0, 0.05))
            _grow_vessel(
                rng,
                vessels,
                start=start,
                theta0=th,
                width=width,
                length=length,
                kappa=(kappa[0] * rng.uniform(0.9, 1.1), kappa[1], kappa[2]),
                tort=tort,
                tort_wl=rng.uniform(0.04, 0.09),
                outward=outward,
                fovea=fovea,
                kind=kind,
                trunk=t,
                depth=0,
                max_depth=3 if w0 > 0.012 else 2,
            )
    return vessels


@dataclass
class _Geometry:
    disc: np.ndarray  # eye coordinates of the disc centre
    fovea: np.ndarray
    rd: float  # disc radius (FOV radii)
    dd: float  # disc diameter


def fundus_color(rng: np.random.Generator) -> tuple[float, float, float]:
    """A random orange-red fundus colour (RGB albedo at the centre of a well-exposed photograph)."""
    red = rng.uniform(180, 230)
    return red, red * rng.uniform(0.36, 0.5), red * rng.uniform(0.12, 0.24)


def _background(c: _Canvas, rng: np.random.Generator, color: tuple[float, float, float] | None) -> None:
    """Orange-red fundus albedo with choroidal mottling and fine texture."""
    if color is None:
        color = fundus_color(rng)
    base = np.asarray(color, np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    cells = 6 * max(c.w, c.h) / (2 * c.r)
    # low and mid frequencies are summed on the mid grid: one full-size resize instead of two
    mid = _noise_grid(rng, c.h, c.w, cells * 7)
    low = cv2.resize(_noise_grid(rng, c.h, c.w, cells), mid.shape[::-1], interpolation=cv2.INTER_CUBIC)
    smooth = cv2.resize(0.03 * low + 0.012 * mid, (c.w, c.h), interpolation=cv2.INTER_CUBIC)
    fine = _smooth_noise(rng, c.h, c.w, min(cells * 40, max(c.w, c.h) / 2), cv2.INTER_LINEAR)
    tex = 1.0 + smooth + 0.02 * fine
    green_extra = 1.0 + 0.02 * fine  # granular pigment shows more in green and blue
    c.albedo[..., 0] = base[0] * tex
    c.albedo[..., 1] = base[1] * tex * green_extra
    c.albedo[..., 2] = base[2] * tex * green_extra


def _tessellation(
    c: _Canvas, rng: np.random.Generator, geom: _Geometry, strength: float, label: str | None
) -> None:
    """Choroidal vessel pattern: wide orange ribbons running from the posterior pole towards the
    periphery (to the vortex veins), with darker pigmented spaces between them."""
    n, steps = int(rng.integers(50, 80)), 40
    start_r = rng.uniform(0.05, 0.8, n) ** 1.5
    start_t = rng.uniform(0, 2 * np.pi, n)
    sa, sb = geom.fovea[0] + start_r * np.cos(start_t), geom.fovea[1] + start_r * np.sin(start_t)
    theta = start_t[:, None] + rng.normal(0, 0.35, (n, 1)) + np.cumsum(rng.normal(0, 0.07, (n, steps)), 1)
    lengths = rng.uniform(0.4, 1.0, (n, 1)) / steps
    a = sa[:, None] + np.cumsum(np.cos(theta) * lengths, 1)
    b = sb[:, None] + np.cumsum(np.sin(theta) * lengths, 1)
    ribbons = c.layer()
    widths = rng.uniform(0.025, 0.05, n)
    for i in range(n):
        _polyline(c, ribbons, np.stack([a[i], b[i]], 1), widths[i] * np.linspace(1.0, 0.6, steps))
    cover = _fast_blur(ribbons.astype(np.float32) / 255.0, 0.012 * c.r)
    # strongest around the posterior pole, as in myopic eyes
    fa, fb = c.px(geom.fovea[0], geom.fovea[1])
    d2 = ((c.ex - (fa - c.cx) / c.r) ** 2 + (c.ey - (fb - c.cy) / c.r) ** 2).astype(np.float32)
    dark = strength * (0.55 + 0.45 * np.exp(-d2 / 0.6)) * (1.0 - cover)
    c.albedo *= 1.0 - dark[..., None] * np.array([0.45, 0.62, 0.55], np.float32)
    if label is not None:
        c.mask[(dark > 0.22) & (c.rho2 < 1.0)] |= LABEL_BIT[label]


def _macula(c: _Canvas, rng: np.random.Generator, geom: _Geometry) -> None:
    """Darker macula with a darker fovea and sometimes a small foveal reflex."""
    x, y = c.px(geom.fovea[0], geom.fovea[1])
    sig = geom.dd * rng.uniform(0.7, 1.0) * c.r
    depth, pit = rng.uniform(0.25, 0.4), rng.uniform(0.1, 0.2)
    sl, dx, dy = c.patch(float(x), float(y), 2.8 * sig)
    f = max(1, min(2, int(sig // 8)))  # smooth: evaluate on a 2x coarser grid
    d2 = dx[:, ::f] ** 2 + dy[::f, :] ** 2
    dark = depth * np.exp(-d2 / (2 * sig**2)) + pit * np.exp(-d2 / (2 * (0.2 * sig) ** 2))
    if f > 1:
        dark = cv2.resize(dark, (dx.shape[1], dy.shape[0]), interpolation=cv2.INTER_LINEAR)
    c.albedo[sl] *= 1.0 - dark[..., None] * np.array([0.85, 1.0, 0.9], np.float32)
    if rng.random() < 0.5:
        reflex = c.layer()
        _circles(c, reflex, np.array([geom.fovea[0]]), np.array([geom.fovea[1]]), 0.006)
        c.paint(reflex, (250, 235, 210), strength=0.45, blur=0.6)


def _ellipse_alpha(
    dx: np.ndarray, dy: np.ndarray, rx: float, ry: float, ang: float, soft: float
) -> np.ndarray:
    """Soft-edged ellipse coverage on a patch (ang in image radians)."""
    ca, sa = math.cos(ang), math.sin(ang)
    u = (dx * ca + dy * sa) / rx
    v = (-dx * sa + dy * ca) / ry
    e = np.sqrt(u * u + v * v)
    return 1.0 / (1.0 + np.exp(np.clip((e - 1.0) / soft, -30, 30)))


def _optic_disc(
    c: _Canvas, rng: np.random.Generator, geom: _Geometry, cdr: float, tilt: float, mark_cup: bool
) -> None:
    """Bright yellowish-pink disc with a paler cup (cup-to-disc ratio `cdr`) and a faint halo."""
    x, y = c.px(geom.disc[0], geom.disc[1])
    x, y = float(x), float(y)
    rx, ry = geom.rd * c.r * tilt, geom.rd * c.r * rng.uniform(1.03, 1.12)
    ang = c.rotation
    sl, dx, dy = c.patch(x, y, 2.6 * max(rx, ry))
    disc = _ellipse_alpha(dx, dy, rx, ry, ang, 0.05)
    halo = 0.22 * np.exp(-(((np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) - 1.0) / 0.5) ** 2)) * (1.0 - disc)
    region = c.albedo[sl]
    rim = np.array([rng.uniform(240, 255), rng.uniform(175, 205), rng.uniform(100, 135)], np.float32)
    region += halo[..., None] * (np.array([240, 150, 90], np.float32) - region)
    region += (0.92 * disc)[..., None] * (rim - region)
    # the cup sits slightly temporal within the disc
    shift = (1.0 - cdr) * 0.35 * rx
    tx = -c.nasal * shift * c.cos
    ty = -c.nasal * shift * c.sin
    cup = _ellipse_alpha(dx - tx, dy - ty, cdr * rx, cdr * ry * rng.uniform(1.0, 1.08), ang, 0.1)
    cup_col = np.array([255, rng.uniform(225, 245), rng.uniform(170, 205)], np.float32)
    region += (0.9 * cup)[..., None] * (cup_col - region)
    if mark_cup:
        c.mask[sl][cup > 0.5] |= LABEL_BIT["G"]


def _peripapillary_atrophy(c: _Canvas, rng: np.random.Generator, geom: _Geometry, label: str | None) -> None:
    """Pale crescent on the temporal side of the disc (myopia)."""
    layer = c.layer()
    grow = rng.uniform(1.2, 1.6)
    shift = geom.rd * (grow - 1.0 + rng.uniform(0.05, 0.2))  # nasal edge stays under the disc
    theta = rng.uniform(-0.3, 0.3)
    _ellipses(
        c,
        layer,
        np.array([geom.disc[0] - shift]),
        np.array([geom.disc[1]]),
        geom.rd * grow,
        geom.rd * rng.uniform(1.0, 1.15),
        theta,
    )
    _ellipses(
        c, layer, np.array([geom.disc[0]]), np.array([geom.disc[1]]), geom.rd * 1.08, geom.rd, math.pi / 2, 0
    )
    c.paint(layer, (235, 212, 165), strength=rng.uniform(0.6, 0.85), blur=0.006 * c.r, label=label)
    edge = cv2.morphologyEx(layer, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    c.paint(edge, (0.5, 0.6, 0.6), mode="darken", strength=0.4, blur=0.8)


def _draw_vessels(c: _Canvas, vessels: list[_Vessel], geom: _Geometry, hypertensive: bool) -> None:
    """Veins (dark red, wide) then arteries (lighter, narrower, with a central light reflex);
    hypertensive eyes get arteriovenous nicking, and their arteries are marked H."""
    veins, arts, reflex = c.layer(), c.layer(), c.layer()
    for v in vessels:
        if v.kind == "v":
            _polyline(c, veins, v.pts, v.width)
        else:
            _polyline(c, arts, v.pts, v.width)
            if v.width[0] * c.r >= 3.5:
                _polyline(c, reflex, v.pts, v.width * 0.28)
    if hypertensive:
        # arteriovenous nicking: veins vanish where an artery crosses, away from the disc
        k = max(3, int(0.05 * geom.dd * c.r) | 1)
        near = cv2.dilate(arts, np.ones((k, k), np.uint8))
        dx, dy = c.px(geom.disc[0], geom.disc[1])
        cv2.circle(near, (round(float(dx)), round(float(dy))), round(1.6 * geom.dd * c.r), 0, -1)
        nicked = (near > 60) & (veins > 60)
        veins[nicked] = (veins[nicked] * 0.15).astype(np.uint8)
        c.mask[nicked] |= LABEL_BIT["H"]
    sigma = 0.5 + 0.0015 * c.r
    c.paint(veins, (0.45, 0.72, 0.72), mode="darken", blur=sigma)
    c.paint(arts, (0.22, 0.5, 0.52), mode="darken", blur=sigma, label="H" if hypertensive else None)
    c.paint(reflex, (255, 190, 150), strength=0.35, blur=sigma)


# ----------------------------------------------------------------------------------------------
# Disease signs


def _haemorrhages(
    c: _Canvas,
    rng: np.random.Generator,
    a: np.ndarray,
    b: np.ndarray,
    geom: _Geometry,
    flame_frac: float,
    size: tuple[float, float],
    label: str | None,
) -> None:
    """Dot/blot haemorrhages, and flame-shaped ones aligned with the nerve fibres (radial from the disc)."""
    n = len(a)
    if n == 0:
        return
    layer = c.layer()
    flame = rng.random(n) < flame_frac
    r1 = rng.uniform(*size, n)
    radial = np.arctan2(b - geom.disc[1], a - geom.disc[0])
    long_ax = np.where(flame, r1 * rng.uniform(2.0, 3.5, n), r1)
    short_ax = np.where(flame, r1 * rng.uniform(0.45, 0.7, n), r1 * rng.uniform(0.6, 1.0, n))
    theta = np.where(flame, radial, rng.uniform(0, np.pi, n))
    _ellipses(c, layer, a, b, long_ax, short_ax, theta, rng.integers(170, 256, n))
    c.paint(layer, (0.48, 0.8, 0.72), mode="darken", blur=0.003 * c.r + 0.4, label=label)


def _cotton_wool(
    c: _Canvas, rng: np.random.Generator, a: np.ndarray, b: np.ndarray, label: str | None
) -> None:
    """Fluffy white nerve-fibre infarcts."""
    if len(a) == 0:
        return
    layer = c.layer()
    n = len(a)
    _ellipses(
        c, layer, a, b, rng.uniform(0.02, 0.04, n), rng.uniform(0.012, 0.025, n), rng.uniform(0, np.pi, n)
    )
    c.paint(layer, (242, 232, 210), strength=rng.uniform(0.55, 0.8), blur=0.008 * c.r, label=label)


def _exudates(c: _Canvas, rng: np.random.Generator, geom: _Geometry, n: int, label: str | None) -> None:
    """Hard exudates: sharp bright-yellow specks in clusters (sometimes a ring) near the macula."""
    if n <= 0:
        return
    layer = c.layer()
    k = int(rng.integers(1, 4))
    per = np.maximum(1, rng.multinomial(n, np.ones(k) / k))
    for m in per:
        ca, cb = _scatter(c, rng, 1, (geom.fovea[0], geom.fovea[1]), 0.22, 0.8)
        if rng.random() < 0.25:  # circinate ring
            t = rng.uniform(0, 2 * np.pi, m)
            rr = rng.uniform(0.05, 0.1) * rng.uniform(0.85, 1.15, m)
            a, b = ca + rr * np.cos(t), cb + rr * np.sin(t)
        else:
            a = ca + rng.normal(0, rng.uniform(0.02, 0.06), m)
            b = cb + rng.normal(0, rng.uniform(0.02, 0.06), m)
        ok = c.visible(a, b)
        if not ok.any():
            a, b, ok = ca, cb, np.ones(1, bool)
        _circles(c, layer, a[ok], b[ok], rng.uniform(1 / 150, 0.014, int(ok.sum())))
    c.paint(layer, (252, 232, 125), strength=rng.uniform(0.75, 0.95), blur=0.5, label=label)


def _neovascularisation(
    c: _Canvas, rng: np.random.Generator, center: tuple[float, float], label: str | None
) -> None:
    """A tangle of fine new vessels."""
    layer = c.layer()
    for _ in range(int(rng.integers(6, 14))):
        steps = 25
        theta = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.6, steps))
        pts = (
            np.array(center)
            + rng.normal(0, 0.03, 2)
            + np.cumsum(np.stack([np.cos(theta), np.sin(theta)], 1) * 0.006, 0)
        )
        _polyline(c, layer, pts, np.full(steps, 0.0045))
    c.paint(layer, (0.4, 0.75, 0.65), mode="darken", strength=0.65, blur=0.5, label=label)


def _diabetic(c: _Canvas, rng: np.random.Generator, geom: _Geometry, keyword: str) -> None:
    """Microaneurysms, haemorrhages, hard exudates, cotton-wool spots and (proliferative) new vessels;
    counts and spread grow with the grade named by the keyword."""
    grade = {
        "mild nonproliferative retinopathy": 0,
        "moderate non proliferative retinopathy": 1,
        "severe nonproliferative retinopathy": 2,
        "proliferative diabetic retinopathy": 3,
    }[keyword]
    ma = int(rng.integers(*((3, 11), (8, 26), (15, 41), (10, 31))[grade]))
    hem = int(rng.integers(*((0, 3), (3, 11), (12, 31), (6, 21))[grade]))
    exu = int(rng.integers(*((0, 1), (0, 31), (10, 51), (5, 41))[grade]))
    cws = int(rng.integers(*((0, 1), (0, 3), (2, 6), (1, 5))[grade]))
    spread = (0.28, 0.33, 0.45, 0.4)[grade]
    fov = (geom.fovea[0] + 0.1, geom.fovea[1])
    a, b = _scatter(c, rng, ma, fov, spread)
    layer = c.layer()
    _circles(c, layer, a, b, rng.uniform(1 / 150, 1 / 90, len(a)), rng.integers(190, 256, len(a)))
    c.paint(layer, (0.45, 0.78, 0.7), mode="darken", blur=0.4, label="D")
    a, b = _scatter(c, rng, hem, fov, spread + 0.05)
    _haemorrhages(c, rng, a, b, geom, 0.3, (0.012, 0.03), "D")
    _exudates(c, rng, geom, exu, "D")
    a, b = _scatter(c, rng, cws, fov, 0.35)
    _cotton_wool(c, rng, a, b, "D")
    if grade == 3:
        near_disc = rng.random() < 0.6
        center = (
            (geom.disc[0], geom.disc[1] + rng.choice([-1, 1]) * geom.rd * 1.2)
            if near_disc
            else tuple(_scatter(c, rng, 1, (0.0, 0.0), 0.45)[i][0] for i in range(2))
        )
        _neovascularisation(c, rng, center, "D")
        if rng.random() < 0.4:  # boat-shaped preretinal haemorrhage
            a, b = _scatter(c, rng, 1, (geom.fovea[0], geom.fovea[1] - 0.15), 0.15)
            layer = c.layer()
            _ellipses(c, layer, a, b, rng.uniform(0.05, 0.09), rng.uniform(0.03, 0.05), 0.0)
            _, y = c.px(a, b)
            # flat upper edge: the blood settles
            cv2.rectangle(layer, (0, 0), (c.w, max(0, int(y[0] - 0.015 * c.r))), 0, -1)
            c.paint(layer, (0.55, 0.85, 0.75), mode="darken", blur=1.0, label="D")


def _amd(c: _Canvas, rng: np.random.Generator, geom: _Geometry, keyword: str) -> None:
    """Drusen clustered at the macula, pigment clumps, geographic atrophy (dry) or a macular
    haemorrhage with a grey-green membrane (wet)."""
    wet = keyword.startswith("wet")
    n = int(rng.integers(5, 25)) if wet else int(rng.integers(10, 46))
    sig = geom.dd * rng.uniform(0.45, 0.9)
    _drusen(c, rng, geom, n, sig, 0.02, "A")
    # pigment clumps at the macula: with the atrophy or the membrane they tell AMD from drusen alone (O)
    a, b = _scatter(c, rng, int(rng.integers(3, 10)), (geom.fovea[0], geom.fovea[1]), sig * 0.8)
    layer = c.layer()
    _circles(c, layer, a, b, rng.uniform(0.004, 0.009, len(a)))
    c.paint(layer, (0.6, 0.7, 0.7), mode="darken", strength=0.7, blur=0.5, label="A")
    if wet:
        k = int(rng.integers(3, 8))
        a, b = _scatter(c, rng, k, (geom.fovea[0], geom.fovea[1]), geom.dd * 0.35)
        layer = c.layer()
        _ellipses(
            c,
            layer,
            a,
            b,
            geom.dd * rng.uniform(0.25, 0.6, k),
            geom.dd * rng.uniform(0.2, 0.45, k),
            rng.uniform(0, np.pi, k),
        )
        c.paint(
            layer,
            (0.42, 0.72, 0.68),
            mode="darken",
            strength=rng.uniform(0.7, 1.0),
            blur=0.012 * c.r,
            label="A",
        )
        layer = c.layer()
        _ellipses(
            c,
            layer,
            np.array([geom.fovea[0]]),
            np.array([geom.fovea[1]]),
            geom.dd * 0.25,
            geom.dd * 0.18,
            rng.uniform(0, np.pi),
        )
        c.paint(layer, (125, 118, 85), strength=0.45, blur=0.008 * c.r, label="A")
    elif rng.random() < 0.25:
        layer = c.layer()
        _ellipses(
            c,
            layer,
            np.array([geom.fovea[0]]),
            np.array([geom.fovea[1]]),
            geom.dd * rng.uniform(0.4, 0.8),
            geom.dd * rng.uniform(0.3, 0.6),
            rng.uniform(0, np.pi),
        )
        c.paint(layer, (228, 178, 122), strength=0.6, blur=0.004 * c.r, label="A")


def _laser_spots(c: _Canvas, rng: np.random.Generator, geom: _Geometry) -> None:
    """Panretinal photocoagulation scars: a jittered grid of pale spots with pigmented rims in the
    mid-periphery, sparing the macula and the disc (sometimes only one sector)."""
    rad = rng.uniform(0.012, 0.02)
    step = rad * rng.uniform(3.2, 4.5)
    g = np.arange(-1.0, 1.0 + step, step)
    ga, gb = np.meshgrid(g, g * math.sqrt(3) / 2)
    ga = ga + (np.round(gb / (step * math.sqrt(3) / 2)) % 2) * step / 2
    a = ga.ravel() + rng.normal(0, step * 0.12, ga.size)
    b = gb.ravel() + rng.normal(0, step * 0.12, ga.size)
    keep = (np.hypot(a, b) > rng.uniform(0.45, 0.6)) & c.visible(a, b, 0.95)
    keep &= np.hypot(a - geom.disc[0], b - geom.disc[1]) > geom.rd * 2.0
    keep &= rng.random(a.size) < rng.uniform(0.3, 0.75)
    if rng.random() < 0.3:  # sectoral laser
        centre = rng.uniform(-np.pi, np.pi)
        keep &= np.cos(np.arctan2(b, a) - centre) > 0.3
    a, b = a[keep], b[keep]
    if len(a) == 0:
        a, b = _scatter(c, rng, 12, (0.0, 0.0), 0.55, 0.9)
    radius = rad * rng.uniform(0.8, 1.2, len(a))
    pale, pig = c.layer(), c.layer()
    _circles(c, pale, a, b, radius * 0.75)
    _circles(c, pig, a, b, radius)
    pig_only = rng.random(len(a)) < 0.3
    x, y = c.px(a[~pig_only], b[~pig_only])
    for xi, yi, ri in zip(x, y, radius[~pig_only] * 0.55 * c.r, strict=True):
        cv2.circle(pig, (round(xi * 8), round(yi * 8)), round(max(ri, 0.5) * 8), 90, -1, cv2.LINE_AA, 3)
    c.paint(pig, (0.7, 0.78, 0.75), mode="darken", strength=rng.uniform(0.6, 0.9), blur=0.5, label="O")
    c.paint(pale, (240, 215, 150), strength=rng.uniform(0.5, 0.8), blur=0.6, label="O")


def _myelinated_fibres(c: _Canvas, rng: np.random.Generator, geom: _Geometry) -> None:
    """White feathery patch continuous with the disc margin, fanning along the nerve fibres."""
    centre = rng.choice([math.pi / 2, -math.pi / 2]) + rng.uniform(-0.5, 0.5)
    spread = rng.uniform(0.4, 0.9)
    n = int(rng.integers(70, 160))
    layer = c.layer()
    for _ in range(n):
        t = centre + rng.uniform(-spread, spread)
        r0 = geom.rd * rng.uniform(0.85, 1.05)
        length = geom.dd * rng.uniform(0.7, 1.6) * math.cos((t - centre) / spread * 1.2) ** 2 + 0.02
        s = np.linspace(0, 1, 10)[:, None]
        bend = np.sign(math.sin(t)) * rng.uniform(0, 0.6)  # bend temporally, like the arcades
        th = t + bend * s[:, 0]
        pts = geom.disc + np.stack([np.cos(th), np.sin(th)], 1) * (r0 + length * s)
        _polyline(c, layer, pts, np.linspace(rng.uniform(0.008, 0.014), 0.003, 10))
    c.paint(layer, (248, 240, 218), strength=rng.uniform(0.55, 0.8), blur=0.012 * c.r, label="O")


def _vein_occlusion(
    c: _Canvas, rng: np.random.Generator, geom: _Geometry, vessels: list[_Vessel], trunk: int
) -> None:
    """Branch retinal vein occlusion: flame haemorrhages and cotton-wool spots in the drained sector."""
    pts = np.concatenate([v.pts for v in vessels if v.kind == "v" and v.trunk == trunk])
    far = np.hypot(pts[:, 0] - geom.disc[0], pts[:, 1] - geom.disc[1]) > rng.uniform(0.15, 0.3)
    pts = pts[far] if far.sum() > 5 else pts
    n = int(rng.integers(25, 80))
    pick = pts[rng.integers(0, len(pts), 3 * n)] + rng.normal(0, 0.07, (3 * n, 2))
    ok = c.visible(pick[:, 0], pick[:, 1])
    pick = pick[ok][:n]
    if len(pick) == 0:
        pick = np.array([[geom.fovea[0], geom.fovea[1] + 0.2]])
    _haemorrhages(c, rng, pick[:, 0], pick[:, 1], geom, 0.75, (0.01, 0.022), "O")
    k = int(rng.integers(1, 5))
    sel = pick[rng.integers(0, len(pick), k)]
    _cotton_wool(c, rng, sel[:, 0], sel[:, 1], "O")


def _epiretinal_membrane(c: _Canvas, rng: np.random.Generator, geom: _Geometry) -> None:
    """Cellophane-like glistening sheen over the macula with fine radiating striae."""
    layer = c.layer()
    k = int(rng.integers(3, 7))
    a, b = _scatter(c, rng, k, (geom.fovea[0], geom.fovea[1]), geom.dd * 0.4)
    _ellipses(
        c,
        layer,
        a,
        b,
        geom.dd * rng.uniform(0.4, 0.9, k),
        geom.dd * rng.uniform(0.3, 0.6, k),
        rng.uniform(0, np.pi, k),
    )
    c.paint(layer, (236, 226, 214), strength=rng.uniform(0.15, 0.28), blur=0.03 * c.r, label="O")
    striae = c.layer()
    ca, cb = a[0], b[0]
    for t in rng.uniform(0, 2 * np.pi, int(rng.integers(10, 22))):
        r0, r1 = geom.dd * rng.uniform(0.05, 0.3), geom.dd * rng.uniform(0.6, 1.3)
        s = np.linspace(r0, r1, 8)[:, None]
        th = t + np.cumsum(rng.normal(0, 0.08, 8))[:, None]
        pts = np.array([ca, cb]) + np.concatenate([np.cos(th), np.sin(th)], 1) * s
        _polyline(c, striae, pts, np.full(8, 0.003))
    c.paint(striae, (250, 245, 235), strength=rng.uniform(0.2, 0.35), blur=0.8 + 0.002 * c.r, label="O")


def _drusen(
    c: _Canvas,
    rng: np.random.Generator,
    geom: _Geometry,
    n: int,
    spread: float,
    max_radius: float,
    label: str,
) -> None:
    """Yellow sub-retinal deposits scattered around the macula."""
    a, b = _scatter(c, rng, n, (geom.fovea[0], geom.fovea[1]), spread)
    layer = c.layer()
    _circles(c, layer, a, b, rng.uniform(1 / 150, max_radius, len(a)), rng.integers(160, 256, len(a)))
    c.paint(layer, (238, 212, 128), strength=rng.uniform(0.55, 0.85), blur=0.004 * c.r + 0.4, label=label)


def _retinal_pigmentation(c: _Canvas, rng: np.random.Generator, geom: _Geometry) -> None:
    """Clumps of dark pigment with short spidery arms in the mid-periphery."""
    n = int(rng.integers(10, 35))
    t = rng.uniform(0, 2 * np.pi, n)
    rr = rng.uniform(0.45, 0.85, n)
    a, b = rr * np.cos(t), rr * np.sin(t)
    ok = c.visible(a, b)
    if not ok.any():
        a, b, ok = np.array([0.5]), np.array([0.0]), np.ones(1, bool)
    a, b = a[ok], b[ok]
    layer = c.layer()
    _circles(c, layer, a, b, rng.uniform(0.006, 0.012, len(a)))
    for ai, bi in zip(a, b, strict=True):
        for th in rng.uniform(0, 2 * np.pi, int(rng.integers(2, 4))):
            pts = np.array([[ai, bi], [ai + 0.03 * math.cos(th), bi + 0.03 * math.sin(th)]])
            _polyline(c, layer, pts, np.full(2, 0.004))
    c.paint(layer, (0.7, 0.75, 0.72), mode="darken", strength=rng.uniform(0.6, 0.85), blur=0.5, label="O")


def _lens_spokes(c: _Canvas, rng: np.random.Generator, img: np.ndarray, n: int) -> np.ndarray:
    """Cortical cataract: wedge-shaped grey shadows pointing from the rim towards the centre. They lie
    in the lens, so they are painted on the image (out of focus), not on the fundus."""
    layer = c.layer()
    for th in rng.uniform(0, 2 * np.pi, n):
        inner, half = rng.uniform(0.25, 0.6), rng.uniform(0.04, 0.12)
        tip = (inner * math.cos(th), inner * math.sin(th))
        base = [(1.05 * math.cos(th + s * half), 1.05 * math.sin(th + s * half)) for s in (-1, 1)]
        pts = np.array([tip, *base])
        x, y = c.px(pts[:, 0], pts[:, 1])
        cv2.fillPoly(
            layer, [np.stack([np.rint(x * 8), np.rint(y * 8)], 1).astype(np.int32)], 255, cv2.LINE_AA, 3
        )
    c.albedo = img
    c.paint(layer, (0.55, 0.5, 0.45), mode="darken", strength=rng.uniform(0.25, 0.45), blur=0.03 * c.r)
    return c.albedo


def _vitreous_floaters(c: _Canvas, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Vitreous degeneration: out-of-focus grey strands and rings floating in front of the retina."""
    layer = c.layer()
    for _ in range(int(rng.integers(2, 5))):
        start = _scatter(c, rng, 1, (0.0, 0.0), 0.4, 0.8)
        steps = 12
        theta = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, steps))
        pts = np.stack(
            [start[0][0] + np.cumsum(np.cos(theta)) * 0.025, start[1][0] + np.cumsum(np.sin(theta)) * 0.025],
            1,
        )
        _polyline(c, layer, pts, np.full(steps, rng.uniform(0.012, 0.025)))
    if rng.random() < 0.5:  # Weiss ring
        a, b = _scatter(c, rng, 1, (0.0, 0.0), 0.3, 0.7)
        x, y = c.px(a, b)
        cv2.circle(
            layer,
            (round(x[0] * 8), round(y[0] * 8)),
            round(0.08 * c.r * 8),
            255,
            max(1, round(0.02 * c.r)),
            cv2.LINE_AA,
            3,
        )
    c.albedo = img
    c.paint(
        layer, (0.5, 0.5, 0.5), mode="darken", strength=rng.uniform(0.35, 0.6), blur=0.012 * c.r, label="O"
    )
    return c.albedo


def _nerve_fibre_sheen(c: _Canvas, rng: np.random.Generator, vessels: list[_Vessel], geom: _Geometry) -> None:
    """Glistening nerve-fibre-layer reflexes beside the temporal arcades (young, healthy eyes show
    them most): bright specks and streaks that are no disease."""
    layer = c.layer()
    for v in vessels:
        if v.trunk > 1 or v.kind != "v" or len(v.pts) < 10:
            continue
        d = np.hypot(v.pts[:, 0] - geom.disc[0], v.pts[:, 1] - geom.disc[1])
        pts = v.pts[(d > 0.15) & (d < rng.uniform(0.5, 0.8))]
        if len(pts) < 3:
            continue
        off = rng.uniform(0.015, 0.03) * (1 if rng.random() < 0.5 else -1)
        _polyline(c, layer, pts + np.array([0.0, off]), np.full(len(pts), rng.uniform(0.01, 0.02)))
    c.paint(layer, (250, 235, 215), strength=rng.uniform(0.15, 0.35), blur=0.008 * c.r)


def _hypertensive_extras(c: _Canvas, rng: np.random.Generator, geom: _Geometry) -> None:
    """Most hypertensive eyes also show flame haemorrhages and cotton-wool spots near the disc
    (moderate hypertensive retinopathy): narrowed arteries alone are below a pixel at the 128-192 px
    a CPU demo trains at, so without these the label would be unlearnable there."""
    if rng.random() < 0.7:
        a, b = _scatter(c, rng, int(rng.integers(1, 5)), (geom.disc[0] - 0.15, geom.disc[1]), 0.25)
        _haemorrhages(c, rng, a, b, geom, 1.0, (0.01, 0.02), "H")
    if rng.random() < 0.7:
        a, b = _scatter(c, rng, int(rng.integers(1, 5)), (geom.disc[0] - 0.15, geom.disc[1]), 0.25)
        _cotton_wool(c, rng, a, b, "H")


# ----------------------------------------------------------------------------------------------
# Per-eye parameters: drawn from overlapping distributions, as in real eyes


@dataclass(frozen=True)
class EyeParameters:
    """The continuous parameters of one eye that separate labels in real eyes only on average.

    Real cup-to-disc ratios, artery-to-vein ratios, tessellation and media haze overlap between
    healthy and diseased eyes (physiological large cups, old and poorly dilated eyes, myopic but not
    pathological fundi), so none of them alone decides a label; the signs that do (rim notches and
    disc haemorrhages, nicking and haemorrhages, atrophy, lens spokes) are drawn on top.
    """

    cdr: float  #: cup-to-disc ratio
    avr: float  #: artery-to-vein width ratio
    artery_tortuosity: float  #: amplitude of the arteries' wiggle (radians)
    tessellation: float  #: strength of the choroidal pattern, 0 = none
    haze: float  #: media opacity 0..1: veil, blur and dimming (cataract or not), 0 = clear
    spokes: int  #: cortical lens spokes (cataract only)
    sheen: bool  #: bright nerve-fibre-layer reflexes along the arcades (any eye)


def _clipped_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def draw_eye_parameters(
    rng: np.random.Generator, diseases: Iterable[str], keywords: Iterable[str]
) -> EyeParameters:
    """Draw an eye's `EyeParameters` for its labels and keywords (the distributions overlap)."""
    diseases, kw = set(diseases), set(keywords)
    if "G" in diseases:
        cdr = (
            _clipped_normal(rng, 0.6, 0.08, 0.42, 0.85)
            if "suspected glaucoma" in kw
            else _clipped_normal(rng, 0.7, 0.09, 0.45, 0.92)
        )
    else:
        cdr = _clipped_normal(rng, 0.42, 0.1, 0.15, 0.75)  # large physiological cups exist
    if "H" in diseases:
        avr = _clipped_normal(rng, 0.57, 0.07, 0.4, 0.76)
        tort = rng.uniform(0.08, 0.35)
    else:
        avr = _clipped_normal(rng, 0.68, 0.06, 0.5, 0.85)
        tort = rng.uniform(0.0, 0.08) if rng.random() < 0.8 else rng.uniform(0.08, 0.25)
    if "M" in diseases:
        tess = rng.uniform(0.15, 0.5)
    elif "tessellated fundus" in kw:
        tess = rng.uniform(0.25, 0.5)
    else:  # mild tessellation is common in healthy (East Asian) eyes
        tess = rng.uniform(0.05, 0.4) if rng.random() < 0.4 else 0.0
    # media haze: every eye may be hazy (age, small pupil, defocus); "low image quality" eyes are,
    # and a cataract adds only a little on average, so blur and veil alone do not give C away
    u = rng.random()
    if "low image quality" in kw:
        haze = rng.uniform(0.25, 0.9)
    elif u < 0.6:
        haze = rng.uniform(0.0, 0.6)
    else:
        haze = 0.0
    spokes = 0
    if "C" in diseases:
        haze = max(haze, rng.uniform(0.0, 0.5))
        spokes = int(rng.integers(3, 9))
    return EyeParameters(
        round(cdr, 4),
        round(avr, 4),
        round(tort, 4),
        round(tess, 4),
        round(haze, 4),
        spokes,
        rng.random() < 0.4,
    )


# ----------------------------------------------------------------------------------------------
# Public drawing API


def _check_eye_request(labels: Iterable[str], side: str, size: tuple[int, int]) -> tuple[str, ...]:
    labels = set(labels)
    unknown = labels - set(ODIR_LABELS)
    if unknown:
        raise ConfigError(
            f"render_eye: unknown labels {sorted(unknown)}; expected some of {', '.join(ODIR_LABELS)}"
        )
    if "N" in labels and len(labels) > 1:
        raise ConfigError(
            f"render_eye: 'N' (normal) cannot be combined with disease labels {sorted(labels - {'N'})}"
        )
    if side not in ("left", "right"):
        raise ConfigError(f"render_eye: side must be 'left' or 'right', not {side!r}")
    if len(size) != 2 or min(size) < 32:
        raise ConfigError(
            f"render_eye: size must be (width, height) with both at least 32 pixels, not {size!r}"
        )
    diseases = tuple(lab for lab in ODIR_LABELS if lab in labels and lab != "N")
    return diseases or ("N",)


def choose_keywords(rng: np.random.Generator, labels: Iterable[str]) -> tuple[str, ...]:
    """ODIR keywords for one eye with these labels: one keyword per disease label (its variant drawn
    with `DISEASE_KEYWORDS` weights), or "normal fundus", then sometimes non-deciding keywords."""
    labels = set(labels) - {"N"}
    words: list[str] = []
    for lab in ODIR_LABELS:
        if lab in labels:
            options = DISEASE_KEYWORDS[lab]
            if lab == "O" and "M" in labels:  # a myopic eye's tessellation is drawn (and marked) as M
                options = tuple(o for o in options if o[0] != "tessellated fundus")
            p = np.array([w for _, w in options])
            words.append(options[int(rng.choice(len(options), p=p / p.sum()))][0])
    if not words:
        words.append(NORMAL_KEYWORD)
    for kw, p in NON_DECIDING_KEYWORDS.items():
        if rng.random() < p:
            words.append(kw)
    return tuple(words)


def render_eye(
    rng: np.random.Generator,
    labels: Iterable[str],
    side: str,
    size: tuple[int, int],
    *,
    keywords: Sequence[str] | None = None,
    fov: FieldOfView | None = None,
    border: int | None = None,
    notch: bool | None = None,
    color: tuple[float, float, float] | None = None,
) -> RenderedEye:
    """Draw one fundus photograph of an eye with these labels (subset of N D G C A H M O; empty or
    {"N"} = normal).

    Args:
        rng: the only source of randomness (same state -> same pixels).
        labels: the eye's labels; each disease draws its own signs and sets its mask bit.
        side: "left" or "right"; the optic disc is drawn on the viewer's left for a left eye and on
            the right for a right eye.
        size: (width, height) in pixels, like a camera resolution.
        keywords: ODIR keywords choosing variants (D grade, dry/wet AMD, kind of O, "lens dust",
            "low image quality"); drawn with `choose_keywords` when None. Their labels must match.
        fov: the field-of-view circle; by default a centred circle filling 90-98 % of the short side.
        border: grey level of the border outside the circle (default: black, sometimes dark grey).
        notch: draw a small camera notch in the circle's edge (default: 20 % of photographs).
        color: the fundus colour (RGB, see `fundus_color`); a patient's two eyes share it.
    """
    diseases = _check_eye_request(labels, side, size)
    if keywords is None:
        keywords = choose_keywords(rng, diseases)
    keywords = tuple(keywords)
    _check_keywords(keywords, diseases)
    width, height = int(size[0]), int(size[1])
    if fov is None:
        fov = FieldOfView(
            width / 2 + rng.uniform(-0.01, 0.01) * width,
            height / 2 + rng.uniform(-0.01, 0.01) * height,
            0.5 * min(width, height) * rng.uniform(0.9, 0.98),
        )
    if border is None:
        border = 0 if rng.random() < 0.7 else int(rng.integers(6, 29))
    if notch is None:
        notch = bool(rng.random() < 0.2)
    rgb, mask = _render(rng, set(diseases) - {"N"}, keywords, side, width, height, fov, border, notch, color)
    return RenderedEye(rgb, mask, fov, diseases, keywords)


def _check_keywords(keywords: tuple[str, ...], diseases: tuple[str, ...]) -> None:
    known = set(KEYWORD_LABEL) | set(NON_DECIDING_KEYWORDS) | {NORMAL_KEYWORD}
    unknown = [k for k in keywords if k not in known]
    if unknown:
        raise ConfigError(
            f"render_eye: keywords {unknown} are not in the generator's vocabulary {sorted(known)}"
        )
    from_words = {KEYWORD_LABEL[k] for k in keywords if k in KEYWORD_LABEL}
    want = set(diseases) - {"N"}
    if from_words != want or (not want and NORMAL_KEYWORD not in keywords):
        raise ConfigError(
            f"render_eye: keywords {list(keywords)} give labels {sorted(from_words) or ['N']}, "
            f"but labels {sorted(want) or ['N']} were asked for"
        )


def _render(
    rng: np.random.Generator,
    diseases: set[str],
    keywords: tuple[str, ...],
    side: str,
    width: int,
    height: int,
    fov: FieldOfView,
    border: int,
    notch: bool,
    color: tuple[float, float, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw anatomy, signs, optics and camera effects in that order; return (rgb, mask)."""
    kw = set(keywords)
    params = draw_eye_parameters(rng, diseases, keywords)
    rotation = math.radians(rng.uniform(-10, 10))
    c = _Canvas(width, height, fov, side, rotation)

    # anatomy: fovea slightly temporal of the FOV centre, disc 2.3-2.7 disc diameters nasal and a bit higher
    rd = rng.uniform(0.14, 0.17)
    dd = 2 * rd
    fovea = np.array([rng.uniform(-0.2, -0.06), rng.uniform(-0.06, 0.06)])
    disc = fovea + np.array([rng.uniform(2.3, 2.7) * dd, rng.uniform(0.05, 0.3) * dd])
    geom = _Geometry(disc, fovea, rd, dd)

    _background(c, rng, color)
    if params.tessellation > 0:
        owner = "M" if "M" in diseases else ("O" if "tessellated fundus" in kw else None)
        _tessellation(c, rng, geom, params.tessellation, owner)
    _macula(c, rng, geom)
    if "M" in diseases:
        _peripapillary_atrophy(c, rng, geom, "M")
        if rng.random() < 0.5:  # patchy chorioretinal atrophy at the posterior pole
            k = int(rng.integers(1, 4))
            a, b = _scatter(c, rng, k, (geom.fovea[0] + 0.15, geom.fovea[1]), 0.15)
            layer = c.layer()
            _ellipses(
                c,
                layer,
                a,
                b,
                rng.uniform(0.03, 0.07, k),
                rng.uniform(0.02, 0.05, k),
                rng.uniform(0, np.pi, k),
            )
            c.paint(layer, (235, 215, 175), strength=0.75, blur=0.004 * c.r, label="M")
    elif rng.random() < (0.4 if "G" in diseases else 0.3):  # common in older and glaucomatous eyes too
        _peripapillary_atrophy(c, rng, geom, None)
    tilt = rng.uniform(0.75, 0.9) if "M" in diseases else rng.uniform(0.92, 1.02)
    _optic_disc(c, rng, geom, params.cdr, tilt, "G" in diseases)
    if "G" in diseases and rng.random() < 0.3:  # disc (Drance) haemorrhage at the rim
        t = rng.choice([1.0, -1.0]) * rng.uniform(1.1, 1.5)
        p = geom.disc + geom.rd * np.array([math.cos(t), math.sin(t)])
        _haemorrhages(c, rng, np.array([p[0]]), np.array([p[1]]), geom, 1.0, (0.008, 0.012), "G")

    hyper = "H" in diseases
    avr, art_tort = params.avr, params.artery_tortuosity
    brvo_trunk = int(rng.integers(0, 2)) if "branch retinal vein occlusion" in kw else -1
    vein_scale = {brvo_trunk: rng.uniform(1.3, 1.6)} if brvo_trunk >= 0 else {}
    vessels = _vessel_tree(rng, disc, fovea, avr, art_tort, vein_scale)
    _draw_vessels(c, vessels, geom, hyper)
    if params.sheen:
        _nerve_fibre_sheen(c, rng, vessels, geom)

    # deep lesions, then superficial ones
    for word in keywords:
        if KEYWORD_LABEL.get(word) == "D":
            _diabetic(c, rng, geom, word)
        elif KEYWORD_LABEL.get(word) == "A":
            _amd(c, rng, geom, word)
    if hyper:
        _hypertensive_extras(c, rng, geom)
    if "drusen" in kw:  # fewer, smaller and more scattered than in AMD, with no pigment or atrophy
        _drusen(c, rng, geom, int(rng.integers(5, 31)), geom.dd * rng.uniform(0.6, 1.4), 0.014, "O")
    if "retinal pigmentation" in kw:
        _retinal_pigmentation(c, rng, geom)
    if "laser spot" in kw:
        _laser_spots(c, rng, geom)
    if brvo_trunk >= 0:
        _vein_occlusion(c, rng, geom, vessels, brvo_trunk)
    if "myelinated nerve fibers" in kw:
        _myelinated_fibres(c, rng, geom)
    if "epiretinal membrane" in kw:
        _epiretinal_membrane(c, rng, geom)

    # illumination: radial falloff around a slightly off-centre hot spot, uneven exposure, colour cast
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
    gain = rng.uniform(0.8, 1.2) * np.array(
        [rng.uniform(0.95, 1.05), rng.uniform(0.93, 1.07), rng.uniform(0.9, 1.1)], np.float32
    )
    img = c.albedo
    img *= illum[..., None]
    img *= gain
    noise_sigma = rng.uniform(0.8, 2.5)

    if params.haze > 0:  # media haze (lens, small pupil, defocus): scattered light blurs and veils
        s = params.haze
        img = _fast_blur(img, c.r * 0.03 * s)
        centre = img[int(c.cy) - 2 : int(c.cy) + 3, int(c.cx) - 2 : int(c.cx) + 3].reshape(-1, 3).mean(0)
        veil = centre * np.array([1.05, 1.1, 1.15], np.float32) + np.float32(rng.uniform(20, 45))
        haze = c.smooth_field(lambda ex, ey: 0.55 * s * (0.6 + 0.4 * np.exp(-(ex**2 + ey**2) / 0.5)))
        img += haze[..., None] * (veil - img)
        img *= 1.0 - 0.15 * s * rng.uniform(0.5, 1.0)
    if params.spokes:
        img = _lens_spokes(c, rng, img, params.spokes)
    if "low image quality" in kw:
        if rng.random() < 0.7:  # small pupil: a dark crescent from one side of the rim
            t = rng.uniform(0, 2 * np.pi)
            ca, cb = math.cos(t), math.sin(t)
            shade = c.smooth_field(lambda ex, ey: np.clip((ex * ca + ey * cb - 0.35) / 0.6, 0, 1) ** 1.5)
            img *= 1.0 - rng.uniform(0.35, 0.65) * shade[..., None]
        img *= rng.uniform(0.8, 1.0)
    if "vitreous degeneration" in kw:
        img = _vitreous_floaters(c, rng, img)
    if "lens dust" in kw:
        n_dust = int(rng.integers(2, 7))
        t, rr = rng.uniform(0, 2 * np.pi, n_dust), np.sqrt(rng.uniform(0, 0.8, n_dust))
        layer = c.layer()
        c.albedo = img  # dust shadows the final image, not the fundus: paint on the image
        _circles(c, layer, rr * np.cos(t), rr * np.sin(t), rng.uniform(0.015, 0.04, n_dust))
        c.paint(layer, (0.3, 0.3, 0.3), mode="darken", strength=rng.uniform(0.15, 0.3), blur=0.01 * c.r)
        img = c.albedo

    # compose into the frame: soft circle edge, border grey, notch, sensor noise, gamma
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
    if "C" in diseases:
        roi_mask = roi_mask | np.where(inside, LABEL_BIT["C"], 0).astype(np.uint8)
    mask[c.y0 : c.y0 + c.h, c.x0 : c.x0 + c.w] = np.where(inside, roi_mask, 0)
    return rgb, mask


# ----------------------------------------------------------------------------------------------
# Patients


#: first diagnosis of the patients, dealt in shuffled blocks of 20 consecutive IDs: the ODIR-5K
#: mix (about 30 % normal, 25 % diabetes, 20 % other, 5 % each for the five rare labels)
_BLOCK: tuple[str, ...] = ("N",) * 6 + ("D",) * 5 + ("O",) * 4 + ("G", "C", "A", "H", "M")
#: the `balanced` mix: the five rare labels at 10 % each, so that a few hundred patients hold enough
#: of every label to learn and to measure it (the demo's choice; ODIR's own mix stays the default)
_BLOCK_BALANCED: tuple[str, ...] = ("N",) * 4 + ("D",) * 3 + ("O",) * 3 + ("G", "C", "A", "H", "M") * 2
#: label mixes by name (`eyefuse synth --mix`)
MIXES: dict[str, tuple[str, ...]] = {"odir": _BLOCK, "balanced": _BLOCK_BALANCED}
_SECOND_DISEASE = {"O": 0.32, "D": 0.2, "H": 0.14, "C": 0.1, "G": 0.08, "A": 0.08, "M": 0.08}
P_SECOND_DISEASE = 0.25
P_ONE_EYE = 0.2  #: diseased patients drawn with one normal eye (more follow from one-eyed diseases)
_P_BOTH_EYES = {"D": 0.85, "G": 0.7, "C": 0.7, "A": 0.65, "H": 0.9, "M": 0.85, "O": 0.45}
_AGE_MEAN = {"N": 52, "D": 58, "G": 60, "C": 68, "A": 71, "H": 62, "M": 48, "O": 57}


@dataclass(frozen=True)
class EyePlan:
    """What to draw for one eye."""

    side: str
    labels: tuple[str, ...]  #: per-eye labels, ("N",) for a normal eye
    keywords: tuple[str, ...]
    jpeg_quality: int


@dataclass(frozen=True)
class PatientPlan:
    """Everything about a synthetic patient except the pixels (cheap: no drawing)."""

    patient_id: int
    age: int
    sex: str
    camera: Camera
    border: int
    color: tuple[float, float, float]  #: fundus colour shared by both eyes
    left: EyePlan
    right: EyePlan
    labels: tuple[int, ...]  #: patient labels in ODIR_LABELS order (ODIR rule)


def _weighted(rng: np.random.Generator, weights: dict[str, float], exclude: Iterable[str] = ()) -> str:
    keys = [k for k in weights if k not in set(exclude)]
    p = np.array([weights[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def plan_patient(seed: int, patient_id: int, mix: str = "odir") -> PatientPlan:
    """Diseases, eyes, keywords, age, sex and camera of one patient, from (seed, patient ID, mix)."""
    deal = MIXES[mix]
    block = np.random.default_rng([seed, 1, patient_id // len(deal)]).permutation(len(deal))
    category = deal[block[patient_id % len(deal)]]
    rng = np.random.default_rng([seed, 0, patient_id])
    eyes: dict[str, set[str]] = {"left": set(), "right": set()}
    diseases: list[str] = []
    if category != "N":
        diseases.append(category)
        if rng.random() < P_SECOND_DISEASE:
            diseases.append(_weighted(rng, _SECOND_DISEASE, exclude=diseases))
        if rng.random() < P_ONE_EYE:
            eyes["left" if rng.random() < 0.5 else "right"].update(diseases)
        else:
            for d in diseases:
                if rng.random() < _P_BOTH_EYES[d]:
                    eyes["left"].add(d)
                    eyes["right"].add(d)
                else:
                    eyes["left" if rng.random() < 0.5 else "right"].add(d)
    plans = {}
    for side in ("left", "right"):
        labels = tuple(lab for lab in ODIR_LABELS if lab in eyes[side]) or ("N",)
        plans[side] = EyePlan(side, labels, choose_keywords(rng, labels), int(rng.integers(85, 96)))
    age_mean = max(_AGE_MEAN[d] for d in diseases) if diseases else _AGE_MEAN["N"]
    age = int(np.clip(round(rng.normal(age_mean, 11)), 20, 90))
    sex = "Female" if rng.random() < (0.55 if "A" in diseases else 0.46) else "Male"
    cam_p = np.array([cam.weight for cam in CAMERAS])
    camera = CAMERAS[int(rng.choice(len(CAMERAS), p=cam_p / cam_p.sum()))]
    border = 0 if rng.random() < 0.7 else int(rng.integers(6, 29))
    red, green, blue = fundus_color(rng)
    color = (round(red, 2), round(green, 2), round(blue, 2))
    union = set(eyes["left"]) | set(eyes["right"])
    labels = tuple(int(lab in union) if lab != "N" else int(not union) for lab in ODIR_LABELS)
    return PatientPlan(patient_id, age, sex, camera, border, color, plans["left"], plans["right"], labels)


def _camera_fov(rng: np.random.Generator, camera: Camera, width: int, height: int) -> FieldOfView:
    r = 0.5 * camera.fov_diameter * height * rng.uniform(0.97, 1.02)
    return FieldOfView(
        round(width / 2 + rng.uniform(-0.015, 0.015) * width, 2),
        round(height / 2 + rng.uniform(-0.01, 0.01) * height, 2),
        round(r, 2),
    )


@dataclass(frozen=True)
class SynthImage:
    """One written photograph and its truth."""

    path: Path
    mask_path: Path
    patient_id: int
    split: str  #: "train" | "offsite"
    side: str
    camera: str
    width: int
    height: int
    fov: FieldOfView
    labels: tuple[str, ...]  #: per-eye labels, ("N",) for a normal eye
    keywords: tuple[str, ...]


def _split_dirs(out: Path, split: str) -> Path:
    return out / (TRAIN_IMAGES if split == "train" else TEST_IMAGES)


def _make_patient(job: tuple[str, int, str, int, int, str]) -> tuple[PatientPlan, list[SynthImage]]:
    """Plan, draw and write one patient's two photographs and masks (runs in worker processes)."""
    out_s, pid, split, seed, max_side, mix = job
    out = Path(out_s)
    plan = plan_patient(seed, pid, mix)
    width, height = plan.camera.size(max_side)
    images = []
    for k, eye in enumerate((plan.left, plan.right)):
        rng = np.random.default_rng([seed, 2, pid, k])
        fov = _camera_fov(rng, plan.camera, width, height)
        drawn = render_eye(
            rng,
            eye.labels,
            eye.side,
            (width, height),
            keywords=eye.keywords,
            fov=fov,
            border=plan.border,
            notch=plan.camera.notch,
            color=plan.color,
        )
        path = _split_dirs(out, split) / f"{pid}_{eye.side}.jpg"
        mask_path = out / MASKS / f"{pid}_{eye.side}.png"
        ok, jpg = cv2.imencode(".jpg", drawn.rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, eye.jpeg_quality])
        png_params = [cv2.IMWRITE_PNG_COMPRESSION, 6, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        ok2, png = cv2.imencode(".png", drawn.mask, png_params)
        if not (ok and ok2):
            raise OSError(f"OpenCV could not encode {path.name}")
        atomic_write_bytes(path, jpg.tobytes())
        atomic_write_bytes(mask_path, png.tobytes())
        images.append(
            SynthImage(
                path,
                mask_path,
                pid,
                split,
                eye.side,
                plan.camera.name,
                width,
                height,
                fov,
                eye.labels,
                eye.keywords,
            )
        )
    return plan, images


def _worker_init() -> None:
    cv2.setNumThreads(1)  # processes already use every core


# ----------------------------------------------------------------------------------------------
# Dataset writer


@dataclass
class SynthSummary:
    """What `synthesize` wrote; `str()` gives a readable report."""

    out: Path
    seed: int
    max_side: int
    workers: int
    patients: dict[str, int]  #: split -> patients
    label_counts: dict[str, dict[str, int]]  #: split -> label -> patients
    one_eye_only: dict[str, int]  #: split -> diseased patients with one normal eye
    images: list[SynthImage]
    files: dict[str, Path]
    removed_stale: int
    elapsed_s: float
    plans: list[PatientPlan] = field(repr=False, default_factory=list)

    def __str__(self) -> str:
        side = f"max side {self.max_side} px" if self.max_side else "full camera resolution"
        lines = [
            f"synthetic ODIR-format dataset in {self.out}",
            f"  seed {self.seed}, {side}, {self.workers} process(es), {self.elapsed_s:.1f} s",
            "  split     patients images " + " ".join(f"{lab:>5}" for lab in ODIR_LABELS) + "  one-eye",
        ]
        for split, n in self.patients.items():
            counts = self.label_counts[split]
            prev = " ".join(f"{100 * counts[lab] / max(n, 1):4.0f}%" for lab in ODIR_LABELS)
            diseased = n - counts["N"]
            one = f"{100 * self.one_eye_only[split] / max(diseased, 1):5.0f}%"
            lines.append(f"  {split:<9} {n:>8} {2 * n:>6} {prev}  {one}")
        lines.append("  (label columns: % of patients; one-eye: % of diseased patients with one normal eye)")
        for name, path in self.files.items():
            lines.append(f"  {name:<20} {path}")
        if self.removed_stale:
            lines.append(f"  removed {self.removed_stale} file(s) left from an earlier, larger synthetic run")
        return "\n".join(lines)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_out(out: Path) -> set[Path]:
    """Refuse to write into a folder holding anything but an earlier synthetic dataset; return the
    earlier run's image and mask files so that stale ones can be removed afterwards."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(
            f"--out {out}: folder is not empty and holds no {MARKER} marker; refusing to write a synthetic "
            "dataset over other files (choose an empty or new folder)"
        )
    old: set[Path] = {out / TEST_ANNOTATION} if (out / TEST_ANNOTATION).is_file() else set()
    for sub in (TRAIN_IMAGES, TEST_IMAGES, MASKS):
        folder = out / sub
        if folder.is_dir():
            old.update(p for p in folder.iterdir() if p.suffix in (".jpg", ".png") and p.is_file())
    return old


def _write_annotation(path: Path, plans: list[PatientPlan]) -> None:
    import pandas as pd  # heavy: only the parent process needs it

    rows = []
    for p in plans:
        rows.append(
            [
                p.patient_id,
                p.age,
                p.sex,
                f"{p.patient_id}_left.jpg",
                f"{p.patient_id}_right.jpg",
                KEYWORD_SEPARATOR.join(p.left.keywords),
                KEYWORD_SEPARATOR.join(p.right.keywords),
                *p.labels,
            ]
        )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_excel(tmp, index=False, sheet_name="Sheet1", engine="openpyxl")


def _write_fov_csv(path: Path, out: Path, images: list[SynthImage]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "path",
            "cx",
            "cy",
            "radius",
            "width",
            "height",
            "camera",
            "split",
            "patient_id",
            "side",
            "labels",
            "mask",
        ]
    )
    for im in images:
        writer.writerow(
            [
                im.path.relative_to(out).as_posix(),
                f"{im.fov.cx:.2f}",
                f"{im.fov.cy:.2f}",
                f"{im.fov.radius:.2f}",
                im.width,
                im.height,
                im.camera,
                im.split,
                im.patient_id,
                im.side,
                " ".join(im.labels),
                im.mask_path.relative_to(out).as_posix(),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def synthesize(
    out: str | os.PathLike[str],
    *,
    n_patients: int = 300,
    n_test: int | None = None,
    seed: int = 0,
    max_side: int | None = None,
    workers: int | None = None,
    mix: str = "odir",
    progress: bool = False,
) -> SynthSummary:
    """Write a synthetic ODIR-format dataset (challenge layout + off-site test split) to `out`.

    Args:
        out: folder to create; it must be empty, new, or hold an earlier synthetic dataset (whose
            leftover images are then removed and counted).
        n_patients: training patients (IDs 0 .. n_patients - 1).
        n_test: off-site test patients; None means max(20, n_patients // 5); 0 writes no test split.
        seed: non-negative; the same seed gives the same annotations and byte-identical images.
        max_side: longest image side in pixels; None means `DEFAULT_MAX_SIDE`, 0 the full camera
            resolution (2976 px, slow).
        workers: processes; None uses all cores for sets of 40 patients or more. The result does not
            depend on it.
        mix: the patients' first diagnoses: `odir` (ODIR-5K's proportions) or `balanced` (the five
            rare labels twice as often; see `MIXES`).
        progress: show a progress bar over the patients (on stderr).
    """
    start = time.perf_counter()
    if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < 1:
        raise ConfigError(f"--patients must be a positive whole number, not {n_patients!r}")
    if n_test is None:
        n_test = max(20, n_patients // 5)
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        raise ConfigError(f"--test-patients must be a whole number >= 0, not {n_test!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a whole number >= 0, not {seed!r}")
    if max_side is None:
        max_side = DEFAULT_MAX_SIDE
    if isinstance(max_side, bool) or not isinstance(max_side, int) or (max_side != 0 and max_side < MIN_SIDE):
        raise ConfigError(
            f"--max-side must be 0 (full resolution) or at least {MIN_SIDE} pixels, not {max_side!r}"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive whole number, not {workers!r}")
    if mix not in MIXES:
        raise ConfigError(f"--mix must be one of {', '.join(MIXES)}, not {mix!r}")
    out = Path(out)
    old_files = _check_out(out)
    out.mkdir(parents=True, exist_ok=True)

    test_start = TEST_ID_START * (n_patients // TEST_ID_START + 1)
    jobs = [(str(out), pid, "train", seed, max_side, mix) for pid in range(n_patients)]
    test_ids = range(test_start, test_start + n_test)
    jobs += [(str(out), pid, "offsite", seed, max_side, mix) for pid in test_ids]
    n_workers = workers if workers is not None else (_default_workers() if len(jobs) >= 40 else 1)
    n_workers = max(1, min(n_workers, len(jobs)))

    marker = {
        "synthetic": True,
        "complete": False,
        "generator": "eyefuse.data.synth",
        "eyefuse_version": __version__,
        "seed": seed,
        "max_side": max_side,
        "mix": mix,
        "patients": {"train": n_patients, "offsite": n_test},
        "id_ranges": {
            "train": [0, n_patients - 1],
            "offsite": [test_start, test_start + n_test - 1] if n_test else [],
        },
        "label_order": list(ODIR_LABELS),
        "mask_encoding": (
            "single-channel uint8 PNG, same size as the photograph; bit i (value 1 << i) is set where a sign "
            "of label label_order[i] was drawn; bit 0 (N) is never set; C marks the whole field of view"
        ),
        "keyword_separator": KEYWORD_SEPARATOR,
        "orientation": "optic disc on the viewer's right in right-eye photographs, on the left in left-eye",
        "cameras": [
            {
                "name": cam.name,
                "width": cam.width,
                "height": cam.height,
                "fov_diameter_over_height": cam.fov_diameter,
                "notch": cam.notch,
                "scaled_size": list(cam.size(max_side)),
            }
            for cam in CAMERAS
        ],
        "generator_settings": {
            "block": list(MIXES[mix]),
            "second_disease_probability": P_SECOND_DISEASE,
            "second_disease_weights": _SECOND_DISEASE,
            "one_eye_probability": P_ONE_EYE,
            "both_eyes_probability": _P_BOTH_EYES,
            "keywords": {lab: dict(opts) for lab, opts in DISEASE_KEYWORDS.items()},
            "non_deciding_keywords": NON_DECIDING_KEYWORDS,
            "jpeg_quality": [85, 95],
        },
    }
    atomic_write_json(out / MARKER, marker)

    bar = tqdm(total=len(jobs), desc="synth", unit="patient", disable=not progress)
    if n_workers > 1:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe after OpenCV/torch threads started
        with ctx.Pool(n_workers, initializer=_worker_init) as pool:
            chunk = max(1, len(jobs) // (n_workers * 6))
            results = []
            for result in pool.imap(_make_patient, jobs, chunksize=chunk):  # in order, like map
                results.append(result)
                bar.update()
    else:
        results = []
        for job in jobs:
            results.append(_make_patient(job))
            bar.update()
    bar.close()

    plans = [plan for plan, _ in results]
    images = [im for _, ims in results for im in ims]
    train_plans, test_plans = plans[:n_patients], plans[n_patients:]
    files = {"training annotation": out / TRAIN_ANNOTATION, "training images": out / TRAIN_IMAGES}
    _write_annotation(out / TRAIN_ANNOTATION, train_plans)
    if n_test:
        _write_annotation(out / TEST_ANNOTATION, test_plans)
        files.update({"off-site annotation": out / TEST_ANNOTATION, "off-site images": out / TEST_IMAGES})
    files.update({"lesion masks": out / MASKS, "fov circles": out / FOV_CSV, "marker": out / MARKER})
    _write_fov_csv(out / FOV_CSV, out, images)

    written = {im.path for im in images} | {im.mask_path for im in images} | set(files.values())
    stale = sorted(old_files - written)
    for path in stale:
        path.unlink(missing_ok=True)
    if not n_test:  # an empty off-site folder left by an earlier run would look like a broken split
        test_root = (out / TEST_IMAGES).parent
        for folder in (out / TEST_IMAGES, (out / TEST_ANNOTATION).parent, test_root):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    patients: dict[str, int] = {}
    label_counts: dict[str, dict[str, int]] = {}
    one_eye: dict[str, int] = {}
    for split, group in (("train", train_plans), ("offsite", test_plans)):
        if split == "offsite" and not group:
            continue
        patients[split] = len(group)
        label_counts[split] = {lab: sum(p.labels[i] for p in group) for i, lab in enumerate(ODIR_LABELS)}
        one_eye[split] = sum((p.left.labels == ("N",)) != (p.right.labels == ("N",)) for p in group)
    marker["complete"] = True
    marker["label_counts"] = label_counts
    marker["one_eye_only"] = one_eye
    atomic_write_json(out / MARKER, marker)
    return SynthSummary(
        out=out,
        seed=seed,
        max_side=max_side,
        workers=n_workers,
        patients=patients,
        label_counts=label_counts,
        one_eye_only=one_eye,
        images=images,
        files=files,
        removed_stale=len(stale),
        elapsed_s=time.perf_counter() - start,
        plans=plans,
    )
