"""The report's data model: what it shows, built once (`eyefuse.eval.report.build`) and rendered to
HTML and Markdown by the templates in `eyefuse/eval/templates`.

A `Report` is a title, a subtitle, warning boxes and `Section`s; a section is a list of blocks, each
one of `Note`, `Table`, `Figure` or `CardPart`, told apart in the templates by `kind`. Every string
is plain text: the HTML template escapes it, the Markdown template escapes table cells.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import ClassVar

#: Section headings, in order; the HTML and the Markdown use exactly these.
SECTION_TITLES: tuple[str, ...] = (
    "1. Headline metrics",
    "2. The paper's four figures under every common definition",
    "3. Per-class metrics",
    "4. Figures",
    "5. Data and model",
    "6. Model card",
)

#: A table cell: text, or several strings (bullets in HTML, joined with "; " in Markdown).
Cell = str | tuple[str, ...]


@dataclass(frozen=True)
class Note:
    """A paragraph of text; `strong` ones are printed in bold."""

    kind: ClassVar[str] = "note"
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Column:
    """A table column: its heading, the HTML class of its cells ("n" numbers, "ci" intervals, "v"
    the headline value) and whether Markdown aligns it right."""

    title: str
    css: str = ""
    right: bool = False


@dataclass(frozen=True)
class Row:
    """A table row; `css` marks aggregate rows ("agg": the macro and micro means)."""

    cells: tuple[Cell, ...]
    css: str = ""


@dataclass(frozen=True)
class Table:
    """A table with typed columns; `css` is the HTML class of the table ("headline")."""

    kind: ClassVar[str] = "table"
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    css: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row.cells) != len(self.columns):
                raise ValueError(f"a row of {len(row.cells)} cells in a table of {len(self.columns)} columns")


@dataclass(frozen=True)
class Figure:
    """One rendered figure: file name under `figures/`, title (also the alt text), caption, PNG bytes."""

    kind: ClassVar[str] = "figure"
    name: str
    title: str
    caption: str
    png: bytes = field(repr=False)

    @property
    def data_uri(self) -> str:
        """The PNG as a `data:` URI, so the HTML page needs no file beside it."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class CardPart:
    """A heading of the model card with its text: one paragraph, or bullet items when several."""

    kind: ClassVar[str] = "card"
    heading: str
    items: tuple[str, ...]


Block = Note | Table | Figure | CardPart


@dataclass(frozen=True)
class Section:
    """A numbered section; `anchor` is its HTML id (`s1` for "1. ...")."""

    title: str
    blocks: tuple[Block, ...]

    @property
    def anchor(self) -> str:
        return "s" + self.title.split(".", 1)[0]


@dataclass(frozen=True)
class Report:
    """The whole report: what both renderings show, in order."""

    title: str
    subtitle: str
    warnings: tuple[str, ...]
    sections: tuple[Section, ...]

    @property
    def figures(self) -> tuple[Figure, ...]:
        """Every figure of the report, in order (the files written under `figures/`)."""
        return tuple(b for s in self.sections for b in s.blocks if isinstance(b, Figure))
