"""Metrics for patient-level multi-label predictions.

The official ODIR-2019 score is computed exactly as the challenge's evaluation script did it, and
beside it the metrics that say what a model really does: per-class AUROC/AUPRC/sensitivity/
specificity/precision/F1, their macro and micro averages, the paper's four figures under every
common definition (each named for what it is), and bootstrap confidence intervals over patients.

Conventions used throughout:
- `truth` is a (patients x labels) 0/1 matrix, `prob` a matrix of the same shape in [0, 1].
- A prediction is positive when `prob > threshold` (strictly greater), the rule of the official
  script (`pr > th`); per-class thresholds use the same rule so that a threshold of 0.5 everywhere
  reproduces the official binarisation.
- A metric that is undefined on the data (AUROC of a class without positives, precision with no
  predicted positive, ...) is `None` in reports and NaN inside arrays; it never raises.
- Decisions and rankings may use different scores: `prob` is what thresholds are applied to, the
  optional `rank_prob` (same shape) is what AUROC, AUPRC and the official pooled AUC rank. For the
  sigmoid head both are the sigmoid; for the softmax head `prob` is softmax / its row maximum (the
  decision rule) and `rank_prob` the softmax itself, because the row maximum ties every patient's
  top label at 1.0 and those ties lower AUROC. Without `rank_prob` everything uses `prob`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from eyefuse.errors import ConfigError, DataError

#: The threshold of the official ODIR-2019 score (applied as `prob > 0.5`).
OFFICIAL_THRESHOLD = 0.5

#: The sentence every report prints beside the official F1, because it is widely misread.
OFFICIAL_F1_NOTE = (
    "Note: the official F1 is computed over the flattened patients x labels matrix with micro "
    "averaging, which equals element-wise accuracy; it is not the F1 of the positive class."
)

_CLASS_METRICS = ("auroc", "auprc", "sensitivity", "specificity", "precision", "f1")


# --- input checks ----------------------------------------------------------------------------


def check_truth_prob(truth: Any, prob: Any, *, what: str = "prob") -> tuple[np.ndarray, np.ndarray]:
    """Validate a (patients x labels) 0/1 truth matrix and a same-shaped probability matrix.

    Returns `(truth as uint8, prob as float64)`. Raises `DataError` naming the first bad cell, so a
    logit matrix passed by mistake (values outside [0, 1]) is refused instead of scored.
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
    outside = (prob < 0) | (prob > 1)
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


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


# --- AUC and the official score --------------------------------------------------------------


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


def _rank_or_prob(truth: np.ndarray, prob: np.ndarray, rank_prob: Any) -> np.ndarray:
    if rank_prob is None:
        return prob
    _, rank = check_truth_prob(truth, rank_prob, what="rank_prob")
    return rank


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
    pr = _rank_or_prob(truth, prob, rank_prob).ravel()
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


def _official_flat(
    gt: np.ndarray, pr: np.ndarray, threshold: float, rank: np.ndarray | None = None
) -> dict[str, float]:
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
    rank = None if rank_prob is None else _rank_or_prob(truth, prob, rank_prob).ravel()
    return _official_flat(truth.ravel().astype(bool), prob.ravel(), threshold, rank)


# --- per-class, macro and micro metrics ------------------------------------------------------


