"""Patient-level splits: multi-label iterative stratification, the split CSV, and applying it.

Splits are made per patient (both eyes of a patient always land in the same split), stratified over
all labels at once with the iterative stratification of Sechidis, Tsoumakas and Vlahavas (2011,
"On the stratification of multi-label data"): the rarest remaining label is distributed first,
each of its patients going to the subset that still needs that label most. Seeded with a numpy
Generator, so a seed always gives the same split.

Patients of the official ODIR test sets (sources `offsite`, `onsite`) keep their source as their
split and are never used for training or model selection; the rest (the training pool) is split
into `train` and `val`, plus `test` when the dataset has no official test set.

Cross-validation (`fold_splits`, `eyefuse split --folds K`): K split files whose `test` parts
partition the training pool, so that the test predictions of the K runs together cover every
patient.

A learning curve needs fewer training patients and the same validation and test patients:
`train_fraction` below 1 keeps that share of `train` (stratified the same way) and marks the rest
`unused`, a split nothing trains, validates or tests on.

Split CSV: header `patient_id,source,split`, split in `train | val | test | offsite | onsite |
unused`.
A hand-written `patient_id,split` file (no source column) is accepted too; its rows match a patient
of any source with that ID. Every patient of the dataset is in the file, including patients without a
usable eye (training drops those itself), so the file fits the dataset whatever `problem_images` is.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eyefuse.data.odir import load_dataset
from eyefuse.data.records import Dataset, Patient
from eyefuse.data.tables import cell_text, read_table
from eyefuse.errors import ConfigError, DataError
from eyefuse.utils.io import atomic_write_text

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test", "offsite", "onsite", "unused")
#: The split of patients left out of a run altogether (`train_fraction` below 1).
UNUSED_SPLIT = "unused"
#: Sources whose patients form an official test set and keep it as their split.
OFFICIAL_TEST_SOURCES: tuple[str, ...] = ("offsite", "onsite")
SPLIT_COLUMNS: tuple[str, ...] = ("patient_id", "source", "split")
DEFAULT_TEST_FRACTION = 0.15


def _pick(primary: np.ndarray, secondary: np.ndarray, rng: np.random.Generator) -> int:
    """Index of the largest `primary`, ties broken by the largest `secondary`, then at random."""
    cand = np.flatnonzero(primary == primary.max())
    if len(cand) > 1:
        sec = secondary[cand]
        cand = cand[sec == sec.max()]
    return int(cand[0] if len(cand) == 1 else rng.choice(cand))


def iterative_stratification(
    labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Assign each row of a binary label matrix to one of `len(fractions)` subsets.

    Args:
        labels: (n, L) array of 0/1; rows are patients.
        fractions: desired share of each subset (normalized to sum 1).
        rng: the only source of randomness (tie-breaking and visiting order).

    Returns:
        int array (n,) of subset indices.
    """
    y = np.asarray(labels).astype(bool)
    if y.ndim != 2:
        raise ValueError(f"labels must be a 2-D matrix, got shape {y.shape}")
    r = np.asarray(fractions, dtype=np.float64)
    if r.ndim != 1 or len(r) == 0 or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum, got {list(fractions)}")
    r = r / r.sum()
    n = len(y)
    desired = r * n  # patients each subset still wants
    desired_label = np.outer(r, y.sum(axis=0)).astype(np.float64)  # per subset and label
    remaining = np.ones(n, dtype=bool)
    assign = np.full(n, -1, dtype=np.int64)
    while remaining.any():
        counts = y[remaining].sum(axis=0)
        if counts.max() == 0:
            # Patients without any label: fill the subsets that are furthest below their size.
            for i in rng.permutation(np.flatnonzero(remaining)):
                j = _pick(desired, desired, rng)
                assign[i] = j
                desired[j] -= 1
            break
        positive = np.flatnonzero(counts > 0)
        rarest = positive[counts[positive] == counts[positive].min()]
        lab = int(rng.choice(rarest)) if len(rarest) > 1 else int(rarest[0])
        for i in rng.permutation(np.flatnonzero(remaining & y[:, lab])):
            j = _pick(desired_label[:, lab], desired, rng)
            assign[i] = j
            remaining[i] = False
            desired_label[j, y[i]] -= 1
            desired[j] -= 1
    return assign


