"""Prediction for new patients from a checkpoint folder, a run folder or an exported ONNX model.

Over 500 lines on purpose: one job, from photographs to written decisions, whose steps (the
`Predictor` for PyTorch and ONNX models, the prediction records, the JSON/CSV writing and the
summary) share the prediction record; which files make which patient is in `eyefuse.serve.pairs`.

A patient is a pair of photographs (left and right eye). Each eye is preprocessed with the settings
stored in the checkpoint; an eye that is missing or cannot be preprocessed is treated as absent (the
model takes presence flags) and the patient is predicted from the other eye with a warning. A patient
with no usable eye is reported as failed and the others go on.

Probabilities are calibrated with the temperatures stored in the checkpoint and a label is decided
positive when its probability is strictly above its stored threshold (`prob > threshold`, the rule of
the official ODIR score and of `eyefuse.eval.metrics`); both are applied by the checkpoint's owner,
`eyefuse.models.checkpoint`, as in evaluation, export and explanation.

Decisions where the task left room:
- `--out` ending in `.json` writes `{"model": ..., "summary": ..., "predictions": [...]}`; `.csv`
  writes the official submission CSV (`ID,N,...,O` probabilities, failed patients omitted and
  counted). Without `--out`, many patients are printed as a readable table (one line per patient)
  rather than JSON: machine-readable output is what `--out` is for.
- A CSV row with no image in either cell is not an error of the file: that patient is reported as
  failed like any other patient without a usable eye, and the other rows go on.
- In a folder, every entry that is not `{ID}_left.<ext>` / `{ID}_right.<ext>` (ext: any image format
  Pillow opens, as for `--left`, any case) is counted and named in the summary; two files for the
  same eye of the same patient are an error, since either choice would be a guess.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from eyefuse import ODIR_LABEL_NAMES, ODIR_LABELS
from eyefuse.data.laterality import input_warnings, same_photograph
from eyefuse.data.preprocess import PreprocessError, preprocess_image
from eyefuse.errors import CheckpointError, ConfigError
from eyefuse.eval.score import write_submission
from eyefuse.models.checkpoint import (
    CheckpointMeta,
    calibrated_probabilities,
    load_model,
    resolve_checkpoint_dir,
)
from eyefuse.models.inputs import model_inputs
from eyefuse.serve.pairs import (
    SIDES,
    EyeSource,
    PairInputs,
    PatientInput,
    name_listing,
    pair_id_from_files,
    pairs_from_csv,
    pairs_from_dir,
)
from eyefuse.utils.io import atomic_write_json, sha256_file
from eyefuse.utils.optional import optional_import

ONNX_SIDECAR_SUFFIX = ".json"
#: The inputs and outputs of an exported model (see `eyefuse.serve.export`).
ONNX_INPUTS = ("left", "right", "left_present", "right_present")
ONNX_OUTPUTS = ("probabilities", "logits")
#: The newest sidecar format this version reads.
ONNX_SIDECAR_VERSION = 1


# --- results ------------------------------------------------------------------------------------


@dataclass
class PatientPrediction:
    """The prediction for one patient.

    Attributes:
        id: the patient ID.
        probabilities: label -> calibrated probability (empty when `failed`).
        labels: labels decided positive (`probability > threshold`), in label order.
        thresholds: label -> decision threshold used.
        warnings: one line per problem that did not stop the prediction (e.g. an unusable eye).
        unusable_eyes: the sides whose photograph was given but could not be used (the patient was
            predicted from the other eye; the CLI's exit status 1 rests on it, not on the wording).
        failed: True when neither eye could be used; `error` says why.
    """

    id: str
    probabilities: dict[str, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unusable_eyes: list[str] = field(default_factory=list)
    failed: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (plain floats, lists and strings)."""
        return {
            "id": self.id,
            "probabilities": {k: float(v) for k, v in self.probabilities.items()},
            "labels": list(self.labels),
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "warnings": list(self.warnings),
            "unusable_eyes": list(self.unusable_eyes),
            "failed": self.failed,
            "error": self.error,
        }


@dataclass
class PreparedPair:
    """A patient's preprocessed eyes: RGB uint8 `S x S x 3` images (None for an absent eye), the
    field-of-view circles in source pixels, and what went wrong with each eye."""

    id: str
    images: dict[str, np.ndarray | None]
    fovs: dict[str, Any]
    warnings: list[str]
    error: str | None = None
    unusable: tuple[str, ...] = ()  #: sides given but not usable (preprocessing failed)

    @property
    def failed(self) -> bool:
        return self.error is not None


def _describe_source(source: EyeSource) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


# --- the predictor ------------------------------------------------------------------------------


class Predictor:
    """Runs a trained model on new patients: preprocessing, batching, calibration and decisions.

    Build it with `Predictor.from_checkpoint`; every setting (preprocessing, label names,
    thresholds, temperatures) comes from the checkpoint or the ONNX sidecar.

    Attributes:
        label_names: the model's labels, in output order.
        preprocess: the preprocessing settings the model was trained with.
        thresholds: (L,) decision thresholds.
        meta: the checkpoint metadata (or the ONNX sidecar's), typed.
        source: the checkpoint folder or ONNX file.
        backend: `torch` or `onnx`.
        model: the PyTorch model (torch backend), else None.
    """

    def __init__(
        self,
        *,
        meta: CheckpointMeta | Mapping[str, Any],
        source: Path,
        backend: str,
        model: torch.nn.Module | None = None,
        session: Any = None,
        device: torch.device | str = "cpu",
    ) -> None:
        # Typed (and so validated) now, so that a bad checkpoint fails at load time, not on the
        # first patient.
        self.meta = meta if isinstance(meta, CheckpointMeta) else CheckpointMeta.from_dict(meta)
        self.source = source
        self.backend = backend
        self.model = model
        self.session = session
        self.device = torch.device(device)
        self.label_names: tuple[str, ...] = self.meta.label_names
        self.head = self.meta.head
        self.preprocess = self.meta.preprocess_config(source)
        self.thresholds = self.meta.threshold_array()
        self.temperatures = self.meta.temperature_array()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> Predictor:
        """Load a checkpoint folder, a run folder (its `best`), or an `.onnx` file with its JSON
        sidecar `<file>.onnx.json` (run with onnxruntime on the CPU)."""
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            if torch.device(device).type != "cpu":
                raise ConfigError(
                    f"device {device!r}: ONNX models run on the CPU (onnxruntime CPUExecutionProvider); "
                    "use the PyTorch checkpoint for a GPU"
                )
            meta, session = load_onnx(path)
            return cls(meta=meta, source=path, backend="onnx", session=session)
        ckpt_dir = resolve_checkpoint_dir(path)
        meta = CheckpointMeta.read(ckpt_dir)
        model = load_model(ckpt_dir, device=device)
        if tuple(getattr(model, "label_names", meta.label_names)) != meta.label_names:
            raise CheckpointError(f"{ckpt_dir}: the model's labels differ from the metadata's label_names")
        return cls(meta=meta, source=ckpt_dir, backend="torch", model=model, device=device)

    def describe(self) -> dict[str, Any]:
        """What a prediction file records about the model that made it."""
        return {
            "source": str(self.source),
            "backend": self.backend,
            "head": self.head,
            "label_names": list(self.label_names),
            "thresholds": [float(x) for x in self.thresholds],
            "decision_rule": self.decision_rule(),
            "temperatures": self.temperatures.tolist() if self.meta.calibrated else None,
            "preprocess": dict(self.meta.preprocess),
        }

    def decision_rule(self) -> str:
        """Where the decided labels come from: the fitted per-class thresholds, not the official 0.5."""
        if not self.meta.thresholds_fitted:
            return "probability > 0.5 for every label (the checkpoint has no fitted thresholds)"
        split = self.meta.calibration_split_name or "an unrecorded split"
        method = self.meta.threshold_method or "unrecorded method"
        return f"probability > the fitted per-class thresholds ({method} on {split}), not the official 0.5"

    # -- preprocessing --

    def prepare_pair(self, patient_id: str, left: EyeSource, right: EyeSource) -> PreparedPair:
        """Preprocess both eyes of a patient; an unusable eye becomes absent with a warning."""
        images: dict[str, np.ndarray | None] = {}
        fovs: dict[str, Any] = {}
        problems: dict[str, str] = {}
        notes: dict[str, list[str]] = {side: [] for side in SIDES}
        unusable: list[str] = []  # given but not usable (a missing eye is not a failed photograph)
        for side, source in zip(SIDES, (left, right), strict=True):
            images[side], fovs[side] = None, None
            if source is None:
                problems[side] = f"{side} eye: no image given"
                continue
            if isinstance(source, str):
                source = Path(source)
            name = (
                None
                if isinstance(source, Path)
                else f"patient {patient_id} {side} eye {_describe_source(source)}"
            )
            try:
                images[side], fovs[side] = preprocess_image(
                    source, self.preprocess, name=name, notes=notes[side]
                )
            except PreprocessError as e:
                problems[side] = f"{side} eye unusable: {e}"
                unusable.append(side)
        if len(problems) == 2:
            return PreparedPair(
                patient_id, images, fovs, [], error="no usable eye: " + "; ".join(problems.values())
            )
        warnings = [
            f"{msg}; predicted from the {'right' if side == 'left' else 'left'} eye only"
            for side, msg in problems.items()
        ]
        warnings += input_warnings(images, same_file=same_photograph(left, right), notes=notes)
        return PreparedPair(patient_id, images, fovs, warnings, unusable=tuple(unusable))

    # -- model --

    def run_model(
        self, left: np.ndarray, right: np.ndarray, left_present: np.ndarray, right_present: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and raw logits, both (B, L) float64, for a batch of
        preprocessed eyes: `left`/`right` uint8 `B x 3 x S x S`, presence flags bool `(B,)`."""
        if self.backend == "onnx":
            feeds = (left.astype(np.float32), right.astype(np.float32), left_present, right_present)
            prob, logits = self.session.run(
                list(ONNX_OUTPUTS), dict(zip(ONNX_INPUTS, (np.asarray(f) for f in feeds), strict=True))
            )
            return np.asarray(prob, np.float64), np.asarray(logits, np.float64)
        model = self.model
        assert model is not None
        with torch.no_grad():
            x = model_inputs(model, left, right)
            flags = [torch.from_numpy(f.astype(bool)).to(self.device) for f in (left_present, right_present)]
            logits = model(x[0], x[1], flags[0], flags[1])["logits"].float()
            prob = calibrated_probabilities(logits, self.head, self.temperatures)
        return prob.cpu().double().numpy(), logits.cpu().double().numpy()

    def predict_prepared(self, prepared: Sequence[PreparedPair]) -> list[PatientPrediction]:
        """Predict already preprocessed patients in one batch (failed ones pass through)."""
        ok = [p for p in prepared if not p.failed]
        results: dict[int, PatientPrediction] = {}
        if ok:
            s = self.preprocess.size
            n = len(ok)
            arrays = {side: np.zeros((n, 3, s, s), dtype=np.uint8) for side in SIDES}
            present = {side: np.zeros(n, dtype=bool) for side in SIDES}
            for i, p in enumerate(ok):
                for side in SIDES:
                    img = p.images[side]
                    if img is not None:
                        arrays[side][i] = img.transpose(2, 0, 1)
                        present[side][i] = True
            prob, _ = self.run_model(arrays["left"], arrays["right"], present["left"], present["right"])
            for i, p in enumerate(ok):
                results[id(p)] = self._decide(p, prob[i])
        return [
            results[id(p)] if not p.failed else PatientPrediction(p.id, failed=True, error=p.error)
            for p in prepared
        ]

    def _decide(self, prepared: PreparedPair, prob: np.ndarray) -> PatientPrediction:
        names = self.label_names
        return PatientPrediction(
            id=prepared.id,
            probabilities={k: float(v) for k, v in zip(names, prob, strict=True)},
            labels=[k for k, v, t in zip(names, prob, self.thresholds, strict=True) if v > t],
            thresholds={k: float(t) for k, t in zip(names, self.thresholds, strict=True)},
            warnings=list(prepared.warnings),
            unusable_eyes=list(prepared.unusable),
        )

    def predict_pairs(
        self, pairs: Sequence[PatientInput], batch_size: int = 8, progress: bool = False
    ) -> list[PatientPrediction]:
        """Predict patients `(id, left, right)` in batches of `batch_size`, in input order.

        Each eye is a path, the file's bytes, or None. An unusable eye gives a warning and the
        patient is predicted from the other; a patient with no usable eye is `failed`.
        """
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
        pairs = list(pairs)
        starts = range(0, len(pairs), batch_size)
        out: list[PatientPrediction] = []
        for start in tqdm(starts, desc="predict", unit="batch", disable=not progress):
            chunk = pairs[start : start + batch_size]
            out.extend(self.predict_prepared([self.prepare_pair(str(pid), lt, rt) for pid, lt, rt in chunk]))
        return out


def load_onnx(path: Path) -> tuple[dict[str, Any], Any]:
    """Read an exported model's JSON sidecar and open it with onnxruntime on the CPU."""
    ort = optional_import("onnxruntime", "export")  # the `export` extra, checked first
    sidecar = Path(str(path) + ONNX_SIDECAR_SUFFIX)
    if not path.is_file():
        raise CheckpointError(f"ONNX model {path} does not exist")
    if not sidecar.is_file():
        raise CheckpointError(
            f"{path}: its sidecar {sidecar.name} is missing; it holds the preprocessing settings, labels "
            "and thresholds (re-export with `eyefuse export`)"
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{sidecar}: unreadable sidecar: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != "eyefuse-onnx" or "label_names" not in meta:
        raise CheckpointError(f"{sidecar}: not an eyefuse ONNX sidecar")
    if int(meta.get("format_version", 0)) > ONNX_SIDECAR_VERSION:
        raise CheckpointError(
            f"{sidecar}: sidecar format {meta['format_version']} is newer than this eyefuse reads "
            f"({ONNX_SIDECAR_VERSION}); upgrade eyefuse"
        )
    if meta.get("onnx_sha256") and sha256_file(path) != meta["onnx_sha256"]:
        raise CheckpointError(f"{path}: the file does not match its sidecar {sidecar.name} (sha256 differs)")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for invalid models
        raise CheckpointError(f"{path}: onnxruntime cannot load it: {e}") from e
    return meta, session


# --- outputs ------------------------------------------------------------------------------------


@dataclass
class WriteResult:
    """What `write_predictions` wrote."""

    path: Path
    format: str  # json | csv
    rows: int
    omitted: list[str] = field(default_factory=list)  # failed patients left out of the official CSV

    def notes(self) -> list[str]:
        if not self.omitted:
            return []
        return [
            f"official CSV: {len(self.omitted)} failed patient(s) omitted ({name_listing(self.omitted)}); "
            "the official checker needs a row for every patient of the test set"
        ]


def summary_counts(preds: Sequence[PatientPrediction]) -> dict[str, int]:
    """Patients in total, predicted, predicted with warnings, failed."""
    return {
        "patients": len(preds),
        "predicted": sum(not p.failed for p in preds),
        "with_warnings": sum(bool(p.warnings) and not p.failed for p in preds),
        "failed": sum(p.failed for p in preds),
    }


def write_predictions(
    preds: Sequence[PatientPrediction],
    out_path: str | Path,
    *,
    label_names: Sequence[str] | None = None,
    model_info: Mapping[str, Any] | None = None,
) -> WriteResult:
    """Write predictions atomically: `.json` -> `{"model", "summary", "predictions"}`; `.csv` -> the
    official submission CSV `ID,<labels>` of probabilities (failed patients omitted and counted).

    `label_names` defaults to the labels of the first successful prediction.
    """
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ConfigError(f"--out {out_path}: choose a .json or .csv file name")
    ok = [p for p in preds if not p.failed]
    if label_names is None:
        if not ok:
            label_names = ODIR_LABELS
        else:
            label_names = list(ok[0].probabilities)
    if suffix == ".json":
        doc = {
            "model": dict(model_info) if model_info is not None else None,
            "summary": summary_counts(preds),
            "predictions": [p.to_dict() for p in preds],
        }
        atomic_write_json(out_path, doc)
        return WriteResult(out_path, "json", len(preds))
    prob = np.array([[p.probabilities[k] for k in label_names] for p in ok], dtype=np.float64)
    write_submission(out_path, [p.id for p in ok], prob.reshape(len(ok), len(label_names)), label_names)
    return WriteResult(out_path, "csv", len(ok), omitted=[p.id for p in preds if p.failed])


# --- the command --------------------------------------------------------------------------------


@dataclass
class PredictSummary:
    """The result of `run_predict`; `str()` is what the command prints."""

    predictions: list[PatientPrediction]
    label_names: tuple[str, ...]
    checkpoint: str
    single: bool
    written: WriteResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return summary_counts(self.predictions)

    def __str__(self) -> str:
        lines: list[str] = []
        if self.single:
            lines += _format_single(self.predictions[0], self.label_names)
        else:
            c = self.counts
            lines.append(
                f"{c['patients']} patients: {c['predicted']} predicted ({c['with_warnings']} with warnings), "
                f"{c['failed']} failed"
            )
            if self.written is None:
                lines += _format_table(self.predictions, self.label_names)
            else:
                for p in self.predictions:
                    lines += [f"patient {p.id}: {w}" for w in p.warnings]
                    if p.failed:
                        lines.append(f"patient {p.id}: FAILED: {p.error}")
        lines += self.notes
        if self.written is not None:
            lines += self.written.notes()
            lines.append(f"written: {self.written.path} ({self.written.format}, {self.written.rows} rows)")
        lines.append(f"model: {self.checkpoint}")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "   nan" if not math.isfinite(x) else f"{x:.4f}"


def _format_single(p: PatientPrediction, label_names: Sequence[str]) -> list[str]:
    if p.failed:
        return [f"patient {p.id}: FAILED: {p.error}"]
    lines = [f"patient {p.id}", "  label  probability  threshold  decision"]
    for k in label_names:
        name = ODIR_LABEL_NAMES.get(k, "")
        decision = "positive" if k in p.labels else "-"
        lines.append(
            f"  {k:<5}  {_fmt(p.probabilities[k]):>11}  {p.thresholds[k]:>9.4f}  {decision:<8}  {name}"
        )
    lines.append("predicted labels: " + (", ".join(p.labels) if p.labels else "none above its threshold"))
    lines += [f"warning: {w}" for w in p.warnings]
    return lines


def _format_table(preds: Sequence[PatientPrediction], label_names: Sequence[str]) -> list[str]:
    width = max([len("patient"), *(len(p.id) for p in preds)])
    lines = [f"{'patient':<{width}}  " + "  ".join(f"{k:>6}" for k in label_names) + "  labels"]
    for p in preds:
        if p.failed:
            lines.append(f"{p.id:<{width}}  FAILED: {p.error}")
            continue
        probs = "  ".join(f"{p.probabilities[k]:6.3f}" for k in label_names)
        lines.append(f"{p.id:<{width}}  {probs}  {','.join(p.labels) or '-'}")
        lines += [f"{'':<{width}}  warning: {w}" for w in p.warnings]
    return lines


def run_predict(
    checkpoint: str | Path,
    *,
    left: str | Path | None = None,
    right: str | Path | None = None,
    csv: str | Path | None = None,
    directory: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    progress: bool = True,
    device: str = "cpu",
) -> PredictSummary:
    """`eyefuse predict`: one pair (`left`/`right`, one of them may be left out), a CSV of pairs or
    a folder of `{ID}_left/right` files; write `out` (.json or .csv) when given."""
    given = [
        name for name, v in (("--left/--right", left or right), ("--csv", csv), ("--dir", directory)) if v
    ]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one input: --left L --right R, --csv FILE or --dir FOLDER"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if out is not None and Path(out).suffix.lower() not in (".json", ".csv"):
        raise ConfigError(f"--out {out}: choose a .json or .csv file name")
    notes: list[str] = []
    if csv is not None:
        pairs: Sequence[PatientInput] = pairs_from_csv(csv)
    elif directory is not None:
        inputs = pairs_from_dir(directory)
        notes += inputs.notes()
        pairs = inputs
    else:
        lp = Path(left) if left else None
        rp = Path(right) if right else None
        pairs = [(pair_id_from_files(lp, rp), lp, rp)]
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    notes.append(f"decisions: {predictor.decision_rule()}")
    preds = predictor.predict_pairs(pairs, batch_size=batch_size, progress=progress and len(pairs) > 1)
    written = None
    if out is not None:
        written = write_predictions(
            preds, out, label_names=predictor.label_names, model_info=predictor.describe()
        )
    return PredictSummary(
        preds,
        predictor.label_names,
        str(predictor.source),
        single=csv is None and directory is None,
        written=written,
        notes=notes,
    )


__all__ = [
    "EyeSource",
    "PairInputs",
    "PatientInput",
    "PatientPrediction",
    "PredictSummary",
    "Predictor",
    "PreparedPair",
    "WriteResult",
    "pairs_from_csv",
    "pairs_from_dir",
    "run_predict",
    "write_predictions",
]
