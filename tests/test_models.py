"""Tests for eyefuse.models: every attention/placement/fusion/head runs forward and backward on the CPU
(64 px, tiny backbones), missing eyes, the softmax probability rule, shared vs separate backbones,
weight files (timm, torchvision, safetensors) and their errors, offline pretrained weights."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from eyefuse import ODIR_LABELS
from eyefuse.config import ModelConfig
from eyefuse.errors import CheckpointError, ConfigError
from eyefuse.models import (
    ATTENTION_TYPES,
    FUSION_TYPES,
    BinocularNet,
    build_model,
    count_parameters,
    create_attention,
    create_fusion,
)
from eyefuse.models.attention import (
    CBAM,
    EfficientChannelAttention,
    ResidualAttention,
    SpatialGate,
    SqueezeExcite,
)
from eyefuse.models.binocular import combine_eye_logits, ranking_probabilities
from eyefuse.models.inputs import model_inputs
from eyefuse.registry import HEAD as HEADS
from eyefuse.registry import describe_models

SIZE = 64
TINY = "resnet10t"  # timm ResNet, BasicBlock, one block per stage: the cheapest ResNet-family model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast, and idle spinning threads slow a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(**kw: object) -> ModelConfig:
    base = dict(
        backbone=TINY,
        pretrained=False,
        attention="none",
        attention_placement="last",
        fusion="concat",
        head="sigmoid",
        drop_rate=0.0,
    )
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def _build(**kw: object) -> BinocularNet:
    torch.manual_seed(0)
    return build_model(_cfg(**kw))


def _images(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=g), torch.randn(batch, 3, SIZE, SIZE, generator=g)


def _activate(model: nn.Module) -> None:
    """Undo the zero inits of a fresh model (timm's zero last BN per block, residual attention's
    gamma = 0) as training would, so that every parameter influences the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            if isinstance(m, ResidualAttention):
                m.gamma.fill_(1.0)


def _backward(out: dict[str, torch.Tensor]) -> None:
    # Random weights: a plain sum can have exactly zero gradient through BatchNorm.
    g = torch.Generator().manual_seed(2)
    loss = sum((v * torch.randn(v.shape, generator=g)).sum() for v in out.values())
    loss.backward()


