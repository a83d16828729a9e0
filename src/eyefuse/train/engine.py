"""Training and validation, readable top to bottom (after torchvision's classification reference):
`train_one_epoch`, `predict_dataset` (the validation pass), `fit`. What a run is built from is in
`eyefuse.train.setup`, its state and what is saved after each epoch in `eyefuse.train.state`, its
data in `eyefuse.train.run_data`.

Reproducibility: every random choice of an epoch (patient order, augmentation, dropout) is seeded
from (seed, epoch, rank) at the start of that epoch, not drawn from a stream that runs across
epochs. A run killed at any point and resumed from its `last` checkpoint therefore redoes the
interrupted epoch exactly and ends with the same weights as an uninterrupted run (on the CPU,
where kernels are deterministic).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from eyefuse.config import Config, resume_config
from eyefuse.data.augment import augment_batch, eval_transform
from eyefuse.errors import EyefuseError
from eyefuse.eval.calibration import fit_calibration, scores_from_logits
from eyefuse.models.checkpoint import CheckpointMeta, load_model
from eyefuse.models.inputs import model_inputs
from eyefuse.train import checkpoint as ckpt
from eyefuse.train.distributed import (
    DistInfo,
    all_reduce_max_,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    gather_objects,
    init_distributed,
    shard_indices,
    shutdown_distributed,
)
from eyefuse.train.losses import masked_bce
from eyefuse.train.run_data import RunData, make_loader
from eyefuse.train.setup import amp_dtype, epoch_seed, parallel_model, process_group_device, setup_run
from eyefuse.train.state import Run, TrainState, open_tensorboard, resumable, resume_state, save_epoch

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
    *,
    autocast: bool = True,
) -> dict[str, Any]:
    """Logits for every patient of `dataset`, exactly once across ranks (strided shards, no padding),
    gathered in dataset order on every rank. Returns `logits`, `labels`, `loss` (when a criterion
    is given). `autocast`: under `train.amp`'s precision (validation while training); False: in
    float32, as `eyefuse predict`, the service and ONNX compute, so that the calibration and the
    evaluation see the logits a deployed model gives."""
    model.eval()
    idx = shard_indices(len(dataset), info)
    bs = cfg.train.batch_size * 2
    batches = [idx[i : i + bs] for i in range(0, len(idx), bs)]
    loader = make_loader(dataset, batches, cfg.train.num_workers, device)
    dtype = amp_dtype(cfg.train.amp, device) if autocast else None
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
    seconds: float = 0.0  #: wall time of this process's part of the run (a resumed run: since resuming)
    cpu_seconds: float = 0.0  #: CPU time of all its threads: the cost on a machine shared with other work

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
        lines.append(
            f"time: {self.seconds / 60:.1f} min wall, {self.cpu_seconds / 60:.1f} CPU-minutes "
            f"({torch.get_num_threads()} threads; on an idle machine the wall time is about "
            "CPU-minutes / threads)"
        )
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
    t0, cpu0 = time.perf_counter(), time.process_time()
    run_dir = Path(run_dir)
    cfg.validate()  # before anything is written: a refused config leaves no run folder behind
    resume = resume and resumable(run_dir)
    created = not run_dir.exists()
    info = init_distributed(process_group_device(cfg.train.device))
    try:
        run, state = setup_run(cfg, run_dir, info, resume=resume, progress=progress)
        if resume:
            resume_state(state, run_dir / "last")
            if info.is_main:
                print(f"resuming {run_dir} at epoch {state.epoch + 2}/{cfg.train.epochs}", flush=True)
        train_model = parallel_model(state.model, run.device, cfg, info)
        meta_base = _meta_base(cfg, run.data, state.model)
        writer = open_tensorboard(run_dir) if info.is_main else None
        stopped_early = False
        for epoch in range(state.epoch + 1, cfg.train.epochs):
            row = run_epoch(run, state, train_model, epoch)
            stopped_early = save_epoch(run, state, row, meta_base, writer)
            if stopped_early:
                break
        if writer is not None:
            writer.close()
        result = finish_run(run, state, stopped_early)
        return replace(result, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0)
    except EyefuseError:
        # A run refused before its first checkpoint leaves nothing behind that it created.
        if info.is_main and created and run_dir.is_dir() and not (run_dir / "last").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        shutdown_distributed(info)


def run_epoch(run: Run, state: TrainState, train_model: nn.Module, epoch: int) -> dict[str, float]:
    """Train `epoch` (with `train_model`, the DDP/compiled view of `state.model`), then validate;
    returns the epoch's row of metrics.csv."""
    cfg, info = run.cfg, run.info
    t0 = time.perf_counter()
    train_loss, img_s, _ = train_one_epoch(
        train_model,
        run.criterion,
        state.optimizer,
        state.scheduler,
        run.train_batches(epoch),
        run.device,
        epoch,
        cfg,
        info,
        scaler=state.scaler,
        ema=state.ema,
        progress=run.progress,
        start_step=epoch * run.steps_per_epoch,
        fault_step=run.fault_step,
    )
    # Each DDP rank updated its own BatchNorm running statistics on its own batches: rank 0's go to
    # every rank, so that validation, EMA and the saved weights use one set.
    broadcast_buffers(state.model, info)
    if state.ema is not None:
        broadcast_buffers(state.ema.module, info)
    result = predict_dataset(state.eval_model, run.val_set, run.device, cfg, info, run.criterion)
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        **validation_scores(state.eval_model, result),
        "lr": state.optimizer.param_groups[-1]["lr"],
        "epoch_time_s": time.perf_counter() - t0,
        "train_images_per_s": img_s,
    }


def finish_run(run: Run, state: TrainState, stopped_early: bool) -> FitResult:
    """After the last epoch: check that the DDP ranks ended identical, fit the calibration of `best`
    on the validation split, and sum the run up."""
    if run.info.enabled:
        check_replicas_identical(state.model, run.info)
    if run.info.is_main and (run.run_dir / "best").exists():
        calibrate_checkpoint(run.run_dir / "best", run.val_set, run.device, run.cfg)
    barrier(run.info)
    return FitResult(
        run.run_dir,
        state.best_epoch,
        state.best_score,
        run.cfg.train.select_metric,
        state.epoch + 1,  # epochs run
        state.history,
        stopped_early,
    )


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
    result = predict_dataset(model, val_set, device, cfg, autocast=False)
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
