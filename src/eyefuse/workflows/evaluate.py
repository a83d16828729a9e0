"""`eyefuse evaluate`: a checkpoint on one split, honestly.

The checkpoint decides everything about inference (preprocessing, temperatures, thresholds); the
split decides the patients. Thresholds and temperatures are fitted on the validation split during
training; evaluating on that same split is refused unless `allow_same_split`, and the report then
says so in a warning at the top.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eyefuse import ODIR_LABELS
from eyefuse.config import config_from_dict
from eyefuse.data.dataset import (
    PairDataset,
    describe_set_aside,
    set_aside_reasons,
    usable_patients,
    write_set_aside,
)
from eyefuse.data.odir import load_dataset
from eyefuse.data.splits import apply_split
from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.metrics import evaluate_predictions, official_score
from eyefuse.eval.predictions import FILE_NAME as PREDICTIONS
from eyefuse.eval.predictions import write_predictions
from eyefuse.eval.report import format_headline, write_report
from eyefuse.eval.score import write_submission
from eyefuse.models.checkpoint import (
    CheckpointMeta,
    calibrate,
    calibrated_probabilities,
    load_model,
    resolve_checkpoint_dir,
)
from eyefuse.train.engine import predict_dataset
from eyefuse.train.run_data import prepared_loader


@dataclass
class SplitPredictions:
    """Calibrated probabilities of one split with the truth, in the dataset's patient order.

    `prob` holds the decision scores (what thresholds apply to), `rank_prob` the scores ranking
    metrics use (the same for the sigmoid head; the softmax itself for the softmax head, see
    `eyefuse.models.binocular.ranking_probabilities`); `raw_prob` and `raw_rank_prob` the same
    without the checkpoint's temperatures.
    """

    ids: list[str]
    truth: np.ndarray
    logits: np.ndarray
    prob: np.ndarray
    label_names: tuple[str, ...]
    thresholds: np.ndarray
    meta: CheckpointMeta
    patients: list[Any]
    dataset: Any
    dropped: int
    rank_prob: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    raw_prob: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    raw_rank_prob: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def head(self) -> str:
        return self.meta.head

    split: str = "test"  #: the split evaluated (the default one when none was asked for)
    set_aside: list[tuple[Any, str, str]] = field(default_factory=list)  #: (patient, split, reason)


def _split_file(ckpt_dir: Path, meta: CheckpointMeta) -> Path:
    """The run's split file: as recorded, or beside the run folder when the run was moved."""
    recorded = Path(meta.split_file or "")
    if recorded.is_file():
        return recorded
    for candidate in (ckpt_dir.parent / "split.csv", ckpt_dir / "split.csv"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{ckpt_dir}: the run's split file {recorded} is gone (expected split.csv in the run)")


def default_split(available: Any) -> str | None:
    """The split `evaluate` uses when none is named: the official off-site test where the dataset
    has one, else the run's own held-out `test` split, else None."""
    for name in ("offsite", "test"):
        if name in available:
            return name
    return None


def predict_split(
    checkpoint: str | os.PathLike[str],
    split: str | None,
    *,
    data: str | os.PathLike[str] | None = None,
    allow_same_split: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> SplitPredictions:
    """Run a checkpoint on every patient of `split` (a name in the run's split file: train, val,
    test, offsite, onsite; None: `default_split`) and return calibrated probabilities. Patients
    whose every eye is missing, excluded or failed preprocessing are set aside and listed."""
    ckpt_dir = resolve_checkpoint_dir(checkpoint)
    meta = CheckpointMeta.read(ckpt_dir)
    cfg = config_from_dict(meta.config)
    root = str(data) if data else cfg.data.root
    if not root:
        raise ConfigError("no dataset: pass --data (the checkpoint records none)")
    dataset = load_dataset(root, problem_images=cfg.data.problem_images)
    if tuple(dataset.label_names) != meta.label_names:
        raise DataError(
            f"the dataset's labels {list(dataset.label_names)} differ from the checkpoint's "
            f"{list(meta.label_names)}",
            file=root,
        )
    splits = apply_split(dataset, _split_file(ckpt_dir, meta))
    have = ", ".join(f"{k} ({len(v)})" for k, v in splits.items() if v)
    if split is None:
        split = default_split(splits)
        if split is None:
            raise ConfigError(f"this run's split has no test patients: choose one with --split ({have})")
    if split not in splits or not splits[split]:
        raise ConfigError(f"--split {split!r}: no such split in this run; it has {have}")
    fitted_on = meta.calibration_split_name
    if fitted_on == split and not allow_same_split:
        raise ConfigError(
            f"the thresholds and temperatures of {ckpt_dir} were fitted on the {split!r} split: evaluating "
            "there overstates performance. Evaluate another split (test, offsite, onsite), or pass "
            "--allow-same-split to do it anyway (the report will say so)"
        )
    if progress:
        print(f"evaluating split {split!r}: preparing {len(splits[split])} patients ...", flush=True)
    loader = prepared_loader(cfg, root, splits[split], progress)
    patients, lost = usable_patients(splits[split], loader.failed)
    if not patients:
        raise DataError(f"no patient of split {split!r} has a usable eye", file=root)
    if progress:
        print(f"predicting {len(patients)} patients ...", flush=True)
    ds = PairDataset(patients, loader, dataset.label_names, size=cfg.preprocess.size)
    dev = torch.device(device)
    model = load_model(ckpt_dir, device=dev)
    out = predict_dataset(model, ds, dev, cfg, autocast=False)  # float32, as predict and the service
    calibrated = calibrate(out["logits"], meta)
    return SplitPredictions(
        ids=[p.id for p in patients],
        truth=out["labels"].astype(int),
        logits=out["logits"],
        prob=calibrated.prob,
        label_names=tuple(dataset.label_names),
        thresholds=calibrated.thresholds,
        meta=meta,
        patients=patients,
        dataset=dataset,
        dropped=len(lost),
        rank_prob=calibrated.rank_prob,
        raw_prob=calibrated_probabilities(out["logits"], meta.head),
        raw_rank_prob=calibrated_probabilities(out["logits"], meta.head, ranking=True),
        split=split,
        set_aside=[(p, split, set_aside_reasons(p, loader.failed)) for p in lost],
    )


#: What each head's decision and ranking scores are, for the report.
SCORE_SOURCES: dict[str, dict[str, str]] = {
    "sigmoid": {
        "decisions": "calibrated sigmoid probabilities, sigmoid(logit / T) with per-class temperatures",
        "ranking": "the same calibrated sigmoid probabilities",
    },
    "softmax": {
        "decisions": "calibrated softmax divided by its row maximum (the decision rule, not probabilities)",
        "ranking": "calibrated softmax probabilities, softmax(logits / T)",
    },
}


def official_variants(sp: SplitPredictions) -> list[dict[str, Any]]:
    """The official ODIR score of the raw (T = 1) and of the calibrated scores of `sp`.

    Temperatures change the official score: the pooled AUC ranks all labels together, so per-class
    temperatures reorder entries across labels, and the 0.5 threshold sees other values. Neither
    uses the fitted per-class thresholds (the official score is always at 0.5). For the softmax
    head a third row scores the submission CSV as written: one matrix of decision scores, whose
    pooled AUC is that of the decision scores (what the challenge's script would compute).
    """
    rows = []
    for name, prob, rank in (
        ("raw (no temperatures)", sp.raw_prob, sp.raw_rank_prob),
        ("calibrated (checkpoint temperatures)", sp.prob, sp.rank_prob),
    ):
        rows.append({"scores": name, **official_score(sp.truth, prob, rank_prob=rank)})
    if sp.head == "softmax":
        rows.append(
            {
                "scores": "submission CSV (calibrated decision scores only)",
                **official_score(sp.truth, sp.prob),
            }
        )
    return rows


@dataclass
class EvaluateSummary:
    headline: str
    report: Path
    submission: Path | None
    n_patients: int
    evaluation: dict[str, Any]
    predictions: Path | None = None

    def __str__(self) -> str:
        lines = [self.headline, f"patients evaluated: {self.n_patients}", f"report: {self.report}"]
        if self.predictions:
            lines.append(f"per-patient scores (for `eyefuse compare`): {self.predictions}")
        if self.submission:
            lines.append(f"official submission CSV: {self.submission}")
        return "\n".join(lines)


def run_evaluate(
    checkpoint: str | os.PathLike[str],
    *,
    split: str | None = None,
    out: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    allow_same_split: bool = False,
    n_boot: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> EvaluateSummary:
    """Predict a split, compute every metric with bootstrap CIs, write the report and the official
    submission CSV into `out`."""
    t0 = time.perf_counter()
    out = Path(out)
    sp = predict_split(
        checkpoint, split, data=data, allow_same_split=allow_same_split, device=device, progress=progress
    )
    split = sp.split
    cfg = sp.meta.config
    boot = cfg["eval"]["bootstrap"] if n_boot is None else n_boot
    if progress:
        print(f"metrics with {boot} bootstrap resamples ...", flush=True)
    evaluation = evaluate_predictions(
        sp.truth,
        sp.prob,
        label_names=sp.label_names,
        thresholds=sp.thresholds,
        n_boot=boot,
        seed=cfg["eval"]["bootstrap_seed"],
        rank_prob=sp.rank_prob,
    )
    evaluation["official_variants"] = official_variants(sp)
    warnings = list(sp.meta.calibration_warnings)
    fitted_on = sp.meta.calibration_split_name
    if fitted_on == split:
        warnings.insert(
            0,
            f"thresholds and temperatures were fitted on the evaluated split ({split}, --allow-same-split): "
            "these numbers are optimistic",
        )
    if split == "train":
        warnings.insert(0, "evaluated on the training split: these numbers say nothing about new patients")
    if sp.meta.thresholds is None:
        warnings.append("the checkpoint has no fitted thresholds: 0.5 used for every class")
    if sp.set_aside:
        write_set_aside(out / "set_aside.csv", sp.set_aside)
        warnings.append(describe_set_aside(sp.set_aside, out / "set_aside.csv") + "; they were not evaluated")
    ckpt_dir = resolve_checkpoint_dir(checkpoint)
    context = {
        "dataset": {
            "path": str(data or cfg["data"]["root"]),
            "format": sp.dataset.format,
            "synthetic": bool(sp.dataset.synthetic),
        },
        "synthetic": bool(sp.dataset.synthetic),
        "evaluated_split": {"name": split, "patients": len(sp.ids)},
        "split_sizes": sp.meta.split_sizes,
        "prevalence": {n: float(sp.truth[:, j].mean()) for j, n in enumerate(sp.label_names)},
        "preprocess": cfg["preprocess"],
        "model": cfg["model"],
        "config_name": cfg.get("name"),
        "config_hash": sp.meta.config_hash,
        "checkpoint": str(ckpt_dir),
        "checkpoint_epoch": sp.meta.epoch,
        "calibration_split": fitted_on,
        "threshold_method": sp.meta.threshold_method,
        "temperatures": list(sp.meta.temperatures) if sp.meta.calibrated else None,
        "scores": {
            **SCORE_SOURCES[sp.head],
            "official": "kappa and F1: decisions > 0.5 (not the fitted thresholds); AUC: ranking, pooled",
            "per_label_probabilities": sp.head == "sigmoid",
        },
        "versions": sp.meta.versions,
        "git_commit": sp.meta.git_commit,
        "warnings": warnings,
    }
    metrics_csv = ckpt_dir.parent / "metrics.csv"
    if progress:
        print(f"writing the report into {out} ...", flush=True)
    files = write_report(
        out,
        evaluation,
        truth=sp.truth,
        prob=sp.prob,
        rank_prob=sp.rank_prob,
        context=context,
        metrics_csv=metrics_csv if metrics_csv.is_file() else None,
    )
    predictions = out / PREDICTIONS
    write_predictions(predictions, sp.ids, sp.truth, sp.prob, sp.rank_prob, sp.label_names)
    submission = None
    if tuple(sp.label_names) == ODIR_LABELS:
        submission = out / f"submission_{split}.csv"
        write_submission(submission, sp.ids, sp.prob, sp.label_names)
    headline = format_headline(evaluation)
    for w in warnings:
        headline += f"\nwarning: {w}"
    headline += f"\n(evaluated in {time.perf_counter() - t0:.1f} s)"
    return EvaluateSummary(headline, files.html, submission, len(sp.ids), evaluation, predictions)
