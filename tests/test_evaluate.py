"""evaluate, score, ablate and demo end to end on a tiny synthetic dataset and a tiny model (the
session's `synth_dataset` and `tiny_run`, see conftest.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from eyefuse.errors import ConfigError
from helpers import TINY_BACKBONE, set_args

TINY = [
    "preprocess.size=64",
    f"model.backbone={TINY_BACKBONE}",
    "model.pretrained=false",
    "train.batch_size=8",
    "train.num_workers=0",
    "train.channels_last=false",
    "train.device=cpu",
    "eval.bootstrap=40",
]


@pytest.mark.slow
def test_evaluation_predicts_in_float32_whatever_train_amp(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eyefuse evaluate` scores the float32 logits that `eyefuse predict` and the service give, even
    where `train.amp` would autocast (bf16 on CPUs with native bf16, and on CUDA)."""
    import torch

    from eyefuse.train import engine
    from eyefuse.workflows.evaluate import predict_split

    monkeypatch.setattr(engine, "amp_dtype", lambda setting, device: None)
    plain = predict_split(tiny_run, "offsite", progress=False).logits
    monkeypatch.setattr(engine, "amp_dtype", lambda setting, device: torch.bfloat16)
    np.testing.assert_array_equal(predict_split(tiny_run, "offsite", progress=False).logits, plain)


@pytest.mark.slow
def test_thresholds_are_fitted_on_validation_only(tiny_run: Path) -> None:
    from eyefuse.config import EvalConfig
    from eyefuse.eval.calibration import fit_calibration
    from eyefuse.models.checkpoint import read_meta
    from eyefuse.workflows.evaluate import predict_split

    run = tiny_run
    meta = read_meta(run / "best")
    assert meta["calibration_split"]["name"] == "val"
    cfg = EvalConfig(threshold_method=meta["threshold_method"])
    refit = {}
    for split in ("val", "offsite"):
        sp = predict_split(run, split, allow_same_split=True, progress=False)
        refit[split] = fit_calibration(sp.truth, sp.logits, head="sigmoid", cfg=cfg)
    np.testing.assert_allclose(meta["thresholds"], refit["val"]["thresholds"], atol=1e-9)
    np.testing.assert_allclose(meta["temperatures"], refit["val"]["temperatures"], rtol=1e-6)
    assert not np.allclose(meta["thresholds"], refit["offsite"]["thresholds"])


@pytest.mark.slow
def test_evaluate_writes_report_and_official_csv(synth_dataset: Path, tiny_run: Path, tmp_path: Path) -> None:
    from eyefuse.cli import main
    from eyefuse.eval.score import score_files
    from eyefuse.workflows.evaluate import run_evaluate

    data, run = synth_dataset, tiny_run
    summary = run_evaluate(run, split="offsite", out=tmp_path / "rep", progress=False)
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "report.md").is_file()
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["evaluation"]["n_patients"] == summary.n_patients == 16
    assert metrics["context"]["evaluated_split"]["name"] == "offsite"
    assert metrics["context"]["synthetic"] is True
    # the submission CSV scores, with the official code, to what the report says
    truth = data / "Off-site Test Set" / "Annotation" / "off-site test annotation (English).xlsx"
    scored = score_files(summary.submission, truth)
    assert scored.final == pytest.approx(metrics["evaluation"]["official"]["final"], abs=1e-9)
    # The official score of the raw and of the calibrated probabilities, and what each column uses.
    variants = {v["scores"]: v for v in metrics["evaluation"]["official_variants"]}
    calibrated = variants["calibrated (checkpoint temperatures)"]
    assert calibrated["final"] == pytest.approx(metrics["evaluation"]["official"]["final"], abs=1e-9)
    assert "raw (no temperatures)" in variants
    assert metrics["context"]["scores"]["per_label_probabilities"] is True
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "never the fitted thresholds" in html and "raw (no temperatures)" in html
    assert main(["score", "--predictions", str(summary.submission), "--truth", str(truth), "--json"]) == 0
    # the per-patient scores `eyefuse compare` reads: the same patients, truth and figures
    from eyefuse.eval.compare import ranking_macro_auroc
    from eyefuse.eval.predictions import read_predictions

    pred = read_predictions(summary.predictions)
    assert summary.predictions == tmp_path / "rep" / "predictions.csv" and len(pred.ids) == 16
    assert ranking_macro_auroc(pred.truth, pred.scores) == pytest.approx(
        metrics["evaluation"]["macro"]["auroc"], abs=1e-6
    )


