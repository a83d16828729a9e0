"""Build the report's data model (`Report`) once from an evaluation, its context and its figures;
both renderings (`eyefuse.eval.report.render`) show exactly what is built here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eyefuse import __version__
from eyefuse.eval.metrics import OFFICIAL_F1_NOTE, to_jsonable
from eyefuse.eval.report.card import SYNTHETIC_WARNING, evaluated_split, is_synthetic, model_card
from eyefuse.eval.report.formatting import (
    boot_count,
    bootstrap_short,
    ci,
    ci_level,
    context_value,
    flatten,
    label_title,
    num,
    paths_to_str,
    pct,
)
from eyefuse.eval.report.model import (
    SECTION_TITLES,
    Block,
    Column,
    Figure,
    Note,
    Report,
    Row,
    Section,
    Table,
)

#: Figures of the paper (Li et al. 2022), printed beside each group of candidate definitions.
PAPER_REPORTED: dict[str, float] = {"accuracy": 0.9423, "precision": 0.9909, "recall": 0.9923, "f1": 0.9916}

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

_VARIANT_NOTE = (
    "The official score of the raw scores (no temperatures) and of the calibrated ones: temperatures "
    "change values at the 0.5 threshold and, per class, the pooled ranking of the AUC."
)

NO_RELIABILITY = (
    "No reliability diagram: the model's scores are not per-label probabilities (the softmax head "
    "spreads one probability mass over the labels), so a calibration figure would measure nothing."
)

_NO_TRAINING_LOG = "Training curves: no training log (metrics.csv) was given."

_PER_CLASS_COLUMNS = (
    Column("label"),
    Column("prevalence", "n", right=True),
    Column("n pos", "n", right=True),
    Column("AUROC", "n", right=True),
    Column("AUROC CI", "ci", right=True),
    Column("AUPRC", "n", right=True),
    Column("sensitivity", "n", right=True),
    Column("specificity", "n", right=True),
    Column("precision", "n", right=True),
    Column("F1", "n", right=True),
    Column("F1 CI", "ci", right=True),
    Column("threshold", "n", right=True),
)


def headline_rows(evaluation: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, value, CI text, what it is) for the headline table, the official score first."""
    n_boot = boot_count(evaluation)
    off, off_ci = evaluation["official"], evaluation["official_ci"]
    macro, micro, paper = evaluation["macro"], evaluation["micro"], evaluation["paper"]
    macro_ci = macro.get("ci") or {}
    n_classes = macro.get("n_classes", len(evaluation["label_names"]))
    defined = (macro.get("classes_defined") or {}).get("auroc", n_classes)
    auroc_of = f" ({defined} of {n_classes} classes)" if defined != n_classes else ""
    thr = off.get("threshold", 0.5)
    rows = [
        ("ODIR final (official)", off["final"], off_ci.get("final"), "(kappa + F1 + AUC) / 3"),
        (
            "ODIR kappa (official)",
            off["kappa"],
            off_ci.get("kappa"),
            f"Cohen's kappa, all labels flattened, prob > {thr:g}",
        ),
        (
            "F1 (official, = element-wise accuracy)",
            off["f1"],
            off_ci.get("f1"),
            f"micro F1 of the flattened matrix, prob > {thr:g}",
        ),
        (
            "AUC (official, labels pooled)",
            off["auc"],
            off_ci.get("auc"),
            "one ROC over all patient x label entries",
        ),
        (f"macro AUROC{auroc_of}", macro.get("auroc"), macro_ci.get("auroc"), "mean of per-class AUROC"),
        (
            "macro F1 (fitted thresholds)",
            macro.get("f1"),
            macro_ci.get("f1"),
            "mean of per-class positive-class F1",
        ),
        (
            "micro F1 (fitted thresholds)",
            micro.get("f1"),
            (micro.get("ci") or {}).get("f1"),
            "positive-class F1 pooled over entries",
        ),
        (
            "subset accuracy (fitted thresholds)",
            paper.get("accuracy_subset"),
            (paper.get("ci") or {}).get("accuracy_subset"),
            "every label of a patient right",
        ),
    ]
    return [(name, num(value), ci(interval, n_boot), what) for name, value, interval, what in rows]


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


def _bootstrap_line(evaluation: Mapping[str, Any]) -> str:
    boot = evaluation["bootstrap"]
    n = boot_count(evaluation)
    if n <= 0:
        return "No bootstrap was run: no confidence intervals."
    return (
        f"{ci_level(evaluation)}: percentile bootstrap over {boot.get('unit', 'patient')}s, "
        f"{n} resamples, seed {boot.get('seed')}. An interval marked (k/{n}) rests on the k resamples "
        "where the metric was defined."
    )


def _headline_section(evaluation: Mapping[str, Any], context: Mapping[str, Any]) -> list[Block]:
    columns = (
        Column("metric"),
        Column("value", "n v", right=True),
        Column(ci_level(evaluation), "ci"),
        Column("what it is"),
    )
    blocks: list[Block] = [
        Note(_official_note(context)),
        Table(columns, tuple(Row(r) for r in headline_rows(evaluation)), css="headline"),
        Note(OFFICIAL_F1_NOTE, strong=True),
        Note(_bootstrap_line(evaluation)),
    ]
    # The evaluation's notes other than the official-F1 sentence (shown above on its own).
    blocks += [Note(n) for n in evaluation.get("notes") or [] if n != OFFICIAL_F1_NOTE]
    variants = [
        Row(
            (
                str(v.get("scores")),
                num(v.get("kappa")),
                num(v.get("f1")),
                num(v.get("auc")),
                num(v.get("final")),
            )
        )
        for v in evaluation.get("official_variants") or []
    ]
    if variants:
        columns = (Column("scores"), *(Column(t, "n", right=True) for t in ("kappa", "F1", "AUC", "final")))
        blocks += [Note(_VARIANT_NOTE), Table(columns, tuple(variants))]
    return blocks


