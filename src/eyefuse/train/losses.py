"""Multi-label losses for patient logits (`B x L`) against 0/1 targets (`B x L`); each returns a scalar mean.

- `BCEWithLogits`: binary cross-entropy per label, optionally with `pos_weight` from the training
  label frequencies (`pos_weight_from_labels`).
- `FocalLoss`: Lin et al. 2017, binary form per label.
- `AsymmetricLoss`: Ridnik et al. 2021 (ASL), separate focusing on positives and negatives and a
  probability margin that discards easy negatives.
- `SoftTargetCrossEntropy`: for the softmax head (the paper's), the target distribution spreads a
  patient's mass evenly over its labels.
- `masked_bce`: the per-eye auxiliary loss, counted only where the eye's labels are known.

`create_loss` picks one from a `LossConfig` and the model head.

Every loss computes in float32 with autocast off (`float32_loss`), whatever dtype the logits come in
and wherever it is called: ASL's log of a clipped probability and the focal weights are where bf16's
8-bit mantissa hurts (sigmoid rounds to exactly 1.0 above a logit of about 6 in bf16, so 1 - p is 0).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eyefuse.config import LossConfig
from eyefuse.errors import ConfigError, DataError
from eyefuse.registry import HEAD, LOSS

log = logging.getLogger(__name__)


def float32_loss(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Decorate a loss's ``forward(logits, targets, ...)``: autocast off, logits as float32."""

    @functools.wraps(forward)
    def wrapper(
        self: nn.Module, logits: torch.Tensor, targets: torch.Tensor, *args, **kwargs
    ) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            return forward(self, logits.float(), targets, *args, **kwargs)

    return wrapper


def pos_weight_from_labels(
    labels: np.ndarray,
    label_names: Sequence[str] | None = None,
    *,
    min_weight: float = 1.0,
    max_weight: float = 50.0,
) -> torch.Tensor:
    """BCE `pos_weight` per class: negatives / positives in `labels` (`N x L`, 0/1), clamped.

    The clamp keeps a rare class (ODIR's H: 94 of 3,500) from dominating the loss, and never weights a
    class's positives below its negatives. A class without positives cannot be weighted; it gets 1
    and is reported as a warning naming it.
    """
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[0] == 0:
        raise DataError(f"pos_weight needs a non-empty N x L label matrix, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise DataError("pos_weight needs 0/1 labels; the training label matrix has other values")
    names = list(label_names) if label_names is not None else [str(i) for i in range(y.shape[1])]
    pos = y.sum(0).astype(np.float64)
    neg = y.shape[0] - pos
    weight = np.ones(y.shape[1], dtype=np.float64)
    has_pos = pos > 0
    weight[has_pos] = np.clip(neg[has_pos] / pos[has_pos], min_weight, max_weight)
    if not has_pos.all():
        missing = [names[i] for i in np.flatnonzero(~has_pos)]
        log.warning("pos_weight: no positive training example for class(es) %s; their weight is 1", missing)
    return torch.tensor(weight, dtype=torch.float32)


class BCEWithLogits(nn.Module):
    """Binary cross-entropy on logits, mean over batch and labels; `pos_weight` (L,) scales positives."""

    pos_weight: torch.Tensor | None

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        # A buffer moves with `.to(device)` and is saved with the module's state.
        self.register_buffer("pos_weight", pos_weight.float() if pos_weight is not None else None)

    @float32_loss
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), pos_weight=self.pos_weight, reduction="mean"
        )


