"""Probability calibration: fitting temperatures and thresholds, and measuring calibration.

Applying a fitted calibration (logits -> calibrated probabilities -> decisions) is the checkpoint
owner's job (`eyefuse.models.checkpoint.calibrated_probabilities` and `calibrate`); this module
fits what it applies.

Temperature scaling divides logits by a positive temperature T fitted on validation data (T > 1
softens over-confident outputs, T < 1 sharpens), which changes no ranking, so AUROC is unchanged
while probabilities become trustworthy. For the sigmoid head each class gets its own T
(`fit_temperatures`); the softmax head shares one T over the softmax (`fit_softmax_temperature`),
because its classes compete for one probability mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.metrics import check_truth_prob, macro_auroc, official_score
from eyefuse.eval.thresholds import fit_thresholds
from eyefuse.models.checkpoint import calibrated_probabilities

#: Search range of a temperature; a fit that ends on an edge is reported in the warnings.
TEMPERATURE_BOUNDS = (0.01, 100.0)


def _bce(y: np.ndarray, z: np.ndarray) -> float:
    """Mean binary cross-entropy of logits `z`, in the stable form softplus(z) - y*z."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _fit_log_temperature(loss, bounds: tuple[float, float]) -> float:
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


@dataclass
class TemperatureFit:
    """Per-class temperatures of a sigmoid head.

    Behaves as the (L,) array of temperatures where numpy expects an array (`np.asarray(fit)`,
    `apply_temperatures(logits, fit)`).

    Attributes:
        temperatures: (L,) positive temperatures; 1.0 where a class could not be fitted.
        warnings: one line per class left at 1.0 or ending on a bound of the search range.
        nll_before, nll_after: (L,) mean binary cross-entropy of each class before and after.
    """

    temperatures: np.ndarray
    warnings: list[str] = field(default_factory=list)
    nll_before: np.ndarray | None = None
    nll_after: np.ndarray | None = None

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.array(self.temperatures, dtype=dtype, copy=True if copy else None)

    def to_dict(self) -> dict[str, Any]:
        def floats(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(x) for x in a]

        return {
            "temperatures": floats(self.temperatures),
            "nll_before": floats(self.nll_before),
            "nll_after": floats(self.nll_after),
            "warnings": list(self.warnings),
        }


def fit_temperatures(
    truth: Any,
    logits: Any,
    *,
    label_names: Sequence[str] | None = None,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> TemperatureFit:
    """Fit one temperature per class of a sigmoid head by minimising binary cross-entropy.

    Each T minimises the mean BCE of `sigmoid(logits[:, j] / T)` against `truth[:, j]`, searched on
    log T with scipy's bounded scalar minimiser (log scale: T = 0.5 and T = 2 are equally far
    from 1). A class without positives or without negatives has no finite optimum (the loss keeps
    falling as T goes to 0): it keeps T = 1 and a warning.

    Args:
        truth: (patients x labels) 0/1 matrix, validation set.
        logits: (patients x labels) raw sigmoid logits (not probabilities).
        label_names: names for the warnings (default: column numbers).
        bounds: (min, max) temperature searched.
    """
    if not 0 < bounds[0] < 1 < bounds[1]:
        raise ConfigError(f"temperature bounds must satisfy 0 < min < 1 < max, got {bounds}")
    truth, logits = check_truth_prob(truth, logits, what="logits", unit_interval=False)
    n_labels = truth.shape[1]
    names = list(label_names) if label_names is not None else [str(j) for j in range(n_labels)]
    temps = np.ones(n_labels)
    before = np.array([_bce(truth[:, j], logits[:, j]) for j in range(n_labels)])
    notes: list[str] = []
    for j in range(n_labels):
        y, z = truth[:, j].astype(np.float64), logits[:, j]
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == y.size:
            notes.append(f"class {names[j]}: {n_pos} positive of {y.size} patients; temperature left at 1.0")
            continue
        temps[j] = _fit_log_temperature(lambda log_t, y=y, z=z: _bce(y, z / math.exp(log_t)), bounds)
        if not bounds[0] * 1.001 < temps[j] < bounds[1] / 1.001:
            notes.append(f"class {names[j]}: temperature {temps[j]:.4g} reached the search bound {bounds}")
    after = np.array([_bce(truth[:, j], logits[:, j] / temps[j]) for j in range(n_labels)])
    return TemperatureFit(temps, notes, before, after)


def apply_temperatures(logits: Any, temperatures: Any) -> np.ndarray:
    """Scaled logits `logits / T` (per class along the last axis, or one shared scalar T).

    Returns logits, not probabilities, so the head's own probability rule (sigmoid, or the softmax
    head's rule) applies afterwards.
    """
    logits = np.asarray(logits, dtype=np.float64)
    t = np.asarray(temperatures, dtype=np.float64)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != logits.shape[-1]):
        raise DataError(
            f"expected one temperature or {logits.shape[-1]} per-class temperatures, got shape {t.shape}"
        )
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise DataError(f"temperatures must be finite and positive, got {t.tolist()}")
    return logits / t


