"""Tests of eyefuse.eval.metrics: the official ODIR score against a direct scikit-learn computation,
the fast AUC, per-class/macro/micro metrics, the paper's metric definitions and the bootstrap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.metrics import (
    OFFICIAL_F1_NOTE,
    Interval,
    bootstrap_ci,
    evaluate_predictions,
    fast_auc,
    macro_average,
    micro_metrics,
    official_score,
    official_score_fast,
    paper_metrics,
    per_class_metrics,
)

LABELS = list("NDGCAHMO")


def _sample(n: int = 60, n_labels: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, n_labels)) < 0.3).astype(np.uint8)
    prob = np.clip(0.35 * truth + 0.65 * rng.random((n, n_labels)), 0, 1)
    return truth, prob


def _odir_reference(gt_data: np.ndarray, pr_data: np.ndarray) -> tuple[float, float, float, float]:
    """The challenge's ODIR_Metrics, line for line."""
    th = 0.5
    gt = gt_data.flatten()
    pr = pr_data.flatten()
    kappa = cohen_kappa_score(gt, pr > th)
    f1 = f1_score(gt, pr > th, average="micro")
    auc = roc_auc_score(gt, pr)
    return kappa, f1, auc, (kappa + f1 + auc) / 3.0


# --- official score ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_official_score_matches_the_challenge_code(seed: int) -> None:
    truth, prob = _sample(seed=seed)
    ref = _odir_reference(truth.astype(float), prob)
    got = official_score(truth, prob)
    for key, value in zip(("kappa", "f1", "auc", "final"), ref, strict=True):
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_official_f1_is_elementwise_accuracy() -> None:
    truth, prob = _sample(seed=3)
    assert official_score(truth, prob)["f1"] == pytest.approx(np.mean(truth == (prob > 0.5)))


def test_official_score_with_an_all_zero_class() -> None:
    truth, prob = _sample(seed=4)
    truth[:, 5] = 0
    got = official_score(truth, prob)
    assert got["final"] == pytest.approx(_odir_reference(truth, prob)[3], rel=1e-12)


def test_official_score_of_perfect_predictions_is_one() -> None:
    truth, _ = _sample(seed=5)
    got = official_score(truth, truth.astype(float))
    assert got == pytest.approx({"kappa": 1.0, "f1": 1.0, "auc": 1.0, "final": 1.0})


def test_official_score_uses_strictly_greater_than_half() -> None:
    truth = np.zeros((4, 8), dtype=np.uint8)
    truth[:, :2] = 1  # 25 % positive entries
    prob = np.full(truth.shape, 0.5)
    got = official_score(truth, prob)
    # 0.5 is not > 0.5: everything is predicted negative, so F1 (accuracy) is the negative share;
    # a `>=` rule would give 0.25 instead.
    assert got["f1"] == pytest.approx(0.75)
    assert got["kappa"] == pytest.approx(0.0)
    assert got["auc"] == pytest.approx(0.5)
    nudged = np.nextafter(prob, 1.0)
    assert official_score(truth, nudged)["f1"] == pytest.approx(0.25)


def test_official_score_undefined_auc_is_nan_not_a_crash() -> None:
    truth = np.zeros((5, 8), dtype=np.uint8)
    prob = np.full(truth.shape, 0.1)
    got = official_score(truth, prob)
    assert math.isnan(got["auc"]) and math.isnan(got["final"])
    assert got["f1"] == 1.0


@pytest.mark.parametrize("decimals", [None, 1])
def test_official_score_fast_equals_sklearn_version(decimals: int | None) -> None:
    for seed in range(4):
        truth, prob = _sample(n=40, seed=seed)
        if decimals is not None:
            prob = np.round(prob, decimals)  # many ties, some exactly 0.5
        slow, fast = official_score(truth, prob), official_score_fast(truth, prob)
        for key in slow:
            assert fast[key] == pytest.approx(slow[key], rel=1e-12, abs=1e-15)


def test_official_score_fast_handles_constant_truth_and_prediction() -> None:
    truth = np.ones((3, 8), dtype=np.uint8)
    got = official_score_fast(truth, np.ones(truth.shape))
    assert got["f1"] == 1.0 and math.isnan(got["kappa"]) and math.isnan(got["auc"])
    # Constant truth, prediction varies: kappa is 0 in both implementations.
    prob = np.zeros(truth.shape)
    prob[0, 0] = 0.9
    assert official_score_fast(truth, prob)["kappa"] == pytest.approx(official_score(truth, prob)["kappa"])


