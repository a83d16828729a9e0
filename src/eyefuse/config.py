"""Run configuration: dataclasses, YAML load/save, `--set key=value` overrides and named presets.

One `Config` describes a run completely; it is saved as `config.yaml` in every run folder and inside
every checkpoint, so training, evaluation, prediction, export and serving read the same settings.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from eyefuse import registry
from eyefuse.errors import ConfigError
from eyefuse.registry import preset_names
from eyefuse.utils.io import atomic_write_text


@dataclass
class PreprocessConfig:
    """How a raw photograph becomes a model input (stored in every checkpoint)."""

    size: int = 448  #: output side in pixels (square)
    enhance: str = "graham"  #: graham | clahe | none
    graham_sigma: float = 10.0  #: Gaussian sigma for `graham`, in pixels at a field-of-view radius of 300 px
    graham_weight: float = 4.0  #: out = weight * (img - blur) + 128
    clahe_clip: float = 2.0  #: CLAHE clip limit (on the L channel of Lab)
    clahe_grid: int = 8  #: CLAHE tiles per side
    margin: float = 0.0  #: extra border around the field of view, as a fraction of its radius
    mask: bool = True  #: black out pixels outside the field-of-view circle

    def validate(self) -> None:
        """Refuse settings preprocessing cannot use (the one check of them: the preprocessing
        functions call it too, since they may be given a config built in code)."""
        registry.ENHANCE.check(self.enhance)
        if not 16 <= self.size <= 4096:
            raise ConfigError(f"preprocess.size must be between 16 and 4096 pixels, not {self.size}")
        if not self.margin >= 0.0 or self.margin > 1.0:
            raise ConfigError(
                f"preprocess.margin must be between 0 and 1 (fraction of the radius), not {self.margin}"
            )
        if not self.graham_sigma > 0.0:
            raise ConfigError(f"preprocess.graham_sigma must be positive, not {self.graham_sigma}")
        if not self.clahe_clip > 0.0:
            raise ConfigError(f"preprocess.clahe_clip must be positive, not {self.clahe_clip}")
        if not 1 <= self.clahe_grid <= 64:
            raise ConfigError(f"preprocess.clahe_grid must be between 1 and 64, not {self.clahe_grid}")


@dataclass
class DataConfig:
    """Where the patients come from and how they are split."""

    root: str | None = None  #: dataset folder or annotation file (`--data`)
    split_file: str | None = None  #: patient_id,split CSV; made with `eyefuse split` settings below if absent
    val_fraction: float = 0.15  #: fraction of training patients held out for validation
    split_seed: int = 0
    cache_dir: str | None = None  #: preprocessing cache; default `<data root>/.eyefuse-cache`
    problem_images: str = "exclude"  #: exclude | keep: the 16 images whose background the hospital altered
    workers: int = 0  #: preprocessing processes for `prepare` (0 = all cores)


@dataclass
class AugmentConfig:
    """Augmentation applied to each eye independently during training."""

    scale_min: float = 0.80  #: random resized crop: smallest area fraction
    ratio_max: float = 1.10  #: random resized crop: largest aspect ratio (and its inverse)
    rotation: float = 15.0  #: degrees, uniform in [-rotation, rotation]
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    blur_prob: float = 0.0  #: off by default: blur mimics cataract (C), so it can teach the wrong thing
    flip: str = "mirror_swap"  #: mirror_swap (mirror both eyes and swap sides) | none
    flip_prob: float = 0.5
    eye_dropout: float = 0.05  #: probability of hiding one eye (the model must cope with a missing eye)


@dataclass
class ModelConfig:
    """The binocular model (see `eyefuse models`)."""

    backbone: str = "resnet50"  #: any timm model name
    pretrained: bool = True  #: ImageNet weights through timm's hub (online) unless `weights` is given
    weights: str | None = None  #: local weights file (safetensors, or a torchvision/timm state dict)
    attention: str = "residual_attention"  #: none | se | cbam | eca | residual_attention
    attention_placement: str = "last"  #: all | last
    shared_backbone: bool = True  #: one backbone for both eyes (False: separate weights)
    fusion: str = "ffm"  #: concat | sum | max | mul | ffm | cross_attention | single
    head: str = "softmax"  #: sigmoid | softmax
    aux_eye_heads: bool = False  #: per-eye auxiliary heads trained on keyword-derived per-eye labels
    drop_rate: float = 0.2  #: dropout before the classifier
    tta: str = "none"  #: none | mirror_swap (test-time augmentation in eval mode: see `eyefuse models`)


@dataclass
class LossConfig:
    name: str = "bce"  #: bce | focal | asl (ignored by the softmax head, which uses soft-target CE)
    pos_weight: bool = False  #: BCE pos_weight from training-set class frequencies
    focal_gamma: float = 2.0
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    aux_weight: float = 0.3  #: weight of the per-eye auxiliary loss


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 16  #: patients per step (each patient = 2 images)
    optimizer: str = "adamw"  #: adamw | sgd
    lr: float = 3e-4
    backbone_lr_mult: float = 0.1  #: layer-wise lower LR for the pretrained backbone
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    amp: str = "auto"  #: auto | bf16 | fp16 | off (auto: bf16 on CUDA and on CPUs with native bf16)
    channels_last: bool = True
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    grad_clip: float = 1.0  #: max gradient norm (0 disables)
    early_stop_patience: int = 10  #: epochs without a better `select_metric` (0 disables)
    #: validation figure that picks the `best` checkpoint and drives early stopping:
    #: val_macro_auroc (default: threshold-free, the least noisy on a few hundred patients),
    #: val_final (the official ODIR final at threshold 0.5) or val_loss (lower is better)
    select_metric: str = "val_macro_auroc"
    seed: int = 0
    num_workers: int = 2
    gpu_cache: bool = False  #: CUDA: keep the whole uint8 cache on the GPU and augment there
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    deterministic: bool = True
    max_steps_per_epoch: int = 0  #: 0 = full epoch (a cap is for smoke runs)


@dataclass
class EvalConfig:
    threshold_method: str = "f1"  #: f1 | youden | fixed (0.5)
    calibrate: bool = True  #: per-class temperature scaling fitted on validation
    bootstrap: int = 1000  #: bootstrap resamples over patients for confidence intervals
    bootstrap_seed: int = 0


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        """Short stable hash of the settings that define the model and its training."""
        d = self.to_dict()
        d.pop("name", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def validate(self) -> None:
        self.preprocess.validate()
        registry.PROBLEM_IMAGES.check(self.data.problem_images)
        registry.FLIP.check(self.augment.flip)
        registry.ATTENTION.check(self.model.attention)
        registry.PLACEMENT.check(self.model.attention_placement)
        registry.FUSION.check(self.model.fusion)
        registry.HEAD.check(self.model.head)
        registry.TTA.check(self.model.tta)
        registry.LOSS.check(self.loss.name)
        registry.OPTIMIZER.check(self.train.optimizer)
        registry.AMP.check(self.train.amp)
        registry.SELECT_METRIC.check(self.train.select_metric)
        registry.THRESHOLD_METHOD.check(self.eval.threshold_method)
        if not 0.0 < self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), not {self.data.val_fraction}")
        if self.train.epochs < 1 or self.train.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be at least 1")
        # Ranges of the numbers a user sets with --set: refused here, before a run folder exists,
        # instead of failing deep inside the optimiser or the seeding with a traceback.
        t = self.train
        _range("train.lr", t.lr, low=0.0, low_open=True)
        _range("train.backbone_lr_mult", t.backbone_lr_mult, low=0.0)
        _range("train.weight_decay", t.weight_decay, low=0.0)
        _range("train.momentum", t.momentum, low=0.0, high=1.0, high_open=True)
        _range("train.warmup_epochs", t.warmup_epochs, low=0.0)
        _range("train.min_lr_ratio", t.min_lr_ratio, low=0.0, high=1.0)
        _range("train.ema_decay", t.ema_decay, low=0.0, high=1.0, high_open=True)
        _range("train.grad_clip", t.grad_clip, low=0.0)
        _range("train.seed", t.seed, low=0, high=2**32 - 1)
        _range("train.early_stop_patience", t.early_stop_patience, low=0)
        _range("train.num_workers", t.num_workers, low=0)
        _range("train.max_steps_per_epoch", t.max_steps_per_epoch, low=0)
        _range("data.split_seed", self.data.split_seed, low=0, high=2**32 - 1)
        _range("data.workers", self.data.workers, low=0)
        _range("model.drop_rate", self.model.drop_rate, low=0.0, high=1.0, high_open=True)
        _range("augment.eye_dropout", self.augment.eye_dropout, low=0.0, high=1.0)
        _range("augment.flip_prob", self.augment.flip_prob, low=0.0, high=1.0)
        _range("augment.blur_prob", self.augment.blur_prob, low=0.0, high=1.0)
        _range("augment.scale_min", self.augment.scale_min, low=0.0, high=1.0, low_open=True)
        _range("loss.aux_weight", self.loss.aux_weight, low=0.0)
        _range("eval.bootstrap", self.eval.bootstrap, low=0)
        _range("eval.bootstrap_seed", self.eval.bootstrap_seed, low=0, high=2**32 - 1)


def _range(
    key: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse `value` outside [low, high] (an open end excludes the bound), naming the key."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # value != value: NaN
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{key} must be {' and '.join(x for x in (lo, hi) if x)}, not {value}")


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset name or YAML file, apply `key=value` overrides, validate.

    A preset may name another as `base:`; its keys are applied on top of that one.
    """
    cfg = Config()
    if name_or_path:
        _apply_dict(cfg, _read_yaml_chain(name_or_path), source=str(name_or_path))
    for item in overrides or []:
        apply_override(cfg, item)
    cfg.validate()
    return cfg


