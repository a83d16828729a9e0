"""What a training run is built from: device, seeds and precision, the optimiser and its schedule,
and `setup_run`, which builds a run up to its first step (data, model, loss, optimiser, EMA).
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from eyefuse.config import Config, save_config
from eyefuse.data.dataset import PairDataset, TensorCache
from eyefuse.errors import ConfigError
from eyefuse.models import build_model
from eyefuse.registry import OPTIMIZER
from eyefuse.train.distributed import DistInfo, barrier
from eyefuse.train.losses import create_loss
from eyefuse.train.run_data import epoch_batches, load_run_data
from eyefuse.train.state import Run, TrainState

# --- devices, seeds, precision -----------------------------------------------------------------


def process_group_device(name: str) -> str:
    """The device kind `train.device` names, for choosing the process group's backend (NCCL on CUDA,
    gloo otherwise) before the rank's own device is known."""
    return "cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else name


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX tiles or AVX-512 BF16). There
    oneDNN's bf16 convolutions train about twice as fast as float32 (benchmarks/RESULTS.md); on
    other CPUs bf16 is emulated and slower than float32."""
    if not torch.backends.mkldnn.is_available():
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, since torch 2.1
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` (None = full precision). `auto` means bf16 on CUDA when
    supported, fp16 on older GPUs; on the CPU bf16 where the CPU computes it natively
    (`cpu_has_native_bf16`), full precision elsewhere."""
    if setting == "off":
        return None
    if setting == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; use bf16 or off on the CPU")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def describe_precision(setting: str, device: torch.device) -> str:
    """One line saying which precision `train.amp` resolved to on `device`, and why."""
    dtype = amp_dtype(setting, device)
    what = "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
    if setting != "auto":
        return f"precision: {what} (train.amp={setting})"
    if device.type == "cpu":
        why = "this CPU computes bf16 natively" if dtype else "this CPU has no native bf16"
    else:
        why = f"on {device.type}"
    return f"precision: {what} (train.amp=auto: {why}; train.amp=off for float32)"


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


# --- optimiser, schedule -----------------------------------------------------------------------


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


def _adamw(groups: list[dict[str, Any]], cfg: Config) -> torch.optim.Optimizer:
    # The fused kernel does the whole update in one pass: about 6x faster than the default on a CPU
    # for ResNet-50-sized models, where the optimiser step was a fifth of the training step.
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=True)


def _sgd(groups: list[dict[str, Any]], cfg: Config) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)


#: train.optimizer -> constructor(param groups, config); names and descriptions in `registry.OPTIMIZER`
OPTIMIZERS = OPTIMIZER.bind({"adamw": _adamw, "sgd": _sgd})


def build_optimizer(model: nn.Module, cfg: Config, backbone_pretrained: bool) -> torch.optim.Optimizer:
    """The configured optimiser over `param_groups` (per-group learning-rate multipliers, no decay on
    biases and norms)."""
    return OPTIMIZERS[cfg.train.optimizer](param_groups(model, cfg, backbone_pretrained), cfg)


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


def fault_step_from_env() -> int | None:
    """Test hook: EYEFUSE_FAULT_KILL_AT_STEP=N (read once per run) makes training SIGKILL itself after
    optimiser step N, so the resume test can kill a run mid-epoch at a reproducible point."""
    target = os.environ.get("EYEFUSE_FAULT_KILL_AT_STEP")
    return int(target) if target else None


# --- the run up to its first step ---------------------------------------------------------------


def setup_run(
    cfg: Config, run_dir: Path, info: DistInfo, *, resume: bool, progress: bool
) -> tuple[Run, TrainState]:
    """Everything before the first step: the device and seeds, the run folder with its config.yaml,
    the data (split, cache, patients set aside), the model, loss, optimiser, schedule, loss scaler
    and EMA as they are at step 0 (`resume_state` then loads a resumed run's), and with
    `train.gpu_cache` the training images on the GPU."""
    device = resolve_device(cfg.train.device, info)
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
        print(describe_precision(cfg.train.amp, device), flush=True)
    size = cfg.preprocess.size
    train_set = PairDataset(data.splits["train"], data.loader, data.label_names, size=size)
    val_set = PairDataset(data.splits["val"], data.loader, data.label_names, size=size)

    model = build_model(cfg.model, data.label_names)  # draws the initial weights from the seed
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    train_labels = np.stack([p.labels for p in data.splits["train"]]).astype(np.float32)
    criterion = create_loss(cfg.loss, cfg.model.head, train_labels, data.label_names).to(device)
    backbone_pretrained = bool(cfg.model.pretrained or cfg.model.weights)
    optimizer = build_optimizer(model, cfg, backbone_pretrained)
    n_batches = len(epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, 0, info))
    steps_per_epoch = min(n_batches, cfg.train.max_steps_per_epoch or n_batches)
    state = TrainState(
        model,
        optimizer,
        build_scheduler(optimizer, cfg, steps_per_epoch),
        scaler=torch.amp.GradScaler("cuda") if amp_dtype(cfg.train.amp, device) == torch.float16 else None,
        ema=ModelEmaV3(model, decay=cfg.train.ema_decay) if cfg.train.ema else None,
    )
    run = Run(cfg, run_dir, info, device, data, train_set, val_set, criterion, steps_per_epoch, progress)
    run.fault_step = fault_step_from_env()  # read once per run, not at every step
    if cfg.train.gpu_cache:  # after the model: the cache's loader draws from the global random stream
        if device.type != "cuda":
            raise ConfigError("train.gpu_cache=true needs CUDA")
        run.gpu_cache = TensorCache(train_set, device=device, progress=progress and info.is_main)
    return run, state


def parallel_model(model: nn.Module, device: torch.device, cfg: Config, info: DistInfo) -> nn.Module:
    """`model` as the training steps call it: under torchrun wrapped in DDP (which starts every rank
    from rank 0's weights and averages the gradients), then compiled with `train.compile`. The
    wrappers share `model`'s parameters, so `model` itself is what is validated and saved."""
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        model = torch.compile(model)
    return model
