"""What to draw, before any pixel: keywords, the per-eye parameters and the patients' plans.

Everything here is cheap (no drawing) and determined by the random generator passed in, or by
(seed, patient ID) for `plan_patient`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from eyefuse import ODIR_LABELS
from eyefuse.data.synth.anatomy import fundus_color
from eyefuse.data.synth.canvas import CAMERAS, Camera

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
    haze: float  #: media opacity 0..1: veil, blur and dimming (any eye, same distribution with C), 0 = clear
    spokes: int  #: cortical lens spokes (cataract only; the sign that decides C)
    lashes: int  #: eyelash shadows at the upper rim (any eye; the confounder of the spokes), 0 = none
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
    # tessellation is common in healthy (East Asian, myopic but not pathological) eyes: drawn as
    # strongly in them as in pathological myopia, whose deciding signs are atrophy and a tilted disc
    if "M" in diseases:
        tess = rng.uniform(0.1, 0.45)
    elif "tessellated fundus" in kw:
        tess = rng.uniform(0.25, 0.5)
    else:
        tess = rng.uniform(0.05, 0.45) if rng.random() < 0.75 else 0.0
    # media haze: every eye may be hazy (age, small pupil, defocus, tear film), and "low image
    # quality" eyes are. A cataract eye's haze is drawn from the same distribution as any other
    # eye's, so blur and veil say nothing about C; what decides C is the lens's local structure
    # (`spokes`: cortical spokes and vacuoles, drawn on the image)
    u = rng.random()
    if "low image quality" in kw:
        haze = rng.uniform(0.25, 0.9)
    elif u < 0.6:
        haze = rng.uniform(0.0, 0.6)
    else:
        haze = 0.0
    spokes = int(rng.integers(5, 13)) if "C" in diseases else 0
    # eyelash shadows: dark radial strands at the rim like the spokes, drawn in 60 % of eyes without a
    # cataract and 20 % of those with one, so that the amount of dark rim structure (spokes + lashes)
    # is nearly the same with and without C and only its shape (straight wedges all round, vacuoles)
    # decides C; the rates are this benchmark's choice, not an epidemiological claim
    lashes = int(rng.integers(5, 13)) if rng.random() < (0.2 if spokes else 0.6) else 0
    return EyeParameters(
        round(cdr, 4),
        round(avr, 4),
        round(tort, 4),
        round(tess, 4),
        round(haze, 4),
        spokes,
        lashes,
        rng.random() < 0.4,
    )


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
