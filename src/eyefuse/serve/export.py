"""ONNX export of a checkpoint, with a JSON sidecar and a parity check against PyTorch.

The exported graph takes four inputs, with a dynamic batch dimension B:

- `left`, `right`: float32 `B x 3 x S x S`, the preprocessed RGB images on a 0..255 scale (the
  uint8 output of `eyefuse.data.preprocess.preprocess_image`, transposed and cast). Normalization
  with the model's mean/std happens inside the graph, so a client needs no constants beyond the
  preprocessing settings in the sidecar.
- `left_present`, `right_present`: bool `B`. The model was trained with eye dropout and takes these
  flags to ignore an absent eye; without them a client with one photograph would have to invent the
  other eye (feeding the same eye twice is not what the model learnt), so the flags are inputs.

and returns `probabilities` (calibrated with the checkpoint's temperatures, by the same function
`eyefuse.models.checkpoint.calibrated_probabilities` that PyTorch prediction uses) and `logits` (raw),
both float32 `B x L`.

The sidecar `<out>.json` holds everything else a client needs: labels, preprocessing settings,
thresholds, input size, versions and the hashes of the source checkpoint and of the ONNX file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eyefuse import __version__
from eyefuse.errors import CheckpointError, ConfigError
from eyefuse.models.checkpoint import (
    META_FILE,
    MODEL_FILE,
    CheckpointMeta,
    calibrated_probabilities,
    load_model,
    resolve_checkpoint_dir,
)
from eyefuse.models.inputs import model_inputs
from eyefuse.serve.predict import ONNX_INPUTS, ONNX_OUTPUTS, ONNX_SIDECAR_SUFFIX, ONNX_SIDECAR_VERSION
from eyefuse.utils.io import atomic_path, atomic_write_json, sha256_file
from eyefuse.utils.optional import optional_import

INPUT_NAMES = ONNX_INPUTS
OUTPUT_NAMES = ONNX_OUTPUTS
#: Largest difference between ONNX Runtime and PyTorch outputs accepted by the check.
PARITY_TOLERANCE = 1e-4
#: Batch sizes of the parity check (1 and an odd size > 1 exercise the dynamic batch dimension).
PARITY_BATCH_SIZES = (1, 3)
SIDECAR_FORMAT = "eyefuse-onnx"
SIDECAR_VERSION = ONNX_SIDECAR_VERSION


class ExportWrapper(nn.Module):
    """The graph that is exported: 0..255 images + presence flags -> (calibrated probabilities, logits)."""

    def __init__(self, model: nn.Module, meta: CheckpointMeta | Mapping[str, Any]):
        super().__init__()
        self.model = model
        self.meta = meta if isinstance(meta, CheckpointMeta) else CheckpointMeta.from_dict(meta)
        # Plain floats: the exporter records them as constants of the graph.
        self.head = self.meta.head
        self.temperatures = self.meta.temperature_array().tolist()

    def forward(
        self,
        left: torch.Tensor,
        right: torch.Tensor,
        left_present: torch.Tensor,
        right_present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_left, x_right = model_inputs(self.model, left, right)
        logits = self.model(x_left, x_right, left_present, right_present)["logits"]
        return calibrated_probabilities(logits, self.head, self.temperatures), logits


@dataclass
class ExportSummary:
    """What `export_onnx` wrote and measured; `str()` is what the command prints."""

    onnx_path: Path
    sidecar_path: Path
    checkpoint: Path
    opset: int
    size_bytes: int
    max_abs_diff: float | None = None  # over both outputs and all checked batch sizes; None: not checked
    diff_by_batch: dict[int, float] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"exported {self.checkpoint} -> {self.onnx_path} "
            f"({self.size_bytes / 1e6:.1f} MB, opset {self.opset})",
            f"sidecar: {self.sidecar_path}",
            f"inputs: {', '.join(INPUT_NAMES)} (dynamic batch); outputs: {', '.join(OUTPUT_NAMES)}",
        ]
        if self.max_abs_diff is None:
            lines.append("parity check: skipped")
        else:
            per = ", ".join(f"batch {b}: {d:.2e}" for b, d in self.diff_by_batch.items())
            lines.append(
                f"parity check (onnxruntime vs PyTorch): max abs difference {self.max_abs_diff:.2e} "
                f"<= {PARITY_TOLERANCE:g} ({per})"
            )
        return "\n".join(lines)


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """Silence the exporter's progress prints and optimiser notices (e.g. onnxscript's "Skipping
    constant folding"), which are not addressed to the user; failures still raise."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_failure_reason(error: BaseException) -> str:
    """The useful lines of an exporter error: its exception summary and the model code that raised
    it (the exporter's full message is pages long; it stays attached as the cause)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [line.strip() for line in text.splitlines()]
    parts = []
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1 :]
        parts.append(next((line for line in after if line), ""))
    if "The following call raised this error:" in lines:
        after = lines[lines.index("The following call raised this error:") + 1 :]
        parts.append("raised at " + next((line for line in after if line), ""))
    return "; ".join(p for p in parts if p) or f"{type(error).__name__}: {lines[0] if lines else ''}"


def _example_inputs(size: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random 0..255 images; in batches of more than one patient, one eye is absent somewhere, so
    the check covers the presence flags."""
    left = torch.rand(batch, 3, size, size, generator=generator) * 255.0
    right = torch.rand(batch, 3, size, size, generator=generator) * 255.0
    left_present = torch.ones(batch, dtype=torch.bool)
    right_present = torch.ones(batch, dtype=torch.bool)
    if batch > 1:
        right_present[0] = False
        left_present[-1] = False
    return left, right, left_present, right_present


