"""ODIR-5K diagnostic keywords: splitting, the keyword-to-label map and per-eye labels.

ODIR-5K gives labels per patient and diagnostic keywords per eye. Per-eye labels (for auxiliary
heads and for checking the annotation) follow from the keywords with the rules published with the
data:

- keywords are separated by a full-width comma (U+FF0C), sometimes an ASCII comma; they are
  whitespace-trimmed, lower-cased and inner runs of whitespace are collapsed to one space;
- matching is by exact phrase, never by substring (so "abnormal pigment" is never "normal");
- "suspected X" / "suspicious X" counts as X;
- "lens dust", "optic disk photographically invisible", "low image quality" and "image offset" do
  not decide labels;
- "anterior segment image" and "no fundus image" mark an image that is not a fundus photograph;
- an eye is normal (N) when its only deciding keyword is "normal fundus".

Decisions where the published rules are silent (checked against the annotation by
`eyefuse.data.odir.keyword_report`):

- "hypertensive retinopathy" is H only (public parsers that also give D are wrong);
- M is "pathological myopia" and the myopic fundus findings the dataset writes for it
  ("myopia retinopathy", "myopic retinopathy", "myopic maculopathy"); "tessellated fundus" alone is O,
  and "high myopia" is deliberately not mapped (a refractive state, not a fundus disease): it is
  reported as unknown if it occurs;
- "drusen" alone is O (the dataset gives A only for age-related macular degeneration);
- every other disease finding in the vocabulary is O; a keyword that is not in the map is reported
  as unknown, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from eyefuse import ODIR_LABELS

#: Special map values for keywords that give no label.
NON_DECIDING = "non_deciding"
NON_FUNDUS = "non_fundus"

#: Separators between keywords: the full-width comma ODIR uses, and the ASCII comma.
_SEPARATORS = re.compile("[\uff0c,]")
_SPACES = re.compile(r"\s+")
_SUSPECT_PREFIXES = ("suspected ", "suspicious ")


def _nonproliferative_variants(phrases: Iterable[str]) -> list[str]:
    # The dataset spells "nonproliferative" three ways ("nonproliferative", "non proliferative",
    # "non-proliferative"); list all so that matching can stay exact.
    out: list[str] = []
    for p in phrases:
        for spelling in ("nonproliferative", "non proliferative", "non-proliferative"):
            out.append(p.replace("nonproliferative", spelling))
    return out


def _amd_variants(phrases: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in phrases:
        out += [p, p.replace("age-related", "age related")]
    return out


_D = [
    *_nonproliferative_variants(
        [
            "mild nonproliferative retinopathy",
            "moderate nonproliferative retinopathy",
            "severe nonproliferative retinopathy",
            "nonproliferative diabetic retinopathy",
        ]
    ),
    "proliferative diabetic retinopathy",
    "severe proliferative diabetic retinopathy",
    "diabetic retinopathy",
]
_G = ["glaucoma"]
_C = ["cataract"]
_A = _amd_variants(
    [
        "dry age-related macular degeneration",
        "wet age-related macular degeneration",
        "age-related macular degeneration",
    ]
)
_H = ["hypertensive retinopathy"]
_M = ["pathological myopia", "myopia retinopathy", "myopic retinopathy", "myopic maculopathy"]
_O = [
    "laser spot",
    "drusen",
    "epiretinal membrane",
    "macular epiretinal membrane",
    "epiretinal membrane over the macula",
    "epimacular membrane",
    "macular epimacular membrane",
    "optic disk epiretinal membrane",
    "myelinated nerve fibers",
    "retinal pigmentation",
    "vitreous degeneration",
    "branch retinal vein occlusion",
    "central retinal vein occlusion",
    "old branch retinal vein occlusion",
    "old central retinal vein occlusion",
    "retinal vein occlusion",
    "branch retinal artery occlusion",
    "central retinal artery occlusion",
    "retinal artery occlusion",
    "tessellated fundus",
    "refractive media opacity",
    "chorioretinal atrophy",
    "diffuse chorioretinal atrophy",
    "chorioretinal atrophy with pigmentation proliferation",
    "diffuse retinal atrophy",
    "white vessel",
    "retinitis pigmentosa",
    "spotted membranous change",
    "post retinal laser surgery",
    "post laser photocoagulation",
    "fundus laser photocoagulation spots",
    "atrophic change",
    "optic disc edema",
    "optic nerve atrophy",
    "optic discitis",
    "maculopathy",
    "rhegmatogenous retinal detachment",
    "retinal detachment",
    "macular hole",
    "arteriosclerosis",
    "retinochoroidal coloboma",
    "congenital choroidal coloboma",
    "macular coloboma",
    "abnormal pigment",
    "pigmentation disorder",
    "macular pigmentation disorder",
    "depigmentation of the retinal pigment epithelium",
    "pigment epithelium proliferation",
    "retinal pigment epithelial hypertrophy",
    "retina fold",
    "morning glory syndrome",
    "glial remnants anterior to the optic disc",
    "wedge-shaped change",
    "wedge white line change",
    "peripapillary atrophy",
    "retinal vascular sheathing",
    "vascular loops",
    "vessel tortuosity",
    "intraretinal hemorrhage",
    "intraretinal microvascular abnormality",
    "microvascular anomalies",
    "oval yellow-white atrophy",
    "old chorioretinopathy",
    "old choroiditis",
    "central serous chorioretinopathy",
    "idiopathic choroidal neovascularization",
    "punctate inner choroidopathy",
    "retinal artery macroaneurysm",
    "abnormal color of optic disc",
    "silicone oil eye",
    "asteroid hyalosis",
    "choroidal nevus",
]
_NON_DECIDING = [
    "lens dust",
    "optic disk photographically invisible",
    "optic disc photographically invisible",
    "low image quality",
    "image offset",
]
_NON_FUNDUS = ["anterior segment image", "no fundus image"]


def _build_map() -> dict[str, str]:
    groups = {
        "N": ["normal fundus"],
        "D": _D,
        "G": _G,
        "C": _C,
        "A": _A,
        "H": _H,
        "M": _M,
        "O": _O,
        NON_DECIDING: _NON_DECIDING,
        NON_FUNDUS: _NON_FUNDUS,
    }
    out: dict[str, str] = {}
    for value, phrases in groups.items():
        for phrase in phrases:
            key = normalize_keyword(phrase)
            if key in out and out[key] != value:
                raise AssertionError(f"keyword {key!r} mapped to both {out[key]} and {value}")
            out[key] = value
    return out


def normalize_keyword(keyword: str) -> str:
    """Lower-case, trim and collapse inner whitespace, so that matching can be exact."""
    return _SPACES.sub(" ", keyword.strip().lower())


def split_keywords(text: object) -> tuple[str, ...]:
    """Split one eye's keyword cell into normalised keywords (empty parts dropped).

    `None`, NaN and empty strings give an empty tuple.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ()
    parts = (normalize_keyword(p) for p in _SEPARATORS.split(str(text)))
    return tuple(p for p in parts if p)


