"""Checks of the arrays every metric takes: a (patients x labels) 0/1 truth matrix, a probability
matrix of the same shape, per-class thresholds, and the optional ranking scores (see the
conventions in `eyefuse.eval.metrics`). A bad array is refused with a `DataError` or `ConfigError`
naming the first bad cell, never scored."""

from __future__ import annotations

from typing import Any

import numpy as np

from eyefuse.errors import ConfigError, DataError


def check_truth_prob(
    truth: Any, prob: Any, *, what: str = "prob", unit_interval: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (patients x labels) 0/1 truth matrix and a same-shaped finite score matrix.

    Returns `(truth as uint8, prob as float64)`. Raises `DataError` naming the first bad cell, so a
    logit matrix passed by mistake (values outside [0, 1]) is refused instead of scored; with
    `unit_interval=False` the scores may be any finite number (logits, for calibration).
    """
    truth = np.asarray(truth)
    prob = np.asarray(prob, dtype=np.float64)
    if truth.ndim != 2 or prob.shape != truth.shape:
        raise DataError(
            f"truth and {what} must be matrices of the same shape (patients x labels), "
            f"got {truth.shape} and {prob.shape}"
        )
    if truth.shape[0] == 0 or truth.shape[1] == 0:
        raise DataError(f"nothing to evaluate: truth has shape {truth.shape}")
    bad = ~np.isin(truth, (0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"truth labels must be 0 or 1; patient {r}, label {c} is {truth[r, c]!r}")
    nonfinite = ~np.isfinite(prob)
    if nonfinite.any():
        r, c = np.argwhere(nonfinite)[0]
        raise DataError(
            f"{what} has {int(nonfinite.sum())} NaN/infinite value(s); first at patient {r}, label {c}"
        )
    outside = ((prob < 0) | (prob > 1)) if unit_interval else np.zeros(prob.shape, dtype=bool)
    if outside.any():
        r, c = np.argwhere(outside)[0]
        raise DataError(
            f"{what} must lie in [0, 1] (probabilities, not logits); patient {r}, label {c} is {prob[r, c]!r}"
        )
    return truth.astype(np.uint8), prob


def check_thresholds(thresholds: Any, n_labels: int) -> np.ndarray:
    """Broadcast a scalar or per-class thresholds to shape (n_labels,) and check they lie in [0, 1]."""
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(n_labels, float(thr))
    if thr.shape != (n_labels,):
        raise ConfigError(f"expected {n_labels} per-class thresholds, got shape {thr.shape}")
    if not np.all(np.isfinite(thr)) or (thr < 0).any() or (thr > 1).any():
        raise ConfigError(f"thresholds must be finite and in [0, 1], got {thr.tolist()}")
    return thr


def rank_or_prob(truth: np.ndarray, prob: np.ndarray, rank_prob: Any) -> np.ndarray:
    """The scores to rank (AUROC, AUPRC, AUC): `rank_prob` checked against `truth` when given,
    else `prob`."""
    if rank_prob is None:
        return prob
    _, rank = check_truth_prob(truth, rank_prob, what="rank_prob")
    return rank
