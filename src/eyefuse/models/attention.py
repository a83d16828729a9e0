"""Attention modules for the per-eye feature extractor, behind one string factory.

Every module maps a feature map ``B x C x h x w`` to a refined map of the same shape, so it can sit
inside a residual block (before the addition, like timm's ``attn_layer``) or after the last stage.

- ``se``: squeeze-excitation (Hu et al. 2018): global average pool -> MLP (reduction 16) -> sigmoid
  channel gate.
- ``eca``: efficient channel attention (Wang et al. 2020): global average pool -> 1-D convolution
  across channels with a kernel size that grows with log2(C) -> sigmoid channel gate.
- ``cbam``: convolutional block attention (Woo et al. 2018): channel gate from a shared MLP over the
  average- and max-pooled vectors, then a spatial gate from a 7x7 convolution over the channel-wise
  mean and max.
- ``residual_attention``: the module Li et al. 2022 is described with: an SE-style channel gate
  (reduction 16) followed by a CBAM-style spatial gate, applied as attention residual learning
  (Wang et al. 2017, ``out = x + gamma * x * M``) with a learnable scale ``gamma``.

Initialisation keeps a freshly inserted module close to the identity, so an ImageNet-pretrained
backbone is not disturbed at the start of fine-tuning: the gates of ``se``/``eca``/``cbam`` keep
their published multiplicative form but their logits start at ``GATE_INIT_BIAS`` (gate about 0.95,
not 0.5, which would halve every residual branch); ``residual_attention`` starts exactly at the
identity because ``gamma`` starts at 0 (as in SAGAN/ReZero): only ``gamma`` receives a gradient on
the first step, after which the gates learn.

Precision: under bf16/fp16 autocast every gate (the pooled statistics, the small MLP or convolution
over them, the sigmoid) is computed in float32 (``float32_gate``) and only the product ``x * gate``
stays in the autocast dtype. The pooled mean of a wide map summed in bf16 loses most of its digits,
and a gate logit rounded to bf16 near ``GATE_INIT_BIAS`` moves the gate in steps of 0.4 %; the gates
cost a few thousand FLOPs per image, so float32 is free.

Spatial gates keep their last map (``.last_map``, ``B x 1 x h x w``, detached, values in (0, 1)) so
that ``explain`` can show where the spatial attention looked.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from eyefuse.registry import ATTENTION

#: Initial logit of every sigmoid gate of the multiplicative modules: sigmoid(3) = 0.95.
GATE_INIT_BIAS = 3.0


def recording_allowed() -> bool:
    """Side effects (keeping the last map) are skipped while tracing, compiling or exporting."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    compiler = getattr(torch, "compiler", None)
    if compiler is not None:
        if getattr(compiler, "is_compiling", lambda: False)():
            return False
        if getattr(compiler, "is_exporting", lambda: False)():
            return False
    return True


