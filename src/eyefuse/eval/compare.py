"""Is model A better than model B? A paired bootstrap over the same patients, averaged over seeds.

Every "A beats B" the project prints goes through `paired_comparison`. Two arms (A and B), each
trained with one or more seeds, are evaluated on the same test patients. Each bootstrap resample
draws patients with replacement once, and each arm's seeds with replacement, and scores the drawn
seeds of both arms on that same patient draw; the resample's difference is

    mean over A's drawn seeds of metric(A_s)  -  mean over B's drawn seeds of metric(B_s)

so that both sources of noise enter the interval: which patients happened to be in the test set
(the patient draw, shared by both arms: the pairing) and which seed happened to train each model
(the seed draw: seeds that disagree widen the interval; with one seed per arm nothing measures that
noise, which is why a comparison should rest on several). The point estimate is the difference of
the seed means on all patients; the interval is the percentile interval of the resampled
differences. The verdict is "better" when the whole interval lies above zero, "worse" when it lies
below zero and "not distinguishable" otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.metrics import macro_auroc
from eyefuse.eval.official import official_score_fast

#: A metric of (truth, predictions) -> float; predictions are whatever one seed's entry holds.
Metric = Callable[[np.ndarray, np.ndarray], float]

VERDICTS = ("better", "worse", "not distinguishable")


@dataclass(frozen=True)
class Comparison:
    """The paired difference A - B of one metric with its interval and verdict (see the module)."""

    metric: str
    a_name: str
    b_name: str
    a_value: float
    b_value: float
    diff: float
    lo: float
    hi: float
    verdict: str
    n_patients: int
    a_seeds: int
    b_seeds: int
    n_boot: int
    alpha: float

    def sentence(self) -> str:
        """One line: both values, the difference with its interval, and the verdict in words."""
        level = round(100 * (1 - self.alpha))
        verdict = {
            "better": f"{self.a_name} is better",
            "worse": f"{self.a_name} is worse",
            "not distinguishable": f"{self.a_name} and {self.b_name} are not distinguishable",
        }[self.verdict]
        return (
            f"{self.metric}: {self.a_name} {self.a_value:.4f} vs {self.b_name} {self.b_value:.4f}, "
            f"difference {self.diff:+.4f} [{level} % CI {self.lo:+.4f}, {self.hi:+.4f}] "
            f"(paired bootstrap, {self.n_patients} patients x {self.n_boot} resamples, "
            f"{self.a_seeds} vs {self.b_seeds} seeds): {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verdict_of(lo: float, hi: float) -> str:
    """ "better" when the interval lies above 0, "worse" below 0, otherwise "not distinguishable"."""
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "not distinguishable"


def official_final(truth: np.ndarray, pred: np.ndarray) -> float:
    """ODIR final score; `pred` is decision scores (``N x L``) or decisions and ranking scores
    stacked (``N x 2 x L``, see `stack_scores`), whose second slice feeds the pooled AUC."""
    if pred.ndim == 3:
        return official_score_fast(truth, pred[:, 0], rank_prob=pred[:, 1])["final"]
    return official_score_fast(truth, pred)["final"]


def ranking_macro_auroc(truth: np.ndarray, pred: np.ndarray) -> float:
    """Macro AUROC of the ranking scores (the second slice of an ``N x 2 x L`` entry)."""
    return macro_auroc(truth, pred[:, 1] if pred.ndim == 3 else pred)


def stack_scores(prob: Any, rank_prob: Any = None) -> np.ndarray:
    """One seed's entry for `paired_comparison`: decisions and ranking scores as ``N x 2 x L``."""
    prob = np.asarray(prob, dtype=np.float64)
    rank = prob if rank_prob is None else np.asarray(rank_prob, dtype=np.float64)
    if rank.shape != prob.shape:
        raise DataError(f"decision scores {prob.shape} and ranking scores {rank.shape} differ in shape")
    return np.stack([prob, rank], axis=1)


def _metrics(metric: Metric, truth: np.ndarray, preds: Sequence[np.ndarray], idx: Any) -> np.ndarray:
    """The metric of every seed on the patient rows `idx` (NaN where undefined)."""
    vals = [metric(truth[idx], p[idx]) for p in preds]
    return np.array([math.nan if v is None else float(v) for v in vals])


