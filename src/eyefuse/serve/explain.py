"""Grad-CAM per eye through the two-branch model, spatial attention maps, and the pointing game.

Over 500 lines on purpose: one job, explaining a decision, whose parts (the two-branch Grad-CAM,
the joint normalization of both eyes, the attention maps, and the overlays drawn from them) share
the map geometry (field-of-view square, stage resolution) that a split would have to pass around.

Grad-CAM (Selvaraju et al. 2017) is computed on each eye's last feature map (after the last-stage
attention, before fusion), or with `layer="previous"` on the output of the stage before it, whose
map is twice as fine (10 x 10 instead of 5 x 5 at 160 px): a map's peak can only fall on one of
its cells' centres, so the finer map points better at small lesions (see the pointing game).
ONE forward pass of the patient, then ONE backward pass per explained label gives both eyes' maps
at once: the target is that label's logit (summed over the batch), and
`torch.autograd.grad` returns the gradients with respect to the left and the right feature maps
together. Per eye: channel weights = spatially averaged gradients, map = ReLU(sum of weighted
channels), upsampled (bilinear) to the preprocessed image (the field-of-view crop the model saw).

Decisions where the task left room:
- The two eyes' maps of a label are normalized JOINTLY to [0, 1] (divided by the larger of the two
  maxima), not each to its own maximum: a per-eye normalization would paint the eye that did not
  contribute as hot as the one that did. With joint normalization the colours say which eye drove
  the decision. A label with no positive evidence in either eye gives an all-zero map.
- An absent (or unusable) eye has no map; its panel says so. The model replaces its features by the
  other eye's, so all the gradient flows to the present eye.
- `attention.png` shows the deepest spatial attention gate of each eye (the one nearest the
  decision; with placement `all` there is one per block), normalized jointly over the two eyes like
  Grad-CAM; the raw gate range is recorded in `explanation.json`.
- Pointing game (Zhang et al. 2016): a hit when the map's peak lies inside the lesion mask dilated
  by `tolerance` pixels (default 15, the original protocol's tolerance), which forgives a peak on
  the rim of a small lesion; ties go to the first maximum in row-major order, so a flat map scores a
  hit only by chance of position.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eyefuse import ODIR_LABEL_NAMES, ODIR_LABELS
from eyefuse.config import PreprocessConfig
from eyefuse.data.fov import fov_square
from eyefuse.errors import CheckpointError, ConfigError, DataError
from eyefuse.models.checkpoint import DEFAULT_THRESHOLD, calibrated_probabilities
from eyefuse.models.inputs import model_inputs
from eyefuse.serve.predict import SIDES, EyeSource, Predictor, pair_id_from_files
from eyefuse.utils.io import atomic_write_bytes, atomic_write_json

#: Weight of the heat map in the overlay (the photograph gets 1 - OVERLAY_ALPHA).
OVERLAY_ALPHA = 0.4
#: Default pointing-game tolerance in pixels of the preprocessed image.
POINTING_TOLERANCE = 15
#: Feature maps Grad-CAM can use: the backbone's last (after its attention) or the stage before.
CAM_LAYERS = ("last", "previous")
#: Panels are drawn at least this many pixels wide so that the titles stay readable.
MIN_PANEL = 256
_FONT = cv2.FONT_HERSHEY_SIMPLEX


# --- Grad-CAM -----------------------------------------------------------------------------------


def grad_cam(
    model: nn.Module,
    left: torch.Tensor,
    right: torch.Tensor,
    left_present: torch.Tensor,
    right_present: torch.Tensor,
    label_indices: Sequence[int],
) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Raw (un-normalized) Grad-CAM maps of both eyes for each label, from one forward pass and one
    backward pass per label.

    Args:
        model: a `BinocularNet` in eval mode.
        left, right: normalized images `B x 3 x S x S`.
        left_present, right_present: bool `(B,)`.
        label_indices: the logits to explain.

    Returns:
        `{k: (left map B x h x w, right map B x h x w)}` (ReLU applied, not normalized) and the
        logits `B x L` of the forward pass (detached).
    """
    with torch.enable_grad():
        out = model(left, right, left_present, right_present, return_features=True)
        return backward_maps(out, label_indices), out["logits"].detach()


