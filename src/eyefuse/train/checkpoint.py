"""Writing checkpoints (and the training state a run resumes from); reading them is
`eyefuse.models.checkpoint`, the checkpoint's owner.

Checkpoints without pickle: weights in safetensors, everything else in JSON.

A checkpoint is a folder (`RUN/best`, `RUN/last`) holding
- `model.safetensors`: the model's state dict (EMA weights when EMA is on, for `best`);
- `meta.json`: the resolved config, label names, preprocessing settings, thresholds and
  temperatures once fitted, split file hash, seed, versions, git commit, epoch and metrics;
- for resumable checkpoints, `train_state.safetensors` + `train_state.json`: optimiser, scheduler,
  EMA, grad scaler, epoch and history. Nested Python state is stored as a JSON skeleton whose
  tensors are replaced by references into the safetensors file. No random-number-generator state is
  saved: the training engine derives every random stream of an epoch from (seed, epoch, rank)
  (`eyefuse.train.engine.epoch_seed`), so a resumed run recreates them from the recorded seed.

A folder is written under a temporary name and swapped into place, so a kill at any moment leaves
either the old or the new checkpoint, never a mixture (`resolve_checkpoint_dir` recovers the one
rename a kill can interrupt).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy
import timm
import torch
from safetensors.torch import load_file, save_file

from eyefuse import __version__
from eyefuse.errors import CheckpointError
from eyefuse.models.checkpoint import (
    FORMAT_VERSION,
    LABELS_KEY,
    META_FILE,
    MODEL_FILE,
    read_meta,
    resolve_checkpoint_dir,
)
from eyefuse.utils.io import atomic_write_json

STATE_FILE = "train_state.safetensors"
STATE_JSON = "train_state.json"


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """Replace every tensor inside nested dicts/lists/tuples by a reference; collect the tensors."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        keys_are_int = all(isinstance(k, int) for k in obj)
        for k, v in obj.items():
            out[str(k)] = flatten_state(v, tensors, f"{prefix}.{k}")
        return {"__dict__": out, "__intkeys__": True} if keys_are_int and obj else out
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint (at {prefix})")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"train state refers to a missing tensor {key!r}")
            return tensors[key]
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        if "__intkeys__" in obj:
            return {int(k): unflatten_state(v, tensors) for k, v in obj["__dict__"].items()}
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a model's numbers."""
    versions = {
        "eyefuse": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    versions["opencv"] = cv2.__version__
    return versions


def git_commit() -> str | None:
    """The commit of the eyefuse source tree, when it is a git checkout (None otherwise)."""
    src = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def checkpoint_meta(cfg: Any, label_names: Sequence[str], model: Any) -> dict[str, Any]:
    """The metadata every checkpoint carries: resolved config, label names, preprocessing, the
    model's own input normalization (timm's per-backbone mean/std), and no thresholds or
    temperatures yet (calibration fills them in). The engine adds the run's split, seed and versions."""
    config = cfg.to_dict()
    return {
        "config": config,
        "label_names": list(label_names),
        "preprocess": config["preprocess"],
        "model": {"mean": list(model.mean), "std": list(model.std)},
        "thresholds": None,
        "temperatures": None,
    }


def save_checkpoint(
    path: str | os.PathLike[str],
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (build under a temporary name, then swap)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model_state.items()},
        str(tmp / MODEL_FILE),
        metadata={LABELS_KEY: json.dumps(list(meta.get("label_names") or []))},
    )
    if train_state is not None:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten_state(train_state, tensors)
        save_file(tensors, str(tmp / STATE_FILE))
        atomic_write_json(tmp / STATE_JSON, skeleton)
    meta = {"format_version": FORMAT_VERSION, **meta}
    atomic_write_json(tmp / META_FILE, meta)  # written last: its presence marks a complete folder
    _fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)
    return path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_train_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the resumable training state of a checkpoint."""
    ckpt = resolve_checkpoint_dir(path)
    if not (ckpt / STATE_FILE).is_file() or not (ckpt / STATE_JSON).is_file():
        raise CheckpointError(f"{ckpt} holds no training state (only `last` checkpoints can be resumed)")
    try:
        tensors = load_file(str(ckpt / STATE_FILE))
        skeleton = json.loads((ckpt / STATE_JSON).read_text(encoding="utf-8"))
    except Exception as e:
        raise CheckpointError(f"{ckpt}: unreadable training state: {e}") from e
    return unflatten_state(skeleton, tensors)


def update_meta(path: str | os.PathLike[str], **fields: Any) -> None:
    """Add or replace metadata fields (e.g. fitted thresholds) of an existing checkpoint atomically."""
    ckpt = resolve_checkpoint_dir(path)
    meta = read_meta(ckpt)
    meta.update(fields)
    atomic_write_json(ckpt / META_FILE, meta)
