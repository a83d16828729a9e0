"""Keyword splitting, the keyword-to-label map and the ODIR per-eye / patient label rules."""

from __future__ import annotations

import numpy as np
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.data.keywords import (
    KEYWORD_LABELS,
    NON_DECIDING,
    NON_FUNDUS,
    ZH_KEYWORDS,
    keyword_labels,
    lookup_keyword,
    normalize_keyword,
    patient_labels_from_eyes,
    split_keywords,
)

FW = "\uff0c"


def letters(labels: np.ndarray | None) -> str | None:
    return None if labels is None else "".join(lab for lab, v in zip(ODIR_LABELS, labels, strict=True) if v)


def test_split_on_full_width_and_ascii_commas_trimmed_lowercased():
    text = f"  Moderate  Non Proliferative Retinopathy{FW}Lens dust , HYPERTENSIVE retinopathy{FW}"
    assert split_keywords(text) == (
        "moderate non proliferative retinopathy",
        "lens dust",
        "hypertensive retinopathy",
    )
    assert split_keywords(None) == ()
    assert split_keywords(float("nan")) == ()
    assert split_keywords(f" {FW} ") == ()


def test_full_width_comma_separates_two_diseases():
    r = keyword_labels(f"glaucoma{FW}cataract")
    assert letters(r.labels) == "GC"
    assert r.deciding == ("glaucoma", "cataract")


@pytest.mark.parametrize("text", ["abnormal", "not normal fundus", "normal", "normal fundus abnormal"])
def test_normal_is_matched_as_an_exact_phrase_never_a_substring(text):
    r = keyword_labels(text)
    assert not r.normal
    assert r.labels[ODIR_LABELS.index("N")] == 0
    assert r.unknown == (text,)


def test_abnormal_pigment_is_other_not_normal():
    r = keyword_labels("abnormal pigment")
    assert letters(r.labels) == "O"
    assert not r.normal


def test_hypertensive_retinopathy_is_h_only():
    assert letters(keyword_labels("hypertensive retinopathy").labels) == "H"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("suspected glaucoma", "G"),
        ("suspected cataract", "C"),
        ("suspicious diabetic retinopathy", "D"),
        ("suspected moderate non proliferative retinopathy", "D"),
        ("suspected retinitis pigmentosa", "O"),
    ],
)
def test_suspected_counts_as_the_disease(text, expected):
    assert letters(keyword_labels(text).labels) == expected


def test_suspected_of_a_non_deciding_keyword_stays_unknown():
    assert lookup_keyword("suspected lens dust") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal fundus", "N"),
        ("mild nonproliferative retinopathy", "D"),
        ("moderate non proliferative retinopathy", "D"),
        ("severe nonproliferative retinopathy", "D"),
        ("proliferative diabetic retinopathy", "D"),
        ("glaucoma", "G"),
        ("cataract", "C"),
        ("dry age-related macular degeneration", "A"),
        ("wet age-related macular degeneration", "A"),
        ("pathological myopia", "M"),
        ("myopia retinopathy", "M"),
        ("tessellated fundus", "O"),
        ("drusen", "O"),
        ("epiretinal membrane", "O"),
        ("branch retinal vein occlusion", "O"),
        ("post retinal laser surgery", "O"),
    ],
)
def test_vocabulary(text, expected):
    assert letters(keyword_labels(text).labels) == expected


def test_non_deciding_keywords_are_ignored():
    r = keyword_labels(f"normal fundus{FW}lens dust{FW}low image quality")
    assert r.normal and letters(r.labels) == "N"
    assert r.non_deciding == ("lens dust", "low image quality")
    only = keyword_labels(f"image offset{FW}optic disk photographically invisible")
    assert not only.normal and letters(only.labels) == ""
    assert only.eye_labels() is None  # nothing decides this eye's labels


@pytest.mark.parametrize(
    "text", ["anterior segment image", "no fundus image", f"no fundus image{FW}cataract"]
)
def test_non_fundus_images_map_to_no_label(text):
    r = keyword_labels(text)
    assert not r.fundus
    assert letters(r.labels) == ""
    assert r.eye_labels() is None


def test_unknown_keyword_is_listed_and_eye_labels_unknown():
    r = keyword_labels(f"glaucoma{FW}purple spots")
    assert r.unknown == ("purple spots",)
    assert letters(r.labels) == "G"  # the known part is still reported
    assert not r.known
    assert r.eye_labels() is None


def test_normal_beside_a_disease_is_not_normal():
    r = keyword_labels(f"normal fundus{FW}glaucoma")
    assert not r.normal and letters(r.labels) == "G"


