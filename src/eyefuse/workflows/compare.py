"""`eyefuse compare`: is model A better than model B, for runs trained and evaluated separately?

`eyefuse ablate` compares the cells it trains itself. Runs trained on their own (`eyefuse train`, a
colleague's run, a run from another session) are compared here from what `eyefuse evaluate --out
REPORT` leaves in each report folder: `predictions.csv`, the evaluated patients' truth and scores.
Each arm is one or more such files, one per training seed (a cross-validated run is a folder of
`fold1/` ... `foldK/`, read as one run). The comparison is the project's one
paired bootstrap (`eyefuse.eval.compare.paired_comparison`): the same patient draw for both arms, the
seeds of each arm drawn too, a 95 % interval of A - B and the verdict better / worse / not
distinguishable, for the ODIR final, the macro AUROC and each label's AUROC.

The arms must have been evaluated on the same patients with the same labels: a comparison on
different patients is not paired, so it is refused, naming the file and the patients that differ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eyefuse.errors import ConfigError, DataError
from eyefuse.eval.compare import (
    Comparison,
    arm_figures,
    bootstrap_samples,
    official_final,
    paired_comparison,
    ranking_macro_auroc,
)
from eyefuse.eval.metrics import fast_auc, to_jsonable
from eyefuse.eval.predictions import FILE_NAME, Predictions, read_predictions
from eyefuse.utils.io import atomic_write_json, atomic_write_text


def read_run(path: str | os.PathLike[str], option: str) -> Predictions:
    """The predictions of one trained model a command-line path means: a `predictions.csv`, a
    folder holding one (`eyefuse evaluate --out`, an ablation seed folder), or a cross-validated
    run, a folder whose `fold1/` ... `foldK/` each hold one (an ablation seed folder with `folds`):
    the folds' test patients one after the other, each patient once."""
    p = Path(path)
    if p.is_file():
        return read_predictions(p)
    if not p.is_dir():
        raise ConfigError(f"{option} {path} does not exist")
    if (p / FILE_NAME).is_file():
        return read_predictions(p / FILE_NAME)
    folds = []
    while (p / f"fold{len(folds) + 1}" / FILE_NAME).is_file():
        folds.append(read_predictions(p / f"fold{len(folds) + 1}" / FILE_NAME))
    if not folds:
        raise ConfigError(
            f"{option} {path}: no {FILE_NAME} in this folder nor in fold1/, fold2/, ... (write one with "
            f"`eyefuse evaluate --run RUN --out {path}`)"
        )
    seen: dict[str, int] = {}
    for k, f in enumerate(folds, start=1):
        if f.label_names != folds[0].label_names:
            raise DataError(f"labels {','.join(f.label_names)} differ from fold1's", file=f.path)
        for pid in f.ids:
            if pid in seen:
                raise DataError(f"patient {pid} is a test patient of fold{seen[pid]} too", file=f.path)
            seen[pid] = k
    return Predictions(
        path=p,
        ids=[pid for f in folds for pid in f.ids],
        label_names=folds[0].label_names,
        truth=np.concatenate([f.truth for f in folds]),
        scores=np.concatenate([f.scores for f in folds]),
    )


def _aligned(files: Sequence[Predictions]) -> tuple[list[str], tuple[str, ...], np.ndarray, list[np.ndarray]]:
    """The first file's patient order, labels and truth, and every file's scores in that order.

    Refuses files on other patients, with other labels, or whose truth differs for a patient."""
    first = files[0]
    order = {pid: i for i, pid in enumerate(first.ids)}
    scores = []
    for f in files:
        if f.label_names != first.label_names:
            raise DataError(
                f"labels {','.join(f.label_names)} where {first.path} has {','.join(first.label_names)}",
                file=f.path,
            )
        extra = sorted(set(f.ids) - order.keys())
        missing = sorted(order.keys() - set(f.ids))
        if extra or missing:
            shown = ", ".join((extra + missing)[:5])
            raise DataError(
                f"{len(extra)} patient(s) not in {first.path} and {len(missing)} of its patients missing "
                f"(e.g. {shown}): a paired comparison needs both arms evaluated on the same patients "
                "(evaluate every run on the same split)",
                file=f.path,
            )
        where = {pid: i for i, pid in enumerate(f.ids)}
        idx = np.array([where[pid] for pid in first.ids])
        truth = f.truth[idx]
        differs = np.flatnonzero((truth != first.truth).any(axis=1))
        if differs.size:
            raise DataError(
                f"patient {first.ids[differs[0]]} has other labels than in {first.path} "
                f"({differs.size} patient(s) differ): the files do not come from the same annotation",
                file=f.path,
            )
        scores.append(f.scores[idx])
    return first.ids, first.label_names, first.truth, scores


def _label_auroc(j: int) -> Any:
    def metric(truth: np.ndarray, pred: np.ndarray) -> float:
        return fast_auc(truth[:, j], pred[:, 1, j])

    return metric


@dataclass
class CompareSummary:
    """The comparison as printed (`markdown`) and as written to `comparison.json` (`to_dict`)."""

    names: tuple[str, str]
    files: tuple[list[str], list[str]]
    n_patients: int
    n_boot: int
    arms: dict[str, dict[str, Any]]
    comparisons: list[Comparison]
    markdown: str
    written: list[Path]

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "files": {self.names[0]: self.files[0], self.names[1]: self.files[1]},
            "n_patients": self.n_patients,
            "bootstrap": self.n_boot,
            "arms": self.arms,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }

    def __str__(self) -> str:
        lines = [self.markdown]
        if self.written:
            lines.append("written: " + "  ".join(str(p) for p in self.written))
        return "\n".join(lines)


