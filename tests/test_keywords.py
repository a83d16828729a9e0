"""Keyword splitting, the keyword-to-label map and the ODIR per-eye / patient label rules."""

from __future__ import annotations

import numpy as np
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.data.keywords import (
    KEYWORD_LABELS,
    NON_DECIDING,
    NON_FUNDUS,
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
