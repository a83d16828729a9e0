"""Tests for the synthetic ODIR-format dataset generator (tiny sets: 12 + 4 patients at 256 px)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.data import synth
from eyefuse.data.keywords import NON_DECIDING, lookup_keyword
from eyefuse.data.synth import (
    CAMERAS,
    COLUMNS,
    KEYWORD_LABEL,
    KEYWORD_SEPARATOR,
    LABEL_BIT,
    NON_DECIDING_KEYWORDS,
    NORMAL_KEYWORD,
    FieldOfView,
    choose_keywords,
    draw_eye_parameters,
    plan_patient,
    render_eye,
    synthesize,
)
from eyefuse.data.synth.canvas import _Canvas, _eyelash_shadows
from eyefuse.errors import ConfigError, EyefuseError

N_TRAIN, N_TEST, SIDE = 12, 4, 256


def _run(out: Path, seed: int = 7, **kw) -> synth.SynthSummary:
    kw = {"n_patients": N_TRAIN, "n_test": N_TEST, "max_side": SIDE, "workers": 1, **kw}
    return synthesize(out, seed=seed, **kw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "a"
    return out, _run(out)


def _read_fov(out: Path) -> list[dict[str, str]]:
    with open(out / synth.FOV_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _annotations(out: Path) -> pd.DataFrame:
    train = pd.read_excel(out / synth.TRAIN_ANNOTATION, engine="openpyxl")
    test = pd.read_excel(out / synth.TEST_ANNOTATION, engine="openpyxl")
    return pd.concat([train.assign(split="train"), test.assign(split="offsite")], ignore_index=True)


def _eye_labels(keywords: str) -> tuple[str, ...]:
    words = keywords.split(KEYWORD_SEPARATOR)
    known = set(KEYWORD_LABEL) | set(NON_DECIDING_KEYWORDS) | {NORMAL_KEYWORD}
    assert set(words) <= known, words
    labels = {KEYWORD_LABEL[w] for w in words if w in KEYWORD_LABEL}
    if not labels:
        assert NORMAL_KEYWORD in words
        return ("N",)
    assert NORMAL_KEYWORD not in words
    return tuple(lab for lab in ODIR_LABELS if lab in labels)


def test_layout_columns_and_ids(dataset):
    out, summary = dataset
    train = pd.read_excel(out / synth.TRAIN_ANNOTATION, engine="openpyxl")
    test = pd.read_excel(out / synth.TEST_ANNOTATION, engine="openpyxl")
    assert list(train.columns) == list(COLUMNS) == list(test.columns)
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert train["ID"].tolist() == list(range(N_TRAIN))
    assert not set(train["ID"]) & set(test["ID"])
    for folder, frame in ((out / synth.TRAIN_IMAGES, train), (out / synth.TEST_IMAGES, test)):
        for _, row in frame.iterrows():
            assert row["Left-Fundus"] == f"{row['ID']}_left.jpg"
            assert row["Right-Fundus"] == f"{row['ID']}_right.jpg"
            for name in (row["Left-Fundus"], row["Right-Fundus"]):
                assert (folder / name).is_file()
                assert (out / synth.MASKS / name.replace(".jpg", ".png")).is_file()
        assert set(frame["Patient Sex"]) <= {"Female", "Male"}
        assert frame["Patient Age"].between(20, 90).all()
    marker = json.loads((out / synth.MARKER).read_text(encoding="utf-8"))
    assert marker["synthetic"] is True and marker["complete"] is True
    assert marker["label_order"] == list(ODIR_LABELS) and marker["seed"] == 7 and marker["mix"] == "odir"
    assert marker["patients"] == {"train": N_TRAIN, "offsite": N_TEST}
    rows = _read_fov(out)
    assert list(rows[0])[:4] == ["path", "cx", "cy", "radius"]
    assert len(rows) == 2 * (N_TRAIN + N_TEST) == len(summary.images)
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_same_seed_is_identical_and_another_seed_differs(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    _run(again)
    pd.testing.assert_frame_equal(_annotations(out), _annotations(again))
    assert (out / synth.FOV_CSV).read_bytes() == (again / synth.FOV_CSV).read_bytes()
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(files) == 4 * (N_TRAIN + N_TEST)
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel

    other = tmp_path / "other"
    _run(other, seed=8)
    assert not _annotations(out).equals(_annotations(other))
    assert (out / synth.TRAIN_IMAGES / "0_left.jpg").read_bytes() != (
        other / synth.TRAIN_IMAGES / "0_left.jpg"
    ).read_bytes()


def test_worker_processes_give_the_same_bytes(dataset, tmp_path):
    """Patients are independent: four patients drawn by two processes equal the first four of the
    single-process set."""
    out, _ = dataset
    pooled = tmp_path / "pooled"
    synthesize(pooled, n_patients=4, n_test=0, seed=7, max_side=SIDE, workers=2)
    for pid in range(4):
        for side in ("left", "right"):
            name = f"{pid}_{side}"
            assert (pooled / synth.TRAIN_IMAGES / f"{name}.jpg").read_bytes() == (
                out / synth.TRAIN_IMAGES / f"{name}.jpg"
            ).read_bytes()
            assert (pooled / synth.MASKS / f"{name}.png").read_bytes() == (
                out / synth.MASKS / f"{name}.png"
            ).read_bytes()


def test_images_are_fundus_photographs_of_the_recorded_camera(dataset):
    out, _ = dataset
    cameras = {cam.name: cam for cam in CAMERAS}
    for row in _read_fov(out):
        img = cv2.imread(str(out / row["path"]), cv2.IMREAD_COLOR)
        assert img is not None, row["path"]
        h, w = img.shape[:2]
        assert (w, h) == (int(row["width"]), int(row["height"])) == cameras[row["camera"]].size(SIDE)
        cx, cy, r = float(row["cx"]), float(row["cy"]), float(row["radius"])
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
        yy, xx = np.mgrid[:h, :w]
        d = np.hypot(xx - cx, yy - cy)
        border, interior = gray[d > r + 3], gray[d < 0.5 * r]
        assert border.size > 0 and border.mean() < 35, row["path"]
        # underexposed, hazy photographs are drawn too (exposure gain down to 0.75): still well above black
        assert interior.mean() > border.mean() + 25, row["path"]
        # orange-red fundus: red dominates blue inside the circle
        assert img[..., 2][d < 0.5 * r].mean() > 1.5 * img[..., 0][d < 0.5 * r].mean(), row["path"]


def test_masks_mark_exactly_the_eye_labels(dataset):
    out, _ = dataset
    seen = set()
    for row in _read_fov(out):
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.dtype == np.uint8 and mask.ndim == 2
        assert mask.shape == (int(row["height"]), int(row["width"]))
        labels = row["labels"].split()
        present = {lab for lab in ODIR_LABELS if np.any(mask & LABEL_BIT[lab])}
        assert present == (set() if labels == ["N"] else set(labels)), (row["path"], present, labels)
        assert not np.any(mask & 1), "bit 0 (N) must never be set"
        cx, cy, r = float(row["cx"]), float(row["cy"]), float(row["radius"])
        yy, xx = np.nonzero(mask)
        assert yy.size == 0 or np.hypot(xx - cx, yy - cy).max() <= r + 1
        seen.update(labels)
    assert "N" in seen and len(seen) > 2


def test_keywords_and_labels_follow_the_odir_rule(dataset):
    out, _ = dataset
    frame = _annotations(out)
    per_eye = {row["path"].split("/")[-1]: tuple(row["labels"].split()) for row in _read_fov(out)}
    for _, row in frame.iterrows():
        left = _eye_labels(row["Left-Diagnostic Keywords"])
        right = _eye_labels(row["Right-Diagnostic Keywords"])
        assert per_eye[row["Left-Fundus"]] == left and per_eye[row["Right-Fundus"]] == right
        union = (set(left) | set(right)) - {"N"}
        want = union or {"N"}
        got = {lab for lab in ODIR_LABELS if row[lab] == 1}
        assert got == want, (row["ID"], got, want)
        assert set(row[list(ODIR_LABELS)].unique()) <= {0, 1}


@pytest.mark.slow
def test_larger_set_has_one_eyed_patients_and_every_label(tmp_path):
    out = tmp_path / "s60"
    summary = synthesize(out, n_patients=60, n_test=0, seed=3, max_side=128, workers=1)
    frame = pd.read_excel(out / synth.TRAIN_ANNOTATION, engine="openpyxl")
    normal_left = (
        frame["Left-Diagnostic Keywords"].str.split(KEYWORD_SEPARATOR).map(lambda w: NORMAL_KEYWORD in w)
    )
    normal_right = (
        frame["Right-Diagnostic Keywords"].str.split(KEYWORD_SEPARATOR).map(lambda w: NORMAL_KEYWORD in w)
    )
    one_eyed = (frame["N"] == 0) & (normal_left ^ normal_right)
    assert one_eyed.sum() >= 1
    assert summary.one_eye_only["train"] == int(one_eyed.sum())
    # categories are dealt in blocks of 20 IDs: every label occurs in 60 patients
    assert all(frame[lab].sum() >= 3 for lab in ODIR_LABELS)
    assert not (out / synth.TEST_ANNOTATION).exists()
    text = str(summary)
    assert "train" in text and "60" in text and str(out) in text and "%" in text


def test_plan_prevalence_is_odir_like_and_every_label_is_common():
    plans = [plan_patient(0, pid) for pid in range(400)]
    prevalence = np.array([p.labels for p in plans]).mean(0)
    share = dict(zip(ODIR_LABELS, prevalence, strict=True))
    assert 0.25 <= share["N"] <= 0.35 and 0.22 <= share["D"] <= 0.35 and 0.18 <= share["O"] <= 0.32
    assert all(share[lab] >= 0.05 for lab in ODIR_LABELS)
    assert {p.sex for p in plans} == {"Female", "Male"}
    ages = {lab: np.mean([p.age for p in plans if p.labels[i]]) for i, lab in enumerate(ODIR_LABELS)}
    assert ages["A"] > ages["N"] + 8 and ages["C"] > ages["N"] + 8
    assert plan_patient(0, 5) == plan_patient(0, 5) and plan_patient(0, 5) != plan_patient(1, 5)


def test_balanced_mix_doubles_the_rare_labels():
    odir = np.array([plan_patient(0, pid).labels for pid in range(400)]).mean(0)
    balanced = np.array([plan_patient(0, pid, "balanced").labels for pid in range(400)]).mean(0)
    for i, lab in enumerate(ODIR_LABELS):
        if lab in "GCAHM":
            assert balanced[i] >= 1.6 * odir[i] and balanced[i] >= 0.1, (lab, odir[i], balanced[i])
        else:
            assert balanced[i] < odir[i], lab
    assert plan_patient(0, 7, "balanced") == plan_patient(0, 7, "balanced")


@pytest.mark.parametrize("seed", range(4))
def test_optic_disc_is_nasal_right_eye_right_left_eye_left(seed):
    for side in ("left", "right"):
        eye = render_eye(np.random.default_rng(seed), set(), side, (256, 256))
        gray = cv2.cvtColor(eye.rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        blob = cv2.GaussianBlur(gray, (0, 0), 6)
        _, _, _, (x, _) = cv2.minMaxLoc(blob)
        if side == "right":
            assert x > eye.fov.cx + 0.3 * eye.fov.radius
        else:
            assert x < eye.fov.cx - 0.3 * eye.fov.radius


@pytest.mark.parametrize(
    "keyword",
    sorted(KEYWORD_LABEL),
)
def test_each_disease_keyword_draws_and_marks_its_own_sign(keyword):
    label = KEYWORD_LABEL[keyword]
    rng = np.random.default_rng(11)
    eye = render_eye(rng, {label}, "left", (192, 192), keywords=(keyword,))
    assert eye.rgb.shape == (192, 192, 3) and eye.rgb.dtype == np.uint8
    assert eye.mask.shape == (192, 192) and eye.mask.dtype == np.uint8
    assert {lab for lab in ODIR_LABELS if np.any(eye.mask & LABEL_BIT[lab])} == {label}
    # the sign changes the photograph: compare with the same eye drawn normal from the same state
    normal = render_eye(np.random.default_rng(11), set(), "left", (192, 192), keywords=(NORMAL_KEYWORD,))
    assert np.abs(eye.rgb.astype(int) - normal.rgb.astype(int)).max() > 30


def test_normal_eye_with_non_deciding_keywords_has_an_empty_mask():
    eye = render_eye(
        np.random.default_rng(2),
        {"N"},
        "right",
        (160, 128),
        keywords=(NORMAL_KEYWORD, "lens dust", "low image quality"),
    )
    assert eye.labels == ("N",) and not eye.mask.any()
    a = render_eye(np.random.default_rng(5), {"D", "H"}, "left", (128, 128))
    b = render_eye(np.random.default_rng(5), {"D", "H"}, "left", (128, 128))
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.mask, b.mask) and a.keywords == b.keywords


def test_circle_cut_off_at_top_and_bottom():
    fov = FieldOfView(128.0, 85.0, 100.0)  # taller than the 171-pixel frame
    eye = render_eye(np.random.default_rng(0), set(), "right", (256, 171), fov=fov, border=0, notch=False)
    gray = cv2.cvtColor(eye.rgb, cv2.COLOR_RGB2GRAY)
    assert gray[0, 118:138].mean() > 40 and gray[-1, 118:138].mean() > 40  # fundus reaches the edges
    assert gray[85, :20].mean() < 10 and gray[85, -20:].mean() < 10  # black at the sides


@pytest.mark.parametrize(
    ("labels", "kw", "match"),
    [
        ({"X"}, {}, "unknown labels"),
        ({"N", "D"}, {}, "cannot be combined"),
        ({"D"}, {"keywords": ("glaucoma",)}, "were asked for"),
        ({"D"}, {"keywords": ("diabetes!",)}, "vocabulary"),
        (set(), {"side": "middle"}, "side"),
        (set(), {"size": (10, 10)}, "size"),
    ],
)
def test_render_eye_refuses_bad_requests(labels, kw, match):
    args = {"side": "left", "size": (64, 64), **kw}
    side, size = args.pop("side"), args.pop("size")
    with pytest.raises(ConfigError, match=match):
        render_eye(np.random.default_rng(0), labels, side, size, **args)


@pytest.mark.parametrize(
    "kw",
    [{"n_patients": 0}, {"n_test": -1}, {"seed": -1}, {"max_side": 10}, {"workers": 0}, {"mix": "uniform"}],
)
def test_synthesize_refuses_bad_options(tmp_path, kw):
    with pytest.raises(ConfigError):
        _run(tmp_path / "x", **kw)
    assert not (tmp_path / "x").exists()


def test_refuses_foreign_folder_and_cleans_its_own_leftovers(tmp_path):
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(EyefuseError, match="SYNTHETIC.json"):
        _run(foreign)
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "precious"

    out = tmp_path / "s"
    synthesize(out, n_patients=5, n_test=1, seed=1, max_side=128, workers=1)
    assert (out / synth.TEST_ANNOTATION).is_file()
    smaller = synthesize(out, n_patients=3, n_test=0, seed=1, max_side=128, workers=1)
    # patients 3, 4 and test patient 10000: two photographs and two masks each, plus the test annotation
    assert smaller.removed_stale == 3 * 4 + 1
    assert "removed 13" in str(smaller)
    assert not (out / synth.TRAIN_IMAGES / "4_left.jpg").exists()
    assert not (out / "Off-site Test Set").exists()
    assert sorted(p.name for p in (out / synth.TRAIN_IMAGES).iterdir()) == sorted(
        f"{i}_{s}.jpg" for i in range(3) for s in ("left", "right")
    )


def _params(labels: set[str], n: int = 1500, seed: int = 0) -> list[synth.EyeParameters]:
    rng = np.random.default_rng(seed)
    return [draw_eye_parameters(rng, labels, choose_keywords(rng, labels)) for _ in range(n)]


def _overlap(low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """Share of `high` below the 95th percentile of `low`, and of `low` above the 5th of `high`."""
    return float(np.mean(high < np.percentile(low, 95))), float(np.mean(low > np.percentile(high, 5)))


def test_drawn_parameters_overlap_between_healthy_and_diseased_eyes():
    normal = _params({"N"})
    cdr_n, cdr_g = np.array([p.cdr for p in normal]), np.array([p.cdr for p in _params({"G"}, seed=1)])
    avr_n, avr_h = np.array([p.avr for p in normal]), np.array([p.avr for p in _params({"H"}, seed=2)])
    haze_n, haze_c = np.array([p.haze for p in normal]), np.array([p.haze for p in _params({"C"}, seed=3)])
    tess_n, tess_m = (
        np.array([p.tessellation for p in normal]),
        np.array([p.tessellation for p in _params({"M"}, seed=4)]),
    )
    # overlap as in real eyes: large physiological cups, narrow arteries, hazy photographs of
    # eyes without cataract, tessellated fundi without pathological myopia
    for low, high in ((cdr_n, cdr_g), (-avr_n, -avr_h)):
        below, above = _overlap(low, high)
        assert below >= 0.05 and above >= 0.05, (below, above)
    assert np.mean(haze_n > np.median(haze_c)) >= 0.3  # many hazy eyes without a cataract
    # cup and artery ratios still differ on average (with the local signs on top)
    assert cdr_g.mean() > cdr_n.mean() + 0.2 and avr_h.mean() < avr_n.mean() - 0.07
    # media haze and tessellation decide nothing: cataract eyes are as hazy as others, tessellation
    # is as strong in healthy eyes as in pathological myopia; C is decided by its lens spokes only
    assert abs(haze_c.mean() - haze_n.mean()) < 0.05 and abs(np.mean(haze_c > 0) - np.mean(haze_n > 0)) < 0.06
    assert np.percentile(tess_n, 95) >= np.percentile(tess_m, 75) and np.mean(tess_n > 0) > 0.4
    assert all(p.spokes == 0 for p in normal) and all(p.spokes >= 5 for p in _params({"C"}, 50))


def test_low_image_quality_eyes_are_hazy_without_a_cataract_label():
    rng = np.random.default_rng(0)
    hazy = [draw_eye_parameters(rng, {"N"}, (NORMAL_KEYWORD, "low image quality")).haze for _ in range(200)]
    assert min(hazy) >= 0.25

    def detail(keywords: tuple[str, ...], seed: int) -> float:
        eye = render_eye(np.random.default_rng(seed), {"N"}, "left", (192, 192), keywords=keywords)
        assert not eye.mask.any()  # a non-deciding keyword marks nothing
        grey = cv2.GaussianBlur(cv2.cvtColor(eye.rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
        return float(
            cv2.Laplacian(grey, cv2.CV_32F)[56:136, 56:136].var()
        )  # fine detail, sensor noise damped

    seeds = range(4)
    blurred = np.mean([detail((NORMAL_KEYWORD, "low image quality"), s) for s in seeds])
    assert blurred < 0.8 * np.mean([detail((NORMAL_KEYWORD,), s) for s in seeds])


def test_drusen_are_o_and_o_is_wide_and_vocabulary_matches_the_keyword_map():
    assert ("drusen", "O") in {(kw, lab) for kw, lab in KEYWORD_LABEL.items()}
    assert len(synth.DISEASE_KEYWORDS["O"]) >= 8
    for keyword, label in KEYWORD_LABEL.items():  # the readers label synthetic keywords as intended
        assert lookup_keyword(keyword) == label, keyword
    for keyword in NON_DECIDING_KEYWORDS:
        assert lookup_keyword(keyword) == NON_DECIDING, keyword
    # isolated drusen mark O, never A; a myopic eye never gets the O "tessellated fundus" keyword
    eye = render_eye(np.random.default_rng(3), {"O"}, "right", (192, 192), keywords=("drusen",))
    assert np.any(eye.mask & LABEL_BIT["O"]) and not np.any(eye.mask & LABEL_BIT["A"])
    rng = np.random.default_rng(0)
    assert all("tessellated fundus" not in choose_keywords(rng, {"M", "O"}) for _ in range(300))


def test_progress_bar_counts_the_patients(tmp_path, capsys):
    synthesize(tmp_path / "p", n_patients=3, n_test=1, seed=1, max_side=128, workers=1, progress=True)
    err = capsys.readouterr().err
    assert "synth" in err and "4/4" in err  # one step per patient, training and test
    synthesize(tmp_path / "q", n_patients=3, n_test=1, seed=1, max_side=128, workers=1)
    assert "synth" not in capsys.readouterr().err  # off by default (library use)


def test_planned_patients_carry_the_confounders_of_other_labels():
    """Over many planned patients: drusen are drawn under O (never deciding A), and eyes without a
    cataract carry the "low image quality" keyword (hazy photographs) about as often as cataract eyes."""
    plans = [plan_patient(11, pid, "balanced") for pid in range(1500)]
    eyes = [eye for p in plans for eye in (p.left, p.right)]
    drusen = [eye for eye in eyes if "drusen" in eye.keywords]
    assert len(drusen) >= 10 and all("O" in eye.labels for eye in drusen)
    no_c = [eye for eye in eyes if "C" not in eye.labels]
    with_c = [eye for eye in eyes if "C" in eye.labels]
    low_q = np.mean(["low image quality" in eye.keywords for eye in no_c])
    assert 0.1 < low_q < 0.3
    assert abs(low_q - np.mean(["low image quality" in eye.keywords for eye in with_c])) < 0.08
    rng = np.random.default_rng(5)
    hazy = [draw_eye_parameters(rng, eye.labels, eye.keywords).haze for eye in no_c if "N" in eye.labels]
    assert np.mean(np.array(hazy) > 0.3) > 0.2  # normal eyes hazy enough to look like a cataract's veil


def test_eyelash_shadows_make_dark_rim_strands_common_without_a_cataract():
    """Lens spokes are not the only dark radial strands: eyelash shadows are drawn in most eyes
    without a cataract, in the same numbers, so only the strands' shape decides C."""
    normal, cataract = _params({"N"}), _params({"C"}, seed=3)
    strands_n = np.array([p.spokes + p.lashes for p in normal])
    strands_c = np.array([p.spokes + p.lashes for p in cataract])
    assert all(p.spokes == 0 for p in normal) and np.mean(strands_n > 0) >= 0.5
    below, above = _overlap(strands_n[strands_n > 0], strands_c)
    assert below >= 0.3 and above >= 0.3, (below, above)

    c = _Canvas(128, 128, FieldOfView(64.0, 64.0, 60.0), "left", 0.0)
    img = _eyelash_shadows(c, np.random.default_rng(0), np.full((c.h, c.w, 3), 200.0, np.float32), 10)
    inside = c.rho2 < 0.95**2
    top, bottom = inside & (c.ey < -0.5), inside & (c.ey > 0.5)
    assert img[..., 1][top].mean() < 190 and img[..., 1][bottom].min() == pytest.approx(200.0)
    assert img[..., 1][c.rho2 < 0.2**2].min() == pytest.approx(200.0)  # the centre stays clear
    assert not c.mask.any()  # a shadow marks no label
