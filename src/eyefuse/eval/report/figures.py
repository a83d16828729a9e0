"""The report's figures as PNG bytes: ROC and precision-recall curves, confusion matrices, the
reliability diagram and the training curves, drawn on matplotlib's Agg canvas without pyplot."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from sklearn.metrics import precision_recall_curve, roc_curve

from eyefuse.eval.calibration import expected_calibration_error, reliability_curve
from eyefuse.eval.report.formatting import num
from eyefuse.eval.report.model import Figure

#: Bins of the reliability diagram and of the ECE in its title (the calibration module's default).
RELIABILITY_BINS = 15


def _new_figure(width: float, height: float) -> MplFigure:
    """A figure on the Agg canvas, without pyplot, so no global backend state is touched."""
    fig = MplFigure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _grid(n_panels: int, panel_w: float = 2.4, panel_h: float = 2.2) -> tuple[MplFigure, list[Axes]]:
    """Small multiples: up to 4 panels a row; unused panels are hidden."""
    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = _new_figure(panel_w * ncols, panel_h * nrows)
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _undefined_panel(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#a33")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


def _roc_figure(evaluation: Mapping[str, Any], truth: np.ndarray, prob: np.ndarray) -> Figure:
    """Per-class ROC curves of the ranking scores `prob`."""
    per_class = evaluation["per_class"]
    fig, axes = _grid(len(per_class))
    ncols = min(4, len(per_class))
    for j, (ax, r) in enumerate(zip(axes, per_class, strict=True)):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        if r["auroc"] is None:
            _undefined_panel(ax, "AUROC undefined\n(no positive or\nno negative patient)")
            ax.set_title(f"{r['label']}: AUROC n/a")
        else:
            fpr, tpr, _ = roc_curve(truth[:, j], prob[:, j])
            ax.plot(fpr, tpr, lw=1.4, color="C0")
            # The operating point at the fitted threshold shows where the thresholded metrics sit.
            ax.plot(1 - r["specificity"], r["sensitivity"], "o", ms=4, color="C3")
            ax.set_title(f"{r['label']}: AUROC {r['auroc']:.3f}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        if j % ncols == 0:
            ax.set_ylabel("sensitivity")
        if j >= len(per_class) - ncols:
            ax.set_xlabel("1 - specificity")
    fig.suptitle("ROC curves per class (dot: fitted threshold; dashed: chance)")
    return Figure(
        "roc_curves.png",
        "ROC curves per class",
        "ROC curve of each class with its AUROC; the dot is the operating point at the fitted threshold, "
        "the dashed diagonal is chance.",
        _png(fig),
    )


def _pr_figure(evaluation: Mapping[str, Any], truth: np.ndarray, prob: np.ndarray) -> Figure:
    """Per-class precision-recall curves of the ranking scores `prob`."""
    per_class = evaluation["per_class"]
    fig, axes = _grid(len(per_class))
    ncols = min(4, len(per_class))
    for j, (ax, r) in enumerate(zip(axes, per_class, strict=True)):
        if r["n_pos"] == 0:
            _undefined_panel(ax, "no positive patient:\nPR curve undefined")
            ax.set_title(f"{r['label']}: AP n/a")
        else:
            precision, recall, _ = precision_recall_curve(truth[:, j], prob[:, j])
            ax.step(recall, precision, where="post", lw=1.4, color="C0")
            # A classifier without skill has precision = prevalence at every recall.
            ax.axhline(r["prevalence"], ls="--", lw=0.8, color="0.6")
            if r["precision"] is not None and r["sensitivity"] is not None:
                ax.plot(r["sensitivity"], r["precision"], "o", ms=4, color="C3")
            ax.set_title(f"{r['label']}: AP {num(r['auprc'], 3)}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        if j % ncols == 0:
            ax.set_ylabel("precision")
        if j >= len(per_class) - ncols:
            ax.set_xlabel("recall (sensitivity)")
    fig.suptitle("Precision-recall curves per class (dashed: prevalence)")
    return Figure(
        "pr_curves.png",
        "Precision-recall curves per class",
        "Precision-recall curve of each class with its average precision (AP = AUPRC); the dashed line "
        "is the prevalence (no skill), the dot the fitted threshold.",
        _png(fig),
    )


def _confusion_figure(evaluation: Mapping[str, Any]) -> Figure:
    per_class = evaluation["per_class"]
    fig, axes = _grid(len(per_class), panel_w=2.1, panel_h=2.1)
    for ax, r in zip(axes, per_class, strict=True):
        counts = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]], dtype=np.float64)
        # Colour by the share of each true row, so a rare class's errors are visible beside its size.
        rate = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
        for (i, k), c in np.ndenumerate(counts):
            ax.text(
                k,
                i,
                f"{int(c)}",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if rate[i, k] > 0.6 else "black",
            )
        ax.set_xticks([0, 1], ["pred 0", "pred 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(f"{r['label']} (threshold {r['threshold']:.3f})")
    fig.suptitle("Confusion matrices at the fitted thresholds (counts of patients)")
    return Figure(
        "confusion_matrices.png",
        "Confusion matrices per class",
        "Counts of patients per class at its fitted threshold (prob > threshold); the shade is the share "
        "of each true row.",
        _png(fig),
    )


def _reliability_figure(truth: np.ndarray, prob: np.ndarray) -> Figure:
    curve = reliability_curve(truth, prob, n_bins=RELIABILITY_BINS)
    ece = expected_calibration_error(truth, prob, n_bins=RELIABILITY_BINS)
    fig = _new_figure(4.6, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6", label="perfect calibration")
    pts = [(c, a) for c, a in zip(curve["confidence"], curve["accuracy"], strict=True) if c is not None]
    if pts:
        conf, acc = zip(*pts, strict=True)
        top.plot(conf, acc, "o-", ms=4, lw=1.4, color="C0", label="model")
    top.set_ylabel("observed positive rate")
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"Reliability, all labels pooled (ECE {ece:.3f}, {RELIABILITY_BINS} bins)")
    width = 1.0 / RELIABILITY_BINS
    bottom.bar(curve["bin_centers"], curve["counts"], width=width * 0.9, color="C0", alpha=0.6)
    bottom.set_yscale("symlog")
    bottom.set_ylabel("entries")
    bottom.set_xlabel("predicted probability")
    return Figure(
        "reliability.png",
        "Reliability diagram",
        f"Observed positive rate against mean predicted probability in {RELIABILITY_BINS} equal-width "
        f"bins, every patient x label entry pooled; expected calibration error {ece:.4f}. Below: entries "
        "per bin.",
        _png(fig),
    )


def _training_figure(log: Mapping[str, np.ndarray], checkpoint_epoch: Any) -> Figure:
    epoch = log["epoch"]
    fig = _new_figure(8.4, 3.0)
    left, right = fig.subplots(1, 2)
    series = (
        (left, "train_loss", "train loss", "C0"),
        (left, "val_loss", "validation loss", "C1"),
        (right, "val_final", "validation ODIR final", "C2"),
        (right, "val_macro_auroc", "validation macro AUROC", "C3"),
    )
    missing: list[str] = []
    for ax, col, label, color in series:
        ok = np.isfinite(log[col])
        if ok.any():
            ax.plot(epoch[ok], log[col][ok], "o-", ms=3, lw=1.3, color=color, label=label)
        if not ok.all():
            missing.append(f"{label}: {int((~ok).sum())} of {ok.size} epochs empty")
    for ax in (left, right):
        if isinstance(checkpoint_epoch, int | float) and not isinstance(checkpoint_epoch, bool):
            ax.axvline(checkpoint_epoch, ls=":", lw=1, color="0.4", label="evaluated checkpoint")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    left.set_title("Loss")
    right.set_title("Validation score")
    caption = "Training and validation loss, validation ODIR final score and macro AUROC by epoch."
    if missing:
        caption += " Not plotted: " + "; ".join(missing) + "."
    return Figure("training_curves.png", "Training curves", caption, _png(fig))


def render_figures(
    evaluation: Mapping[str, Any],
    truth: np.ndarray,
    prob: np.ndarray,
    training_log: Mapping[str, np.ndarray] | None,
    checkpoint_epoch: Any,
    rank: np.ndarray | None = None,
    probabilities: bool = True,
) -> list[Figure]:
    """ROC and PR curves of the ranking scores `rank` (default `prob`), confusion matrices, the
    reliability diagram (only when `probabilities`: a calibration figure of scores that are not
    per-label probabilities would measure nothing), training curves."""
    rank = prob if rank is None else rank
    # Compact panels: the defaults (10 pt) crowd small multiples.
    with matplotlib.rc_context({"font.size": 8, "axes.titlesize": 9, "figure.titlesize": 10}):
        figures = [
            _roc_figure(evaluation, truth, rank),
            _pr_figure(evaluation, truth, rank),
            _confusion_figure(evaluation),
        ]
        if probabilities:
            figures.append(_reliability_figure(truth, prob))
        if training_log is not None:
            figures.append(_training_figure(training_log, checkpoint_epoch))
    return figures
