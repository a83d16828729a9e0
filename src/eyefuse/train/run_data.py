"""The data of a training run: the dataset, its split (saved in the run folder), the preprocessing
cache, the patients set aside before any epoch, and each epoch's batches and loaders.

The batches of an epoch depend only on (seed, epoch) (`epoch_batches`), so a resumed run sees the
patients in the order an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eyefuse.config import Config
from eyefuse.data.cache import PreprocessCache, prepare_images
from eyefuse.data.dataset import (
    TensorCache,
    describe_set_aside,
    set_aside_reasons,
    usable_patients,
    write_set_aside,
)
from eyefuse.data.odir import Patient, load_dataset
from eyefuse.data.prepare import default_cache_dir
from eyefuse.data.preprocess import PreprocessError
from eyefuse.data.splits import UNUSED_SPLIT, apply_split, split_dataset
from eyefuse.errors import ConfigError, EyefuseError
from eyefuse.train.distributed import DistInfo, barrier, broadcast_object
from eyefuse.utils.io import atomic_write_text, sha256_file, writable_dir_problem


class CachedLoader:
    """Loads preprocessed eyes from the cache; eyes that failed preprocessing raise at once
    (counted in `prepare`) instead of being retried every epoch. Picklable for DataLoader workers."""

    def __init__(self, cache: PreprocessCache, failed: dict[str, str]):
        self.cache = cache
        self.failed = failed

    def __call__(self, path: Path) -> np.ndarray:
        reason = self.failed.get(str(path))
        if reason is not None:
            raise PreprocessError(path, reason)
        return self.cache.load(path)


def prepared_loader(
    cfg: Config, root: str, patients: Sequence[Patient], progress: bool, info: DistInfo = DistInfo()
) -> CachedLoader:
    """Preprocess (once, into the cache; rank 0 only) every usable eye of `patients` with the run's
    preprocessing settings, and return the loader that reads them back. Used by training and by
    evaluation, so both read the same cache the same way. `loader.failed` names the eyes that
    failed (path -> reason), so callers can set aside patients left without a usable eye."""
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(root)
    paths = sorted({str(p.eye_path(s)) for p in patients for s in ("left", "right") if p.eye_path(s)})
    failed: dict[str, str] = {}
    if info.is_main:
        problem = writable_dir_problem(cache_dir)
        if problem:
            raise ConfigError(
                f"cannot write the preprocessing cache {cache_dir} ({problem}): choose a writable "
                "folder with --cache-dir DIR (prepare) or --set data.cache_dir=DIR (train, evaluate)"
            )
        result = prepare_images([Path(p) for p in paths], cfg.preprocess, cache_dir, progress=progress)
        failed = {str(path): reason for path, reason in result.failed}
    failed = broadcast_object(failed, info)
    return CachedLoader(PreprocessCache(cache_dir, cfg.preprocess), failed)


@dataclass
class RunData:
    """Everything `fit` needs to know about the data of a run."""

    label_names: tuple[str, ...]
    splits: dict[str, list[Patient]]  # split name -> patients
    loader: CachedLoader
    split_file: Path
    split_hash: str
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    failed_images: int = 0
    set_aside: list[tuple[Patient, str, str]] = field(default_factory=list)  # (patient, split, reason)
    set_aside_file: Path | None = None
    unused: int = 0  #: patients of the split file's `unused` split (never loaded)

    def summary(self) -> str:
        parts = [f"{name} {len(p)}" for name, p in self.splits.items()]
        text = "patients: " + ", ".join(parts)
        if self.unused:
            text += f"; {self.unused} patients left out (split {UNUSED_SPLIT!r})"
        if self.failed_images:
            text += f"; {self.failed_images} images failed preprocessing (that eye is treated as missing)"
        if self.set_aside:
            text += "\n" + describe_set_aside(self.set_aside, self.set_aside_file or "set_aside.csv")
        return text


def load_run_data(cfg: Config, run_dir: Path, info: DistInfo, progress: bool) -> RunData:
    """Load the dataset, make or read the split (saved in the run folder), prepare the cache, and
    set aside (count, list in `set_aside.csv`) every patient of every split whose eyes are all
    missing, excluded or failed preprocessing, before any epoch starts."""
    if not cfg.data.root:
        raise ConfigError("no dataset: pass --data DIR (or set data.root)")
    dataset = load_dataset(cfg.data.root, problem_images=cfg.data.problem_images)
    run_split = run_dir / "split.csv"
    if cfg.data.split_file:
        source = Path(cfg.data.split_file)
        if not source.is_file():
            raise ConfigError(f"data.split_file {source} does not exist")
        if info.is_main and source.resolve() != run_split.resolve():
            atomic_write_text(run_split, source.read_text(encoding="utf-8"))
    elif info.is_main and not run_split.is_file():
        split_dataset(
            cfg.data.root,
            run_split,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.data.split_seed,
            problem_images=cfg.data.problem_images,
        )
    barrier(info)
    splits = apply_split(dataset, run_split)
    unused = len(splits.pop(UNUSED_SPLIT, []))  # not prepared, not set aside: not part of the run
    loader = prepared_loader(cfg, cfg.data.root, [p for ps in splits.values() for p in ps], progress, info)
    dropped: dict[str, int] = {}
    set_aside: list[tuple[Patient, str, str]] = []
    for name in list(splits):
        kept, lost = usable_patients(splits[name], loader.failed)
        splits[name] = kept
        set_aside += [(p, name, set_aside_reasons(p, loader.failed)) for p in lost]
        if lost:
            dropped[f"no usable eye in {name}"] = len(lost)
    set_aside_file = run_dir / "set_aside.csv"
    if info.is_main:
        write_set_aside(set_aside_file, set_aside)
    for required in ("train", "val"):
        if not splits.get(required):
            raise EyefuseError(f"split {run_split} has no {required!r} patients with a usable eye")
    return RunData(
        label_names=tuple(dataset.label_names),
        splits=splits,
        loader=loader,
        split_file=run_split,
        split_hash=sha256_file(run_split),
        dropped=dropped,
        failed_images=len(loader.failed),
        set_aside=set_aside,
        set_aside_file=set_aside_file,
        unused=unused,
    )


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, info: DistInfo) -> list[list[int]]:
    """This rank's training batches for an epoch: a permutation seeded by (seed, epoch), padded to
    a multiple of the world size (training only; evaluation never pads) and strided over ranks.
    A last batch of a single patient is dropped (BatchNorm needs two)."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if info.enabled:
        pad = (-len(order)) % info.world_size
        order += order[:pad]
        order = order[info.rank :: info.world_size]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


