"""Run configuration: dataclasses, YAML load/save, `--set key=value` overrides and named presets.

One `Config` describes a run completely; it is saved as `config.yaml` in every run folder and inside
every checkpoint, so training, evaluation, prediction, export and serving read the same settings.
"""

from __future__ import annotations

import copy
import hashlib
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from eyefuse.errors import ConfigError
from eyefuse.utils.io import atomic_write_text

ENHANCE_CHOICES = ("graham", "clahe", "none")
#: validation figures that may choose the best checkpoint (`train.select_metric`)
SELECT_METRICS = ("val_macro_auroc", "val_final", "val_loss")

# The model choices with one line each: the light registry behind `eyefuse models` and config
# validation, so neither needs torch or timm (importing them takes seconds). The model modules
# attach their builders to these names (`eyefuse.models.attention.ATTENTION_TYPES`, ...).
ATTENTION_CHOICES: dict[str, str] = {
    "none": "no attention (the plain backbone)",
    "se": "squeeze-excitation channel gate, reduction 16",
    "eca": "efficient channel attention: 1-D conv across channels, adaptive size",
    "cbam": "CBAM: channel gate (avg+max MLP) then 7x7 spatial gate over channel mean and max",
    "residual_attention": (
        "the paper's block: SE channel gate then 7x7 spatial gate, added residually (x + gamma*x*M)"
    ),
}
PLACEMENT_CHOICES: dict[str, str] = {
    "last": "one attention module after the last stage (any backbone)",
    "all": "one attention module in every residual block, before the addition (timm ResNet family only)",
}
FUSION_CHOICES: dict[str, str] = {
    "concat": "pool each eye, concatenate (D = 2C)",
    "sum": "pool each eye, add (D = C)",
    "max": "pool each eye, element-wise maximum (D = C)",
    "mul": "pool each eye, element-wise product (D = C)",
    "ffm": "the paper's module: cat maps -> conv3x3-BN-ReLU -> conv1x1, x alpha, + eye mean, pool (D = C)",
    "cross_attention": (
        "each eye's feature tokens attend to the other eye's (8 heads, 256-d), pool, concatenate (D = 512)"
    ),
    "single": "no fusion: classify each eye alone; patient = either eye for diseases, both eyes for N "
    "(baseline)",
}
HEAD_CHOICES: dict[str, str] = {
    "sigmoid": "independent per-label probabilities (multi-label; BCE, focal or ASL loss)",
    "softmax": "the paper's softmax over the labels; decisions on softmax / its row maximum, "
    "rankings (AUROC) on the softmax",
}
#: timm names worth starting from, each checked to give a feature map (any timm CNN name works).
RECOMMENDED_BACKBONES: dict[str, str] = {
    "resnet50": "the paper's backbone (default); supports attention in every block",
    "resnet18": "small and fast ResNet, for quick runs and CPUs",
    "resnet34": "mid-size ResNet",
    "resnet101": "deeper ResNet",
    "resnext50_32x4d": "ResNeXt-50; supports attention in every block",
    "efficientnet_b0": "EfficientNet-B0 (attention placement last)",
    "efficientnet_b3": "EfficientNet-B3 (attention placement last)",
    "convnext_tiny": "ConvNeXt-T (attention placement last)",
}


def _section(title: str, rows: dict[str, str]) -> list[str]:
    width = max(len(k) for k in rows)
    return [title, *(f"  {k.ljust(width)}  {v}" for k, v in rows.items()), ""]


def describe_models() -> str:
    """The text of `eyefuse models`: backbones, attention types, placements, fusions, heads, presets.

    Built from the light registries above, without importing torch or timm, so that it answers at
    once; listing timm's own names is left to timm (`timm.list_models('resnet*')`)."""
    lines = _section(
        "Backbones (model.backbone): any timm model name that returns a feature map "
        "(`python -c \"import timm; print(timm.list_models('resnet*'))\"` lists timm's); recommended:",
        RECOMMENDED_BACKBONES,
    )
    lines += _section("Attention (model.attention):", ATTENTION_CHOICES)
    lines += _section("Attention placement (model.attention_placement):", PLACEMENT_CHOICES)
    lines += _section("Fusion of both eyes (model.fusion):", FUSION_CHOICES)
    lines += _section("Heads (model.head):", HEAD_CHOICES)
    presets = preset_names()
    lines.append(f"Presets (--config NAME): {', '.join(presets) if presets else '(none installed)'}")
    return "\n".join(lines)


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
        if self.enhance not in ENHANCE_CHOICES:
            raise ConfigError(
                f"preprocess.enhance must be one of {', '.join(ENHANCE_CHOICES)}, not {self.enhance!r}"
            )
        if not 16 <= self.size <= 4096:
            raise ConfigError(f"preprocess.size must be between 16 and 4096 pixels, not {self.size}")


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
    num_classes: int = 8


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
    amp: str = "auto"  #: auto | bf16 | fp16 | off (AMP only on CUDA)
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
        _choice("data.problem_images", self.data.problem_images, ("exclude", "keep"))
        _choice("augment.flip", self.augment.flip, ("mirror_swap", "none"))
        _choice("model.attention", self.model.attention, tuple(ATTENTION_CHOICES))
        _choice("model.attention_placement", self.model.attention_placement, tuple(PLACEMENT_CHOICES))
        _choice("model.fusion", self.model.fusion, tuple(FUSION_CHOICES))
        _choice("model.head", self.model.head, tuple(HEAD_CHOICES))
        _choice("loss.name", self.loss.name, ("bce", "focal", "asl"))
        _choice("train.optimizer", self.train.optimizer, ("adamw", "sgd"))
        _choice("train.amp", self.train.amp, ("auto", "bf16", "fp16", "off"))
        _choice("train.select_metric", self.train.select_metric, SELECT_METRICS)
        _choice("eval.threshold_method", self.eval.threshold_method, ("f1", "youden", "fixed"))
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


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")


def preset_names() -> list[str]:
    """Names of the presets shipped with eyefuse (`configs/*.yaml`)."""
    files = resources.files("eyefuse").joinpath("configs")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


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
        data = yaml.safe_load(text) or {}
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


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. a checkpoint's metadata)."""
    cfg = Config()
    _apply_dict(cfg, copy.deepcopy(d), source="saved config")
    return cfg


def _apply_dict(obj: Any, d: dict[str, Any], source: str, prefix: str = "") -> None:
    names = {f.name: f for f in fields(obj)}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown config key {full!r}")
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
            raise ConfigError(f"--set {item!r}: unknown config key {'.'.join(parts[: i + 1])!r}")
        if i < len(parts) - 1:
            obj = getattr(obj, part)
    if is_dataclass(getattr(obj, parts[-1])):
        raise ConfigError(f"--set {item!r}: {key!r} is a section; set one of its keys")
    value = yaml.safe_load(raw) if raw.strip() else ""
    setattr(obj, parts[-1], _coerce(value, _field_type(obj, parts[-1]), key, "--set"))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "ATTENTION_CHOICES",
    "FUSION_CHOICES",
    "HEAD_CHOICES",
    "PLACEMENT_CHOICES",
    "RECOMMENDED_BACKBONES",
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
    "describe_models",
    "load_config",
    "preset_names",
    "resume_config",
    "save_config",
]
