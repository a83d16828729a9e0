"""The valid names of every choice a config or command line makes, each with one line for people.

Decision (issue 13, one registry per choice): the registries live here, in a module that imports
nothing of eyefuse's but `errors`, so the bottom layer (config validation, the CLI's --help and
`eyefuse models`) reads them without torch or timm. The modules that implement a choice build their
tables with `Registry.bind`, which refuses a name without an implementation or an implementation
without a name when they are imported; `tests/test_registry.py` checks every choice both ways.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import TypeVar

from eyefuse.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Registry:
    """The names one setting accepts, in the order they are listed, each with a one-line description.

    Iterating, `in` and `len` work on the names."""

    key: str  #: the setting it validates, named in errors (e.g. ``model.attention``)
    title: str  #: heading in `eyefuse models`
    entries: Mapping[str, str]  #: name -> one line

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def check(self, value: object, key: str | None = None) -> str:
        """`value` if it is a valid name; otherwise a `ConfigError` naming the setting (`key`, default
        `self.key`) and every valid name."""
        if not isinstance(value, str) or value not in self.entries:
            raise ConfigError(f"{key or self.key} must be one of {', '.join(self.entries)}, not {value!r}")
        return value

    def bind(self, implementations: Mapping[str, T]) -> dict[str, T]:
        """`implementations` in the registry's order, when they cover exactly its names.

        Raises:
            RuntimeError: a name without an implementation or the reverse (a bug, found at import).
        """
        missing = [n for n in self.entries if n not in implementations]
        unknown = [n for n in implementations if n not in self.entries]
        if missing or unknown:
            raise RuntimeError(
                f"{self.key}: names without an implementation {missing}, implementations without a "
                f"name {unknown} (eyefuse.registry and the implementing module disagree)"
            )
        return {n: implementations[n] for n in self.entries}


ATTENTION = Registry(
    "model.attention",
    "Attention (model.attention):",
    {
        "none": "no attention (the plain backbone)",
        "se": "squeeze-excitation channel gate, reduction 16",
        "eca": "efficient channel attention: 1-D conv across channels, adaptive size",
        "cbam": "CBAM: channel gate (avg+max MLP) then 7x7 spatial gate over channel mean and max",
        "residual_attention": (
            "the paper's block: SE channel gate then 7x7 spatial gate, added residually (x + gamma*x*M)"
        ),
    },
)
PLACEMENT = Registry(
    "model.attention_placement",
    "Attention placement (model.attention_placement):",
    {
        "last": "one attention module after the last stage (any backbone)",
        "all": "one attention module in every residual block, before the addition (timm ResNet family only)",
    },
)
FUSION = Registry(
    "model.fusion",
    "Fusion of both eyes (model.fusion):",
    {
        "concat": "pool each eye, concatenate (D = 2C)",
        "sum": "pool each eye, add (D = C)",
        "max": "pool each eye, element-wise maximum (D = C)",
        "mul": "pool each eye, element-wise product (D = C)",
        "ffm": (
            "the paper's module: cat maps -> conv3x3-BN-ReLU -> conv1x1, x alpha, + eye mean, pool (D = C)"
        ),
        "cross_attention": (
            "each eye's feature tokens attend to the other eye's (8 heads, 256-d), pool, "
            "concatenate (D = 512)"
        ),
        "single": "no fusion: classify each eye alone; patient = either eye for diseases, both eyes for N "
        "(baseline)",
    },
)
HEAD = Registry(
    "model.head",
    "Heads (model.head):",
    {
        "sigmoid": "independent per-label probabilities (multi-label; BCE, focal or ASL loss)",
        "softmax": "the paper's softmax over the labels; decisions on softmax / its row maximum, "
        "rankings (AUROC) on the softmax",
    },
)
TTA = Registry(
    "model.tta",
    "Test-time augmentation (model.tta; in eval mode only, so validation, calibration, evaluate, "
    "predict, serve and the ONNX export all use it):",
    {
        "none": "one forward pass per patient",
        "mirror_swap": "also the mirrored view (both eyes mirrored, sides swapped; what augment.flip "
        "trains on); logits averaged, doubling inference cost",
    },
)
LOSS = Registry(
    "loss.name",
    "Losses of the sigmoid head (loss.name; the softmax head always uses soft-target cross-entropy):",
    {
        "bce": "binary cross-entropy per label (loss.pos_weight: weighted by training-set frequencies)",
        "focal": "focal loss, Lin et al. 2017 (loss.focal_gamma)",
        "asl": "asymmetric loss, Ridnik et al. 2021 (loss.asl_gamma_neg, asl_gamma_pos, asl_clip)",
    },
)
THRESHOLD_METHOD = Registry(
    "eval.threshold_method",
    "Decision thresholds (eval.threshold_method):",
    {
        "f1": "per label, the threshold of the highest F1 on the validation split",
        "youden": "per label, the threshold of the highest Youden's J (sensitivity + specificity - 1)",
        "fixed": "0.5 for every label",
    },
)
ENHANCE = Registry(
    "preprocess.enhance",
    "Detail enhancement (preprocess.enhance):",
    {
        "graham": "Ben Graham's local contrast: weight x (image - Gaussian blur) + 128",
        "clahe": "CLAHE on the L channel of Lab",
        "none": "no enhancement",
    },
)
PROBLEM_IMAGES = Registry(
    "data.problem_images",
    "The 16 images whose background the hospital altered (data.problem_images):",
    {"exclude": "mark those eyes excluded (no usable photograph)", "keep": "use them as they are"},
)
FLIP = Registry(
    "augment.flip",
    "Flip augmentation (augment.flip):",
    {
        "mirror_swap": "mirror both eyes and swap their sides (a left eye mirrored is a right eye)",
        "none": "no flip",
    },
)
OPTIMIZER = Registry(
    "train.optimizer",
    "Optimizers (train.optimizer):",
    {"adamw": "AdamW (decoupled weight decay)", "sgd": "SGD with Nesterov momentum (train.momentum)"},
)
AMP = Registry(
    "train.amp",
    "Mixed precision (train.amp):",
    {
        "auto": "bf16 on CUDA where the GPU supports it, else fp16; on the CPU bf16 where it is native "
        "(AMX or AVX-512 BF16), else float32",
        "bf16": "bfloat16 autocast",
        "fp16": "float16 autocast with a gradient scaler (CUDA only)",
        "off": "float32 throughout",
    },
)
SELECT_METRIC = Registry(
    "train.select_metric",
    "Best-checkpoint figure (train.select_metric):",
    {
        "val_macro_auroc": "macro AUROC on validation (threshold-free, the least noisy; higher is better)",
        "val_final": "the official ODIR final at threshold 0.5 on validation (higher is better)",
        "val_loss": "validation loss (lower is better)",
    },
)

#: timm names worth starting from, each checked to give a feature map (any timm CNN name works).
RECOMMENDED_BACKBONES: Mapping[str, str] = MappingProxyType(
    {
        "resnet50": "the paper's backbone (default); supports attention in every block",
        "resnet18": "small and fast ResNet, for quick runs and CPUs",
        "resnet34": "mid-size ResNet",
        "resnet101": "deeper ResNet",
        "resnext50_32x4d": "ResNeXt-50; supports attention in every block",
        "efficientnet_b0": "EfficientNet-B0 (attention placement last)",
        "efficientnet_b3": "EfficientNet-B3 (attention placement last)",
        "convnext_tiny": "ConvNeXt-T (attention placement last)",
    }
)


def preset_names() -> list[str]:
    """Names of the config presets shipped with eyefuse (`eyefuse/configs/*.yaml`): the registry of
    presets is that folder."""
    files = resources.files("eyefuse").joinpath("configs")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def _section(title: str, rows: Mapping[str, str]) -> list[str]:
    width = max(len(k) for k in rows)
    return [title, *(f"  {k.ljust(width)}  {v}" for k, v in rows.items()), ""]


def describe_models() -> str:
    """The text of `eyefuse models`: backbones, attention types, placements, fusions, heads, losses
    and presets, from the registries above (no torch, no timm, so it answers at once; listing timm's
    own names is left to timm: `timm.list_models('resnet*')`)."""
    lines = _section(
        "Backbones (model.backbone): any timm model name that returns a feature map "
        "(`python -c \"import timm; print(timm.list_models('resnet*'))\"` lists timm's); recommended:",
        RECOMMENDED_BACKBONES,
    )
    for registry in (ATTENTION, PLACEMENT, FUSION, HEAD, TTA, LOSS):
        lines += _section(registry.title, registry.entries)
    presets = preset_names()
    lines.append(f"Presets (--config NAME): {', '.join(presets) if presets else '(none installed)'}")
    return "\n".join(lines)


__all__ = [
    "AMP",
    "ATTENTION",
    "ENHANCE",
    "FLIP",
    "FUSION",
    "HEAD",
    "LOSS",
    "OPTIMIZER",
    "PLACEMENT",
    "PROBLEM_IMAGES",
    "RECOMMENDED_BACKBONES",
    "SELECT_METRIC",
    "THRESHOLD_METHOD",
    "TTA",
    "Registry",
    "describe_models",
    "preset_names",
]
