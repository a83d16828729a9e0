"""Dataset readers: one `Patient` per patient ID from the ODIR-5K releases or a generic paired CSV.

Over 500 lines on purpose: the four layouts below share one table reader (xlsx/csv by content,
Chinese or English headers), one cell parser and one image finder, so every way a file can be wrong
is reported the same way from one module; a module per layout would split those shared parts.

`load_dataset(data)` finds the format from a folder or a file:

- ``challenge``: `ODIR-5K_Training_Annotations(Updated)_V2.xlsx` (or any .xlsx/.csv with the ODIR
  columns) and a folder holding `{ID}_left.jpg` beside it (found by looking for the annotated file
  names: `ODIR-5K_Training_Dataset/`, `Training Images/`, `images/`, ... up to three levels down).
  OIA-style test folders beside it (`Off-site Test Set/Annotation/*.xlsx` + `Images/`, same for
  `On-site Test Set`) are loaded too, with source `offsite` / `onsite`. This is also the layout
  `eyefuse synth` writes; its `SYNTHETIC.json` marker sets `Dataset.synthetic`.
- ``oia``: the OIA-ODIR release, `Training Set/`, `Off-site Test Set/`, `On-site Test Set/`, each
  with `Annotation/*.xlsx` (the English file when there are two) and `Images/`; `data` may be the
  release root or one split folder (or its annotation file).
- ``kaggle``: `full_df.csv`, one row per image, de-duplicated to patients (both rows of a patient
  must agree); images from `ODIR-5K/Training Images/` beside it when present (originals: eyefuse
  does its own preprocessing), else `preprocessed_images/`.
- ``paired_csv``: `patient_id,left,right,<label columns...>` for other datasets; paths relative to
  the CSV's folder or absolute; an empty cell is a missing eye. Label names come from the header.

Usable eyes. `Patient.eye_path(side)` is None for an eye that is missing, not a fundus photograph
("anterior segment image", "no fundus image") or excluded. The model works with one eye; a patient
with no usable eye at all is kept in the dataset (so that splits and official test sets keep every
patient) and is listed in `Dataset.notes` and by `Dataset.unusable()`: whoever builds training
batches drops them.

The `problem_images` option. The hospital altered the background of 16 training images (2174_right,
2175_left, 2176_left, 2177, 2178_right, 2179, 2180, 2181, 2182 and 2957 both eyes). With
``"exclude"`` (default) those eyes get `left_excluded` / `right_excluded` and no usable path, so
they neither train nor are scored as photographs; ``"keep"`` uses them like any other image. The
list is applied only to the training release of real ODIR data (`challenge`, `oia`, `kaggle`
formats, source `train`), never to synthetic data or a paired CSV, whose IDs mean other patients.

Every user error raises `DataError` naming the file, the spreadsheet row (header = row 1) and the
column; nothing is dropped silently (blank rows, missing eyes and exclusions are counted in notes).
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eyefuse import ODIR_LABELS, registry
from eyefuse.data.keywords import (
    KeywordResult,
    keyword_labels,
    patient_labels_from_eyes,
    split_keywords,
)
from eyefuse.errors import DataError

FORMATS = ("challenge", "oia", "kaggle", "paired_csv")
SIDES = ("left", "right")

#: Columns of every ODIR annotation table, in the order of the release.
ODIR_COLUMNS: tuple[str, ...] = (
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    *ODIR_LABELS,
)
KAGGLE_COLUMNS: tuple[str, ...] = (*ODIR_COLUMNS, "filename")
#: The Chinese headers of the OIA-ODIR Chinese annotations and of the authors' test ground truth
#: (`off_gt.xls`, `on_gt.xlsx`), read as the English columns they stand for.
ZH_COLUMNS: dict[str, str] = {
    "编号": "ID",
    "病人年龄": "Patient Age",
    "病人性别": "Patient Sex",
    "左眼眼底图像": "Left-Fundus",
    "右眼眼底图像": "Right-Fundus",
    "左眼诊断关键词": "Left-Diagnostic Keywords",
    "右眼诊断关键词": "Right-Diagnostic Keywords",
}
_ZH_SEX = {"女": "Female", "男": "Male"}
#: Optional `split` column (the one-row-per-patient table of all 5,000 patients): value -> source.
SPLIT_COLUMN = "split"
SPLIT_SOURCES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "off-site-test": "offsite",
    "offsite": "offsite",
    "on-site-test": "onsite",
    "onsite": "onsite",
}
PAIRED_COLUMNS: tuple[str, ...] = ("patient_id", "left", "right")

CHALLENGE_XLSX = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
CHALLENGE_GLOB = "ODIR-5K_Training_Annotations*.xlsx"
KAGGLE_CSV = "full_df.csv"
SYNTHETIC_MARKER = "SYNTHETIC.json"
#: OIA-ODIR split folders and the source name each gives its patients.
OIA_SPLITS: tuple[tuple[str, str], ...] = (
    ("Training Set", "train"),
    ("Off-site Test Set", "offsite"),
    ("On-site Test Set", "onsite"),
)
_TEST_FOLDERS = {name.lower() for name, source in OIA_SPLITS if source != "train"}
#: Image folders tried first beside a challenge annotation (then a search three levels deep).
CHALLENGE_IMAGE_DIRS = (
    "ODIR-5K_Training_Dataset",
    "ODIR-5K_Training_Images",
    "Training Images",
    "ODIR-5K/Training Images",
    "ODIR-5K/ODIR-5K/Training Images",
    "images",
    "Images",
)
#: Beside full_df.csv: the original photographs first, then Kaggle's 512 px preprocessed copies.
KAGGLE_IMAGE_DIRS = (
    "ODIR-5K/ODIR-5K/Training Images",
    "ODIR-5K/Training Images",
    "Training Images",
    "preprocessed_images",
)
_SEARCH_DEPTH = 3

#: The 16 training images whose background the hospital altered: (patient ID, side).
PROBLEM_IMAGES: frozenset[tuple[str, str]] = frozenset(
    [("2174", "right"), ("2175", "left"), ("2176", "left"), ("2178", "right")]
    + [(pid, side) for pid in ("2177", "2179", "2180", "2181", "2182", "2957") for side in SIDES]
)


# --- records -----------------------------------------------------------------------------------


@dataclass(eq=False, kw_only=True)
class Patient:
    """One patient: two eyes (either may be missing), their keywords, and the patient's labels.

    `labels` is uint8 over the dataset's `label_names`. `left_labels` / `right_labels` are the
    per-eye labels implied by the keywords (ODIR label order), None where the keywords cannot give
    them (no keywords, an unknown keyword, a non-fundus image, or a non-ODIR dataset).
    """

    id: str
    age: int | None
    sex: str | None
    left: Path | None
    right: Path | None
    labels: np.ndarray
    left_keywords: tuple[str, ...] = ()
    right_keywords: tuple[str, ...] = ()
    left_labels: np.ndarray | None = None
    right_labels: np.ndarray | None = None
    left_fundus: bool = True
    right_fundus: bool = True
    left_excluded: bool = False
    right_excluded: bool = False
    source: str = "all"

    def eye_path(self, side: str) -> Path | None:
        """The photograph to use for `side` ("left" / "right"), or None when that eye is missing,
        not a fundus image or excluded as a known problem image."""
        if side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', not {side!r}")
        path = self.left if side == "left" else self.right
        fundus = self.left_fundus if side == "left" else self.right_fundus
        excluded = self.left_excluded if side == "left" else self.right_excluded
        return path if path is not None and fundus and not excluded else None

    @property
    def usable(self) -> bool:
        """True when at least one eye has a usable photograph."""
        return any(self.eye_path(s) is not None for s in SIDES)

    @property
    def key(self) -> tuple[str, str]:
        """(source, id): unique within a dataset (IDs are unique within a source)."""
        return (self.source, self.id)


@dataclass(eq=False)
class Dataset:
    """All patients of one dataset, in annotation order. Behaves as a sequence of `Patient`."""

    root: Path
    format: str
    label_names: tuple[str, ...]
    patients: list[Patient]
    annotation_files: list[Path] = field(default_factory=list)
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.patients)

    def __iter__(self) -> Iterator[Patient]:
        return iter(self.patients)

    def __getitem__(self, index: int) -> Patient:
        return self.patients[index]

    def sources(self) -> list[str]:
        """Sources present (`train`, `offsite`, `onsite` or `all`), in order of first appearance."""
        return list(dict.fromkeys(p.source for p in self.patients))

    def select(self, source: str | Iterable[str]) -> Dataset:
        """A dataset with only the patients of the given source(s)."""
        wanted = {source} if isinstance(source, str) else set(source)
        unknown = wanted - set(self.sources())
        if unknown:
            raise DataError(
                f"no patients with source {', '.join(sorted(unknown))}; this dataset has "
                f"{', '.join(self.sources()) or 'no patients'}",
                file=self.root,
            )
        return Dataset(
            root=self.root,
            format=self.format,
            label_names=self.label_names,
            patients=[p for p in self.patients if p.source in wanted],
            annotation_files=list(self.annotation_files),
            synthetic=self.synthetic,
            notes=list(self.notes),
        )

    def label_matrix(self) -> np.ndarray:
        """Patient labels as a uint8 array (patients x labels)."""
        if not self.patients:
            return np.zeros((0, len(self.label_names)), dtype=np.uint8)
        return np.stack([p.labels for p in self.patients]).astype(np.uint8)

    def unusable(self) -> list[Patient]:
        """Patients with no usable eye (kept in the dataset; training must drop them)."""
        return [p for p in self.patients if not p.usable]

    def __str__(self) -> str:
        counts = Counter(p.source for p in self.patients)
        per_source = ", ".join(f"{s} {counts[s]}" for s in self.sources())
        lines = [
            f"{self.format} dataset at {self.root}{' (synthetic)' if self.synthetic else ''}: "
            f"{len(self.patients)} patients ({per_source})",
            f"labels: {' '.join(self.label_names)}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- tables --------------------------------------------------------------------------------------


@dataclass
class _Table:
    """A spreadsheet or CSV as strings-or-values: header + (spreadsheet row number, cells)."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[Any]]]
    blank_rows: int = 0

    def columns(self, expected: Sequence[str]) -> dict[str, int]:
        """Index of each expected column (case and surrounding whitespace ignored; a Chinese
        header of `ZH_COLUMNS` counts as its English column)."""
        found = {_norm_col(h): i for i, h in reversed(list(enumerate(self.header))) if h}
        missing = [c for c in expected if _norm_col(c) not in found]
        if missing:
            raise DataError(
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)}; "
                f"expected columns: {', '.join(expected)}; found: "
                f"{', '.join(repr(h) for h in self.header if h) or 'none'}",
                file=self.path,
                row=1,
                column=missing[0],
            )
        dup = [c for c in expected if sum(_norm_col(h) == _norm_col(c) for h in self.header if h) > 1]
        if dup:
            raise DataError(f"column {dup[0]!r} appears more than once in the header", file=self.path, row=1)
        return {c: found[_norm_col(c)] for c in expected}