def test_inputs_are_checked() -> None:
    truth, prob = _sample(n=5)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        official_score(truth, prob * 4 - 2)  # logits by mistake
    with pytest.raises(DataError, match="same shape"):
        official_score(truth, prob[:, :7])
    bad = truth.copy()
    bad[0, 0] = 2
    with pytest.raises(DataError, match="0 or 1"):
        official_score(bad, prob)
    nan = prob.copy()
    nan[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        official_score(truth, nan)


# --- fast AUC ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_fast_auc_equals_sklearn_on_random_and_tied_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    y[:2] = (0, 1)
    score = rng.random(300) + 0.3 * y
    assert fast_auc(y, score) == pytest.approx(roc_auc_score(y, score), rel=1e-12)
    tied = np.round(score * 4) / 4  # a handful of distinct values
    assert fast_auc(y, tied) == pytest.approx(roc_auc_score(y, tied), rel=1e-12)


def test_fast_auc_is_nan_with_one_class() -> None:
    assert math.isnan(fast_auc(np.zeros(5), np.linspace(0, 1, 5)))
    assert math.isnan(fast_auc(np.ones(5), np.linspace(0, 1, 5)))


# --- per-class, macro, micro -------------------------------------------------------------------


def test_per_class_metrics_by_hand_and_undefined_classes() -> None:
    truth = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=np.uint8)
    prob = np.array([[0.9, 0.2, 0.6], [0.4, 0.1, 0.7], [0.6, 0.3, 0.2], [0.1, 0.0, 0.9]])
    rows = per_class_metrics(truth, prob, [0.5, 0.5, 0.5], ["a", "b", "c"])
    a, b, c = rows
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (1, 1, 1, 1)
    assert a["sensitivity"] == 0.5 and a["specificity"] == 0.5 and a["precision"] == 0.5 and a["f1"] == 0.5
    assert a["auroc"] == pytest.approx(0.75) and a["prevalence"] == 0.5 and a["n_pos"] == 2
    # b has no positive patient: nothing that needs a positive is defined, nothing crashes.
    assert b["auroc"] is None and b["auprc"] is None and b["sensitivity"] is None
    assert b["precision"] is None and b["f1"] is None and b["specificity"] == 1.0
    # c has no negative patient.
    assert c["auroc"] is None and c["specificity"] is None and c["sensitivity"] == 0.75
    macro = macro_average(rows)
    assert macro["auroc"] == pytest.approx(0.75) and macro["classes_defined"]["auroc"] == 1
    assert macro["f1"] == pytest.approx((0.5 + 6 / 7) / 2) and macro["classes_defined"]["f1"] == 2
    assert macro["n_classes"] == 3


def test_micro_f1_is_the_positive_class_f1_not_the_official_f1() -> None:
    truth, prob = _sample(seed=6)
    pred = prob > 0.5
    tp = np.sum(truth & pred)
    fp = np.sum(~truth.astype(bool) & pred)
    fn = np.sum(truth.astype(bool) & ~pred)
    micro = micro_metrics(truth, prob, 0.5)
    assert micro["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert micro["f1"] != pytest.approx(official_score(truth, prob)["f1"])
    assert micro["auroc"] == pytest.approx(official_score(truth, prob)["auc"])


# --- paper metrics -----------------------------------------------------------------------------


def test_paper_metrics_on_a_hand_computed_example() -> None:
    truth = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0]])
    prob = np.array([[0.9, 0.1, 0.1], [0.2, 0.3, 0.8], [0.1, 0.9, 0.8], [0.6, 0.1, 0.2]])
    m = paper_metrics(truth, pred, prob)
    expected = {
        "accuracy_subset": 1 / 4,
        "accuracy_elementwise": 8 / 12,
        "accuracy_jaccard": (1 + 1 / 2 + 1 / 3 + 0) / 4,
        "accuracy_top1": 3 / 4,
        "precision_samples": (1 + 1 + 1 / 2 + 0) / 4,
        "recall_samples": (1 + 1 / 2 + 1 / 2 + 0) / 4,
        "f1_samples": (1 + 2 / 3 + 1 / 2 + 0) / 4,
        "precision_micro": 3 / 4,
        "recall_micro": 3 / 6,
        "f1_micro": 6 / 10,
        "precision_macro": (1 + 1 + 0) / 3,
        "recall_macro": (1 / 2 + 1 + 0) / 3,
        "f1_macro": (2 / 3 + 1 + 0) / 3,
    }
    assert m == pytest.approx(expected)
    assert paper_metrics(truth, pred)["accuracy_top1"] is None


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_is_reproducible_and_seeded() -> None:
    truth, prob = _sample(n=80, seed=7)
    a = bootstrap_ci(official_score_fast, truth, prob, n=200, seed=1)
    b = bootstrap_ci(official_score_fast, truth, prob, n=200, seed=1)
    c = bootstrap_ci(official_score_fast, truth, prob, n=200, seed=2)
    assert a == b
    assert a["final"] != c["final"]
    point = official_score(truth, prob)
    for key in ("kappa", "f1", "auc", "final"):
        assert a[key].lo < point[key] < a[key].hi
        assert a[key].n_used == 200


