"""The pointing game: do the Grad-CAM maps point at the lesions?

On the synthetic data every sign is drawn into a lesion mask (`masks/{ID}_{side}.png`, bit i for
label i). For every eye of a split that carries a label's signs, the label's Grad-CAM map of that
eye (computed through the two-branch model, as `eyefuse explain` does) is a hit when its peak lies
on the label's lesion pixels (dilated by a small tolerance). The baseline is chance: the fraction
of the field of view that the dilated lesion covers, i.e. the hit rate of a map whose peak falls at
a random point of the photograph. Cataract (C) marks the whole field of view, so it is left out by
default: every peak would hit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from eyefuse.errors import ConfigError

DEFAULT_EXCLUDED = ("N", "C")


@dataclass
class PointingResult:
    """Hits and trials per label, with the chance rate of a random peak."""

    hits: dict[str, int] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)  # mean over trials of the lesion area share
    tolerance_px: int = 0
    size: int = 0
    layer: str = "last"

    @property
    def hit_rate(self) -> float:
        n = sum(self.trials.values())
        return sum(self.hits.values()) / n if n else float("nan")

    @property
    def chance_rate(self) -> float:
        n = sum(self.trials.values())
        return sum(self.chance[k] * self.trials[k] for k in self.trials) / n if n else float("nan")

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
        lines.append(
            f"{'all':<6} {sum(self.trials.values()):>5} {self.hit_rate:>9.3f} {self.chance_rate:>7.3f} "
            f"{self.hit_rate / self.chance_rate if self.chance_rate else float('nan'):>6.1f}"
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
    from eyefuse.data.odir import load_dataset
    from eyefuse.serve.explain import (
        explain_pair,
        lesion_mask,
        mask_to_preprocessed,
        pointing_game,
        read_lesion_mask,
    )
    from eyefuse.serve.predict import Predictor

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
