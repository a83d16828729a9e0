"""Training data as tensors: one item per patient with both eyes, labels and presence flags.

`PairDataset` turns `Patient` records plus an image loader (normally `PreprocessCache.load`) into
uint8 tensors; augmentation is not applied here but on the batch, on the training device
(`eyefuse.data.augment.augment_batch`). `TensorCache` holds a whole dataset as one uint8 tensor
(optionally on the GPU) and serves batches shaped exactly like the collated `PairDataset` items.

Batches need no custom collate function: `torch.utils.data.default_collate` stacks the items into

- `left`, `right`: uint8 `B x 3 x S x S` (zeros where the eye is absent),
- `left_present`, `right_present`: bool `B`,
- `labels`: float32 `B x L` (patient labels),
- `left_labels`, `right_labels`: float32 `B x L` (keyword-derived per-eye labels, zeros when unknown),
- `eye_labels_known`: bool `B x 2` (left, right): the eye's labels are known *and* its image is
  present, so it is directly the mask of the per-eye auxiliary loss,
- `index`: int64 `B`, the position of the patient in `dataset.patients`.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from eyefuse.data.preprocess import PreprocessError
from eyefuse.errors import DataError
from eyefuse.utils.io import atomic_write_text

if TYPE_CHECKING:
    from eyefuse.data.records import Patient

log = logging.getLogger(__name__)

SIDES: tuple[str, str] = ("left", "right")

#: Keys of a dataset item / batch, in a fixed order (tests and `TensorCache` rely on it).
BATCH_KEYS: tuple[str, ...] = (
    "left",
    "right",
    "left_present",
    "right_present",
    "labels",
    "left_labels",
    "right_labels",
    "eye_labels_known",
    "index",
)


def eye_problem(patient: Patient, side: str, failed: Mapping[str, str] | None = None) -> str | None:
    """Why `side` of `patient` cannot be used (missing, not a fundus photograph, a known problem
    image, failed preprocessing), or None when it can. `failed` maps image paths to the reason
    preprocessing gave (what `prepare_images` / `prepared_loader` found)."""
    path = patient.eye_path(side)
    if path is None:
        if getattr(patient, side, None) is None:
            return "no photograph"
        if not getattr(patient, f"{side}_fundus", True):
            return "not a fundus photograph"
        if getattr(patient, f"{side}_excluded", False):
            return "known problem image (excluded)"
        return "no usable photograph"
    reason = (failed or {}).get(str(path))
    if reason is not None:
        return f"failed preprocessing: {reason}"
    return None


def usable_patients(
    patients: Sequence[Patient], failed: Mapping[str, str] | None = None
) -> tuple[list[Patient], list[Patient]]:
    """Split patients into those with at least one usable eye and those with none.

    Without `failed`, only `patient.eye_path(side)` is checked (no image is read). With `failed`
    (image path -> reason, from preprocessing), an eye that failed counts as unusable too, so that
    a patient whose every eye is missing, excluded or failed is set aside before a run starts
    instead of stopping it in its first epoch. The caller reports how many were set aside
    (`set_aside_reasons` gives the reason of each).
    """
    kept: list[Patient] = []
    dropped: list[Patient] = []
    for p in patients:
        ok = any(eye_problem(p, s, failed) is None for s in SIDES)
        (kept if ok else dropped).append(p)
    return kept, dropped


def set_aside_reasons(patient: Patient, failed: Mapping[str, str] | None = None) -> str:
    """One line saying why neither eye of `patient` can be used, e.g. `left: no photograph;
    right: failed preprocessing: no field of view found`."""
    return "; ".join(f"{s}: {eye_problem(patient, s, failed) or 'usable'}" for s in SIDES)


SET_ASIDE_COLUMNS = ("patient_id", "source", "split", "reason")


def write_set_aside(path: str | Path, rows: Sequence[tuple[Patient, str, str]]) -> None:
    """Write `patient_id,source,split,reason` for every patient set aside, atomically; the header
    alone when none was, so that a stale list from an earlier run never stays behind."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SET_ASIDE_COLUMNS)
    writer.writerows([p.id, p.source, split, reason] for p, split, reason in rows)
    atomic_write_text(path, buf.getvalue())


