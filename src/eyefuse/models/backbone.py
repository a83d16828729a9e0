"""The per-eye feature extractor: any timm CNN, with attention inserted, and its weight loading.

``Backbone(name, attention, placement)`` wraps ``timm.create_model(name, num_classes=0,
global_pool="")`` and returns its last feature map (``B x C x h x w``). Attention goes either

- ``last``: one module after the last stage (works for every backbone; this is where the paper's
  residual attention block sits, at the end of the last ResNet stage), or
- ``all``: one module in every residual block, after the block's last BatchNorm and before the
  addition (timm's ``attn_layer`` position, i.e. SE-ResNet style). Only timm ResNet-family models
  (ResNet, ResNeXt, Wide ResNet, ResNet-D/T, ...) have those blocks.

Head-only layers that ``forward_features`` never runs (e.g. MobileNetV3's ``conv_head``) are removed
at construction: they would receive no gradient, which breaks DistributedDataParallel.

Weights: ``pretrained=True`` uses timm's hub download; ``load_backbone_weights`` reads a local file
(safetensors, or a torchvision/timm ``.pth``/``.pt``/``.bin`` state dict, never arbitrary pickles).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from eyefuse.errors import CheckpointError, ConfigError
from eyefuse.models.attention import create_attention
from eyefuse.registry import PLACEMENT

#: Prefixes stripped from weight-file keys: DataParallel/DDP, Lightning-style and wrapper modules.
STRIP_PREFIXES = ("module.", "backbone.", "body.", "model.", "_orig_mod.")

_WEIGHTS_HINT = (
    "pass a local weights file with --weights FILE (a safetensors file, or a torchvision/timm state dict "
    "saved with torch.save) or train from scratch with --set model.pretrained=false"
)

# Probe sizes for finding the feature map: small first (cheap); a model's own size if it needs one.
_PROBE_SIZES = (64, None)


@dataclass
class WeightsReport:
    """What `load_backbone_weights` did: loaded tensors, newly initialised and dropped keys."""

    path: str
    loaded: int
    newly_initialised: list[str] = field(default_factory=list)  #: attention keys not in the file
    dropped: list[str] = field(default_factory=list)  #: classifier/head keys in the file, not used

    def __str__(self) -> str:
        return (
            f"{self.path}: loaded {self.loaded} tensors, {len(self.newly_initialised)} newly initialised "
            f"(attention), {len(self.dropped)} classifier/head tensors dropped"
        )


class Backbone(nn.Module):
    """A timm model's feature extractor with optional attention; ``forward(x) -> B x C x h x w``.

    Args:
        name: any timm model name (``timm.list_models()``); it must be a CNN returning a feature map.
        attention: ``none | se | eca | cbam | residual_attention``.
        placement: ``last`` or ``all`` (see module docstring).
        pretrained: load ImageNet weights through timm's hub (needs the network or timm's cache).

    Attributes:
        body: the timm model (attention inserted into its blocks as ``<block>.se`` for ``all``).
        attn: the attention after the last stage (Identity unless ``placement='last'``).
        num_features: channels C of the output map.
        attention_prefixes: qualified names (relative to ``body``) of attention modules inside it.
        removed_prefixes: names of head-only modules removed from ``body``.
    """

    def __init__(self, name: str, attention: str = "none", placement: str = "last", pretrained: bool = False):
        super().__init__()
        PLACEMENT.check(placement)
        self.name = name
        self.body = _create_timm(name, pretrained)
        self.removed_prefixes = _remove_unused_modules(self.body, name)
        self.num_features = int(self.body.num_features)
        self.attention_prefixes: tuple[str, ...] = ()
        self.attn: nn.Module = nn.Identity()
        if attention != "none" and placement == "all":
            self.attention_prefixes = _insert_block_attention(self.body, name, attention)
        else:
            # Validates the name for `none` too, so a typo is reported whatever the placement.
            self.attn = create_attention(attention, self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.body.forward_features(x))

    def new_parameter_names(self) -> list[str]:
        """Names (relative to this module) of parameters that no pretrained weight file provides."""
        prefixes = (*(f"body.{p}." for p in self.attention_prefixes), "attn.")
        return [n for n, _ in self.named_parameters() if n.startswith(prefixes)]


def _create_timm(name: str, pretrained: bool) -> nn.Module:
    if not timm.is_model(name):
        raise ConfigError(
            f"model.backbone {name!r} is not a timm model name: see `eyefuse models` or timm.list_models()"
        )
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, global_pool="")
    except Exception as e:  # the name is known to be valid: whatever fails here is fetching the weights
        raise CheckpointError(
            f"could not download the ImageNet weights of backbone {name!r} through timm "
            f"({type(e).__name__}: {e}); {_WEIGHTS_HINT}"
        ) from e


def _remove_unused_modules(body: nn.Module, name: str) -> tuple[str, ...]:
    """Run ``forward_features`` once on a small probe and drop the parameter-holding modules it never
    touched (classifier-side layers). Also checks that the output is a ``B x C x h x w`` map."""
    ran: set[str] = set()
    holders = {
        n: m
        for n, m in body.named_modules()
        if n
        and (
            next(m.parameters(recurse=False), None) is not None
            or next(m.buffers(recurse=False), None) is not None
        )
    }
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: ran.add(n)) for n, m in holders.items()]
    was_training = body.training
    body.eval()
    out, error = None, None
    try:
        with torch.no_grad():
            for size in _PROBE_SIZES:
                side = size or int(body.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
                try:
                    out = body.forward_features(torch.zeros(1, 3, side, side))
                    break
                except Exception as e:  # a fixed-size model (e.g. a ViT) rejects the small probe
                    error = e
                    ran.clear()
    finally:
        for h in handles:
            h.remove()
        body.train(was_training)
    if out is None:
        raise ConfigError(f"model.backbone {name!r}: forward_features failed on a probe image ({error})")
    if out.ndim != 4 or out.shape[1] != body.num_features:
        raise ConfigError(
            f"model.backbone {name!r} returns features of shape {tuple(out.shape)}, not a B x C x h x w map "
            f"with C = {body.num_features}: eyefuse needs a convolutional backbone"
        )
    unused = [n for n in holders if n not in ran]
    # Keep only the outermost unused modules, and replace each by Identity (it is never called).
    removed = [n for n in unused if not any(n.startswith(f"{u}.") for u in unused if u != n)]
    for n in removed:
        parent_name, _, child = n.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        setattr(parent, child, nn.Identity())
    return tuple(removed)


def _insert_block_attention(body: nn.Module, name: str, attention: str) -> tuple[str, ...]:
    """Put an attention module into every ResNet block's ``se`` slot (applied before the addition)."""
    if not isinstance(body, ResNet):
        raise ConfigError(
            f"model.attention_placement=all needs a timm ResNet-family backbone (resnet*, resnext*, "
            f"wide_resnet*, ...), not {name!r}: use model.attention_placement=last"
        )
    inserted = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for idx, block in enumerate(getattr(body, stage)):
            if isinstance(block, Bottleneck):
                channels = block.bn3.num_features
            elif isinstance(block, BasicBlock):
                channels = block.bn2.num_features
            else:
                raise ConfigError(
                    f"model.backbone {name!r}: block {stage}.{idx} is a {type(block).__name__}, not a "
                    "ResNet BasicBlock/Bottleneck; use model.attention_placement=last"
                )
            if block.se is not None:
                raise ConfigError(
                    f"model.backbone {name!r} already has attention ({type(block.se).__name__}) in every "
                    "block; use model.attention_placement=last or a plain ResNet"
                )
            block.se = create_attention(attention, channels)
            inserted.append(f"{stage}.{idx}.se")
    return tuple(inserted)


