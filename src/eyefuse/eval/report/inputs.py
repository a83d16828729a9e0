"""What the report reads and refuses: the evaluation with the truth and scores it came from, and the
training log behind the training curves."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eyefuse.errors import DataError
from eyefuse.eval.metrics import check_truth_prob

#: Columns of the training log (`metrics.csv` written by the training engine) that the curves need.
TRAINING_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "val_final", "val_macro_auroc")

_EVALUATION_KEYS = (
    "n_patients",
    "label_names",
    "thresholds",
    "official",
    "official_ci",
    "per_class",
    "macro",
    "micro",
    "paper",
    "bootstrap",
)


def check_inputs(
    evaluation: Mapping[str, Any], truth: Any, prob: Any, context: Any, rank_prob: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refuse an evaluation that is not `evaluate_predictions` output or that was computed from other
    data than `truth`, which would make the figures contradict the tables.

    Returns `(truth, prob, rank)` as arrays; `rank` is `prob` when `rank_prob` is None.
    """
    if not isinstance(evaluation, Mapping):
        raise DataError(
            f"evaluation must be the dict of evaluate_predictions, got {type(evaluation).__name__}"
        )
    missing = [k for k in _EVALUATION_KEYS if k not in evaluation]
    if missing:
        raise DataError(
            f"evaluation lacks {', '.join(missing)}: expected the output of "
            "eyefuse.eval.metrics.evaluate_predictions"
        )
    if not isinstance(context, Mapping):
        raise DataError(f"report context must be a dict, got {type(context).__name__}")
    truth, prob = check_truth_prob(truth, prob)
    names = list(evaluation["label_names"])
    if len(evaluation["per_class"]) != len(names):
        raise DataError(
            f"evaluation has {len(evaluation['per_class'])} per-class rows for {len(names)} label names"
        )
    if truth.shape != (evaluation["n_patients"], len(names)):
        raise DataError(
            f"truth has shape {truth.shape} but the evaluation covers {evaluation['n_patients']} patients "
            f"x {len(names)} labels"
        )
    for j, row in enumerate(evaluation["per_class"]):
        n_pos = int(truth[:, j].sum())
        if row["n_pos"] != n_pos:
            raise DataError(
                f"truth does not match the evaluation: class {row['label']} has {n_pos} positive patients "
                f"here and {row['n_pos']} in the evaluation"
            )
    rank = prob if rank_prob is None else check_truth_prob(truth, rank_prob, what="rank_prob")[1]
    return truth, prob, rank


def read_training_log(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a training `metrics.csv` that the curves need, as float arrays by epoch.

    Empty cells (an epoch without validation) become NaN and are counted in the figure caption; a
    missing column or a cell that is not a number raises `DataError` naming the file, row and column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("training metrics file not found", file=path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in TRAINING_COLUMNS:
            if col not in header:
                raise DataError(
                    f"missing column (the training log needs {', '.join(TRAINING_COLUMNS)})",
                    file=path,
                    column=col,
                )
        values: dict[str, list[float]] = {c: [] for c in TRAINING_COLUMNS}
        for i, row in enumerate(reader):
            for col in TRAINING_COLUMNS:
                cell = (row.get(col) or "").strip()
                try:
                    values[col].append(float(cell) if cell else math.nan)
                except ValueError:
                    raise DataError(f"{cell!r} is not a number", file=path, row=i + 2, column=col) from None
    if not values["epoch"]:
        raise DataError("the training log has a header but no epoch", file=path)
    epochs = np.asarray(values["epoch"])
    if not np.isfinite(epochs).all():
        row = int(np.argmin(np.isfinite(epochs))) + 2
        raise DataError("epoch is empty", file=path, row=row, column="epoch")
    return {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}
