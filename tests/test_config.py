"""Config presets, YAML round trips and `--set` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eyefuse.config import Config, config_from_dict, load_config, resume_config, save_config
from eyefuse.errors import ConfigError
from eyefuse.registry import preset_names
from eyefuse.workflows.ablation import load_grid


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
    """`eyefuse models` and config validation read the light registries of eyefuse.registry; the
    model modules bind their builders to the same names, so the two cannot drift apart."""
    import subprocess
    import sys

    code = (
        "import sys; import eyefuse.config; from eyefuse.registry import describe_models; "
        "text = describe_models(); "
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules; print(text)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    from eyefuse import registry

    for reg in (registry.ATTENTION, registry.PLACEMENT, registry.FUSION, registry.HEAD, registry.LOSS):
        assert reg.title in out.stdout
        for name in reg:
            assert f"  {name} " in out.stdout, name
    assert "resnet50" in out.stdout and all(p in out.stdout for p in preset_names())


def test_old_configs_with_model_num_classes_still_load_and_resume(tmp_path: Path) -> None:
    """`model.num_classes` is gone (the label names decide the outputs); run folders and
    checkpoints written before keep it in their config and must still load and resume."""
    old = Config().to_dict()
    old["model"]["num_classes"] = 8
    assert config_from_dict(old) == Config()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(old), encoding="utf-8")
    cfg = resume_config(run, ["train.epochs=3"])
    assert cfg.train.epochs == 3 and not hasattr(cfg.model, "num_classes")
    # A user may not set it any more: it would be silently ignored.
    with pytest.raises(ConfigError, match="unknown config key 'model.num_classes'"):
        load_config("demo", ["model.num_classes=3"])


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("preprocess.margin=2", "preprocess.margin must be between 0 and 1"),
        ("preprocess.graham_sigma=0", "preprocess.graham_sigma must be positive"),
        ("preprocess.clahe_clip=-1", "preprocess.clahe_clip must be positive"),
        ("preprocess.clahe_grid=0", "preprocess.clahe_grid must be between 1 and 64"),
        ("preprocess.size=8", "preprocess.size must be between 16 and 4096"),
    ],
)
def test_preprocess_settings_are_checked_with_the_config(setting: str, words: str) -> None:
    """One check of the preprocessing settings (`PreprocessConfig.validate`), run with the config,
    so a wrong value is refused before anything is prepared."""
    with pytest.raises(ConfigError, match=words):
        load_config("demo", [setting])


def test_text_settings_take_the_text_as_typed() -> None:
    """YAML reads `off` as False; `--set train.amp=off` must still mean the choice `off`."""
    assert load_config("demo", ["train.amp=off"]).train.amp == "off"
    assert load_config("demo", ["data.root=null"]).data.root is None
    assert load_config("demo", ["name=123"]).name == "123"


def test_config_files_read_off_as_text_and_booleans_as_yaml_1_2(tmp_path: Path) -> None:
    """In a config file `amp: off` is the choice "off" (YAML 1.1 would give False and the config
    would be refused); a boolean setting still takes yes/no/on/off."""
    path = tmp_path / "mine.yaml"
    path.write_text(
        "base: demo\ntrain:\n  amp: off\n  deterministic: no\n  channels_last: on\n", encoding="utf-8"
    )
    cfg = load_config(str(path))
    assert cfg.train.amp == "off" and cfg.train.deterministic is False and cfg.train.channels_last is True
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: demo\nfactors:\n  train.amp: [off, bf16]\nseeds: [0]\n", encoding="utf-8")
    assert load_grid(str(grid))["factors"]["train.amp"] == ["off", "bf16"]
