"""One loader per dataset format: the challenge / OIA annotation tables (one patient per row), the
Kaggle `full_df.csv` (one row per image, de-duplicated to patients) and the generic paired CSV.
Each returns the patients, the annotation files read and notes of what was skipped."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eyefuse.data.cells import OdirRow, check_unique_ids, odir_rows, parse_label
from eyefuse.data.images import SEARCH_DEPTH, FileIndex, MissingImages, find_image_dir
from eyefuse.data.keywords import KeywordResult, keyword_labels, split_keywords
from eyefuse.data.layouts import KAGGLE_IMAGE_DIRS, ODIR_COLUMNS, OIA_SPLITS, PAIRED_COLUMNS
from eyefuse.data.records import SIDES, Patient
from eyefuse.data.tables import SheetTable, cell_text, is_lock_or_hidden, norm_col, read_table
from eyefuse.errors import DataError


def _odir_patient(r: OdirRow, paths: dict[str, Path | None], source: str) -> Patient:
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
class Loaded:
    """What a loader read: patients, the annotation files they came from, notes for the user."""

    patients: list[Patient] = field(default_factory=list)
    annotation_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Loaded) -> None:
        self.patients += other.patients
        self.annotation_files += other.annotation_files
        self.notes += other.notes


def _blank_note(table: SheetTable) -> list[str]:
    if not table.blank_rows:
        return []
    return [f"{table.path.name}: skipped {table.blank_rows} blank row(s)"]


def load_odir_table(
    annotation: Path,
    source: str,
    check_images: bool,
    preferred_dirs: Sequence[str],
    image_base: Path,
) -> Loaded:
    """One patient per row of a challenge / OIA annotation, images searched under `image_base`."""
    table = read_table(annotation)
    rows = odir_rows(table)
    check_unique_ids(table, ((r.row, r.id) for r in rows), "ID")
    probes = [r.fundus[s] for r in rows[:20] for s in SIDES]
    image_dir = find_image_dir(image_base, probes, preferred_dirs) if rows else None
    notes = _blank_note(table)
    if image_dir is None:
        looked = ", ".join(preferred_dirs)
        if check_images and rows:
            raise DataError(
                f"cannot find the images: no folder under {image_base} holds {probes[0]} "
                f"(looked in {looked}, the folder itself and sub-folders {SEARCH_DEPTH} levels deep)",
                file=annotation,
            )
        image_dir = image_base / preferred_dirs[0]
        notes.append(f"{annotation.name}: image folder not found; paths point into {image_dir} (unchecked)")
    files = FileIndex()
    missing = MissingImages()
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
    return Loaded(patients, [annotation], notes)


def _oia_annotation(split_dir: Path) -> Path:
    ann_dir = split_dir / "Annotation"
    candidates = sorted(
        p for p in ann_dir.iterdir() if p.suffix.lower() in (".xlsx", ".xls") and not is_lock_or_hidden(p)
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


def table_source(annotation: Path) -> str:
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


def load_oia_split(split_dir: Path, check_images: bool, annotation: Path | None = None) -> Loaded:
    """One OIA-ODIR split folder (`Annotation/` + `Images/`), or the given annotation of it."""
    annotation = annotation or _oia_annotation(split_dir)
    source = _oia_source(split_dir, annotation)
    return load_odir_table(annotation, source, check_images, ("Images", "images"), split_dir)


def load_test_folders(base: Path, check_images: bool) -> Loaded:
    """The OIA-style off-site / on-site test folders beside a challenge annotation, if any."""
    out = Loaded()
    for name, source in OIA_SPLITS:
        if source == "train":
            continue
        if (base / name / "Annotation").is_dir():
            out.extend(load_oia_split(base / name, check_images))
    return out


def load_kaggle(csv_path: Path, check_images: bool) -> Loaded:
    """De-duplicate Kaggle's one-row-per-image `full_df.csv` to patients."""
    table = read_table(csv_path)
    rows = odir_rows(table, extra=("filename",))
    fname_col = table.columns(["filename"])["filename"]
    by_id: dict[str, list[OdirRow]] = {}
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
    image_dir = find_image_dir(csv_path.parent, probes, KAGGLE_IMAGE_DIRS) if rows else None
    notes = _blank_note(table)
    if image_dir is None:
        if check_images and rows:
            raise DataError(
                f"cannot find the images: no folder under {csv_path.parent} holds {probes[0]} "
                f"(looked in {', '.join(KAGGLE_IMAGE_DIRS)} and sub-folders {SEARCH_DEPTH} levels deep)",
                file=csv_path,
            )
        image_dir = csv_path.parent / KAGGLE_IMAGE_DIRS[-1]
        notes.append(f"{csv_path.name}: image folder not found; paths point into {image_dir} (unchecked)")
    files = FileIndex()
    missing = MissingImages()
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
            f"missing: {preview(unlisted_absent)}"
        )
    return Loaded(patients, [csv_path], notes)


def load_paired(csv_path: Path, check_images: bool) -> tuple[Loaded, tuple[str, ...]]:
    """The generic `patient_id,left,right,<labels...>` CSV."""
    table = read_table(csv_path)
    got = [norm_col(h) for h in table.header[:3]]
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
    files = FileIndex()
    missing = MissingImages()
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
            [parse_label(cells[3 + j], table, number, name) for j, name in enumerate(label_names)],
            dtype=np.uint8,
        )
        patients.append(
            Patient(id=pid, age=None, sex=None, left=paths["left"], right=paths["right"], labels=labels)
        )
    check_unique_ids(table, ids, "patient_id")
    missing.raise_if_any()
    one_eyed = sum((p.left is None) != (p.right is None) for p in patients)
    notes = [f"all: {len(patients)} patients from {csv_path.name}", *_blank_note(table)]
    if one_eyed:
        notes.append(f"{one_eyed} patient(s) have one eye only")
    return Loaded(patients, [csv_path], notes), label_names


def preview(items: Sequence[str], n: int = 10) -> str:
    """The first `n` items of a note's list, and how many more there are."""
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")
