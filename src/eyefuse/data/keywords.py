"""ODIR-5K diagnostic keywords: splitting, the keyword-to-label map and per-eye labels.

ODIR-5K gives labels per patient and diagnostic keywords per eye. Per-eye labels (for auxiliary
heads and for checking the annotation) follow from the keywords with the rules published with the
data:

- keywords are separated by a full-width comma (U+FF0C), sometimes an ASCII comma (always in the
  Chinese annotations); they are
  whitespace-trimmed, lower-cased and inner runs of whitespace are collapsed to one space;
- matching is by exact phrase, never by substring (so "abnormal pigment" is never "normal");
- "suspected X" / "suspicious X" (Chinese 可疑X / 疑似X) counts as X;
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

Chinese keywords (the OIA-ODIR Chinese annotations and the authors' test ground truth) map through
`ZH_KEYWORDS`, derived and checked the same way.

An unknown keyword never changes a label: the eye's per-eye labels are unknown (None, so masked out
of any per-eye loss), and `patient_labels_from_eyes` derives nothing for its patient, who keeps the
annotation's labels (a normal other eye must not make the patient N).
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

#: Separators between keywords: the full-width comma ODIR uses, the ASCII comma (the Chinese
#: annotations use it), and the Chinese enumeration comma.
_SEPARATORS = re.compile("[\uff0c,\u3001]")
_SPACES = re.compile(r"\s+")
#: "suspected" in English and the two Chinese forms (可疑, 疑似), written without a space.
_SUSPECT_PREFIXES = ("suspected ", "suspicious ", "可疑", "疑似")


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
    # The three keywords `eyefuse prepare` reported unknown on the challenge xlsx, decided by the
    # annotation (see ZH_KEYWORDS for the method): "atrophy" is the only keyword of 2 eyes whose
    # other eye is normal, both patients O; "retinal pigment epithelium atrophy" sits beside
    # "diabetic retinopathy" in the one eye of a patient whose other eye is normal, patient DO, so
    # it gives the O; "vitreous opacity" (1 eye, beside H and O keywords) cannot be told from its
    # English patient, but its Chinese form 玻璃体混浊 is the only source of its patient's O.
    "atrophy",
    "retinal pigment epithelium atrophy",
    "vitreous opacity",
]
_NON_DECIDING = [
    "lens dust",
    "optic disk photographically invisible",
    "optic disc photographically invisible",
    "low image quality",
    "image offset",
]
_NON_FUNDUS = ["anterior segment image", "no fundus image"]

#: The Chinese keywords of the OIA-ODIR annotations (the off-site and on-site ground truth as the
#: authors publish it): keyword -> (map value, English keyword of the same meaning or None).
#: Derived from the 1,500 test patients of `odir_all_5000_patients.csv` / `off_gt.xls` /
#: `on_gt.xlsx`: where one eye is normal (正常眼底) the other eye's keywords decide the patient's
#: labels, and a label that only one keyword of a patient can give belongs to that keyword
#: (`benchmarks/keyword_evidence.py` prints this evidence per keyword). The value is written out
#: rather than taken from the English keyword so that a test can check the two maps agree.
#: Unlisted "可疑X" / "疑似X" (suspected X) map like X.
ZH_KEYWORDS: dict[str, tuple[str, str | None]] = {
    "正常眼底": ("N", "normal fundus"),
    # Diabetic retinopathy by stage (1-3 nonproliferative, 4-5 proliferative) and abbreviated.
    "糖尿病视网膜病变": ("D", "diabetic retinopathy"),
    "糖尿病视网膜病变1期": ("D", "mild nonproliferative retinopathy"),
    "糖尿病视网膜病变2期": ("D", "moderate nonproliferative retinopathy"),
    "糖尿病视网膜病变3期": ("D", "severe nonproliferative retinopathy"),
    "糖尿病视网膜病变4期": ("D", "proliferative diabetic retinopathy"),
    "糖尿病视网膜病变5期": ("D", "severe proliferative diabetic retinopathy"),
    "糖网": ("D", "diabetic retinopathy"),
    "糖网1期": ("D", "mild nonproliferative retinopathy"),
    "青光眼": ("G", "glaucoma"),
    "白内障": ("C", "cataract"),
    "干性老年黄斑病变": ("A", "dry age-related macular degeneration"),
    "湿性老年黄斑病变": ("A", "wet age-related macular degeneration"),
    "老年黄斑变性": ("A", "age-related macular degeneration"),
    "amd": ("A", "age-related macular degeneration"),
    "高血压视网膜病变": ("H", "hypertensive retinopathy"),
    "高血压视网膜病变1期": ("H", "hypertensive retinopathy"),
    "高血压视网膜病变2期": ("H", "hypertensive retinopathy"),
    "高血压视网膜病变3期": ("H", "hypertensive retinopathy"),
    "病理性近视": ("M", "pathological myopia"),
    "近视性视网膜病变": ("M", "myopic retinopathy"),
    "高度近视眼底病变": ("M", None),
    "激光斑": ("O", "laser spot"),
    "玻璃膜疣": ("O", "drusen"),
    "豹纹状眼底": ("O", "tessellated fundus"),
    "视网膜脉络膜萎缩": ("O", "chorioretinal atrophy"),
    "视网膜脉络膜萎缩伴色素增殖": ("O", "chorioretinal atrophy with pigmentation proliferation"),
    "屈光介质浑浊": ("O", "refractive media opacity"),
    "有髓神经纤维": ("O", "myelinated nerve fibers"),
    "黄斑前膜": ("O", "macular epiretinal membrane"),
    "视网膜前膜": ("O", "epiretinal membrane"),
    "盘周萎缩灶": ("O", "peripapillary atrophy"),
    "玻璃体变性": ("O", "vitreous degeneration"),
    "玻璃体混浊": ("O", "vitreous opacity"),
    "黄斑病变": ("O", "maculopathy"),
    "视网膜色素变性": ("O", "retinitis pigmentosa"),
    "视网膜色素沉着": ("O", "retinal pigmentation"),
    "色素紊乱": ("O", "pigmentation disorder"),
    "黄斑区色素紊乱": ("O", "macular pigmentation disorder"),
    "色素异常": ("O", "abnormal pigment"),
    "血管白线化": ("O", "white vessel"),
    "血管白鞘": ("O", "retinal vascular sheathing"),
    "血管袢": ("O", "vascular loops"),
    "视网膜分支静脉阻塞": ("O", "branch retinal vein occlusion"),
    "陈旧性视网膜分支静脉阻塞": ("O", "old branch retinal vein occlusion"),
    "视网膜中央静脉阻塞": ("O", "central retinal vein occlusion"),
    "视网膜分支动脉阻塞": ("O", "branch retinal artery occlusion"),
    "视网膜中央动脉阻塞": ("O", "central retinal artery occlusion"),
    "视网膜激光术后": ("O", "post retinal laser surgery"),
    "激光光凝术后": ("O", "post laser photocoagulation"),
    "斑点状膜样改变": ("O", "spotted membranous change"),
    "先天性脉络膜缺损": ("O", "congenital choroidal coloboma"),
    "黄斑缺损": ("O", "macular coloboma"),
    "视神经萎缩": ("O", "optic nerve atrophy"),
    "黄斑裂孔": ("O", "macular hole"),
    "视网膜脱离": ("O", "retinal detachment"),
    "视盘水肿": ("O", "optic disc edema"),
    "视网膜褶皱": ("O", "retina fold"),
    "硅油眼": ("O", "silicone oil eye"),
    "萎缩样改变": ("O", "atrophic change"),
    "微血管异常": ("O", "microvascular anomalies"),
    "结晶样视网膜变性": ("O", None),
    "地图样萎缩": ("O", None),
    "多灶性脉络膜炎": ("O", None),
    "神经纤维层缺损": ("O", None),
    "牛眼样黄斑病变": ("O", None),
    "视盘异常": ("O", None),
    "先天视盘异常": ("O", None),
    "黄斑血管异常": ("O", None),
    "视网膜血管异常": ("O", None),
    "纤维增殖膜": ("O", None),
    "黄斑区可疑色素异常": ("O", None),
    "条索样改变": ("O", None),
    "脉络膜新生血管": ("O", None),
    "缺血视神经病变": ("O", None),
    "微动脉瘤": ("O", None),
    "coats病": ("O", None),
    "分支动静脉阻塞": ("O", None),
    "陈旧性视网膜分支静脉阻塞激光术后": ("O", None),
    # "mac" and "abnormal camera exposure" give O: each is the only source of its patient's O.
    "mac": ("O", None),
    "相机曝光异常": ("O", None),
    "镜头污点": (NON_DECIDING, "lens dust"),
    "图片质量差": (NON_DECIDING, "low image quality"),
    "图片偏位": (NON_DECIDING, "image offset"),
    "外眼像": (NON_FUNDUS, "anterior segment image"),
}


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
    pairs = [(value, phrase) for value, phrases in groups.items() for phrase in phrases]
    pairs += [(value, phrase) for phrase, (value, _) in ZH_KEYWORDS.items()]
    out: dict[str, str] = {}
    for value, phrase in pairs:
        key = normalize_keyword(phrase)
        if key in out and out[key] != value:
            raise AssertionError(f"keyword {key!r} mapped to both {out[key]} and {value}")
        out[key] = value
    return out


def normalize_keyword(keyword: str) -> str:
    """Lower-case, trim and collapse inner whitespace, so that matching can be exact."""
    return _SPACES.sub(" ", keyword.strip().lower())


def split_keywords(text: object) -> tuple[str, ...]:
    """Split one eye's keyword cell into normalized keywords (empty parts dropped).

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


#: Normalized keyword -> label letter, or NON_DECIDING / NON_FUNDUS.
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
    leaves the decision to the other). None when no eye is considered, and None when a fundus eye
    has an unknown keyword: its labels are not known, so dropping it could make the patient N
    because the other eye is normal.
    """
    if any(r.fundus and r.unknown for r in (left, right)):
        return None
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
    "ZH_KEYWORDS",
    "KeywordResult",
    "keyword_labels",
    "lookup_keyword",
    "normalize_keyword",
    "patient_labels_from_eyes",
    "split_keywords",
]