@dataclass(frozen=True, eq=False)
class KeywordResult:
    """What one eye's keywords say.

    `labels` is a uint8 vector over `ODIR_LABELS`: the disease labels of the known keywords, plus N
    when the eye is normal. `unknown` lists keywords that are not in the map (they add no label);
    `non_deciding` those that do not decide labels. `fundus` is False for anterior-segment and
    no-fundus images.
    """

    labels: np.ndarray
    normal: bool
    fundus: bool
    unknown: tuple[str, ...] = ()
    non_deciding: tuple[str, ...] = ()
    deciding: tuple[str, ...] = field(default=())  #: known keywords that decide labels

    @property
    def known(self) -> bool:
        """True when every keyword is in the map, so `labels` is complete."""
        return not self.unknown

    def eye_labels(self) -> np.ndarray | None:
        """The eye's labels, or None when the keywords cannot give them.

        None for a non-fundus image, for an eye with an unknown keyword (its label would be a
        guess) and for an eye without any deciding keyword.
        """
        if not self.fundus or self.unknown or not self.deciding:
            return None
        return self.labels.copy()


#: Normalised keyword -> label letter, or NON_DECIDING / NON_FUNDUS.
KEYWORD_LABELS: dict[str, str] = _build_map()


def lookup_keyword(keyword: str, vocabulary: Mapping[str, str] | None = None) -> str | None:
    """Map one keyword to a label letter, NON_DECIDING or NON_FUNDUS; None when unknown.

    "suspected X" and "suspicious X" map like X when X is known.
    """
    vocab = KEYWORD_LABELS if vocabulary is None else vocabulary
    key = normalize_keyword(keyword)
    if key in vocab:
        return vocab[key]
    for prefix in _SUSPECT_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            value = vocab.get(rest)
            # A suspected non-deciding/non-fundus finding is not a diagnosis; leave it unknown.
            if value is not None and value not in (NON_DECIDING, NON_FUNDUS):
                return value
    return None


