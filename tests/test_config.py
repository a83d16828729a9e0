"""Config presets, YAML round trips and `--set` overrides."""

from __future__ import annotations

import pytest

from eyefuse.config import Config, config_from_dict, load_config, preset_names, save_config
from eyefuse.errors import ConfigError


def test_presets_exist_and_validate() -> None:
    assert {"paper", "strong", "demo"} <= set(preset_names())
    paper = load_config("paper")
    assert (paper.model.backbone, paper.model.attention, paper.model.attention_placement) == (
        "resnet50",
        "residual_attention",
        "last",
    )
    assert (paper.model.fusion, paper.model.head, paper.preprocess.enhance, paper.preprocess.size) == (
        "ffm",
        "softmax",
        "graham",
        448,
    )
    strong = load_config("strong")
    assert strong.name == "strong"
    assert strong.model.head == "sigmoid" and strong.loss.name == "asl"
    assert strong.preprocess.size == 448  # inherited from its base preset


def test_overrides_apply_with_types() -> None:
    cfg = load_config("paper", ["train.epochs=3", "model.fusion=concat", "train.ema=true", "train.lr=1e-3"])
    assert cfg.train.epochs == 3 and cfg.model.fusion == "concat" and cfg.train.ema is True
    assert cfg.train.lr == pytest.approx(1e-3)
    cfg = load_config("paper", ["model.weights=none"])
    assert cfg.model.weights is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.epoch=3", "unknown config key 'train.epoch'"),
        ("trian.epochs=3", "unknown config key 'trian'"),
        ("train.epochs=abc", "train.epochs expects int"),
        ("train.epochs", "expected key=value"),
        ("model.fusion=avg", "model.fusion must be one of"),
        ("train=3", "is a section"),
        ("train.ema=maybe", "train.ema expects bool"),
    ],
)
def test_bad_overrides_name_the_key(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config("paper", [item])


def test_unknown_preset_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    hint = r"unknown config key 'train.epochz' \(did you mean 'train.epochs'\?\)"
    with pytest.raises(ConfigError, match=hint):
        load_config(str(bad))
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(bad))


def test_yaml_round_trip(tmp_path) -> None:
    cfg = load_config("strong", ["train.epochs=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.to_dict() == cfg.to_dict()
    assert config_from_dict(cfg.to_dict()).hash() == cfg.hash()
    assert Config().hash() != cfg.hash()


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "demo").mkdir()  # `eyefuse demo --out demo` makes exactly this folder
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").name == "demo"


@pytest.mark.parametrize(
    "setting, words",
    [
        ("train.lr=-0.1", "train.lr must be > 0"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.seed=-5", "train.seed must be >= 0"),
        ("train.momentum=1.5", "train.momentum"),
        ("data.split_seed=-1", "data.split_seed"),
        ("augment.eye_dropout=2", "augment.eye_dropout"),
        ("eval.bootstrap=-3", "eval.bootstrap"),
        ("train.lr=nan", "train.lr"),
    ],
)
def test_out_of_range_numbers_are_refused(setting: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config("demo", [setting])


def test_model_choices_are_listed_without_torch() -> None:
    """`eyefuse models` and config validation use the light registries in eyefuse.config; the
    model modules attach their builders to the same names, so the two cannot drift apart."""
    import subprocess
    import sys

    code = (
        "import sys; from eyefuse.config import describe_models; text = describe_models(); "
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules; print(text)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    from eyefuse.config import ATTENTION_CHOICES, FUSION_CHOICES, HEAD_CHOICES, PLACEMENT_CHOICES
    from eyefuse.models import ATTENTION_TYPES, FUSION_TYPES, HEADS, PLACEMENTS

    assert list(ATTENTION_TYPES) == list(ATTENTION_CHOICES) and list(FUSION_TYPES) == list(FUSION_CHOICES)
    assert HEADS == HEAD_CHOICES and PLACEMENTS == PLACEMENT_CHOICES
    for name in [*ATTENTION_CHOICES, *FUSION_CHOICES, *HEAD_CHOICES, "resnet50", "demo"]:
        assert name in out.stdout
