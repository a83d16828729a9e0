"""The paired comparison behind every "A is better than B": verdicts on constructed predictions."""

from __future__ import annotations

import numpy as np
import pytest

from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.compare import (
    official_final,
    paired_comparison,
    ranking_macro_auroc,
    stack_scores,
    verdict_of,
)
from eyefuse.eval.metrics import macro_auroc, official_score


def _truth(n: int = 120, labels: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, labels)) < 0.4).astype(int)


def _scores(truth: np.ndarray, signal: float, seed: int) -> np.ndarray:
    """Probabilities that rank the truth with strength `signal` (0: pure noise)."""
    rng = np.random.default_rng(seed)
    z = signal * (truth - 0.5) + rng.normal(0, 1, truth.shape)
    return 1 / (1 + np.exp(-z))


def test_verdict_wording_follows_the_interval() -> None:
    assert verdict_of(0.01, 0.05) == "better"
    assert verdict_of(-0.05, -0.01) == "worse"
    assert verdict_of(-0.01, 0.05) == "not distinguishable"
    assert verdict_of(0.0, 0.05) == "not distinguishable"  # touching zero is not "better"


def test_clear_difference_is_better_and_worse_when_swapped() -> None:
    truth = _truth()
    good = [_scores(truth, 4.0, s) for s in range(3)]
    poor = [_scores(truth, 0.5, 10 + s) for s in range(3)]
    c = paired_comparison(truth, good, poor, macro_auroc, metric_name="macro AUROC", n_boot=200)
    assert c.verdict == "better" and c.lo > 0 and c.lo <= c.diff <= c.hi
    # The point estimate is the mean over seeds of each arm, differenced.
    expect = np.mean([macro_auroc(truth, p) for p in good]) - np.mean([macro_auroc(truth, p) for p in poor])
    assert c.diff == pytest.approx(expect)
    assert (c.a_seeds, c.b_seeds, c.n_patients) == (3, 3, truth.shape[0])
    swapped = paired_comparison(truth, poor, good, macro_auroc, n_boot=200)
    assert swapped.verdict == "worse" and swapped.hi < 0
    assert swapped.diff == pytest.approx(-c.diff)
    assert "is better" in c.sentence() and "95 % CI" in c.sentence()


def test_equally_good_models_are_not_distinguishable() -> None:
    truth = _truth()
    a = [_scores(truth, 2.0, s) for s in range(3)]
    b = [_scores(truth, 2.0, 20 + s) for s in range(3)]  # same quality, other noise
    c = paired_comparison(truth, a, b, macro_auroc, n_boot=300)
    assert c.verdict == "not distinguishable"
    assert c.lo < 0 < c.hi and c.lo <= c.diff <= c.hi
    assert "not distinguishable" in c.sentence()


def test_seed_noise_widens_the_interval() -> None:
    """Seeds that disagree with each other make the interval wider than one seed's patients alone."""
    truth = _truth(200)
    steady = [_scores(truth, 2.0, 7)] * 3
    varied = [_scores(truth, s, 30 + i) for i, s in enumerate((0.5, 2.0, 3.5))]
    ref = [_scores(truth, 2.0, 40)]
    narrow = paired_comparison(truth, steady, ref, macro_auroc, n_boot=300)
    wide = paired_comparison(truth, varied, ref, macro_auroc, n_boot=300)
    assert wide.hi - wide.lo > 1.5 * (narrow.hi - narrow.lo)


def test_official_final_ranks_the_ranking_slice() -> None:
    truth = _truth(60)
    decisions = _scores(truth, 2.0, 1)
    ranking = _scores(truth, 4.0, 2)
    entry = stack_scores(decisions, ranking)
    assert entry.shape == (60, 2, 4)
    expect = official_score(truth, decisions, rank_prob=ranking)["final"]
    assert official_final(truth, entry) == pytest.approx(expect)
    assert official_final(truth, decisions) == pytest.approx(official_score(truth, decisions)["final"])
    assert ranking_macro_auroc(truth, entry) == pytest.approx(macro_auroc(truth, ranking))


def test_bad_inputs_are_refused() -> None:
    truth = _truth(30)
    p = _scores(truth, 1.0, 0)
    with pytest.raises(ConfigError, match="at least one seed"):
        paired_comparison(truth, [], [p], macro_auroc)
    with pytest.raises(DataError, match="29 patients"):
        paired_comparison(truth, [p[:29]], [p], macro_auroc)
    with pytest.raises(DataError, match="differ in shape"):
        stack_scores(p, p[:, :2])