def keyword_labels(
    keywords: str | Iterable[str] | None, vocabulary: Mapping[str, str] | None = None
) -> KeywordResult:
    """Labels of one eye from its keywords (a raw cell string or a sequence of keywords).

    The eye is normal when it is a fundus image and every deciding keyword is "normal fundus";
    a disease keyword beside "normal fundus" wins (N is then not set).
    """
    if keywords is None or isinstance(keywords, str):
        kws = split_keywords(keywords)
    else:
        kws = tuple(k for k in (normalize_keyword(k) for k in keywords) if k)
    labels = np.zeros(len(ODIR_LABELS), dtype=np.uint8)
    unknown: list[str] = []
    non_deciding: list[str] = []
    deciding: list[str] = []
    fundus = True
    has_normal = False
    has_disease = False
    for kw in kws:
        value = lookup_keyword(kw, vocabulary)
        if value is None:
            unknown.append(kw)
        elif value == NON_DECIDING:
            non_deciding.append(kw)
        elif value == NON_FUNDUS:
            fundus = False
            non_deciding.append(kw)
        elif value == "N":
            has_normal = True
            deciding.append(kw)
        else:
            has_disease = True
            deciding.append(kw)
            labels[ODIR_LABELS.index(value)] = 1
    normal = fundus and has_normal and not has_disease
    if not fundus:
        labels[:] = 0
        deciding = []
    elif normal:
        labels[ODIR_LABELS.index("N")] = 1
    return KeywordResult(
        labels=labels,
        normal=normal,
        fundus=fundus,
        unknown=tuple(unknown),
        non_deciding=tuple(non_deciding),
        deciding=tuple(deciding),
    )


def patient_labels_from_eyes(left: KeywordResult, right: KeywordResult) -> np.ndarray | None:
    """Patient labels by the ODIR rule from the two eyes' keyword results.

    The eyes considered are the fundus eyes with a deciding keyword: the patient is N only if all
    of them are normal; otherwise the labels are the union of their disease labels (so a normal eye
    leaves the decision to the other). None when no eye is considered.
    """
    eyes = [r for r in (left, right) if r.fundus and r.deciding]
    if not eyes:
        return None
    out = np.zeros(len(ODIR_LABELS), dtype=np.uint8)
    for r in eyes:
        out |= r.labels
    n = ODIR_LABELS.index("N")
    out[n] = 1 if all(r.normal for r in eyes) else 0
    return out


__all__ = [
    "KEYWORD_LABELS",
    "NON_DECIDING",
    "NON_FUNDUS",
    "KeywordResult",
    "keyword_labels",
    "lookup_keyword",
    "normalize_keyword",
    "patient_labels_from_eyes",
    "split_keywords",
]