@pytest.mark.slow
def test_evaluate_refuses_the_calibration_split(tiny_run: Path, tmp_path: Path) -> None:
    from eyefuse.workflows.evaluate import run_evaluate

    run = tiny_run
    with pytest.raises(ConfigError, match="fitted on the 'val' split"):
        run_evaluate(run, split="val", out=tmp_path / "no", progress=False)
    assert not (tmp_path / "no").exists()
    run_evaluate(run, split="val", out=tmp_path / "yes", allow_same_split=True, progress=False)
    html = (tmp_path / "yes" / "report.html").read_text()
    assert "fitted on the evaluated split" in html
    with pytest.raises(ConfigError, match="no such split"):
        run_evaluate(run, split="onsite", out=tmp_path / "x", progress=False)


@pytest.mark.slow
def test_ablation_runs_and_resumes(synth_dataset: Path, tmp_path: Path) -> None:
    from eyefuse.workflows.ablation import run_ablation

    data = synth_dataset
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: demo\n"
        f"set: [{', '.join([*TINY, 'train.epochs=1'])}]\n"
        "factors:\n  model.fusion: [ffm, concat]\n"
        "seeds: [0]\nbootstrap: 30\n"
    )
    first = run_ablation(data, str(grid), tmp_path / "abl", progress=False)
    assert (first.trained, first.skipped) == (2, 0)
    assert [r["cell"] for r in first.rows] == ["reference", "fusion=concat"]
    assert first.rows[0]["delta_final"] == 0.0
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "fusion=concat" in table and "Δ final" in table
    assert first.rows[1]["verdict_final"] in ("better", "worse", "not distinguishable")
    assert first.rows[1]["verdict_final"] in table
    # labels called at the official 0.5: what the ODIR final's decisions count
    with open(tmp_path / "abl" / "cells" / "reference" / "seed0" / "predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    called = np.mean([sum(float(v) >= 0.5 for k, v in r.items() if k.startswith("prob_")) for r in rows])
    assert first.rows[0]["labels_at_0_5"] == pytest.approx(called, abs=0.005) and "labels at 0.5" in table
    # `eyefuse compare` on the cells' seed folders gives the table's paired difference
    from eyefuse.workflows.compare import run_compare

    cells = tmp_path / "abl" / "cells"
    cmp = run_compare([cells / "fusion=concat" / "seed0"], [cells / "reference" / "seed0"], n_boot=30)
    auroc = next(c for c in cmp.comparisons if c.metric == "macro AUROC")
    assert round(auroc.diff, 4) == first.rows[1]["delta_macro_auroc"]
    assert (round(auroc.lo, 4), round(auroc.hi, 4)) == (
        first.rows[1]["delta_macro_auroc_lo"],
        first.rows[1]["delta_macro_auroc_hi"],
    )
    second = run_ablation(data, str(grid), tmp_path / "abl", progress=False)
    assert (second.trained, second.skipped) == (0, 2)
    assert second.rows == first.rows
    assert "Training and evaluation time of these 2 runs" in table and "CPU-minutes" in table
    # a study in progress: seed 1 has not run, so --table-only tabulates seed 0 and trains nothing
    partial = run_ablation(data, str(grid), tmp_path / "abl", progress=False, table_only=True, seeds=[0, 1])
    assert (partial.trained, partial.skipped) == (0, 2)
    assert partial.rows == first.rows and "1 seed(s): 0;" in partial.markdown
    assert not (tmp_path / "abl" / "cells" / "reference" / "seed1").exists()
    with pytest.raises(ConfigError, match="no seed has finished"):
        run_ablation(data, str(grid), tmp_path / "empty", progress=False, table_only=True)
    assert not (tmp_path / "empty").exists()
    with pytest.raises(ConfigError, match="at least one seed"):
        run_ablation(data, str(grid), tmp_path / "abl", progress=False, seeds=[])


@pytest.mark.slow
def test_ablation_cross_validated_scores_every_pool_patient_once(synth_dataset: Path, tmp_path: Path) -> None:
    """`folds: 2`: every cell trains once per fold and is scored on both test parts together."""
    from eyefuse.data.splits import read_split
    from eyefuse.eval.predictions import read_predictions
    from eyefuse.workflows.ablation import run_ablation

    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: demo\n"
        f"set: [{', '.join([*TINY, 'train.epochs=1'])}]\n"
        "factors:\n  model.fusion: [concat]\n"
        "seeds: [0]\nbootstrap: 30\nfolds: 2\n"
    )
    study = tmp_path / "cv"
    first = run_ablation(synth_dataset, str(grid), study, progress=False)
    assert (first.trained, first.skipped) == (4, 0)
    folds = [read_split(study / "folds" / f"fold{k}.csv") for k in (1, 2)]
    tested = [{key[1] for key, s in f.items() if s == "test"} for f in folds]
    assert not tested[0] & tested[1]
    seen = []
    for k in (1, 2):
        ran = read_split(study / "cells" / "fusion=concat" / "seed0" / f"fold{k}" / "split.csv")
        assert ran == folds[k - 1]  # each fold's run trained on that fold's split
        seen += read_predictions(
            study / "cells" / "fusion=concat" / "seed0" / f"fold{k}" / "predictions.csv"
        ).ids
    assert len(seen) == len(set(seen)) and set(seen) <= tested[0] | tested[1]
    assert f"the test parts of 2 cross-validation folds together ({len(seen)} patients" in first.markdown
    assert "Training and evaluation time of these 4 runs" in first.markdown
    # `eyefuse compare` reads a cross-validated seed folder as one run: the table's difference
    from eyefuse.workflows.compare import run_compare

    cells = study / "cells"
    cmp = run_compare([cells / "fusion=concat" / "seed0"], [cells / "reference" / "seed0"], n_boot=30)
    auroc = next(c for c in cmp.comparisons if c.metric == "macro AUROC")
    assert cmp.n_patients == len(seen) and round(auroc.diff, 4) == first.rows[1]["delta_macro_auroc"]
    again = run_ablation(synth_dataset, str(grid), study, progress=False)
    assert (again.trained, again.skipped) == (0, 4) and again.rows == first.rows
    assert run_ablation(synth_dataset, str(grid), study, progress=False, table_only=True).rows == first.rows
    # the study keeps its folds; a split file cannot be combined with them
    grid.write_text(grid.read_text().replace("folds: 2", "folds: 3"))
    with pytest.raises(ConfigError, match="this study has 2 folds, the grid asks for 3"):
        run_ablation(synth_dataset, str(grid), study, progress=False)
    with pytest.raises(ConfigError, match="folds make the study's splits: drop data.split_file"):
        run_ablation(
            synth_dataset,
            str(grid),
            tmp_path / "cv2",
            progress=False,
            extra_set=[f"data.split_file={study / 'folds' / 'fold1.csv'}"],
        )
    grid.write_text(grid.read_text().replace("folds: 3", "folds: 1"))
    with pytest.raises(ConfigError, match="folds must be an integer of at least 2"):
        run_ablation(synth_dataset, str(grid), tmp_path / "cv3", progress=False)


