"""The pointing game end to end: a model trained (here, in a minute) on photographs whose only sign
of a label is a few lesions at random places must have its Grad-CAM peak on those lesions for most
positive eyes. This checks the whole explanation path on a model that has learned lesions:
training, checkpoint, `Predictor` preprocessing (field-of-view crop), the two-branch Grad-CAM with
the eyes kept apart, upsampling, and the mapping of source-pixel lesion masks into the model input.
A mirrored, transposed, shifted or swapped map would miss. (The same game on `eyefuse synth` data
with the demo model is printed by `benchmarks/bench_pointing.py`.)"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from eyefuse.config import load_config
from eyefuse.serve.explain import explain_pair, mask_to_preprocessed, pointing_game
from eyefuse.serve.predict import Predictor

SIDE = 128  # photograph side (px)
RADIUS = 60  # field of view
LESION = 10  # lesion radius in photograph pixels
INPUT = 96  # model input size


def _photograph(rng: np.random.Generator, n_lesions: int, dark: bool) -> tuple[np.ndarray, np.ndarray]:
    """A fundus-like BGR photograph (textured orange disc on black, a few vessels) and its lesion
    mask: `n_lesions` pale yellow discs at random places inside the field of view."""
    c = SIDE // 2
    tex = cv2.GaussianBlur(rng.normal(0, 1, (SIDE, SIDE)).astype(np.float32), (0, 0), 2) * 18
    base = np.array([40, 100, 200] if not dark else [25, 60, 120], np.float32)
    img = base + tex[..., None]
    for _ in range(4):
        a = rng.uniform(0, 2 * np.pi)
        p1 = (int(c + 55 * np.cos(a)), int(c + 55 * np.sin(a)))
        cv2.line(img, (c, c), p1, (20, 40, 110), 2)
    mask = np.zeros((SIDE, SIDE), np.uint8)
    for _ in range(n_lesions):
        r, t = rng.uniform(0, RADIUS - LESION - 4), rng.uniform(0, 2 * np.pi)
        x, y = round(c + r * np.cos(t)), round(c + r * np.sin(t))
        cv2.circle(img, (x, y), LESION, (150, 225, 245), -1, cv2.LINE_AA)
        cv2.circle(mask, (x, y), LESION, 1, -1)
    fov = np.zeros((SIDE, SIDE), np.uint8)
    cv2.circle(fov, (c, c), RADIUS, 1, -1)
    img = np.clip(img, 0, 255).astype(np.uint8) * fov[..., None]
    return img, mask * fov


def _write_patients(folder: Path, n: int, seed: int) -> tuple[Path, dict[Path, np.ndarray]]:
    """`n` patients in the generic paired-CSV format with labels `spots` (lesions in either eye)
    and `dark` (a darker photograph); returns the CSV and the lesion mask of every image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    masks: dict[Path, np.ndarray] = {}
    rows = []
    for pid in range(n):
        spots = dark = 0
        paths = []
        for side in ("left", "right"):
            lesions = int(rng.integers(1, 4)) if rng.random() < 0.45 else 0
            is_dark = bool(rng.random() < 0.3)
            img, mask = _photograph(rng, lesions, is_dark)
            path = folder / f"{pid}_{side}.png"
            assert cv2.imwrite(str(path), img)
            masks[path] = mask
            paths.append(path.name)
            spots |= int(lesions > 0)
            dark |= int(is_dark)
        rows.append([str(pid), *paths, spots, dark])
    csv_path = folder / "patients.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "left", "right", "spots", "dark"])
        writer.writerows(rows)
    return csv_path, masks


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eyefuse.train.engine import fit

    root = tmp_path_factory.mktemp("pointing")
    csv_path, _ = _write_patients(root / "train", 64, seed=0)
    cfg = load_config(
        None,
        [
            f"preprocess.size={INPUT}",
            "preprocess.enhance=none",
            "model.backbone=resnet10t",
            "model.pretrained=false",
            "model.attention=residual_attention",
            "model.fusion=ffm",
            "model.head=sigmoid",
            "augment.rotation=0",
            "train.epochs=14",
            "train.batch_size=8",
            "train.lr=0.003",
            "train.warmup_epochs=1",
            "train.num_workers=0",
            "train.channels_last=false",
            "train.early_stop_patience=0",
            "train.device=cpu",
            "train.seed=0",
            "eval.bootstrap=0",
        ],
    )
    cfg.data.root = str(csv_path)
    fit(cfg, root / "run", progress=False)
    return root / "run" / "best"


@pytest.mark.slow
def test_grad_cam_points_at_the_learned_lesions(trained: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(trained)
    _, masks = _write_patients(tmp_path / "new", 16, seed=1)  # patients never seen in training
    tol = max(1, round(0.02 * INPUT))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    fov = np.zeros((INPUT, INPUT), np.uint8)
    cv2.circle(fov, (INPUT // 2, INPUT // 2), INPUT // 2, 1, -1)
    hits = trials = 0
    chance = 0.0
    for pid in range(16):
        left, right = tmp_path / "new" / f"{pid}_left.png", tmp_path / "new" / f"{pid}_right.png"
        if not (masks[left].any() or masks[right].any()):
            continue
        expl = explain_pair(predictor, left, right, ["spots"], patient_id=str(pid), layer="previous")
        for side, path in (("left", left), ("right", right)):
            if not masks[path].any():
                continue
            target = mask_to_preprocessed(masks[path], expl.fovs[side], predictor.preprocess)
            trials += 1
            hits += int(pointing_game(expl.cams["spots"][side], target, tolerance=tol))
            dilated = cv2.dilate(target.astype(np.uint8), kernel) & fov
            chance += float(dilated.sum() / fov.sum())
    assert trials >= 8
    rate, chance = hits / trials, chance / trials
    assert rate >= 0.6 and rate >= 3 * chance, (hits, trials, chance)


def test_pooled_row_is_also_given_without_labels_whose_chance_is_high() -> None:
    from eyefuse.workflows.pointing import PointingResult

    res = PointingResult(
        hits={"D": 5, "M": 20},
        trials={"D": 10, "M": 20},
        chance={"D": 0.1, "M": 0.956},
        tolerance_px=3,
        size=160,
    )
    assert res.informative_labels == ["D"]
    assert res.pooled() == (30, pytest.approx(25 / 30), pytest.approx((0.1 * 10 + 0.956 * 20) / 30))
    assert res.pooled(["D"]) == (10, 0.5, pytest.approx(0.1))
    rows = {line.split("  ")[0].strip(): line for line in str(res).splitlines()}
    assert rows["all"].split()[1:3] == ["30", "0.833"]
    assert rows["all without M"].split()[3:5] == ["10", "0.500"]
    assert "M: chance rate above 0.5" in str(res)
    only_low = PointingResult(hits={"D": 1}, trials={"D": 2}, chance={"D": 0.1})
    assert "without" not in str(only_low)