def describe_set_aside(rows: Sequence[tuple[Patient, str, str]], where: str | Path) -> str:
    """The summary line for patients set aside: how many per split, the first IDs, and the file."""
    if not rows:
        return ""
    per_split: dict[str, int] = {}
    for _, split, _ in rows:
        per_split[split] = per_split.get(split, 0) + 1
    counts = ", ".join(f"{k} {v}" for k, v in per_split.items())
    ids = ", ".join(p.id for p, _, _ in rows[:10]) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
    return f"set aside {len(rows)} patient(s) without a usable eye ({counts}): {ids}; reasons in {where}"


def _default_load_errors() -> tuple[type[BaseException], ...]:
    # Imported here so that this module does not need the preprocessing stack at import time.
    return (PreprocessError,)


class PairDataset(Dataset):
    """One item per patient: both eyes as uint8 tensors, labels, presence flags.

    Args:
        patients: the patients, in the order of `index`.
        load: picklable callable mapping an image path to an RGB uint8 `size x size x 3` array
            (a `PreprocessCache` instance's `.load`); picklable so that DataLoader workers can use it.
        label_names: the dataset's label names; each patient's `labels` must have this length.
        size: side of the images `load` returns, in pixels.
        load_errors: exception types that mean "this image cannot be used" (default: `PreprocessError`).
            Such an eye is treated as absent and counted; any other exception propagates.

    Failed loads: an eye whose load failed is flagged in a small shared-memory tensor, so the flag is
    seen by the main process and by every DataLoader worker (a flagged eye is not loaded again);
    `failed_eyes()` lists them and `failure_reasons` keeps the messages of failures that happened in
    this process (workers log theirs as warnings). Flags are only ever set, so concurrent writers
    cannot lose each other's updates. Run `eyefuse prepare` first so that failures are found before
    training; a patient with neither eye usable raises `DataError` (filter with `usable_patients`).
    """

    def __init__(
        self,
        patients: Sequence[Patient],
        load: Callable[[Path], np.ndarray],
        label_names: Sequence[str],
        *,
        size: int,
        load_errors: tuple[type[BaseException], ...] | None = None,
    ) -> None:
        self.patients = list(patients)
        self.load = load
        self.label_names = tuple(label_names)
        self.size = int(size)
        self.load_errors = _default_load_errors() if load_errors is None else tuple(load_errors)
        n_labels = len(self.label_names)
        for p in self.patients:
            for what, value in (
                ("labels", p.labels),
                ("left_labels", p.left_labels),
                ("right_labels", p.right_labels),
            ):
                if value is not None and np.shape(value) != (n_labels,):
                    raise DataError(
                        f"patient {p.id}: {what} has shape {np.shape(value)}, expected ({n_labels},) "
                        f"for labels {','.join(self.label_names)}"
                    )
        # Shared memory so that flags set in DataLoader workers reach the main process.
        self._eye_failed = torch.zeros(len(self.patients), 2, dtype=torch.bool).share_memory_()
        self.failure_reasons: dict[tuple[str, str], str] = {}

    def __len__(self) -> int:
        return len(self.patients)

    @property
    def n_failed(self) -> int:
        """Number of distinct eyes whose image failed to load (in any process)."""
        return int(self._eye_failed.sum())

    def failed_eyes(self) -> list[tuple[str, str]]:
        """`(patient id, side)` of every eye whose image failed to load, in dataset order."""
        rows, cols = torch.nonzero(self._eye_failed, as_tuple=True)
        return [(self.patients[int(r)].id, SIDES[int(c)]) for r, c in zip(rows, cols, strict=True)]

    def _load_eye(self, i: int, side_index: int) -> np.ndarray | None:
        patient = self.patients[i]
        side = SIDES[side_index]
        path = patient.eye_path(side)
        if path is None or bool(self._eye_failed[i, side_index]):
            return None
        try:
            image = self.load(path)
        except self.load_errors as e:
            self._eye_failed[i, side_index] = True
            self.failure_reasons[(patient.id, side)] = str(e)
            log.warning(
                "patient %s, %s eye (%s): image unusable, treated as absent: %s", patient.id, side, path, e
            )
            return None
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != (self.size, self.size, 3):
            raise DataError(
                f"patient {patient.id}, {side} eye: loaded image is {image.dtype} {image.shape}, "
                f"expected uint8 ({self.size}, {self.size}, 3); is the cache built with "
                f"preprocess.size={self.size}?",
                file=path,
            )
        return image

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        patient = self.patients[i]
        n_labels = len(self.label_names)
        images: list[torch.Tensor] = []
        present: list[bool] = []
        eye_labels: list[torch.Tensor] = []
        known: list[bool] = []
        for k, side in enumerate(SIDES):
            image = self._load_eye(i, k)
            present.append(image is not None)
            if image is None:
                images.append(torch.zeros(3, self.size, self.size, dtype=torch.uint8))
            else:
                images.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
            side_labels = getattr(patient, f"{side}_labels")
            # Labels of an absent eye cannot be learnt from, so they count as unknown.
            if side_labels is not None and image is not None:
                eye_labels.append(torch.as_tensor(np.asarray(side_labels), dtype=torch.float32))
                known.append(True)
            else:
                eye_labels.append(torch.zeros(n_labels, dtype=torch.float32))
                known.append(False)
        if not any(present):
            reasons = []
            for side in SIDES:
                if patient.eye_path(side) is None:
                    reasons.append(f"{side}: no usable image path")
                else:
                    reason = self.failure_reasons.get(
                        (patient.id, side), "failed to load (see earlier warning)"
                    )
                    reasons.append(f"{side}: {reason}")
            raise DataError(
                f"patient {patient.id}: neither eye can be used ({'; '.join(reasons)}); "
                "such patients are set aside before a run starts (see set_aside.csv in the run folder)"
            )
        return {
            "left": images[0],
            "right": images[1],
            "left_present": torch.tensor(present[0]),
            "right_present": torch.tensor(present[1]),
            "labels": torch.as_tensor(np.asarray(patient.labels), dtype=torch.float32),
            "left_labels": eye_labels[0],
            "right_labels": eye_labels[1],
            "eye_labels_known": torch.tensor(known),
            "index": torch.tensor(i, dtype=torch.int64),
        }


