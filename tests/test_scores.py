"""Which scores each number uses: the softmax head ranks its softmax and decides on p / max p; the
report says what the official columns see and shows raw against calibrated; predict names its rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from eyefuse.eval.calibration import scores_from_logits
from eyefuse.eval.metrics import evaluate_predictions, fast_auc, macro_auroc, official_score
from eyefuse.eval.report import write_report
from eyefuse.models.checkpoint import CheckpointMeta, calibrated_probabilities
from eyefuse.serve.predict import run_predict
from eyefuse.workflows.evaluate import SplitPredictions, official_variants
from helpers import draw_eye, make_checkpoint


def _softmax_case(n: int = 200, labels: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One label per patient; logits whose top label is usually the true one."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, labels), dtype=int)
    truth[np.arange(n), rng.integers(0, labels, n)] = 1
    logits = 1.5 * truth + rng.normal(0, 1, truth.shape)
    return truth, logits


def test_softmax_ranking_breaks_the_ties_of_p_over_max_p() -> None:
    truth, logits = _softmax_case()
    decisions = calibrated_probabilities(logits, "softmax")
    ranking = calibrated_probabilities(logits, "softmax", ranking=True)
    np.testing.assert_allclose(ranking, softmax(logits, axis=1))
    # p / max p gives every patient's top label exactly 1.0: a tie across patients ...
    assert (decisions.max(axis=1) == 1.0).all()
    j = 0
    top = decisions[:, j] == 1.0
    assert top.sum() > 10 and len(np.unique(ranking[top, j])) == top.sum()  # ... the softmax orders them
    ev = evaluate_predictions(
        truth, decisions, label_names=list("ABCD"), thresholds=0.5, n_boot=0, rank_prob=ranking
    )
    for k, row in enumerate(ev["per_class"]):
        assert row["auroc"] == pytest.approx(fast_auc(truth[:, k], ranking[:, k]))
    assert ev["macro"]["auroc"] == pytest.approx(macro_auroc(truth, ranking))
    assert ev["macro"]["auroc"] > macro_auroc(truth, decisions)  # the ties cost AUROC
    assert ev["ranking_separate"] is True
    # Official: kappa and F1 from the decisions at 0.5, the pooled AUC from the ranking scores.
    on_decisions = official_score(truth, decisions)
    assert ev["official"]["kappa"] == pytest.approx(on_decisions["kappa"])
    assert ev["official"]["f1"] == pytest.approx(on_decisions["f1"])
    assert ev["official"]["auc"] == pytest.approx(fast_auc(truth.ravel(), ranking.ravel()))
    # Validation during training scores the same way.
    val = scores_from_logits(truth, logits, "softmax")
    assert val["final"] == pytest.approx(ev["official"]["final"])
    assert val["macro_auroc"] == pytest.approx(ev["macro"]["auroc"])


def test_bootstrap_intervals_rank_the_ranking_scores() -> None:
    truth, logits = _softmax_case(120)
    decisions = calibrated_probabilities(logits, "softmax")
    ranking = calibrated_probabilities(logits, "softmax", ranking=True)
    ev = evaluate_predictions(
        truth, decisions, label_names=list("ABCD"), thresholds=0.5, n_boot=60, rank_prob=ranking
    )
    lo, hi = ev["macro"]["ci"]["auroc"]["lo"], ev["macro"]["ci"]["auroc"]["hi"]
    assert lo <= ev["macro"]["auroc"] <= hi
    plain = evaluate_predictions(truth, decisions, label_names=list("ABCD"), thresholds=0.5, n_boot=60)
    assert plain["macro"]["ci"]["auroc"]["hi"] < hi  # the tied scores' interval sits lower


def _split_predictions(head: str, temps: list[float]) -> SplitPredictions:
    truth, logits = _softmax_case(150, seed=3)
    if head == "sigmoid":
        logits = logits * np.array([0.5, 1.0, 3.0, 1.0])
    return SplitPredictions(
        ids=[str(i) for i in range(len(truth))],
        truth=truth,
        logits=logits,
        prob=calibrated_probabilities(logits, head, temps),
        label_names=tuple("ABCD"),
        thresholds=np.full(4, 0.5),
        meta=CheckpointMeta.from_dict({"config": {"model": {"head": head}}, "label_names": list("ABCD")}),
        patients=[],
        dataset=None,
        dropped=0,
        rank_prob=calibrated_probabilities(logits, head, temps, ranking=True),
        raw_prob=calibrated_probabilities(logits, head),
        raw_rank_prob=calibrated_probabilities(logits, head, ranking=True),
    )


def test_official_score_of_raw_and_calibrated_probabilities() -> None:
    sp = _split_predictions("sigmoid", [2.0, 1.0, 0.3, 1.0])
    rows = {r["scores"]: r for r in official_variants(sp)}
    assert set(rows) == {"raw (no temperatures)", "calibrated (checkpoint temperatures)"}
    raw, cal = rows["raw (no temperatures)"], rows["calibrated (checkpoint temperatures)"]
    assert raw["final"] == pytest.approx(official_score(sp.truth, sp.raw_prob)["final"])
    assert cal["final"] == pytest.approx(official_score(sp.truth, sp.prob)["final"])
    # Per-class temperatures reorder the pooled ranking: the official AUC moves, per-class AUROC not.
    assert raw["auc"] != pytest.approx(cal["auc"], abs=1e-6)
    assert macro_auroc(sp.truth, sp.raw_prob) == pytest.approx(macro_auroc(sp.truth, sp.prob))
    soft = {r["scores"]: r for r in official_variants(_split_predictions("softmax", [1.7]))}
    # The softmax head's submission CSV holds the decision scores only: scored as written.
    assert "submission CSV (calibrated decision scores only)" in soft


@pytest.mark.slow
def test_report_says_what_the_official_columns_use_and_skips_calibration_of_non_probabilities(
    tmp_path: Path,
) -> None:
    sp = _split_predictions("softmax", [1.7])
    ev = evaluate_predictions(
        sp.truth, sp.prob, label_names=list(sp.label_names), thresholds=0.5, n_boot=0, rank_prob=sp.rank_prob
    )
    ev["official_variants"] = official_variants(sp)
    context = {
        "scores": {
            "decisions": "softmax / row max",
            "ranking": "softmax probabilities",
            "per_label_probabilities": False,
        }
    }
    files = write_report(
        tmp_path / "soft", ev, truth=sp.truth, prob=sp.prob, rank_prob=sp.rank_prob, context=context
    )
    md = files.markdown.read_text()
    assert "decision scores (softmax / row max)" in md and "ranking scores (softmax probabilities)" in md
    assert "No reliability diagram" in md and not (tmp_path / "soft" / "figures" / "reliability.png").exists()
    assert "submission CSV (calibrated decision scores only)" in md
    context["scores"]["per_label_probabilities"] = True
    write_report(tmp_path / "sig", ev, truth=sp.truth, prob=sp.prob, rank_prob=sp.rank_prob, context=context)
    assert (tmp_path / "sig" / "figures" / "reliability.png").is_file()


def test_predict_output_names_its_decision_rule(tmp_path: Path) -> None:
    ckpt = make_checkpoint(
        tmp_path / "ckpt",
        thresholds=[0.3] * 8,
        threshold_method="f1",
        calibration_split={"name": "val"},
    )
    left, right = draw_eye(tmp_path / "1_left.png"), draw_eye(tmp_path / "1_right.png")
    summary = run_predict(ckpt, left=left, right=right, out=tmp_path / "out.json", progress=False)
    rule = "probability > the fitted per-class thresholds (f1 on val), not the official 0.5"
    assert json.loads((tmp_path / "out.json").read_text())["model"]["decision_rule"] == rule
    assert f"decisions: {rule}" in str(summary)
    bare = make_checkpoint(tmp_path / "bare")
    assert "no fitted thresholds" in str(run_predict(bare, left=left, right=right, progress=False))
