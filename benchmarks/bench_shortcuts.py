"""Benchmark: can whole-image statistics, with no lesion detection at all, predict the synthetic labels?

A generator whose disease is drawn as a global change (blur, veil, darkening) that nothing else
causes hands a model a shortcut: it can score well without ever seeing a lesion, and a demo on such
data would say nothing about the model. This script measures that shortcut directly.

For every photograph of an `eyefuse synth` dataset it computes 17 global statistics inside the
field of view (no lesion detection, no position information):

    mean and standard deviation of R, G and B (6); the 5th, 50th and 95th percentiles of green (3);
    sharpness as the variance of the Laplacian of green (1); mean gradient magnitude of green (1);
    high-frequency energy (green minus its Gaussian blur, relative to green's variance) (1);
    RMS contrast of grey (1); entropy of the grey histogram (1); mean HSV saturation (1);
    red/green and green/blue ratios of the means (2).

Per label it fits a cross-validated logistic regression (standardised features, stratified 5-fold,
out-of-fold AUROC) per patient (both eyes' statistics side by side, the patient labels of the
annotation) and per eye (one eye's statistics, the eye's labels from its keywords; folds grouped by
patient), and the same with the labels permuted (the null: what chance gives with this many
features and cases). It prints a table and the largest AUROC over labels (target: none above 0.70).

Run: `.venv/bin/python benchmarks/bench_shortcuts.py [--patients 400] [--max-side 256] [--mix balanced]`
(generates the data in a temporary folder with eyefuse's own `synthesize`), or `--data DIR` for an
existing `eyefuse synth` folder. It prints the figures; it does not assert.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from eyefuse import ODIR_LABELS
from eyefuse.data import synth

FEATURES: tuple[str, ...] = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "p5_g",
    "p50_g",
    "p95_g",
    "laplacian_var_g",
    "gradient_g",
    "high_freq_g",
    "contrast_grey",
    "entropy_grey",
    "saturation",
    "ratio_rg",
    "ratio_gb",
)
WORK_SIDE = 256  #: photographs are reduced to this longer side before the statistics


def global_statistics(rgb: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """The 17 `FEATURES` of one RGB uint8 photograph, inside its field-of-view circle (pixels)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, WORK_SIDE / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    # 0.9 of the radius: the soft rim and a camera notch would otherwise dominate the sharpness terms
    inside = (xx - cx * scale) ** 2 + (yy - cy * scale) ** 2 <= (0.9 * radius * scale) ** 2
    img = rgb.astype(np.float32)
    px = img[inside]
    mean, std = px.mean(0), px.std(0)
    g = img[..., 1]
    gv = g[inside]
    p5, p50, p95 = np.percentile(gv, [5, 50, 95])
    lap = cv2.Laplacian(g, cv2.CV_32F, ksize=3)[inside]
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    grad = np.sqrt(gx**2 + gy**2)[inside]
    high = (g - cv2.GaussianBlur(g, (0, 0), 2.0))[inside]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[inside].astype(np.float32)
    hist = np.bincount(grey.astype(np.int64), minlength=256).astype(np.float64)
    hist /= hist.sum()
    entropy = -np.sum(hist[hist > 0] * np.log2(hist[hist > 0]))
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1][inside].astype(np.float32)
    eps = 1e-3
    return np.array(
        [
            *mean,
            *std,
            p5,
            p50,
            p95,
            lap.var(),
            grad.mean(),
            high.var() / (gv.var() + eps),
            grey.std() / (grey.mean() + eps),
            entropy,
            sat.mean(),
            mean[0] / (mean[1] + eps),
            mean[1] / (mean[2] + eps),
        ],
        np.float64,
    )