def float32_gate(x: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """A context in which autocast is off for ``x``'s device (a no-op when autocast is not on), so
    that a gate computed from ``x.float()`` statistics runs in float32."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _mean_f32(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean over ``dims`` accumulated and returned in float32 (no float32 copy of ``x``)."""
    return x.mean(dims, keepdim=True, dtype=torch.float32)


def _max_f32(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.amax(dims, keepdim=True).float()  # a maximum is exact in any dtype


def _reduced(channels: int, reduction: int, min_channels: int = 8) -> int:
    return max(channels // reduction, min_channels)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation channel attention: ``x * sigmoid(MLP(avgpool(x)))``.

    Args:
        channels: input (and output) channels C.
        reduction: hidden width of the MLP is ``max(C // reduction, 8)``.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = _reduced(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        nn.init.constant_(self.fc2.bias, GATE_INIT_BIAS)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Channel gate ``B x C x 1 x 1`` in (0, 1), float32."""
        with float32_gate(x):
            return torch.sigmoid(self.fc2(self.act(self.fc1(_mean_f32(x, (2, 3))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x).to(x.dtype)


class EfficientChannelAttention(nn.Module):
    """ECA channel attention: a 1-D convolution across the pooled channel vector, no reduction.

    The kernel size is the odd number nearest ``(log2(C) + beta) / gamma`` (at least 3), as in the
    ECA-Net paper: wider channel neighbourhoods for wider layers.
    """

    def __init__(self, channels: int, gamma: float = 2.0, beta: float = 1.0):
        super().__init__()
        t = int(abs((math.log2(channels) + beta) / gamma))
        kernel_size = max(t if t % 2 else t + 1, 3)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=True)
        nn.init.constant_(self.conv.bias, GATE_INIT_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with float32_gate(x):
            y = _mean_f32(x, (2, 3)).flatten(1).unsqueeze(1)  # B x 1 x C: channels become the sequence axis
            gate = torch.sigmoid(self.conv(y)).transpose(1, 2).unsqueeze(-1)  # B x C x 1 x 1
        return x * gate.to(x.dtype)


class ChannelGate(nn.Module):
    """CBAM channel gate: a shared MLP over the average- and max-pooled vectors, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = _reduced(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        # The MLP's bias enters twice (average and max branch): half each gives GATE_INIT_BIAS.
        nn.init.constant_(self.fc2.bias, GATE_INIT_BIAS / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``B x C x 1 x 1``, float32."""
        with float32_gate(x):
            avg = self.fc2(self.act(self.fc1(_mean_f32(x, (2, 3)))))
            mx = self.fc2(self.act(self.fc1(_max_f32(x, (2, 3)))))
            return torch.sigmoid(avg + mx)


class SpatialGate(nn.Module):
    """Spatial gate: a ``kernel_size`` convolution over the channel-wise mean and max, sigmoid.

    The last gate computed is kept in ``.last_map`` (``B x 1 x h x w``, detached) for explanation.
    """

    def __init__(self, kernel_size: int = 7, init_bias: float = GATE_INIT_BIAS):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=True)
        # Small weights: the 49 x 2 taps would otherwise spread the initial gate widely around the bias.
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.constant_(self.conv.bias, init_bias)
        self.last_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``B x 1 x h x w``, float32."""
        with float32_gate(x):
            pooled = torch.cat([_mean_f32(x, (1,)), _max_f32(x, (1,))], dim=1)
            gate = torch.sigmoid(self.conv(pooled))
        if recording_allowed():
            self.last_map = gate.detach()
        return gate


class CBAM(nn.Module):
    """Convolutional block attention: channel gate, then spatial gate on the channel-refined map."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x).to(x.dtype)
        return x * self.spatial(x).to(x.dtype)


class ResidualAttention(nn.Module):
    """The paper's residual attention block: ``out = x + gamma * (x * Mc(x)) * Ms(x * Mc(x))``.

    ``Mc`` is an SE channel gate (reduction 16), ``Ms`` a 7x7 spatial gate over the channel-wise mean
    and max of the channel-refined map. "Residual" is read as attention residual learning
    (Wang et al. 2017, ``(1 + M) * x``): the attention-refined features are added to the input, so a
    gate near 0 cannot erase a feature. ``gamma`` (learnable scalar, initialised to 0) makes the
    block start as the identity; at ``gamma = 1`` it is exactly ``(1 + Mc * Ms) * x``.
    The gates themselves start at 0.5 (zero bias): their gradient is largest there.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        hidden = _reduced(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.fc2.bias)
        self.spatial = SpatialGate(kernel_size, init_bias=0.0)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with float32_gate(x):
            channel = torch.sigmoid(self.fc2(self.act(self.fc1(_mean_f32(x, (2, 3))))))
        refined = x * channel.to(x.dtype)
        refined = refined * self.spatial(refined).to(x.dtype)
        return x + self.gamma.to(x.dtype) * refined


_ATTENTION_CTORS: dict[str, Callable[..., nn.Module] | None] = ATTENTION.bind(
    {
        "none": None,
        "se": SqueezeExcite,
        "eca": EfficientChannelAttention,
        "cbam": CBAM,
        "residual_attention": ResidualAttention,
    }
)
#: name -> (constructor taking channels and keyword options, one-line description); the names and
#: descriptions are `eyefuse.registry.ATTENTION` (light, for `eyefuse models` and config checks).
ATTENTION_TYPES: dict[str, tuple[Callable[..., nn.Module] | None, str]] = {
    name: (ctor, ATTENTION.entries[name]) for name, ctor in _ATTENTION_CTORS.items()
}


def create_attention(kind: str, channels: int, **kwargs: object) -> nn.Module:
    """Build the attention module ``kind`` for a ``channels``-wide feature map (``none`` -> Identity).

    Raises:
        ConfigError: ``kind`` is not one of ``ATTENTION_TYPES``.
    """
    ctor = _ATTENTION_CTORS[ATTENTION.check(kind)]
    if ctor is None:
        return nn.Identity()
    return ctor(channels, **kwargs)


def spatial_gates(module: nn.Module) -> dict[str, SpatialGate]:
    """Every spatial gate inside ``module``, by qualified name (the modules that keep a last map)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, SpatialGate)}


__all__ = [
    "ATTENTION_TYPES",
    "CBAM",
    "GATE_INIT_BIAS",
    "ChannelGate",
    "EfficientChannelAttention",
    "ResidualAttention",
    "SpatialGate",
    "SqueezeExcite",
    "create_attention",
    "recording_allowed",
    "spatial_gates",
]
