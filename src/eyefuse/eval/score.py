"""The `eyefuse score` command's logic: check a submission CSV as the ODIR-2019 checker does and
score it against an annotation file, and the writer of that CSV.

The official checker refuses a submission whose columns or rows are out of order or which misses
patients; here each refusal is a `DataError` that names the row, the column or the patients
involved, so the file can be fixed rather than guessed at.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eyefuse import ODIR_LABELS
from eyefuse.data.layouts import ZH_COLUMNS
from eyefuse.data.tables import table_kind
from eyefuse.errors import DataError
from eyefuse.eval.official import OFFICIAL_F1_NOTE, OFFICIAL_THRESHOLD, official_score
from eyefuse.utils.io import atomic_open

#: Columns that mark the Kaggle `full_df.csv` copy (one row per image, not per patient).
_PER_IMAGE_COLUMNS = ("filepath", "filename", "target", "labels")
_SHOW = 10  # how many patient IDs an error message lists


@dataclass
class TruthTable:
    """Patient-level truth read from an annotation file, rows in the file's order."""

    file: Path
    ids: list[str]
    labels: np.ndarray  # uint8 (patients x labels)
    label_names: tuple[str, ...]


@dataclass
class ScoreResult:
    """The official ODIR-2019 score of one submission."""

    kappa: float
    f1: float
    auc: float
    final: float
    n_patients: int
    n_labels: int = len(ODIR_LABELS)
    predictions: Path | None = None
    truth: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `--json` output: the four official numbers and the number of patients."""
        return {
            "kappa": self.kappa,
            "f1": self.f1,
            "auc": self.auc,
            "final": self.final,
            "n_patients": self.n_patients,
        }


def normalize_id(value: Any) -> str | None:
    """A patient ID as the string of its integer where it is one (`12`, `12.0`, `"012"` -> `"12"`,
    as the official checker's `int()` reads them), else the stripped text; None when empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else str(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return str(int(text))
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if f.is_integer() else text


def _label_value(value: Any) -> int | None:
    """0 or 1 from an annotation cell (1, 1.0, "1"), None for anything else."""
    if isinstance(value, str):
        value = value.strip()
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return int(value)
    return None


def read_truth(path: str | os.PathLike[str], label_names: Sequence[str] = ODIR_LABELS) -> TruthTable:
    """Read per-patient truth from an ODIR annotation (an xlsx workbook) or a CSV.

    The file is recognised by its content, not its extension (the authors' `off_gt.xls` is an xlsx
    workbook). Needs an `ID` column and one 0/1 column per label (matched by name; other columns
    are ignored); the Chinese headers of the OIA-ODIR annotations (编号 for ID, ...) count as their
    English names. A file with one row per image (the Kaggle `full_df.csv`) is refused: the
    official score is per patient.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("truth file not found", file=path)
    try:
        kind = table_kind(path)
        if kind == "xlsx":
            with open(path, "rb") as f:
                frame = pd.read_excel(f, sheet_name=0, dtype=object, engine="openpyxl")
        elif kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        else:
            raise DataError(
                "an old binary Excel (.xls) file is not supported; save it as .xlsx or .csv", file=path
            )
    except DataError:
        raise
    except Exception as e:  # pandas/openpyxl raise many types for unreadable files
        raise DataError(f"cannot read truth file: {e}", file=path) from e
    columns = [ZH_COLUMNS.get(" ".join(str(c).split()), str(c).strip()) for c in frame.columns]
    frame.columns = columns
    per_image = [c for c in _PER_IMAGE_COLUMNS if c in columns]
    if per_image:
        raise DataError(
            f"looks like one row per image (columns {', '.join(per_image)}, as in the Kaggle full_df.csv); "
            "scoring needs the per-patient annotation (ID + N D G C A H M O), e.g. "
            "'off-site test annotation (English).xlsx'",
            file=path,
        )
    missing = [c for c in ("ID", *label_names) if c not in columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; found {', '.join(columns)}", file=path)
    if frame.empty:
        raise DataError("no patient rows", file=path)
    ids: list[str] = []
    first_row: dict[str, int] = {}
    labels = np.zeros((len(frame), len(label_names)), dtype=np.uint8)
    for i, (raw_id, *cells) in enumerate(frame[["ID", *label_names]].itertuples(index=False, name=None)):
        row = i + 2  # spreadsheet row: the header is row 1
        pid = normalize_id(raw_id)
        if pid is None:
            raise DataError("empty patient ID", file=path, row=row, column="ID")
        if pid in first_row:
            raise DataError(
                f"patient {pid} appears twice (rows {first_row[pid]} and {row}); "
                "the truth needs one row per patient",
                file=path,
                row=row,
                column="ID",
            )
        first_row[pid] = row
        ids.append(pid)
        for j, (name, cell) in enumerate(zip(label_names, cells, strict=True)):
            v = _label_value(cell)
            if v is None:
                raise DataError(f"label must be 0 or 1, not {cell!r}", file=path, row=row, column=name)
            labels[i, j] = v
    return TruthTable(path, ids, labels, tuple(label_names))


def _check_header(header: list[str], expected: list[str], path: Path) -> None:
    if header == expected:
        return
    for pos, (got, want) in enumerate(zip(header, expected, strict=False), start=1):
        if got != want:
            where = f"position {pos}"
            if got in expected:
                msg = f"column {got!r} at {where} is out of order: expected {want!r} there"
            else:
                msg = f"unexpected column {got!r} at {where}: expected {want!r}"
            raise DataError(
                f"{msg} (the header must be exactly {','.join(expected)})", file=path, row=1, column=got
            )
    if len(header) < len(expected):
        lost = expected[len(header) :]
        raise DataError(
            f"missing column(s) {', '.join(lost)} from position {len(header) + 1} "
            f"(the header must be exactly {','.join(expected)})",
            file=path,
            row=1,
            column=lost[0],
        )
    extra = header[len(expected) :]
    raise DataError(
        f"extra column(s) {', '.join(repr(c) for c in extra)} from position {len(expected) + 1} "
        f"(the header must be exactly {','.join(expected)})",
        file=path,
        row=1,
        column=extra[0],
    )


def read_predictions(
    path: str | os.PathLike[str], label_names: Sequence[str] = ODIR_LABELS
) -> tuple[list[str], np.ndarray]:
    """Read a submission CSV (`ID,N,D,G,C,A,H,M,O`), checking its header and every value.

    Returns the patient IDs in file order and the (patients x labels) probabilities. Order and
    completeness against a truth file are checked by `score_files`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("predictions file not found", file=path)
    expected = ["ID", *label_names]
    ids: list[str] = []
    values: list[list[float]] = []
    first_row: dict[str, int] = {}
    # utf-8-sig: a spreadsheet's byte-order mark must not turn 'ID' into an unknown column.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError("empty file: expected the header " + ",".join(expected), file=path)
        _check_header(header, expected, path)
        for row_no, cells in enumerate(reader, start=2):
            if len(cells) != len(expected):
                raise DataError(
                    f"{len(cells)} value(s) where the header has {len(expected)}", file=path, row=row_no
                )
            pid = normalize_id(cells[0])
            if pid is None:
                raise DataError("empty patient ID", file=path, row=row_no, column="ID")
            if pid in first_row:
                raise DataError(
                    f"patient {pid} appears twice (rows {first_row[pid]} and {row_no})",
                    file=path,
                    row=row_no,
                    column="ID",
                )
            first_row[pid] = row_no
            probs = []
            for name, text in zip(label_names, cells[1:], strict=True):
                try:
                    v = float(text)
                except ValueError:
                    raise DataError(f"{text!r} is not a number", file=path, row=row_no, column=name) from None
                if not math.isfinite(v):
                    raise DataError(
                        f"value {text!r} is not a finite number", file=path, row=row_no, column=name
                    )
                if not 0.0 <= v <= 1.0:
                    raise DataError(f"value {text} is outside [0, 1]", file=path, row=row_no, column=name)
                probs.append(v)
            ids.append(pid)
            values.append(probs)
    if not ids:
        raise DataError("no patient rows after the header", file=path)
    return ids, np.array(values, dtype=np.float64)


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def score_files(
    predictions: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    label_names: Sequence[str] = ODIR_LABELS,
) -> ScoreResult:
    """Check a submission against a truth file as the official checker does, then score it.

    Refuses (DataError) a wrong header, an extra or missing patient, a duplicate ID, a row out of
    the truth's order, and any value that is not a number in [0, 1]; then returns the official
    ODIR-2019 score (see `eyefuse.eval.official.official_score`).
    """
    predictions, truth = Path(predictions), Path(truth)
    table = read_truth(truth, label_names)
    ids, prob = read_predictions(predictions, label_names)
    truth_ids = set(table.ids)
    extra = [f"{pid} (row {r})" for r, pid in enumerate(ids, start=2) if pid not in truth_ids]
    if extra:
        raise DataError(
            f"{len(extra)} patient(s) not in the truth file {truth.name}: {_listing(extra)}", file=predictions
        )
    given = set(ids)
    missing = [pid for pid in table.ids if pid not in given]
    if missing:
        raise DataError(
            f"{len(missing)} patient(s) of the truth file missing: {_listing(missing)}", file=predictions
        )
    for row_no, (got, want) in enumerate(zip(ids, table.ids, strict=True), start=2):
        if got != want:
            raise DataError(
                f"patient {got} is out of order: the rows must follow the truth file, which has patient "
                f"{want} here",
                file=predictions,
                row=row_no,
                column="ID",
            )
    if table.labels.min() == table.labels.max():
        raise DataError(
            f"every label in the truth is {int(table.labels.min())}: "
            "AUC (and the official score) is undefined",
            file=truth,
        )
    s = official_score(table.labels, prob, OFFICIAL_THRESHOLD)
    return ScoreResult(
        kappa=s["kappa"],
        f1=s["f1"],
        auc=s["auc"],
        final=s["final"],
        n_patients=len(ids),
        n_labels=len(label_names),
        predictions=predictions,
        truth=truth,
    )


def format_score(result: ScoreResult, *, as_json: bool = False) -> str:
    """A small table and the note on the official F1, or with `as_json` the JSON object
    `{"kappa", "f1", "auc", "final", "n_patients"}`."""
    if as_json:
        return json.dumps(result.to_dict(), indent=2)
    lines = [
        f"ODIR-2019 official score: {result.n_patients} patients x {result.n_labels} labels, "
        f"positive when probability > {OFFICIAL_THRESHOLD}",
    ]
    if result.predictions is not None and result.truth is not None:
        lines.append(f"  predictions {result.predictions}")
        lines.append(f"  truth       {result.truth}")
    lines += [
        "",
        "  metric   value",
        f"  kappa    {result.kappa:.4f}",
        f"  F1       {result.f1:.4f}",
        f"  AUC      {result.auc:.4f}",
        f"  final    {result.final:.4f}   (kappa + F1 + AUC) / 3",
        "",
        OFFICIAL_F1_NOTE,
    ]
    return "\n".join(lines)


def _format_prob(x: float) -> str:
    # Shortest text that reads back as the same float, with at least 6 decimals: rounding to a
    # fixed number of decimals could move 0.5000001 onto 0.5 and flip the official `> 0.5`.
    return np.format_float_positional(x, unique=True, min_digits=6, trim="k")


def write_submission(
    path: str | os.PathLike[str], ids: Sequence[Any], prob: Any, label_names: Sequence[str] = ODIR_LABELS
) -> Path:
    """Write the official submission CSV `ID,N,D,G,C,A,H,M,O` atomically, one row per patient.

    Values are written so that they read back as exactly the same floats (at least 6 decimals).
    The rows follow `ids`, which must be in the truth file's order for the official checker.
    """
    path = Path(path)
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim != 2 or prob.shape != (len(ids), len(label_names)):
        raise DataError(
            f"expected {len(ids)} x {len(label_names)} probabilities for {len(ids)} patients, "
            f"got {prob.shape}",
            file=path,
        )
    if not np.isfinite(prob).all() or (prob < 0).any() or (prob > 1).any():
        raise DataError("probabilities must be finite and in [0, 1]", file=path)
    norm = [normalize_id(i) for i in ids]
    if any(i is None for i in norm):
        raise DataError(f"empty patient ID at position {norm.index(None) + 1}", file=path)
    seen: set[str | None] = set()
    for pid in norm:
        if pid in seen:
            raise DataError(f"patient {pid} appears more than once", file=path)
        seen.add(pid)
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ID", *label_names])
        for pid, row in zip(norm, prob, strict=True):
            writer.writerow([pid, *(_format_prob(float(v)) for v in row)])
    return path