def paired_comparison(
    truth: Any,
    preds_a: Sequence[Any],
    preds_b: Sequence[Any],
    metric: Metric,
    *,
    metric_name: str = "metric",
    names: tuple[str, str] = ("A", "B"),
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Comparison:
    """Paired bootstrap comparison of arm A with arm B on the same patients (see the module).

    Args:
        truth: ``N x L`` 0/1 labels of the test patients.
        preds_a, preds_b: one entry per training seed, each an array whose first axis is the same
            N patients in the same order (``N x L`` probabilities, or `stack_scores` entries).
        metric: ``metric(truth_rows, pred_rows) -> float`` (NaN when undefined on a resample;
            such resamples are left out).
        metric_name, names: for the printed sentence.
        n_boot: resamples; seed: of the resampling generator; alpha: 1 - confidence level.
    """
    truth = np.asarray(truth)
    a = [np.asarray(p, dtype=np.float64) for p in preds_a]
    b = [np.asarray(p, dtype=np.float64) for p in preds_b]
    if not a or not b:
        raise ConfigError("a paired comparison needs at least one seed in each arm")
    if n_boot < 1:
        raise ConfigError(f"bootstrap resamples must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha}")
    n = truth.shape[0]
    for p in (*a, *b):
        if p.shape[0] != n:
            raise DataError(f"predictions for {p.shape[0]} patients compared against {n} truth rows")
    everyone = np.arange(n)
    a_value = float(np.mean(_metrics(metric, truth, a, everyone)))
    b_value = float(np.mean(_metrics(metric, truth, b, everyone)))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)  # one patient draw shared by every seed of both arms
        seeds_a = rng.integers(0, len(a), len(a))  # each arm's seeds drawn with replacement
        seeds_b = rng.integers(0, len(b), len(b))
        d = float(
            np.mean(_metrics(metric, truth, a, idx)[seeds_a])
            - np.mean(_metrics(metric, truth, b, idx)[seeds_b])
        )
        if not math.isnan(d):
            diffs.append(d)
    if not diffs:
        raise DataError(f"{metric_name} is undefined on every bootstrap resample: nothing to compare")
    lo, hi = (float(v) for v in np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
    return Comparison(
        metric=metric_name,
        a_name=names[0],
        b_name=names[1],
        a_value=a_value,
        b_value=b_value,
        diff=a_value - b_value,
        lo=lo,
        hi=hi,
        verdict=verdict_of(lo, hi),
        n_patients=n,
        a_seeds=len(a),
        b_seeds=len(b),
        n_boot=len(diffs),
        alpha=alpha,
    )


def bootstrap_samples(n: int, n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """`n_boot` patient draws with replacement, the same for every arm a table shows."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(n_boot)]


@dataclass(frozen=True)
class ArmFigures:
    """One arm's ODIR final and macro AUROC (means over its seeds) with 95 % percentile intervals
    over patient draws, and the labels per patient its decisions call at the official 0.5."""

    final: float
    final_ci: tuple[float, float]
    auroc: float
    auroc_ci: tuple[float, float]
    labels_at_0_5: float


def _percentile_interval(values: list[float]) -> tuple[float, float]:
    if not values:
        return (math.nan, math.nan)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def arm_figures(truth: np.ndarray, preds: Sequence[np.ndarray], samples: Sequence[np.ndarray]) -> ArmFigures:
    """`ArmFigures` of one arm: `preds` holds one `stack_scores` entry per seed, `samples` the patient
    draws (`bootstrap_samples`); a draw on which a figure is undefined is left out of its interval."""
    k = len(preds)
    finals = [official_final(truth, p) for p in preds]
    aurocs = [ranking_macro_auroc(truth, p) for p in preds]
    boot: dict[str, list[float]] = {"final": [], "auroc": []}
    for idx in samples:
        f = sum(official_final(truth[idx], p[idx]) for p in preds) / k
        a = sum(ranking_macro_auroc(truth[idx], p[idx]) for p in preds) / k
        for key, v in (("final", f), ("auroc", a)):
            if not math.isnan(v):
                boot[key].append(v)
    return ArmFigures(
        final=float(np.mean(finals)),
        final_ci=_percentile_interval(boot["final"]),
        auroc=float(np.mean(aurocs)),
        auroc_ci=_percentile_interval(boot["auroc"]),
        labels_at_0_5=float(np.mean([(p[:, 0] >= 0.5).sum(1).mean() for p in preds])),
    )


__all__ = [
    "VERDICTS",
    "ArmFigures",
    "Comparison",
    "arm_figures",
    "bootstrap_samples",
    "official_final",
    "paired_comparison",
    "ranking_macro_auroc",
    "stack_scores",
    "verdict_of",
]