@pytest.mark.slow
def test_ablation_keeps_the_given_split_and_gives_a_split_factor_its_own(
    synth_dataset: Path, tmp_path: Path
) -> None:
    """A learning curve: the study's split from `data.split_file`, a cell with half the training
    patients from `eyefuse split --train-fraction 0.5`, paired on the same evaluated patients."""
    from eyefuse.data.splits import read_split, split_dataset
    from eyefuse.workflows.ablation import run_ablation

    full, half = tmp_path / "full.csv", tmp_path / "curve" / "half.csv"
    half.parent.mkdir()
    split_dataset(synth_dataset, full, seed=4)
    split_dataset(synth_dataset, half, seed=4, train_fraction=0.5)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: demo\n"
        f"set: [{', '.join([*TINY, 'train.epochs=1', f'data.split_file={full}'])}]\n"
        f"factors:\n  data.split_file: [{half}]\n"
        "seeds: [0]\nbootstrap: 30\n"
    )
    study = tmp_path / "abl"
    summary = run_ablation(synth_dataset, str(grid), study, progress=False)
    assert [r["cell"] for r in summary.rows] == ["reference", "split_file=half.csv"]
    assert (study / "split.csv").read_bytes() == full.read_bytes()  # the given split, not a new one
    ran = {
        c: read_split(study / "cells" / c / "seed0" / "split.csv")
        for c in ("reference", "split_file=half.csv")
    }
    assert ran["reference"] == read_split(full) and ran["split_file=half.csv"] == read_split(half)
    counts = {c: sum(v == "train" for v in r.values()) for c, r in ran.items()}
    assert 0 < counts["split_file=half.csv"] < counts["reference"]
    # a study keeps its split: another one on a rerun is refused, and nothing is lost
    other = tmp_path / "other.csv"
    split_dataset(synth_dataset, other, seed=9)
    with pytest.raises(ConfigError, match="differs from this study's split"):
        run_ablation(synth_dataset, str(grid), study, progress=False, extra_set=[f"data.split_file={other}"])
    assert (study / "split.csv").read_bytes() == full.read_bytes()


