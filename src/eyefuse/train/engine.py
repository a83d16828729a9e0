"""Training and validation, readable top to bottom (after torchvision's classification reference):
`train_one_epoch`, `predict_dataset` (the validation pass), `fit`.

Reproducibility: every random choice of an epoch (patient order, augmentation, dropout) is seeded
from (seed, epoch, rank) at the start of that epoch, not drawn from a stream that runs across
epochs. A run killed at any point and resumed from its `last` checkpoint therefore redoes the
interrupted epoch exactly and ends with the same weights as an uninterrupted run (on the CPU,
where kernels are deterministic).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from eyefuse.config import Config, resume_config, save_config
from eyefuse.data.augment import augment_batch, eval_transform
from eyefuse.data.cache import PreprocessCache, prepare_images
from eyefuse.data.dataset import (
    PairDataset,
    TensorCache,
    describe_set_aside,
    set_aside_reasons,
    usable_patients,
    write_set_aside,
)
from eyefuse.data.odir import load_dataset
from eyefuse.data.prepare import default_cache_dir
from eyefuse.data.preprocess import PreprocessError
from eyefuse.data.splits import apply_split, split_dataset
from eyefuse.errors import ConfigError, EyefuseError
from eyefuse.eval.calibration import fit_calibration, scores_from_logits
from eyefuse.models import build_model
from eyefuse.models.checkpoint import CheckpointMeta, load_model, load_model_state
from eyefuse.models.inputs import model_inputs
from eyefuse.train import checkpoint as ckpt
from eyefuse.train.distributed import (
    DistInfo,
    all_reduce_max_,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    broadcast_object,
    gather_objects,
    init_distributed,
    shard_indices,
    shutdown_distributed,
)
from eyefuse.train.losses import create_loss, masked_bce
from eyefuse.utils.io import atomic_write_text, sha256_file, writable_dir_problem

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_kappa",
    "val_f1",
    "val_auc",
    "val_final",
    "val_macro_auroc",
    "lr",
    "epoch_time_s",
    "train_images_per_s",
)


# --- devices, seeds, precision -----------------------------------------------------------------


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """`auto` picks CUDA when available; under torchrun each rank takes its LOCAL_RANK GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine")
        if name == "cuda":
            return torch.device("cuda", info.local_rank)
    return torch.device(name)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` (None = full precision). `auto` means bf16 on CUDA when
    supported, fp16 otherwise, and full precision on the CPU."""
    if setting == "off":
        return None
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; use bf16 or off on the CPU")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, epoch, rank, stream)."""
    ss = np.random.SeedSequence([seed, epoch, rank, stream])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True


# --- data ---------------------------------------------------------------------------------------


class CachedLoader:
    """Loads preprocessed eyes from the cache; eyes that failed preprocessing raise at once
    (counted in `prepare`) instead of being retried every epoch. Picklable for DataLoader workers."""

    def __init__(self, cache: Any, failed: dict[str, str]):
        self.cache = cache
        self.failed = failed

    def __call__(self, path: Path) -> np.ndarray:
        reason = self.failed.get(str(path))
        if reason is not None:
            raise PreprocessError(path, reason)
        return self.cache.load(path)


def prepared_loader(
    cfg: Config, root: str, patients: Sequence[Any], progress: bool, info: DistInfo = DistInfo()
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
    splits: dict[str, list[Any]]  # split name -> patients
    loader: CachedLoader
    split_file: Path
    split_hash: str
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    failed_images: int = 0
    set_aside: list[tuple[Any, str, str]] = field(default_factory=list)  # (patient, split, reason)
    set_aside_file: Path | None = None

    def summary(self) -> str:
        parts = [f"{name} {len(p)}" for name, p in self.splits.items()]
        text = "patients: " + ", ".join(parts)
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
    loader = prepared_loader(cfg, cfg.data.root, [p for ps in splits.values() for p in ps], progress, info)
    dropped: dict[str, int] = {}
    set_aside: list[tuple[Any, str, str]] = []
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


# --- model, optimiser, schedule -----------------------------------------------------------------


def param_groups(model: nn.Module, cfg: Config, backbone_pretrained: bool) -> list[dict[str, Any]]:
    """AdamW/SGD groups: pretrained backbone weights at `lr * backbone_lr_mult` (layer-wise lower LR)
    when the backbone starts from weights (attention inserted into it is new and gets the full LR);
    no weight decay on norms, biases and scalars."""
    mult = cfg.train.backbone_lr_mult if backbone_pretrained else 1.0
    out = []
    for group, params in model.parameter_groups().items():
        lr_mult = mult if group == "backbone" else 1.0
        for no_decay in (False, True):
            chosen = [p for p in params if p.requires_grad and (p.ndim <= 1) == no_decay]
            if chosen:
                out.append(
                    {
                        "params": chosen,
                        "lr": cfg.train.lr * lr_mult,
                        "lr_mult": lr_mult,
                        "weight_decay": 0.0 if no_decay else cfg.train.weight_decay,
                    }
                )
    return out


def build_optimizer(model: nn.Module, cfg: Config, backbone_pretrained: bool) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, backbone_pretrained)
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)
    # The fused kernel does the whole update in one pass: about 6x faster than the default on a CPU
    # for ResNet-50-sized models, where the optimiser step was a fifth of the training step.
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """Linear warm-up then cosine decay to `lr * min_lr_ratio`, stepped every optimiser step."""
    total = max(1, cfg.train.epochs * steps_per_epoch)
    warmup = min(total - 1, round(cfg.train.warmup_epochs * steps_per_epoch))
    floor = cfg.train.min_lr_ratio

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- one epoch ----------------------------------------------------------------------------------


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def compute_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], criterion: nn.Module, cfg: Config
) -> torch.Tensor:
    """Patient loss plus, with per-eye auxiliary heads, the masked per-eye loss."""
    loss = criterion(outputs["logits"].float(), batch["labels"])
    if "left_logits" in outputs and cfg.loss.aux_weight > 0:
        known = batch["eye_labels_known"]
        aux = 0.0
        for i, side in enumerate(("left", "right")):
            mask = batch[f"{side}_present"] & known[:, i]
            aux = aux + masked_bce(outputs[f"{side}_logits"].float(), batch[f"{side}_labels"], mask)
        loss = loss + cfg.loss.aux_weight * aux / 2
    return loss


#: Steps between the checks that the loss is finite and the progress-bar updates: each reads a value
#: back from the device, which makes the host wait for the GPU; between them the host runs ahead and
#: keeps the GPU's queue full.
SYNC_EVERY = 25


def fault_step_from_env() -> int | None:
    """Test hook: EYEFUSE_FAULT_KILL_AT_STEP=N (read once per run) makes training SIGKILL itself after
    optimiser step N, so the resume test can kill a run mid-epoch at a reproducible point."""
    target = os.environ.get("EYEFUSE_FAULT_KILL_AT_STEP")
    return int(target) if target else None


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader: Any,
    device: torch.device,
    epoch: int,
    cfg: Config,
    info: DistInfo,
    *,
    scaler: torch.amp.GradScaler | None = None,
    ema: Any = None,
    progress: bool = True,
    start_step: int = 0,
    fault_step: int | None = None,
) -> tuple[float, float, int]:
    """One pass over the training batches. Returns (mean loss, eye images per second, steps).

    The loop never waits for the device except every `SYNC_EVERY` steps and at the end: the loss is
    summed on the device, a non-finite loss is remembered (first step) on the device and reported at
    the next check. Images per second cover the whole epoch, from asking for the first batch until
    the device has finished the last step (the same quantity bench_train.py measures for the model
    alone, plus loading and augmentation)."""
    model.train()
    torch.manual_seed(epoch_seed(cfg.train.seed, epoch, info.rank, stream=1))  # dropout etc.
    gen = torch.Generator(device=device)
    gen.manual_seed(epoch_seed(cfg.train.seed, epoch, info.rank, stream=2))
    dtype = amp_dtype(cfg.train.amp, device)
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first step with a non-finite loss
    n_seen, steps = 0, 0
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not (progress and info.is_main))

    def check() -> None:
        # Every rank stops together (a rank that raised alone would leave the others waiting in
        # DDP's next all-reduce): the largest first-bad step over ranks, -1 when all are finite.
        bad = int(all_reduce_max_(first_bad.clone(), info).item())  # waits for the device
        if bad >= 0:
            raise EyefuseError(
                f"loss became non-finite at epoch {epoch + 1}, step {bad + 1}: lower train.lr, "
                "or use train.amp=bf16/off"
            )
        if bar.disable is False:
            elapsed = time.perf_counter() - t0
            bar.set_postfix(
                loss=f"{loss_sum.item() / max(1, n_seen):.4f}",
                img_s=f"{2 * n_seen * info.world_size / elapsed:.1f}",
            )

    for batch in bar:
        batch = _to_device(batch, device)
        batch = augment_batch(batch, cfg.augment, generator=gen)
        left, right = model_inputs(
            model, batch["left"], batch["right"], channels_last=cfg.train.channels_last
        )
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = model(left, right, batch["left_present"], batch["right_present"])
        loss = compute_loss(outputs, batch, criterion, cfg)
        finite = torch.isfinite(loss.detach())
        first_bad = torch.where(~finite & (first_bad < 0), steps, first_bad)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(_unwrap(model))
        steps += 1
        bs = batch["labels"].shape[0]
        loss_sum += loss.detach() * bs
        n_seen += bs
        if steps % SYNC_EVERY == 0:
            check()
        if fault_step is not None and start_step + steps == fault_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.train.max_steps_per_epoch and steps >= cfg.train.max_steps_per_epoch:
            break
    check()  # also waits for the last step to finish, so the time below is the device's too
    elapsed = time.perf_counter() - t0
    mean_loss = all_reduce_mean(float(loss_sum.item()) / max(1, n_seen), info)
    return mean_loss, 2 * n_seen * info.world_size / max(elapsed, 1e-9), steps


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    cfg: Config,
    info: DistInfo = DistInfo(),
    criterion: nn.Module | None = None,
) -> dict[str, Any]:
    """Logits for every patient of `dataset`, exactly once across ranks (strided shards, no padding),
    gathered in dataset order on every rank. Returns `logits`, `labels`, `loss` (when a criterion
    is given)."""
    model.eval()
    idx = shard_indices(len(dataset), info)
    bs = cfg.train.batch_size * 2
    batches = [idx[i : i + bs] for i in range(0, len(idx), bs)]
    loader = make_loader(dataset, batches, cfg.train.num_workers, device)
    dtype = amp_dtype(cfg.train.amp, device)
    # Kept on the device and copied back once at the end: a copy per batch would make the host wait
    # for every batch before queueing the next.
    on_device: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    loss_sum = torch.zeros((), device=device)
    for batch in loader:
        batch = eval_transform(_to_device(batch, device))
        left, right = model_inputs(
            model, batch["left"], batch["right"], channels_last=cfg.train.channels_last
        )
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = model(left, right, batch["left_present"], batch["right_present"])
        logits = outputs["logits"].float()
        if criterion is not None:
            loss_sum += criterion(logits, batch["labels"]) * logits.shape[0]
        on_device.append((batch["index"], logits, batch["labels"]))
    parts = [(i.cpu().numpy(), lg.cpu().numpy(), y.cpu().numpy()) for i, lg, y in on_device]
    gathered = gather_objects((parts, float(loss_sum.item())), info)
    all_parts = [p for rank_parts, _ in gathered for p in rank_parts]
    n_labels = len(_unwrap(model).label_names)
    if not all_parts:
        return {"logits": np.zeros((0, n_labels)), "labels": np.zeros((0, n_labels)), "loss": float("nan")}
    index = np.concatenate([p[0] for p in all_parts])
    order = np.argsort(index)
    if len(index) != len(dataset) or len(np.unique(index)) != len(dataset):
        raise RuntimeError(f"evaluation saw {len(index)} samples for a set of {len(dataset)}")
    logits = np.concatenate([p[1] for p in all_parts])[order]
    labels = np.concatenate([p[2] for p in all_parts])[order]
    total_loss = sum(loss for _, loss in gathered)
    return {"logits": logits, "labels": labels, "loss": total_loss / len(dataset) if criterion else None}


def validation_scores(model: nn.Module, result: dict[str, Any]) -> dict[str, float]:
    """Official ODIR score (at 0.5, as the challenge defines it) and macro AUROC of a validation pass,
    scored as evaluation scores (`eyefuse.eval.calibration.scores_from_logits`)."""
    official = scores_from_logits(result["labels"].astype(int), result["logits"], _unwrap(model).cfg.head)
    return {
        "val_loss": result["loss"],
        "val_kappa": official["kappa"],
        "val_f1": official["f1"],
        "val_auc": official["auc"],
        "val_final": official["final"],
        "val_macro_auroc": official["macro_auroc"],
    }


def selection_score(scores: dict[str, float], metric: str) -> float:
    """The figure `train.select_metric` names, signed so that higher is always better."""
    value = float(scores[metric])
    if math.isnan(value):
        return -math.inf
    return -value if metric == "val_loss" else value


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


# --- the whole run ------------------------------------------------------------------------------


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_score: float
    select_metric: str
    epochs_run: int
    history: list[dict[str, float]]
    stopped_early: bool

    def __str__(self) -> str:
        last = self.history[-1] if self.history else {}
        lines = [
            f"run: {self.run_dir}",
            f"epochs run: {self.epochs_run}" + (" (early stop)" if self.stopped_early else ""),
            f"best epoch: {self.best_epoch + 1}  {self.select_metric} "
            f"{abs(self.best_score) if self.select_metric == 'val_loss' else self.best_score:.4f}",
        ]
        if last:
            lines.append(
                f"last epoch: train loss {last['train_loss']:.4f}  val loss {last['val_loss']:.4f}  "
                f"val final {last['val_final']:.4f}  val macro AUROC {last['val_macro_auroc']:.4f}"
            )
        lines.append(f"checkpoints: {self.run_dir / 'best'}  {self.run_dir / 'last'}")
        return "\n".join(lines)


def prepare_resume(run_dir: Path, overrides: Sequence[str]) -> Config:
    """The saved config of a run, with `--set` overrides that may change how long or how it trains
    (train.*, eval.*) but not what it trains (model, data, preprocessing, augmentation, loss).
    The checks live in `eyefuse.config.resume_config` so that the CLI can run them before torch."""
    return resume_config(run_dir, overrides)


def fit(
    cfg: Config,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train `cfg` into `run_dir` (config.yaml, split.csv, metrics.csv, best/, last/); with `resume`
    continue from `run_dir/last`. At the end, fit thresholds and temperatures on the validation split
    and store them in `best`."""
    run_dir = Path(run_dir)
    cfg.validate()  # before anything is written: a refused config leaves no run folder behind
    if resume and not (run_dir / "last").exists():
        # Killed before its first checkpoint: every epoch is seeded from (seed, epoch), so starting
        # again from step 0 with the saved config and split ends with the same weights.
        if os.environ.get("RANK", "0") == "0":
            print(f"{run_dir}: no checkpoint yet (stopped in its first epoch): starting again from step 0")
        resume = False
    created = not run_dir.exists()
    device_name = cfg.train.device
    info = init_distributed(
        "cuda" if device_name in ("auto", "cuda") and torch.cuda.is_available() else device_name
    )
    try:
        device = resolve_device(device_name, info)
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if not resume and (run_dir / "last").exists():
                raise ConfigError(
                    f"{run_dir} already holds a run: use --resume {run_dir}, or choose another --out"
                )
            save_config(cfg, run_dir / "config.yaml")
        barrier(info)
        data = load_run_data(cfg, run_dir, info, progress)
        if info.is_main:
            print(data.summary(), flush=True)
        size = cfg.preprocess.size
        train_set = PairDataset(data.splits["train"], data.loader, data.label_names, size=size)
        val_set = PairDataset(data.splits["val"], data.loader, data.label_names, size=size)

        model = build_model(cfg.model, data.label_names)
        backbone_pretrained = bool(cfg.model.pretrained or cfg.model.weights)
        model.to(device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        train_labels = np.stack([p.labels for p in data.splits["train"]]).astype(np.float32)
        criterion = create_loss(cfg.loss, cfg.model.head, train_labels, data.label_names).to(device)
        optimizer = build_optimizer(model, cfg, backbone_pretrained)
        n_batches = len(epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, 0, info))
        steps_per_epoch = min(n_batches, cfg.train.max_steps_per_epoch or n_batches)
        scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
        dtype = amp_dtype(cfg.train.amp, device)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        ema = None
        if cfg.train.ema:
            ema = ModelEmaV3(model, decay=cfg.train.ema_decay)

        start_epoch, best_score, best_epoch, bad_epochs = 0, -math.inf, -1, 0
        history: list[dict[str, float]] = []
        if resume:
            state = ckpt.load_train_state(run_dir / "last")
            model.load_state_dict(load_model_state(run_dir / "last"))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            if ema is not None and state.get("ema"):
                ema.module.load_state_dict(state["ema"])
            start_epoch = int(state["epoch"]) + 1
            best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
            bad_epochs = int(state["bad_epochs"])
            history = list(state["history"])
            # A run extended with a larger train.epochs: the cosine schedule is rebuilt over the new
            # length, continuing from the current step.
            if info.is_main:
                print(f"resuming {run_dir} at epoch {start_epoch + 1}/{cfg.train.epochs}", flush=True)

        train_model: nn.Module = model
        if info.enabled:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.train.compile:
            train_model = torch.compile(train_model)

        gpu_cache = None
        if cfg.train.gpu_cache:
            if device.type != "cuda":
                raise ConfigError("train.gpu_cache=true needs CUDA")
            gpu_cache = TensorCache(train_set, device=device, progress=progress and info.is_main)

        meta_base = _meta_base(cfg, data, model)
        writer = _tensorboard(run_dir) if info.is_main else None
        stopped_early = False
        epoch = start_epoch - 1
        train_loader: DataLoader | None = None
        fault_step = fault_step_from_env()
        for epoch in range(start_epoch, cfg.train.epochs):
            t0 = time.perf_counter()
            batches = epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, epoch, info)
            if cfg.train.max_steps_per_epoch:
                batches = batches[: cfg.train.max_steps_per_epoch]
            if gpu_cache is not None:
                loader = _gpu_batches(gpu_cache, batches)
            else:  # one DataLoader for the run: its workers are started once, not every epoch
                train_loader = epoch_loader(train_loader, train_set, batches, cfg, device)
                loader = train_loader
            train_loss, img_s, _ = train_one_epoch(
                train_model,
                criterion,
                optimizer,
                scheduler,
                loader,
                device,
                epoch,
                cfg,
                info,
                scaler=scaler,
                ema=ema,
                progress=progress,
                start_step=epoch * steps_per_epoch,
                fault_step=fault_step,
            )
            # Each DDP rank updated its own BatchNorm running statistics on its own batches: rank 0's
            # go to every rank, so that validation, EMA and the saved weights use one set.
            broadcast_buffers(model, info)
            if ema is not None:
                broadcast_buffers(ema.module, info)
            eval_model = ema.module if ema is not None else model
            result = predict_dataset(eval_model, val_set, device, cfg, info, criterion)
            scores = validation_scores(eval_model, result)
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                **scores,
                "lr": optimizer.param_groups[-1]["lr"],
                "epoch_time_s": time.perf_counter() - t0,
                "train_images_per_s": img_s,
            }
            history.append(row)
            score = selection_score(scores, cfg.train.select_metric)
            # the first epoch is the best so far even when its figure is undefined (NaN: e.g. no
            # validation positives), so a run always leaves a `best` checkpoint
            improved = score > best_score or best_epoch < 0
            if improved:
                best_score, best_epoch, bad_epochs = score, epoch, 0
            else:
                bad_epochs += 1
            if info.is_main:
                meta = {**meta_base, "epoch": epoch + 1, "val": scores}
                if improved:
                    ckpt.save_checkpoint(run_dir / "best", eval_model.state_dict(), {**meta, "kind": "best"})
                train_state = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "ema": ema.module.state_dict() if ema is not None else None,
                    "epoch": epoch,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": history,
                }
                ckpt.save_checkpoint(
                    run_dir / "last", model.state_dict(), {**meta, "kind": "last"}, train_state
                )
                write_metrics_csv(run_dir / "metrics.csv", history)
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch" and v is not None:
                            writer.add_scalar(k, v, epoch + 1)
                    writer.flush()
                print(
                    f"epoch {epoch + 1}: train loss {train_loss:.4f}  val loss {scores['val_loss']:.4f}  "
                    f"val final {scores['val_final']:.4f}  val macro AUROC {scores['val_macro_auroc']:.4f}"
                    + ("  *best*" if improved else ""),
                    flush=True,
                )
            barrier(info)
            if cfg.train.early_stop_patience and bad_epochs >= cfg.train.early_stop_patience:
                stopped_early = True
                if info.is_main:
                    metric = cfg.train.select_metric
                    print(f"early stop: no better {metric} for {bad_epochs} epochs", flush=True)
                break
        if writer is not None:
            writer.close()
        if info.enabled:
            check_replicas_identical(model, info)
        if info.is_main and (run_dir / "best").exists():
            calibrate_checkpoint(run_dir / "best", val_set, device, cfg)
        barrier(info)
        return FitResult(
            run_dir, best_epoch, best_score, cfg.train.select_metric, epoch + 1, history, stopped_early
        )
    except EyefuseError:
        # A run refused before its first checkpoint leaves nothing behind that it created.
        if info.is_main and created and run_dir.is_dir() and not (run_dir / "last").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        shutdown_distributed(info)


def check_replicas_identical(model: nn.Module, info: DistInfo) -> str:
    """Raise if the DDP ranks' parameters or buffers differ; returns the checksum.

    Parameters must stay bit-identical (DDP averages the gradients, every rank takes the same step);
    buffers (BatchNorm running statistics) are identical after `broadcast_buffers`, which `fit` runs
    after every epoch's training, so a rank that validated or saved with other statistics is caught."""
    digest = hashlib.sha256()
    tensors = [*model.named_parameters(), *(("buffer:" + n, b) for n, b in model.named_buffers())]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    sums = gather_objects(digest.hexdigest(), info)
    if len(set(sums)) != 1:
        raise RuntimeError(f"DDP ranks hold different weights or buffers: {sums}")
    if info.is_main:
        print(
            f"all {info.world_size} ranks hold identical weights and buffers (sha256 {sums[0][:16]})",
            flush=True,
        )
    return sums[0]


def _gpu_batches(cache: Any, batches: list[list[int]]) -> Iterator[dict[str, torch.Tensor]]:
    for b in batches:
        yield cache.batch(b)


def _meta_base(cfg: Config, data: RunData, model: nn.Module) -> dict[str, Any]:
    return {
        **ckpt.checkpoint_meta(cfg, data.label_names, model),
        "config_hash": cfg.hash(),
        "split_file": str(data.split_file),
        "split_hash": data.split_hash,
        "split_sizes": {k: len(v) for k, v in data.splits.items()},
        "seed": cfg.train.seed,
        "versions": ckpt.package_versions(),
        "git_commit": ckpt.git_commit(),
    }


def calibrate_checkpoint(path: Path, val_set: Dataset, device: torch.device, cfg: Config) -> dict[str, Any]:
    """Fit per-class temperatures and thresholds on the validation split with the checkpoint's own
    weights, and store them (with the split they were fitted on) in its metadata."""
    print(f"calibration: fitting thresholds and temperatures on {len(val_set)} validation patients")
    model = load_model(path, device=device)
    result = predict_dataset(model, val_set, device, cfg)
    calib = fit_calibration(
        result["labels"].astype(int),
        result["logits"],
        head=cfg.model.head,
        cfg=cfg.eval,
        label_names=list(model.label_names),
    )
    meta = CheckpointMeta.read(path)
    fields = {
        **calib,
        "calibration_split": {"name": "val", "file": meta.split_file, "hash": meta.split_hash},
    }
    ckpt.update_meta(path, **fields)
    return fields


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter in RUN/tensorboard when tensorboard is installed (an optional extra)."""
    with contextlib.suppress(ImportError):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    return None
