"""Render a `Report` to HTML and Markdown through the Jinja2 templates in `eyefuse/eval/templates`,
and the headline numbers as a plain-text table for the terminal.

The HTML template is autoescaped (every string of the data model is plain text, so a label or a
context value cannot inject markup); StrictUndefined makes a field the template names but the model
lacks fail the rendering instead of printing nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from eyefuse.eval.metrics import OFFICIAL_F1_NOTE
from eyefuse.eval.report.build import headline_rows
from eyefuse.eval.report.formatting import bootstrap_short, ci_level
from eyefuse.eval.report.model import Cell, Report

HTML_TEMPLATE = "report.html.j2"
MARKDOWN_TEMPLATE = "report.md.j2"


def md_cell(cell: Cell) -> str:
    """A Markdown table cell: bullets joined with "; ", pipes escaped, line breaks as spaces."""
    text = "; ".join(cell) if isinstance(cell, tuple | list) else str(cell)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _unknown_block(kind: str) -> str:
    """Called by a template for a block it cannot render: refuse rather than drop it silently."""
    raise ValueError(f"the report templates cannot render a block of kind {kind!r}")


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("eyefuse.eval", "templates"),
        # Escape in the HTML template only; Markdown is written as is (table cells through md_cell).
        autoescape=select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("md.j2",)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md_cell"] = md_cell
    env.globals["unknown_block"] = _unknown_block
    return env


#: The one environment both templates are loaded from.
ENVIRONMENT = _environment()


def render_html(report: Report) -> str:
    """The whole report as one self-contained HTML document (figures embedded as base64 PNG)."""
    return ENVIRONMENT.get_template(HTML_TEMPLATE).render(report=report)


def render_markdown(report: Report) -> str:
    """The report in Markdown; figures are referenced as `figures/<name>` beside the file."""
    # Blocks end with a blank line; the file ends with one newline.
    return ENVIRONMENT.get_template(MARKDOWN_TEMPLATE).render(report=report).rstrip("\n") + "\n"


def format_headline(evaluation: Mapping[str, Any]) -> str:
    """The headline numbers with confidence intervals as a plain-text table for the terminal."""
    rows = headline_rows(evaluation)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'metric':<{width}}{'value':>8}   {ci_level(evaluation)}"]
    lines += [f"{name:<{width}}{value:>8}   {interval}" for name, value, interval, _ in rows]
    lines.append(f"patients: {evaluation['n_patients']}; {bootstrap_short(evaluation)}")
    lines.append(OFFICIAL_F1_NOTE)
    return "\n".join(lines)