def fit_softmax_temperature(
    truth: Any, logits: Any, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """Fit the single temperature of a softmax head by minimising soft-target cross-entropy.

    The target of a patient is its labels divided by their number (the softmax head's training
    target), and the loss is `-sum(target * log_softmax(logits / T))`, averaged over patients. A
    patient without labels has a zero target and adds nothing to the loss.
    """
    if not 0 < bounds[0] < 1 < bounds[1]:
        raise ConfigError(f"temperature bounds must satisfy 0 < min < 1 < max, got {bounds}")
    truth, logits = check_truth_prob(truth, logits, what="logits", unit_interval=False)
    counts = truth.sum(axis=1, keepdims=True)
    if not counts.any():
        raise DataError("no patient has a label: a softmax temperature cannot be fitted")
    target = truth / np.maximum(counts, 1)

    def loss(log_t: float) -> float:
        return float(-np.mean(np.sum(target * log_softmax(logits / math.exp(log_t), axis=1), axis=1)))

    return _fit_log_temperature(loss, bounds)


# --- measuring calibration ---------------------------------------------------------------------


def _bin_stats(truth: Any, prob: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if n_bins < 1:
        raise ConfigError(f"the number of calibration bins must be at least 1, got {n_bins}")
    y = np.asarray(truth, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise DataError(f"truth and prob must have the same non-zero size, got {y.size} and {p.size}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError("prob must be finite and in [0, 1]")
    # Equal-width bins on [0, 1]; p = 1 belongs to the last bin.
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    return (
        counts,
        np.bincount(idx, weights=y, minlength=n_bins),
        np.bincount(idx, weights=p, minlength=n_bins),
    )


def expected_calibration_error(truth: Any, prob: Any, n_bins: int = 15) -> float:
    """Expected calibration error of positive-class probabilities, all entries pooled.

    Entries are put in `n_bins` equal-width bins of predicted probability; ECE is the mean over
    entries of |observed positive rate - mean predicted probability| of their bin. Any shape is
    accepted and flattened; use `per_class_ece` for one value per class.
    """
    counts, pos, conf = _bin_stats(truth, prob, n_bins)
    return float(np.abs(pos - conf).sum() / counts.sum())


def per_class_ece(truth: Any, prob: Any, n_bins: int = 15) -> np.ndarray:
    """`expected_calibration_error` of each class (column) of (patients x labels) matrices."""
    truth, prob = check_truth_prob(truth, prob)
    return np.array(
        [expected_calibration_error(truth[:, j], prob[:, j], n_bins) for j in range(truth.shape[1])]
    )


def reliability_curve(truth: Any, prob: Any, n_bins: int = 10) -> dict[str, list[Any]]:
    """Points of a reliability diagram, all entries pooled (slice columns for one class).

    Returns lists of length `n_bins`: `bin_centers`; `accuracy`, the observed positive rate in
    each bin; `confidence`, the mean predicted probability; `counts`. Empty bins have None as
    accuracy and confidence.
    """
    counts, pos, conf = _bin_stats(truth, prob, n_bins)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    return {
        "bin_centers": [float(c) for c in centers],
        "accuracy": [float(s / c) if c else None for s, c in zip(pos, counts, strict=True)],
        "confidence": [float(s / c) if c else None for s, c in zip(conf, counts, strict=True)],
        "counts": [int(c) for c in counts],
    }


# --- the calibration a checkpoint carries ---------------------------------------------------------


def scores_from_logits(truth: Any, logits: Any, head: str, temperatures: Any = None) -> dict[str, float]:
    """Official ODIR score at 0.5 and macro AUROC of logits, each from the right scores.

    Decisions (official kappa and F1) on the head's decision scores, rankings (official pooled AUC,
    macro AUROC) on its ranking scores (`eyefuse.models.checkpoint.calibrated_probabilities` with and
    without `ranking`). One function so that validation during training and evaluation afterwards
    score alike.
    """
    decisions = calibrated_probabilities(logits, head, temperatures)
    ranking = calibrated_probabilities(logits, head, temperatures, ranking=True)
    return {**official_score(truth, decisions, rank_prob=ranking), "macro_auroc": macro_auroc(truth, ranking)}


def fit_calibration(
    truth: Any,
    logits: Any,
    *,
    head: str,
    cfg: Any,
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fit temperatures (when `cfg.calibrate`) then per-class thresholds on calibrated probabilities.

    Meant for the validation split only; the caller records which split it was. Returns the JSON
    fields stored in a checkpoint's metadata: `temperatures` (L floats for the sigmoid head, one for
    the softmax head), `thresholds` (L floats),
    `threshold_method`, `calibration_warnings`, and the validation ECE before and after (None for
    the softmax head, whose scores are not per-label probabilities: an ECE would measure nothing).
    """
    truth, logits = check_truth_prob(truth, logits, what="logits", unit_interval=False)
    n_labels = truth.shape[1]
    warnings: list[str] = []
    temps = np.ones(1 if head == "softmax" else n_labels)  # the softmax head has one shared temperature
    if cfg.calibrate:
        if head == "softmax":
            temps[:] = fit_softmax_temperature(truth, logits)
        else:
            fit = fit_temperatures(truth, logits, label_names=label_names)
            temps = fit.temperatures
            warnings += fit.warnings
    prob_before = calibrated_probabilities(logits, head)
    prob = calibrated_probabilities(logits, head, temps)
    thr = fit_thresholds(truth, prob, method=cfg.threshold_method, label_names=label_names)
    warnings += thr.warnings
    return {
        "temperatures": [float(t) for t in temps],
        "thresholds": [float(t) for t in thr.thresholds],
        "threshold_method": cfg.threshold_method,
        "calibration_warnings": warnings,
        "val_ece_before": expected_calibration_error(truth, prob_before) if head == "sigmoid" else None,
        "val_ece_after": expected_calibration_error(truth, prob) if head == "sigmoid" else None,
    }
