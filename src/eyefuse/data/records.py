"""The records every reader returns: `Patient` (two eyes, keywords, labels) and `Dataset` (the
patients of one dataset, in annotation order, with the notes of what was skipped or excluded)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eyefuse.errors import DataError

SIDES = ("left", "right")


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