#: Keys `--set` may change when a run is resumed: how long or how it trains, not what it trains.
RESUME_FIXED_KEYS = ("train.seed", "train.batch_size", "train.select_metric")


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The saved config of run folder `run_dir` with `--set` overrides that may change how long or
    how it trains (train.*, eval.*) but not what it trains (model, data, preprocessing, augmentation,
    loss, seed, batch size). Light (no torch), so the CLI refuses a wrong resume at once."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run folder")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there (is it an eyefuse run folder?)")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not key.startswith(("train.", "eval.")) or key in RESUME_FIXED_KEYS:
            raise ConfigError(
                f"--set {item!r} cannot change a run being resumed; only train.* (except seed, "
                "batch_size and select_metric) and eval.* settings may change"
            )
    return load_config(str(cfg_file), list(overrides))


def _read_yaml_chain(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name_or_path in seen:
        raise ConfigError(f"config {name_or_path!r}: circular 'base:' chain {' -> '.join(seen)}")
    path = Path(name_or_path)
    # A folder named like a preset (e.g. the demo's own `demo/` output) must not hide the preset.
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
    else:
        res = resources.files("eyefuse").joinpath("configs", f"{name_or_path}.yaml")
        if not res.is_file():
            raise ConfigError(
                f"unknown config {name_or_path!r}: not a file, and not a preset ({', '.join(preset_names())})"
            )
        text = res.read_text(encoding="utf-8")
    try:
        data = parse_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {name_or_path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {name_or_path}: top level must be a mapping")
    base = data.pop("base", None)
    if base:
        merged = _read_yaml_chain(str(base), (*seen, name_or_path))
        _deep_update(merged, data)
        data = merged
    data.setdefault("name", Path(name_or_path).stem)
    return data


class _ConfigLoader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2: only true/false. YAML 1.1 (PyYAML's default) also reads
    yes/no/on/off as booleans, so `amp: off` would arrive as False instead of the text "off"."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """Parse a config or grid file's text (YAML 1.2 booleans: `off` stays the text "off"; a boolean
    setting still accepts yes/no/on/off, see `_coerce`)."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: builds plain data only


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


#: Keys earlier versions wrote into config.yaml and checkpoints and that no longer mean anything:
#: dropped when read, so old run folders and checkpoints still load and resume.
#: `model.num_classes` was overwritten by the number of label names the data has.
RETIRED_KEYS = frozenset({"model.num_classes"})


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. a checkpoint's metadata)."""
    cfg = Config()
    _apply_dict(cfg, copy.deepcopy(d), source="saved config")
    return cfg


def _did_you_mean(name: str, candidates: Any, prefix: str = "") -> str:
    """` (did you mean 'train.epochs'?)` for a near miss among `candidates`, else ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _apply_dict(obj: Any, d: dict[str, Any], source: str, prefix: str = "") -> None:
    names = {f.name: f for f in fields(obj)}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if full in RETIRED_KEYS:
            continue
        if key not in names:
            raise ConfigError(f"{source}: unknown config key {full!r}{_did_you_mean(key, names, prefix)}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full!r} must be a mapping")
            _apply_dict(current, value, source, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, _field_type(obj, key), full, source))


def _field_type(obj: Any, name: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    return hints[name]


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, with a message naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        tp = args[0]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in (
                "true",
                "yes",
                "1",
                "on",
                "false",
                "no",
                "0",
                "off",
            ):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} expects {tp.__name__}, got {value!r}") from None
    return value


def apply_override(cfg: Config, item: str) -> None:
    """Apply one `section.key=value` override; an unknown key is an error naming it."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=10")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        if not is_dataclass(obj) or part not in {f.name for f in fields(obj)}:
            prefix = "".join(f"{p}." for p in parts[:i])
            hint = _did_you_mean(part, [f.name for f in fields(obj)], prefix) if is_dataclass(obj) else ""
            raise ConfigError(f"--set {item!r}: unknown config key {'.'.join(parts[: i + 1])!r}{hint}")
        if i < len(parts) - 1:
            obj = getattr(obj, part)
    if is_dataclass(getattr(obj, parts[-1])):
        raise ConfigError(f"--set {item!r}: {key!r} is a section; set one of its keys")
    tp = _field_type(obj, parts[-1])
    if str in (tp, *typing.get_args(tp)):
        # A text setting takes the text as typed: YAML would read `off` or `no` as a boolean
        # (`--set train.amp=off` must mean "off", not "False").
        value: Any = raw.strip()
    else:
        value = yaml.safe_load(raw) if raw.strip() else ""
    setattr(obj, parts[-1], _coerce(value, tp, key, "--set"))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "AugmentConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "PreprocessConfig",
    "TrainConfig",
    "apply_override",
    "config_from_dict",
    "load_config",
    "parse_yaml",
    "resume_config",
    "save_config",
]
