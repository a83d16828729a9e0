"""Tests for eyefuse.registry: every registered name has an implementation and every implementation
a name, the config and the CLI read their choices from the registries, and a wrong name is refused
in one line naming the setting and every valid name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eyefuse import registry
from eyefuse.cli import build_parser
from eyefuse.config import AugmentConfig, LossConfig, PreprocessConfig, load_config
from eyefuse.data.augment import check_augment_config
from eyefuse.data.preprocess import ENHANCERS, preprocess_array
from eyefuse.errors import ConfigError
from eyefuse.eval.thresholds import CRITERIA, fit_thresholds
from eyefuse.models.attention import ATTENTION_TYPES
from eyefuse.models.binocular import head_probabilities, ranking_probabilities
from eyefuse.models.fusion import FUSION_TYPES
from eyefuse.train.losses import LOSSES, create_loss
from eyefuse.train.setup import build_optimizer
from test_preprocess import draw_fundus

# Each implementing table, and the registry it is bound to.
BOUND = [
    (registry.ATTENTION, ATTENTION_TYPES),
    (registry.FUSION, FUSION_TYPES),
    (registry.LOSS, LOSSES),
    (registry.THRESHOLD_METHOD, CRITERIA),
    (registry.ENHANCE, ENHANCERS),
]


@pytest.mark.parametrize(("reg", "table"), BOUND, ids=[r.key for r, _ in BOUND])
def test_each_bound_table_implements_exactly_the_registered_names(
    reg: registry.Registry, table: dict
) -> None:
    assert list(table) == list(reg.names) and len(reg) >= 2


def test_bind_refuses_a_name_without_implementation_and_the_reverse() -> None:
    reg = registry.Registry("x.kind", "Kinds:", {"a": "one", "b": "two"})
    assert reg.bind({"b": 2, "a": 1}) == {"a": 1, "b": 2}  # the registry's order
    with pytest.raises(RuntimeError, match=r"without an implementation \['b'\]"):
        reg.bind({"a": 1})
    with pytest.raises(RuntimeError, match=r"without a name \['c'\]"):
        reg.bind({"a": 1, "b": 2, "c": 3})


@pytest.mark.parametrize(
    ("setting", "reg"),
    [
        ("model.attention", registry.ATTENTION),
        ("model.attention_placement", registry.PLACEMENT),
        ("model.fusion", registry.FUSION),
        ("model.head", registry.HEAD),
        ("loss.name", registry.LOSS),
        ("eval.threshold_method", registry.THRESHOLD_METHOD),
        ("preprocess.enhance", registry.ENHANCE),
        ("data.problem_images", registry.PROBLEM_IMAGES),
        ("augment.flip", registry.FLIP),
        ("train.optimizer", registry.OPTIMIZER),
        ("train.amp", registry.AMP),
        ("train.select_metric", registry.SELECT_METRIC),
    ],
)
def test_config_accepts_every_registered_name_and_refuses_others(
    setting: str, reg: registry.Registry
) -> None:
    assert reg.key == setting
    for name in reg:
        load_config("demo", [f"{setting}={name}"])
    with pytest.raises(ConfigError) as info:
        load_config("demo", [f"{setting}=nonsense"])
    assert str(info.value) == f"{setting} must be one of {', '.join(reg.names)}, not 'nonsense'"


def test_every_head_has_probabilities_and_a_loss() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    truth = torch.tensor([[1.0, 0.0, 1.0]])
    for head in registry.HEAD:
        p, r = head_probabilities(logits, head), ranking_probabilities(logits, head)
        assert p.shape == r.shape == logits.shape and float(p.max()) <= 1.0
        assert torch.isfinite(create_loss(LossConfig(), head, None)(logits, truth))
    with pytest.raises(ConfigError, match="model.head must be one of sigmoid, softmax"):
        create_loss(LossConfig(), "tanh", None)


def test_every_loss_builds_and_differs() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.8, -2.0]])
    truth = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = {
        name: float(create_loss(LossConfig(name=name), "sigmoid", None)(logits, truth))
        for name in registry.LOSS
    }
    assert len(set(values.values())) == len(registry.LOSS), values


def test_every_threshold_method_fits() -> None:
    truth = np.array([[0], [0], [1], [1], [0], [1]])
    prob = np.array([[0.1], [0.3], [0.35], [0.8], [0.6], [0.9]])
    fits = {m: fit_thresholds(truth, prob, m) for m in registry.THRESHOLD_METHOD}
    assert fits["fixed"].thresholds[0] == 0.5
    assert all(f.method == m for m, f in fits.items())


def test_every_enhancement_changes_the_picture_differently() -> None:
    rgb = draw_fundus(160, 120, 80, 60, 50)
    out = {
        name: preprocess_array(rgb, PreprocessConfig(size=64, enhance=name))[0] for name in registry.ENHANCE
    }
    assert not np.array_equal(out["graham"], out["none"]) and not np.array_equal(out["clahe"], out["none"])
    assert not np.array_equal(out["graham"], out["clahe"])


def test_every_flip_is_accepted_by_the_augmentation() -> None:
    for flip in registry.FLIP:
        check_augment_config(AugmentConfig(flip=flip))
    with pytest.raises(ConfigError, match="augment.flip must be one of mirror_swap, none"):
        check_augment_config(AugmentConfig(flip="upside_down"))


def test_cli_choices_and_help_come_from_the_registries() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    prepare = {a.dest: a for a in sub["prepare"]._actions}
    assert tuple(prepare["enhance"].choices) == registry.ENHANCE.names
    assert tuple(prepare["problem_images"].choices) == registry.PROBLEM_IMAGES.names
    config_help = next(a for a in sub["train"]._actions if a.dest == "config").help
    assert all(name in config_help for name in registry.preset_names())


def test_every_optimizer_builds_with_the_configured_groups() -> None:
    class Tiny(torch.nn.Sequential):
        def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
            return {"backbone": list(self[0].parameters()), "new": list(self[1].parameters())}

    model = Tiny(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    kinds = set()
    for name in registry.OPTIMIZER:
        cfg = load_config("demo", [f"train.optimizer={name}", "train.lr=0.01"])
        opt = build_optimizer(model, cfg, backbone_pretrained=False)
        kinds.add(type(opt).__name__)
        assert all(g["lr"] == pytest.approx(0.01) for g in opt.param_groups)
        assert {g["weight_decay"] for g in opt.param_groups} == {0.0, cfg.train.weight_decay}
    assert kinds == {"AdamW", "SGD"}