@dataclass
class SplitSummary:
    """What `split_dataset` wrote: patients and label prevalence per split."""

    path: Path
    label_names: tuple[str, ...]
    counts: dict[str, int]
    prevalence: dict[str, np.ndarray]  #: fraction of the split's patients with each label
    seed: int
    val_fraction: float
    test_fraction: float
    unusable: int = 0  #: patients without a usable eye (in the file; training drops them)
    train_fraction: float = 1.0  #: share of the `train` patients kept (the rest are `unused`)

    def __str__(self) -> str:
        head = f"{'split':<8} {'patients':>8} " + " ".join(f"{n:>6}" for n in self.label_names)
        lines = [head]
        for name, count in self.counts.items():
            prev = " ".join(f"{100 * v:5.1f}%" for v in self.prevalence[name])
            lines.append(f"{name:<8} {count:>8} {prev}")
        kept = f", train_fraction {self.train_fraction:g}" if self.train_fraction < 1.0 else ""
        lines.append(
            f"wrote {self.path} (seed {self.seed}, val_fraction {self.val_fraction:g}, "
            f"test_fraction {self.test_fraction:g}{kept})"
        )
        if self.unusable:
            lines.append(f"{self.unusable} patient(s) have no usable eye: listed, but training drops them")
        return "\n".join(lines)


def _prevalence(patients: Sequence[Patient], n_labels: int) -> np.ndarray:
    if not patients:
        return np.zeros(n_labels)
    return np.stack([p.labels for p in patients]).astype(np.float64).mean(axis=0)


def split_dataset(
    data: str | os.PathLike[str] | Dataset,
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    problem_images: str = "exclude",
    test_fraction: float | None = None,
    train_fraction: float = 1.0,
) -> SplitSummary:
    """Split a dataset by patient and write the split CSV atomically.

    Args:
        data: dataset folder / annotation file (loaded with `load_dataset`), or a loaded `Dataset`.
        out: CSV to write; an existing folder gets `split.csv` inside it.
        val_fraction: share of the training pool held out for validation, in (0, 1).
        seed: seed of the stratification.
        problem_images: passed to `load_dataset` (affects only the count of unusable patients).
        test_fraction: share of the training pool held out as `test`; default 0.15 when the
            dataset has no official test set, and must be None or 0 when it has one.
        train_fraction: share of the `train` patients kept, in (0, 1]; the rest are `unused`. The
            validation and test patients are those of the same seed with `train_fraction` 1.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), not {val_fraction}")
    if not 0.0 < train_fraction <= 1.0:
        raise ConfigError(f"train_fraction must be in (0, 1], not {train_fraction}")
    dataset = data if isinstance(data, Dataset) else load_dataset(data, problem_images=problem_images)
    official = [s for s in dataset.sources() if s in OFFICIAL_TEST_SOURCES]
    if official:
        if test_fraction:
            raise ConfigError(
                f"test_fraction must be None or 0: the dataset has official test sets "
                f"({', '.join(official)}), which are the test splits"
            )
        tf = 0.0
    else:
        tf = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
        if not 0.0 <= tf < 1.0:
            raise ConfigError(f"test_fraction must be in [0, 1), not {tf}")
    if val_fraction + tf >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be below 1, not {val_fraction} + {tf}")

    pool = [p for p in dataset.patients if p.source not in OFFICIAL_TEST_SOURCES]
    names = ["train", "val"] + (["test"] if tf > 0 else [])
    fractions = [1.0 - val_fraction - tf, val_fraction] + ([tf] if tf > 0 else [])
    split_of: dict[tuple[str, str], str] = {p.key: p.source for p in dataset.patients if p.source in official}
    if pool:
        y = np.stack([p.labels for p in pool])
        rng = np.random.default_rng(seed)
        assign = iterative_stratification(y, fractions, rng)
        split_of.update({p.key: names[a] for p, a in zip(pool, assign, strict=True)})
        train = [p for p in pool if split_of[p.key] == "train"]
        if train_fraction < 1.0 and train:
            # After the split above, from the same generator: val and test stay as they were.
            y_train = np.stack([p.labels for p in train])
            keep = iterative_stratification(y_train, [train_fraction, 1.0 - train_fraction], rng)
            split_of.update({p.key: UNUSED_SPLIT for p, k in zip(train, keep, strict=True) if k == 1})

    return _write_split(dataset, split_of, out, seed, val_fraction, tf, train_fraction)


def _write_split(
    dataset: Dataset,
    split_of: Mapping[tuple[str, str], str],
    out: str | os.PathLike[str],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    train_fraction: float = 1.0,
) -> SplitSummary:
    """Write the split CSV atomically (every patient of the dataset, in its order) and sum it up."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SPLIT_COLUMNS)
    for p in dataset.patients:
        writer.writerow([p.id, p.source, split_of[p.key]])
    path = Path(out)
    if path.is_dir():
        path = path / "split.csv"
    atomic_write_text(path, buf.getvalue())

    groups: dict[str, list[Patient]] = {}
    for p in dataset.patients:
        groups.setdefault(split_of[p.key], []).append(p)
    order = [s for s in SPLIT_NAMES if s in groups]
    return SplitSummary(
        path=path,
        label_names=tuple(dataset.label_names),
        counts={s: len(groups[s]) for s in order},
        prevalence={s: _prevalence(groups[s], len(dataset.label_names)) for s in order},
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        unusable=len(dataset.unusable()),
        train_fraction=train_fraction,
    )


