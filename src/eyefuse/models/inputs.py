"""The one way model inputs are made from preprocessed eyes, and the one copy of ImageNet's statistics.

Preprocessing (`eyefuse.data.preprocess`) writes RGB uint8 images; augmentation keeps them on the
0..255 scale. The model takes float images normalized per channel with its backbone's pretraining
statistics (`model.mean`/`model.std`, timm's per-backbone values, ImageNet's by default). Training,
validation, prediction, Grad-CAM and the exported ONNX graph all call `model_inputs`, so the
model sees exactly the same numbers everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

#: ImageNet channel statistics on a 0..1 scale (what timm and torchvision publish).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
    std: Sequence[float] | torch.Tensor = IMAGENET_STD,
) -> torch.Tensor:
    """Map images on a 0..255 scale (uint8 or float, `... x C x H x W`) to float
    `(x / 255 - mean) / std` per channel; `mean` and `std` are on a 0..1 scale (tuples or tensors)."""
    if not x.is_floating_point():
        x = x.float()
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1, 1, 1) * 255.0
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1, 1, 1) * 255.0
    return (x - m) / s


def _core(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel and/or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def model_inputs(
    model: nn.Module, left: Any, right: Any, *, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's normalized float inputs from both eyes' 0..255 images.

    `left`, `right`: `B x 3 x S x S` (or `3 x S x S`) uint8 or float, torch tensors or numpy arrays;
    they are moved to the model's device. `model` may be wrapped (DDP, torch.compile): the mean and
    std are the wrapped model's. `channels_last` returns channels-last tensors (the training option).
    """
    core = _core(model)
    device = next(core.parameters()).device
    out = []
    for eye in (left, right):
        x = torch.from_numpy(np.ascontiguousarray(eye)) if isinstance(eye, np.ndarray) else eye
        if x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f"expected [B x] 3 x H x W RGB images, got shape {tuple(x.shape)}")
        x = normalize(x.to(device), core.mean, core.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(x)
    return out[0], out[1]


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "model_inputs", "normalize"]
