"""Dataset readers: one `Patient` per patient ID from the ODIR-5K releases or a generic paired CSV.

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

The readers are split by job: `records` (Patient, Dataset), `layouts` (file, folder and column
names), `tables` (xlsx / CSV reading), `cells` (row validation), `images` (image folder search),
`loaders` (one per format) and `detect` (which format a path holds). This module holds the entry
point, the problem-image list's application, the notes on eyes and the keyword check, and
re-exports the names callers import from `eyefuse.data.odir`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eyefuse import ODIR_LABELS, registry
from eyefuse.data.detect import detect
from eyefuse.data.keywords import KeywordResult, keyword_labels, patient_labels_from_eyes
from eyefuse.data.layouts import (
    CHALLENGE_GLOB,
    CHALLENGE_IMAGE_DIRS,
    CHALLENGE_XLSX,
    FORMATS,
    KAGGLE_COLUMNS,
    KAGGLE_CSV,
    KAGGLE_IMAGE_DIRS,
    ODIR_COLUMNS,
    OIA_SPLITS,
    PAIRED_COLUMNS,
    PROBLEM_IMAGES,
    SPLIT_COLUMN,
    SPLIT_SOURCES,
    SYNTHETIC_MARKER,
    ZH_COLUMNS,
)
from eyefuse.data.loaders import (
    Loaded,
    load_kaggle,
    load_odir_table,
    load_oia_split,
    load_paired,
    load_test_folders,
    preview,
    table_source,
)
from eyefuse.data.records import SIDES, Dataset, Patient
from eyefuse.data.tables import cell_text, read_table, table_kind
from eyefuse.errors import DataError


def _is_synthetic(*folders: Path) -> bool:
    return any((f / SYNTHETIC_MARKER).is_file() for f in folders)


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
    found, notes = detect(path)
    label_names: tuple[str, ...] = ODIR_LABELS
    if found.format == "oia":
        loaded = Loaded()
        if found.oia_split is not None:
            loaded.extend(load_oia_split(found.oia_split, check_images, found.annotation))
            root = found.oia_split
        else:
            root = found.root
            for name, _ in OIA_SPLITS:
                if (root / name / "Annotation").is_dir():
                    loaded.extend(load_oia_split(root / name, check_images))
        synthetic = _is_synthetic(root, root.parent)
    elif found.format == "challenge":
        assert found.annotation is not None
        root = found.root
        source = table_source(found.annotation)
        loaded = load_odir_table(found.annotation, source, check_images, CHALLENGE_IMAGE_DIRS, root)
        loaded.extend(load_test_folders(root, check_images))
        synthetic = _is_synthetic(root)
    elif found.format == "kaggle":
        assert found.annotation is not None
        root = found.root
        loaded = load_kaggle(found.annotation, check_images)
        synthetic = _is_synthetic(root)
    else:
        assert found.annotation is not None
        root = found.root
        loaded, label_names = load_paired(found.annotation, check_images)
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


def _check_unique_across_files(loaded: Loaded) -> None:
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
    return [f"{len(hits)} known problem image(s) {verb}: {preview(hits, 16)}"]


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
            f"are unknown (masked), their patients keep the annotated labels: {preview(unknown_eyes)}"
        )
    non_fundus = [f"{p.id}_{s}" for p in patients for s in SIDES if not getattr(p, f"{s}_fundus")]
    if non_fundus:
        notes.append(
            f"{len(non_fundus)} eye(s) are not fundus photographs (anterior segment / no fundus image) "
            f"and are not used: {preview(non_fundus)}"
        )
    unusable = [p.id for p in patients if not p.usable]
    if unusable:
        notes.append(
            f"{len(unusable)} patient(s) have no usable eye (kept, but cannot be used for training): "
            f"{preview(unusable)}"
        )
    return notes


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
            lines.append(f"  disagreeing patients: {preview(self.disagreeing, 20)}")
        bad = {k: v for k, v in self.label_mismatches.items() if any(v)}
        if bad:
            lines.append(
                "  mismatches per label (keywords 1/annotation 0, keywords 0/annotation 1): "
                + ", ".join(f"{k} {a}/{b}" for k, (a, b) in bad.items())
            )
        if self.unknown_keywords:
            items = [f"{k!r} x{n}" for k, n in self.unknown_keywords.items()]
            lines.append(f"  unknown keywords ({len(items)}): {preview(items, 20)}")
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
    "CHALLENGE_GLOB",
    "CHALLENGE_IMAGE_DIRS",
    "CHALLENGE_XLSX",
    "FORMATS",
    "KAGGLE_COLUMNS",
    "KAGGLE_CSV",
    "KAGGLE_IMAGE_DIRS",
    "ODIR_COLUMNS",
    "OIA_SPLITS",
    "PAIRED_COLUMNS",
    "PROBLEM_IMAGES",
    "SIDES",
    "SPLIT_COLUMN",
    "SPLIT_SOURCES",
    "SYNTHETIC_MARKER",
    "ZH_COLUMNS",
    "Dataset",
    "KeywordReport",
    "KeywordResult",
    "Patient",
    "cell_text",
    "keyword_labels",
    "keyword_report",
    "load_dataset",
    "read_table",
    "table_kind",
]
