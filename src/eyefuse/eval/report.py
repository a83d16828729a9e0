"""The evaluation report: one self-contained HTML page, the same content in Markdown, and JSON.

`write_report` turns the output of `eyefuse.eval.metrics.evaluate_predictions` (plus the truth and
probabilities it was computed from, and a free-form `context` describing data and model) into:

- `report.html`: a single file that opens offline: inline CSS, every figure embedded as a base64
  PNG, no script, font or stylesheet fetched from anywhere;
- `report.md`: the same sections as Markdown tables, figures referenced as `figures/*.png`;
- `metrics.json`: `{"evaluation": ..., "context": ...}` with NaN written as null.

The sections, in order: headline numbers with bootstrap intervals (the official ODIR-2019 score
first, then the metrics that say what the model does per class), the paper's four figures under
every common definition, the per-class table, figures, data and model, and a model card.

`context` is rendered generically (nested dicts flattened to dotted keys); a few keys, as written
by `eyefuse.workflows.evaluate.run_evaluate`, are also read by name: `warnings` (list of strings, shown
as boxes at the top), `synthetic` (bool), `evaluated_split` (`{"name", "patients"}` or a name),
`calibration_split` (the split thresholds and temperatures were fitted on: a name or
`{"name": ...}`), `threshold_method`, `dataset`, `config_name`, `config_hash`, `checkpoint` and
`checkpoint_epoch`, and `scores` (`{"decisions", "ranking", "official": text,
"per_label_probabilities": bool}`: which scores each column uses; without it the report says the
official score uses the given probabilities). Any of them may be missing; the report then says what
is not recorded. An evaluation with `official_variants` (rows of `{"scores": name, kappa, f1, auc,
final}`, as `run_evaluate` adds: the raw and the calibrated scores) gets a table of them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eyefuse import ODIR_LABEL_NAMES, __version__
from eyefuse.errors import DataError
from eyefuse.eval.calibration import expected_calibration_error, reliability_curve
from eyefuse.eval.metrics import OFFICIAL_F1_NOTE, check_truth_prob, to_jsonable
from eyefuse.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Section headings, in order; the HTML and the Markdown use exactly these.
SECTION_TITLES: tuple[str, ...] = (
    "1. Headline metrics",
    "2. The paper's four figures under every common definition",
    "3. Per-class metrics",
    "4. Figures",
    "5. Data and model",
    "6. Model card",
)

#: Columns of the training log (`metrics.csv` written by the training engine) that the curves need.
TRAINING_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "val_final", "val_macro_auroc")

#: Figures of the paper (Li et al. 2022), printed beside each group of candidate definitions.
PAPER_REPORTED: dict[str, float] = {"accuracy": 0.9423, "precision": 0.9909, "recall": 0.9923, "f1": 0.9916}

#: Bins of the reliability diagram and of the ECE in its title (the calibration module's default).
RELIABILITY_BINS = 15

#: A class with fewer positives than this is named in the model card's small-class caveat.
SMALL_CLASS_POSITIVES = 30

_EVALUATION_KEYS = (
    "n_patients",
    "label_names",
    "thresholds",
    "official",
    "official_ci",
    "per_class",
    "macro",
    "micro",
    "paper",
    "bootstrap",
)

_PAPER_DEFINITIONS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "accuracy_subset", "subset (exact match: every label of a patient right)"),
    ("accuracy", "accuracy_elementwise", "element-wise (1 - Hamming loss; equals the official F1)"),
    ("accuracy", "accuracy_jaccard", "Jaccard (|true & predicted| / |true | predicted| per patient)"),
    ("accuracy", "accuracy_top1", "top-1 (the most probable label is one of the patient's labels)"),
    ("precision", "precision_samples", "samples (per patient, then averaged)"),
    ("precision", "precision_micro", "micro (pooled over all patient x label entries)"),
    ("precision", "precision_macro", "macro (per class, then averaged)"),
    ("recall", "recall_samples", "samples (per patient, then averaged)"),
    ("recall", "recall_micro", "micro (pooled over all patient x label entries)"),
    ("recall", "recall_macro", "macro (per class, then averaged)"),
    ("f1", "f1_samples", "samples (per patient, then averaged)"),
    ("f1", "f1_micro", "micro (pooled over all patient x label entries)"),
    ("f1", "f1_macro", "macro (per class, then averaged)"),
)

_PAPER_NOTE = (
    "The paper (Li et al., Micromachines 2022) reports accuracy 94.23 %, precision 99.09 %, recall "
    "99.23 % and F1 99.16 % without defining them, so every common definition is shown, each named. "
    "All are computed at the fitted per-class thresholds; undefined ratios count as 0 (scikit-learn's "
    "zero_division=0, the usual convention in papers)."
)

_INTENDED_USE = (
    "Research on colour fundus photographs: comparing models, preprocessing and fusion methods on "
    "ODIR-style data. Not a medical device. Not for diagnosis, screening or treatment decisions, and "
    "not a substitute for an eye-care professional."
)


@dataclass(frozen=True)
class ReportFiles:
    """Paths of the files `write_report` wrote: the HTML page, the Markdown, the JSON and the PNGs."""

    html: Path
    markdown: Path
    json: Path
    figures: tuple[Path, ...] = field(default=())


@dataclass(frozen=True)
class _Figure:
    """One rendered figure: file name under `figures/`, alt text, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


# --- formatting ----------------------------------------------------------------------------------


