"""One eye's photograph: anatomy, then the signs of its labels, then optics and camera, in that order."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from eyefuse import ODIR_LABELS
from eyefuse.data.synth.anatomy import (
    _background,
    _draw_vessels,
    _Geometry,
    _macula,
    _nerve_fibre_sheen,
    _optic_disc,
    _peripapillary_atrophy,
    _tessellation,
    _vessel_tree,
)
from eyefuse.data.synth.canvas import (
    LABEL_BIT,
    FieldOfView,
    _Canvas,
    _compose,
    _ellipses,
    _eyelash_shadows,
    _illuminate,
    _lens_dust,
    _media_haze,
    _poor_capture,
    _scatter,
)
from eyefuse.data.synth.lesions import (
    _amd,
    _diabetic,
    _drusen,
    _epiretinal_membrane,
    _haemorrhages,
    _hypertensive_extras,
    _laser_spots,
    _lens_spokes,
    _myelinated_fibres,
    _retinal_pigmentation,
    _vein_occlusion,
    _vitreous_floaters,
)
from eyefuse.data.synth.plan import (
    KEYWORD_LABEL,
    NON_DECIDING_KEYWORDS,
    NORMAL_KEYWORD,
    choose_keywords,
    draw_eye_parameters,
)
from eyefuse.errors import ConfigError


@dataclass
class RenderedEye:
    """One drawn photograph: `rgb` (H x W x 3 uint8), lesion `mask` (H x W uint8, bits as in the
    module docstring), the drawn `fov` circle, and the eye's `labels` and ODIR `keywords`."""

    rgb: np.ndarray
    mask: np.ndarray
    fov: FieldOfView
    labels: tuple[str, ...]
    keywords: tuple[str, ...]


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
    rd = rng.uniform(0.13, 0.18)  # disc sizes vary: a cup's area alone does not give G away
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
    elif rng.random() < 0.5:  # common in older, glaucomatous and non-pathological myopic eyes too
        _peripapillary_atrophy(c, rng, geom, None)
    tilt = rng.uniform(0.75, 0.9) if "M" in diseases else rng.uniform(0.92, 1.02)
    _optic_disc(c, rng, geom, params.cdr, tilt, "G" in diseases)
    if "G" in diseases and rng.random() < 0.5:  # disc (Drance) haemorrhage at the rim
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

    img, noise_sigma = _illuminate(c, rng)
    if params.haze > 0:
        img = _media_haze(c, rng, img, params.haze)
    if params.spokes:
        img = _lens_spokes(c, rng, img, params.spokes)
    if params.lashes:
        img = _eyelash_shadows(c, rng, img, params.lashes)
    if "low image quality" in kw:
        img = _poor_capture(c, rng, img)
    if "vitreous degeneration" in kw:
        img = _vitreous_floaters(c, rng, img)
    if "lens dust" in kw:
        img = _lens_dust(c, rng, img)
    fov_bits = LABEL_BIT["C"] if "C" in diseases else 0
    return _compose(c, rng, img, (width, height), border, notch, noise_sigma, fov_bits)