def _assert_all_grads(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def _run_train_step(model: BinocularNet, batch: int = 2) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    _activate(model)
    left, right = _images(batch)
    out = model(left, right)
    for key, value in out.items():
        assert value.shape == (batch, len(ODIR_LABELS)), key
        assert torch.isfinite(value).all(), key
    _backward(out)
    _assert_all_grads(model)
    return out


# --- forward and backward of every building block ---------------------------------------------


# `none` inserts nothing whatever the placement: one case is enough.
ATTENTION_CASES = [("none", "last")]
ATTENTION_CASES += [(a, p) for a in ATTENTION_TYPES if a != "none" for p in ("last", "all")]


@pytest.mark.parametrize(("attention", "placement"), ATTENTION_CASES)
def test_attention_placement_forward_backward(attention: str, placement: str) -> None:
    model = _build(attention=attention, attention_placement=placement)
    _run_train_step(model)
    kinds = {
        "none": None,
        "se": SqueezeExcite,
        "eca": EfficientChannelAttention,
        "cbam": CBAM,
        "residual_attention": ResidualAttention,
    }
    body = model.backbone.body
    blocks = [b for stage in (body.layer1, body.layer2, body.layer3, body.layer4) for b in stage]
    if attention == "none":
        assert all(b.se is None for b in blocks) and isinstance(model.backbone.attn, nn.Identity)
    elif placement == "all":
        assert all(isinstance(b.se, kinds[attention]) for b in blocks)
        assert isinstance(model.backbone.attn, nn.Identity)
    else:
        assert all(b.se is None for b in blocks) and isinstance(model.backbone.attn, kinds[attention])
    maps = model.spatial_attention_maps()
    has_spatial = attention in ("cbam", "residual_attention")
    assert bool(maps["left"]) == has_spatial and bool(maps["right"]) == has_spatial
    for side in ("left", "right"):
        for m in maps[side].values():
            assert m.shape[0] == 2 and m.shape[1] == 1 and ((m > 0) & (m < 1)).all()


# The head only changes `probabilities` (tested below): each fusion runs with one head, alternating.
FUSION_CASES = [(f, list(HEADS)[i % len(HEADS)]) for i, f in enumerate(FUSION_TYPES)]


@pytest.mark.parametrize(("fusion", "head"), FUSION_CASES)
def test_fusion_head_forward_backward_with_aux_heads(fusion: str, head: str) -> None:
    model = _build(attention="residual_attention", fusion=fusion, head=head, aux_eye_heads=True)
    out = _run_train_step(model)
    assert set(out) == {"logits", "left_logits", "right_logits"}
    if fusion == "single":
        # No separate aux head: the per-eye logits are the single-eye classifier's own.
        assert model.aux_head is None
        combined = combine_eye_logits(out["left_logits"], out["right_logits"], head, model.normal_index)
        assert torch.equal(out["logits"], combined)
    else:
        assert model.aux_head is not None


def test_resnet50_bottleneck_blocks_take_attention() -> None:
    model = _build(
        backbone="resnet50", attention="cbam", attention_placement="all", fusion="sum", head="softmax"
    )
    body = model.backbone.body
    assert isinstance(body.layer3[0], timm.models.resnet.Bottleneck)
    assert all(isinstance(b.se, CBAM) for b in body.layer3)
    assert body.layer4[0].se.channel.fc1.in_channels == 2048
    _run_train_step(model, batch=1)
    maps = model.spatial_attention_maps()
    assert len(maps["left"]) == 16  # 3 + 4 + 6 + 3 bottleneck blocks, one spatial gate each


def test_non_resnet_backbone_with_last_placement() -> None:
    model = _build(backbone="mobilenetv3_small_050", attention="residual_attention", fusion="ffm")
    # MobileNetV3's conv_head belongs to its classifier: forward_features never runs it, so it is removed
    # (an unused parameter would break DistributedDataParallel).
    assert "conv_head" in model.backbone.removed_prefixes
    _run_train_step(model)
    with pytest.raises(ConfigError, match="attention_placement=last"):
        _build(backbone="mobilenetv3_small_050", attention="se", attention_placement="all")


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("backbone", "resnet_does_not_exist", "not a timm model"),
        ("backbone", "vit_tiny_patch16_224", "B x C x h x w"),
        ("attention", "sk", "model.attention"),
        ("attention_placement", "first", "model.attention_placement"),
        ("fusion", "average", "model.fusion"),
        ("head", "relu", "model.head"),
        ("tta", "flip", "model.tta"),
        ("drop_rate", 1.5, "model.drop_rate"),
    ],
)
def test_invalid_settings_raise_config_error(option: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(_cfg(**{option: value}))


def test_backbone_that_already_has_block_attention_is_refused_for_all() -> None:
    with pytest.raises(ConfigError, match="already has attention"):
        build_model(_cfg(backbone="seresnet18", attention="cbam", attention_placement="all"))


# --- attention modules ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["se", "eca", "cbam", "residual_attention"])
def test_attention_starts_close_to_identity(kind: str) -> None:
    torch.manual_seed(0)
    module = create_attention(kind, 64)
    x = torch.rand(2, 64, 8, 8) + 0.1
    ratio = module(x) / x
    if kind == "residual_attention":
        assert torch.equal(ratio, torch.ones_like(ratio))  # gamma = 0: exactly the identity
    else:
        assert ratio.min() > 0.8 and ratio.max() <= 1.0


def test_eca_kernel_grows_with_channels() -> None:
    assert create_attention("eca", 16).conv.kernel_size == (3,)
    assert create_attention("eca", 256).conv.kernel_size == (5,)
    assert create_attention("eca", 2048).conv.kernel_size == (7,)


def test_spatial_gate_keeps_its_last_map() -> None:
    gate = SpatialGate()
    x = torch.randn(3, 16, 5, 6)
    out = gate(x)
    assert gate.last_map is not None and gate.last_map.shape == (3, 1, 5, 6)
    assert torch.equal(gate.last_map, out.detach()) and not gate.last_map.requires_grad


# --- fusion modules ------------------------------------------------------------------------------


def test_fusion_output_widths() -> None:
    fl, fr = torch.rand(2, 32, 3, 3), torch.rand(2, 32, 3, 3)
    for kind in FUSION_TYPES:
        fusion = create_fusion(kind, 32)
        out = fusion(fl, fr)
        expected = (2, 2, 32) if kind == "single" else (2, fusion.out_dim)
        assert out.shape == expected, kind
    assert create_fusion("concat", 32).out_dim == 64 and create_fusion("ffm", 32).out_dim == 32
    assert create_fusion("cross_attention", 32).out_dim == 512
    a, b = fl.mean((2, 3)), fr.mean((2, 3))
    assert torch.allclose(create_fusion("sum", 32)(fl, fr), a + b)
    assert torch.allclose(create_fusion("max", 32)(fl, fr), torch.maximum(a, b))
    assert torch.allclose(create_fusion("mul", 32)(fl, fr), a * b)
    ffm = create_fusion("ffm", 32)
    assert ffm.alpha.item() == 0.5
    with torch.no_grad():
        ffm.alpha.zero_()  # without the interaction term the FFM is the mean of the two eyes
    ffm.eval()
    assert torch.allclose(ffm(fl, fr), (a + b) / 2, atol=1e-6)


# --- missing eyes ---------------------------------------------------------------------------------


# The replacement happens before fusion; these three cover pooled, map-level and per-eye fusion.
@pytest.mark.parametrize("fusion", ["ffm", "cross_attention", "single"])
def test_missing_eye_uses_the_other_eye_only(fusion: str) -> None:
    model = _build(attention="cbam", fusion=fusion).eval()
    _activate(model)
    a, b = _images(2, seed=3)
    left_present = torch.tensor([True, False])
    with torch.no_grad():
        out = model(a, b, left_present=left_present)["logits"]
        assert torch.isfinite(out).all()
        noisy = a.clone()
        noisy[1] = torch.rand_like(noisy[1]) * 10
        # The absent left image's pixels do not matter ...
        assert torch.allclose(model(noisy, b, left_present=left_present)["logits"], out, atol=1e-5)
        # ... the patient is scored as if both eyes were the present one ...
        assert torch.allclose(model(b, b)["logits"][1], out[1], atol=1e-5)
        # ... and the patient with both eyes is unaffected.
        assert torch.allclose(model(a, b)["logits"][0], out[0], atol=1e-5)
        right_out = model(a, b, right_present=torch.tensor([False, True]))["logits"]
        assert torch.allclose(model(a, a)["logits"][0], right_out[0], atol=1e-5)


# --- the single-eye baseline follows the ODIR rule --------------------------------------------------


def _perfect_eye_logits(eye_labels: torch.Tensor, head: str) -> torch.Tensor:
    """Logits of a per-eye classifier that is right and sure about every eye (``B x L`` 0/1 labels)."""
    if head == "sigmoid":
        return eye_labels * 20.0 - 10.0
    return torch.where(eye_labels.bool(), 0.0, -30.0)  # softmax: the mass shared by the eye's labels


@pytest.mark.parametrize("head", list(HEADS))
def test_single_eye_rule_scores_perfect_eyes_perfectly(head: str) -> None:
    from eyefuse.eval.metrics import official_score

    n, d, h = (ODIR_LABELS.index(x) for x in "NDH")
    normal, diabetic, hyper = (torch.zeros(len(ODIR_LABELS)) for _ in range(3))
    normal[n], diabetic[d], hyper[h] = 1, 1, 1
    both_dh = diabetic + hyper
    # patients: normal + normal, normal + D (one normal eye), D + H, D+H + normal
    left = torch.stack([normal, normal, diabetic, both_dh])
    right = torch.stack([normal, diabetic, hyper, normal])
    truth = torch.maximum(left, right)
    truth[:, n] = torch.minimum(left[:, n], right[:, n])  # the ODIR rule: N only when both eyes are N
    logits = combine_eye_logits(_perfect_eye_logits(left, head), _perfect_eye_logits(right, head), head, n)
    model = _build(head=head)
    decisions = model.probabilities(logits)
    assert torch.equal(decisions > 0.5, truth.bool())
    score = official_score(
        truth.numpy(), decisions.numpy(), rank_prob=model.ranking_probabilities(logits).numpy()
    )
    assert score["final"] == pytest.approx(1.0)
    # The old rule (maximum over the eyes for every label, N included) calls the one-normal-eye
    # patients normal: exactly what the ODIR rule forbids.
    old = model.probabilities(
        torch.maximum(_perfect_eye_logits(left, head), _perfect_eye_logits(right, head))
    )
    assert bool(old[1, n] > 0.5) and not bool(truth[1, n])


@pytest.mark.parametrize("head", list(HEADS))
def test_single_eye_rule_is_differentiable_and_per_label(head: str) -> None:
    g = torch.Generator().manual_seed(0)
    left = torch.randn(5, len(ODIR_LABELS), generator=g, requires_grad=True)
    right = torch.randn(5, len(ODIR_LABELS), generator=g, requires_grad=True)
    n = ODIR_LABELS.index("N")
    out = combine_eye_logits(left, right, head, n)
    p_l, p_r = ranking_probabilities(left, head), ranking_probabilities(right, head)
    # In probability terms: N is the minimum over the eyes, every disease the maximum.
    expect = torch.maximum(p_l, p_r)
    expect[:, n] = torch.minimum(p_l[:, n], p_r[:, n])
    if head == "sigmoid":
        assert torch.allclose(torch.sigmoid(out), expect)
    else:
        assert torch.allclose(out.exp(), expect, atol=1e-6)
    out.sum().backward()
    assert left.grad is not None and right.grad is not None
    assert left.grad.abs().sum() > 0 and right.grad.abs().sum() > 0
    # Without a normal label every label is the maximum over the eyes.
    plain = combine_eye_logits(left.detach(), right.detach(), "sigmoid", None)
    assert torch.equal(plain, torch.maximum(left.detach(), right.detach()))


def test_single_eye_model_uses_the_rule_and_ignores_a_missing_eye() -> None:
    model = _build(fusion="single", head="sigmoid", aux_eye_heads=True).eval()
    _activate(model)
    a, b = _images(2, seed=4)
    with torch.no_grad():
        out = model(a, b, left_present=torch.tensor([True, False]))
        n = model.normal_index
        assert n == ODIR_LABELS.index("N")
        expect = combine_eye_logits(out["left_logits"], out["right_logits"], "sigmoid", n)
        assert torch.equal(out["logits"], expect)
        # The absent left eye does not count: patient 1 is exactly its right eye.
        assert torch.allclose(out["logits"][1], model(b, b)["right_logits"][1], atol=1e-5)
    # A softmax head's per-eye logits are no sigmoid logits: its auxiliary targets get their own head.
    soft = _build(fusion="single", head="softmax", aux_eye_heads=True)
    assert soft.aux_head is not None
    out = _run_train_step(soft)
    assert set(out) == {"logits", "left_logits", "right_logits"}


def test_both_eyes_absent_is_an_error() -> None:
    model = _build().eval()
    a, b = _images(2)
    with pytest.raises(ValueError, match=r"both eyes absent for batch rows \[1\]"):
        model(a, b, torch.tensor([True, False]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="left_present must have shape"):
        model(a, b, torch.tensor([True]))


# --- outputs ----------------------------------------------------------------------------------------


def test_probabilities_softmax_rule_and_sigmoid() -> None:
    logits = torch.tensor(
        [[2.0, 2.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    soft = _build(head="softmax").probabilities(logits)
    # Two labels sharing the softmax mass equally both get 1.0; the ranking is kept.
    assert torch.allclose(soft[0, :2], torch.ones(2)) and (soft[0, 2:] < 1).all()
    assert soft[1, 0] == 1.0 and (soft[1, 1:] < 0.1).all()
    assert torch.allclose(soft.amax(1), torch.ones(2))
    assert torch.allclose(soft, torch.softmax(logits, 1) / torch.softmax(logits, 1).amax(1, keepdim=True))
    assert torch.equal(_build(head="sigmoid").probabilities(logits), torch.sigmoid(logits))
    # Ranking metrics see the softmax itself, where the two patients' top labels are not tied at 1.0.
    ranking = _build(head="softmax").ranking_probabilities(logits)
    assert torch.allclose(ranking, torch.softmax(logits, 1)) and ranking[0, 0] < ranking[1, 0]


def test_return_features_gives_both_eyes_gradients_in_one_backward() -> None:
    model = _build(attention="residual_attention", fusion="ffm").eval()
    _activate(model)
    a, b = _images(2)
    out = model(a, b, return_features=True)
    assert out["left_features"].shape == (2, model.num_features, 2, 2)
    gl, gr = torch.autograd.grad(out["logits"][:, 3].sum(), [out["left_features"], out["right_features"]])
    assert gl.shape == out["left_features"].shape and gl.abs().sum() > 0 and gr.abs().sum() > 0
    fl, fr = model.forward_features(a, b)
    assert torch.allclose(fl, out["left_features"]) and torch.allclose(fr, out["right_features"])


def test_spatial_attention_maps_are_split_per_eye() -> None:
    model = _build(attention="cbam").eval()
    a, b = _images(2, seed=5)
    with torch.no_grad():
        model(a, b)
        first = model.spatial_attention_maps()
        model(b, a)
        swapped = model.spatial_attention_maps()
    assert list(first["left"]) == ["attn.spatial"]
    assert torch.allclose(first["left"]["attn.spatial"], swapped["right"]["attn.spatial"])
    assert torch.allclose(first["right"]["attn.spatial"], swapped["left"]["attn.spatial"])
    assert not torch.allclose(first["left"]["attn.spatial"], first["right"]["attn.spatial"])


@pytest.mark.parametrize(
    ("fusion", "head"), [("ffm", "sigmoid"), ("single", "softmax"), ("concat", "softmax")]
)
def test_mirror_swap_tta_averages_the_mirrored_view_in_eval_mode_only(fusion: str, head: str) -> None:
    model = _build(attention="cbam", fusion=fusion, head=head, aux_eye_heads=True, tta="mirror_swap")
    _activate(model)
    a, b = _images(3, seed=7)
    lp, rp = torch.tensor([True, False, True]), torch.tensor([True, True, False])

    def run(tta: str, left: torch.Tensor, right: torch.Tensor, *present: torch.Tensor) -> dict:
        model.cfg = dataclasses.replace(model.cfg, tta=tta)
        return model(left, right, *present)

    model.eval()
    with torch.no_grad():
        out = run("mirror_swap", a, b, lp, rp)
        given = run("none", a, b, lp, rp)
        mirrored = run("none", b.flip(-1), a.flip(-1), rp, lp)
        # the mirrored view of the mirrored view is the given one: the average is the same
        again = run("mirror_swap", b.flip(-1), a.flip(-1), rp, lp)
    assert torch.allclose(out["logits"], (given["logits"] + mirrored["logits"]) / 2, atol=1e-5)
    assert not torch.allclose(out["logits"], given["logits"], atol=1e-4)
    # a per-eye logit of the mirrored view is that eye's, found on the other side
    for side, other in (("left_logits", "right_logits"), ("right_logits", "left_logits")):
        assert torch.allclose(out[side], (given[side] + mirrored[other]) / 2, atol=1e-5)
    assert torch.allclose(out["logits"], again["logits"], atol=1e-5)
    # training sees one view: the setting changes nothing there
    model.train()
    torch.manual_seed(3)
    trained = run("mirror_swap", a, b, lp, rp)["logits"]
    torch.manual_seed(3)
    assert trained.shape == (3, 8) and torch.allclose(trained, run("none", a, b, lp, rp)["logits"])


def test_mirror_swap_tta_keeps_features_and_maps_of_the_given_view() -> None:
    model = _build(attention="cbam", fusion="ffm", tta="mirror_swap").eval()
    _activate(model)
    a, b = _images(2, seed=5)
    out = model(a, b, return_features=True)
    fl, fr = model.forward_features(a, b)
    assert torch.allclose(fl, out["left_features"]) and torch.allclose(fr, out["right_features"])
    gl, gr = torch.autograd.grad(out["logits"][:, 3].sum(), [out["left_features"], out["right_features"]])
    assert gl.abs().sum() > 0 and gr.abs().sum() > 0
    with torch.no_grad():
        model(a, b)
        maps = model.spatial_attention_maps()
        model.cfg = dataclasses.replace(model.cfg, tta="none")
        model(a, b)
        alone = model.spatial_attention_maps()
    assert maps["left"]["attn.spatial"].shape[0] == 2
    assert torch.allclose(maps["left"]["attn.spatial"], alone["left"]["attn.spatial"], atol=1e-6)
    assert torch.allclose(maps["right"]["attn.spatial"], alone["right"]["attn.spatial"], atol=1e-6)


def test_mirror_swap_tta_checks_the_presence_masks() -> None:
    model = _build(tta="mirror_swap").eval()
    a, b = _images(2)
    with pytest.raises(ValueError, match=r"left_present must have shape \(2,\)"):
        model(a, b, torch.tensor([True, True, True]), None)
    # rows of the batch as given, not of the doubled one
    with pytest.raises(ValueError, match=r"both eyes absent for batch rows \[1\]:"):
        model(a, b, torch.tensor([True, False]), torch.tensor([True, False]))


def test_model_inputs_use_model_mean_and_std() -> None:
    model = _build()
    assert model.mean == (0.485, 0.456, 0.406) and model.std == (0.229, 0.224, 0.225)
    model.mean, model.std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # the model's own, not ImageNet's
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor(model.mean).view(3, 1, 1), torch.tensor(model.std).view(3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    left, right = model_inputs(model, x, x[0].float().numpy())  # uint8 tensor, float numpy array
    assert torch.allclose(left, expected) and torch.allclose(right, expected[0])
    cl, _ = model_inputs(model, x, x, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.allclose(cl, expected)
    with pytest.raises(ValueError, match="3 x H x W"):
        model_inputs(model, x[:, :2], x)


def test_label_names_set_the_number_of_outputs() -> None:
    cfg = _cfg()
    model = build_model(cfg, ["x", "y", "z"])
    assert model.label_names == ("x", "y", "z") and model.head.out_features == 3
    assert model(*_images(1))["logits"].shape == (1, 3)
    assert _build().label_names == ODIR_LABELS
    with pytest.raises(ConfigError, match="duplicate"):
        build_model(cfg, ["x", "x"])


# --- shared vs separate backbones -------------------------------------------------------------------


def test_separate_backbones_are_independent() -> None:
    shared = _build(attention="se")
    separate = _build(attention="se", shared_backbone=False)
    assert count_parameters(separate)["backbone"] == 2 * count_parameters(shared)["backbone"]
    assert set(separate.backbones()) == {"left", "right"} and set(shared.backbones()) == {"shared"}
    separate.train()
    _activate(separate)
    a, b = _images(2)
    fl, _ = separate.forward_features(a, b)
    (fl * torch.randn_like(fl)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in separate.backbone_left.parameters())
    assert all(p.grad is None for p in separate.backbone_right.parameters())
    # One shared backbone: the same image gives the same map whichever eye it is.
    shared.eval()
    with torch.no_grad():
        sl, sr = shared.forward_features(a, a)
    assert torch.equal(sl, sr)


def test_count_parameters_adds_up() -> None:
    model = _build(attention="cbam", attention_placement="all", fusion="ffm", aux_eye_heads=True)
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == counts["trainable"]
    assert counts["backbone"] + counts["attention"] + counts["fusion"] + counts["head"] == counts["total"]
    attention = sum(p.numel() for m in model.modules() if isinstance(m, CBAM) for p in m.parameters())
    assert counts["attention"] == attention > 0
    groups = model.parameter_groups()
    assert sum(p.numel() for p in groups["backbone"]) == counts["backbone"]


# --- weight files -----------------------------------------------------------------------------------


def _timm_state(name: str = TINY) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return timm.create_model(name, pretrained=False).state_dict()  # with its 1000-class `fc`


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_into_both_backbones(tmp_path, suffix: str) -> None:
    state = _timm_state()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    cfg = _cfg(weights=str(path), attention="cbam", attention_placement="all", shared_backbone=False)
    model = build_model(cfg)
    for bb in model.backbones().values():
        assert torch.equal(bb.body.conv1[0].weight, state["conv1.0.weight"])
        assert torch.equal(bb.body.layer4[0].bn2.running_var, state["layer4.0.bn2.running_var"])
    report = model.weights_report
    assert report is not None and report.dropped == ["fc.bias", "fc.weight"]
    assert "body.layer1.0.se.channel.fc1.weight" in report.newly_initialised
    assert all(".se." in k for k in report.newly_initialised)
    assert report.loaded == len(state) - 2


def test_torchvision_state_dict_nested_and_prefixed_loads(tmp_path) -> None:
    import torchvision  # only here: importing it costs seconds

    torch.manual_seed(3)
    tv = torchvision.models.resnet18().state_dict()
    path = tmp_path / "tv.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tv.items()}}, path)
    model = build_model(_cfg(backbone="resnet18", weights=str(path), attention="residual_attention"))
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, tv["layer3.1.conv2.weight"])
    assert model.weights_report is not None
    assert {k.split(".")[0] for k in model.weights_report.newly_initialised} == {"attn"}


class _NotATensor:
    pass


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("missing", "1 backbone tensors missing: layer2.0.conv1.weight"),
        ("unexpected", "unexpected keys: extra.weight"),
        ("shape", r"shape mismatches: layer1.0.bn1.bias \(3,\)"),
        ("pickle", "not a plain state dict"),
        ("suffix", "unknown format '.ckpt'"),
        ("absent", "does not exist"),
    ],
)
def test_bad_weights_files_raise_checkpoint_error(tmp_path, edit: str, match: str) -> None:
    state = _timm_state()
    path = tmp_path / "w.pth"
    if edit == "missing":
        del state["layer2.0.conv1.weight"]
    elif edit == "unexpected":
        state["extra.weight"] = torch.zeros(1)
    elif edit == "shape":
        state["layer1.0.bn1.bias"] = torch.zeros(3)
    elif edit == "pickle":
        state["layer1.0.bn1.bias"] = _NotATensor()  # type: ignore[assignment]
    elif edit == "suffix":
        path = tmp_path / "w.ckpt"
    elif edit == "absent":
        path = tmp_path / "nothing.pth"
    if edit != "absent":
        torch.save(state, path)
    with pytest.raises(CheckpointError, match=match) as info:
        build_model(_cfg(weights=str(path), attention="se", attention_placement="all"))
    assert str(path) in str(info.value)


def test_pretrained_download_failure_raises_checkpoint_error_with_hint(monkeypatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kw: object) -> nn.Module:
        if pretrained:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CheckpointError, match="could not download the ImageNet weights") as info:
        build_model(_cfg(pretrained=True))
    assert "--weights FILE" in str(info.value) and "--set model.pretrained=false" in str(info.value)
    # Restoring a checkpoint needs no download.
    assert isinstance(build_model(_cfg(pretrained=True), load_weights=False), BinocularNet)


def test_describe_models_lists_every_choice() -> None:
    text = describe_models()
    for name in [*ATTENTION_TYPES, *FUSION_TYPES, *HEADS, "last", "all", "resnet50", "mirror_swap"]:
        assert f"  {name} " in text, name
    # timm's own names are left to timm: counting them would import torch for `eyefuse models`
    assert "timm.list_models('resnet*')" in text
    assert "Presets" in text