def _num(value: Any, digits: int = 4) -> str:
    """A metric value for a table: fixed decimals, integers as they are, None/NaN as n/a."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"
    return str(value)


def _ci(interval: Mapping[str, Any] | None, n_boot: int, digits: int = 3) -> str:
    """`[lo, hi]`, with `(used/n)` appended when some resamples had the metric undefined."""
    if not interval or interval.get("lo") is None or interval.get("hi") is None:
        return "n/a"
    text = f"[{interval['lo']:.{digits}f}, {interval['hi']:.{digits}f}]"
    used = interval.get("n_used")
    if used is not None and n_boot and used < n_boot:
        text += f" ({used}/{n_boot})"
    return text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _label_title(label: str) -> str:
    """`D (Diabetes ...)` for an ODIR label, the bare name otherwise."""
    long = ODIR_LABEL_NAMES.get(label)
    return f"{label} ({long})" if long else label


def _split_name(value: Any) -> str | None:
    """A split name from a context entry that is a name or a dict with `name`."""
    if isinstance(value, Mapping):
        value = value.get("name")
    return None if value is None else str(value)


def _ci_level(evaluation: Mapping[str, Any]) -> str:
    alpha = evaluation["bootstrap"].get("alpha", 0.05)
    return f"{100 * (1 - alpha):g}% CI"


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as (dotted key, leaf value) pairs, in insertion order; empty dicts kept."""
    if isinstance(obj, Mapping) and (obj or not prefix):
        out: list[tuple[str, Any]] = []
        for key, value in obj.items():
            out.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [(prefix, obj)]


def _context_value(value: Any) -> str | list[str]:
    """A context leaf as text; a list of strings stays a list (rendered as bullets)."""
    if isinstance(value, Mapping) and not value:
        return "(empty)"
    if isinstance(value, list | tuple):
        if not value:
            return "(none)"
        if all(isinstance(v, str) for v in value):
            return [str(v) for v in value]
        if all(isinstance(v, int | float | np.integer | np.floating) or v is None for v in value):
            return ", ".join("n/a" if v is None else _context_value(v) for v in value)
        return json.dumps(to_jsonable(value), default=str)
    if isinstance(value, float | np.floating):
        return f"{value:.6g}" if math.isfinite(value) else "n/a"
    return _num(value)


# --- checks --------------------------------------------------------------------------------------