def test_ablation_split_factor_errors(tmp_path: Path) -> None:
    from eyefuse.workflows.ablation import grid_cells, load_grid

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for f in ("a/s.csv", "b/s.csv"):
        (tmp_path / f).write_text("patient_id,split\n")
    grid = tmp_path / "g.yaml"
    grid.write_text(f"base: demo\nfactors:\n  data.split_file: [{tmp_path / 'a' / 'gone.csv'}]\n")
    with pytest.raises(ConfigError, match="gone.csv does not exist"):
        grid_cells(load_grid(str(grid)))
    grid.write_text(
        f"base: demo\nfactors:\n  data.split_file: [{tmp_path / 'a/s.csv'}, {tmp_path / 'b/s.csv'}]\n"
    )
    with pytest.raises(ConfigError, match="share the folder name"):
        grid_cells(load_grid(str(grid)))


def test_ablation_grid_errors(tmp_path: Path) -> None:
    from eyefuse.workflows.ablation import grid_cells, load_grid

    cells = grid_cells(load_grid("paper"))
    names = [c.name for c in cells]
    assert names[0] == "reference" and "attention=none" in names and "fusion=single" in names
    assert "enhance=clahe" in names and "head=sigmoid" in names and "fusion=ffm" not in names
    real = [c.name for c in grid_cells(load_grid("real-study"))]  # shipped in configs/grids
    assert real == ["reference", "fusion=single", "attention=none", "enhance=none", "head=softmax"]
    with pytest.raises(ConfigError, match="neither a shipped grid"):
        load_grid("no-such-grid")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: demo\nfactors:\n  model.fusoin: [concat]\n")
    with pytest.raises(ConfigError, match="model.fusoin"):
        grid_cells(load_grid(str(bad)))
    bad.write_text("base: demo\nfactorz: {}\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_grid(str(bad))


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eyefuse.cli import main

    argv = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--patients",
        "30",
        "--test-patients",
        "12",
        "--max-side",
        "160",
        "--compare-single",
        "--seeds",
        "2",
        "--no-progress",
        *set_args([*TINY, "train.epochs=1"]),
    ]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    assert "ODIR final (official)" in out
    assert "single-eye (no fusion) baseline, 2 training seeds each" in out
    # Every comparison line carries its interval and one of the three verdicts, never a bare "beats".
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(("ODIR final:", "macro AUROC:"))]
    assert len(lines) == 2
    for line in lines:
        assert "95 % CI" in line and "2 vs 2 seeds" in line
        assert line.endswith(("is better", "is worse", "are not distinguishable"))
    assert "beats" not in out
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
    for run in ("run-single", "run-seed1", "run-single-seed1"):
        assert (tmp_path / "demo" / run / "best" / "meta.json").is_file()