def fold_file(folder: str | os.PathLike[str], fold: int) -> Path:
    """Where `fold_splits` writes fold `fold` (1-based): `<folder>/fold<fold>.csv`."""
    return Path(folder) / f"fold{fold}.csv"


def fold_splits(
    data: str | os.PathLike[str] | Dataset,
    folder: str | os.PathLike[str],
    *,
    folds: int,
    val_fraction: float = 0.15,
    seed: int = 0,
    problem_images: str = "exclude",
) -> list[SplitSummary]:
    """K-fold cross-validation by patient: one split CSV per fold, `fold1.csv` ... `foldK.csv`.

    The training pool is cut into `folds` stratified parts (iterative stratification, seeded); in
    fold k part k is `test` and the other parts are split into `train` and `val` (`val_fraction`
    of them, stratified, with a generator seeded by (seed, k)). Every patient of the pool is thus a
    test patient exactly once, and the test predictions of all folds together cover the whole pool:
    a comparison on them rests on every patient instead of one held-out part. Patients of official
    test sets keep their source as their split and take no part.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer of at least 2, not {folds!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), not {val_fraction}")
    dataset = data if isinstance(data, Dataset) else load_dataset(data, problem_images=problem_images)
    pool = [p for p in dataset.patients if p.source not in OFFICIAL_TEST_SOURCES]
    if len(pool) < 2 * folds:
        raise ConfigError(
            f"{folds} folds need at least {2 * folds} patients outside official tests, not {len(pool)}"
        )
    y = np.stack([p.labels for p in pool])
    part = iterative_stratification(y, [1.0] * folds, np.random.default_rng(seed))
    official = {p.key: p.source for p in dataset.patients if p.source in OFFICIAL_TEST_SOURCES}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summaries = []
    for k in range(folds):
        rest = [i for i in range(len(pool)) if part[i] != k]
        is_val = iterative_stratification(
            y[rest], [1.0 - val_fraction, val_fraction], np.random.default_rng([seed, k])
        )
        split_of = dict(official)
        split_of.update({pool[i].key: "test" for i in range(len(pool)) if part[i] == k})
        split_of.update({pool[i].key: "val" if v else "train" for i, v in zip(rest, is_val, strict=True)})
        summaries.append(
            _write_split(dataset, split_of, fold_file(folder, k + 1), seed, val_fraction, 1.0 / folds)
        )
    return summaries


def _read_split_rows(path: str | os.PathLike[str]) -> dict[tuple[str, str], tuple[str, int]]:
    """(source, patient_id) -> (split, row number); source "" for a file without a source column."""
    table = read_table(path)
    header = [" ".join(h.split()).casefold() for h in table.header]
    if header not in (list(SPLIT_COLUMNS), ["patient_id", "split"]):
        raise DataError(
            f"split file header must be {','.join(SPLIT_COLUMNS)} (or patient_id,split); "
            f"found {','.join(table.header)}",
            file=table.path,
            row=1,
        )
    has_source = len(header) == 3
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for number, cells in table.rows:
        text = [cell_text(c) for c in cells]
        pid = text[0]
        source = text[1] if has_source else ""
        split = text[-1]
        if not pid:
            raise DataError("patient_id is empty", file=table.path, row=number, column="patient_id")
        if split not in SPLIT_NAMES:
            raise DataError(
                f"unknown split {split!r}; expected one of {', '.join(SPLIT_NAMES)}",
                file=table.path,
                row=number,
                column="split",
            )
        key = (source, pid)
        if key in out:
            what = f"patient {pid!r}" + (f" of source {source!r}" if source else "")
            raise DataError(
                f"{what} is listed twice: rows {out[key][1]} and {number}",
                file=table.path,
                row=number,
                column="patient_id",
            )
        out[key] = (split, number)
    return out


def read_split(path: str | os.PathLike[str]) -> dict[tuple[str, str], str]:
    """Read a split CSV into {(source, patient_id): split}; source is "" for a `patient_id,split`
    file. Raises DataError for a wrong header, an unknown split name or a duplicated patient."""
    return {k: split for k, (split, _) in _read_split_rows(path).items()}


def apply_split(
    dataset: Dataset | Sequence[Patient],
    split: str | os.PathLike[str] | Mapping[tuple[str, str], str],
) -> dict[str, list[Patient]]:
    """Group a dataset's patients by split, in split order (train, val, test, offsite, onsite).

    Every patient must be in the split and every split entry must name a patient of the dataset;
    either mismatch is a DataError naming the patient (a split made for another dataset, or for
    another version of it, must not be used silently).
    """
    if isinstance(split, Mapping):
        file = None
        rows: dict[tuple[str, str], tuple[str, int | None]] = {}
        for key, name in split.items():
            if name not in SPLIT_NAMES:
                raise DataError(
                    f"unknown split {name!r} for patient {key!r}; expected one of {', '.join(SPLIT_NAMES)}"
                )
            rows[key] = (name, None)
    else:
        file = Path(split)
        rows = dict(_read_split_rows(file))
    patients = list(dataset)
    used: set[tuple[str, str]] = set()
    groups: dict[str, list[Patient]] = {}
    missing: list[Patient] = []
    for p in patients:
        key = p.key if p.key in rows else ("", p.id)
        if key not in rows:
            missing.append(p)
            continue
        used.add(key)
        groups.setdefault(rows[key][0], []).append(p)
    if missing:
        p = missing[0]
        more = f" ({len(missing) - 1} more patients are missing)" if len(missing) > 1 else ""
        raise DataError(f"patient {p.id!r} (source {p.source!r}) is not in the split{more}", file=file)
    unknown = [k for k in rows if k not in used]
    if unknown:
        src, pid = unknown[0]
        more = f" ({len(unknown) - 1} more unknown patients)" if len(unknown) > 1 else ""
        where = f" of source {src!r}" if src else ""
        raise DataError(
            f"the split names patient {pid!r}{where}, who is not in the dataset{more}",
            file=file,
            row=rows[unknown[0]][1],
            column="patient_id",
        )
    return {s: groups[s] for s in SPLIT_NAMES if s in groups}


__all__ = [
    "OFFICIAL_TEST_SOURCES",
    "SPLIT_NAMES",
    "UNUSED_SPLIT",
    "SplitSummary",
    "apply_split",
    "iterative_stratification",
    "read_split",
    "split_dataset",
]