def backward_maps(
    out: Mapping[str, torch.Tensor], label_indices: Sequence[int]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Grad-CAM maps from the output of `model(..., return_features=True)`: one backward pass per
    label (`torch.autograd.grad` of the label's logit summed over the batch, with respect to both
    eyes' feature maps at once)."""
    maps = _cam_maps(out["logits"], [out["left_features"], out["right_features"]], label_indices)
    return {k: (m[0], m[1]) for k, m in maps.items()}


def _cam_maps(
    logits: torch.Tensor, features: Sequence[torch.Tensor], label_indices: Sequence[int]
) -> dict[int, list[torch.Tensor]]:
    """Grad-CAM maps `N x h x w` of every tensor of `features` (each `N x C x h x w`, part of the
    graph of `logits`) for each label: one backward pass per label for all tensors together."""
    cams: dict[int, list[torch.Tensor]] = {}
    with torch.enable_grad():
        for n, k in enumerate(label_indices):
            grads = torch.autograd.grad(
                logits[:, k].sum(), list(features), retain_graph=n < len(label_indices) - 1, allow_unused=True
            )
            maps = []
            for feat, grad in zip(features, grads, strict=True):
                if grad is None:  # that eye's features did not reach the logit
                    grad = torch.zeros_like(feat)
                weights = grad.mean(dim=(2, 3), keepdim=True)
                maps.append(F.relu((weights * feat).sum(dim=1)).detach())
            cams[k] = maps
    return cams


def _previous_stage(backbone: nn.Module) -> nn.Module:
    """The module whose output is the backbone's second-to-last feature stage (timm's
    `feature_info`), i.e. the input of the last stage."""
    info = list(getattr(backbone.body, "feature_info", None) or [])
    if len(info) < 2 or info[-2].get("reduction", 0) >= info[-1].get("reduction", 0):
        raise ConfigError(
            f"backbone {backbone.name!r} has no earlier feature stage to explain with; use layer='last'"
        )
    return backbone.body.get_submodule(info[-2]["module"])


@contextlib.contextmanager
def capture_previous_stage(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every forward pass of `model` appends the output of the stage before its
    backbone's last to the yielded list (one tensor with a shared backbone: left then right along
    the batch; two with separate backbones: left, right)."""
    backbones = [model.backbone] if model.shared else [model.backbone_left, model.backbone_right]
    captured: list[torch.Tensor] = []
    hooks = [
        _previous_stage(b).register_forward_hook(lambda _m, _i, output: captured.append(output))
        for b in backbones
    ]
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()


def previous_stage_maps(
    model: nn.Module, captured: Sequence[torch.Tensor], logits: torch.Tensor, label_indices: Sequence[int]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Grad-CAM maps of both eyes on the stage before the last (twice as fine as `backward_maps`),
    from the tensors `capture_previous_stage` kept during the forward pass that gave `logits`."""
    maps = _cam_maps(logits, captured, label_indices)
    if model.shared:
        batch = logits.shape[0]
        return {k: (m[0][:batch], m[0][batch:]) for k, m in maps.items()}
    return {k: (m[0], m[1]) for k, m in maps.items()}


def normalize_jointly(maps: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
    """Scale maps together so that the largest value over all of them is 1 (zeros stay zeros)."""
    peak = max((float(m.max()) for m in maps if m is not None), default=0.0)
    return [None if m is None else (m / peak if peak > 0 else np.zeros_like(m)) for m in maps]


def upsample(cam: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of an `h x w` map to `size x size` (float32)."""
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The JET-coloured map (values in [0, 1]) blended over an RGB uint8 image of the same size."""
    heat = cv2.applyColorMap(np.clip(cam * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


# --- explanation of one patient ------------------------------------------------------------------


@dataclass
class Explanation:
    """Grad-CAM maps of one patient for some labels.

    Attributes:
        patient_id: the patient's ID.
        label_names: all labels of the model, in output order.
        labels: the explained labels.
        probabilities: label -> calibrated probability (all labels).
        thresholds: label -> decision threshold; `predicted` the labels above it.
        images: side -> preprocessed RGB uint8 `S x S x 3` (None for an absent eye).
        cams: label -> side -> map `S x S` float32 in [0, 1], normalized jointly over both eyes
            (None for an absent eye).
        attention: side -> the deepest spatial attention gate upsampled to `S x S` (raw gate
            values in (0, 1)); empty when the model has no spatial attention.
        attention_module: the name of that gate inside the backbone.
        warnings: problems that did not stop the explanation (e.g. an unusable eye).
        fovs: side -> the field-of-view circle in source pixels (None for arrays given
            preprocessed), for `mask_to_preprocessed`.
        layer: the feature map Grad-CAM used (`last` or `previous`, see `CAM_LAYERS`).
    """

    patient_id: str
    label_names: tuple[str, ...]
    labels: list[str]
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    predicted: list[str]
    images: dict[str, np.ndarray | None]
    cams: dict[str, dict[str, np.ndarray | None]]
    attention: dict[str, np.ndarray | None] = field(default_factory=dict)
    attention_module: str | None = None
    warnings: list[str] = field(default_factory=list)
    fovs: dict[str, Any] = field(default_factory=dict)
    layer: str = "last"


def _as_image(x: Any, size: int, side: str) -> np.ndarray:
    img = np.asarray(x)
    if img.dtype != np.uint8 or img.shape != (size, size, 3):
        raise DataError(
            f"{side} eye: a preprocessed image must be uint8 ({size}, {size}, 3), got {img.dtype} {img.shape}"
        )
    return img


def resolve_labels(requested: str | Sequence[str] | None, label_names: Sequence[str]) -> list[str] | None:
    """Parse `--labels D,G` (or a list); an unknown label is a `ConfigError` naming it."""
    if requested is None:
        return None
    items = [s.strip() for s in requested.split(",")] if isinstance(requested, str) else list(requested)
    items = [s for s in items if s]
    if not items:
        raise ConfigError("--labels is empty: give label names separated by commas, e.g. --labels D,G")
    unknown = [s for s in items if s not in label_names]
    if unknown:
        raise ConfigError(
            f"--labels: unknown label(s) {', '.join(unknown)}; "
            f"the model's labels are {', '.join(label_names)}"
        )
    return list(dict.fromkeys(items))  # keep the order given, drop repeats


def explain_pair(
    predictor_or_model: Predictor | nn.Module,
    left: EyeSource | np.ndarray,
    right: EyeSource | np.ndarray,
    labels: str | Sequence[str] | None = None,
    *,
    patient_id: str = "patient",
    layer: str = "last",
) -> Explanation:
    """Explain a patient's prediction with Grad-CAM maps of both eyes.

    Args:
        predictor_or_model: a `Predictor` loaded from a PyTorch checkpoint (its preprocessing,
            thresholds and temperatures are used), or a bare `BinocularNet` (then the eyes must be
            preprocessed arrays, temperatures are 1 and thresholds 0.5).
        left, right: photograph paths or bytes (with a Predictor), preprocessed RGB uint8
            `S x S x 3` arrays, or None for an absent eye.
        labels: labels to explain; default the labels predicted positive, or the most probable
            label when none is.
        layer: `last` (the backbone's last feature map) or `previous` (the stage before: a map
            twice as fine).
    """
    if layer not in CAM_LAYERS:
        raise ConfigError(f"layer must be one of {', '.join(CAM_LAYERS)}, not {layer!r}")
    predictor = predictor_or_model if isinstance(predictor_or_model, Predictor) else None
    if predictor is not None:
        if predictor.backend != "torch" or predictor.model is None:
            raise CheckpointError(
                f"{predictor.source}: Grad-CAM needs the PyTorch checkpoint (gradients), not an ONNX export"
            )
        model = predictor.model
        head, temperatures = predictor.head, predictor.temperatures
        size: int | None = predictor.preprocess.size
        thresholds = predictor.thresholds
    else:  # a bare model: no calibration (T = 1) and the default threshold
        model = predictor_or_model
        head, temperatures = model.cfg.head, None
        size = None
        thresholds = np.full(len(model.label_names), DEFAULT_THRESHOLD)
    label_names = tuple(model.label_names)
    fovs: dict[str, Any] = {"left": None, "right": None}
    if all(s is None or isinstance(s, np.ndarray) for s in (left, right)):
        images: dict[str, np.ndarray | None] = {}
        for side, src in zip(SIDES, (left, right), strict=True):
            if src is not None:
                size = size or int(np.asarray(src).shape[0])
                images[side] = _as_image(src, size, side)
            else:
                images[side] = None
        if size is None:
            raise DataError(f"patient {patient_id}: no eye given")
        warnings = [f"{side} eye: no image given" for side in SIDES if images[side] is None]
    elif predictor is None or any(isinstance(s, np.ndarray) for s in (left, right)):
        raise DataError(
            "give both eyes as photographs (with a Predictor) or both as preprocessed uint8 S x S x 3 arrays"
        )
    else:
        prepared = predictor.prepare_pair(patient_id, left, right)
        if prepared.failed:
            raise DataError(f"patient {patient_id}: {prepared.error}")
        images, fovs, warnings = prepared.images, prepared.fovs, list(prepared.warnings)

    device = next(model.parameters()).device
    eyes = []
    for side in SIDES:
        img = images[side]
        eyes.append((np.zeros((3, size, size), np.uint8) if img is None else img.transpose(2, 0, 1))[None])
    batch = model_inputs(model, eyes[0], eyes[1])
    present = [torch.tensor([images[s] is not None], device=device) for s in SIDES]

    model.eval()
    chosen = resolve_labels(labels, label_names)
    with contextlib.ExitStack() as stack, torch.enable_grad():
        captured = stack.enter_context(capture_previous_stage(model)) if layer == "previous" else []
        # One forward pass serves every label: the default labels are read from its own output.
        out = model(batch[0], batch[1], present[0], present[1], return_features=True)
        logits = out["logits"].detach().float()
        prob = calibrated_probabilities(logits, head, temperatures)[0].cpu().numpy()
        if chosen is None:
            chosen = [k for k, p, t in zip(label_names, prob, thresholds, strict=True) if p > t]
            chosen = chosen or [label_names[int(np.argmax(prob))]]
        indices = [label_names.index(k) for k in chosen]
        if layer == "last":
            raw = backward_maps(out, indices)
        else:
            raw = previous_stage_maps(model, captured, out["logits"], indices)
    attention, attention_module = _attention_maps(model, size, images)

    cams: dict[str, dict[str, np.ndarray | None]] = {}
    for k, idx in zip(chosen, indices, strict=True):
        per_side = [
            None if images[side] is None else upsample(raw[idx][i][0].cpu().numpy(), size)
            for i, side in enumerate(SIDES)
        ]
        # Normalized after upsampling: bilinear interpolation keeps values within the coarse range.
        cams[k] = dict(zip(SIDES, normalize_jointly(per_side), strict=True))
    return Explanation(
        patient_id=patient_id,
        label_names=label_names,
        labels=list(chosen),
        probabilities={k: float(p) for k, p in zip(label_names, prob, strict=True)},
        thresholds={k: float(t) for k, t in zip(label_names, thresholds, strict=True)},
        predicted=[k for k, p, t in zip(label_names, prob, thresholds, strict=True) if p > t],
        images=images,
        cams=cams,
        attention=attention,
        attention_module=attention_module,
        warnings=warnings,
        fovs=fovs,
        layer=layer,
    )


def _attention_maps(
    model: nn.Module, size: int, images: Mapping[str, np.ndarray | None]
) -> tuple[dict[str, np.ndarray | None], str | None]:
    """The deepest spatial attention gate of each eye from the last forward pass, upsampled."""
    getter = getattr(model, "spatial_attention_maps", None)
    if getter is None:
        return {}, None
    maps = getter()
    names = list(maps.get("left", {}))
    if not names:
        return {}, None
    name = names[-1]  # named_modules order: the last gate is the deepest
    out: dict[str, np.ndarray | None] = {}
    for side in SIDES:
        m = maps[side].get(name)
        out[side] = None if m is None or images[side] is None else upsample(m[0, 0].cpu().numpy(), size)
    return out, name


# --- drawing and saving ---------------------------------------------------------------------------


def _fit_text(img: np.ndarray, text: str, y: int, max_scale: float = 0.7) -> None:
    """Write `text` centred on row `y` of `img` (in place), shrunk until it fits the width."""
    width = img.shape[1] - 8
    scale = max_scale
    while scale > 0.3:
        (tw, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
        if tw <= width:
            break
        scale -= 0.05
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    x = max(4, (img.shape[1] - tw) // 2)
    cv2.putText(img, text, (x, y + th // 2), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _panel(image: np.ndarray | None, cam: np.ndarray | None, title: str, side_px: int) -> np.ndarray:
    band = 32
    panel = np.zeros((side_px + band, side_px, 3), np.uint8)
    if image is None:
        panel[band:] = 64
        _fit_text(panel, f"{title}: absent", band // 2)
        return panel
    body = image if cam is None else overlay(image, cam)
    if body.shape[0] != side_px:
        body = cv2.resize(body, (side_px, side_px), interpolation=cv2.INTER_LINEAR)
    panel[band:] = body
    _fit_text(panel, title, band // 2)
    return panel


def render_pair(
    images: Mapping[str, np.ndarray | None], maps: Mapping[str, np.ndarray | None], heading: str
) -> np.ndarray:
    """Left and right panels side by side (titles "left eye"/"right eye") under a heading; RGB."""
    size = next(img.shape[0] for img in images.values() if img is not None)
    side_px = max(size, MIN_PANEL)
    panels = [_panel(images[s], maps.get(s), f"{s} eye", side_px) for s in SIDES]
    gap = np.zeros((panels[0].shape[0], 8, 3), np.uint8)
    row = np.concatenate([panels[0], gap, panels[1]], axis=1)
    head = np.zeros((40, row.shape[1], 3), np.uint8)
    _fit_text(head, heading, 20, max_scale=0.8)
    return np.concatenate([head, row], axis=0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError("could not encode the PNG image", file=path)
    atomic_write_bytes(path, png.tobytes())


def _file_stem(label: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", label) or "label"
    candidate, n = stem, 2
    while candidate.lower() in used or candidate.lower() == "attention":
        candidate, n = f"{stem}_{n}", n + 1
    used.add(candidate.lower())
    return candidate


def save_explanation(expl: Explanation, out_dir: str | Path) -> dict[str, Path]:
    """Write `{label}.png` per explained label, `attention.png` (when the model has spatial
    attention) and `explanation.json` into `out_dir`; returns name -> path of every file written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    used: set[str] = set()
    for label in expl.labels:
        p = expl.probabilities[label]
        decision = "positive" if label in expl.predicted else "negative"
        full = ODIR_LABEL_NAMES.get(label) if expl.label_names == ODIR_LABELS else None
        name = f"{label} ({full})" if full else label
        heading = f"{name}: p = {p:.3f}, threshold {expl.thresholds[label]:.2f}, {decision}"
        path = out_dir / f"{_file_stem(label, used)}.png"
        _write_png(path, render_pair(expl.images, expl.cams[label], heading))
        files[label] = path
    attention_range = None
    if expl.attention:
        present = [m for m in expl.attention.values() if m is not None]
        if present:
            attention_range = [float(min(m.min() for m in present)), float(max(m.max() for m in present))]
        lo = attention_range[0] if attention_range else 0.0
        shifted = {s: None if m is None else m - lo for s, m in expl.attention.items()}
        scaled = dict(zip(SIDES, normalize_jointly([shifted.get(s) for s in SIDES]), strict=True))
        path = out_dir / "attention.png"
        _write_png(path, render_pair(expl.images, scaled, f"spatial attention ({expl.attention_module})"))
        files["attention"] = path
    doc = {
        "patient": expl.patient_id,
        "labels": expl.labels,
        "probabilities": expl.probabilities,
        "thresholds": expl.thresholds,
        "predicted": expl.predicted,
        "files": {k: p.name for k, p in files.items()},
        "method": "Grad-CAM on each eye's "
        + ("last feature map" if expl.layer == "last" else "feature stage before the last")
        + "; target = the label's logit; one backward pass per label gives both eyes",
        "layer": expl.layer,
        "normalization": "joint: both eyes of a label divided by the larger maximum, so the colours "
        "compare the eyes",
        "attention": None
        if not expl.attention
        else {"module": expl.attention_module, "raw_range": attention_range, "display": "joint min-max"},
        "eyes_present": {s: expl.images[s] is not None for s in SIDES},
        "warnings": expl.warnings,
    }
    path = out_dir / "explanation.json"
    atomic_write_json(path, doc)
    files["explanation"] = path
    return files


@dataclass
class ExplainSummary:
    """The result of `run_explain`; `str()` is what the command prints."""

    explanation: Explanation
    files: dict[str, Path]
    out_dir: Path

    def __str__(self) -> str:
        e = self.explanation
        lines = [f"patient {e.patient_id}: explained {', '.join(e.labels)}"]
        for k in e.labels:
            lines.append(
                f"  {k}: p = {e.probabilities[k]:.4f} ({'positive' if k in e.predicted else 'negative'})"
            )
        lines += [f"warning: {w}" for w in e.warnings]
        lines.append(f"written to {self.out_dir}: {', '.join(p.name for p in self.files.values())}")
        return "\n".join(lines)


def run_explain(
    checkpoint: str | Path,
    left: str | Path | None,
    right: str | Path | None,
    out: str | Path,
    labels: str | Sequence[str] | None = None,
    *,
    device: str = "cpu",
    layer: str = "last",
    log: Callable[[str], None] | None = None,
) -> ExplainSummary:
    """`eyefuse explain`: Grad-CAM of both eyes for the chosen labels, written to `out` (on the
    backbone's `last` feature map, or the `previous`, finer, stage); `log` gets a line per step."""
    say = log or (lambda _line: None)
    if left is None and right is None:
        raise ConfigError("give at least one photograph: --left and/or --right")
    if Path(checkpoint).suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{checkpoint}: Grad-CAM needs the PyTorch checkpoint (gradients), not an ONNX export"
        )
    say(f"loading the model from {checkpoint}")
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    resolve_labels(labels, predictor.label_names)  # refuse unknown labels before any work
    lp, rp = (Path(left) if left else None), (Path(right) if right else None)
    say(f"preprocessing the photographs and computing Grad-CAM on the {layer} layer for each eye")
    expl = explain_pair(predictor, lp, rp, labels, patient_id=pair_id_from_files(lp, rp), layer=layer)
    say(f"writing the maps of {len(expl.labels)} label(s) into {out}")
    files = save_explanation(expl, out)
    return ExplainSummary(expl, files, Path(out))


# --- pointing game and lesion masks ----------------------------------------------------------------


def pointing_game(cam: np.ndarray, mask: np.ndarray, tolerance: int = POINTING_TOLERANCE) -> bool:
    """True when the peak of `cam` (h x w) lies inside the lesion `mask` (bool h x w) dilated by
    `tolerance` pixels (a disc); ties go to the first maximum in row-major order."""
    cam, mask = np.asarray(cam), np.asarray(mask).astype(bool)
    if cam.shape != mask.shape or cam.ndim != 2:
        raise ValueError(f"cam and mask must be 2-D arrays of one shape, got {cam.shape} and {mask.shape}")
    if not mask.any():
        raise ValueError("the lesion mask is empty: the pointing game needs a lesion")
    if tolerance > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
        mask = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(mask[peak])


def lesion_mask(mask: np.ndarray, label: str, label_names: Sequence[str] = ODIR_LABELS) -> np.ndarray:
    """The pixels of one label in a synthetic lesion mask (bit i = label i, as `eyefuse synth` writes)."""
    if label not in label_names:
        raise ConfigError(f"unknown label {label!r}; the labels are {', '.join(label_names)}")
    bit = label_names.index(label)
    if bit > 7:
        raise ConfigError(f"label {label!r} is bit {bit}: an 8-bit lesion mask holds 8 labels")
    return (np.asarray(mask).astype(np.uint8) & np.uint8(1 << bit)) > 0


def read_lesion_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel uint8 lesion mask PNG (`masks/{ID}_{side}.png` of `eyefuse synth`)."""
    path = Path(path)
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DataError("lesion mask not found or not an image", file=path)
    if data.ndim != 2 or data.dtype != np.uint8:
        raise DataError(
            f"a lesion mask must be single-channel uint8, got {data.dtype} {data.shape}", file=path
        )
    return data


def mask_to_preprocessed(mask: np.ndarray, fov: Any, cfg: PreprocessConfig) -> np.ndarray:
    """Map a mask in source-photograph pixels into the preprocessed frame (bool `size x size`).

    Uses the crop of `eyefuse.data.preprocess.preprocess_array` (`fov_square`: the square of
    half-side `radius * (1 + margin)` around the field-of-view circle, False beyond the frame),
    resized to `cfg.size`. When shrinking, an output pixel is set when any lesion pixel falls in it, so small
    lesions survive; when enlarging, nearest-neighbour.
    """
    mask = np.asarray(mask).astype(np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    x0, y0, side = fov_square(fov, cfg)
    h, w = mask.shape
    crop = np.zeros((side, side), np.uint8)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if xb > xa and yb > ya:
        crop[ya - y0 : yb - y0, xa - x0 : xb - x0] = mask[ya:yb, xa:xb] > 0
    size = cfg.size
    if side == size:
        return crop.astype(bool)
    if side > size:
        return cv2.resize(crop.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


__all__ = [
    "CAM_LAYERS",
    "ExplainSummary",
    "Explanation",
    "backward_maps",
    "capture_previous_stage",
    "explain_pair",
    "grad_cam",
    "lesion_mask",
    "mask_to_preprocessed",
    "normalize_jointly",
    "overlay",
    "pointing_game",
    "previous_stage_maps",
    "read_lesion_mask",
    "render_pair",
    "resolve_labels",
    "run_explain",
    "save_explanation",
]
