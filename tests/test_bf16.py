"""bf16 autocast: every preset's model and loss train for a few steps with finite losses, gradients
and weights, and the numerically sensitive parts (losses, attention gates, cross-attention) compute
in float32 under autocast. CPU autocast supports bf16, so this runs without a GPU; the CUDA run of
the full-size presets is in scripts/device_check.sh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eyefuse.config import Config, load_config
from eyefuse.models import build_model
from eyefuse.models.attention import CBAM, ResidualAttention, SpatialGate, SqueezeExcite
from eyefuse.models.fusion import CrossAttentionFusion
from eyefuse.models.inputs import model_inputs
from eyefuse.train import engine
from eyefuse.train.losses import AsymmetricLoss, BCEWithLogits, FocalLoss, SoftTargetCrossEntropy, create_loss
from eyefuse.train.setup import build_optimizer

LABELS = tuple("NDGCAHMO")
BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def _batch(gen: torch.Generator, b: int, size: int) -> dict[str, torch.Tensor]:
    y = (torch.rand(b, 8, generator=gen) > 0.7).float()
    y[:, 0] = torch.where(y.sum(1) == 0, 1.0, y[:, 0])
    present = torch.ones(b, dtype=torch.bool)
    return {
        "left": torch.randint(0, 256, (b, 3, size, size), generator=gen, dtype=torch.uint8),
        "right": torch.randint(0, 256, (b, 3, size, size), generator=gen, dtype=torch.uint8),
        "labels": y,
        "left_labels": y,
        "right_labels": y,
        "eye_labels_known": torch.ones(b, 2, dtype=torch.bool),
        "left_present": present,
        "right_present": present,
    }


def _checked_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    criterion: torch.nn.Module,
    cfg: Config,
    optimizer: torch.optim.Optimizer,
    device_type: str,
    channels_last: bool,
    where: object,
) -> None:
    """One bf16-autocast training step that fails on a non-finite loss or gradient (`where` names
    the preset and step in the message)."""
    left, right = model_inputs(model, batch["left"], batch["right"], channels_last=channels_last)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        outputs = model(left, right, batch["left_present"], batch["right_present"])
    assert outputs["logits"].dtype == torch.bfloat16  # autocast really was on
    loss = engine.compute_loss(outputs, batch, criterion, cfg)
    assert loss.dtype == torch.float32 and torch.isfinite(loss), (where, loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, (where, bad[:5])
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "strong", "demo"])
def test_preset_trains_under_bf16_autocast(preset: str) -> None:
    """The preset's attention, placement, fusion, head, auxiliary heads, loss, optimiser, gradient
    clipping and EMA, with a small backbone (resnet10t) at 32 px so that it runs in seconds."""
    cfg = load_config(
        preset, ["model.pretrained=false", "model.backbone=resnet10t", "preprocess.size=32", "train.lr=0.01"]
    )
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg.model, LABELS).train()
    labels = np.stack([_batch(gen, 4, 8)["labels"].numpy() for _ in range(4)]).reshape(-1, 8)
    criterion = create_loss(cfg.loss, cfg.model.head, labels, LABELS)
    optimizer = build_optimizer(model, cfg, backbone_pretrained=False)
    ema = None
    if cfg.train.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=0.5)
    for step in range(3):
        _checked_step(model, _batch(gen, 4, 32), criterion, cfg, optimizer, "cpu", False, (preset, step))
        if ema is not None:
            ema.update(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if ema is not None:
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ema.module.parameters())


@pytest.mark.parametrize(
    "loss",
    [AsymmetricLoss(), AsymmetricLoss(clip=0.0), FocalLoss(2.0), BCEWithLogits(), SoftTargetCrossEntropy()],
)
def test_losses_compute_in_float32_under_autocast(loss: torch.nn.Module) -> None:
    """Called with bf16 logits inside autocast, a loss gives the float32 loss of those same logits
    and a float32 gradient; large logits (where sigmoid rounds to 1 in bf16) stay finite."""
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(6, 8, generator=gen) * 12).to(torch.bfloat16)
    targets = (torch.rand(6, 8, generator=gen) > 0.5).float()
    targets[:, 0] = 1.0
    reference = loss(logits.float(), targets)
    x = logits.clone().requires_grad_(True)
    with torch.autocast(**BF16):
        value = loss(x, targets)
    assert value.dtype == torch.float32
    assert torch.allclose(value, reference, rtol=1e-6, atol=1e-7)
    value.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("module", [SqueezeExcite(64), CBAM(64), ResidualAttention(64), SpatialGate()])
def test_attention_gates_are_float32_under_autocast(module: torch.nn.Module) -> None:
    """The gates are computed in float32 from the bf16 map: the output equals x * (float32 gate) up
    to the one rounding of the product, not the several roundings of a bf16 gate."""
    torch.manual_seed(2)
    if isinstance(module, ResidualAttention):
        torch.nn.init.ones_(module.gamma)
    x = (torch.randn(2, 64, 9, 9) * 4 + 1).to(torch.bfloat16)
    with torch.autocast(**BF16):
        out = module(x)
    reference = module(x.float())
    with torch.autocast(**BF16):
        if isinstance(module, SqueezeExcite):
            assert module.gate(x).dtype == torch.float32
        if isinstance(module, CBAM):
            assert module.channel(x).dtype == torch.float32 and module.spatial(x).dtype == torch.float32
    if isinstance(module, SpatialGate):
        assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=1e-6)
    else:
        assert out.dtype == torch.bfloat16
        # one bf16 rounding of the product per multiplication: relative error <= 3 * 2**-8
        assert torch.allclose(out.float(), reference, rtol=3 * 2**-8, atol=1e-2)


def test_cross_attention_runs_in_float32_under_autocast() -> None:
    torch.manual_seed(3)
    fusion = CrossAttentionFusion(64, dim=32, heads=4)
    a = (torch.randn(2, 64, 4, 4) * 30).to(torch.bfloat16)
    b = (torch.randn(2, 64, 4, 4) * 30).to(torch.bfloat16)
    with torch.autocast(**BF16):
        out = fusion(a, b)
    assert out.dtype == torch.float32
    assert torch.allclose(out, fusion(a.float(), b.float()), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["paper", "strong", "demo"])
def test_full_preset_trains_under_bf16_on_cuda(preset: str) -> None:
    """The preset's own backbone at 224 px, bf16 autocast on CUDA, channels_last: finite losses,
    gradients and weights over a few steps at the preset's learning rate."""
    cfg = load_config(preset, ["model.pretrained=false"])
    device = torch.device("cuda")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg.model, LABELS).to(device).to(memory_format=torch.channels_last).train()
    labels = np.stack([_batch(gen, 4, 8)["labels"].numpy() for _ in range(4)]).reshape(-1, 8)
    criterion = create_loss(cfg.loss, cfg.model.head, labels, LABELS).to(device)
    optimizer = build_optimizer(model, cfg, backbone_pretrained=False)
    for step in range(4):
        batch = {k: v.to(device) for k, v in _batch(gen, 8, 224).items()}
        _checked_step(model, batch, criterion, cfg, optimizer, "cuda", True, (preset, step))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_on_the_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """`train.amp=auto` trains in bf16 on a CPU that computes it natively (AMX, AVX-512 BF16: about
    twice as fast) and in float32 elsewhere (emulated bf16 is slower); explicit settings win, and
    the printed line says which precision was chosen and why."""
    from eyefuse.train import setup

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    cpu = torch.device("cpu")
    assert setup.cpu_has_native_bf16() is (native and torch.backends.mkldnn.is_available())
    expected = torch.bfloat16 if setup.cpu_has_native_bf16() else None
    assert setup.amp_dtype("auto", cpu) is expected
    assert setup.amp_dtype("off", cpu) is None
    assert setup.amp_dtype("bf16", cpu) is torch.bfloat16
    line = setup.describe_precision("auto", cpu)
    if expected is None:
        assert line.startswith("precision: float32") and "no native bf16" in line
    else:
        assert line.startswith("precision: bfloat16 autocast") and "natively" in line
    assert setup.describe_precision("off", cpu) == "precision: float32 (train.amp=off)"