def _norm_col(name: object) -> str:
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


def read_table(path: str | os.PathLike[str]) -> _Table:
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
        raise DataError(_OLD_XLS, file=path)
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
    return _Table(path=path, header=header, rows=rows, blank_rows=blank)


_OLD_XLS = "an old binary Excel (.xls) file is not supported; save it as .xlsx or .csv"


def _read_xlsx_rows(path: Path) -> list[tuple[int, list[Any]]]:
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

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


def _peek_header(path: Path) -> list[str]:
    """Normalised header of a table, or [] when it cannot be read (for format detection only)."""
    try:
        kind = table_kind(path)
        if kind == "csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                first = next(csv.reader(f), [])
        elif kind == "xlsx":
            import openpyxl

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
    return [_norm_col(cell_text(c)) for c in first]


def _is_lock_or_hidden(path: Path) -> bool:
    # "~$name.xlsx" is the lock file Excel leaves beside an open workbook.
    return path.name.startswith(("~$", "."))


def _has_columns(header: Sequence[str], columns: Sequence[str]) -> bool:
    return all(_norm_col(c) in header for c in columns)


# --- cells ---------------------------------------------------------------------------------------


def _parse_label(value: Any, table: _Table, row: int, column: str) -> int:
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


def _parse_age(value: Any, table: _Table, row: int, column: str) -> int | None:
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
class _OdirRow:
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


