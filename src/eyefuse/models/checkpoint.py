"""The checkpoint's one owner: reading a checkpoint, its typed metadata, and calibration.

Everything that loads a trained model goes through here (prediction, explanation, export, serving,
evaluation), so no module above `eyefuse.models` needs the training engine to read a checkpoint:

- `resolve_checkpoint_dir`, `read_meta`, `load_model_state`, `load_model`: find a checkpoint folder,
  read its JSON metadata (validated; safe on untrusted files) and its safetensors weights, rebuild the
  model. The writing side (`save_checkpoint`, `update_meta`, training state) is in
  `eyefuse.train.checkpoint`, which imports the file names from here.
- `CheckpointMeta`: the metadata as a typed, frozen record (label names, head, thresholds,
  temperatures, preprocessing, config, versions, ...), with defaults for checkpoints written before
  a field existed. It also reads an exported model's ONNX sidecar, which carries the same fields.
- `calibrated_probabilities` and `calibrate`: the one place that turns logits into calibrated
  probabilities and decisions (temperatures, the head's rule, thresholds with the 0.5 fallback).
  `eyefuse.eval.calibration` only fits temperatures and thresholds; it calls these to apply them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from eyefuse.config import PreprocessConfig, config_from_dict
from eyefuse.errors import CheckpointError, ConfigError, DataError
from eyefuse.models.binocular import BinocularNet, build_model, head_probabilities, ranking_probabilities

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1
#: Key of the safetensors header that records the label names the weights were trained for, so that
#: a `meta.json` edited by hand (labels renamed or reordered) is refused instead of mislabelling.
LABELS_KEY = "eyefuse_label_names"
HEAD_TYPES = ("sigmoid", "softmax")
#: The decision threshold of every class when none were fitted (the official ODIR rule).
DEFAULT_THRESHOLD = 0.5


# --- finding and reading a checkpoint -------------------------------------------------------------


def resolve_checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder for `path`: the folder itself, a run folder (-> its `best`), or the
    previous version left by a kill between the two renames of `save_checkpoint`."""
    path = Path(path)
    if path.is_file() and path.name in (META_FILE, MODEL_FILE):
        path = path.parent
    if (path / META_FILE).is_file():
        return path
    if (path / "best" / META_FILE).is_file():
        return path / "best"
    old = path.with_name(f".{path.name}.old")
    if (old / META_FILE).is_file():
        return old
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(
        f"{path} is not an eyefuse checkpoint: expected {META_FILE} and {MODEL_FILE} in it "
        "(or a run folder with best/)"
    )


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint's metadata as the JSON dict it is stored as (JSON only: safe on untrusted
    files), validated: format version, label names, and the labels recorded in the weights."""
    ckpt = resolve_checkpoint_dir(path)
    try:
        meta = json.loads((ckpt / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt / META_FILE}: unreadable checkpoint metadata: {e}") from e
    if not isinstance(meta, dict) or "config" not in meta or "label_names" not in meta:
        raise CheckpointError(f"{ckpt / META_FILE}: not eyefuse checkpoint metadata (no config/label_names)")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt / META_FILE}: format_version {version!r} is not one this eyefuse reads (1 to "
            f"{FORMAT_VERSION}); a newer eyefuse wrote it, or the file was edited"
        )
    names = meta["label_names"]
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise CheckpointError(
            f"{ckpt / META_FILE}: label_names must be a list of distinct names, not {names!r}"
        )
    saved = _weights_label_names(ckpt / MODEL_FILE)
    if saved is not None and saved != names:
        raise CheckpointError(
            f"{ckpt / META_FILE}: label_names {names} differ from those the weights were saved with "
            f"{saved} (was the file edited?)"
        )
    return meta


def _weights_label_names(path: Path) -> list[str] | None:
    """The label names recorded in a weights file's header (None for files saved before they were
    recorded, or when the file is missing; `load_model_state` reports that)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(LABELS_KEY)
    except Exception:  # missing or corrupt weights: reported when they are loaded
        return None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def load_model_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint's weights (safetensors: no code runs while loading)."""
    ckpt = resolve_checkpoint_dir(path)
    f = ckpt / MODEL_FILE
    if not f.is_file():
        raise CheckpointError(f"{ckpt}: {MODEL_FILE} is missing")
    try:
        return load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{f}: unreadable weights: {e}") from e


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> BinocularNet:
    """Rebuild a model from a checkpoint folder (config + label names from meta.json, weights from
    safetensors) in eval mode."""
    meta = read_meta(path)
    cfg = config_from_dict(meta["config"])
    model = build_model(cfg.model, meta["label_names"], load_weights=False)  # the checkpoint holds them all
    state = load_model_state(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {e}") from e
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model in its config "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    model.to(device).eval()
    return model


# --- the typed metadata ---------------------------------------------------------------------------


def _head_of(raw: Mapping[str, Any]) -> str:
    """The head type, recorded at the top (ONNX sidecars) or in the model config (checkpoints)."""
    config = raw.get("config")
    model_cfg = config.get("model") if isinstance(config, Mapping) else None
    head = raw.get("head") or (model_cfg.get("head") if isinstance(model_cfg, Mapping) else None)
    if head not in HEAD_TYPES:
        raise CheckpointError(f"metadata names no valid model head (sigmoid | softmax), found {head!r}")
    return str(head)


def _temperatures(raw: Any, head: str, n_labels: int) -> tuple[float, ...] | None:
    """Validated temperatures: L per class (sigmoid head) or 1 shared (softmax head); None = not fitted."""
    if isinstance(raw, Mapping) and "temperatures" in raw:  # a stored TemperatureFit.to_dict()
        raw = raw["temperatures"]
    if raw is None:
        return None
    size = n_labels if head == "sigmoid" else 1
    try:
        t = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise CheckpointError(f"stored temperatures {raw!r} are not numbers") from None
    if t.ndim == 0 or (head == "softmax" and t.size == 1):
        t = np.full(size, float(t.reshape(-1)[0]))
    if t.shape != (size,):
        want = f"{n_labels} per-class temperatures" if head == "sigmoid" else "one shared temperature"
        raise CheckpointError(f"the {head} head needs {want}; metadata holds shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise CheckpointError(f"stored temperatures must be finite and positive, got {t.tolist()}")
    return tuple(float(v) for v in t)


def _thresholds(raw: Any, label_names: Sequence[str]) -> tuple[float, ...] | None:
    """Validated per-class thresholds from a list in label order or a label -> value mapping."""
    if raw is None:
        return None
    n = len(label_names)
    if isinstance(raw, Mapping):
        missing = [name for name in label_names if name not in raw]
        if missing:
            raise CheckpointError(f"stored thresholds lack label(s) {', '.join(missing)}")
        raw = [raw[name] for name in label_names]
    try:
        thr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise CheckpointError(f"stored thresholds {raw!r} are not numbers") from None
    if thr.ndim == 0:
        thr = np.full(n, float(thr))
    if thr.shape != (n,) or not np.all(np.isfinite(thr)) or (thr < 0).any() or (thr > 1).any():
        raise CheckpointError(f"expected {n} stored thresholds in [0, 1], got {np.asarray(raw).tolist()}")
    return tuple(float(v) for v in thr)


def _optional_dict(raw: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = raw.get(key)
    return dict(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's metadata (or an ONNX sidecar's), typed and validated once.

    Fields missing from older checkpoints take their defaults: no thresholds or temperatures (0.5
    and T = 1 apply), no recorded split, versions or commit. `raw` keeps the JSON as read, for the
    fields only a report copies through.
    """

    label_names: tuple[str, ...]
    head: str
    config: dict[str, Any]
    preprocess: dict[str, Any]
    thresholds: tuple[float, ...] | None = None
    temperatures: tuple[float, ...] | None = None
    threshold_method: str | None = None
    calibration_split: dict[str, Any] | None = None
    calibration_warnings: tuple[str, ...] = ()
    thresholds_fitted: bool = False
    epoch: int | None = None
    split_file: str | None = None
    split_hash: str | None = None
    split_sizes: dict[str, int] | None = None
    config_hash: str | None = None
    seed: int | None = None
    versions: dict[str, str] | None = None
    git_commit: str | None = None
    format_version: int = FORMAT_VERSION
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CheckpointMeta:
        """Type and validate metadata (a checkpoint's `meta.json` or an ONNX sidecar); a malformed
        field raises `CheckpointError` naming it."""
        names = raw.get("label_names")
        if not isinstance(names, (list, tuple)) or not names:
            raise CheckpointError(f"metadata holds no label_names list, found {names!r}")
        label_names = tuple(str(n) for n in names)
        head = _head_of(raw)
        config = raw.get("config")
        preprocess = raw.get("preprocess")
        thresholds = _thresholds(raw.get("thresholds"), label_names)
        warnings = raw.get("calibration_warnings") or ()
        epoch = raw.get("epoch")
        return cls(
            label_names=label_names,
            head=head,
            config=dict(config) if isinstance(config, Mapping) else {},
            preprocess=dict(preprocess) if isinstance(preprocess, Mapping) else {},
            thresholds=thresholds,
            temperatures=_temperatures(raw.get("temperatures"), head, len(label_names)),
            threshold_method=raw.get("threshold_method"),
            calibration_split=_optional_dict(raw, "calibration_split"),
            calibration_warnings=tuple(str(w) for w in warnings),
            # An ONNX sidecar always lists thresholds (0.5 where none were fitted) and says which.
            thresholds_fitted=bool(raw.get("thresholds_fitted", thresholds is not None)),
            epoch=int(epoch) if isinstance(epoch, int) else None,
            split_file=raw.get("split_file"),
            split_hash=raw.get("split_hash"),
            split_sizes=_optional_dict(raw, "split_sizes"),
            config_hash=raw.get("config_hash"),
            seed=raw.get("seed"),
            versions=_optional_dict(raw, "versions"),
            git_commit=raw.get("git_commit"),
            format_version=int(raw.get("format_version", FORMAT_VERSION)),
            raw=dict(raw),
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> CheckpointMeta:
        """Read and type the metadata of a checkpoint folder (or a run folder -> its `best`)."""
        ckpt = resolve_checkpoint_dir(path)
        raw = read_meta(ckpt)
        try:
            return cls.from_dict(raw)
        except CheckpointError as e:
            raise CheckpointError(f"{ckpt / META_FILE}: {e}") from e

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    @property
    def model_config(self) -> dict[str, Any]:
        """The `model` section of the config (backbone, attention, fusion, head, ...); {} if absent."""
        model = self.config.get("model")
        return dict(model) if isinstance(model, Mapping) else {}

    @property
    def fusion(self) -> str | None:
        return self.model_config.get("fusion")

    @property
    def calibration_split_name(self) -> str | None:
        """The split the thresholds and temperatures were fitted on (None when not recorded)."""
        return (self.calibration_split or {}).get("name")

    @property
    def calibrated(self) -> bool:
        """Whether temperatures were fitted (otherwise T = 1)."""
        return self.temperatures is not None

    def temperature_array(self) -> np.ndarray:
        """(L,) per-class temperatures (sigmoid head) or (1,) shared (softmax); ones when not fitted."""
        if self.temperatures is not None:
            return np.asarray(self.temperatures, dtype=np.float64)
        return np.ones(self.n_labels if self.head == "sigmoid" else 1, dtype=np.float64)

    def threshold_array(self) -> np.ndarray:
        """(L,) decision thresholds: the fitted ones, else `DEFAULT_THRESHOLD` for every class."""
        if self.thresholds is not None:
            return np.asarray(self.thresholds, dtype=np.float64)
        return np.full(self.n_labels, DEFAULT_THRESHOLD)

    def preprocess_config(self, source: object) -> PreprocessConfig:
        """The stored preprocessing settings as a validated `PreprocessConfig`; `source` names the
        checkpoint or sidecar in the error."""
        if not self.preprocess:
            raise CheckpointError(f"{source}: metadata holds no preprocessing settings ('preprocess')")
        try:
            cfg = config_from_dict({"preprocess": dict(self.preprocess)}).preprocess
            cfg.validate()
        except ConfigError as e:
            raise CheckpointError(f"{source}: stored preprocessing settings are invalid: {e}") from e
        return cfg


# --- calibration: the one place that turns logits into probabilities and decisions -----------------


def calibrated_probabilities(
    logits: Any, head: str, temperatures: Any = None, *, ranking: bool = False
) -> Any:
    """Calibrated scores `rule(logits / T)` by the head's own rule.

    `rule` is `eyefuse.models.binocular.head_probabilities` (decision scores: sigmoid, or for the
    softmax head the softmax divided by its row maximum, `p / max p`), or with `ranking` the scores
    ranking metrics use (`ranking_probabilities`: the softmax itself for the softmax head).
    `temperatures`: None (T = 1), one shared value, or L per-class values (sigmoid head).

    A torch tensor in gives a tensor out in its dtype and device (prediction, and the exported ONNX
    graph, which traces this function); anything else is computed in float64 and returned as numpy.
    """
    rule = ranking_probabilities if ranking else head_probabilities
    if isinstance(logits, torch.Tensor):
        z = logits
        if temperatures is not None:
            t = np.asarray(temperatures, dtype=np.float64).reshape(-1)
            z = z / torch.tensor(t.tolist(), dtype=z.dtype, device=z.device)
        return rule(z, head)
    z_np = np.asarray(logits, dtype=np.float64)
    if temperatures is not None:
        t = np.asarray(temperatures, dtype=np.float64).reshape(-1)
        if t.size not in (1, z_np.shape[-1]):
            raise DataError(
                f"expected one temperature or {z_np.shape[-1]} per-class temperatures, got {t.size}"
            )
        if not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise DataError(f"temperatures must be finite and positive, got {t.tolist()}")
        z_np = z_np / (t[0] if t.size == 1 else t)
    return rule(torch.from_numpy(z_np), head).numpy()


@dataclass(frozen=True)
class Calibrated:
    """Logits turned into what a checkpoint says they mean, all (B, L) float64 numpy arrays.

    `prob`: calibrated decision scores (what thresholds apply to); `rank_prob`: calibrated ranking
    scores; `decisions`: `prob > thresholds` (bool); `thresholds`: (L,) the thresholds used.
    """

    prob: np.ndarray
    rank_prob: np.ndarray
    decisions: np.ndarray
    thresholds: np.ndarray


def calibrate(logits: Any, meta: CheckpointMeta) -> Calibrated:
    """Calibrated probabilities and decisions of (B, L) logits with a checkpoint's temperatures and
    thresholds (T = 1 and 0.5 where none were fitted). A label is positive when its probability is
    strictly above its threshold (`prob > threshold`, the rule of the official ODIR score)."""
    z = logits.detach().double().cpu().numpy() if isinstance(logits, torch.Tensor) else logits
    t = meta.temperature_array()
    prob = calibrated_probabilities(z, meta.head, t)
    rank = calibrated_probabilities(z, meta.head, t, ranking=True)
    thr = meta.threshold_array()
    return Calibrated(prob=prob, rank_prob=rank, decisions=prob > thr, thresholds=thr)


__all__ = [
    "DEFAULT_THRESHOLD",
    "FORMAT_VERSION",
    "HEAD_TYPES",
    "LABELS_KEY",
    "META_FILE",
    "MODEL_FILE",
    "Calibrated",
    "CheckpointMeta",
    "calibrate",
    "calibrated_probabilities",
    "load_model",
    "load_model_state",
    "read_meta",
    "resolve_checkpoint_dir",
]
