"""The pointing game: do the Grad-CAM maps point at the lesions?

On the synthetic data every sign is drawn into a lesion mask (`masks/{ID}_{side}.png`, bit i for
label i). For every eye of a split that carries a label's signs, the label's Grad-CAM map of that
eye (computed through the two-branch model, as `eyefuse explain` does) is a hit when its peak lies
on the label's lesion pixels (dilated by a small tolerance). The baseline is chance: the fraction
of the field of view that the dilated lesion covers, i.e. the hit rate of a map whose peak falls at
a random point of the photograph. Cataract (C) marks the whole field of view, so it is left out by
default: every peak would hit. A label whose chance rate is above `INFORMATIVE_CHANCE` (e.g. M,
whose tessellation covers most of the fundus) says little about where a map points, so the summary
prints the pooled row twice: over every label, and over the labels at or below that chance rate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from eyefuse.data.odir import load_dataset
from eyefuse.errors import ConfigError
from eyefuse.serve.explain import (
    explain_pair,
    lesion_mask,
    mask_to_preprocessed,
    pointing_game,
    read_lesion_mask,
)
from eyefuse.serve.predict import Predictor

DEFAULT_EXCLUDED = ("N", "C")

#: Labels whose chance rate exceeds this are left out of the second pooled row ("informative").
INFORMATIVE_CHANCE = 0.5


@dataclass
class PointingResult:
    """Hits and trials per label, with the chance rate of a random peak."""

    hits: dict[str, int] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)  # mean over trials of the lesion area share
    tolerance_px: int = 0
    size: int = 0
    layer: str = "last"

    def pooled(self, labels: list[str] | None = None) -> tuple[int, float, float]:
        """(eyes, hit rate, chance rate) pooled over `labels` (default every label)."""
        keys = list(self.trials) if labels is None else [k for k in labels if k in self.trials]
        n = sum(self.trials[k] for k in keys)
        if not n:
            return 0, float("nan"), float("nan")
        hits = sum(self.hits[k] for k in keys)
        return n, hits / n, sum(self.chance[k] * self.trials[k] for k in keys) / n

    @property
    def informative_labels(self) -> list[str]:
        """Labels whose chance rate is at most `INFORMATIVE_CHANCE`."""
        return [k for k in self.trials if self.chance[k] <= INFORMATIVE_CHANCE]

    @property
    def hit_rate(self) -> float:
        return self.pooled()[1]

    @property
    def chance_rate(self) -> float:
        return self.pooled()[2]

    def __str__(self) -> str:
        lines = [
            f"pointing game: Grad-CAM ({self.layer} feature map) peak on the lesion "
            f"(dilated by {self.tolerance_px} px at {self.size} px)",
            f"{'label':<6} {'eyes':>5} {'hit rate':>9} {'chance':>7} {'ratio':>6}",
        ]
        for label in self.trials:
            n, h, c = self.trials[label], self.hits[label], self.chance[label]
            lines.append(
                f"{label:<6} {n:>5} {h / n:>9.3f} {c:>7.3f} {(h / n) / c if c else float('nan'):>6.1f}"
            )
        left_out = [k for k in self.trials if k not in self.informative_labels]
        rows = [("all", None)]
        if left_out:
            rows.append((f"all without {','.join(left_out)}", self.informative_labels))
        for name, labels in rows:
            n, hit, chance = self.pooled(labels)
            ratio = hit / chance if chance else float("nan")
            lines.append(f"{name:<6} {n:>5} {hit:>9.3f} {chance:>7.3f} {ratio:>6.1f}")
        if left_out:
            lines.append(
                f"({','.join(left_out)}: chance rate above {INFORMATIVE_CHANCE}, so a hit there says little "
                "about where the map points)"
            )
        return "\n".join(lines)


def pointing_game_study(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str = "offsite",
    labels: list[str] | None = None,
    tolerance_fraction: float = 0.02,
    max_patients: int | None = None,
    device: str = "cpu",
    layer: str = "last",
) -> PointingResult:
    """Play the pointing game on every lesion-bearing eye of `split` of a synthetic dataset, with
    Grad-CAM on the backbone's `last` feature map or the `previous` (finer) stage."""
    dataset = load_dataset(data)
    mask_dir = Path(dataset.root) / "masks"
    if not dataset.synthetic or not mask_dir.is_dir():
        raise ConfigError(
            f"{data}: the pointing game needs lesion masks (a dataset written by `eyefuse synth`)"
        )
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    names = list(predictor.label_names)
    wanted = labels or [n for n in names if n not in DEFAULT_EXCLUDED]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ConfigError(f"unknown labels {unknown}; the model's labels are {names}")
    size = predictor.preprocess.size
    tol = max(1, round(tolerance_fraction * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    result = PointingResult(tolerance_px=tol, size=size, layer=layer)
    chance_sum: dict[str, float] = {}
    patients = [p for p in dataset.patients if p.source == split]
    if not patients:
        raise ConfigError(f"{data}: no patients in split {split!r} (have {', '.join(dataset.sources())})")
    for p in patients[:max_patients]:
        masks, present = {}, {}
        for side in ("left", "right"):
            path = p.eye_path(side)
            if path is None or not (mask_dir / f"{Path(path).stem}.png").is_file():
                continue
            raw = read_lesion_mask(mask_dir / f"{Path(path).stem}.png")
            present[side] = [lab for lab in wanted if lesion_mask(raw, lab, names).any()]
            masks[side] = raw
        todo = sorted({lab for labs in present.values() for lab in labs})
        if not todo:
            continue
        expl = explain_pair(
            predictor, p.eye_path("left"), p.eye_path("right"), todo, patient_id=p.id, layer=layer
        )
        for side, labs in present.items():
            fov = expl.fovs.get(side)
            if fov is None:
                continue
            circle = np.zeros((size, size), np.uint8)
            cv2.circle(circle, (size // 2, size // 2), size // 2, 1, -1)
            for lab in labs:
                cam = expl.cams[lab][side]
                target = mask_to_preprocessed(lesion_mask(masks[side], lab, names), fov, predictor.preprocess)
                if cam is None or not target.any():
                    continue
                dilated = cv2.dilate(target.astype(np.uint8), kernel).astype(bool)  # what pointing_game hits
                result.trials[lab] = result.trials.get(lab, 0) + 1
                result.hits[lab] = result.hits.get(lab, 0) + int(pointing_game(cam, target, tolerance=tol))
                chance_sum[lab] = chance_sum.get(lab, 0.0) + float(
                    (dilated & (circle > 0)).sum() / circle.sum()
                )
    result.chance = {lab: chance_sum[lab] / result.trials[lab] for lab in result.trials}
    order = {n: i for i, n in enumerate(names)}
    for attr in ("trials", "hits", "chance"):
        setattr(result, attr, dict(sorted(getattr(result, attr).items(), key=lambda kv: order[kv[0]])))
    return result