def _paper_section(evaluation: Mapping[str, Any]) -> list[Block]:
    """Every candidate definition of the paper's four figures, with the value the paper reports."""
    paper = evaluation["paper"]
    n_boot = boot_count(evaluation)
    rows = []
    for group, key, definition in _PAPER_DEFINITIONS:
        value = num(paper.get(key))
        if key == "accuracy_subset":
            interval = ci((paper.get("ci") or {}).get(key), n_boot)
            value = f"{value} {interval}" if interval != "n/a" else value
        rows.append(Row((group, f"{definition} [{key}]", value, f"{PAPER_REPORTED[group]:.4f}")))
    columns = (
        Column("figure"),
        Column("definition"),
        Column("value", "n", right=True),
        Column("paper reports", "n", right=True),
    )
    return [Note(_PAPER_NOTE), Table(columns, tuple(rows))]


def _per_class_section(evaluation: Mapping[str, Any]) -> list[Block]:
    """One row per class, then macro (mean over defined classes) and micro (pooled) rows."""
    n_boot = boot_count(evaluation)
    rows = [
        Row(
            (
                label_title(r["label"]),
                pct(r["prevalence"]),
                str(r["n_pos"]),
                num(r["auroc"]),
                ci(r.get("auroc_ci"), n_boot),
                num(r["auprc"]),
                num(r["sensitivity"]),
                num(r["specificity"]),
                num(r["precision"]),
                num(r["f1"]),
                ci(r.get("f1_ci"), n_boot),
                num(r["threshold"], 3),
            )
        )
        for r in evaluation["per_class"]
    ]
    macro, micro = evaluation["macro"], evaluation["micro"]
    n_classes = macro.get("n_classes", len(rows))
    defined = macro.get("classes_defined") or {}

    def macro_cell(metric: str) -> str:
        text = num(macro.get(metric))
        k = defined.get(metric, n_classes)
        return f"{text} ({k}/{n_classes})" if k != n_classes and text != "n/a" else text

    macro_ci, micro_ci = macro.get("ci") or {}, micro.get("ci") or {}
    rows.append(
        Row(
            (
                "macro (mean over classes)",
                "",
                "",
                macro_cell("auroc"),
                ci(macro_ci.get("auroc"), n_boot),
                *(macro_cell(m) for m in ("auprc", "sensitivity", "specificity", "precision", "f1")),
                ci(macro_ci.get("f1"), n_boot),
                "",
            ),
            css="agg",
        )
    )
    rows.append(
        Row(
            (
                "micro (all entries pooled)",
                "",
                "",
                num(micro.get("auroc")),
                "",
                *(num(micro.get(m)) for m in ("auprc", "sensitivity", "specificity", "precision", "f1")),
                ci(micro_ci.get("f1"), n_boot),
                "",
            ),
            css="agg",
        )
    )
    note = (
        "Thresholded metrics use prob > the class threshold. CIs are "
        f"{ci_level(evaluation)}s; n/a: undefined on these patients (e.g. AUROC without a positive). Macro "
        "means are over the classes where the metric is defined ((k/n) when not all)."
    )
    return [Note(note), Table(_PER_CLASS_COLUMNS, tuple(rows))]


def _figures_section(figures: Sequence[Figure]) -> list[Block]:
    blocks: list[Block] = list(figures)
    if not any(f.name == "training_curves.png" for f in figures):
        blocks.append(Note(_NO_TRAINING_LOG))
    if not any(f.name == "reliability.png" for f in figures):
        blocks.append(Note(NO_RELIABILITY))
    return blocks


def _context_section(context: Mapping[str, Any]) -> list[Block]:
    """The context flattened to dotted keys (nested dicts), every value as text."""
    jsonable = to_jsonable(paths_to_str(context))
    rows = tuple(Row((key, context_value(value))) for key, value in flatten(jsonable))
    if not rows:
        return [Note("No context was recorded for this evaluation.")]
    return [Table((Column("key"), Column("value")), rows)]


def _warnings(context: Mapping[str, Any]) -> tuple[str, ...]:
    """The boxes at the top: synthetic data first, then the context's `warnings` (a string or a list)."""
    raw = context.get("warnings")
    if raw is None:
        warnings = []
    elif isinstance(raw, str):
        warnings = [raw]
    else:
        warnings = [str(w) for w in raw]
    if is_synthetic(context):
        warnings.insert(0, SYNTHETIC_WARNING)
    return tuple(warnings)


def build_report(
    evaluation: Mapping[str, Any], context: Mapping[str, Any], figures: Sequence[Figure] = ()
) -> Report:
    """The report's content from an `evaluate_predictions` result, its context and rendered figures.

    No checks are made here (`write_report` checks the evaluation against the truth before building).
    """
    evaluated = evaluated_split(context)
    title = "eyefuse evaluation report" + (f": {evaluated} split" if evaluated else "")
    subtitle = (
        f"{evaluation['n_patients']} patients · {len(evaluation['label_names'])} labels "
        f"({', '.join(evaluation['label_names'])}) · {bootstrap_short(evaluation)} · eyefuse {__version__}"
    )
    blocks = (
        _headline_section(evaluation, context),
        _paper_section(evaluation),
        _per_class_section(evaluation),
        _figures_section(figures),
        _context_section(context),
        list(model_card(evaluation, context)),
    )
    sections = tuple(Section(t, tuple(b)) for t, b in zip(SECTION_TITLES, blocks, strict=True))
    return Report(title=title, subtitle=subtitle, warnings=_warnings(context), sections=sections)
