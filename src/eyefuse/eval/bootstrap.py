"""Percentile bootstrap confidence intervals over patients: any metric function of (truth, prob),
resampled by row from a seeded generator, with each interval saying how many resamples it rests on."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.official import official_score, official_score_fast


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
