"""The official ODIR-2019 challenge score, computed exactly as the challenge's evaluation script did
it (`official_score`, with scikit-learn), and its numpy twin for bootstrap resamples
(`official_score_fast`), with the rank AUC both use. Conventions: `eyefuse.eval.metrics`."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

from eyefuse.eval.checks import check_truth_prob, rank_or_prob

#: The threshold of the official ODIR-2019 score (applied as `prob > 0.5`).
OFFICIAL_THRESHOLD = 0.5

#: The sentence every report prints beside the official F1, because it is widely misread.
OFFICIAL_F1_NOTE = (
    "Note: the official F1 is computed over the flattened patients x labels matrix with micro "
    "averaging, which equals element-wise accuracy; it is not the F1 of the positive class."
)


def fast_auc(truth: Any, score: Any) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); NaN when a class is absent.

    Equal to `sklearn.metrics.roc_auc_score` (ties counted 1/2, as the ROC trapezoid does) but
    several times faster, which matters inside bootstrap loops.
    """
    truth = np.asarray(truth).ravel().astype(bool)
    score = np.asarray(score, dtype=np.float64).ravel()
    n_pos = int(np.count_nonzero(truth))
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)  # average ranks: a tied positive/negative pair contributes one half
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _kappa_from_counts(tp: int, fp: int, fn: int, tn: int) -> float:
    """Cohen's kappa of two binary raters, arranged as scikit-learn computes it (1 - observed/expected
    disagreement) so both agree to rounding; NaN when undefined (both raters constant and equal)."""
    n = tp + fp + fn + tn
    truth_pos, truth_neg = tp + fn, tn + fp
    pred_pos, pred_neg = tp + fp, tn + fn
    expected_disagreement = pred_neg * truth_pos / n + pred_pos * truth_neg / n
    if expected_disagreement == 0:
        return math.nan
    return 1.0 - (fp + fn) / expected_disagreement


def official_score(
    truth: Any, prob: Any, threshold: float = OFFICIAL_THRESHOLD, *, rank_prob: Any = None
) -> dict[str, float]:
    """The ODIR-2019 challenge score, computed exactly as the official evaluation script does.

    Both matrices are flattened row-major (numpy `.flatten()`, patient by patient) into one vector
    of patients x labels entries, then with `pred = prob > threshold` (strictly greater, as the
    script's `pr > th`):

    - `kappa` = `sklearn.metrics.cohen_kappa_score(truth, pred)`,
    - `f1` = `sklearn.metrics.f1_score(truth, pred, average='micro')`. Micro averaging over both
      values of a flattened binary vector makes this exactly the element-wise accuracy, not the F1
      of the positive class (see `OFFICIAL_F1_NOTE`),
    - `auc` = `sklearn.metrics.roc_auc_score(truth, prob)`, one AUC over all labels pooled,
    - `final` = (kappa + f1 + auc) / 3.

    Where the official script would crash (no positive or no negative anywhere) `auc` and `final`
    are NaN; kappa is NaN when truth and prediction are the same constant.

    Args:
        truth: (patients x labels) 0/1 matrix.
        prob: (patients x labels) probabilities in [0, 1] (not logits).
        threshold: binarisation threshold; the challenge used 0.5.
        rank_prob: scores for the AUC instead of `prob` (the softmax head's softmax, see the module
            notes); the official script has one matrix, so this is the score of a submission whose
            AUC column came from `rank_prob`.
    """
    truth, prob = check_truth_prob(truth, prob)
    gt = truth.ravel()
    pr = rank_or_prob(truth, prob, rank_prob).ravel()
    decided = prob.ravel()
    pred = (decided > threshold).astype(np.uint8)
    with warnings.catch_warnings():
        # Undefined cases are reported as NaN below; sklearn's warnings would only repeat that.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        kappa = float(cohen_kappa_score(gt, pred))
        f1 = float(f1_score(gt, pred, average="micro"))
        auc = float(roc_auc_score(gt, pr)) if 0 < gt.sum() < gt.size else math.nan
    return {"kappa": kappa, "f1": f1, "auc": auc, "final": (kappa + f1 + auc) / 3.0}


def official_flat(
    gt: np.ndarray, pr: np.ndarray, threshold: float, rank: np.ndarray | None = None
) -> dict[str, float]:
    """The official score of already checked, flattened arrays (`gt` bool), with numpy only: the
    body of `official_score_fast` and of each bootstrap resample of `evaluate_predictions`."""
    pred = pr > threshold
    tp = int(np.count_nonzero(gt & pred))
    fp = int(np.count_nonzero(~gt & pred))
    fn = int(np.count_nonzero(gt & ~pred))
    tn = gt.size - tp - fp - fn
    kappa = _kappa_from_counts(tp, fp, fn, tn)
    f1 = (tp + tn) / gt.size  # micro-F1 over a flattened binary vector is accuracy
    auc = fast_auc(gt, pr if rank is None else rank)
    return {"kappa": kappa, "f1": f1, "auc": auc, "final": (kappa + f1 + auc) / 3.0}


def official_score_fast(
    truth: Any, prob: Any, threshold: float = OFFICIAL_THRESHOLD, *, rank_prob: Any = None
) -> dict[str, float]:
    """`official_score` computed with numpy (confusion counts and rank AUC) instead of scikit-learn.

    Same values to floating-point rounding (checked by the tests), about ten times faster: use it
    for bootstrap resamples; report point estimates with `official_score`.
    """
    truth, prob = check_truth_prob(truth, prob)
    rank = None if rank_prob is None else rank_or_prob(truth, prob, rank_prob).ravel()
    return official_flat(truth.ravel().astype(bool), prob.ravel(), threshold, rank)