class _Patients(torch.utils.data.Dataset):
    """Six patients of random uint8 photographs, in `PairDataset`'s item format."""

    def __init__(self, size: int = 32) -> None:
        gen = torch.Generator().manual_seed(3)
        self.items = [
            {
                "index": torch.tensor(i),
                "left": torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8),
                "right": torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8),
                "left_present": torch.tensor(True),
                "right_present": torch.tensor(True),
                "labels": (torch.rand(8, generator=gen) > 0.5).float(),
            }
            for i in range(6)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def test_calibration_and_evaluation_logits_are_float32_whatever_train_amp() -> None:
    """Validation while training runs under `train.amp` (bf16 here); `autocast=False`, which the
    calibration and `eyefuse evaluate` use, gives the float32 logits `eyefuse predict`, the service
    and ONNX compute, so thresholds are fitted on and reports describe what a deployed model says."""
    cfg = load_config("demo", ["model.backbone=resnet10t", "train.amp=bf16", "train.batch_size=2"])
    cfg_fp32 = load_config("demo", ["model.backbone=resnet10t", "train.amp=off", "train.batch_size=2"])
    torch.manual_seed(0)
    model = build_model(cfg.model, LABELS).eval()
    data, cpu = _Patients(), torch.device("cpu")
    float32 = engine.predict_dataset(model, data, cpu, cfg_fp32)["logits"]
    np.testing.assert_array_equal(
        engine.predict_dataset(model, data, cpu, cfg, autocast=False)["logits"], float32
    )
    under_bf16 = engine.predict_dataset(model, data, cpu, cfg)["logits"]
    assert not np.array_equal(under_bf16, float32)  # the training-time validation really was bf16
    np.testing.assert_allclose(under_bf16, float32, atol=0.25)
