"""Cells of an ODIR annotation table: each row validated into an `OdirRow` (ID, age, sex, image
file names, keywords, 0/1 labels, optional `split`), every bad cell a `DataError` naming the file,
the spreadsheet row and the column."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eyefuse import ODIR_LABELS
from eyefuse.data.layouts import ODIR_COLUMNS, SPLIT_COLUMN, SPLIT_SOURCES, ZH_SEX
from eyefuse.data.tables import SheetTable, cell_text, norm_col
from eyefuse.errors import DataError


def parse_label(value: Any, table: SheetTable, row: int, column: str) -> int:
    """A 0/1 label cell as an int; anything else is a DataError naming the cell."""
    text = cell_text(value)
    if text == "":
        raise DataError("label is empty (expected 0 or 1)", file=table.path, row=row, column=column)
    try:
        number = float(text)
    except ValueError:
        raise DataError(
            f"label {text!r} is not a number (expected 0 or 1)", file=table.path, row=row, column=column
        ) from None
    if number not in (0.0, 1.0):
        raise DataError(f"label {text!r} is not 0 or 1", file=table.path, row=row, column=column)
    return int(number)


def _parse_age(value: Any, table: SheetTable, row: int, column: str) -> int | None:
    text = cell_text(value)
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        raise DataError(f"age {text!r} is not a number", file=table.path, row=row, column=column) from None
    if not number.is_integer() or not 0 <= number <= 130:
        raise DataError(
            f"age {text!r} is not a whole number of years", file=table.path, row=row, column=column
        )
    return int(number)


@dataclass
class OdirRow:
    """One validated row of an ODIR annotation table."""

    row: int
    id: str
    age: int | None
    sex: str | None
    fundus: dict[str, str]
    keywords: dict[str, str]
    labels: np.ndarray
    cells: dict[str, str]  # every ODIR column as text, for the Kaggle agreement check
    source: str | None = None  # from an optional `split` column


def _row_source(table: SheetTable, row: int, cells: list[Any]) -> str | None:
    """The source a `split` cell names (None when the table has no such column)."""
    idx = [i for i, h in enumerate(table.header) if norm_col(h) == SPLIT_COLUMN]
    if not idx:
        return None
    text = cell_text(cells[idx[0]])
    source = SPLIT_SOURCES.get(text.lower())
    if source is None:
        raise DataError(
            f"split {text!r} is not one of {', '.join(SPLIT_SOURCES)}",
            file=table.path,
            row=row,
            column="split",
        )
    return source


def odir_rows(table: SheetTable, extra: Sequence[str] = ()) -> list[OdirRow]:
    """Validate an ODIR table's columns and cells (IDs are not checked for duplicates here)."""
    cols = table.columns([*ODIR_COLUMNS, *extra])
    out: list[OdirRow] = []
    for number, cells in table.rows:
        text = {c: cell_text(cells[i]) for c, i in cols.items()}
        pid = text["ID"]
        if not pid:
            raise DataError("patient ID is empty", file=table.path, row=number, column="ID")
        fundus = {}
        for side, col in (("left", "Left-Fundus"), ("right", "Right-Fundus")):
            if not text[col]:
                raise DataError(f"{side} image file name is empty", file=table.path, row=number, column=col)
            fundus[side] = text[col]
        labels = np.array(
            [parse_label(cells[cols[lab]], table, number, lab) for lab in ODIR_LABELS], dtype=np.uint8
        )
        out.append(
            OdirRow(
                row=number,
                id=pid,
                age=_parse_age(cells[cols["Patient Age"]], table, number, "Patient Age"),
                sex=ZH_SEX.get(text["Patient Sex"], text["Patient Sex"]) or None,
                fundus=fundus,
                keywords={
                    "left": text["Left-Diagnostic Keywords"],
                    "right": text["Right-Diagnostic Keywords"],
                },
                labels=labels,
                cells=text,
                source=_row_source(table, number, cells),
            )
        )
    return out


def check_unique_ids(table: SheetTable, ids: Iterable[tuple[int, str]], column: str) -> None:
    """Refuse a patient ID that appears twice in one table, naming both rows."""
    first: dict[str, int] = {}
    for number, pid in ids:
        if pid in first:
            raise DataError(
                f"patient ID {pid!r} is duplicated: rows {first[pid]} and {number}",
                file=table.path,
                row=number,
                column=column,
            )
        first[pid] = number
