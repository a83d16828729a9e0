"""Tests of the evaluation report: self-contained HTML, Markdown with figure files, metrics.json.

Two reports are rendered once per module (figures are the slow part): a full one (6 ODIR labels,
training log, warnings, synthetic data) and a plain one (3 labels, one without any positive, no
training log, no warnings).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import numpy as np
import pytest

from eyefuse.errors import DataError, EyefuseError
from eyefuse.eval.metrics import OFFICIAL_F1_NOTE, evaluate_predictions
from eyefuse.eval.report import (
    SECTION_TITLES,
    ReportFiles,
    Section,
    build_report,
    format_headline,
    read_training_log,
    render_html,
    render_markdown,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOG_HEADER = (
    "epoch,train_loss,val_loss,val_kappa,val_f1,val_auc,val_final,val_macro_auroc,lr,epoch_time_s,"
    "train_images_per_s"
)
WARNING = "thresholds were fitted on the evaluated split (--allow-same-split)"


def _predictions(
    n: int, labels: int, seed: int, empty: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, labels)) < 0.3).astype(np.uint8)
    truth[:, list(empty)] = 0
    # Scores that carry signal, so the curves are not degenerate.
    prob = np.clip(0.35 * truth + 0.65 * rng.random((n, labels)), 0.0, 1.0)
    return truth, prob


def _write_log(path: Path, epochs: int = 4) -> Path:
    rows = [LOG_HEADER]
    for e in range(1, epochs + 1):
        # Epoch 2 has no validation, as with validation every other epoch.
        val = ",,,,,," if e == 2 else f"{0.6 - 0.05 * e},0.3,0.8,0.8,{0.5 + 0.03 * e},{0.7 + 0.02 * e},"
        rows.append(f"{e},{0.7 - 0.1 * e},{val}1e-4,12.5,40")
    path.write_text("\n".join(rows) + "\n")
    return path


class _Page(HTMLParser):
    """Collects what the tests look at: tags, attributes, headings, warning boxes, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.h2: list[str] = []
        self.title = ""
        self.warnings: list[str] = []
        self.text: list[str] = []
        self._in: list[str] = []
        self._warn_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("img", "meta", "br"):
            return
        self._in.append(tag)
        if tag == "div" and dict(attrs).get("class") == "warn":
            self._warn_depth = len(self._in)
            self.warnings.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            if self._warn_depth == len(self._in):
                self._warn_depth = 0
            self._in.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if "h2" in self._in:
            self.h2.append(data.strip())
        if self._in and self._in[-1] == "title":
            self.title += data
        if self._warn_depth:
            self.warnings[-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _render(tmp: Path, labels: tuple[str, ...], *, empty: tuple[int, ...], log: bool, context: dict) -> dict:
    truth, prob = _predictions(60, len(labels), seed=len(labels), empty=empty)
    thresholds = np.linspace(0.3, 0.6, len(labels))
    evaluation = evaluate_predictions(
        truth, prob, label_names=labels, thresholds=thresholds, n_boot=50, seed=3
    )
    metrics_csv = _write_log(tmp / "metrics.csv") if log else None
    files = write_report(
        tmp / "report", evaluation, truth=truth, prob=prob, context=context, metrics_csv=metrics_csv
    )
    return {
        "files": files,
        "evaluation": evaluation,
        "page": _parse(files.html),
        "truth": truth,
        "prob": prob,
    }


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    context = {
        "dataset": {"path": Path("/data/odir"), "format": "challenge", "synthetic": True},
        "synthetic": True,
        "evaluated_split": {"name": "test", "patients": 60},
        "preprocess": {"size": 64, "enhance": "graham"},
        "calibration_split": "val",
        "checkpoint_epoch": 3,
        "temperatures": np.array([1.5, 0.75]),
        "val_ece": float("nan"),  # must reach metrics.json as null
        "warnings": [WARNING],
    }
    return _render(
        tmp_path_factory.mktemp("full"), ("N", "D", "G", "C", "A", "H"), empty=(), log=True, context=context
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # "X" is not an ODIR label; "G" has no positive patient, so its AUROC is undefined.
    return _render(tmp_path_factory.mktemp("plain"), ("N", "G", "X"), empty=(1,), log=False, context={})


def test_report_files_written(full: dict[str, Any]) -> None:
    files: ReportFiles = full["files"]
    for path in (files.html, files.markdown, files.json, *files.figures):
        assert path.is_file() and path.stat().st_size > 0
    # Atomic writes leave no temporary file behind.
    assert not [p for p in files.html.parent.rglob("*") if ".tmp" in p.name]


def test_html_has_title_headline_first_and_every_section(full: dict[str, Any]) -> None:
    page: _Page = full["page"]
    assert "evaluation report" in page.title and "test" in page.title
    assert page.h2 == list(SECTION_TITLES)
    html = full["files"].html.read_text(encoding="utf-8")
    first_table = html[html.index("<table") : html.index("</table>")]
    assert "ODIR final (official)" in first_table
    assert "F1 (official, = element-wise accuracy)" in first_table
    assert OFFICIAL_F1_NOTE in html
    final = full["evaluation"]["official"]["final"]
    assert f"{final:.4f}" in first_table
    assert "50 resamples" in html and "seed 3" in html


def test_html_images_are_embedded_pngs(full: dict[str, Any]) -> None:
    imgs = [attrs for tag, attrs in full["page"].tags if tag == "img"]
    # ROC, PR, confusion matrices, reliability, training curves.
    assert len(imgs) == 5 == len(full["files"].figures)
    for attrs in imgs:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)
        assert attrs.get("alt")


def test_html_has_no_external_reference(full: dict[str, Any], plain: dict[str, Any]) -> None:
    for report in (full, plain):
        page: _Page = report["page"]
        tags = [tag for tag, _ in page.tags]
        assert "script" not in tags and "link" not in tags and "iframe" not in tags
        for _, attrs in page.tags:
            for name, value in attrs.items():
                value = value or ""
                assert not re.match(r"\s*(https?:)?//", value), (name, value)
                if name == "href":
                    assert value.startswith("#"), value
                if name == "src":
                    assert value.startswith("data:image/png;base64,")
        html = report["files"].html.read_text(encoding="utf-8")
        assert "@import" not in html and "url(" not in html


def test_metrics_json_round_trips_official_numbers(full: dict[str, Any]) -> None:
    def refuse(const: str) -> None:
        raise AssertionError(f"metrics.json holds {const}")

    data = json.loads(full["files"].json.read_text(encoding="utf-8"), parse_constant=refuse)
    assert set(data) == {"evaluation", "context"}
    assert data["evaluation"]["official"] == full["evaluation"]["official"]
    assert data["evaluation"]["official_ci"] == full["evaluation"]["official_ci"]
    assert data["context"]["dataset"]["path"] == "/data/odir"
    assert data["context"]["warnings"] == [WARNING]
    assert data["context"]["temperatures"] == [1.5, 0.75]
    assert data["context"]["val_ece"] is None


def test_metrics_json_writes_undefined_as_null(plain: dict[str, Any]) -> None:
    data = json.loads(plain["files"].json.read_text(encoding="utf-8"))
    g = data["evaluation"]["per_class"][1]
    assert g["label"] == "G" and g["n_pos"] == 0 and g["auroc"] is None


def test_markdown_references_existing_figures(full: dict[str, Any]) -> None:
    md_path: Path = full["files"].markdown
    md = md_path.read_text(encoding="utf-8")
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == 5
    for ref in refs:
        assert ref.startswith("figures/") and ref.endswith(".png")
        assert (md_path.parent / ref).read_bytes().startswith(PNG_SIGNATURE)
    for title in SECTION_TITLES:
        assert f"## {title}" in md
    final = full["evaluation"]["official"]["final"]
    assert f"| ODIR final (official) | {final:.4f} |" in md
    assert WARNING in md


def test_warning_in_context_is_a_box_at_the_top(full: dict[str, Any], plain: dict[str, Any]) -> None:
    page: _Page = full["page"]
    assert any(WARNING in w for w in page.warnings)
    html = full["files"].html.read_text(encoding="utf-8")
    assert html.index(WARNING) < html.index(SECTION_TITLES[0] + "</h2>")
    assert plain["page"].warnings == []


def test_training_curves_only_with_a_training_log(full: dict[str, Any], plain: dict[str, Any]) -> None:
    full_names = {p.name for p in full["files"].figures}
    plain_names = {p.name for p in plain["files"].figures}
    assert "training_curves.png" in full_names
    assert "training_curves.png" not in plain_names
    assert not (plain["files"].html.parent / "figures" / "training_curves.png").exists()
    assert any(a.get("alt") == "Training curves" for t, a in full["page"].tags if t == "img")
    assert not any(a.get("alt") == "Training curves" for t, a in plain["page"].tags if t == "img")
    # The epoch without validation is counted, not silently dropped.
    assert "validation loss: 1 of 4 epochs empty" in full["files"].html.read_text(encoding="utf-8")


def test_class_without_positives_is_reported_as_undefined(plain: dict[str, Any]) -> None:
    evaluation = plain["evaluation"]
    assert evaluation["per_class"][1]["auroc"] is None
    html = plain["files"].html.read_text(encoding="utf-8")
    # The G row: long name, prevalence 0, AUROC n/a.
    row = html[html.index("<td>G (Glaucoma)</td>") :].split("</tr>", 1)[0]
    assert "0.0 %" in row and "n/a" in row
    assert "<td>X</td>" in html  # not an ODIR label: no long name invented
    assert "No positive patient for G" in html
    assert len([t for t, _ in plain["page"].tags if t == "img"]) == 4


def test_per_class_table_and_context(full: dict[str, Any]) -> None:
    html = full["files"].html.read_text(encoding="utf-8")
    assert "D (Diabetes (diabetic retinopathy))" in html
    for r in full["evaluation"]["per_class"]:
        assert f"{r['threshold']:.3f}" in html
    # Nested context keys are flattened with dots.
    assert "<td>preprocess.enhance</td><td>graham</td>" in html
    assert "<td>dataset.path</td><td>/data/odir</td>" in html
    assert "<td>temperatures</td><td>1.5, 0.75</td>" in html
    assert "<td>val_ece</td><td>n/a</td>" in html


def test_model_card(full: dict[str, Any], plain: dict[str, Any]) -> None:
    synthetic = "these numbers describe synthetic images and say nothing about real patients"
    full_html = full["files"].html.read_text(encoding="utf-8")
    plain_html = plain["files"].html.read_text(encoding="utf-8")
    card = full_html[full_html.index(SECTION_TITLES[5]) :]
    assert synthetic in card and "not a medical device" in card.lower()
    assert "fitted on the 'val' split" in unescape(card)
    assert synthetic not in plain_html
    assert "is not recorded" in plain_html  # no calibration split in the plain context


def test_format_headline(full: dict[str, Any]) -> None:
    evaluation = full["evaluation"]
    text = format_headline(evaluation)
    final = evaluation["official"]["final"]
    ci = evaluation["official_ci"]["final"]
    line = next(x for x in text.splitlines() if x.startswith("ODIR final (official)"))
    assert f"{final:.4f}" in line and f"[{ci['lo']:.3f}, {ci['hi']:.3f}]" in line
    assert "95% CI" in text.splitlines()[0]
    assert "F1 (official, = element-wise accuracy)" in text


def test_format_headline_without_bootstrap() -> None:
    truth, prob = _predictions(30, 3, seed=1)
    evaluation = evaluate_predictions(truth, prob, label_names=("N", "D", "G"), thresholds=0.5, n_boot=0)
    text = format_headline(evaluation)
    assert "no bootstrap" in text
    assert "[" not in text.split("\n", 1)[1].split("patients:")[0]  # no interval anywhere


def test_mismatched_truth_is_refused(tmp_path: Path, full: dict[str, Any]) -> None:
    truth = full["truth"].copy()
    truth[0, 0] = 1 - truth[0, 0]
    with pytest.raises(DataError, match="class N"):
        write_report(tmp_path, full["evaluation"], truth=truth, prob=full["prob"], context={})
    with pytest.raises(DataError, match="shape"):
        write_report(tmp_path, full["evaluation"], truth=truth[:10], prob=full["prob"][:10], context={})
    with pytest.raises(DataError, match="lacks"):
        write_report(tmp_path, {"official": {}}, truth=truth, prob=full["prob"], context={})
    assert not list(tmp_path.iterdir())  # nothing written before the checks passed


def test_bad_training_log_names_file_row_and_column(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    with pytest.raises(DataError, match="not found"):
        read_training_log(missing)
    no_col = tmp_path / "no_col.csv"
    no_col.write_text("epoch,train_loss,val_loss,val_final\n1,0.5,0.4,0.6\n")
    with pytest.raises(DataError, match="val_macro_auroc") as err:
        read_training_log(no_col)
    assert "no_col.csv" in str(err.value)
    bad = _write_log(tmp_path / "bad.csv")
    lines = bad.read_text().splitlines()
    cells = lines[3].split(",")
    cells[1] = "oops"  # train_loss of epoch 3, spreadsheet row 4
    lines[3] = ",".join(cells)
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(EyefuseError, match=r"row 4.*'train_loss'"):
        read_training_log(bad)
    log = read_training_log(_write_log(tmp_path / "ok.csv"))
    assert log["epoch"].tolist() == [1, 2, 3, 4] and np.isnan(log["val_loss"][1])


# --- the data model and the templates (no figures: fast) ---------------------------------------


def _model_evaluation(labels: tuple[str, ...], n_boot: int = 20) -> dict[str, Any]:
    truth, prob = _predictions(40, len(labels), seed=7)
    evaluation = evaluate_predictions(truth, prob, label_names=labels, thresholds=0.4, n_boot=n_boot, seed=5)
    evaluation["official_variants"] = [
        {"scores": "raw (no temperatures)", "kappa": 0.4125, "f1": 0.8, "auc": 0.7725, "final": 0.6617}
    ]
    return evaluation


def test_template_missing_a_field_fails_loudly() -> None:
    report = build_report(_model_evaluation(("N", "D")), {"evaluated_split": "test"})
    fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    assert render_html(SimpleNamespace(**fields)) == render_html(report)  # the stand-in renders alike
    del fields["subtitle"]
    for render in (render_html, render_markdown):
        with pytest.raises(jinja2.UndefinedError, match="subtitle"):
            render(SimpleNamespace(**fields))


def test_template_refuses_an_unknown_block() -> None:
    report = build_report(_model_evaluation(("N", "D")), {})
    odd = Section("7. Odd", (SimpleNamespace(kind="chart"),))  # type: ignore[arg-type]
    report = dataclasses.replace(report, sections=(*report.sections, odd))
    for render in (render_html, render_markdown):
        with pytest.raises(ValueError, match="'chart'"):
            render(report)


def test_html_escapes_label_names_and_context() -> None:
    script = "<script>alert(1)</script>"
    evaluation = _model_evaluation(("N", script))
    page = render_html(build_report(evaluation, {"warnings": [f"bad {script}"], "note": script}))
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = _Page()
    parsed.feed(page)
    assert "script" not in [tag for tag, _ in parsed.tags]
    assert any(script in w for w in parsed.warnings)  # shown as text, not run
    assert f"<td>{escape(script)}</td>" in page  # the per-class row's label
    # Markdown is text: the label is written as it is, only table pipes are escaped.
    assert f"| {script} |" in render_markdown(build_report(evaluation, {}))


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", text)


def test_html_and_markdown_show_the_same_numbers() -> None:
    evaluation = _model_evaluation(("N", "D", "G", "C"))
    context = {"evaluated_split": "test", "temperatures": [1.25, 0.875], "preprocess": {"size": 96}}
    report = build_report(evaluation, context)
    page = render_html(report)
    body = page[page.index("<h1>") :]
    body = body[: body.index("<nav>")] + body[body.index("</nav>") :]  # the nav repeats the headings
    html_numbers = _numbers(unescape(re.sub(r"<[^>]+>", " ", body)))
    md_numbers = _numbers(render_markdown(report))
    assert html_numbers == md_numbers
    final = f"{evaluation['official']['final']:.4f}"
    interval = evaluation["official_ci"]["final"]
    # The official final with its interval, a variant's score, a context value, a class threshold.
    for shown in (final, f"{interval['lo']:.3f}", "0.6617", "0.875", "0.400"):
        assert shown in html_numbers
    assert len(html_numbers) > 200  # every table, not just the headline
