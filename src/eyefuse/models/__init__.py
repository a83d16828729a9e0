"""The binocular attention model: timm backbone + attention per eye, fusion of both eyes, multi-label head.

Building blocks sit behind string factories (`create_attention`, `create_fusion`), the whole model
behind one builder (`build_model`), after timm's model code.
"""

from __future__ import annotations

from eyefuse.models.attention import ATTENTION_TYPES, create_attention
from eyefuse.models.backbone import Backbone, WeightsReport, load_backbone_weights
from eyefuse.models.binocular import BinocularNet, build_model, count_parameters
from eyefuse.models.fusion import FUSION_TYPES, create_fusion

__all__ = [
    "ATTENTION_TYPES",
    "FUSION_TYPES",
    "Backbone",
    "BinocularNet",
    "WeightsReport",
    "build_model",
    "count_parameters",
    "create_attention",
    "create_fusion",
    "load_backbone_weights",
]
