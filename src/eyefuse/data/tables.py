"""Reading annotation tables: the first sheet of an xlsx workbook or a UTF-8 CSV, told apart by
content rather than extension, as header + (spreadsheet row number, cells), with column lookup
that ignores case and whitespace and reads the Chinese ODIR headers as their English columns."""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from eyefuse.data.layouts import ZH_COLUMNS
from eyefuse.errors import DataError


@dataclass
class SheetTable:
    """A spreadsheet or CSV as strings-or-values: header + (spreadsheet row number, cells)."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[Any]]]
    blank_rows: int = 0

    def columns(self, expected: Sequence[str]) -> dict[str, int]:
        """Index of each expected column (case and surrounding whitespace ignored; a Chinese
        header of `ZH_COLUMNS` counts as its English column)."""
        found = {norm_col(h): i for i, h in reversed(list(enumerate(self.header))) if h}
        missing = [c for c in expected if norm_col(c) not in found]
        if missing:
            raise DataError(
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)}; "
                f"expected columns: {', '.join(expected)}; found: "
                f"{', '.join(repr(h) for h in self.header if h) or 'none'}",
                file=self.path,
                row=1,
                column=missing[0],
            )
        dup = [c for c in expected if sum(norm_col(h) == norm_col(c) for h in self.header if h) > 1]
        if dup:
            raise DataError(f"column {dup[0]!r} appears more than once in the header", file=self.path, row=1)
        return {c: found[norm_col(c)] for c in expected}


def norm_col(name: object) -> str:
    """A column name for matching: whitespace collapsed, case folded, Chinese header translated."""
    text = " ".join(str(name).split())
    return ZH_COLUMNS.get(text, text).casefold()


#: File kinds told apart by their first bytes (files are recognised by content, not extension:
#: the authors' `off_gt.xls` is an xlsx workbook).
_XLSX_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def table_kind(path: str | os.PathLike[str]) -> str:
    """The kind of a table file, from its first bytes: "xlsx" (a zip workbook, whatever its
    extension), "xls" (an old binary Excel file, which is not supported) or "csv" (text, whatever
    its extension: a CSV exported as .xls is read).

    A file named .xlsx that is neither stays "xlsx", so that the reader says it cannot read it.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_XLSX_MAGIC):
        return "xlsx"
    if head.startswith(_OLE_MAGIC):
        return "xls"
    return "xlsx" if Path(path).suffix.lower() in (".xlsx", ".xlsm") else "csv"


def cell_text(value: Any) -> str:
    """A cell as trimmed text; integral floats (Excel numbers) lose their '.0'."""
    if value is None:
        return ""
    if isinstance(value, float):
        if np.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def read_table(path: str | os.PathLike[str]) -> SheetTable:
    """Read the first sheet of an xlsx workbook or a UTF-8 CSV, told apart by content (see
    `table_kind`). Raises DataError for an empty, unreadable or header-less file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file does not exist", file=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", file=path)
    kind = table_kind(path)
    if kind == "xlsx":
        raw = _read_xlsx_rows(path)
    elif kind == "csv":
        raw = _read_csv_rows(path)
    else:
        raise DataError(OLD_XLS, file=path)
    header: list[str] | None = None
    rows: list[tuple[int, list[Any]]] = []
    blank = 0
    for number, cells in raw:
        if header is None:
            header = [cell_text(c) for c in cells]
            while header and not header[-1]:
                header.pop()
            if not header:
                raise DataError("the first row (the header) is empty", file=path, row=number)
            continue
        if all(cell_text(c) == "" for c in cells):
            blank += 1
            continue
        cells = list(cells[: len(header)]) + [None] * (len(header) - len(cells))
        rows.append((number, cells))
    if header is None:
        raise DataError("file has no rows (expected a header row)", file=path)
    return SheetTable(path=path, header=header, rows=rows, blank_rows=blank)


OLD_XLS = "an old binary Excel (.xls) file is not supported; save it as .xlsx or .csv"


def _read_xlsx_rows(path: Path) -> list[tuple[int, list[Any]]]:
    # Opened as a file object: openpyxl refuses a path whose extension is not .xlsx, and the
    # authors' ground truth is an xlsx workbook named .xls.
    with open(path, "rb") as f:
        try:
            wb = openpyxl.load_workbook(f, read_only=True, data_only=True)
        except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
            raise DataError(f"cannot read spreadsheet ({type(e).__name__}: {e})", file=path) from None
        try:
            if not wb.worksheets:
                raise DataError("spreadsheet has no sheets", file=path)
            rows = wb.worksheets[0].iter_rows(values_only=True)
            return [(i, list(r)) for i, r in enumerate(rows, start=1)]
        finally:
            wb.close()


def _read_csv_rows(path: Path) -> list[tuple[int, list[Any]]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            # Record numbers, not line numbers: a spreadsheet shows one row per record.
            return [(i, list(r)) for i, r in enumerate(csv.reader(f), start=1)]
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", file=path) from None
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", file=path) from None


def peek_header(path: Path) -> list[str]:
    """Normalised header of a table, or [] when it cannot be read (for format detection only)."""
    try:
        kind = table_kind(path)
        if kind == "csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                first = next(csv.reader(f), [])
        elif kind == "xlsx":
            with open(path, "rb") as fb:
                wb = openpyxl.load_workbook(fb, read_only=True, data_only=True)
                try:
                    first = list(next(wb.worksheets[0].iter_rows(values_only=True), ()))
                finally:
                    wb.close()
        else:
            return []
    except Exception:  # any unreadable file simply is not this format; read_table reports why
        return []
    return [norm_col(cell_text(c)) for c in first]


def is_lock_or_hidden(path: Path) -> bool:
    """True for a file no annotation can be: hidden, or an Excel lock file."""
    # "~$name.xlsx" is the lock file Excel leaves beside an open workbook.
    return path.name.startswith(("~$", "."))
