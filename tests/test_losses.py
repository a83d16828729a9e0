"""Multi-label losses against torch references and hand computations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eyefuse.config import LossConfig
from eyefuse.errors import ConfigError, DataError
from eyefuse.train.losses import (
    AsymmetricLoss,
    BCEWithLogits,
    FocalLoss,
    SoftTargetCrossEntropy,
    create_loss,
    masked_bce,
    pos_weight_from_labels,
)


def logits_targets(seed: int = 0, b: int = 5, n_labels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n_labels, generator=g) * 3
    targets = torch.randint(0, 2, (b, n_labels), generator=g).float()
    targets[:, 0] = 1.0  # every row has a label (for the softmax loss)
    return logits, targets


def test_bce_equals_torch() -> None:
    x, y = logits_targets()
    torch.testing.assert_close(BCEWithLogits()(x, y), F.binary_cross_entropy_with_logits(x, y))
    w = torch.tensor([1.0, 2.0, 5.0, 50.0])
    torch.testing.assert_close(BCEWithLogits(w)(x, y), F.binary_cross_entropy_with_logits(x, y, pos_weight=w))


def test_pos_weight_values(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.zeros((100, 4), dtype=np.uint8)
    labels[:20, 0] = 1  # 80 / 20 = 4
    labels[:, 1] = 1  # no negatives: 0, clamped up to 1
    labels[:1, 2] = 1  # 99 / 1, clamped down to 50
    # class 3: no positive at all -> 1, reported
    with caplog.at_level(logging.WARNING):
        w = pos_weight_from_labels(labels, ["N", "D", "G", "H"])
    assert w.dtype == torch.float32
    assert w.tolist() == [4.0, 1.0, 50.0, 1.0]
    assert "no positive" in caplog.text and "'H'" in caplog.text
    with pytest.raises(DataError, match="0/1"):
        pos_weight_from_labels(np.full((3, 2), 2))


def test_focal_with_gamma_zero_equals_bce_and_hand_value() -> None:
    x, y = logits_targets()
    torch.testing.assert_close(FocalLoss(gamma=0.0)(x, y), F.binary_cross_entropy_with_logits(x, y))
    # One positive element with logit 0: p = 0.5, bce = log 2, weight (1 - 0.5) ** 2 = 0.25.
    value = FocalLoss(gamma=2.0)(torch.zeros(1, 1), torch.ones(1, 1))
    torch.testing.assert_close(value, torch.tensor(0.25 * math.log(2)))
    # alpha weights positives by alpha and negatives by 1 - alpha.
    pos = FocalLoss(gamma=0.0, alpha=0.25)(torch.zeros(1, 1), torch.ones(1, 1))
    neg = FocalLoss(gamma=0.0, alpha=0.25)(torch.zeros(1, 1), torch.zeros(1, 1))
    torch.testing.assert_close(pos, torch.tensor(0.25 * math.log(2)))
    torch.testing.assert_close(neg, torch.tensor(0.75 * math.log(2)))


def test_focal_down_weights_easy_examples() -> None:
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[-1.0]])
    y = torch.ones(1, 1)
    ratio_focal = FocalLoss(2.0)(easy, y) / FocalLoss(2.0)(hard, y)
    ratio_bce = BCEWithLogits()(easy, y) / BCEWithLogits()(hard, y)
    assert ratio_focal < ratio_bce / 10


def test_asl_with_gammas_zero_and_no_clip_equals_bce() -> None:
    x, y = logits_targets()
    asl = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    torch.testing.assert_close(asl(x, y), F.binary_cross_entropy_with_logits(x, y))
    big = torch.tensor([[80.0, -80.0]])
    torch.testing.assert_close(asl(big, torch.tensor([[0.0, 1.0]])), torch.tensor(80.0))


def test_asl_hand_values_and_margin() -> None:
    asl = AsymmetricLoss(gamma_neg=4.0, gamma_pos=1.0, clip=0.05)
    # Negative with p = sigmoid(0) = 0.5: p_m = 0.45, loss = -p_m ** 4 * log(1 - p_m).
    neg = asl(torch.zeros(1, 1), torch.zeros(1, 1))
    torch.testing.assert_close(neg, torch.tensor(-(0.45**4) * math.log(0.55)))
    # Positive with p = 0.5: -(1 - p) ** 1 * log(p).
    pos = asl(torch.zeros(1, 1), torch.ones(1, 1))
    torch.testing.assert_close(pos, torch.tensor(0.5 * math.log(2)))
    # An easy negative below the margin contributes exactly nothing, and gets no gradient.
    x = torch.tensor([[-4.0]], requires_grad=True)  # p = 0.018 < 0.05
    loss = asl(x, torch.zeros(1, 1))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.item() == 0.0


def test_asl_focusing_weight_has_no_gradient_by_default() -> None:
    x0, y = logits_targets(1)
    grads = {}
    for focal_grad in (False, True):
        x = x0.clone().requires_grad_(True)
        loss = AsymmetricLoss(4.0, 1.0, 0.05, focal_grad=focal_grad)(x, y)
        loss.backward()
        grads[focal_grad] = (loss.detach(), x.grad)
    torch.testing.assert_close(grads[False][0], grads[True][0])
    assert not torch.allclose(grads[False][1], grads[True][1])
    # Without the focusing gradient, d/dx of a positive's loss is -w * (1 - p) with w = (1 - p) ** gamma_pos.
    p = torch.sigmoid(x0)
    expected = -((1 - p) ** 2) / y.numel()
    torch.testing.assert_close(grads[False][1][y > 0], expected[y > 0])


def test_soft_target_cross_entropy_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    log_p = torch.log_softmax(x, 1)
    expected = (-(0.5 * log_p[0, 0] + 0.5 * log_p[0, 1]) - log_p[1, 2]) / 2
    loss = SoftTargetCrossEntropy()
    torch.testing.assert_close(loss(x, y), expected)
    assert int(loss.skipped_rows) == 0


def test_soft_target_cross_entropy_skips_and_counts_rows_without_labels() -> None:
    x = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], requires_grad=True)
    y = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    loss_fn = SoftTargetCrossEntropy()
    loss = loss_fn(x, y)
    torch.testing.assert_close(loss, -torch.log_softmax(x.detach(), 1)[1, 2])
    loss.backward()
    assert not x.grad[0].any()
    assert int(loss_fn.skipped_rows) == 1
    assert "skipped_rows" not in loss_fn.state_dict()


def test_masked_bce() -> None:
    x, y = logits_targets(2)
    mask = torch.tensor([True, False, True, False, False])
    expected = F.binary_cross_entropy_with_logits(x[mask], y[mask])
    torch.testing.assert_close(masked_bce(x, y, mask), expected)
    xg = x.clone().requires_grad_(True)
    empty = masked_bce(xg, y, torch.zeros(5, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and xg.grad is not None and not xg.grad.any()
    with pytest.raises(ValueError, match="mask"):
        masked_bce(x, y, torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize(
    "loss",
    [
        BCEWithLogits(torch.full((4,), 3.0)),
        FocalLoss(2.0, 0.25),
        FocalLoss(0.5),
        AsymmetricLoss(4.0, 1.0, 0.05),
        AsymmetricLoss(2.0, 0.5, 0.0, focal_grad=True),
        SoftTargetCrossEntropy(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_gradients_are_finite_even_for_extreme_logits(loss: torch.nn.Module) -> None:
    x0, y = logits_targets(3)
    x0[0] = torch.tensor([100.0, -100.0, 60.0, -60.0])
    y[0] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    x = x0.clone().requires_grad_(True)
    value = loss(x, y)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_create_loss_dispatch(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], dtype=np.uint8)
    assert isinstance(create_loss(LossConfig(name="focal"), "softmax", None), SoftTargetCrossEntropy)
    with caplog.at_level(logging.WARNING):
        create_loss(LossConfig(pos_weight=True), "softmax", labels)
    assert "ignored by the softmax head" in caplog.text
    plain = create_loss(LossConfig(name="bce"), "sigmoid", None)
    assert isinstance(plain, BCEWithLogits) and plain.pos_weight is None
    weighted = create_loss(LossConfig(name="bce", pos_weight=True), "sigmoid", labels)
    assert weighted.pos_weight.tolist() == [3.0, 1.0]
    focal = create_loss(LossConfig(name="focal", focal_gamma=1.5), "sigmoid", None)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    asl = create_loss(LossConfig(name="asl", asl_gamma_neg=3.0, asl_clip=0.1), "sigmoid", None)
    assert isinstance(asl, AsymmetricLoss) and (asl.gamma_neg, asl.clip) == (3.0, 0.1)
    with pytest.raises(ConfigError, match="needs the training labels"):
        create_loss(LossConfig(pos_weight=True), "sigmoid", None)
    with pytest.raises(ConfigError, match="loss.pos_weight applies to loss.name=bce"):
        create_loss(LossConfig(name="asl", pos_weight=True), "sigmoid", labels)
    with pytest.raises(ConfigError, match="loss.name"):
        create_loss(LossConfig(name="hinge"), "sigmoid", None)
    with pytest.raises(ConfigError, match="model.head"):
        create_loss(LossConfig(), "arcface", None)
    with pytest.raises(ConfigError, match="asl_clip"):
        AsymmetricLoss(clip=1.0)
