"""The binocular attention model: timm backbone + attention per eye, fusion of both eyes, multi-label head.

Building blocks sit behind string factories (`create_attention`, `create_fusion`), the whole model
behind one builder (`build_model`), after timm's model code.
"""

from __future__ import annotations

from eyefuse.models.attention import ATTENTION_TYPES, create_attention
from eyefuse.models.backbone import PLACEMENTS, Backbone, WeightsReport, load_backbone_weights
from eyefuse.models.binocular import HEADS, BinocularNet, build_model, count_parameters
from eyefuse.models.fusion import FUSION_TYPES, create_fusion

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
    """The text of `eyefuse models`: backbones, attention types, placements, fusions, heads, presets."""
    import timm

    from eyefuse.config import preset_names

    lines = _section(
        f"Backbones (model.backbone): any timm model name that returns a feature map "
        f"({len(timm.list_models())} timm models; `timm.list_models('resnet*')` filters); recommended:",
        RECOMMENDED_BACKBONES,
    )
    lines += _section("Attention (model.attention):", {k: v[1] for k, v in ATTENTION_TYPES.items()})
    lines += _section("Attention placement (model.attention_placement):", PLACEMENTS)
    lines += _section("Fusion of both eyes (model.fusion):", {k: v[1] for k, v in FUSION_TYPES.items()})
    lines += _section("Heads (model.head):", HEADS)
    presets = preset_names()
    lines.append(f"Presets (--config NAME): {', '.join(presets) if presets else '(none installed)'}")
    return "\n".join(lines)


__all__ = [
    "ATTENTION_TYPES",
    "FUSION_TYPES",
    "HEADS",
    "PLACEMENTS",
    "RECOMMENDED_BACKBONES",
    "Backbone",
    "BinocularNet",
    "WeightsReport",
    "build_model",
    "count_parameters",
    "create_attention",
    "create_fusion",
    "describe_models",
    "load_backbone_weights",
]