def load(data: Path) -> tuple[pd.DataFrame, dict[tuple[int, str], np.ndarray]]:
    """Every photograph's statistics and per-eye labels, from an `eyefuse synth` folder."""
    with open(data / synth.FOV_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    eyes = []
    stats: dict[tuple[int, str], np.ndarray] = {}
    for row in rows:
        bgr = cv2.imread(str(data / row["path"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{data / row['path']}: cannot be read as an image")
        key = (int(row["patient_id"]), row["side"])
        stats[key] = global_statistics(
            bgr[..., ::-1], float(row["cx"]), float(row["cy"]), float(row["radius"])
        )
        eyes.append({"patient_id": key[0], "side": key[1], "labels": row["labels"].split()})
    return pd.DataFrame(eyes), stats


def cv_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> float:
    """Out-of-fold AUROC of a standardised logistic regression (folds grouped when `groups` is given)."""
    if groups is None:
        split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    else:
        split = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(x, y, groups)
    score = np.zeros(len(y))
    for train, test in split:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        model.fit(x[train], y[train])
        score[test] = model.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, score))


def bootstrap_ci(x: np.ndarray, y: np.ndarray, folds: int, seed: int, n: int) -> tuple[float, float]:
    """95 % percentile interval of the out-of-fold AUROC over `n` patient bootstrap resamples of the
    out-of-fold scores (the model is fitted once; the interval is for the score's sampling error)."""
    score = np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        model.fit(x[train], y[train])
        score[test] = model.predict_proba(x[test])[:, 1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            values.append(roc_auc_score(y[idx], score[idx]))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, help="an existing `eyefuse synth` folder (default: generate one)"
    )
    parser.add_argument("--patients", type=int, default=400, help="patients to generate (default 400)")
    parser.add_argument("--max-side", type=int, default=256, help="generated photographs' longer side")
    parser.add_argument(
        "--mix", default="balanced", help="label mix to generate (default: balanced, the demo's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--permutations", type=int, default=3, help="label permutations for the null")
    parser.add_argument(
        "--bootstrap", type=int, default=500, help="resamples for the per-patient 95 %% interval"
    )
    args = parser.parse_args()
    threadpool_limits(1)  # tiny fits: BLAS threads only wait for each other on a busy machine

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eyefuse-shortcuts-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "synth"
            summary = synth.synthesize(
                data, n_patients=args.patients, n_test=0, seed=args.seed, max_side=args.max_side, mix=args.mix
            )
            print(summary)
        eyes, stats = load(data)
    annotation = pd.read_excel(data / synth.TRAIN_ANNOTATION, engine="openpyxl") if args.data else None
    t_data = time.perf_counter() - t0

    pids = sorted(eyes["patient_id"].unique())
    x_patient = np.stack([np.concatenate([stats[(p, "left")], stats[(p, "right")]]) for p in pids])
    eye_labels = {(r.patient_id, r.side): set(r.labels) for r in eyes.itertuples()}
    keys = sorted(stats)
    x_eye = np.stack([stats[k] for k in keys])
    groups = np.array([k[0] for k in keys])
    if annotation is not None:
        annotation = annotation.set_index("ID")
    rng = np.random.default_rng(args.seed)

    print(
        f"\n{len(pids)} patients, {len(keys)} photographs, {len(FEATURES)} global statistics per photograph "
        f"({2 * len(FEATURES)} per patient); logistic regression, {args.folds}-fold out-of-fold AUROC; "
        f"null = the same with labels permuted ({args.permutations} permutations: mean / max)"
    )
    print(
        f"{'label':<6}{'pos':>5}{'AUROC patient':>15}{'95% CI':>15}{'null':>13}"
        f"   {'AUROC eye':>9}{'null':>13}"
    )
    best: dict[str, tuple[float, str]] = {}
    for lab in ODIR_LABELS:
        # patient labels by the ODIR rule, from the eyes' labels (the same as the annotation's)
        left = [eye_labels[(p, "left")] for p in pids]
        right = [eye_labels[(p, "right")] for p in pids]
        if lab == "N":
            y_p = np.array([int(a == {"N"} and b == {"N"}) for a, b in zip(left, right, strict=True)])
        else:
            y_p = np.array([int(lab in a or lab in b) for a, b in zip(left, right, strict=True)])
        if annotation is not None:
            y_p = annotation.loc[pids, lab].to_numpy().astype(int)
        y_e = np.array([int(lab in eye_labels[k]) for k in keys])
        if y_p.sum() < args.folds or len(y_p) - y_p.sum() < args.folds:
            print(f"{lab:<6}{int(y_p.sum()):>5}   too few positives or negatives for {args.folds} folds")
            continue
        auc_p = cv_auroc(x_patient, y_p, None, args.folds, args.seed)
        lo, hi = bootstrap_ci(x_patient, y_p, args.folds, args.seed, args.bootstrap)
        null_p = [
            cv_auroc(x_patient, rng.permutation(y_p), None, args.folds, args.seed)
            for _ in range(args.permutations)
        ]
        auc_e = cv_auroc(x_eye, y_e, groups, args.folds, args.seed)
        perm_e = []
        for _ in range(args.permutations):  # permute whole patients, keeping each patient's two eyes together
            order = rng.permutation(len(pids))
            shuffled = {p: pids[j] for p, j in zip(pids, order, strict=True)}
            y_perm = np.array([int(lab in eye_labels[(shuffled[k[0]], k[1])]) for k in keys])
            perm_e.append(cv_auroc(x_eye, y_perm, groups, args.folds, args.seed))
        best[lab] = (auc_p, "patient") if auc_p >= auc_e else (auc_e, "eye")
        print(
            f"{lab:<6}{int(y_p.sum()):>5}{auc_p:>15.3f}{f'{lo:.2f}-{hi:.2f}':>15}"
            f"{f'{np.mean(null_p):.2f} / {np.max(null_p):.2f}':>13}   {auc_e:>9.3f}"
            f"{f'{np.mean(perm_e):.2f} / {np.max(perm_e):.2f}':>13}"
        )
    if best:
        lab, (auc, level) = max(best.items(), key=lambda kv: kv[1][0])
        print(f"\nlargest AUROC from global statistics: {auc:.3f} ({lab}, per {level}); target: at most 0.70")
    print(f"data + statistics {t_data:.0f} s, total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
