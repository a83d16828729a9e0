"""The state of a training run: `Run`, what it is set up with and keeps to its end, and
`TrainState`, what changes from epoch to epoch. After every epoch `save_epoch` writes the state out
(`last`, and `best` when the epoch is the best so far) and keeps the books of the best epoch and of
early stopping; `resume_state` reads `last` back into a freshly set-up run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from eyefuse.config import Config
from eyefuse.data.dataset import PairDataset, TensorCache
from eyefuse.models.checkpoint import load_model_state
from eyefuse.train import checkpoint as ckpt
from eyefuse.train.distributed import DistInfo, barrier
from eyefuse.train.run_data import RunData, epoch_batches, epoch_loader, gpu_batches
from eyefuse.utils.io import atomic_write_text

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


@dataclass
class Run:
    """What a run is set up with (`eyefuse.train.setup.setup_run`) and keeps to its end."""

    cfg: Config
    run_dir: Path
    info: DistInfo
    device: torch.device
    data: RunData
    train_set: PairDataset
    val_set: PairDataset
    criterion: nn.Module
    steps_per_epoch: int  # optimiser steps per epoch (the schedule's unit)
    progress: bool = True
    fault_step: int | None = None  # test hook: SIGKILL after this global step (read once per run)
    gpu_cache: TensorCache | None = None  # `train.gpu_cache`: the training images on the GPU
    train_loader: DataLoader | None = None  # one for the run, so its workers start once

    def train_batches(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        """This rank's training batches of `epoch` (at most `train.max_steps_per_epoch`), drawn from
        the GPU cache or through the run's one DataLoader."""
        train = self.cfg.train
        batches = epoch_batches(len(self.train_set), train.batch_size, train.seed, epoch, self.info)
        if train.max_steps_per_epoch:
            batches = batches[: train.max_steps_per_epoch]
        if self.gpu_cache is not None:
            return gpu_batches(self.gpu_cache, batches)
        self.train_loader = epoch_loader(self.train_loader, self.train_set, batches, self.cfg, self.device)
        return self.train_loader


@dataclass
class TrainState:
    """What changes from epoch to epoch: the weights with their optimiser, schedule, loss scaler and
    EMA, and the books of the best epoch and of early stopping. `last` holds all of it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None  # fp16 autocast only
    ema: ModelEmaV3 | None = None
    epoch: int = -1  # the last finished epoch (from 0); -1 before the first
    best_score: float = -math.inf  # `selection_score` of the best epoch
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict[str, float]] = field(default_factory=list)  # the rows of metrics.csv

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved as `best`: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def record(self, epoch: int, row: dict[str, float], score: float) -> bool:
        """Add a finished epoch (its metrics row and selection score); True when it is the best so far.

        The first epoch is the best so far even when its figure is undefined (NaN, scored -inf: e.g.
        no validation positives), so a run always leaves a `best` checkpoint."""
        self.epoch = epoch
        self.history.append(row)
        improved = score > self.best_score or self.best_epoch < 0
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights, as `last/train_state.*` stores it."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The inverse of `state_dict` (the weights are loaded separately)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.module.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = list(state["history"])


def selection_score(scores: dict[str, float], metric: str) -> float:
    """The figure `train.select_metric` names, signed so that higher is always better."""
    value = float(scores[metric])
    if math.isnan(value):
        return -math.inf
    return -value if metric == "val_loss" else value


def resumable(run_dir: Path) -> bool:
    """Whether `run_dir/last` exists to resume from. A run killed in its first epoch has none: it
    starts again from step 0 with its saved config and split, and as every epoch is seeded from
    (seed, epoch), it ends with the weights an uninterrupted run would have."""
    if (run_dir / "last").exists():
        return True
    if os.environ.get("RANK", "0") == "0":  # before the process group exists
        print(f"{run_dir}: no checkpoint yet (stopped in its first epoch): starting again from step 0")
    return False


def resume_state(state: TrainState, last: Path) -> None:
    """Load the checkpoint `last` of a killed (or finished, to be extended) run into `state`, which
    holds a freshly set-up run. A run extended with a larger `train.epochs` continues on the cosine
    schedule rebuilt over the new length, from the step it had reached."""
    train_state = ckpt.load_train_state(last)
    state.model.load_state_dict(load_model_state(last))
    state.load_state_dict(train_state)


def save_epoch(
    run: Run, state: TrainState, row: dict[str, float], meta_base: dict[str, Any], writer: Any
) -> bool:
    """Record a finished epoch's metrics `row` in `state` and write it out (rank 0): `best` when the
    epoch is the best so far by `train.select_metric`, `last` (weights and training state),
    metrics.csv, tensorboard (`writer`, or None) and a progress line. True when early stopping ends
    the run: `train.early_stop_patience` epochs in a row without a better one."""
    cfg, info, run_dir = run.cfg, run.info, run.run_dir
    epoch = int(row["epoch"]) - 1
    scores = {k: v for k, v in row.items() if k.startswith("val_")}  # the validation figures
    improved = state.record(epoch, row, selection_score(scores, cfg.train.select_metric))
    if info.is_main:
        meta = {**meta_base, "epoch": epoch + 1, "val": scores}
        if improved:
            ckpt.save_checkpoint(run_dir / "best", state.eval_model.state_dict(), {**meta, "kind": "best"})
        ckpt.save_checkpoint(
            run_dir / "last", state.model.state_dict(), {**meta, "kind": "last"}, state.state_dict()
        )
        write_metrics_csv(run_dir / "metrics.csv", state.history)
        if writer is not None:
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    writer.add_scalar(k, v, epoch + 1)
            writer.flush()
        print(
            f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}  val loss {scores['val_loss']:.4f}  "
            f"val final {scores['val_final']:.4f}  val macro AUROC {scores['val_macro_auroc']:.4f}"
            + ("  *best*" if improved else ""),
            flush=True,
        )
    barrier(info)
    patience, metric = cfg.train.early_stop_patience, cfg.train.select_metric
    if patience and state.bad_epochs >= patience:
        if info.is_main:
            print(f"early stop: no better {metric} for {state.bad_epochs} epochs", flush=True)
        return True
    return False


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def open_tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter in RUN/tensorboard when tensorboard is installed (an optional extra), else None."""
    with contextlib.suppress(ImportError):
        from torch.utils.tensorboard import SummaryWriter  # optional extra

        return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    return None
