"""Anatomy of the fundus: background and tessellation, macula, optic disc and cup, vessels, sheen."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from eyefuse.data.synth.canvas import (
    LABEL_BIT,
    _Canvas,
    _circles,
    _ellipses,
    _fast_blur,
    _noise_grid,
    _polyline,
    _smooth_noise,
)


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
    # macular pigment varies widely between healthy eyes (dark maculae are no sign of AMD)
    depth, pit = rng.uniform(0.15, 0.5), rng.uniform(0.05, 0.3)
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
    """Bright yellowish-pink disc with a paler cup (cup-to-disc ratio `cdr`) and a faint halo.

    A glaucomatous cup (`mark_cup`) is vertically oval (the rim thins at the poles first) with the
    area a round cup of the same ratio would have, so the cup's shape, not its brightness summed over
    the photograph, tells it from a large physiological cup."""
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
    oval = rng.uniform(1.25, 1.5) if mark_cup else rng.uniform(0.95, 1.08)
    cup = _ellipse_alpha(dx - tx, dy - ty, cdr * rx / math.sqrt(oval), cdr * ry * math.sqrt(oval), ang, 0.1)
    cup_col = np.array([255, rng.uniform(225, 245), rng.uniform(170, 205)], np.float32)
    region += (0.9 * cup)[..., None] * (cup_col - region)
    if mark_cup:
        c.mask[sl][cup > 0.5] |= LABEL_BIT["G"]


def _peripapillary_atrophy(c: _Canvas, rng: np.random.Generator, geom: _Geometry, label: str | None) -> None:
    """Pale crescent on the temporal side of the disc (myopia; older and glaucomatous eyes too). It is
    drawn alike whatever the label, so its size says nothing about M."""
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
