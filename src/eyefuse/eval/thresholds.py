"""Per-class decision thresholds, fitted on a validation set and applied elsewhere.

`fit_thresholds` is a pure function of the arrays it is given: it is the caller's job to pass
validation predictions (never the test set that will be reported). A prediction is positive when
`prob > threshold`, the rule of the official ODIR script. `rescale_to_threshold` maps probabilities
so that each class's threshold lands on 0.5, which lets a submission CSV (scored at 0.5 by the
official script) carry the fitted thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eyefuse.errors import ConfigError
from eyefuse.eval.checks import check_thresholds, check_truth_prob
from eyefuse.registry import THRESHOLD_METHOD

DEFAULT_THRESHOLD = 0.5


@dataclass
class ThresholdFit:
    """Fitted per-class thresholds.

    Attributes:
        thresholds: (L,) thresholds, positive when `prob > threshold`.
        method: `f1`, `youden` or `fixed`.
        warnings: one line per class that fell back to 0.5 and why.
        criterion: (L,) the F1 or Youden's J reached on the fitting set (NaN where not fitted).
    """

    thresholds: np.ndarray
    method: str
    warnings: list[str] = field(default_factory=list)
    criterion: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        crit = None if self.criterion is None else [None if np.isnan(c) else float(c) for c in self.criterion]
        return {
            "method": self.method,
            "thresholds": [float(t) for t in self.thresholds],
            "criterion": crit,
            "warnings": list(self.warnings),
        }


def _cut_points(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct binarisation of `p`: thresholds halfway between neighbouring distinct values
    (a midpoint is robust to small shifts of the scores on new data), and below the smallest value
    when it is above 0. Returns (thresholds, tp, fp) for `p > threshold`."""
    values, inverse = np.unique(p, return_inverse=True)
    pos = np.bincount(inverse, weights=t, minlength=values.size)
    neg = np.bincount(inverse, minlength=values.size) - pos
    # Cut k predicts positive every value >= values[k]: counts are reverse cumulative sums.
    tp = np.cumsum(pos[::-1])[::-1]
    fp = np.cumsum(neg[::-1])[::-1]
    lower, upper = values[:-1], values[1:]
    mids = lower + (upper - lower) / 2
    # Rounding can put a midpoint of two adjacent floats on the upper value; `>` needs it below.
    mids = np.where(mids >= upper, lower, mids)
    if values[0] > 0:
        return np.concatenate([[values[0] / 2], mids]), tp, fp
    return mids, tp[1:], fp[1:]


def _f1(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """F1 of the positive class at each cut point."""
    return 2 * tp / (2 * tp + fp + (n_pos - tp))


def _youden(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """Youden's J (sensitivity + specificity - 1) at each cut point."""
    return tp / n_pos - fp / n_neg


#: `eval.threshold_method` -> the criterion maximised over the cut points `(tp, fp, n_pos, n_neg)`;
#: None: no fitting, every threshold 0.5. Names and descriptions: `eyefuse.registry.THRESHOLD_METHOD`.
CRITERIA: dict[str, Callable[[np.ndarray, np.ndarray, int, int], np.ndarray] | None] = THRESHOLD_METHOD.bind(
    {"f1": _f1, "youden": _youden, "fixed": None}
)


def _pick(criterion: np.ndarray, thresholds: np.ndarray) -> int:
    """Index of the best criterion; ties go to the threshold nearest 0.5 (the untuned default)."""
    best = np.nanmax(criterion)
    ties = np.flatnonzero(np.isclose(criterion, best, rtol=1e-12, atol=1e-12))
    return int(ties[np.argmin(np.abs(thresholds[ties] - DEFAULT_THRESHOLD))])


def fit_thresholds(
    truth: Any,
    prob: Any,
    method: str = "f1",
    *,
    label_names: Sequence[str] | None = None,
) -> ThresholdFit:
    """Fit one threshold per class on the given (validation) predictions.

    Args:
        truth: (patients x labels) 0/1 matrix.
        prob: (patients x labels) probabilities in [0, 1].
        method: `f1` maximises the F1 of the positive class; `youden` maximises Youden's J
            (sensitivity + specificity - 1); `fixed` returns 0.5 for every class. Candidates are
            the midpoints between neighbouring distinct scores; ties go to the one nearest 0.5.
        label_names: names for the warnings (default: column numbers).

    A class without positives or without negatives, or whose scores are all equal, cannot be
    fitted: it gets 0.5 and a line in `warnings`.
    """
    measure = CRITERIA[THRESHOLD_METHOD.check(method)]
    truth, prob = check_truth_prob(truth, prob)
    n_labels = truth.shape[1]
    names = list(label_names) if label_names is not None else [str(j) for j in range(n_labels)]
    if len(names) != n_labels:
        raise ConfigError(f"{len(names)} label names given for {n_labels} label columns")
    thresholds = np.full(n_labels, DEFAULT_THRESHOLD)
    criterion = np.full(n_labels, np.nan)
    if measure is None:
        return ThresholdFit(thresholds, method, [], criterion)
    notes: list[str] = []
    for j in range(n_labels):
        t, p = truth[:, j].astype(np.float64), prob[:, j]
        n_pos = int(t.sum())
        n_neg = t.size - n_pos
        if n_pos == 0 or n_neg == 0:
            notes.append(
                f"class {names[j]}: {n_pos} positive and {n_neg} negative patients in the fitting set; "
                f"threshold left at {DEFAULT_THRESHOLD}"
            )
            continue
        cand, tp, fp = _cut_points(t, p)
        if cand.size == 0 or np.unique(p).size == 1:
            notes.append(f"class {names[j]}: all scores are equal; threshold left at {DEFAULT_THRESHOLD}")
            continue
        crit = measure(tp, fp, n_pos, n_neg)
        k = _pick(crit, cand)
        thresholds[j] = cand[k]
        criterion[j] = crit[k]
    return ThresholdFit(thresholds, method, notes, criterion)


def apply_thresholds(prob: Any, thresholds: Any) -> np.ndarray:
    """0/1 predictions `prob > thresholds` (per class, broadcast over patients)."""
    prob = np.asarray(prob, dtype=np.float64)
    thr = check_thresholds(thresholds, prob.shape[-1])
    return (prob > thr).astype(np.uint8)


def rescale_to_threshold(prob: Any, thresholds: Any) -> np.ndarray:
    """Map each class's probabilities piecewise-linearly so its threshold lands on 0.5.

    `[0, t]` maps onto `[0, 0.5]` and `(t, 1]` onto `(0.5, 1]`, so `p > t` exactly when the mapped
    value is `> 0.5`: the official scorer's fixed 0.5 then applies the fitted thresholds. The
    order within a class is kept (per-class AUROC unchanged); the pooled official AUC can change,
    because values of different classes move differently.
    """
    prob = np.asarray(prob, dtype=np.float64)
    thr = check_thresholds(thresholds, prob.shape[-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(thr > 0, 0.5 * prob / np.where(thr > 0, thr, 1.0), 0.5)
        high = 0.5 + 0.5 * (prob - thr) / np.where(thr < 1, 1.0 - thr, 1.0)
    out = np.where(prob > thr, high, low)
    # A value a hair above its threshold could round onto 0.5 and flip; keep it strictly above.
    out = np.where((prob > thr) & (out <= 0.5), np.nextafter(0.5, 1.0), out)
    return np.clip(out, 0.0, 1.0)