def test_bootstrap_of_official_score_equals_its_fast_twin() -> None:
    truth, prob = _sample(n=30, seed=8)
    slow = bootstrap_ci(official_score, truth, prob, n=50)
    assert slow == bootstrap_ci(official_score_fast, truth, prob, n=50)


def test_bootstrap_skips_undefined_resamples_and_counts_them() -> None:
    truth, prob = _sample(n=20, seed=9)
    truth[:, 0] = 0
    truth[3, 0] = 1  # one positive patient: many resamples miss it

    def rare_auc(t: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
        auc = fast_auc(t[:, 0], p[:, 0])
        return {"auc": auc, "never": None}

    ci = bootstrap_ci(rare_auc, truth, prob, n=300, seed=0)
    assert 0 < ci["auc"].n_used < 300
    assert ci["never"] == Interval(None, None, 0)


def test_bootstrap_refuses_bad_settings() -> None:
    truth, prob = _sample(n=5)
    with pytest.raises(ConfigError):
        bootstrap_ci(official_score_fast, truth, prob, n=0)
    with pytest.raises(ConfigError):
        bootstrap_ci(official_score_fast, truth, prob, alpha=1.5)


# --- evaluate_predictions ----------------------------------------------------------------------


def test_evaluate_predictions_report_is_complete_and_json_serialisable() -> None:
    truth, prob = _sample(n=50, seed=10)
    truth[:, 5] = 0  # H absent: its AUROC is undefined and said so
    thr = np.full(8, 0.4)
    rep = evaluate_predictions(truth, prob, label_names=LABELS, thresholds=thr, n_boot=40, seed=3)
    json.dumps(rep, allow_nan=False)
    assert rep["n_patients"] == 50 and rep["thresholds"] == [0.4] * 8
    assert rep["official"]["final"] == pytest.approx(official_score(truth, prob)["final"])
    assert set(rep["official_ci"]) == {"kappa", "f1", "auc", "final"}
    assert rep["official_ci"]["final"]["n_used"] == 40
    h = rep["per_class"][5]
    assert h["label"] == "H" and h["auroc"] is None and h["auroc_ci"] == {"lo": None, "hi": None, "n_used": 0}
    assert rep["macro"]["classes_defined"]["auroc"] == 7
    assert rep["macro"]["ci"]["auroc"]["lo"] <= rep["macro"]["auroc"] <= rep["macro"]["ci"]["auroc"]["hi"]
    assert rep["paper"]["accuracy_subset"] == pytest.approx(np.mean(np.all(truth == (prob > 0.4), axis=1)))
    assert "accuracy_subset" in rep["paper"]["ci"]
    assert OFFICIAL_F1_NOTE in rep["notes"] and any("H" in n for n in rep["notes"][1:])
    again = evaluate_predictions(truth, prob, label_names=LABELS, thresholds=thr, n_boot=40, seed=3)
    assert again == rep


def test_evaluate_predictions_without_bootstrap() -> None:
    truth, prob = _sample(n=20, seed=11)
    rep = evaluate_predictions(truth, prob, label_names=LABELS, thresholds=0.5, n_boot=0)
    assert rep["official_ci"]["final"] is None and rep["macro"]["ci"]["auroc"] is None
    with pytest.raises(ConfigError, match="label names"):
        evaluate_predictions(truth, prob, label_names=LABELS[:7], thresholds=0.5, n_boot=0)
