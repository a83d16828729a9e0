"""Tests of eyefuse.eval.thresholds: F1 and Youden fitting, degenerate classes, and the rescaling
that carries fitted thresholds into a submission scored at 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from eyefuse.errors import ConfigError
from eyefuse.eval.thresholds import apply_thresholds, fit_thresholds, rescale_to_threshold


def _shifted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that separate the classes but sit far below 0.5, as an under-confident model's do."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, 3)) < 0.3).astype(np.uint8)
    prob = 1 / (1 + np.exp(-(2.0 * truth + rng.normal(size=truth.shape) - 3.0)))
    return truth, prob


def _f1(t: np.ndarray, pred: np.ndarray) -> float:
    tp = np.sum((t == 1) & pred)
    return 2 * tp / (2 * tp + np.sum((t == 0) & pred) + np.sum((t == 1) & ~pred))


def _youden(t: np.ndarray, pred: np.ndarray) -> float:
    return np.sum((t == 1) & pred) / np.sum(t == 1) - np.sum((t == 0) & pred) / np.sum(t == 0)


def test_f1_thresholds_beat_half_on_shifted_probabilities() -> None:
    truth, prob = _shifted(400, seed=0)
    fit = fit_thresholds(truth, prob, "f1")
    assert fit.method == "f1" and not fit.warnings
    assert np.all(fit.thresholds < 0.5)
    new_truth, new_prob = _shifted(400, seed=1)  # the thresholds carry over to fresh data
    for j in range(3):
        assert _f1(truth[:, j], prob[:, j] > fit.thresholds[j]) > _f1(truth[:, j], prob[:, j] > 0.5)
        t, p = new_truth[:, j], new_prob[:, j]
        assert _f1(t, p > fit.thresholds[j]) > _f1(t, p > 0.5)
        assert fit.criterion[j] == pytest.approx(_f1(truth[:, j], prob[:, j] > fit.thresholds[j]))


@pytest.mark.parametrize(("method", "criterion"), [("f1", _f1), ("youden", _youden)])
def test_fitted_threshold_is_optimal_over_a_fine_grid(method: str, criterion) -> None:
    truth, prob = _shifted(150, seed=2)
    prob = np.round(prob, 3)  # ties
    fit = fit_thresholds(truth, prob, method)
    grid = np.linspace(0, 1, 2001)
    for j in range(3):
        t, p = truth[:, j], prob[:, j]
        best_grid = max(criterion(t, p > g) for g in grid)
        assert criterion(t, p > fit.thresholds[j]) >= best_grid - 1e-12


def test_threshold_is_a_midpoint_between_neighbouring_scores() -> None:
    truth = np.array([[0], [0], [1], [1]])
    prob = np.array([[0.1], [0.2], [0.6], [0.8]])
    assert fit_thresholds(truth, prob, "f1").thresholds[0] == pytest.approx(0.4)
    assert fit_thresholds(truth, prob, "youden").thresholds[0] == pytest.approx(0.4)


def test_youden_and_f1_differ_on_a_rare_class() -> None:
    # Two positives (0.9 and 0.35) among ten negatives, four of them above 0.35. Youden keeps both
    # positives at the cost of four false positives (J = 1 - 4/10 = 0.6, against 0.5 for the sure
    # positive alone); F1 prefers the sure positive alone (2/3, against 4/8 = 0.5).
    truth = np.array([[1], [1]] + [[0]] * 10)
    prob = np.array([[0.9], [0.35]] + [[v] for v in (0.1, 0.15, 0.2, 0.25, 0.3, 0.32, 0.4, 0.45, 0.5, 0.6)])
    f1 = fit_thresholds(truth, prob, "f1")
    youden = fit_thresholds(truth, prob, "youden")
    assert youden.thresholds[0] == pytest.approx(0.335) and youden.criterion[0] == pytest.approx(0.6)
    assert f1.thresholds[0] == pytest.approx(0.75) and f1.criterion[0] == pytest.approx(2 / 3)


def test_degenerate_classes_get_half_and_a_warning() -> None:
    truth = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 0]])
    prob = np.array([[0.2, 0.3, 0.3], [0.1, 0.2, 0.3], [0.3, 0.9, 0.3], [0.2, 0.1, 0.3]])
    fit = fit_thresholds(truth, prob, "f1", label_names=["N", "D", "G"])
    np.testing.assert_array_equal(fit.thresholds, [0.5, 0.5, 0.5])
    assert len(fit.warnings) == 3
    assert "class N: 0 positive" in fit.warnings[0]
    assert "class D: 4 positive and 0 negative" in fit.warnings[1]
    assert "class G: all scores are equal" in fit.warnings[2]
    assert np.all(np.isnan(fit.criterion))
    assert fit.to_dict()["criterion"] == [None, None, None]


def test_fixed_and_unknown_methods() -> None:
    truth, prob = _shifted(30, seed=3)
    fit = fit_thresholds(truth, prob, "fixed")
    np.testing.assert_array_equal(fit.thresholds, [0.5] * 3)
    with pytest.raises(ConfigError, match="threshold_method"):
        fit_thresholds(truth, prob, "best")


def test_ties_go_to_the_threshold_nearest_half() -> None:
    # Youden's J is 0.5 both when keeping the two highest scores and when keeping only the top one;
    # the tie goes to whichever cut lies nearer 0.5, whether it is the lower or the higher.
    truth = np.array([[0], [1], [0], [1]])
    upper = fit_thresholds(truth, np.array([[0.1], [0.2], [0.6], [0.9]]), "youden")
    assert upper.thresholds[0] == pytest.approx(0.75) and upper.criterion[0] == pytest.approx(0.5)
    lower = fit_thresholds(truth, np.array([[0.1], [0.4], [0.6], [0.95]]), "youden")
    assert lower.thresholds[0] == pytest.approx(0.25) and lower.criterion[0] == pytest.approx(0.5)


def test_fitting_reads_only_its_arguments_and_leaves_them_unchanged() -> None:
    truth, prob = _shifted(60, seed=4)
    t0, p0 = truth.copy(), prob.copy()
    a = fit_thresholds(truth, prob, "youden")
    b = fit_thresholds(t0, p0, "youden")
    np.testing.assert_array_equal(truth, t0)
    np.testing.assert_array_equal(prob, p0)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)


def test_rescale_maps_each_threshold_onto_half_exactly() -> None:
    rng = np.random.default_rng(5)
    thr = np.array([0.0, 0.13, 0.5, 0.87, 1.0])
    prob = rng.random((500, 5))
    # Values exactly at and one float either side of each threshold: the hardest cases.
    for j, t in enumerate(thr):
        prob[:3, j] = np.clip([t, np.nextafter(t, 0), np.nextafter(t, 1)], 0, 1)
    out = rescale_to_threshold(prob, thr)
    np.testing.assert_array_equal(out > 0.5, apply_thresholds(prob, thr).astype(bool))
    assert out.min() >= 0 and out.max() <= 1
    for j in range(5):
        order = np.argsort(prob[:, j], kind="stable")
        assert np.all(np.diff(out[order, j]) >= 0)  # ranking inside a class is kept
    np.testing.assert_allclose(rescale_to_threshold(np.array([[0.065, 0.935]]), [0.13, 0.87]), [[0.25, 0.75]])


def test_rescale_refuses_thresholds_outside_unit_interval() -> None:
    with pytest.raises(ConfigError):
        rescale_to_threshold(np.zeros((2, 2)), [0.5, 1.5])
