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

The package: `inputs` checks the evaluation against the truth and reads the training log;
`figures` draws the PNGs; `build` turns evaluation, context and figures into one data model
(`model.Report`, with the model card from `card`); `render` writes that model to HTML and Markdown
through the Jinja2 templates `eyefuse/eval/templates/report.html.j2` and `report.md.j2`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eyefuse.eval.metrics import to_jsonable
from eyefuse.eval.report.build import NO_RELIABILITY, PAPER_REPORTED, build_report, headline_rows
from eyefuse.eval.report.card import SMALL_CLASS_POSITIVES, model_card
from eyefuse.eval.report.figures import RELIABILITY_BINS, render_figures
from eyefuse.eval.report.formatting import paths_to_str
from eyefuse.eval.report.inputs import TRAINING_COLUMNS, check_inputs, read_training_log
from eyefuse.eval.report.model import (
    SECTION_TITLES,
    CardPart,
    Column,
    Figure,
    Note,
    Report,
    Row,
    Section,
    Table,
)
from eyefuse.eval.report.render import format_headline, render_html, render_markdown
from eyefuse.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class ReportFiles:
    """Paths of the files `write_report` wrote: the HTML page, the Markdown, the JSON and the PNGs."""

    html: Path
    markdown: Path
    json: Path
    figures: tuple[Path, ...] = field(default=())


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
    truth_arr, prob_arr, rank_arr = check_inputs(evaluation, truth, prob, context, rank_prob)
    training_log = read_training_log(metrics_csv) if metrics_csv is not None else None
    scores = context.get("scores")
    probabilities = not (isinstance(scores, Mapping) and scores.get("per_label_probabilities") is False)
    figures = render_figures(
        evaluation,
        truth_arr,
        prob_arr,
        training_log,
        context.get("checkpoint_epoch"),
        rank=rank_arr,
        probabilities=probabilities,
    )
    report = build_report(evaluation, context, figures)

    json_path = out_dir / "metrics.json"
    atomic_write_json(json_path, to_jsonable(paths_to_str({"evaluation": evaluation, "context": context})))
    figure_paths = []
    for f in report.figures:
        path = out_dir / "figures" / f.name
        atomic_write_bytes(path, f.png)
        figure_paths.append(path)
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, render_markdown(report))
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, render_html(report))
    return ReportFiles(html=html_path, markdown=md_path, json=json_path, figures=tuple(figure_paths))


__all__ = [
    "NO_RELIABILITY",
    "PAPER_REPORTED",
    "RELIABILITY_BINS",
    "SECTION_TITLES",
    "SMALL_CLASS_POSITIVES",
    "TRAINING_COLUMNS",
    "CardPart",
    "Column",
    "Figure",
    "Note",
    "Report",
    "ReportFiles",
    "Row",
    "Section",
    "Table",
    "build_report",
    "format_headline",
    "headline_rows",
    "model_card",
    "read_training_log",
    "render_figures",
    "render_html",
    "render_markdown",
    "write_report",
]
