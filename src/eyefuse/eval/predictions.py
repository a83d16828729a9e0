"""`predictions.csv`: one evaluated split, patient by patient, as `eyefuse compare` reads it.

`eyefuse evaluate --out REPORT` and every cell of `eyefuse ablate` write the same file:

    ID,true_N,...,true_O,prob_N,...,prob_O,rank_N,...,rank_O

`true_*` the patient's labels, `prob_*` the decision scores (what thresholds apply to, the official
score's kappa and F1 at 0.5), `rank_*` the ranking scores (macro AUROC and the official pooled AUC;
the same as `prob_*` for the sigmoid head). Keeping the scores per patient is what makes a paired
comparison of two separately trained models possible later: the same patients, drawn together.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eyefuse.errors import DataError
from eyefuse.eval.compare import stack_scores
from eyefuse.utils.io import atomic_write_text

FILE_NAME = "predictions.csv"


@dataclass(frozen=True)
class Predictions:
    """One evaluated split read back: IDs in file order, label names, 0/1 truth (``N x L``) and the
    `stack_scores` entry (``N x 2 x L``: decision scores, ranking scores)."""

    path: Path
    ids: list[str]
    label_names: tuple[str, ...]
    truth: np.ndarray
    scores: np.ndarray


def write_predictions(
    path: str | os.PathLike[str],
    ids: Sequence[str],
    truth: Any,
    prob: Any,
    rank_prob: Any,
    label_names: Sequence[str],
) -> None:
    """Write `predictions.csv` atomically (8 significant digits: ranks and thresholds survive)."""
    names = list(label_names)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["ID", *[f"true_{n}" for n in names], *[f"prob_{n}" for n in names], *[f"rank_{n}" for n in names]]
    )
    truth, prob, rank_prob = np.asarray(truth), np.asarray(prob), np.asarray(rank_prob)
    for i, pid in enumerate(ids):
        scores = [*prob[i], *rank_prob[i]]
        w.writerow([pid, *[int(v) for v in truth[i]], *[f"{float(p):.8g}" for p in scores]])
    atomic_write_text(path, buf.getvalue())


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read a `predictions.csv`; a malformed file is refused with its row and column named.

    A file written before ranking scores were stored (no ``rank_*`` columns) ranks its decisions."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the predictions ({e.__class__.__name__})", file=path) from None
    if not rows:
        raise DataError("empty file: expected the header ID,true_*,prob_*[,rank_*]", file=path)
    header = [h.strip() for h in rows[0]]
    names = tuple(h[len("true_") :] for h in header if h.startswith("true_"))
    n = len(names)
    expected = ["ID", *[f"true_{x}" for x in names], *[f"prob_{x}" for x in names]]
    has_rank = len(header) == 1 + 3 * n
    if has_rank:
        expected += [f"rank_{x}" for x in names]
    if n == 0 or header != expected:
        raise DataError(
            "not a predictions file: the header must be ID, then true_<label>, prob_<label> and "
            "optionally rank_<label> for the same labels in the same order",
            file=path,
            row=1,
        )
    ids: list[str] = []
    truth, prob, rank = [], [], []
    seen: dict[str, int] = {}
    for row_no, r in enumerate(rows[1:], start=2):
        if not r or all(not c.strip() for c in r):
            continue
        if len(r) != len(header):
            raise DataError(f"{len(r)} fields where the header has {len(header)}", file=path, row=row_no)
        pid = r[0].strip()
        if pid in seen:
            raise DataError(f"patient {pid} is listed twice (also row {seen[pid]})", file=path, row=row_no)
        seen[pid] = row_no
        try:
            t = [int(v) for v in r[1 : 1 + n]]
            values = [float(v) for v in r[1 + n :]]
        except ValueError:
            raise DataError("a label or score is not a number", file=path, row=row_no) from None
        if any(v not in (0, 1) for v in t):
            raise DataError("true_* labels must be 0 or 1", file=path, row=row_no)
        if any(not math.isfinite(v) or not 0.0 <= v <= 1.0 for v in values):
            raise DataError("scores must be probabilities between 0 and 1", file=path, row=row_no)
        ids.append(pid)
        truth.append(t)
        prob.append(values[:n])
        rank.append(values[n:] if has_rank else values[:n])
    if not ids:
        raise DataError("no patients in the file", file=path)
    return Predictions(
        path=path,
        ids=ids,
        label_names=names,
        truth=np.array(truth, dtype=int),
        scores=stack_scores(np.array(prob), np.array(rank)),
    )


__all__ = ["FILE_NAME", "Predictions", "read_predictions", "write_predictions"]
