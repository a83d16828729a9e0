"""The whole binocular model: per-eye backbone (+ attention) -> fusion of both eyes -> multi-label head.

Use `build_model(cfg, label_names)`; it validates the settings, builds `BinocularNet` and loads the
backbone weights (timm's hub download or a local file). Inputs are two float batches ``B x 3 x H x W``
normalized with ``model.mean``/``model.std`` (`eyefuse.models.inputs.model_inputs` makes them from 0-255
pixels).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from eyefuse import ODIR_LABELS, registry
from eyefuse.config import ModelConfig
from eyefuse.errors import ConfigError
from eyefuse.models.attention import recording_allowed, spatial_gates
from eyefuse.models.backbone import Backbone, WeightsReport, load_backbone_weights, read_state_dict
from eyefuse.models.fusion import create_fusion, global_pool
from eyefuse.models.inputs import IMAGENET_MEAN, IMAGENET_STD

#: The label that means "nothing found": under the ODIR rule a patient has it only when both eyes do.
NORMAL_LABEL = "N"


class BinocularNet(nn.Module):
    """Two eyes -> patient logits, after Li et al. 2022 (ResNet-50 + attention, fusion, 8 labels).

    Build it with `build_model`. Modules: ``backbone`` (shared by both eyes) or ``backbone_left`` and
    ``backbone_right`` (``shared_backbone=False``), ``fusion``, ``head_drop`` + ``head``, and
    ``aux_head`` (one per-eye sigmoid classifier applied to each eye, when ``aux_eye_heads``; with the
    ``single`` fusion and the sigmoid head the head's own per-eye logits serve instead).

    Attributes:
        cfg: the `ModelConfig` it was built from.
        label_names: the output labels, in logit order (their number is the number of outputs).
        mean, std: per-channel input normalization (RGB, 0-1 scale) of the backbone's pretraining,
            ImageNet's for the ResNets.
        num_features: channels C of each eye's feature map.
        weights_report: what loading a local weights file did (None otherwise).
    """

    def __init__(self, cfg: ModelConfig, label_names: Sequence[str], *, pretrained: bool = False):
        super().__init__()
        self.cfg = cfg
        self.label_names: tuple[str, ...] = tuple(label_names)
        self.weights_report: WeightsReport | None = None
        first = Backbone(cfg.backbone, cfg.attention, cfg.attention_placement, pretrained=pretrained)
        pcfg = getattr(first.body, "pretrained_cfg", None) or {}
        self.mean: tuple[float, ...] = tuple(float(v) for v in pcfg.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(float(v) for v in pcfg.get("std", IMAGENET_STD))
        self.num_features = first.num_features
        self.shared = cfg.shared_backbone
        if self.shared:
            self.backbone = first
        else:
            self.backbone_left = first
            self.backbone_right = copy.deepcopy(first)  # same start (incl. weights loaded later)
        self.fusion = create_fusion(cfg.fusion, self.num_features)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.fusion.out_dim, len(self.label_names))
        # With `single` fusion and a sigmoid head the head already gives each eye sigmoid logits: they
        # are the auxiliary ones. A softmax head's per-eye logits are not sigmoid logits (the auxiliary
        # loss is a BCE), so it gets its own per-eye sigmoid classifier like every other fusion.
        self.aux_head = (
            nn.Linear(self.num_features, len(self.label_names))
            if cfg.aux_eye_heads and not (self.fusion.per_eye and cfg.head == "sigmoid")
            else None
        )
        #: Column of the normal label (`NORMAL_LABEL`), or None when the labels have none.
        self.normal_index: int | None = (
            self.label_names.index(NORMAL_LABEL) if NORMAL_LABEL in self.label_names else None
        )
        self._map_batch = 0
        self._map_views = 1  # 2 when the last forward ran the mirrored view too (`model.tta`)

    # --- structure -----------------------------------------------------------------------------

    def backbones(self) -> dict[str, Backbone]:
        """``{"shared": backbone}`` or ``{"left": ..., "right": ...}``."""
        if self.shared:
            return {"shared": self.backbone}
        return {"left": self.backbone_left, "right": self.backbone_right}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"backbone"``: the (pre)trained backbone weights; ``"new"``: attention, fusion and heads.

        For layer-wise learning rates: the attention inserted into the backbone is new and belongs
        with the fusion and heads, not with the pretrained weights.
        """
        prefixes = ("backbone",) if self.shared else ("backbone_left", "backbone_right")
        new_names = {
            f"{prefix}.{n}" for prefix in prefixes for n in getattr(self, prefix).new_parameter_names()
        }
        in_backbone = tuple(f"{prefix}." for prefix in prefixes)
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "new": []}
        for name, p in self.named_parameters():
            pretrained = name.startswith(in_backbone) and name not in new_names
            groups["backbone" if pretrained else "new"].append(p)
        return groups

    # --- forward -------------------------------------------------------------------------------

    def forward_features(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each eye's last feature map ``B x C x h x w`` (after the last-stage attention).

        A shared backbone runs once on the two eyes concatenated along the batch (one call, better
        GPU use, one set of BatchNorm statistics), then the output is split.
        """
        if left.ndim != 4 or left.shape != right.shape:
            raise ValueError(
                f"left and right must be B x 3 x H x W batches of the same shape, got {tuple(left.shape)} "
                f"and {tuple(right.shape)}"
            )
        batch = left.shape[0]
        if self.shared:
            # Slicing, not .split(batch): the ONNX exporter would freeze the batch size at a split.
            both = self.backbone(torch.cat([left, right], dim=0))
            feat_left, feat_right = both[:batch], both[batch:]
        else:
            feat_left, feat_right = self.backbone_left(left), self.backbone_right(right)
        if recording_allowed():
            self._map_batch = batch
        return feat_left, feat_right

    def forward_head(self, fused: torch.Tensor) -> torch.Tensor:
        """Classifier on the fused patient vector ``... x D`` -> logits ``... x L``."""
        return self.head(self.head_drop(fused))

    def forward(
        self,
        left: torch.Tensor,
        right: torch.Tensor,
        left_present: torch.Tensor | None = None,
        right_present: torch.Tensor | None = None,
        return_features: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Patient logits from both eyes.

        Args:
            left, right: normalized float images ``B x 3 x H x W`` (same shape).
            left_present, right_present: bool ``(B,)``; where an eye is absent its features are
                replaced by the other eye's before fusion (so every fusion works with one eye; the
                absent image's pixels do not matter in eval mode; in training mode they still enter
                the BatchNorm batch statistics). Both absent for a patient is a ValueError.
            return_features: also return ``left_features``/``right_features``, each eye's own last
                feature map (before the missing-eye replacement), still attached to the graph. For
                Grad-CAM of both eyes from one backward pass::

                    out = model(left, right, return_features=True)
                    gl, gr = torch.autograd.grad(out["logits"][:, k].sum(),
                                                 [out["left_features"], out["right_features"]])

        Returns:
            ``logits`` (B x L); with ``aux_eye_heads`` also ``left_logits``, ``right_logits``
            (B x L, each eye alone; for an absent eye they are the other eye's, so mask that eye's
            auxiliary loss). With ``single`` fusion ``logits`` combines the per-eye logits by the
            ODIR rule (`combine_eye_logits`). In eval mode with ``model.tta = "mirror_swap"`` each
            logit is the mean of the photographs as given and of the mirrored view (both eyes mirrored,
            sides swapped), computed in one call on a doubled batch; the features (and the spatial
            attention maps) are those of the photographs as given.
        """
        views = 1 if self.training or self.cfg.tta == "none" else 2
        batch = left.shape[0]
        if views == 2:
            # The mirrored view: both eyes mirrored and their sides swapped (a mirrored right eye
            # looks like a left one), run in the same call as a second half of the batch.
            left, right = torch.cat([left, right.flip(-1)]), torch.cat([right, left.flip(-1)])
            if left_present is not None or right_present is not None:
                lp, rp = self._presence(batch, left_present, right_present, left.device)
                left_present, right_present = torch.cat([lp, rp]), torch.cat([rp, lp])
        feat_left, feat_right = self.forward_features(left, right)
        if recording_allowed():
            self._map_views = views
        out: dict[str, torch.Tensor] = {}
        if return_features:
            if views == 2:
                # The first view's maps as tensors of their own in the graph, so that Grad-CAM can
                # differentiate the averaged logits with respect to them.
                first_left, first_right = feat_left[:batch], feat_right[:batch]
                feat_left = torch.cat([first_left, feat_left[batch:]])
                feat_right = torch.cat([first_right, feat_right[batch:]])
                out["left_features"], out["right_features"] = first_left, first_right
            else:
                out["left_features"], out["right_features"] = feat_left, feat_right
        feat_left, feat_right = self._fill_missing(feat_left, feat_right, left_present, right_present)
        fused = self.fusion(feat_left, feat_right)
        if self.fusion.per_eye:
            eye_logits = self.forward_head(fused)  # 2 x B x L
            out["logits"] = combine_eye_logits(eye_logits[0], eye_logits[1], self.cfg.head, self.normal_index)
            if self.aux_head is not None:
                out["left_logits"] = self.aux_head(global_pool(feat_left))
                out["right_logits"] = self.aux_head(global_pool(feat_right))
            elif self.cfg.aux_eye_heads:
                out["left_logits"], out["right_logits"] = eye_logits[0], eye_logits[1]
        else:
            out["logits"] = self.forward_head(fused)
            if self.aux_head is not None:
                out["left_logits"] = self.aux_head(global_pool(feat_left))
                out["right_logits"] = self.aux_head(global_pool(feat_right))
        if views == 2:
            # Average the two views' logits; a per-eye logit of the mirrored view sits on the other side.
            logits = out["logits"]
            out["logits"] = (logits[:batch] + logits[batch:]) / 2
            if "left_logits" in out:
                lo, ro = out["left_logits"], out["right_logits"]
                out["left_logits"] = (lo[:batch] + ro[batch:]) / 2
                out["right_logits"] = (ro[:batch] + lo[batch:]) / 2
        return out

    @staticmethod
    def _presence(
        batch: int,
        left_present: torch.Tensor | None,
        right_present: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both presence masks as bool ``(batch,)`` on `device` (None: present), checked: the shape,
        and at least one eye per patient."""
        masks = []
        for name, mask in (("left_present", left_present), ("right_present", right_present)):
            if mask is None:
                mask = torch.ones(batch, dtype=torch.bool, device=device)
            elif mask.shape != (batch,):
                raise ValueError(f"{name} must have shape ({batch},), got {tuple(mask.shape)}")
            masks.append(mask.to(device=device, dtype=torch.bool))
        lp, rp = masks
        neither = ~(lp | rp)
        # A check on tensor values cannot be traced; it runs in eager use, not while exporting.
        if recording_allowed() and bool(neither.any()):
            raise ValueError(
                f"both eyes absent for batch rows {neither.nonzero().flatten().tolist()}: "
                "a patient needs at least one eye"
            )
        return lp, rp

    @staticmethod
    def _fill_missing(
        feat_left: torch.Tensor,
        feat_right: torch.Tensor,
        left_present: torch.Tensor | None,
        right_present: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if left_present is None and right_present is None:
            return feat_left, feat_right
        lp, rp = BinocularNet._presence(feat_left.shape[0], left_present, right_present, feat_left.device)
        new_left = torch.where(lp.view(-1, 1, 1, 1), feat_left, feat_right)
        new_right = torch.where(rp.view(-1, 1, 1, 1), feat_right, feat_left)
        return new_left, new_right

    # --- outputs ---------------------------------------------------------------------------------

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-label decision scores in [0, 1] from logits (``... x L``): see `head_probabilities`."""
        return head_probabilities(logits, self.cfg.head)

    def ranking_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities for ranking metrics (AUROC, AUPRC): see `ranking_probabilities`."""
        return ranking_probabilities(logits, self.cfg.head)

    def spatial_attention_maps(self) -> dict[str, dict[str, torch.Tensor]]:
        """The last forward pass's spatial attention maps, per eye.

        Returns ``{"left": {module_name: B x 1 x h x w}, "right": {...}}`` (values in (0, 1),
        detached); empty dicts when the attention has no spatial gate (``none``, ``se``, ``eca``).
        Module names are relative to the backbone (e.g. ``attn.spatial`` for placement ``last``,
        ``body.layer4.2.se.spatial`` for ``all``). A shared backbone ran on ``[left; right]``: its
        maps are split at the batch size of that call.
        """
        maps: dict[str, dict[str, torch.Tensor]] = {"left": {}, "right": {}}
        for key, backbone in self.backbones().items():
            for name, gate in spatial_gates(backbone).items():
                m = gate.last_map
                if m is None:
                    continue
                if key == "shared":
                    if m.shape[0] != 2 * self._map_batch:
                        raise RuntimeError(
                            f"spatial map {name} has batch {m.shape[0]}, not 2 x {self._map_batch}: the "
                            "backbone was called outside BinocularNet.forward"
                        )
                    maps["left"][name], maps["right"][name] = m[: self._map_batch], m[self._map_batch :]
                else:
                    maps[key][name] = m
        if self._map_views > 1:  # only the photographs as given, not the mirrored view
            first = self._map_batch // self._map_views
            maps = {side: {n: m[:first] for n, m in side_maps.items()} for side, side_maps in maps.items()}
        return maps


def combine_eye_logits(
    left: torch.Tensor, right: torch.Tensor, head: str, normal_index: int | None
) -> torch.Tensor:
    """Patient logits (``B x L``) from each eye's logits by the ODIR rule, for the ``single`` fusion.

    A patient has a disease when either eye has it (maximum over the eyes) and is normal only when
    both eyes are (minimum over the eyes for the label at ``normal_index``; None: no such label).
    The combination is taken on quantities whose order is the probabilities' order, so it is the
    rule applied to probabilities and stays differentiable (a subgradient, like ReLU):

    - ``sigmoid``: the sigmoid is increasing, so the logit of max(p_left, p_right) is the maximum of
      the logits, and the logit of the minimum is the minimum;
    - ``softmax``: raw logits carry an arbitrary per-eye offset (the softmax ignores it), so each eye
      is first turned into log-probabilities (``log_softmax``), which are combined the same way; the
      patient's softmax then renormalizes the combined per-eye probabilities.

    A missing eye must not count: `BinocularNet` replaces its features by the other eye's, so both
    eyes' logits are equal and either rule returns the present eye's own values.
    """
    if head == "softmax":
        left, right = torch.log_softmax(left, dim=-1), torch.log_softmax(right, dim=-1)
    elif head != "sigmoid":
        raise ValueError(f"unknown head {head!r}")
    out = torch.maximum(left, right)
    if normal_index is None:
        return out
    is_normal = torch.arange(left.shape[-1], device=left.device) == normal_index
    return torch.where(is_normal, torch.minimum(left, right), out)


def ranking_probabilities(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Per-label probabilities in [0, 1] for ranking metrics (AUROC, AUPRC, the official pooled AUC).

    ``sigmoid``: the sigmoid (the same as `head_probabilities`). ``softmax``: the softmax itself. The
    decision scores of the softmax head (softmax / its row maximum) give every patient's top label
    exactly 1.0, which ties patients that the softmax still orders and lowers AUROC; so rankings use
    the softmax and thresholds and decisions use `head_probabilities`.
    """
    if head == "sigmoid":
        return torch.sigmoid(logits)
    if head != "softmax":
        raise ValueError(f"unknown head {head!r}")
    return torch.softmax(logits, dim=-1)


def head_probabilities(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Per-label decision scores in [0, 1] from logits (``... x L``) by the head's rule.

    ``sigmoid`` head: the sigmoid. ``softmax`` head: the softmax divided by its row maximum. The
    paper classifies the 8 labels with a softmax, but a patient can have several labels: a softmax
    spreads the mass over them (k equally likely labels get 1/k each, which a 0.5 threshold would
    miss for k >= 2). Dividing by the row maximum keeps the ranking within a patient and gives 1.0
    to each of k labels that share the mass equally, so thresholds mean the same for one label or
    several. It ties every patient's top label at 1.0, so ranking metrics across patients use
    `ranking_probabilities` instead.
    """
    if head == "sigmoid":
        return torch.sigmoid(logits)
    if head != "softmax":
        raise ValueError(f"unknown head {head!r}")
    p = torch.softmax(logits, dim=-1)
    return p / p.amax(dim=-1, keepdim=True)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``trainable`` and, for a `BinocularNet`, ``backbone`` (weights a
    pretrained file provides), ``attention`` (inserted into the backbone), ``fusion`` and ``head``
    (classifier + auxiliary per-eye head)."""
    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if isinstance(model, BinocularNet):
        groups = model.parameter_groups()
        fusion = sum(p.numel() for p in model.fusion.parameters())
        counts["backbone"] = sum(p.numel() for p in groups["backbone"])
        counts["fusion"] = fusion
        counts["head"] = sum(
            p.numel() for m in (model.head, model.aux_head) if m is not None for p in m.parameters()
        )
        counts["attention"] = sum(p.numel() for p in groups["new"]) - fusion - counts["head"]
    return counts


def build_model(
    cfg: ModelConfig, label_names: Sequence[str] | None = None, *, load_weights: bool = True
) -> BinocularNet:
    """Validate ``cfg``, build a `BinocularNet` and load its backbone weights.

    Args:
        cfg: the model settings.
        label_names: output labels, one output each (a dataset carries its own labels); default the
            8 ODIR labels.
        load_weights: False skips both the hub download and ``cfg.weights`` (restoring a checkpoint,
            which provides every weight itself).

    Weights: ``cfg.weights`` -> `load_backbone_weights` (into both backbones when not shared);
    otherwise ``cfg.pretrained`` -> timm's hub download (a `CheckpointError` with a hint when offline).
    """
    names = ODIR_LABELS if label_names is None else tuple(str(n) for n in label_names)
    if not names:
        raise ConfigError("the model needs at least one label name")
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate label names: {', '.join(names)}")
    # Every choice is checked before anything is built or downloaded.
    registry.ATTENTION.check(cfg.attention)
    registry.PLACEMENT.check(cfg.attention_placement)
    registry.FUSION.check(cfg.fusion)
    registry.HEAD.check(cfg.head)
    registry.TTA.check(cfg.tta)
    if not 0.0 <= cfg.drop_rate < 1.0:
        raise ConfigError(f"model.drop_rate must be in [0, 1), not {cfg.drop_rate}")
    use_file = load_weights and bool(cfg.weights)
    model = BinocularNet(cfg, names, pretrained=load_weights and cfg.pretrained and not cfg.weights)
    if use_file:
        assert cfg.weights is not None
        state = read_state_dict(cfg.weights)
        reports = [load_backbone_weights(bb, cfg.weights, state) for bb in model.backbones().values()]
        model.weights_report = reports[0]
    return model


__all__ = [
    "NORMAL_LABEL",
    "BinocularNet",
    "build_model",
    "combine_eye_logits",
    "count_parameters",
    "head_probabilities",
    "ranking_probabilities",
]
