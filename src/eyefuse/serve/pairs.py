"""Which photographs make which patient: pairs from a CSV (`--pairs`) or a folder (`--dir`) of
`{ID}_left.<ext>` / `{ID}_right.<ext>` files, checked before any model is loaded.

Every entry of a folder that is not such a file is counted and named; two files for the same eye
of the same patient are an error, since either choice would be a guess.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from eyefuse.errors import DataError

#: One eye's photograph: a file path, the file's bytes, or None when that eye is not given.
EyeSource = Path | str | bytes | None
#: A patient to predict: (patient ID, left eye, right eye).
PatientInput = tuple[str, EyeSource, EyeSource]

SIDES = ("left", "right")
#: File extensions `--dir` takes: every format Pillow opens, which is what `--left`/`--right` accept
#: (a photograph is decoded by its content, `eyefuse.data.decode.decode_image`).
IMAGE_SUFFIXES: tuple[str, ...] = tuple(
    sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
)
_EYE_FILE = re.compile(r"^(?P<id>.+)_(?P<side>left|right)(?P<ext>\.[A-Za-z0-9]+)$", re.IGNORECASE)
_SHOW = 10  # how many names a summary lists before "and N more"


@dataclass
class PairInputs(Sequence[PatientInput]):
    """Patients read from a CSV or a folder, plus what was found but not used (named, counted)."""

    pairs: list[PatientInput]
    source: Path
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: Any) -> Any:
        return self.pairs[i]

    def __iter__(self) -> Iterator[PatientInput]:
        return iter(self.pairs)

    def notes(self) -> list[str]:
        if not self.ignored:
            return []
        return [
            f"{len(self.ignored)} entr{'y' if len(self.ignored) == 1 else 'ies'} in {self.source} ignored "
            f"(not {{ID}}_left/{{ID}}_right.<image extension>): {name_listing(self.ignored)}"
        ]


def name_listing(items: Sequence[str]) -> str:
    """The first names of `items` and how many more, for one-line summaries."""
    shown = ", ".join(items[:_SHOW])
    return shown + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def pairs_from_csv(path: str | Path) -> PairInputs:
    """Patients from a CSV with the header `patient_id,left,right` (any column order).

    Image paths are relative to the CSV's folder (absolute paths are kept); an empty cell means that
    eye is missing. Errors name the file, row (header = row 1) and column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("CSV file not found", file=path)
    expected = ("patient_id", "left", "right")
    pairs: list[PatientInput] = []
    seen: dict[str, int] = {}
    try:
        # utf-8-sig: a spreadsheet's byte-order mark must not turn 'patient_id' into an unknown column.
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise DataError(f"not a UTF-8 text file ({e.reason})", file=path) from None
    if not rows:
        raise DataError("empty file: expected the header patient_id,left,right", file=path)
    header = [c.strip() for c in rows[0]]
    for col in header:
        if col not in expected:
            raise DataError(
                f"unexpected column {col!r}: the header must be patient_id,left,right",
                file=path,
                row=1,
                column=col,
            )
    for col in expected:
        if col not in header:
            raise DataError(
                f"missing column {col!r}: the header must be patient_id,left,right",
                file=path,
                row=1,
                column=col,
            )
    if len(set(header)) != len(header):
        raise DataError("a column appears twice in the header", file=path, row=1)
    index = {name: header.index(name) for name in expected}
    for row_no, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue  # a blank line holds no patient
        if len(cells) != len(header):
            raise DataError(
                f"{len(cells)} value(s) where the header has {len(header)}", file=path, row=row_no
            )
        pid = cells[index["patient_id"]].strip()
        if not pid:
            raise DataError("empty patient ID", file=path, row=row_no, column="patient_id")
        if pid in seen:
            raise DataError(
                f"patient {pid} appears twice (rows {seen[pid]} and {row_no})",
                file=path,
                row=row_no,
                column="patient_id",
            )
        seen[pid] = row_no
        eyes: list[Path | None] = []
        for side in SIDES:
            cell = cells[index[side]].strip()
            eyes.append((path.parent / cell) if cell else None)
        pairs.append((pid, eyes[0], eyes[1]))
    if not pairs:
        raise DataError("no patient rows after the header", file=path)
    return PairInputs(pairs, path)


def _id_key(pid: str) -> tuple[int, int, str]:
    return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def _eye_file(name: str) -> re.Match[str] | None:
    """`{ID}_left.<ext>` / `{ID}_right.<ext>` with an image extension (any case), else None."""
    m = _EYE_FILE.match(name)
    return m if m is not None and m["ext"].lower() in IMAGE_SUFFIXES else None


def pairs_from_dir(folder: str | Path) -> PairInputs:
    """Patients from a folder of `{ID}_left.<ext>` / `{ID}_right.<ext>` files (ext: any format in
    `IMAGE_SUFFIXES`, any case), sorted by ID (numerically where IDs are numbers).

    A patient with only one eye's file is kept (predicted from that eye, with a warning); every other
    entry of the folder is counted and named in `ignored`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("image folder not found (or not a folder)", file=folder)
    found: dict[str, dict[str, Path]] = {}
    ignored: list[str] = []
    for entry in sorted(folder.iterdir()):
        m = _eye_file(entry.name)
        if m is None or not entry.is_file():
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
            continue
        pid, side = m["id"], m["side"].lower()
        eyes = found.setdefault(pid, {})
        if side in eyes:
            raise DataError(
                f"patient {pid} has two {side}-eye files, {eyes[side].name} and {entry.name}: keep one",
                file=folder,
            )
        eyes[side] = entry
    if not found:
        raise DataError(
            f"no {{ID}}_left/{{ID}}_right image files found ({len(ignored)} other entries)", file=folder
        )
    pairs = [(pid, found[pid].get("left"), found[pid].get("right")) for pid in sorted(found, key=_id_key)]
    return PairInputs(pairs, folder, ignored)


def pair_id_from_files(left: Path | None, right: Path | None) -> str:
    """The patient ID of a single pair: the `{ID}` of the `{ID}_left/right.*` file names when those
    that follow the pattern agree, else the stem of the first given file."""
    ids = {m["id"] for p in (left, right) if p is not None and (m := _eye_file(p.name))}
    if len(ids) == 1:
        return ids.pop()
    first = left if left is not None else right
    assert first is not None
    return first.stem