def test_sequence_input_equals_string_input():
    a = keyword_labels(["Glaucoma ", "lens dust"])
    b = keyword_labels(f"glaucoma{FW}lens dust")
    assert np.array_equal(a.labels, b.labels) and a.non_deciding == b.non_deciding


def test_patient_is_normal_only_if_both_eyes_normal():
    normal = keyword_labels("normal fundus")
    d = keyword_labels("mild nonproliferative retinopathy")
    g = keyword_labels("glaucoma")
    assert letters(patient_labels_from_eyes(normal, normal)) == "N"
    assert letters(patient_labels_from_eyes(normal, d)) == "D"  # the other eye decides
    assert letters(patient_labels_from_eyes(d, g)) == "DG"


def test_patient_rule_with_non_fundus_and_empty_eyes():
    normal = keyword_labels("normal fundus")
    anterior = keyword_labels("anterior segment image")
    empty = keyword_labels("")
    assert letters(patient_labels_from_eyes(anterior, normal)) == "N"
    assert letters(patient_labels_from_eyes(empty, keyword_labels("cataract"))) == "C"
    assert patient_labels_from_eyes(anterior, empty) is None


def test_map_keys_are_normalised_and_values_valid():
    allowed = {*ODIR_LABELS, NON_DECIDING, NON_FUNDUS}
    for key, value in KEYWORD_LABELS.items():
        assert normalize_keyword(key) == key
        assert value in allowed
    assert KEYWORD_LABELS["hypertensive retinopathy"] == "H"
    assert "normal" not in KEYWORD_LABELS and "abnormal" not in KEYWORD_LABELS


# --- Chinese keywords and the unknown-keyword rule ----------------------------------------------


def test_every_chinese_keyword_maps_like_its_english_equivalent():
    with_english = [(zh, value, en) for zh, (value, en) in ZH_KEYWORDS.items() if en is not None]
    assert len(with_english) > len(ZH_KEYWORDS) // 2  # most have an English equivalent
    for zh, value, en in with_english:
        assert normalize_keyword(en) in KEYWORD_LABELS, f"{en!r} (for {zh}) is not an English keyword"
        assert KEYWORD_LABELS[normalize_keyword(en)] == value, f"{zh} -> {value}, but {en!r} -> other"
    for zh, (value, _) in ZH_KEYWORDS.items():
        assert lookup_keyword(zh) == value
        assert value in (*ODIR_LABELS, NON_DECIDING, NON_FUNDUS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("糖尿病视网膜病变2期,激光斑", "DO"),  # ASCII comma, as the Chinese annotations write it
        (f"高血压视网膜病变{FW}白内障 ", "CH"),  # full-width comma, trailing space
        ("可疑青光眼, 镜头污点", "G"),  # suspected X is X; lens dust decides nothing
        ("疑似糖尿病视网膜病变2期", "D"),
        ("干性老年黄斑病变\u3001病理性近视", "AM"),  # Chinese enumeration comma
        ("AMD", "A"),
        ("正常眼底", "N"),
        ("正常眼底,镜头污点", "N"),
    ],
)
def test_chinese_keywords_give_labels(text, expected):
    r = keyword_labels(text)
    assert letters(r.labels) == expected and r.known


def test_chinese_non_fundus_and_non_deciding():
    assert not keyword_labels("外眼像").fundus
    r = keyword_labels("图片质量差")
    assert r.fundus and not r.deciding and r.non_deciding == ("图片质量差",)


@pytest.mark.parametrize("keyword", ["atrophy", "retinal pigment epithelium atrophy", "vitreous opacity"])
def test_the_three_once_unknown_english_keywords_are_other(keyword):
    assert letters(keyword_labels(keyword).labels) == "O"


@pytest.mark.parametrize("unknown_eye", ["purple spots", f"purple spots{FW}drusen", "未知病变,正常眼底"])
def test_an_unknown_keyword_never_makes_the_patient_normal(unknown_eye):
    left, right = keyword_labels(unknown_eye), keyword_labels("normal fundus")
    assert left.unknown and left.eye_labels() is None  # per-eye labels unknown
    assert patient_labels_from_eyes(left, right) is None  # nothing derived: annotation labels stay
    assert patient_labels_from_eyes(right, left) is None


def test_an_unknown_keyword_on_a_non_fundus_image_changes_nothing():
    left = keyword_labels(f"anterior segment image{FW}purple spots")
    assert letters(patient_labels_from_eyes(left, keyword_labels("normal fundus"))) == "N"
