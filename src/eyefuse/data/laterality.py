"""Which eye a fundus photograph shows, read from the photograph itself (`estimate_laterality`).

The optic disc sits on the nasal side: as photographed, on the viewer's right in a right eye and on
the left in a left eye (macula-centred photographs, the ODIR convention; `eyefuse synth` draws them
so). The disc is the brightest compact region of the fundus, so the side is where the strongest
disc-sized bright blob lies, left or right of the field-of-view centre. The estimate abstains
("unknown") when that blob is not clearly brighter than the best candidate on the other side, or
lies near the vertical midline (a disc-centred photograph, or no visible disc).

It works on a model input (`preprocess_image`'s output: square, field of view centred, black
outside), with any enhancement, so predict and the service call it on the images they already have.
Its accuracy on real photographs is printed by `benchmarks/check_laterality.py`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: Side of the square the estimate works at (the disc is about 1/10 of the field-of-view diameter).
WORK = 128
#: Disc-sized smoothing, and background scale, in fractions of the field-of-view radius.
DISC_SIGMA = 0.07
BACKGROUND_SIGMA = 0.35
#: The disc must lie at least this far (fraction of the radius) from the vertical midline.
MIN_OFFSET = 0.15
#: ... and at most this far above or below the horizontal one.
MAX_HEIGHT = 0.5
#: Abstain unless the best blob beats the other side's best by this many robust standard deviations.
MIN_MARGIN = 1.5


@dataclass(frozen=True)
class Laterality:
    """The estimate: `side` "left", "right" or "unknown"; `margin`, how many robust standard
    deviations the disc candidate beats the other side's best (0 when there is no candidate);
    `disc_x`, `disc_y`, the candidate's position in fractions of the radius from the centre
    (x to the viewer's right, y down)."""

    side: str
    margin: float
    disc_x: float
    disc_y: float


def _masked_blur(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the mask only (blur of the masked image over the blur of the mask)."""
    num = cv2.GaussianBlur(img * mask, (0, 0), sigma)
    den = cv2.GaussianBlur(mask, (0, 0), sigma)
    return num / np.maximum(den, 1e-3)


def estimate_laterality(img: np.ndarray) -> Laterality:
    """Estimate which eye a preprocessed fundus photograph (RGB uint8, square, field of view
    centred, black outside it) shows, from the side of the optic disc; "unknown" when not sure."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 16:
        raise ValueError(f"expected an RGB image, got shape {img.shape}")
    small = cv2.resize(img, (WORK, WORK), interpolation=cv2.INTER_AREA)
    fov = (small.max(axis=2) > 8).astype(np.uint8)
    area = int(fov.sum())
    if area < 0.1 * WORK * WORK:
        return Laterality("unknown", 0.0, 0.0, 0.0)
    ys, xs = np.nonzero(fov)
    cx, cy = float(xs.mean()), float(ys.mean())
    r = math.sqrt(area / math.pi)
    # Leave out the rim, where vignetting, the mask edge and enhancement halos are.
    inner = cv2.erode(
        fov, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)), iterations=max(1, round(0.03 * r))
    )
    mask = inner.astype(np.float32)
    gray = small.astype(np.float32).mean(axis=2)
    local = _masked_blur(gray, mask, DISC_SIGMA * r) - _masked_blur(gray, mask, BACKGROUND_SIGMA * r)
    values = local[inner > 0]
    if values.size < 50:
        return Laterality("unknown", 0.0, 0.0, 0.0)
    med = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - med))) + 1e-6
    score = np.where(inner > 0, local, -np.inf)
    xx = np.arange(WORK, dtype=np.float32)[None, :] - cx
    yy = np.arange(WORK, dtype=np.float32)[:, None] - cy
    # Candidates away from the vertical midline, and near the horizontal one (the disc lies about
    # level with the macula; bright spots at the top or bottom are reflections or lesions).
    band = (np.abs(xx) >= MIN_OFFSET * r) & (np.abs(yy) <= MAX_HEIGHT * r)
    right = np.where(band & (xx > 0), score, -np.inf)
    left = np.where(band & (xx < 0), score, -np.inf)
    best_r, best_l = float(right.max()), float(left.max())
    if not (np.isfinite(best_r) or np.isfinite(best_l)):
        return Laterality("unknown", 0.0, 0.0, 0.0)
    side_map, best, other = (right, best_r, best_l) if best_r >= best_l else (left, best_l, best_r)
    py, px = np.unravel_index(int(np.argmax(side_map)), side_map.shape)
    margin = (best - other) / spread if np.isfinite(other) else float("inf")
    dx, dy = (px - cx) / r, (py - cy) / r
    side = ("right" if dx > 0 else "left") if margin >= MIN_MARGIN else "unknown"
    return Laterality(side, float(min(margin, 99.0)), float(dx), float(dy))


def same_photograph(a: object, b: object) -> bool:
    """Whether two eye sources (paths or bytes) are the same file: the same path, or the same bytes
    (compared only when the sizes are equal, so two different files cost two `stat` calls)."""
    if a is None or b is None:
        return False

    def size(x: object) -> int | None:
        if isinstance(x, (bytes, bytearray, memoryview)):
            return len(x)
        try:
            return os.stat(x).st_size  # type: ignore[arg-type]
        except (OSError, TypeError, ValueError):
            return None

    paths = isinstance(a, (str, Path)) and isinstance(b, (str, Path))
    if paths and os.path.abspath(a) == os.path.abspath(b):  # type: ignore[arg-type]
        return True
    sa, sb = size(a), size(b)
    if sa is None or sa != sb:
        return False

    def content(x: object) -> bytes | bytearray | memoryview:
        if isinstance(x, (bytes, bytearray, memoryview)):
            return x  # compared in place, not copied
        return Path(x).read_bytes()  # type: ignore[arg-type]

    try:
        return content(a) == content(b)
    except OSError:
        return False


def input_warnings(
    images: Mapping[str, np.ndarray | None],
    *,
    same_file: bool = False,
    notes: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Warnings where the input is probably wrong, in the wording predict and the service share:
    the same photograph given for both eyes, an eye whose photograph looks like the other side
    (`estimate_laterality`, which abstains when unsure), and decoding notes (corrupt JPEG data)."""
    out: list[str] = []
    if same_file:
        out.append("the same photograph was given for both eyes; check that each eye has its own file")
    for side, img in images.items():
        for note in (notes or {}).get(side, ()):
            out.append(f"{side} eye: {note}")
        if img is None or same_file:  # with one photograph for both, one side is wrong anyway
            continue
        est = estimate_laterality(img)
        if est.side not in ("unknown", side):
            out.append(
                f"{side} eye: the photograph looks like a {est.side} eye (optic disc on the {est.side} "
                "of the image); check that the eyes are not swapped"
            )
    return out


__all__ = ["Laterality", "estimate_laterality", "input_warnings", "same_photograph"]
