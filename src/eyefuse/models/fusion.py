"""Binocular fusion: two eyes' feature maps (``B x C x h x w`` each) -> one patient vector ``B x D``.

Every fusion module takes ``(feat_left, feat_right)`` and exposes its output width as ``.out_dim``.
The ``single`` module is the exception that proves the interface: it does not fuse, it returns both
eyes' pooled vectors stacked as ``2 x B x C`` (``.per_eye = True``) so that the head classifies each
eye alone and the patient follows the ODIR rule: a disease when either eye has it, normal only when
both eyes are (`eyefuse.models.binocular.combine_eye_logits`; the ablation's no-fusion baseline).

All modules are symmetric in the sense that matters for training with mirror-and-swap augmentation:
the same weights process both eyes (the order only decides which half of a concatenation is which).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from eyefuse.models.attention import float32_gate
from eyefuse.registry import FUSION


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool of a ``B x C x h x w`` map to ``B x C``."""
    return x.mean((2, 3))


class PooledFusion(nn.Module):
    """Pool each eye, then combine the vectors: ``concat`` (D = 2C), ``sum``, ``max`` or ``mul`` (D = C)."""

    per_eye = False
    KINDS = ("concat", "sum", "max", "mul")

    def __init__(self, kind: str, channels: int):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"PooledFusion kind must be one of {self.KINDS}, not {kind!r}")
        self.kind = kind
        self.out_dim = 2 * channels if kind == "concat" else channels

    def forward(self, feat_left: torch.Tensor, feat_right: torch.Tensor) -> torch.Tensor:
        a, b = global_pool(feat_left), global_pool(feat_right)
        if self.kind == "concat":
            return torch.cat([a, b], dim=1)
        if self.kind == "sum":
            return a + b
        if self.kind == "max":
            return torch.maximum(a, b)
        return a * b

    def extra_repr(self) -> str:
        return f"kind={self.kind}, out_dim={self.out_dim}"


class FeatureMapFusion(nn.Module):
    """The paper's feature-map fusion module (FFM), on the maps before pooling.

    ``fused = (L + R) / 2 + alpha * conv1x1(ReLU(BN(conv3x3(cat[L, R]))))``, then global average pool.
    Channels: 2C -> ``hidden`` (default C/8) -> C, so D = C. The widths are ours (the paper does not
    give them): C/8 keeps the 3x3 convolution at 2C*C/8*9 weights (9.4 M for ResNet-50's C = 2048;
    C/2 would be 38 M, more than the 23.5 M of the backbone, for 3,500 training patients). The learned
    interaction term is added to the mean of the two eyes, so ``alpha`` (learnable, initialised to
    0.5) weighs the cross-eye term against plain averaging instead of being a redundant scale on the
    1x1 convolution.
    """

    per_eye = False

    def __init__(self, channels: int, hidden: int | None = None, alpha: float = 0.5):
        super().__init__()
        hidden = hidden or max(channels // 8, 8)
        self.conv = nn.Conv2d(2 * channels, hidden, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.proj = nn.Conv2d(hidden, channels, 1)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.out_dim = channels

    def fuse_maps(self, feat_left: torch.Tensor, feat_right: torch.Tensor) -> torch.Tensor:
        """The fused map ``B x C x h x w`` before pooling."""
        interaction = self.proj(self.act(self.bn(self.conv(torch.cat([feat_left, feat_right], dim=1)))))
        return (feat_left + feat_right) / 2 + self.alpha * interaction

    def forward(self, feat_left: torch.Tensor, feat_right: torch.Tensor) -> torch.Tensor:
        return global_pool(self.fuse_maps(feat_left, feat_right))


class CrossAttentionFusion(nn.Module):
    """Each eye's ``h*w`` feature tokens attend to the other eye's tokens.

    Tokens are projected C -> ``dim`` (one projection for both eyes), then
    ``t_left = LayerNorm(p_left + MHA(p_left, p_right, p_right))`` and the same for the right eye with
    the same attention weights (the eyes are mirror images; shared weights keep the module symmetric).
    No positional encoding: matching is by content, and works at any input size. Each eye's tokens are
    averaged and the two vectors concatenated: D = 2 * dim.

    Under bf16/fp16 autocast the module runs in float32 (projection, attention, LayerNorm): the
    query-key products of un-normalized backbone features are large, their softmax and its backward
    lose the small differences in bf16, and the whole module is under 1 % of the model's FLOPs.
    """

    per_eye = False

    def __init__(self, channels: int, dim: int = 256, heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention dim {dim} must be divisible by heads {heads}")
        self.proj = nn.Linear(channels, dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = 2 * dim

    def forward(self, feat_left: torch.Tensor, feat_right: torch.Tensor) -> torch.Tensor:
        with float32_gate(feat_left):
            tl = self.proj(feat_left.float().flatten(2).transpose(1, 2))  # B x hw x dim
            tr = self.proj(feat_right.float().flatten(2).transpose(1, 2))
            al, _ = self.attn(tl, tr, tr, need_weights=False)
            ar, _ = self.attn(tr, tl, tl, need_weights=False)
            return torch.cat([self.norm(tl + al).mean(1), self.norm(tr + ar).mean(1)], dim=1)


class SingleEye(nn.Module):
    """No fusion: both eyes' pooled vectors, stacked ``2 x B x C`` (left first) for a per-eye head."""

    per_eye = True

    def __init__(self, channels: int):
        super().__init__()
        self.out_dim = channels

    def forward(self, feat_left: torch.Tensor, feat_right: torch.Tensor) -> torch.Tensor:
        return torch.stack([global_pool(feat_left), global_pool(feat_right)], dim=0)


_FUSION_CTORS: dict[str, Callable[..., nn.Module]] = FUSION.bind(
    {
        "concat": lambda c, **kw: PooledFusion("concat", c, **kw),
        "sum": lambda c, **kw: PooledFusion("sum", c, **kw),
        "max": lambda c, **kw: PooledFusion("max", c, **kw),
        "mul": lambda c, **kw: PooledFusion("mul", c, **kw),
        "ffm": FeatureMapFusion,
        "cross_attention": CrossAttentionFusion,
        "single": SingleEye,
    }
)
#: name -> (constructor taking channels and keyword options, one-line description); the names and
#: descriptions are `eyefuse.registry.FUSION` (light, for `eyefuse models` and config checks).
FUSION_TYPES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    name: (ctor, FUSION.entries[name]) for name, ctor in _FUSION_CTORS.items()
}


def create_fusion(kind: str, channels: int, **kwargs: object) -> nn.Module:
    """Build fusion ``kind`` for two ``channels``-wide maps; the result has ``.out_dim`` and ``.per_eye``.

    Raises:
        ConfigError: ``kind`` is not one of ``FUSION_TYPES``.
    """
    return _FUSION_CTORS[FUSION.check(kind)](channels, **kwargs)


__all__ = [
    "FUSION_TYPES",
    "CrossAttentionFusion",
    "FeatureMapFusion",
    "PooledFusion",
    "SingleEye",
    "create_fusion",
    "global_pool",
]