def _row_source(table: _Table, row: int, cells: list[Any]) -> str | None:
    """The source a `split` cell names (None when the table has no such column)."""
    idx = [i for i, h in enumerate(table.header) if _norm_col(h) == SPLIT_COLUMN]
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


def _odir_rows(table: _Table, extra: Sequence[str] = ()) -> list[_OdirRow]:
    """Validate an ODIR table's columns and cells (IDs are not checked for duplicates here)."""
    cols = table.columns([*ODIR_COLUMNS, *extra])
    out: list[_OdirRow] = []
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
            [_parse_label(cells[cols[lab]], table, number, lab) for lab in ODIR_LABELS], dtype=np.uint8
        )
        out.append(
            _OdirRow(
                row=number,
                id=pid,
                age=_parse_age(cells[cols["Patient Age"]], table, number, "Patient Age"),
                sex=_ZH_SEX.get(text["Patient Sex"], text["Patient Sex"]) or None,
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


def _check_unique_ids(table: _Table, ids: Iterable[tuple[int, str]], column: str) -> None:
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


# --- images --------------------------------------------------------------------------------------


class _Files:
    """Existence checks through one directory listing per folder (7,000 stat calls are slow on
    network file systems; a listing is one call)."""

    def __init__(self) -> None:
        self._listings: dict[Path, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        parent = path.parent
        if parent not in self._listings:
            try:
                self._listings[parent] = frozenset(e.name for e in os.scandir(parent) if e.is_file())
            except OSError:
                self._listings[parent] = frozenset()
        return path.name in self._listings[parent]


def _find_image_dir(base: Path, probes: Sequence[str], preferred: Sequence[str]) -> Path | None:
    """The folder at or below `base` holding any of the `probes` file names: `preferred`
    sub-folders first, then `base` itself, then a breadth-first search (hidden and test-set folders
    skipped, as they hold other patients' images)."""
    files = _Files()

    def holds(d: Path) -> bool:
        return d.is_dir() and any(files.exists(d / p) for p in probes)

    for rel in preferred:
        if holds(base / rel):
            return base / rel
    if holds(base):
        return base
    level = [base]
    for _ in range(_SEARCH_DEPTH):
        nxt: list[Path] = []
        for d in level:
            try:
                children = sorted(e.path for e in os.scandir(d) if e.is_dir())
            except OSError:
                continue
            for c in map(Path, children):
                if c.name.startswith(".") or c.name.lower() in _TEST_FOLDERS:
                    continue
                if holds(c):
                    return c
                nxt.append(c)
        level = nxt
    return None


@dataclass
class _Missing:
    """Image files named by the annotation that do not exist (reported together)."""

    items: list[tuple[Path, int, str, Path]] = field(default_factory=list)

    def add(self, table_path: Path, row: int, column: str, image: Path) -> None:
        self.items.append((table_path, row, column, image))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        file, row, column, image = self.items[0]
        more = f" ({len(self.items) - 1} more images are missing)" if len(self.items) > 1 else ""
        raise DataError(
            f"image {image} does not exist{more}; pass check_images=False to load the annotation anyway",
            file=file,
            row=row,
            column=column,
        )


# --- building patients ---------------------------------------------------------------------------


def _odir_patient(r: _OdirRow, paths: dict[str, Path | None], source: str) -> Patient:
    results: dict[str, KeywordResult] = {s: keyword_labels(r.keywords[s]) for s in SIDES}
    return Patient(
        id=r.id,
        age=r.age,
        sex=r.sex,
        left=paths["left"],
        right=paths["right"],
        labels=r.labels,
        left_keywords=split_keywords(r.keywords["left"]),
        right_keywords=split_keywords(r.keywords["right"]),
        left_labels=results["left"].eye_labels(),
        right_labels=results["right"].eye_labels(),
        left_fundus=results["left"].fundus,
        right_fundus=results["right"].fundus,
        source=source,
    )


@dataclass
class _Loaded:
    patients: list[Patient] = field(default_factory=list)
    annotation_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: _Loaded) -> None:
        self.patients += other.patients
        self.annotation_files += other.annotation_files
        self.notes += other.notes


def _blank_note(table: _Table) -> list[str]:
    if not table.blank_rows:
        return []
    return [f"{table.path.name}: skipped {table.blank_rows} blank row(s)"]


def _load_odir_table(
    annotation: Path,
    source: str,
    check_images: bool,
    preferred_dirs: Sequence[str],
    image_base: Path,
) -> _Loaded:
    """One patient per row of a challenge / OIA annotation, images searched under `image_base`."""
    table = read_table(annotation)
    rows = _odir_rows(table)
    _check_unique_ids(table, ((r.row, r.id) for r in rows), "ID")
    probes = [r.fundus[s] for r in rows[:20] for s in SIDES]
    image_dir = _find_image_dir(image_base, probes, preferred_dirs) if rows else None
    notes = _blank_note(table)
    if image_dir is None:
        looked = ", ".join(preferred_dirs)
        if check_images and rows:
            raise DataError(
                f"cannot find the images: no folder under {image_base} holds {probes[0]} "
                f"(looked in {looked}, the folder itself and sub-folders {_SEARCH_DEPTH} levels deep)",
                file=annotation,
            )
        image_dir = image_base / preferred_dirs[0]
        notes.append(f"{annotation.name}: image folder not found; paths point into {image_dir} (unchecked)")
    files = _Files()
    missing = _Missing()
    patients = []
    for r in rows:
        paths: dict[str, Path | None] = {}
        for side, col in (("left", "Left-Fundus"), ("right", "Right-Fundus")):
            path = image_dir / r.fundus[side]
            if check_images and not files.exists(path):
                missing.add(annotation, r.row, col, path)
            paths[side] = path
        patients.append(_odir_patient(r, paths, r.source or source))
    missing.raise_if_any()
    counts = Counter(p.source for p in patients) or Counter({source: 0})
    notes[:0] = [
        f"{s}: {n} patients from {annotation.name}, images in {image_dir}" for s, n in counts.items()
    ]
    return _Loaded(patients, [annotation], notes)


def _oia_annotation(split_dir: Path) -> Path:
    ann_dir = split_dir / "Annotation"
    candidates = sorted(
        p for p in ann_dir.iterdir() if p.suffix.lower() in (".xlsx", ".xls") and not _is_lock_or_hidden(p)
    )
    if not candidates:
        raise DataError(f"no annotation .xlsx / .xls in {ann_dir}", file=split_dir)
    if len(candidates) == 1:
        return candidates[0]
    english = [p for p in candidates if "english" in p.name.lower()]
    if len(english) == 1:
        return english[0]
    raise DataError(
        f"several annotation files in {ann_dir} ({', '.join(p.name for p in candidates)}); pass one "
        "of them as the data path",
        file=split_dir,
    )


#: Names of a test set's annotation given on its own: "off-site ...", "Off-site Test Set",
#: the authors' `off_gt.xls` / `on_gt.xlsx`.
_TEST_NAMES = (
    ("offsite", re.compile(r"(?<![a-z])off[-_ ]?(site|gt|test)")),
    ("onsite", re.compile(r"(?<![a-z])on[-_ ]?(site|gt|test)")),
)


def _table_source(annotation: Path) -> str:
    """Source of a challenge-format table given on its own: a test set by its name, else train
    (a `split` column, where present, decides per row)."""
    name = annotation.name.lower()
    for source, pattern in _TEST_NAMES:
        if pattern.search(name):
            return source
    return "train"


def _oia_source(split_dir: Path, annotation: Path) -> str:
    for name, source in OIA_SPLITS:
        if split_dir.name.lower() == name.lower():
            return source
    low = annotation.name.lower()
    for key, source in (("off-site", "offsite"), ("on-site", "onsite"), ("training", "train")):
        if key in low:
            return source
    return "all"


def _load_oia_split(split_dir: Path, check_images: bool, annotation: Path | None = None) -> _Loaded:
    annotation = annotation or _oia_annotation(split_dir)
    source = _oia_source(split_dir, annotation)
    return _load_odir_table(annotation, source, check_images, ("Images", "images"), split_dir)


def _load_test_folders(base: Path, check_images: bool) -> _Loaded:
    out = _Loaded()
    for name, source in OIA_SPLITS:
        if source == "train":
            continue
        if (base / name / "Annotation").is_dir():
            out.extend(_load_oia_split(base / name, check_images))
    return out


def _load_kaggle(csv_path: Path, check_images: bool) -> _Loaded:
    """De-duplicate Kaggle's one-row-per-image `full_df.csv` to patients."""
    table = read_table(csv_path)
    rows = _odir_rows(table, extra=("filename",))
    fname_col = table.columns(["filename"])["filename"]
    by_id: dict[str, list[_OdirRow]] = {}
    eye_rows: dict[tuple[str, str], int] = {}
    for r, (_, cells) in zip(rows, table.rows, strict=True):
        group = by_id.setdefault(r.id, [])
        if group:
            first = group[0]
            for col in ODIR_COLUMNS:
                if r.cells[col] != first.cells[col]:
                    raise DataError(
                        f"rows {first.row} and {r.row} of patient {r.id!r} disagree on {col!r} "
                        f"({first.cells[col]!r} vs {r.cells[col]!r})",
                        file=csv_path,
                        row=r.row,
                        column=col,
                    )
        group.append(r)
        filename = cell_text(cells[fname_col])
        sides = [s for s in SIDES if r.fundus[s] == filename]
        if not sides:
            raise DataError(
                f"filename {filename!r} is neither Left-Fundus {r.fundus['left']!r} nor Right-Fundus "
                f"{r.fundus['right']!r}",
                file=csv_path,
                row=r.row,
                column="filename",
            )
        key = (r.id, sides[0])
        if key in eye_rows:
            raise DataError(
                f"the {sides[0]} eye of patient {r.id!r} has two rows: {eye_rows[key]} and {r.row}",
                file=csv_path,
                row=r.row,
                column="filename",
            )
        eye_rows[key] = r.row
    probes = [cell_text(cells[fname_col]) for _, cells in table.rows[:20]]
    image_dir = _find_image_dir(csv_path.parent, probes, KAGGLE_IMAGE_DIRS) if rows else None
    notes = _blank_note(table)
    if image_dir is None:
        if check_images and rows:
            raise DataError(
                f"cannot find the images: no folder under {csv_path.parent} holds {probes[0]} "
                f"(looked in {', '.join(KAGGLE_IMAGE_DIRS)} and sub-folders {_SEARCH_DEPTH} levels deep)",
                file=csv_path,
            )
        image_dir = csv_path.parent / KAGGLE_IMAGE_DIRS[-1]
        notes.append(f"{csv_path.name}: image folder not found; paths point into {image_dir} (unchecked)")
    files = _Files()
    missing = _Missing()
    patients = []
    unlisted_absent: list[str] = []
    for pid, group in by_id.items():
        r = group[0]
        paths: dict[str, Path | None] = {}
        for side in SIDES:
            path = image_dir / r.fundus[side]
            row = eye_rows.get((pid, side))
            if row is not None:
                if check_images and not files.exists(path):
                    missing.add(csv_path, row, "filename", path)
                paths[side] = path
            elif files.exists(path):
                # No row of its own, but the photograph is there (original images): use it.
                paths[side] = path
            else:
                paths[side] = None
                unlisted_absent.append(f"{pid}_{side}")
        patients.append(_odir_patient(r, paths, "train"))
    missing.raise_if_any()
    notes.insert(
        0, f"train: {len(patients)} patients from {len(rows)} rows of {csv_path.name}, images in {image_dir}"
    )
    if unlisted_absent:
        notes.append(
            f"{len(unlisted_absent)} eye(s) have no row in {csv_path.name} and no image file, treated as "
            f"missing: {_preview(unlisted_absent)}"
        )
    return _Loaded(patients, [csv_path], notes)


def _load_paired(csv_path: Path, check_images: bool) -> tuple[_Loaded, tuple[str, ...]]:
    """The generic `patient_id,left,right,<labels...>` CSV."""
    table = read_table(csv_path)
    got = [_norm_col(h) for h in table.header[:3]]
    if got != list(PAIRED_COLUMNS):
        raise DataError(
            f"header must start with {','.join(PAIRED_COLUMNS)} followed by label columns; found "
            f"{','.join(table.header)}",
            file=csv_path,
            row=1,
        )
    label_names = tuple(table.header[3:])
    if not label_names:
        raise DataError("no label columns after patient_id,left,right", file=csv_path, row=1)
    if any(not n for n in label_names) or len(set(label_names)) != len(label_names):
        raise DataError(
            f"label column names must be non-empty and distinct; found {', '.join(map(repr, label_names))}",
            file=csv_path,
            row=1,
        )
    files = _Files()
    missing = _Missing()
    patients = []
    ids: list[tuple[int, str]] = []
    for number, cells in table.rows:
        pid = cell_text(cells[0])
        if not pid:
            raise DataError("patient_id is empty", file=csv_path, row=number, column="patient_id")
        ids.append((number, pid))
        paths: dict[str, Path | None] = {}
        for side, i in (("left", 1), ("right", 2)):
            text = cell_text(cells[i])
            if not text:
                paths[side] = None
                continue
            path = Path(text).expanduser()
            path = path if path.is_absolute() else csv_path.parent / path
            if check_images and not files.exists(path):
                missing.add(csv_path, number, side, path)
            paths[side] = path
        if paths["left"] is None and paths["right"] is None:
            raise DataError("both eyes are empty (at least one image is needed)", file=csv_path, row=number)
        labels = np.array(
            [_parse_label(cells[3 + j], table, number, name) for j, name in enumerate(label_names)],
            dtype=np.uint8,
        )
        patients.append(
            Patient(id=pid, age=None, sex=None, left=paths["left"], right=paths["right"], labels=labels)
        )
    _check_unique_ids(table, ids, "patient_id")
    missing.raise_if_any()
    one_eyed = sum((p.left is None) != (p.right is None) for p in patients)
    notes = [f"all: {len(patients)} patients from {csv_path.name}", *_blank_note(table)]
    if one_eyed:
        notes.append(f"{one_eyed} patient(s) have one eye only")
    return _Loaded(patients, [csv_path], notes), label_names


# --- format detection ----------------------------------------------------------------------------


@dataclass
class _Found:
    format: str
    root: Path
    annotation: Path | None = None  # challenge / kaggle / paired file, or an OIA split's xlsx
    oia_split: Path | None = None  # an OIA split folder given on its own


#: Extensions of annotation tables looked at in a folder (the content decides how each is read).
_TABLE_SUFFIXES = (".csv", ".xlsx", ".xls")
_LOOKED_FOR = (
    f"{CHALLENGE_XLSX} (or another .xlsx with the ODIR columns), "
    f"'Training Set/Annotation/*.xlsx' (OIA-ODIR), an 'Annotation/' + 'Images/' split folder, "
    f"{KAGGLE_CSV}, or a CSV with header {','.join(PAIRED_COLUMNS)},<labels...>"
)


def _detect_file(path: Path) -> _Found:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError("file is empty", file=path)
    kind = table_kind(path)
    if kind == "xls":
        raise DataError(_OLD_XLS, file=path)
    if kind == "xlsx":
        parent = path.parent
        if parent.name.lower() == "annotation" and (parent.parent / "Images").is_dir():
            return _Found("oia", parent.parent.parent, annotation=path, oia_split=parent.parent)
        return _Found("challenge", parent, annotation=path)
    if kind == "csv":
        header = _peek_header(path)
        if header[:3] == list(PAIRED_COLUMNS):
            return _Found("paired_csv", path.parent, annotation=path)
        if _has_columns(header, KAGGLE_COLUMNS):
            return _Found("kaggle", path.parent, annotation=path)
        if _has_columns(header, ODIR_COLUMNS):
            return _Found("challenge", path.parent, annotation=path)
        if path.name == KAGGLE_CSV:
            return _Found("kaggle", path.parent, annotation=path)  # read_table names the bad columns
        if suffix not in _TABLE_SUFFIXES:
            # Any text file reads as "CSV": without a known header or extension it is not a table.
            raise DataError(
                f"unknown dataset file type {suffix or '(none)'}; expected one of: {_LOOKED_FOR}", file=path
            )
        raise DataError(
            f"unknown CSV format: expected the Kaggle columns ({', '.join(KAGGLE_COLUMNS)}), the ODIR "
            f"columns, or a header starting {','.join(PAIRED_COLUMNS)}; found "
            f"{','.join(header) or 'no header'}",
            file=path,
            row=1,
        )


def _detect_dir(d: Path) -> _Found | None:
    if any((d / name / "Annotation").is_dir() for name, _ in OIA_SPLITS) and not list(d.glob(CHALLENGE_GLOB)):
        return _Found("oia", d)
    if (d / "Annotation").is_dir() and (d / "Images").is_dir():
        return _Found("oia", d.parent, oia_split=d)
    challenge = sorted(p for p in d.glob(CHALLENGE_GLOB) if not _is_lock_or_hidden(p))
    if len(challenge) > 1:
        exact = [p for p in challenge if p.name == CHALLENGE_XLSX]
        if not exact:
            raise DataError(
                f"several challenge annotation files ({', '.join(p.name for p in challenge)}); pass one "
                "of them as the data path",
                file=d,
            )
        challenge = exact
    if challenge:
        return _Found("challenge", d, annotation=challenge[0])
    if (d / KAGGLE_CSV).is_file():
        return _Found("kaggle", d, annotation=d / KAGGLE_CSV)
    tables = sorted(
        p
        for p in d.iterdir()
        if p.suffix.lower() in _TABLE_SUFFIXES and p.is_file() and not _is_lock_or_hidden(p)
    )
    matches: list[_Found] = []
    for p in tables:
        header = _peek_header(p)
        is_csv = table_kind(p) == "csv"
        if is_csv and header[:3] == list(PAIRED_COLUMNS):
            matches.append(_Found("paired_csv", d, annotation=p))
        elif is_csv and _has_columns(header, KAGGLE_COLUMNS):
            matches.append(_Found("kaggle", d, annotation=p))
        elif _has_columns(header, ODIR_COLUMNS):
            matches.append(_Found("challenge", d, annotation=p))
    if len(matches) > 1:
        raise DataError(
            f"several annotation tables ({', '.join(m.annotation.name for m in matches if m.annotation)}); "
            "pass one of them as the data path",
            file=d,
        )
    return matches[0] if matches else None


def _detect(path: Path) -> tuple[_Found, list[str]]:
    if path.is_file():
        return _detect_file(path), []
    if not path.is_dir():
        raise DataError("dataset path does not exist", file=path)
    found = _detect_dir(path)
    if found is not None:
        return found, []
    # A release unpacked into one more folder (e.g. an archive's top folder): look one level down.
    subs = [c for c in sorted(path.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    hits = [(c, f) for c in subs if (f := _detect_dir(c)) is not None]
    if len(hits) == 1:
        return hits[0][1], [f"dataset found in sub-folder {hits[0][0].name}"]
    if len(hits) > 1:
        raise DataError(
            f"several datasets in sub-folders ({', '.join(c.name for c, _ in hits)}); pass one of them",
            file=path,
        )
    raise DataError(f"unknown dataset format: looked for {_LOOKED_FOR}", file=path)


def _is_synthetic(*folders: Path) -> bool:
    return any((f / SYNTHETIC_MARKER).is_file() for f in folders)


# --- public entry --------------------------------------------------------------------------------


def load_dataset(
    data: str | os.PathLike[str], *, problem_images: str = "exclude", check_images: bool = True
) -> Dataset:
    """Load a dataset, finding its format from a folder or an annotation file.

    Args:
        data: dataset folder or annotation file (.xlsx / .csv).
        problem_images: ``"exclude"`` marks the 16 altered ODIR training images excluded (no usable
            path); ``"keep"`` uses them. Applies only to real ODIR training data (see module doc).
        check_images: require every annotated image file to exist (DataError naming the first
            missing one and the count of the others).
    """
    registry.PROBLEM_IMAGES.check(problem_images, key="problem_images")
    path = Path(data).expanduser()
    found, notes = _detect(path)
    label_names: tuple[str, ...] = ODIR_LABELS
    if found.format == "oia":
        loaded = _Loaded()
        if found.oia_split is not None:
            loaded.extend(_load_oia_split(found.oia_split, check_images, found.annotation))
            root = found.oia_split
        else:
            root = found.root
            for name, _ in OIA_SPLITS:
                if (root / name / "Annotation").is_dir():
                    loaded.extend(_load_oia_split(root / name, check_images))
        synthetic = _is_synthetic(root, root.parent)
    elif found.format == "challenge":
        assert found.annotation is not None
        root = found.root
        source = _table_source(found.annotation)
        loaded = _load_odir_table(found.annotation, source, check_images, CHALLENGE_IMAGE_DIRS, root)
        loaded.extend(_load_test_folders(root, check_images))
        synthetic = _is_synthetic(root)
    elif found.format == "kaggle":
        assert found.annotation is not None
        root = found.root
        loaded = _load_kaggle(found.annotation, check_images)
        synthetic = _is_synthetic(root)
    else:
        assert found.annotation is not None
        root = found.root
        loaded, label_names = _load_paired(found.annotation, check_images)
        synthetic = _is_synthetic(root)
    _check_unique_across_files(loaded)
    notes += loaded.notes
    if synthetic:
        notes.append(f"synthetic data ({SYNTHETIC_MARKER}): known problem-image list not applied")
    elif found.format != "paired_csv":
        notes += _apply_problem_images(loaded.patients, problem_images)
    notes += _eye_notes(loaded.patients)
    return Dataset(
        root=root,
        format=found.format,
        label_names=label_names,
        patients=loaded.patients,
        annotation_files=loaded.annotation_files,
        synthetic=synthetic,
        notes=notes,
    )


def _check_unique_across_files(loaded: _Loaded) -> None:
    seen: set[tuple[str, str]] = set()
    for p in loaded.patients:
        if p.key in seen:
            raise DataError(f"patient ID {p.id!r} appears in two annotation files of source {p.source!r}")
        seen.add(p.key)


def _apply_problem_images(patients: Sequence[Patient], mode: str) -> list[str]:
    hits = []
    for p in patients:
        if p.source != "train":
            continue  # the list names training-release images; test IDs are other patients
        for side in SIDES:
            if (p.id, side) in PROBLEM_IMAGES:
                hits.append(f"{p.id}_{side}")
                if mode == "exclude":
                    setattr(p, f"{side}_excluded", True)
    if not hits:
        return []
    verb = "excluded" if mode == "exclude" else "kept (problem_images='keep')"
    return [f"{len(hits)} known problem image(s) {verb}: {_preview(hits, 16)}"]


def _eye_notes(patients: Sequence[Patient]) -> list[str]:
    notes = []
    unknown_eyes: list[str] = []
    unknown_words: Counter[str] = Counter()
    for p in patients:
        for side in SIDES:
            result = keyword_labels(getattr(p, f"{side}_keywords"))
            if result.fundus and result.unknown:
                unknown_eyes.append(f"{p.id}_{side}")
                unknown_words.update(result.unknown)
    if unknown_eyes:
        words = ", ".join(f"{k!r} x{n}" for k, n in unknown_words.most_common())
        notes.append(
            f"{len(unknown_eyes)} eye(s) have a keyword not in the map ({words}): their per-eye labels "
            f"are unknown (masked), their patients keep the annotated labels: {_preview(unknown_eyes)}"
        )
    non_fundus = [f"{p.id}_{s}" for p in patients for s in SIDES if not getattr(p, f"{s}_fundus")]
    if non_fundus:
        notes.append(
            f"{len(non_fundus)} eye(s) are not fundus photographs (anterior segment / no fundus image) "
            f"and are not used: {_preview(non_fundus)}"
        )
    unusable = [p.id for p in patients if not p.usable]
    if unusable:
        notes.append(
            f"{len(unusable)} patient(s) have no usable eye (kept, but cannot be used for training): "
            f"{_preview(unusable)}"
        )
    return notes


def _preview(items: Sequence[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


# --- keyword check -------------------------------------------------------------------------------


@dataclass
class KeywordReport:
    """How well the keyword map reproduces the annotated patient labels.

    A patient is checked when neither fundus eye has an unknown keyword and at least one fundus eye
    has a deciding keyword (an eye with an unknown keyword has unknown per-eye labels; its patient
    keeps the annotated labels and is counted in `patients_with_unknown` / `eyes_with_unknown`);
    it agrees when the ODIR rule applied to the per-eye keyword labels (union of
    disease labels, N only if every considered eye is normal) equals the annotated labels.
    """

    patients: int
    checked: int
    agreeing: int
    disagreeing: list[str]
    unknown_keywords: dict[str, int]
    patients_with_unknown: int
    patients_without_keywords: int
    non_fundus_eyes: int
    #: per label: (keywords say 1 but annotation 0, keywords say 0 but annotation 1), checked patients
    label_mismatches: dict[str, tuple[int, int]] = field(default_factory=dict)
    applicable: bool = True
    eyes_with_unknown: int = 0

    @property
    def agreement(self) -> float:
        """Fraction of checked patients whose keywords reproduce their labels (nan if none)."""
        return self.agreeing / self.checked if self.checked else float("nan")

    def __str__(self) -> str:
        if not self.applicable:
            return f"keyword check: not applicable ({self.patients} patients without ODIR keywords/labels)"
        unknown_eyes = (
            f" ({self.eyes_with_unknown} eyes: per-eye labels unknown, patient labels as annotated)"
            if self.eyes_with_unknown
            else ""
        )
        lines = [
            f"keyword check: {self.checked} of {self.patients} patients checked, "
            f"{self.agreeing} agree ({self.agreement:.1%})",
            f"  not checked: {self.patients_with_unknown} with an unknown keyword{unknown_eyes}, "
            f"{self.patients_without_keywords} without a deciding keyword; "
            f"non-fundus eyes: {self.non_fundus_eyes}",
        ]
        if self.disagreeing:
            lines.append(f"  disagreeing patients: {_preview(self.disagreeing, 20)}")
        bad = {k: v for k, v in self.label_mismatches.items() if any(v)}
        if bad:
            lines.append(
                "  mismatches per label (keywords 1/annotation 0, keywords 0/annotation 1): "
                + ", ".join(f"{k} {a}/{b}" for k, (a, b) in bad.items())
            )
        if self.unknown_keywords:
            items = [f"{k!r} x{n}" for k, n in self.unknown_keywords.items()]
            lines.append(f"  unknown keywords ({len(items)}): {_preview(items, 20)}")
        return "\n".join(lines)


def keyword_report(dataset: Dataset) -> KeywordReport:
    """Check the keyword map against a dataset's annotated labels (see `KeywordReport`).

    Unknown keywords are listed with their counts, never guessed; their patients are not checked.
    """
    if tuple(dataset.label_names) != ODIR_LABELS or dataset.format == "paired_csv":
        return KeywordReport(len(dataset), 0, 0, [], {}, 0, 0, 0, applicable=False)
    unknown: Counter[str] = Counter()
    checked = agreeing = with_unknown = without = non_fundus = unknown_eyes = 0
    disagreeing: list[str] = []
    mism = np.zeros((len(ODIR_LABELS), 2), dtype=np.int64)
    for p in dataset.patients:
        results = [keyword_labels(p.left_keywords), keyword_labels(p.right_keywords)]
        non_fundus += sum(not r.fundus for r in results)
        # An unknown keyword on a non-fundus image changes nothing (that eye gives no labels).
        unknown_here = [r for r in results if r.fundus and r.unknown]
        if unknown_here:
            for r in unknown_here:
                unknown.update(r.unknown)
            with_unknown += 1
            unknown_eyes += len(unknown_here)
            continue
        derived = patient_labels_from_eyes(*results)
        if derived is None:
            without += 1
            continue
        checked += 1
        truth = p.labels.astype(np.uint8)
        if np.array_equal(derived, truth):
            agreeing += 1
        else:
            disagreeing.append(p.id if p.source in ("train", "all") else f"{p.source}:{p.id}")
        mism[:, 0] += (derived == 1) & (truth == 0)
        mism[:, 1] += (derived == 0) & (truth == 1)
    return KeywordReport(
        patients=len(dataset),
        checked=checked,
        agreeing=agreeing,
        disagreeing=disagreeing,
        unknown_keywords=dict(unknown.most_common()),
        patients_with_unknown=with_unknown,
        patients_without_keywords=without,
        non_fundus_eyes=non_fundus,
        label_mismatches={lab: (int(a), int(b)) for lab, (a, b) in zip(ODIR_LABELS, mism, strict=True)},
        eyes_with_unknown=unknown_eyes,
    )


__all__ = [
    "FORMATS",
    "ODIR_COLUMNS",
    "PROBLEM_IMAGES",
    "Dataset",
    "KeywordReport",
    "KeywordResult",
    "Patient",
    "cell_text",
    "keyword_labels",
    "keyword_report",
    "load_dataset",
    "read_table",
]