def _onnx_outputs(session: Any, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """Run the ONNX session on PyTorch inputs (one place, so the check can be tested)."""
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
    return [np.asarray(x) for x in session.run(list(OUTPUT_NAMES), feeds)]


def check_parity(
    onnx_path: Path, wrapper: nn.Module, size: int, batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES
) -> dict[int, float]:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch outputs per batch size; raises
    `CheckpointError` when it exceeds `PARITY_TOLERANCE`."""
    ort = optional_import("onnxruntime", "export")

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    diffs: dict[int, float] = {}
    for batch in batch_sizes:
        inputs = _example_inputs(size, batch, gen)
        with torch.no_grad():
            expected = [t.float().numpy() for t in wrapper(*inputs)]
        got = _onnx_outputs(session, inputs)
        for name, e, g in zip(OUTPUT_NAMES, expected, got, strict=True):
            if e.shape != g.shape:
                raise CheckpointError(
                    f"ONNX output {name!r} has shape {g.shape} at batch {batch}, PyTorch {e.shape}"
                )
        diffs[batch] = max(float(np.max(np.abs(e - g))) for e, g in zip(expected, got, strict=True))
        if not diffs[batch] <= PARITY_TOLERANCE:  # `not <=` also catches NaN
            raise CheckpointError(
                f"ONNX output differs from PyTorch by {diffs[batch]:.3g} > {PARITY_TOLERANCE:g} "
                f"(batch size {batch}); the export of this model is not faithful"
            )
    return diffs


def export_onnx(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    opset: int = 18,
    check: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Export a checkpoint (folder, or run folder -> best) to ONNX with `torch.onnx.export(dynamo=True)`.

    The ONNX file is written under a temporary name, checked (onnx checker, then ONNX Runtime against
    PyTorch at batch sizes 1 and 3 when `check`), and only then renamed into place; the sidecar
    `<out>.json` is written atomically just before. A failed check leaves no file under `out`.
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out}: the exported file name must end in .onnx")
    # The `export` extra, checked before any work: torch.onnx's exporter needs onnxscript.
    onnx = optional_import("onnx", "export")
    optional_import("onnxscript", "export")
    if check:
        optional_import("onnxruntime", "export")
    say = log or (lambda _line: None)
    ckpt_dir = resolve_checkpoint_dir(checkpoint)
    say(f"loading {ckpt_dir}")
    meta = CheckpointMeta.read(ckpt_dir)
    model = load_model(ckpt_dir, device="cpu")
    label_names = list(meta.label_names)
    size = int(meta.preprocess["size"])
    head = meta.head
    thresholds = meta.threshold_array()
    wrapper = ExportWrapper(model, meta).eval()

    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {name: {0: batch} for name in INPUT_NAMES}
    # Batch 2 as the example: a batch of 1 would let the exporter specialise on it.
    example = _example_inputs(size, 2, torch.Generator().manual_seed(1))
    with atomic_path(out) as tmp:
        say("exporting with torch.onnx (dynamo) ...")
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    wrapper,
                    example,
                    str(tmp),
                    dynamo=True,
                    input_names=list(INPUT_NAMES),
                    output_names=list(OUTPUT_NAMES),
                    dynamic_shapes=dynamic,
                    opset_version=opset,
                    external_data=False,
                )
        except Exception as e:  # the exporter raises many types; say which model could not be exported
            cfg = meta.model_config
            raise CheckpointError(
                f"{ckpt_dir}: ONNX export failed for backbone={cfg.get('backbone')}, "
                f"attention={cfg.get('attention')}, fusion={cfg.get('fusion')}, head={head}: "
                f"{_export_failure_reason(e)}"
            ) from e
        say("checking the ONNX graph")
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as e:
            raise CheckpointError(f"{ckpt_dir}: the exported ONNX model is invalid: {e}") from e
        if check:
            say("checking ONNX Runtime against PyTorch at batch sizes 1 and 3")
        diffs = check_parity(tmp, wrapper, size) if check else {}
        image_input = f"float32 B x 3 x {size} x {size}: preprocessed RGB image, 0..255 (normalized inside)"
        sidecar = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "eyefuse_version": __version__,
            "torch_version": torch.__version__,
            "opset": opset,
            "label_names": label_names,
            "head": head,
            "input_size": size,
            "preprocess": dict(meta.preprocess),
            "inputs": {
                "left": image_input,
                "right": image_input,
                "left_present": "bool B: False where the left eye is absent (its image is then ignored)",
                "right_present": "bool B: False where the right eye is absent (its image is then ignored)",
            },
            "outputs": {
                "probabilities": f"float32 B x {len(label_names)}: calibrated (temperatures already applied)",
                "logits": f"float32 B x {len(label_names)}: raw logits",
            },
            "decision_rule": "a label is positive when its probability > its threshold",
            "thresholds": [float(t) for t in thresholds],
            "thresholds_fitted": meta.thresholds_fitted,
            "threshold_method": meta.threshold_method,
            "temperatures": list(meta.temperatures) if meta.temperatures is not None else None,
            "temperatures_applied_in_graph": True,
            "calibration_split": meta.calibration_split,
            "calibration_warnings": list(meta.calibration_warnings),
            "config": meta.config,
            "source_checkpoint": {
                "path": str(ckpt_dir.resolve()),
                "weights_sha256": sha256_file(ckpt_dir / MODEL_FILE),
                "meta_sha256": sha256_file(ckpt_dir / META_FILE),
                "epoch": meta.epoch,
                "git_commit": meta.git_commit,
            },
            "onnx_sha256": sha256_file(tmp),
            "parity": {
                "checked": bool(check),
                "batch_sizes": list(diffs),
                "max_abs_diff": max(diffs.values()) if diffs else None,
                "tolerance": PARITY_TOLERANCE,
            },
        }
        sidecar_path = Path(str(out) + ONNX_SIDECAR_SUFFIX)
        atomic_write_json(sidecar_path, sidecar)
    return ExportSummary(
        onnx_path=out,
        sidecar_path=sidecar_path,
        checkpoint=ckpt_dir,
        opset=opset,
        size_bytes=out.stat().st_size,
        max_abs_diff=max(diffs.values()) if diffs else None,
        diff_by_batch=diffs,
    )


__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "PARITY_TOLERANCE",
    "ExportSummary",
    "ExportWrapper",
    "check_parity",
    "export_onnx",
]
