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

The official score lives in `eyefuse.eval.official`, the input checks in `eyefuse.eval.checks` and
the bootstrap in `eyefuse.eval.bootstrap`; this module holds the per-class, averaged and paper
metrics and `evaluate_predictions`, which puts them all together for a report, and re-exports the
names callers import from `eyefuse.eval.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support

from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.bootstrap import Interval, bootstrap_ci
from eyefuse.eval.checks import check_thresholds, check_truth_prob, rank_or_prob
from eyefuse.eval.official import (
    OFFICIAL_F1_NOTE,
    OFFICIAL_THRESHOLD,
    fast_auc,
    official_flat,
    official_score,
    official_score_fast,
)

_CLASS_METRICS = ("auroc", "auprc", "sensitivity", "specificity", "precision", "f1")


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


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
    rank = rank_or_prob(truth, prob, rank_prob)
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
    rank = rank_or_prob(truth, prob, rank_prob).ravel()
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
    res = official_flat(truth.ravel().astype(bool), prob.ravel(), OFFICIAL_THRESHOLD, rank.ravel())
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
    rank = rank_or_prob(truth, prob, rank_prob)
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


__all__ = [
    "OFFICIAL_F1_NOTE",
    "OFFICIAL_THRESHOLD",
    "Interval",
    "bootstrap_ci",
    "check_thresholds",
    "check_truth_prob",
    "evaluate_predictions",
    "fast_auc",
    "macro_auroc",
    "macro_average",
    "micro_metrics",
    "official_score",
    "official_score_fast",
    "paper_metrics",
    "per_class_metrics",
    "to_jsonable",
]
