"""`eyefuse compare` and the `predictions.csv` it reads: separately trained runs compared on the same
patients, with every user error as one line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eyefuse.cli import EXIT_OK, EXIT_USAGE, main
from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.compare import official_final, paired_comparison, ranking_macro_auroc, stack_scores
from eyefuse.eval.predictions import read_predictions, write_predictions
from eyefuse.workflows.compare import run_compare

LABELS = ("N", "D", "G", "C", "A", "H", "M", "O")


def _truth(n: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = (rng.random((n, len(LABELS))) < 0.3).astype(int)
    t[0], t[1] = 1, 0  # every label has positives and negatives
    return t


def _scores(truth: np.ndarray, signal: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(signal * (truth - 0.5) + rng.normal(0, 1, truth.shape))))


def _write(
    path: Path, ids: list[str], truth: np.ndarray, prob: np.ndarray, rank: np.ndarray | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(path, ids, truth, prob, prob if rank is None else rank, LABELS)
    return path


def _arms(tmp_path: Path, n: int = 80) -> tuple[list[str], np.ndarray, list[Path], list[Path]]:
    truth = _truth(n)
    ids = [str(1000 + i) for i in range(n)]
    a = [_write(tmp_path / f"a{s}" / "predictions.csv", ids, truth, _scores(truth, 4.0, s)) for s in range(2)]
    b = [
        _write(tmp_path / f"b{s}" / "predictions.csv", ids, truth, _scores(truth, 0.5, 10 + s))
        for s in range(2)
    ]
    return ids, truth, a, b


def test_predictions_round_trip_with_decision_and_ranking_scores(tmp_path: Path) -> None:
    truth = _truth(12)
    prob, rank = _scores(truth, 2.0, 0), _scores(truth, 2.0, 1)
    path = _write(tmp_path / "p.csv", [f"p{i}" for i in range(12)], truth, prob, rank)
    p = read_predictions(path)
    assert p.label_names == LABELS and p.ids[0] == "p0"
    np.testing.assert_array_equal(p.truth, truth)
    np.testing.assert_allclose(p.scores, stack_scores(prob, rank), rtol=1e-7)
    # a file without rank_* columns (written before they existed) ranks its decisions
    lines = path.read_text().splitlines()
    n = len(LABELS)
    old = [",".join(r.split(",")[: 1 + 2 * n]) for r in lines]
    (tmp_path / "old.csv").write_text("\n".join(old) + "\n")
    np.testing.assert_allclose(read_predictions(tmp_path / "old.csv").scores[:, 1], prob, rtol=1e-7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("ID,true_N,prob_X\n1,0,0.5\n", "row 1: not a predictions file"),
        ("ID,true_N,prob_N\n1,0,0.5\n1,1,0.2\n", "row 3: patient 1 is listed twice"),
        ("ID,true_N,prob_N\n1,0\n", "row 2: 2 fields"),
        ("ID,true_N,prob_N\n1,0,high\n", "row 2: a label or score is not a number"),
        ("ID,true_N,prob_N\n1,2,0.5\n", "row 2: true_\\* labels must be 0 or 1"),
        ("ID,true_N,prob_N\n1,1,1.5\n", "row 2: scores must be probabilities"),
        ("ID,true_N,prob_N\n", "no patients"),
    ],
)
def test_malformed_predictions_name_the_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_predictions(path)
    assert str(path) in str(err.value)


def test_compare_is_the_paired_bootstrap_of_the_two_arms(tmp_path: Path) -> None:
    ids, truth, a, b = _arms(tmp_path)
    summary = run_compare([p.parent for p in a], b, names=("good", "weak"), n_boot=200, out=tmp_path / "cmp")
    by_metric = {c.metric: c for c in summary.comparisons}
    sa = [read_predictions(p).scores for p in a]
    sb = [read_predictions(p).scores for p in b]
    direct = paired_comparison(truth, sa, sb, ranking_macro_auroc, names=("good", "weak"), n_boot=200)
    got = by_metric["macro AUROC"]
    assert (got.diff, got.lo, got.hi) == (direct.diff, direct.lo, direct.hi)
    assert got.verdict == "better"
    final = paired_comparison(truth, sa, sb, official_final, n_boot=200)
    assert by_metric["ODIR final"].diff == pytest.approx(final.diff)
    assert {f"AUROC {x}" for x in LABELS} <= by_metric.keys()
    # the reverse comparison is the mirror image
    back = {c.metric: c for c in run_compare(b, a, names=("weak", "good"), n_boot=200).comparisons}
    assert back["macro AUROC"].verdict == "worse"
    assert back["macro AUROC"].diff == pytest.approx(-got.diff)
    written = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert written["n_patients"] == len(ids) and written["arms"]["good"]["runs"] == 2
    assert "| macro AUROC |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert "note: one run" not in summary.markdown


def test_compare_pairs_patients_by_id_whatever_the_row_order(tmp_path: Path) -> None:
    ids, truth, a, b = _arms(tmp_path)
    order = np.random.default_rng(3).permutation(len(ids))
    p = read_predictions(b[0])
    shuffled = _write(
        tmp_path / "shuffled.csv",
        [ids[i] for i in order],
        truth[order],
        p.scores[order, 0],
        p.scores[order, 1],
    )
    plain = run_compare(a, [b[0]], n_boot=100)
    mixed = run_compare(a, [shuffled], n_boot=100)
    assert [c.diff for c in plain.comparisons] == pytest.approx([c.diff for c in mixed.comparisons])
    assert [c.lo for c in plain.comparisons] == pytest.approx([c.lo for c in mixed.comparisons])
    assert "note: one run in an arm" in plain.markdown


def test_compare_refuses_what_is_not_paired(tmp_path: Path) -> None:
    ids, truth, a, b = _arms(tmp_path)
    p = read_predictions(b[0])
    fewer = _write(tmp_path / "fewer.csv", ids[:-3], truth[:-3], p.scores[:-3, 0])
    with pytest.raises(DataError, match="3 of its patients missing .* same patients"):
        run_compare(a, [fewer], n_boot=10)
    relabelled = truth.copy()
    relabelled[5, 0] = 1 - relabelled[5, 0]
    other = _write(tmp_path / "other.csv", ids, relabelled, p.scores[:, 0])
    with pytest.raises(DataError, match=f"patient {ids[5]} has other labels"):
        run_compare(a, [other], n_boot=10)
    with pytest.raises(ConfigError, match="given twice"):
        run_compare(a, [a[0].parent], n_boot=10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no predictions.csv in this folder"):
        run_compare(a, [tmp_path / "empty"], n_boot=10)
    with pytest.raises(ConfigError, match="two different names"):
        run_compare(a, b, names=("x", "x"), n_boot=10)


def test_compare_cli_prints_the_table_and_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, a, b = _arms(tmp_path)
    argv = ["compare", "--a", *map(str, a), "--b", *map(str, b), "--names", "good,weak", "--bootstrap", "50"]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "good vs weak on 80 patients (2 vs 2 run(s); 50 paired" in out and "| macro AUROC |" in out
    for bad, message in (
        (["compare", "--a", str(a[0]), "--b", str(tmp_path / "nope")], "--b"),
        (["compare", "--a", str(a[0]), "--b", str(b[0]), "--names", "one"], "--names"),
        (["compare", "--a", str(a[0]), "--b", str(b[0]), "--bootstrap", "0"], "--bootstrap"),
    ):
        assert main(bad) == EXIT_USAGE
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "comparison.md").exists()


def test_a_cross_validated_run_is_its_folds_read_as_one(tmp_path: Path) -> None:
    ids, truth, a, b = _arms(tmp_path)
    half = len(ids) // 2
    for arm, files in (("cv_a", a), ("cv_b", b)):
        for k, part in enumerate((slice(0, half), slice(half, None)), start=1):
            p = read_predictions(files[0])
            _write(
                tmp_path / arm / f"fold{k}" / "predictions.csv",
                ids[part],
                truth[part],
                p.scores[part, 0],
                p.scores[part, 1],
            )
    whole = run_compare([a[0]], [b[0]], n_boot=100)
    folded = run_compare([tmp_path / "cv_a"], [tmp_path / "cv_b"], n_boot=100)
    assert [(c.diff, c.lo, c.hi) for c in whole.comparisons] == [
        (c.diff, c.lo, c.hi) for c in folded.comparisons
    ]
    assert folded.files == ([str(tmp_path / "cv_a")], [str(tmp_path / "cv_b")])
    # a patient in two folds' test parts is not cross-validation
    p = read_predictions(b[0])
    _write(tmp_path / "cv_b" / "fold3" / "predictions.csv", ids[:2], truth[:2], p.scores[:2, 0])
    with pytest.raises(DataError, match=f"patient {ids[0]} is a test patient of fold1 too"):
        run_compare([tmp_path / "cv_a"], [tmp_path / "cv_b"], n_boot=10)