def _check_inputs(
    evaluation: Mapping[str, Any], truth: Any, prob: Any, context: Any, rank_prob: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refuse an evaluation that is not `evaluate_predictions` output or that was computed from other
    data than `truth`, which would make the figures contradict the tables."""
    if not isinstance(evaluation, Mapping):
        raise DataError(
            f"evaluation must be the dict of evaluate_predictions, got {type(evaluation).__name__}"
        )
    missing = [k for k in _EVALUATION_KEYS if k not in evaluation]
    if missing:
        raise DataError(
            f"evaluation lacks {', '.join(missing)}: expected the output of "
            "eyefuse.eval.metrics.evaluate_predictions"
        )
    if not isinstance(context, Mapping):
        raise DataError(f"report context must be a dict, got {type(context).__name__}")
    truth, prob = check_truth_prob(truth, prob)
    names = list(evaluation["label_names"])
    if len(evaluation["per_class"]) != len(names):
        raise DataError(
            f"evaluation has {len(evaluation['per_class'])} per-class rows for {len(names)} label names"
        )
    if truth.shape != (evaluation["n_patients"], len(names)):
        raise DataError(
            f"truth has shape {truth.shape} but the evaluation covers {evaluation['n_patients']} patients "
            f"x {len(names)} labels"
        )
    for j, row in enumerate(evaluation["per_class"]):
        n_pos = int(truth[:, j].sum())
        if row["n_pos"] != n_pos:
            raise DataError(
                f"truth does not match the evaluation: class {row['label']} has {n_pos} positive patients "
                f"here and {row['n_pos']} in the evaluation"
            )
    rank = prob if rank_prob is None else check_truth_prob(truth, rank_prob, what="rank_prob")[1]
    return truth, prob, rank


def read_training_log(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a training `metrics.csv` that the curves need, as float arrays by epoch.

    Empty cells (an epoch without validation) become NaN and are counted in the figure caption; a
    missing column or a cell that is not a number raises `DataError` naming the file, row and column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("training metrics file not found", file=path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in TRAINING_COLUMNS:
            if col not in header:
                raise DataError(
                    f"missing column (the training log needs {', '.join(TRAINING_COLUMNS)})",
                    file=path,
                    column=col,
                )
        values: dict[str, list[float]] = {c: [] for c in TRAINING_COLUMNS}
        for i, row in enumerate(reader):
            for col in TRAINING_COLUMNS:
                cell = (row.get(col) or "").strip()
                try:
                    values[col].append(float(cell) if cell else math.nan)
                except ValueError:
                    raise DataError(f"{cell!r} is not a number", file=path, row=i + 2, column=col) from None
    if not values["epoch"]:
        raise DataError("the training log has a header but no epoch", file=path)
    epochs = np.asarray(values["epoch"])
    if not np.isfinite(epochs).all():
        row = int(np.argmin(np.isfinite(epochs))) + 2
        raise DataError("epoch is empty", file=path, row=row, column="epoch")
    return {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}


# --- the numbers, shared by the terminal, HTML and Markdown renderings --------------------------


def _headline_rows(evaluation: Mapping[str, Any]) -> list[tuple[str, Any, str, str]]:
    """(metric, value, CI text, what it is) for the headline table."""
    n_boot = int(evaluation["bootstrap"].get("n") or 0)
    off, off_ci = evaluation["official"], evaluation["official_ci"]
    macro, micro, paper = evaluation["macro"], evaluation["micro"], evaluation["paper"]
    macro_ci = macro.get("ci") or {}
    n_classes = macro.get("n_classes", len(evaluation["label_names"]))
    defined = (macro.get("classes_defined") or {}).get("auroc", n_classes)
    auroc_of = f" ({defined} of {n_classes} classes)" if defined != n_classes else ""
    thr = off.get("threshold", 0.5)
    return [
        ("ODIR final (official)", off["final"], _ci(off_ci.get("final"), n_boot), "(kappa + F1 + AUC) / 3"),
        (
            "ODIR kappa (official)",
            off["kappa"],
            _ci(off_ci.get("kappa"), n_boot),
            f"Cohen's kappa, all labels flattened, prob > {thr:g}",
        ),
        (
            "F1 (official, = element-wise accuracy)",
            off["f1"],
            _ci(off_ci.get("f1"), n_boot),
            f"micro F1 of the flattened matrix, prob > {thr:g}",
        ),
        (
            "AUC (official, labels pooled)",
            off["auc"],
            _ci(off_ci.get("auc"), n_boot),
            "one ROC over all patient x label entries",
        ),
        (
            f"macro AUROC{auroc_of}",
            macro.get("auroc"),
            _ci(macro_ci.get("auroc"), n_boot),
            "mean of per-class AUROC",
        ),
        (
            "macro F1 (fitted thresholds)",
            macro.get("f1"),
            _ci(macro_ci.get("f1"), n_boot),
            "mean of per-class positive-class F1",
        ),
        (
            "micro F1 (fitted thresholds)",
            micro.get("f1"),
            _ci((micro.get("ci") or {}).get("f1"), n_boot),
            "positive-class F1 pooled over entries",
        ),
        (
            "subset accuracy (fitted thresholds)",
            paper.get("accuracy_subset"),
            _ci((paper.get("ci") or {}).get("accuracy_subset"), n_boot),
            "every label of a patient right",
        ),
    ]


def _official_note(context: Mapping[str, Any]) -> str:
    """Which scores the official columns (and the rest) are computed from."""
    scores = context.get("scores")
    if not isinstance(scores, Mapping):
        return (
            "The first four rows are the official ODIR-2019 score: every patient x label entry flattened, "
            "threshold 0.5 on the given probabilities, as the challenge defines it. The rest use the "
            "per-class fitted thresholds."
        )
    return (
        "The first four rows are the official ODIR-2019 score, every patient x label entry flattened: "
        f"kappa and F1 at threshold 0.5 (never the fitted thresholds) on the decision scores "
        f"({scores.get('decisions')}); AUC pooled over the ranking scores ({scores.get('ranking')}). "
        "The rest use the per-class fitted thresholds on the decision scores; AUROC and AUPRC rank the "
        "ranking scores."
    )


def _variant_rows(evaluation: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(scores, kappa, F1, AUC, final) for each official-score variant the evaluation carries."""
    return [
        (
            str(v.get("scores")),
            _num(v.get("kappa")),
            _num(v.get("f1")),
            _num(v.get("auc")),
            _num(v.get("final")),
        )
        for v in evaluation.get("official_variants") or []
    ]


_NO_RELIABILITY = (
    "No reliability diagram: the model's scores are not per-label probabilities (the softmax head "
    "spreads one probability mass over the labels), so a calibration figure would measure nothing."
)
_VARIANT_HEADER = ("scores", "kappa", "F1", "AUC", "final")
_VARIANT_NOTE = (
    "The official score of the raw scores (no temperatures) and of the calibrated ones: temperatures "
    "change values at the 0.5 threshold and, per class, the pooled ranking of the AUC."
)


def _bootstrap_line(evaluation: Mapping[str, Any]) -> str:
    boot = evaluation["bootstrap"]
    n = int(boot.get("n") or 0)
    if n <= 0:
        return "No bootstrap was run: no confidence intervals."
    return (
        f"{_ci_level(evaluation)}: percentile bootstrap over {boot.get('unit', 'patient')}s, "
        f"{n} resamples, seed {boot.get('seed')}. An interval marked (k/{n}) rests on the k resamples "
        "where the metric was defined."
    )


def _bootstrap_short(evaluation: Mapping[str, Any]) -> str:
    boot = evaluation["bootstrap"]
    n = int(boot.get("n") or 0)
    return f"bootstrap {n} resamples, seed {boot.get('seed')}" if n > 0 else "no bootstrap (no CIs)"


def _extra_notes(evaluation: Mapping[str, Any]) -> list[str]:
    """The evaluation's notes other than the official-F1 sentence (shown on its own line)."""
    return [n for n in evaluation.get("notes") or [] if n != OFFICIAL_F1_NOTE]


def format_headline(evaluation: Mapping[str, Any]) -> str:
    """The headline numbers with confidence intervals as a plain-text table for the terminal."""
    rows = _headline_rows(evaluation)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'metric':<{width}}{'value':>8}   {_ci_level(evaluation)}"]
    lines += [f"{name:<{width}}{_num(value):>8}   {ci}" for name, value, ci, _ in rows]
    lines.append(f"patients: {evaluation['n_patients']}; {_bootstrap_short(evaluation)}")
    lines.append(OFFICIAL_F1_NOTE)
    return "\n".join(lines)