class FocalLoss(nn.Module):
    """Binary focal loss per label: `alpha_t * (1 - p_t) ** gamma * BCE`, mean over batch and labels.

    Args:
        gamma: focusing exponent (0 gives BCE).
        alpha: weight of the positives (negatives get `1 - alpha`); None weights both 1.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"loss.focal_gamma must be non-negative, not {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"focal alpha must be in [0, 1], not {alpha}")
        self.gamma = float(gamma)
        self.alpha = alpha

    @float32_loss
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        p_t = torch.exp(-bce)
        # The floor keeps the gradient of x**gamma finite at x = 0 when gamma < 1.
        loss = (1.0 - p_t).clamp_min(1e-12).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = (self.alpha * y + (1.0 - self.alpha) * (1.0 - y)) * loss
        return loss.mean()


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021), mean over batch and labels.

    Positives: `-(1 - p) ** gamma_pos * log(p)`. Negatives use the shifted probability
    `p_m = max(p - clip, 0)`: `-p_m ** gamma_neg * log(1 - p_m)`, so negatives the model already
    scores below `clip` contribute nothing. As in the reference implementation the focusing weight is
    treated as a constant in the backward pass (`focal_grad=False`).
    """

    def __init__(
        self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, *, focal_grad: bool = False
    ) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ConfigError(
                f"loss.asl_gamma_neg/asl_gamma_pos must be non-negative, not {gamma_neg}/{gamma_pos}"
            )
        if not 0.0 <= clip < 1.0:
            raise ConfigError(f"loss.asl_clip must be in [0, 1), not {clip}")
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)
        self.focal_grad = focal_grad

    @float32_loss
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.to(logits.dtype)
        p = torch.sigmoid(logits)
        log_p = F.logsigmoid(logits)  # log p, stable for large |logits|
        if self.clip > 0:
            p_neg = (1.0 - p + self.clip).clamp(max=1.0)  # 1 - p_m
            log_p_neg = p_neg.clamp_min(1e-8).log()
        else:
            p_neg = 1.0 - p
            log_p_neg = F.logsigmoid(-logits)
        loss = -(y * log_p + (1.0 - y) * log_p_neg)
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(self.focal_grad and torch.is_grad_enabled()):
                base = y * (1.0 - p) + (1.0 - y) * (1.0 - p_neg)  # 1 - p_t
                gamma = y * self.gamma_pos + (1.0 - y) * self.gamma_neg
                weight = base.clamp_min(1e-12).pow(gamma)
            loss = loss * weight
        return loss.mean()


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy of the softmax over labels against the patient's labels spread evenly.

    The target of a patient with labels `y` is `y / y.sum()`. A row without any label (impossible in
    ODIR, possible in a generic paired CSV) has no such distribution: it is left out of the mean (a
    uniform target would instead teach "every disease") and counted in the buffer `skipped_rows`,
    which the trainer reads and reports; counting on the device avoids a host sync per step.
    """

    skipped_rows: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("skipped_rows", torch.zeros((), dtype=torch.int64), persistent=False)

    @float32_loss
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.to(logits.dtype)
        mass = y.sum(1, keepdim=True)
        has_label = mass.squeeze(1) > 0
        q = y / mass.clamp_min(1e-12)
        per_row = -(q * F.log_softmax(logits, dim=1)).sum(1)
        with torch.no_grad():
            self.skipped_rows += (~has_label).sum().to(self.skipped_rows.device)
        kept = has_label.to(per_row.dtype)
        return (per_row * kept).sum() / kept.sum().clamp_min(1.0)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE of per-eye logits (`B x L`) averaged over the samples where `mask` (`B`, bool) is True.

    For the auxiliary per-eye heads: the mask is `batch["eye_labels_known"][:, k]` (labels known and the
    eye present). With no sample selected the loss is 0 (still connected to the graph, so DDP and
    gradient scaling see every parameter used).
    """
    if mask.shape != logits.shape[:1]:
        raise ValueError(f"mask must have shape ({logits.shape[0]},), got {tuple(mask.shape)}")
    logits = logits.float()
    per_sample = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").mean(
        1
    )
    m = mask.to(per_sample.dtype)
    return (per_sample * m).sum() / m.sum().clamp_min(1.0)


def _bce(cfg: LossConfig, train_labels: np.ndarray | None, label_names: Sequence[str] | None) -> nn.Module:
    if not cfg.pos_weight:
        return BCEWithLogits()
    if train_labels is None:
        raise ConfigError("loss.pos_weight needs the training labels to count class frequencies")
    return BCEWithLogits(pos_weight_from_labels(train_labels, label_names))


#: `loss.name` -> builder `(cfg, train_labels, label_names) -> loss` of the sigmoid head's loss; the
#: names and their descriptions are `eyefuse.registry.LOSS`.
LOSSES: dict[str, Callable[[LossConfig, np.ndarray | None, Sequence[str] | None], nn.Module]] = LOSS.bind(
    {
        "bce": _bce,
        "focal": lambda cfg, _labels, _names: FocalLoss(cfg.focal_gamma),
        "asl": lambda cfg, _labels, _names: AsymmetricLoss(
            cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip
        ),
    }
)


def create_loss(
    cfg: LossConfig,
    head: str,
    train_labels: np.ndarray | None,
    label_names: Sequence[str] | None = None,
) -> nn.Module:
    """The patient-level loss for `cfg` and the model `head` (`sigmoid | softmax`).

    The softmax head always uses `SoftTargetCrossEntropy` (`loss.name` applies to the sigmoid head
    only). `train_labels` (`N x L`) is needed for `loss.pos_weight`; `label_names` only names classes
    in messages.
    """
    if HEAD.check(head) == "softmax":
        if cfg.pos_weight:
            log.warning("loss.pos_weight is ignored by the softmax head (soft-target cross-entropy)")
        return SoftTargetCrossEntropy()
    name = LOSS.check(cfg.name)
    if cfg.pos_weight and name != "bce":
        raise ConfigError(f"loss.pos_weight applies to loss.name=bce only, not {name!r}")
    return LOSSES[name](cfg, train_labels, label_names)


__all__ = [
    "LOSSES",
    "AsymmetricLoss",
    "BCEWithLogits",
    "FocalLoss",
    "SoftTargetCrossEntropy",
    "create_loss",
    "masked_bce",
    "pos_weight_from_labels",
]
