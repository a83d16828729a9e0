"""Disease signs: each drawing function draws one sign and marks its label's bit in the mask."""

from __future__ import annotations

import math

import cv2
import numpy as np

from eyefuse.data.synth.anatomy import _Geometry, _Vessel
from eyefuse.data.synth.canvas import _Canvas, _circles, _ellipses, _polyline, _scatter


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
    ma = int(rng.integers(*((6, 16), (8, 26), (15, 41), (10, 31))[grade]))
    hem = int(rng.integers(*((1, 5), (3, 11), (12, 31), (6, 21))[grade]))
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
    # drusen as many and as large as under O (isolated drusen): a drusen field's area and brightness
    # do not tell A from O or from a bright normal macula; the pigment clumps, atrophy and membrane do
    n = int(rng.integers(4, 17)) if wet else int(rng.integers(8, 31))
    sig = geom.dd * rng.uniform(0.45, 0.9)
    _drusen(c, rng, geom, n, sig, 0.016, "A")
    # pigment clumps at the macula: with the atrophy or the membrane they tell AMD from drusen alone (O)
    a, b = _scatter(c, rng, int(rng.integers(5, 14)), (geom.fovea[0], geom.fovea[1]), sig * 0.8)
    layer = c.layer()
    _circles(c, layer, a, b, rng.uniform(0.007, 0.013, len(a)))
    c.paint(layer, (0.5, 0.62, 0.62), mode="darken", strength=0.8, blur=0.5, label="A")
    if wet:
        # macular haemorrhages: a few blots, no larger than a diabetic eye's (a big dark area would
        # be a global cue of its own)
        k = int(rng.integers(2, 6))
        a, b = _scatter(c, rng, k, (geom.fovea[0], geom.fovea[1]), geom.dd * 0.35)
        layer = c.layer()
        _ellipses(
            c,
            layer,
            a,
            b,
            geom.dd * rng.uniform(0.15, 0.35, k),
            geom.dd * rng.uniform(0.12, 0.28, k),
            rng.uniform(0, np.pi, k),
        )
        c.paint(
            layer,
            (0.42, 0.72, 0.68),
            mode="darken",
            strength=rng.uniform(0.55, 0.85),
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
    elif rng.random() < 0.4:  # geographic atrophy: a sharp-edged pale patch, not a wide bright field
        layer = c.layer()
        _ellipses(
            c,
            layer,
            np.array([geom.fovea[0]]),
            np.array([geom.fovea[1]]),
            geom.dd * rng.uniform(0.25, 0.5),
            geom.dd * rng.uniform(0.2, 0.4),
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
    """Cortical cataract: narrow wedge-shaped grey shadows pointing from the rim towards the centre,
    and a few dot opacities (vacuoles). They lie in the lens, so they are painted on the image, not
    on the fundus. They are narrow, sharp-edged and dark rather than wide and faint: a local
    structure that a network sees at 160 px, while they cover only a few per cent of the field (the
    global brightness and blur of a cataract eye match those of any eye)."""
    layer = c.layer()
    for th in rng.uniform(0, 2 * np.pi, n):
        inner, half = rng.uniform(0.3, 0.65), rng.uniform(0.015, 0.045)
        tip = (inner * math.cos(th), inner * math.sin(th))
        base = [(1.05 * math.cos(th + s * half), 1.05 * math.sin(th + s * half)) for s in (-1, 1)]
        pts = np.array([tip, *base])
        x, y = c.px(pts[:, 0], pts[:, 1])
        cv2.fillPoly(
            layer, [np.stack([np.rint(x * 8), np.rint(y * 8)], 1).astype(np.int32)], 255, cv2.LINE_AA, 3
        )
    k = int(rng.integers(2, 7))
    a, b = _scatter(c, rng, k, (0.0, 0.0), 0.3, 0.7)
    _circles(c, layer, a, b, rng.uniform(0.012, 0.025, k), rng.integers(150, 230, k))
    c.albedo = img
    # grey (all channels alike): a colour cast would be a global statistic of its own
    c.paint(layer, (0.5, 0.5, 0.5), mode="darken", strength=rng.uniform(0.5, 0.7), blur=0.01 * c.r)
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


def _hypertensive_extras(c: _Canvas, rng: np.random.Generator, geom: _Geometry) -> None:
    """Most hypertensive eyes also show flame haemorrhages and cotton-wool spots near the disc
    (moderate hypertensive retinopathy): narrowed arteries alone are below a pixel at the 128-192 px
    a CPU demo trains at, so without these the label would be unlearnable there."""
    if rng.random() < 0.85:
        a, b = _scatter(c, rng, int(rng.integers(2, 7)), (geom.disc[0] - 0.15, geom.disc[1]), 0.25)
        _haemorrhages(c, rng, a, b, geom, 1.0, (0.01, 0.02), "H")
    if rng.random() < 0.85:
        a, b = _scatter(c, rng, int(rng.integers(2, 6)), (geom.disc[0] - 0.15, geom.disc[1]), 0.25)
        _cotton_wool(c, rng, a, b, "H")