class EpochBatchSampler:
    """A batch sampler whose batches are replaced every epoch (`set_batches`), so that one DataLoader
    and its worker processes serve every epoch (`persistent_workers`) instead of starting new workers
    per epoch. The sampler is iterated in the main process, so the workers see the new batches."""

    def __init__(self, batches: Sequence[Sequence[int]]):
        self.batches = [list(b) for b in batches]

    def set_batches(self, batches: Sequence[Sequence[int]]) -> None:
        self.batches = [list(b) for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(
    dataset: Dataset,
    batches: Sequence[Sequence[int]],
    num_workers: int,
    device: torch.device,
    *,
    persistent: bool = False,
) -> DataLoader:
    """A DataLoader over fixed `batches`. With `persistent` (and workers) the workers live as long as
    the loader: change its batches with `loader.batch_sampler.set_batches` for the next epoch. Pinned
    host memory on CUDA, so that `_to_device`'s non-blocking copies overlap the previous step."""
    workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(batches),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent and workers,
        prefetch_factor=4 if workers else None,
    )


def epoch_loader(
    loader: DataLoader | None,
    dataset: Dataset,
    batches: Sequence[Sequence[int]],
    cfg: Config,
    device: torch.device,
) -> DataLoader:
    """The training DataLoader for an epoch: `loader` (last epoch's, workers kept alive) with this
    epoch's batches, or a new persistent one."""
    if loader is None:
        return make_loader(dataset, batches, cfg.train.num_workers, device, persistent=True)
    loader.batch_sampler.set_batches(batches)
    return loader


def gpu_batches(cache: TensorCache, batches: list[list[int]]) -> Iterator[dict[str, torch.Tensor]]:
    """The batches drawn from the images held on the GPU (`train.gpu_cache`)."""
    for b in batches:
        yield cache.batch(b)