# --- weight files ----------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``name -> tensor`` dict (nesting and prefixes removed).

    Accepts safetensors, or ``.pth/.pt/.bin`` holding a state dict, possibly nested under
    ``"state_dict"`` or ``"model"``; loaded with ``weights_only=True`` so no code is ever unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            state: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"weights file {path}: not a readable safetensors file ({e})") from e
    elif suffix in (".pth", ".pt", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            raise CheckpointError(
                f"weights file {path}: not a plain state dict that can be read safely "
                f"(torch.load weights_only=True: {str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from e
    else:
        raise CheckpointError(
            f"weights file {path}: unknown format {suffix or '(no suffix)'!r}; "
            "use .safetensors, .pth, .pt or .bin"
        )
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"weights file {path}: expected a state dict (name -> tensor), found {type(state).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"weights file {path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        out[_strip_prefixes(str(key))] = value
    return out


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for p in STRIP_PREFIXES:
            if key.startswith(p):
                key, stripped = key[len(p) :], True
    return key


def _classifier_prefixes(body: nn.Module, removed: Iterable[str]) -> tuple[str, ...]:
    names = body.pretrained_cfg.get("classifier") or ()
    if isinstance(names, str):
        names = (names,)
    # "fc" is torchvision's ResNet classifier; timm's ResNet names it the same (the two layouts are
    # otherwise identical: conv1, bn1, layer1..4 with conv/bn/downsample names, so no renaming).
    return tuple(f"{n}." for n in (*names, "fc", *removed))


def _listing(keys: list[str], limit: int = 10) -> str:
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_backbone_weights(
    backbone: Backbone, path: str | Path, state: Mapping[str, torch.Tensor] | None = None
) -> WeightsReport:
    """Load a local weights file into ``backbone.body``; only attention may be left newly initialised.

    Checks, each a `CheckpointError` naming the file: any backbone tensor missing from the file (up
    to 10 listed), keys the model does not have (other than the classifier, which is dropped), shape
    mismatches. Missing BatchNorm ``num_batches_tracked`` counters are allowed (older files).

    Args:
        backbone: the `Backbone` to fill.
        path: the weights file (named in messages).
        state: an already read state dict (to fill several backbones from one read).
    """
    state = dict(read_state_dict(path) if state is None else state)
    body = backbone.body
    target = body.state_dict()
    drop = _classifier_prefixes(body, backbone.removed_prefixes)
    dropped = sorted(k for k in state if k.startswith(drop) and k not in target)
    for k in dropped:
        del state[k]
    attention = tuple(f"{p}." for p in backbone.attention_prefixes)
    unexpected = sorted(k for k in state if k not in target)
    if unexpected:
        raise CheckpointError(
            f"weights file {path} does not fit backbone {backbone.name!r}: "
            f"{len(unexpected)} unexpected keys: {_listing(unexpected)}"
        )
    missing = [k for k in target if k not in state]
    new = [k for k in missing if k.startswith(attention)]
    not_new = [k for k in missing if k not in new and not k.endswith("num_batches_tracked")]
    if not_new:
        raise CheckpointError(
            f"weights file {path} does not fit backbone {backbone.name!r}: {len(not_new)} backbone tensors "
            f"missing: {_listing(not_new)}"
        )
    mismatched = [
        f"{k} {tuple(v.shape)} in file vs {tuple(target[k].shape)} in model"
        for k, v in state.items()
        if v.shape != target[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"weights file {path} does not fit backbone {backbone.name!r}: "
            f"{len(mismatched)} shape mismatches: {_listing(mismatched, 5)}"
        )
    body.load_state_dict(state, strict=False)
    newly = [f"body.{k}" for k in new] + [f"attn.{n}" for n, _ in backbone.attn.named_parameters()]
    return WeightsReport(path=str(path), loaded=len(state), newly_initialised=newly, dropped=dropped)


__all__ = [
    "Backbone",
    "WeightsReport",
    "load_backbone_weights",
    "read_state_dict",
]