def _binary_counts(t: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    t = t.astype(bool)
    tp = int(np.count_nonzero(t & pred))
    fp = int(np.count_nonzero(~t & pred))
    fn = int(np.count_nonzero(t & ~pred))
    return tp, fp, fn, t.size - tp - fp - fn


def _count_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def per_class_metrics(
    truth: Any, prob: Any, thresholds: Any, label_names: Sequence[str], *, rank_prob: Any = None
) -> list[dict[str, Any]]:
    """One dict per class: prevalence and threshold-free and thresholded metrics.

    Keys: `label`, `threshold`, `n`, `n_pos`, `prevalence`, `auroc`, `auprc` (average precision),
    `sensitivity`, `specificity`, `precision`, `f1` (of the positive class), and the confusion
    counts `tp`, `fp`, `fn`, `tn` at `prob > threshold`. An undefined value is `None`: AUROC
    without positives or without negatives, AUPRC and sensitivity without positives, specificity
    without negatives, precision with no predicted positive, F1 with neither. AUROC and AUPRC rank
    `rank_prob` when given (see the module notes), the rest thresholds `prob`.
    """
    truth, prob = check_truth_prob(truth, prob)
    rank = _rank_or_prob(truth, prob, rank_prob)
    n, n_labels = truth.shape
    if len(label_names) != n_labels:
        raise ConfigError(f"{len(label_names)} label names given for {n_labels} label columns")
    thr = check_thresholds(thresholds, n_labels)
    rows = []
    for j, name in enumerate(label_names):
        t, p, r = truth[:, j], prob[:, j], rank[:, j]
        n_pos = int(t.sum())
        tp, fp, fn, tn = _binary_counts(t, p > thr[j])
        auprc = float(average_precision_score(t, r)) if n_pos > 0 else math.nan
        row: dict[str, Any] = {
            "label": str(name),
            "threshold": float(thr[j]),
            "n": n,
            "n_pos": n_pos,
            "prevalence": n_pos / n,
            "auroc": fast_auc(t, r),
            "auprc": auprc,
            **_count_metrics(tp, fp, fn, tn),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        }
        rows.append({k: _none_if_nan(v) if isinstance(v, float) else v for k, v in row.items()})
    return rows


def macro_average(per_class: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over classes of each per-class metric, over the classes where it is defined.

    `classes_defined[metric]` says over how many of the `n_classes` classes each mean was taken, so
    a macro AUROC over 7 of 8 classes is never mistaken for one over all 8.
    """
    out: dict[str, Any] = {"n_classes": len(per_class)}
    defined: dict[str, int] = {}
    for m in _CLASS_METRICS:
        vals = [r[m] for r in per_class if r.get(m) is not None]
        out[m] = float(np.mean(vals)) if vals else None
        defined[m] = len(vals)
    out["classes_defined"] = defined
    return out


def micro_metrics(truth: Any, prob: Any, thresholds: Any, *, rank_prob: Any = None) -> dict[str, Any]:
    """Metrics pooled over every (patient, label) entry, each class at its own threshold.

    `f1` here is the F1 of the positive class (the honest pooled F1), unlike the official `f1`;
    `auroc` pooled over labels equals the official `auc`; `accuracy` is element-wise accuracy.
    """
    truth, prob = check_truth_prob(truth, prob)
    rank = _rank_or_prob(truth, prob, rank_prob).ravel()
    thr = check_thresholds(thresholds, truth.shape[1])
    gt = truth.ravel()
    tp, fp, fn, tn = _binary_counts(gt, (prob > thr).ravel())
    auprc = float(average_precision_score(gt, rank)) if gt.any() else math.nan
    vals = {
        "auroc": fast_auc(gt, rank),
        "auprc": auprc,
        **_count_metrics(tp, fp, fn, tn),
        "accuracy": (tp + tn) / gt.size,
    }
    return {k: _none_if_nan(v) for k, v in vals.items()}


# --- the paper's figures under every common definition -----------------------------------------


def paper_metrics(truth: Any, pred: Any, prob: Any = None) -> dict[str, float | None]:
    """Accuracy, precision, recall and F1 under each common multi-label definition, each named.

    The paper (Li et al. 2022) reports accuracy 94.23 %, precision 99.09 %, recall 99.23 %, F1
    99.16 % without saying which definitions; these are the candidates:

    - `accuracy_subset`: exact match, all labels of a patient right;
    - `accuracy_elementwise`: fraction of (patient, label) entries right (1 - Hamming loss; equals
      the official F1);
    - `accuracy_jaccard`: per patient |true & predicted| / |true | predicted| (1 when both are
      empty), averaged;
    - `accuracy_top1`: the highest-probability label is one of the patient's labels (needs `prob`;
      None without it);
    - `{precision,recall,f1}_samples`: per patient then averaged; `_micro`: pooled over all
      entries (positive class); `_macro`: per class then averaged. scikit-learn's definitions with
      `zero_division=0` (an undefined ratio counts as 0, the usual convention in papers).

    Args:
        truth: (patients x labels) 0/1 matrix.
        pred: (patients x labels) 0/1 predictions, already thresholded.
        prob: optional probabilities or scores of the same shape, for `accuracy_top1`.
    """
    truth, pred_f = check_truth_prob(truth, pred, what="pred")
    pred = pred_f.astype(np.uint8)
    if not np.isin(pred_f, (0.0, 1.0)).all():
        raise DataError("pred must be thresholded 0/1 predictions")
    out: dict[str, float | None] = {
        "accuracy_subset": float(np.mean(np.all(truth == pred, axis=1))),
        "accuracy_elementwise": float(np.mean(truth == pred)),
    }
    inter = np.sum(truth & pred, axis=1)
    union = np.sum(truth | pred, axis=1)
    out["accuracy_jaccard"] = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    if prob is not None:
        prob = np.asarray(prob, dtype=np.float64)
        if prob.shape != truth.shape:
            raise DataError(f"prob has shape {prob.shape}, truth {truth.shape}")
        top = np.argmax(prob, axis=1)
        out["accuracy_top1"] = float(np.mean(truth[np.arange(truth.shape[0]), top] == 1))
    else:
        out["accuracy_top1"] = None
    for average in ("samples", "micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(truth, pred, average=average, zero_division=0)
        out[f"precision_{average}"] = float(p)
        out[f"recall_{average}"] = float(r)
        out[f"f1_{average}"] = float(f)
    return out


# --- bootstrap ---------------------------------------------------------------------------------


class Interval(NamedTuple):
    """A percentile bootstrap interval; `n_used` resamples had the metric defined (None bounds: none)."""

    lo: float | None
    hi: float | None
    n_used: int

    def to_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "n_used": self.n_used}


def bootstrap_ci(
    fn: Callable[[np.ndarray, np.ndarray], Mapping[str, float | None]],
    truth: Any,
    prob: Any,
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Interval]:
    """Percentile confidence intervals of every metric `fn` returns, resampling patients.

    Patients (rows) are drawn with replacement, `n` times, from `numpy.random.default_rng(seed)`,
    so a seed gives the same intervals on every machine. A resample where a metric is undefined
    (None or NaN, e.g. a class that drew no positive) is left out for that metric only; each
    interval's `n_used` says how many resamples it rests on.

    Args:
        fn: `fn(truth_b, prob_b) -> {name: value}`, e.g. `official_score_fast`. `official_score`
            itself is replaced by `official_score_fast` (the same values to rounding, ten times
            faster; the resamples need no re-validation).
        truth, prob: (patients x labels) arrays, resampled together by row.
        n: number of resamples.
        seed: seed of the resampling generator.
        alpha: 1 - confidence level (0.05 gives 95 % intervals).
    """
    if n < 1:
        raise ConfigError(f"bootstrap resamples must be at least 1, got {n}")
    if not 0 < alpha < 1:
        raise ConfigError(f"bootstrap alpha must be between 0 and 1, got {alpha}")
    truth = np.asarray(truth)
    prob = np.asarray(prob)
    n_patients = truth.shape[0]
    if n_patients == 0 or prob.shape[0] != n_patients:
        raise DataError(f"cannot bootstrap {n_patients} truth rows against {prob.shape[0]} prediction rows")
    if fn is official_score:
        fn = official_score_fast
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n, n_patients))
    values: dict[str, np.ndarray] = {}
    for b in range(n):
        res = fn(truth[draws[b]], prob[draws[b]])
        for key, v in res.items():
            if key not in values:
                values[key] = np.full(n, np.nan)
            values[key][b] = math.nan if v is None else float(v)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    out: dict[str, Interval] = {}
    for key, arr in values.items():
        ok = arr[np.isfinite(arr)]
        if ok.size == 0:
            out[key] = Interval(None, None, 0)
        else:
            lo, hi = np.percentile(ok, q)
            out[key] = Interval(float(lo), float(hi), int(ok.size))
    return out


# --- everything a report needs -----------------------------------------------------------------


def _headline_metrics(
    truth: np.ndarray,
    prob: np.ndarray,
    *,
    thresholds: np.ndarray,
    label_names: Sequence[str],
    macro_auroc_classes: np.ndarray,
    macro_f1_classes: np.ndarray,
) -> dict[str, float]:
    """The numbers that get confidence intervals, computed with numpy only (one bootstrap resample).

    `prob` is the decision scores beside the ranking scores (``patients x 2L``, see
    `evaluate_predictions`), so that one resample draws the same rows of both. Macro means are taken
    over the classes where the point estimate is defined; a resample missing one of them is
    undefined for that mean (NaN), so every resample averages the same classes.
    """
    n_labels = truth.shape[1]
    prob, rank = prob[:, :n_labels], prob[:, n_labels:]
    res = _official_flat(truth.ravel().astype(bool), prob.ravel(), OFFICIAL_THRESHOLD, rank.ravel())
    pred = prob > thresholds
    aurocs = np.array([fast_auc(truth[:, j], rank[:, j]) for j in range(n_labels)])
    counts = [_binary_counts(truth[:, j], pred[:, j]) for j in range(truth.shape[1])]
    f1s = np.array([_ratio(2 * tp, 2 * tp + fp + fn) for tp, fp, fn, _ in counts])
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    res["macro_auroc"] = (
        float(np.mean(aurocs[macro_auroc_classes])) if macro_auroc_classes.any() else math.nan
    )
    res["macro_f1"] = float(np.mean(f1s[macro_f1_classes])) if macro_f1_classes.any() else math.nan
    res["micro_f1"] = _ratio(2 * tp, 2 * tp + fp + fn)
    res["accuracy_subset"] = float(np.mean(np.all(truth.astype(bool) == pred, axis=1)))
    for j, name in enumerate(label_names):
        res[f"auroc:{name}"] = float(aurocs[j])
        res[f"f1:{name}"] = float(f1s[j])
    return res


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and NaN/inf (-> None) so `json.dumps` accepts `obj`."""
    if isinstance(obj, Interval):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def evaluate_predictions(
    truth: Any,
    prob: Any,
    *,
    label_names: Sequence[str],
    thresholds: Any,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    rank_prob: Any = None,
) -> dict[str, Any]:
    """Everything an evaluation report needs, as a JSON-serialisable dict (NaN -> None).

    `prob` holds the decision scores (thresholds, official kappa and F1 at 0.5); `rank_prob`, when
    given, the scores that AUROC, AUPRC and the official pooled AUC rank (the softmax head's
    softmax; see the module notes). `ranking_separate` in the result says which was used.

    - `official`: the ODIR-2019 score at 0.5 exactly as the challenge defines it, from `prob` as
      given (pass calibrated, or threshold-rescaled, probabilities to score what you would submit);
      `official_ci`: its bootstrap intervals.
    - `per_class`: `per_class_metrics` at `thresholds`, each with `auroc_ci` and `f1_ci`.
    - `macro`, `micro`: averages (see `macro_average`, `micro_metrics`), with `ci` for macro AUROC,
      macro F1 and micro F1.
    - `paper`: `paper_metrics` at `thresholds`, with `ci` for subset accuracy.
    - `thresholds`, `label_names`, `n_patients`, `bootstrap` (n, seed, alpha; unit: patient),
      `notes`.

    All intervals come from the same resamples. `n_boot=0` skips the bootstrap (every `ci` None).
    """
    truth, prob = check_truth_prob(truth, prob)
    n_patients, n_labels = truth.shape
    if len(label_names) != n_labels:
        raise ConfigError(f"{len(label_names)} label names given for {n_labels} label columns")
    thr = check_thresholds(thresholds, n_labels)
    rank = _rank_or_prob(truth, prob, rank_prob)
    official = official_score(truth, prob, rank_prob=rank)
    per_class = per_class_metrics(truth, prob, thr, label_names, rank_prob=rank)
    macro = macro_average(per_class)
    micro = micro_metrics(truth, prob, thr, rank_prob=rank)
    paper = paper_metrics(truth, (prob > thr).astype(np.uint8), prob)

    ci: dict[str, Interval] = {}
    if n_boot > 0:
        fn = partial(
            _headline_metrics,
            thresholds=thr,
            label_names=list(label_names),
            macro_auroc_classes=np.array([r["auroc"] is not None for r in per_class]),
            macro_f1_classes=np.array([r["f1"] is not None for r in per_class]),
        )
        ci = bootstrap_ci(fn, truth, np.hstack([prob, rank]), n=n_boot, seed=seed, alpha=alpha)

    def get(key: str) -> Interval | None:
        return ci.get(key)

    for row in per_class:
        row["auroc_ci"] = get(f"auroc:{row['label']}")
        row["f1_ci"] = get(f"f1:{row['label']}")
    macro["ci"] = {"auroc": get("macro_auroc"), "f1": get("macro_f1")}
    micro["ci"] = {"f1": get("micro_f1")}
    paper["ci"] = {"accuracy_subset": get("accuracy_subset")}  # type: ignore[assignment]
    notes = [OFFICIAL_F1_NOTE]
    undefined = [r["label"] for r in per_class if r["auroc"] is None]
    if undefined:
        notes.append(
            f"AUROC is undefined for {', '.join(undefined)} (no positive or no negative patient); "
            f"macro AUROC averages {macro['classes_defined']['auroc']} of {n_labels} classes."
        )
    report = {
        "n_patients": n_patients,
        "label_names": list(label_names),
        "thresholds": thr,
        "official": {**official, "threshold": OFFICIAL_THRESHOLD},
        "ranking_separate": rank_prob is not None,
        "official_ci": {k: get(k) for k in ("kappa", "f1", "auc", "final")},
        "per_class": per_class,
        "macro": macro,
        "micro": micro,
        "paper": paper,
        "bootstrap": {"n": n_boot, "seed": seed, "alpha": alpha, "unit": "patient"},
        "notes": notes,
    }
    return to_jsonable(report)


def macro_auroc(truth: Any, prob: Any) -> float:
    """Mean per-class AUROC over the classes that have both positives and negatives (NaN if none).

    Pass ranking scores (`ranking_probabilities`: the softmax head's softmax, not its decision
    scores)."""
    truth, prob = check_truth_prob(truth, prob)
    vals = [fast_auc(truth[:, j], prob[:, j]) for j in range(truth.shape[1])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan
