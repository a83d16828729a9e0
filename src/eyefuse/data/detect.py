"""Format detection: which dataset format a folder or an annotation file holds (by file names,
folder layout and table headers, a file's kind by its content), with one clear error when none or
several match."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eyefuse.data.layouts import (
    CHALLENGE_GLOB,
    CHALLENGE_XLSX,
    KAGGLE_COLUMNS,
    KAGGLE_CSV,
    ODIR_COLUMNS,
    OIA_SPLITS,
    PAIRED_COLUMNS,
)
from eyefuse.data.tables import OLD_XLS, is_lock_or_hidden, norm_col, peek_header, table_kind
from eyefuse.errors import DataError


@dataclass
class Found:
    """A detected dataset: its format, root folder and the annotation or split folder to read."""

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


def _detect_file(path: Path) -> Found:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError("file is empty", file=path)
    kind = table_kind(path)
    if kind == "xls":
        raise DataError(OLD_XLS, file=path)
    if kind == "xlsx":
        parent = path.parent
        if parent.name.lower() == "annotation" and (parent.parent / "Images").is_dir():
            return Found("oia", parent.parent.parent, annotation=path, oia_split=parent.parent)
        return Found("challenge", parent, annotation=path)
    if kind == "csv":
        header = peek_header(path)
        if header[:3] == list(PAIRED_COLUMNS):
            return Found("paired_csv", path.parent, annotation=path)
        if _has_columns(header, KAGGLE_COLUMNS):
            return Found("kaggle", path.parent, annotation=path)
        if _has_columns(header, ODIR_COLUMNS):
            return Found("challenge", path.parent, annotation=path)
        if path.name == KAGGLE_CSV:
            return Found("kaggle", path.parent, annotation=path)  # read_table names the bad columns
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


def _detect_dir(d: Path) -> Found | None:
    if any((d / name / "Annotation").is_dir() for name, _ in OIA_SPLITS) and not list(d.glob(CHALLENGE_GLOB)):
        return Found("oia", d)
    if (d / "Annotation").is_dir() and (d / "Images").is_dir():
        return Found("oia", d.parent, oia_split=d)
    challenge = sorted(p for p in d.glob(CHALLENGE_GLOB) if not is_lock_or_hidden(p))
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
        return Found("challenge", d, annotation=challenge[0])
    if (d / KAGGLE_CSV).is_file():
        return Found("kaggle", d, annotation=d / KAGGLE_CSV)
    tables = sorted(
        p
        for p in d.iterdir()
        if p.suffix.lower() in _TABLE_SUFFIXES and p.is_file() and not is_lock_or_hidden(p)
    )
    matches: list[Found] = []
    for p in tables:
        header = peek_header(p)
        is_csv = table_kind(p) == "csv"
        if is_csv and header[:3] == list(PAIRED_COLUMNS):
            matches.append(Found("paired_csv", d, annotation=p))
        elif is_csv and _has_columns(header, KAGGLE_COLUMNS):
            matches.append(Found("kaggle", d, annotation=p))
        elif _has_columns(header, ODIR_COLUMNS):
            matches.append(Found("challenge", d, annotation=p))
    if len(matches) > 1:
        raise DataError(
            f"several annotation tables ({', '.join(m.annotation.name for m in matches if m.annotation)}); "
            "pass one of them as the data path",
            file=d,
        )
    return matches[0] if matches else None


def detect(path: Path) -> tuple[Found, list[str]]:
    """The dataset at a folder or annotation file (or one sub-folder down), with a note when it
    was found in a sub-folder; DataError when there is none or several."""
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


def _has_columns(header: Sequence[str], columns: Sequence[str]) -> bool:
    return all(norm_col(c) in header for c in columns)