def _ci(value: float, ci: tuple[float, float]) -> str:
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def run_compare(
    a: Sequence[str | os.PathLike[str]],
    b: Sequence[str | os.PathLike[str]],
    *,
    names: tuple[str, str] = ("A", "B"),
    n_boot: int = 1000,
    out: str | os.PathLike[str] | None = None,
) -> CompareSummary:
    """Compare arm A (one `predictions.csv` per seed) with arm B on the same patients (see the module).

    `out`: a folder to write `comparison.md` and `comparison.json` into (None: print only)."""
    if n_boot < 1:
        raise ConfigError(f"--bootstrap must be at least 1, not {n_boot}")
    if len(names) != 2 or not all(n.strip() for n in names) or names[0] == names[1]:
        raise ConfigError(f"--names needs two different names, like fused,single: got {','.join(names)}")
    if not a or not b:
        raise ConfigError("give at least one predictions file or report folder to --a and to --b")
    files = [read_run(p, "--a") for p in a] + [read_run(p, "--b") for p in b]
    paths_a, paths_b = [f.path for f in files[: len(a)]], [f.path for f in files[len(a) :]]
    resolved: dict[Path, Path] = {}
    for p in (*paths_a, *paths_b):
        key = p.resolve()
        if key in resolved:
            raise ConfigError(
                f"{p} is given twice (also as {resolved[key]}): each file is one trained model, once"
            )
        resolved[key] = p
    ids, labels, truth, scores = _aligned(files)
    sa, sb = scores[: len(paths_a)], scores[len(paths_a) :]
    samples = bootstrap_samples(len(ids), n_boot)
    figures = {names[0]: arm_figures(truth, sa, samples), names[1]: arm_figures(truth, sb, samples)}

    def paired(metric: Any, metric_name: str) -> Comparison:
        return paired_comparison(truth, sa, sb, metric, metric_name=metric_name, names=names, n_boot=n_boot)

    comparisons = [paired(official_final, "ODIR final"), paired(ranking_macro_auroc, "macro AUROC")]
    skipped = []
    for j, label in enumerate(labels):
        if truth[:, j].min() == truth[:, j].max():
            skipped.append(label)
            continue
        comparisons.append(paired(_label_auroc(j), f"AUROC {label}"))

    n = len(ids)
    lines = [
        f"## {names[0]} vs {names[1]} on {n} patients ({len(sa)} vs {len(sb)} run(s); {n_boot} paired "
        "bootstrap resamples)",
        "",
        "| arm | runs | ODIR final [95% CI] | macro AUROC [95% CI] | labels at 0.5 |",
        "|---|---:|---|---|---:|",
    ]
    for name, runs in ((names[0], len(sa)), (names[1], len(sb))):
        f = figures[name]
        lines.append(
            f"| {name} | {runs} | {_ci(f.final, f.final_ci)} | {_ci(f.auroc, f.auroc_ci)} "
            f"| {f.labels_at_0_5:.2f} |"
        )
    lines += [
        "",
        f"Δ = {names[0]} - {names[1]}, mean over each arm's runs; the 95 % CI resamples the same patients "
        "for both arms and each arm's runs; the verdict is better / worse when the CI excludes 0, "
        "otherwise not distinguishable.",
        "",
        f"| figure | {names[0]} | {names[1]} | Δ [95% CI] | verdict |",
        "|---|---:|---:|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.metric} | {c.a_value:.4f} | {c.b_value:.4f} | {c.diff:+.4f} [{c.lo:+.4f}, {c.hi:+.4f}] "
            f"| {c.verdict} |"
        )
    notes = []
    if skipped:
        notes.append(f"no per-label comparison for {', '.join(skipped)}: all patients have the same label")
    if min(len(sa), len(sb)) < 2:
        notes.append(
            "one run in an arm: seed-to-seed noise is not measured, so the interval is too narrow for "
            "a claim about the recipe (give each arm runs trained with several seeds)"
        )
    if notes:
        lines += [""] + [f"note: {x}" for x in notes]
    markdown = "\n".join(lines)
    arms = {
        name: {
            "runs": runs,
            "final": f.final,
            "final_ci": list(f.final_ci),
            "macro_auroc": f.auroc,
            "macro_auroc_ci": list(f.auroc_ci),
            "labels_at_0_5": f.labels_at_0_5,
        }
        for (name, f), runs in zip(figures.items(), (len(sa), len(sb)), strict=True)
    }
    summary = CompareSummary(
        names=names,
        files=([str(p) for p in paths_a], [str(p) for p in paths_b]),
        n_patients=n,
        n_boot=n_boot,
        arms=arms,
        comparisons=comparisons,
        markdown=markdown,
        written=[],
    )
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: not a folder")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "comparison.md", markdown + "\n")
        atomic_write_json(out / "comparison.json", to_jsonable(summary.to_dict()))
        summary.written = [out / "comparison.md", out / "comparison.json"]
    return summary


__all__ = ["CompareSummary", "read_run", "run_compare"]