def _paper_rows(evaluation: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, definition, value, paper's reported value) for every candidate definition."""
    paper = evaluation["paper"]
    n_boot = int(evaluation["bootstrap"].get("n") or 0)
    rows = []
    for group, key, definition in _PAPER_DEFINITIONS:
        value = _num(paper.get(key))
        if key == "accuracy_subset":
            ci = _ci((paper.get("ci") or {}).get(key), n_boot)
            value = f"{value} {ci}" if ci != "n/a" else value
        rows.append((group, f"{definition} [{key}]", value, f"{PAPER_REPORTED[group]:.4f}"))
    return rows


_PER_CLASS_HEADER = (
    "label",
    "prevalence",
    "n pos",
    "AUROC",
    "AUROC CI",
    "AUPRC",
    "sensitivity",
    "specificity",
    "precision",
    "F1",
    "F1 CI",
    "threshold",
)


def _per_class_rows(evaluation: Mapping[str, Any]) -> list[list[str]]:
    """One row per class, then macro (mean over defined classes) and micro (pooled) rows."""
    n_boot = int(evaluation["bootstrap"].get("n") or 0)
    rows = []
    for r in evaluation["per_class"]:
        rows.append(
            [
                _label_title(r["label"]),
                _pct(r["prevalence"]),
                str(r["n_pos"]),
                _num(r["auroc"]),
                _ci(r.get("auroc_ci"), n_boot),
                _num(r["auprc"]),
                _num(r["sensitivity"]),
                _num(r["specificity"]),
                _num(r["precision"]),
                _num(r["f1"]),
                _ci(r.get("f1_ci"), n_boot),
                _num(r["threshold"], 3),
            ]
        )
    macro, micro = evaluation["macro"], evaluation["micro"]
    n_classes = macro.get("n_classes", len(rows))
    defined = macro.get("classes_defined") or {}

    def macro_cell(metric: str) -> str:
        text = _num(macro.get(metric))
        k = defined.get(metric, n_classes)
        return f"{text} ({k}/{n_classes})" if k != n_classes and text != "n/a" else text

    rows.append(
        [
            "macro (mean over classes)",
            "",
            "",
            macro_cell("auroc"),
            _ci((macro.get("ci") or {}).get("auroc"), n_boot),
            macro_cell("auprc"),
            macro_cell("sensitivity"),
            macro_cell("specificity"),
            macro_cell("precision"),
            macro_cell("f1"),
            _ci((macro.get("ci") or {}).get("f1"), n_boot),
            "",
        ]
    )
    rows.append(
        [
            "micro (all entries pooled)",
            "",
            "",
            _num(micro.get("auroc")),
            "",
            _num(micro.get("auprc")),
            _num(micro.get("sensitivity")),
            _num(micro.get("specificity")),
            _num(micro.get("precision")),
            _num(micro.get("f1")),
            _ci((micro.get("ci") or {}).get("f1"), n_boot),
            "",
        ]
    )
    return rows


def _context_rows(context: Mapping[str, Any]) -> list[tuple[str, str | list[str]]]:
    jsonable = to_jsonable(_paths_to_str(context))
    return [(key, _context_value(value)) for key, value in _flatten(jsonable)]


def _paths_to_str(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {k: _paths_to_str(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_paths_to_str(v) for v in obj]
    return obj


def _warnings(context: Mapping[str, Any]) -> list[str]:
    raw = context.get("warnings")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    return [str(w) for w in raw]


def _is_synthetic(context: Mapping[str, Any]) -> bool:
    dataset = context.get("dataset")
    nested = isinstance(dataset, Mapping) and dataset.get("synthetic") is True
    return context.get("synthetic") is True or nested


def _model_card(evaluation: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, list[str]]:
    """The model card as {heading: paragraphs or bullet items}, plain text (escaped by the renderer)."""
    n_boot = int(evaluation["bootstrap"].get("n") or 0)
    level = _ci_level(evaluation)
    per_class = evaluation["per_class"]
    evaluated = _split_name(context.get("evaluated_split")) or _split_name(context.get("split"))
    fitted_on = _split_name(context.get("calibration_split"))

    data = []
    split_text = f"the {evaluated!r} split" if evaluated else "an unnamed split"
    data.append(
        f"Evaluated on {split_text}: {evaluation['n_patients']} patients, labels "
        f"{', '.join(evaluation['label_names'])}."
    )
    dataset = context.get("dataset")
    if isinstance(dataset, Mapping):
        parts = [f"{k} {v}" for k, v in dataset.items() if k in ("path", "format")]
        if parts:
            data.append("Dataset: " + ", ".join(parts) + ".")
    elif dataset is not None:
        data.append(f"Dataset: {dataset}.")
    data.append(
        "Prevalence in the evaluated split: "
        + ", ".join(f"{r['label']} {_pct(r['prevalence'])} ({r['n_pos']})" for r in per_class)
        + "."
    )
    if _is_synthetic(context):
        data.append("The images are synthetic (generated by eyefuse synth), not photographs of patients.")

    off, off_ci = evaluation["official"], evaluation["official_ci"]
    macro = evaluation["macro"]
    metrics = [
        f"Official ODIR-2019 score at prob > {off.get('threshold', 0.5):g}: final {_num(off['final'])} "
        f"{_ci(off_ci.get('final'), n_boot)} ({level}), kappa {_num(off['kappa'])}, F1 {_num(off['f1'])} "
        f"(= element-wise accuracy), AUC {_num(off['auc'])}.",
        f"Macro AUROC {_num(macro.get('auroc'))} {_ci((macro.get('ci') or {}).get('auroc'), n_boot)}; "
        f"macro F1 {_num(macro.get('f1'))} at the per-class thresholds.",
    ]
    method = context.get("threshold_method")
    method_text = f" (method: {method})" if method else ""
    thresholds = ", ".join(f"{r['label']} {r['threshold']:.3f}" for r in per_class)
    if fitted_on is None:
        metrics.append(
            f"Per-class thresholds{method_text}: {thresholds}. The split they were fitted on "
            "is not recorded in this report's context."
        )
    elif evaluated is not None and fitted_on == evaluated:
        metrics.append(
            f"Per-class thresholds{method_text}: {thresholds}, fitted on the {fitted_on!r} "
            "split, which is the evaluated split itself: the thresholded metrics are optimistic."
        )
    else:
        metrics.append(
            f"Per-class thresholds{method_text}: {thresholds}, fitted on the {fitted_on!r} "
            "split (the validation split), not on the evaluated patients."
        )

    caveats = []
    if _is_synthetic(context):
        caveats.append(
            "Synthetic data: these numbers describe synthetic images and say nothing about real patients."
        )
    defined = [r for r in per_class if r["n_pos"] > 0]
    if defined:
        rare = min(defined, key=lambda r: r["prevalence"])
        common = max(defined, key=lambda r: r["prevalence"])
        caveats.append(
            f"Class imbalance: prevalence ranges from {_pct(rare['prevalence'])} ({rare['label']}) to "
            f"{_pct(common['prevalence'])} ({common['label']}); pooled numbers such as the official AUC and "
            "F1 are dominated by the common classes and by true negatives."
        )
    absent = [r["label"] for r in per_class if r["n_pos"] == 0]
    if absent:
        caveats.append(
            f"No positive patient for {', '.join(absent)}: their AUROC, AUPRC and sensitivity "
            "are undefined and left out of the macro means."
        )
    caveats.append(
        "Labels are patient-level (ODIR): a label means at least one eye shows the finding, so "
        "per-eye performance is not measured here."
    )
    caveats.append(
        "Camera and population shift: ODIR photographs come from several cameras and one population; "
        "performance on other cameras, sites or populations is unknown until measured there."
    )
    small = [r for r in per_class if 0 < r["n_pos"] < SMALL_CLASS_POSITIVES]
    small_text = ", ".join(
        f"{r['label']} ({r['n_pos']} positive, AUROC {_ci(r.get('auroc_ci'), n_boot)})" for r in small
    )
    caveats.append(
        "Small classes have wide confidence intervals"
        + (f": {small_text}." if small else "; read every per-class number with its interval.")
    )
    caveats.append("The official F1 is element-wise accuracy, not the F1 of the positive class.")

    model = []
    for key, what in (
        ("config_name", "configuration"),
        ("config_hash", "configuration hash"),
        ("checkpoint", "checkpoint"),
        ("checkpoint_epoch", "checkpoint epoch"),
    ):
        if context.get(key) is not None:
            model.append(f"{what}: {context[key]}")
    model.append(f"eyefuse {__version__}; every setting is listed in section {SECTION_TITLES[4]!r}.")

    return {
        "Intended use": [_INTENDED_USE],
        "Model": model,
        "Data": data,
        "Metrics and thresholds": metrics,
        "Caveats": caveats,
    }


# --- figures -------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, without pyplot, so no global backend state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _grid(n_panels: int, panel_w: float = 2.4, panel_h: float = 2.2) -> tuple[Figure, list[Axes]]:
    """Small multiples: up to 4 panels a row; unused panels are hidden."""
    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = _new_figure(panel_w * ncols, panel_h * nrows)
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _undefined_panel(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#a33")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


def _roc_figure(evaluation: Mapping[str, Any], truth: np.ndarray, prob: np.ndarray) -> _Figure:
    """Per-class ROC curves of the ranking scores `prob`."""
    from sklearn.metrics import roc_curve

    per_class = evaluation["per_class"]
    fig, axes = _grid(len(per_class))
    ncols = min(4, len(per_class))
    for j, (ax, r) in enumerate(zip(axes, per_class, strict=True)):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        if r["auroc"] is None:
            _undefined_panel(ax, "AUROC undefined\n(no positive or\nno negative patient)")
            ax.set_title(f"{r['label']}: AUROC n/a")
        else:
            fpr, tpr, _ = roc_curve(truth[:, j], prob[:, j])
            ax.plot(fpr, tpr, lw=1.4, color="C0")
            # The operating point at the fitted threshold shows where the thresholded metrics sit.
            ax.plot(1 - r["specificity"], r["sensitivity"], "o", ms=4, color="C3")
            ax.set_title(f"{r['label']}: AUROC {r['auroc']:.3f}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        if j % ncols == 0:
            ax.set_ylabel("sensitivity")
        if j >= len(per_class) - ncols:
            ax.set_xlabel("1 - specificity")
    fig.suptitle("ROC curves per class (dot: fitted threshold; dashed: chance)")
    return _Figure(
        "roc_curves.png",
        "ROC curves per class",
        "ROC curve of each class with its AUROC; the dot is the operating point at the fitted threshold, "
        "the dashed diagonal is chance.",
        _png(fig),
    )


def _pr_figure(evaluation: Mapping[str, Any], truth: np.ndarray, prob: np.ndarray) -> _Figure:
    """Per-class precision-recall curves of the ranking scores `prob`."""
    from sklearn.metrics import precision_recall_curve

    per_class = evaluation["per_class"]
    fig, axes = _grid(len(per_class))
    ncols = min(4, len(per_class))
    for j, (ax, r) in enumerate(zip(axes, per_class, strict=True)):
        if r["n_pos"] == 0:
            _undefined_panel(ax, "no positive patient:\nPR curve undefined")
            ax.set_title(f"{r['label']}: AP n/a")
        else:
            precision, recall, _ = precision_recall_curve(truth[:, j], prob[:, j])
            ax.step(recall, precision, where="post", lw=1.4, color="C0")
            # A classifier without skill has precision = prevalence at every recall.
            ax.axhline(r["prevalence"], ls="--", lw=0.8, color="0.6")
            if r["precision"] is not None and r["sensitivity"] is not None:
                ax.plot(r["sensitivity"], r["precision"], "o", ms=4, color="C3")
            ax.set_title(f"{r['label']}: AP {_num(r['auprc'], 3)}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        if j % ncols == 0:
            ax.set_ylabel("precision")
        if j >= len(per_class) - ncols:
            ax.set_xlabel("recall (sensitivity)")
    fig.suptitle("Precision-recall curves per class (dashed: prevalence)")
    return _Figure(
        "pr_curves.png",
        "Precision-recall curves per class",
        "Precision-recall curve of each class with its average precision (AP = AUPRC); the dashed line "
        "is the prevalence (no skill), the dot the fitted threshold.",
        _png(fig),
    )


def _confusion_figure(evaluation: Mapping[str, Any]) -> _Figure:
    per_class = evaluation["per_class"]
    fig, axes = _grid(len(per_class), panel_w=2.1, panel_h=2.1)
    for ax, r in zip(axes, per_class, strict=True):
        counts = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]], dtype=np.float64)
        # Colour by the share of each true row, so a rare class's errors are visible beside its size.
        rate = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
        for (i, k), c in np.ndenumerate(counts):
            ax.text(
                k,
                i,
                f"{int(c)}",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if rate[i, k] > 0.6 else "black",
            )
        ax.set_xticks([0, 1], ["pred 0", "pred 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(f"{r['label']} (threshold {r['threshold']:.3f})")
    fig.suptitle("Confusion matrices at the fitted thresholds (counts of patients)")
    return _Figure(
        "confusion_matrices.png",
        "Confusion matrices per class",
        "Counts of patients per class at its fitted threshold (prob > threshold); the shade is the share "
        "of each true row.",
        _png(fig),
    )


def _reliability_figure(truth: np.ndarray, prob: np.ndarray) -> _Figure:
    curve = reliability_curve(truth, prob, n_bins=RELIABILITY_BINS)
    ece = expected_calibration_error(truth, prob, n_bins=RELIABILITY_BINS)
    fig = _new_figure(4.6, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6", label="perfect calibration")
    pts = [(c, a) for c, a in zip(curve["confidence"], curve["accuracy"], strict=True) if c is not None]
    if pts:
        conf, acc = zip(*pts, strict=True)
        top.plot(conf, acc, "o-", ms=4, lw=1.4, color="C0", label="model")
    top.set_ylabel("observed positive rate")
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"Reliability, all labels pooled (ECE {ece:.3f}, {RELIABILITY_BINS} bins)")
    width = 1.0 / RELIABILITY_BINS
    bottom.bar(curve["bin_centers"], curve["counts"], width=width * 0.9, color="C0", alpha=0.6)
    bottom.set_yscale("symlog")
    bottom.set_ylabel("entries")
    bottom.set_xlabel("predicted probability")
    return _Figure(
        "reliability.png",
        "Reliability diagram",
        f"Observed positive rate against mean predicted probability in {RELIABILITY_BINS} equal-width "
        f"bins, every patient x label entry pooled; expected calibration error {ece:.4f}. Below: entries "
        "per bin.",
        _png(fig),
    )


def _training_figure(log: Mapping[str, np.ndarray], checkpoint_epoch: Any) -> _Figure:
    epoch = log["epoch"]
    fig = _new_figure(8.4, 3.0)
    left, right = fig.subplots(1, 2)
    series = (
        (left, "train_loss", "train loss", "C0"),
        (left, "val_loss", "validation loss", "C1"),
        (right, "val_final", "validation ODIR final", "C2"),
        (right, "val_macro_auroc", "validation macro AUROC", "C3"),
    )
    missing: list[str] = []
    for ax, col, label, color in series:
        ok = np.isfinite(log[col])
        if ok.any():
            ax.plot(epoch[ok], log[col][ok], "o-", ms=3, lw=1.3, color=color, label=label)
        if not ok.all():
            missing.append(f"{label}: {int((~ok).sum())} of {ok.size} epochs empty")
    for ax in (left, right):
        if isinstance(checkpoint_epoch, int | float) and not isinstance(checkpoint_epoch, bool):
            ax.axvline(checkpoint_epoch, ls=":", lw=1, color="0.4", label="evaluated checkpoint")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    left.set_title("Loss")
    right.set_title("Validation score")
    caption = "Training and validation loss, validation ODIR final score and macro AUROC by epoch."
    if missing:
        caption += " Not plotted: " + "; ".join(missing) + "."
    return _Figure("training_curves.png", "Training curves", caption, _png(fig))


def _render_figures(
    evaluation: Mapping[str, Any],
    truth: np.ndarray,
    prob: np.ndarray,
    training_log: Mapping[str, np.ndarray] | None,
    checkpoint_epoch: Any,
    rank: np.ndarray | None = None,
    probabilities: bool = True,
) -> list[_Figure]:
    """ROC and PR curves of the ranking scores `rank` (default `prob`), confusion matrices, the
    reliability diagram (only when `probabilities`: a calibration figure of scores that are not
    per-label probabilities would measure nothing), training curves."""
    import matplotlib

    rank = prob if rank is None else rank
    # Compact panels: the defaults (10 pt) crowd small multiples.
    with matplotlib.rc_context({"font.size": 8, "axes.titlesize": 9, "figure.titlesize": 10}):
        figures = [
            _roc_figure(evaluation, truth, rank),
            _pr_figure(evaluation, truth, rank),
            _confusion_figure(evaluation),
        ]
        if probabilities:
            figures.append(_reliability_figure(truth, prob))
        if training_log is not None:
            figures.append(_training_figure(training_log, checkpoint_epoch))
    return figures


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2430;
background:#f6f7f9;margin:0;line-height:1.45}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:1.7em;margin:0 0 4px}h2{font-size:1.3em;margin:32px 0 10px;padding-bottom:4px;
border-bottom:2px solid #d8dde6}h3{font-size:1.05em;margin:18px 0 6px}
.sub{color:#5a6577;margin:0 0 16px}.note{color:#5a6577;font-size:.92em;margin:6px 0}
.warn{background:#fff4e0;border:1px solid #e0a030;border-left:6px solid #d9822b;padding:8px 12px;
margin:8px 0;border-radius:4px}.warn strong{color:#8a4b00}
table{border-collapse:collapse;margin:8px 0 4px;font-size:.92em}
th,td{border:1px solid #d8dde6;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eef1f6}tbody tr:nth-child(even){background:#f8f9fb}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ci{color:#5a6577;white-space:nowrap;font-variant-numeric:tabular-nums}
table.headline td.v{font-weight:600;font-size:1.08em}tr.agg td{background:#eef1f6;font-style:italic}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid #e3e6ec}
figcaption{color:#5a6577;font-size:.9em}nav{font-size:.92em}nav a{margin-right:12px}
ul{margin:4px 0 4px 20px;padding:0}td ul{margin:0 0 0 16px}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(title: str) -> str:
    return "s" + title.split(".", 1)[0]


def _html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    classes: Callable[[int, int], str],
    css: str = "",
    row_class: Callable[[int], str] | None = None,
) -> str:
    """A table; `classes(row, col)` and `row_class(row)` give CSS classes (empty: none)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for k, cell in enumerate(row):
            cls = classes(i, k)
            attr = f' class="{cls}"' if cls else ""
            if isinstance(cell, list):
                inner = "<ul>" + "".join(f"<li>{_esc(c)}</li>" for c in cell) + "</ul>"
            else:
                inner = _esc(cell)
            cells.append(f"<td{attr}>{inner}</td>")
        rcls = row_class(i) if row_class else ""
        body.append((f'<tr class="{rcls}">' if rcls else "<tr>") + "".join(cells) + "</tr>")
    cls_attr = f' class="{css}"' if css else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _warning_boxes_html(warnings: Sequence[str]) -> str:
    return "".join(
        f'<div class="warn" role="alert"><strong>Warning:</strong> {_esc(w)}</div>' for w in warnings
    )


def _title(context: Mapping[str, Any]) -> str:
    evaluated = _split_name(context.get("evaluated_split")) or _split_name(context.get("split"))
    title = "eyefuse evaluation report" + (f": {evaluated} split" if evaluated else "")
    return title


def _top_warnings(context: Mapping[str, Any]) -> list[str]:
    warnings = _warnings(context)
    if _is_synthetic(context):
        warnings = [
            "synthetic data: these numbers describe synthetic images and say nothing about real patients",
            *warnings,
        ]
    return warnings


def _subtitle(evaluation: Mapping[str, Any]) -> str:
    return (
        f"{evaluation['n_patients']} patients · {len(evaluation['label_names'])} labels "
        f"({', '.join(evaluation['label_names'])}) · {_bootstrap_short(evaluation)} · eyefuse {__version__}"
    )


def _render_html(
    evaluation: Mapping[str, Any], context: Mapping[str, Any], figures: Sequence[_Figure]
) -> str:
    """The whole report as one self-contained HTML document (figures embedded as base64 PNG)."""
    title = _title(context)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">{_esc(_subtitle(evaluation))}</p>',
        _warning_boxes_html(_top_warnings(context)),
        "<nav>" + "".join(f'<a href="#{_anchor(t)}">{_esc(t)}</a>' for t in SECTION_TITLES) + "</nav>",
    ]

    # 1. headline
    level = _ci_level(evaluation)
    headline = [(name, _num(v), ci, what) for name, v, ci, what in _headline_rows(evaluation)]
    parts.append(f'<section id="{_anchor(SECTION_TITLES[0])}"><h2>{_esc(SECTION_TITLES[0])}</h2>')
    parts.append(f'<p class="note">{_esc(_official_note(context))}</p>')
    parts.append(
        _html_table(
            ("metric", "value", level, "what it is"),
            headline,
            lambda i, k: {1: "n v", 2: "ci"}.get(k, ""),
            css="headline",
        )
    )
    parts.append(f'<p class="note"><strong>{_esc(OFFICIAL_F1_NOTE)}</strong></p>')
    parts.append(f'<p class="note">{_esc(_bootstrap_line(evaluation))}</p>')
    parts += [f'<p class="note">{_esc(n)}</p>' for n in _extra_notes(evaluation)]
    if _variant_rows(evaluation):
        parts.append(f'<p class="note">{_esc(_VARIANT_NOTE)}</p>')
        parts.append(_html_table(_VARIANT_HEADER, _variant_rows(evaluation), lambda i, k: "n" if k else ""))
    parts.append("</section>")

    # 2. paper
    parts.append(f'<section id="{_anchor(SECTION_TITLES[1])}"><h2>{_esc(SECTION_TITLES[1])}</h2>')
    parts.append(f'<p class="note">{_esc(_PAPER_NOTE)}</p>')
    parts.append(
        _html_table(
            ("figure", "definition", "value", "paper reports"),
            _paper_rows(evaluation),
            lambda i, k: "n" if k in (2, 3) else "",
        )
    )
    parts.append("</section>")

    # 3. per class
    n_rows = len(evaluation["per_class"])
    parts.append(f'<section id="{_anchor(SECTION_TITLES[2])}"><h2>{_esc(SECTION_TITLES[2])}</h2>')
    parts.append(
        '<p class="note">Thresholded metrics use prob &gt; the class threshold. CIs are '
        f"{_esc(level)}s; n/a: undefined on these patients (e.g. AUROC without a positive). Macro means "
        "are over the classes where the metric is defined ((k/n) when not all).</p>"
    )
    table = _html_table(
        _PER_CLASS_HEADER,
        _per_class_rows(evaluation),
        lambda i, k: "ci" if k in (4, 10) else ("n" if k > 0 else ""),
        row_class=lambda i: "agg" if i >= n_rows else "",
    )
    parts.append(table)
    parts.append("</section>")

    # 4. figures
    parts.append(f'<section id="{_anchor(SECTION_TITLES[3])}"><h2>{_esc(SECTION_TITLES[3])}</h2>')
    for f in figures:
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(
            f"<figure><h3>{_esc(f.title)}</h3>"
            f'<img src="data:image/png;base64,{data}" alt="{_esc(f.title)}">'
            f"<figcaption>{_esc(f.caption)}</figcaption></figure>"
        )
    if not any(f.name == "training_curves.png" for f in figures):
        parts.append('<p class="note">Training curves: no training log (metrics.csv) was given.</p>')
    if not any(f.name == "reliability.png" for f in figures):
        parts.append(f'<p class="note">{_esc(_NO_RELIABILITY)}</p>')
    parts.append("</section>")

    # 5. data and model
    parts.append(f'<section id="{_anchor(SECTION_TITLES[4])}"><h2>{_esc(SECTION_TITLES[4])}</h2>')
    rows = _context_rows(context)
    if rows:
        parts.append(_html_table(("key", "value"), rows, lambda i, k: ""))
    else:
        parts.append('<p class="note">No context was recorded for this evaluation.</p>')
    parts.append("</section>")

    # 6. model card
    parts.append(f'<section id="{_anchor(SECTION_TITLES[5])}"><h2>{_esc(SECTION_TITLES[5])}</h2>')
    for heading, items in _model_card(evaluation, context).items():
        parts.append(f"<h3>{_esc(heading)}</h3>")
        if len(items) == 1:
            parts.append(f"<p>{_esc(items[0])}</p>")
        else:
            parts.append("<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>")
    parts.append("</section>")
    parts.append("</main></body></html>\n")
    return "\n".join(p for p in parts if p)


# --- Markdown ------------------------------------------------------------------------------------


def _md_cell(cell: Any) -> str:
    text = "; ".join(cell) if isinstance(cell, list) else str(cell)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---:" if k in numeric else "---" for k in range(len(header))) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _render_markdown(
    evaluation: Mapping[str, Any], context: Mapping[str, Any], figures: Sequence[_Figure]
) -> str:
    """The report in Markdown; figures are referenced as `figures/<name>` beside the file."""
    title = _title(context)
    level = _ci_level(evaluation)
    out = [f"# {title}", "", _subtitle(evaluation), ""]
    for w in _top_warnings(context):
        out += [f"> **Warning:** {w}", ""]

    out += [f"## {SECTION_TITLES[0]}", ""]
    out += [_official_note(context), ""]
    headline = [(name, _num(v), ci, what) for name, v, ci, what in _headline_rows(evaluation)]
    out += [_md_table(("metric", "value", level, "what it is"), headline, numeric=(1,)), ""]
    out += [f"**{OFFICIAL_F1_NOTE}**", "", _bootstrap_line(evaluation), ""]
    for note in _extra_notes(evaluation):
        out += [note, ""]
    if _variant_rows(evaluation):
        out += [_VARIANT_NOTE, "", _md_table(_VARIANT_HEADER, _variant_rows(evaluation), (1, 2, 3, 4)), ""]

    out += [f"## {SECTION_TITLES[1]}", "", _PAPER_NOTE, ""]
    out += [
        _md_table(("figure", "definition", "value", "paper reports"), _paper_rows(evaluation), (2, 3)),
        "",
    ]

    out += [f"## {SECTION_TITLES[2]}", ""]
    out += [
        f"Thresholded metrics use prob > the class threshold. CIs are {level}s; n/a: undefined on these "
        "patients. Macro means are over the classes where the metric is defined ((k/n) when not all).",
        "",
    ]
    out += [_md_table(_PER_CLASS_HEADER, _per_class_rows(evaluation), numeric=tuple(range(1, 12))), ""]

    out += [f"## {SECTION_TITLES[3]}", ""]
    for f in figures:
        out += [f"### {f.title}", "", f"![{f.title}](figures/{f.name})", "", f.caption, ""]
    if not any(f.name == "training_curves.png" for f in figures):
        out += ["Training curves: no training log (metrics.csv) was given.", ""]
    if not any(f.name == "reliability.png" for f in figures):
        out += [_NO_RELIABILITY, ""]

    out += [f"## {SECTION_TITLES[4]}", ""]
    rows = _context_rows(context)
    out += [_md_table(("key", "value"), rows) if rows else "No context was recorded for this evaluation.", ""]

    out += [f"## {SECTION_TITLES[5]}", ""]
    for heading, items in _model_card(evaluation, context).items():
        out += [f"### {heading}", ""]
        out += items if len(items) == 1 else [f"- {i}" for i in items]
        out.append("")
    return "\n".join(out)


# --- entry point ---------------------------------------------------------------------------------


def write_report(
    out_dir: str | Path,
    evaluation: Mapping[str, Any],
    *,
    truth: Any,
    prob: Any,
    context: Mapping[str, Any],
    metrics_csv: str | Path | None = None,
    rank_prob: Any = None,
) -> ReportFiles:
    """Write `metrics.json`, `report.md` (+ `figures/*.png`) and a self-contained `report.html`.

    Args:
        out_dir: folder to write into (created when missing); existing report files are replaced.
        evaluation: the output of `eyefuse.eval.metrics.evaluate_predictions` on `truth`, `prob`.
        truth: (patients x labels) 0/1 matrix the evaluation was computed from (for the curves).
        prob: the same patients' decision scores, as evaluated (calibrated).
        context: data and model description (see the module docstring); rendered as a table.
        metrics_csv: the training log (`metrics.csv` of the run) for the training curves; None: no
            training curves.
        rank_prob: the ranking scores the evaluation's AUROC/AUPRC used (ROC and PR curves);
            None: `prob`. The reliability diagram is drawn only when `context["scores"]` does not
            say `per_label_probabilities: false`.

    Raises:
        DataError: the evaluation does not match `truth` / `prob`, or the training log is unreadable.
    """
    out_dir = Path(out_dir)
    truth_arr, prob_arr, rank_arr = _check_inputs(evaluation, truth, prob, context, rank_prob)
    training_log = read_training_log(metrics_csv) if metrics_csv is not None else None
    scores = context.get("scores")
    probabilities = not (isinstance(scores, Mapping) and scores.get("per_label_probabilities") is False)
    figures = _render_figures(
        evaluation,
        truth_arr,
        prob_arr,
        training_log,
        context.get("checkpoint_epoch"),
        rank=rank_arr,
        probabilities=probabilities,
    )

    json_path = out_dir / "metrics.json"
    atomic_write_json(json_path, to_jsonable(_paths_to_str({"evaluation": evaluation, "context": context})))
    figure_paths = []
    for f in figures:
        path = out_dir / "figures" / f.name
        atomic_write_bytes(path, f.png)
        figure_paths.append(path)
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, _render_markdown(evaluation, context, figures))
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, _render_html(evaluation, context, figures))
    return ReportFiles(html=html_path, markdown=md_path, json=json_path, figures=tuple(figure_paths))