def move_batch(
    batch: dict[str, torch.Tensor], device: torch.device | str, *, non_blocking: bool = False
) -> dict[str, torch.Tensor]:
    """Move every tensor of a batch to `device` (other values are passed through)."""
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


class TensorCache:
    """A whole dataset as tensors (uint8 images `N x 2 x 3 x S x S`, flags, labels) on one device.

    With `train.gpu_cache` the trainer builds it once on CUDA and draws batches with `batch()`, so
    no image crosses the PCIe bus during training and augmentation runs on the GPU. It takes
    `N * 2 * 3 * S * S` bytes (about 4.2 GB for 3,500 patients at 448 px).
    """

    images: torch.Tensor  #: uint8 N x 2 x 3 x S x S (eye 0 left, 1 right)
    present: torch.Tensor  #: bool N x 2
    labels: torch.Tensor  #: float32 N x L
    eye_labels: torch.Tensor  #: float32 N x 2 x L
    eye_labels_known: torch.Tensor  #: bool N x 2

    def __init__(
        self,
        dataset: PairDataset,
        *,
        device: torch.device | str | None = None,
        progress: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        """Load every item of `dataset` into tensors on `device` (CPU by default).

        The images go to `device` batch by batch, so a CUDA cache needs no full copy in host memory.
        Failed loads are counted by `dataset` as usual (also those in loader workers).
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        n, s, n_labels = len(dataset), dataset.size, len(dataset.label_names)
        self.images = torch.empty(n, 2, 3, s, s, dtype=torch.uint8, device=device)
        self.present = torch.empty(n, 2, dtype=torch.bool, device=device)
        self.labels = torch.empty(n, n_labels, dtype=torch.float32, device=device)
        self.eye_labels = torch.empty(n, 2, n_labels, dtype=torch.float32, device=device)
        self.eye_labels_known = torch.empty(n, 2, dtype=torch.bool, device=device)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        with tqdm(total=n, desc="caching images", unit="patient", disable=not progress) as bar:
            for batch in loader:
                idx = batch["index"].to(device)
                self.images[idx] = torch.stack((batch["left"], batch["right"]), 1).to(device)
                self.present[idx] = torch.stack((batch["left_present"], batch["right_present"]), 1).to(device)
                self.labels[idx] = batch["labels"].to(device)
                self.eye_labels[idx] = torch.stack((batch["left_labels"], batch["right_labels"]), 1).to(
                    device
                )
                self.eye_labels_known[idx] = batch["eye_labels_known"].to(device)
                bar.update(len(idx))

    @classmethod
    def from_tensors(
        cls,
        images: torch.Tensor,
        present: torch.Tensor,
        labels: torch.Tensor,
        eye_labels: torch.Tensor,
        eye_labels_known: torch.Tensor,
    ) -> TensorCache:
        """A cache over existing tensors (shapes as the attributes above; all on one device)."""
        n = images.shape[0]
        if images.dtype != torch.uint8 or images.dim() != 5 or tuple(images.shape[1:3]) != (2, 3):
            raise ValueError(
                f"images must be uint8 N x 2 x 3 x S x S, got {images.dtype} {tuple(images.shape)}"
            )
        for name, t, shape in (
            ("present", present, (n, 2)),
            ("labels", labels, (n, labels.shape[-1])),
            ("eye_labels", eye_labels, (n, 2, labels.shape[-1])),
            ("eye_labels_known", eye_labels_known, (n, 2)),
        ):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        self = cls.__new__(cls)
        self.images = images
        self.present = present.bool()
        self.labels = labels.float()
        self.eye_labels = eye_labels.float()
        self.eye_labels_known = eye_labels_known.bool()
        return self

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def nbytes(self) -> int:
        """Bytes held by all tensors."""
        tensors = (self.images, self.present, self.labels, self.eye_labels, self.eye_labels_known)
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> TensorCache:
        """A copy of the cache on `device`."""
        return TensorCache.from_tensors(
            self.images.to(device),
            self.present.to(device),
            self.labels.to(device),
            self.eye_labels.to(device),
            self.eye_labels_known.to(device),
        )

    def batch(self, indices: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """The patients at `indices` as a batch with the keys and dtypes of a collated `PairDataset`."""
        idx = torch.as_tensor(indices, dtype=torch.int64).to(self.device)
        images = self.images[idx]
        present = self.present[idx]
        eye_labels = self.eye_labels[idx]
        return {
            "left": images[:, 0],
            "right": images[:, 1],
            "left_present": present[:, 0],
            "right_present": present[:, 1],
            "labels": self.labels[idx],
            "left_labels": eye_labels[:, 0],
            "right_labels": eye_labels[:, 1],
            "eye_labels_known": self.eye_labels_known[idx],
            "index": idx,
        }

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate over the cache in batches (a shuffled permutation drawn from `generator` if asked)."""
        n = len(self)
        if shuffle:
            gen_device = generator.device if generator is not None else self.device
            order = torch.randperm(n, generator=generator, device=gen_device).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])


__all__ = [
    "BATCH_KEYS",
    "PairDataset",
    "TensorCache",
    "describe_set_aside",
    "eye_problem",
    "move_batch",
    "set_aside_reasons",
    "usable_patients",
    "write_set_aside",
]
