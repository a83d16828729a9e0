"""Preprocessing of one fundus photograph into a model input: the one function used everywhere.

`preprocess_image` is called by `eyefuse preprocess`, by the preprocessing cache (training), by
predict and by the web service, so training and inference see exactly the same pixels:

1. decode (`eyefuse.data.decode.decode_image`): a large JPEG is decoded at 1/2, 1/4 or 1/8 scale
   directly from its DCT coefficients, which skips most of the inverse DCT, colour conversion and
   memory traffic (the entropy decoding remains) and loses nothing once the image is shrunk to the
   input size anyway; other formats are box-averaged by the same factor right after decoding;
2. find the field of view (`eyefuse.data.fov.find_fov`) on block means of the source whose size
   depends on the source only, so the same photograph gets the same field of view at every output
   size: the bright circle of the retina on the dark border, fitted robustly (RANSAC + least
   squares) to the edge of the largest bright region, ignoring the frame edges where the circle is
   cut off; when no circle fits, an ellipse, a fundus cropped by the frame, or the region's extent;
3. crop the field of view's bounding box (+ `margin`), padding with black where it leaves the
   frame, and resize to `size` (anti-aliased when shrinking: `_resize_down`);
4. enhance (`graham` local contrast, `clahe` on the L channel of Lab, or `none`);
5. black out everything outside the field of view (`mask`).

Decisions where the task left room (documented here once):

- EXIF orientation is applied, by both decoders (OpenCV and Pillow agree), so an image is processed
  as every viewer shows it; the returned circle is in the pixel coordinates of that oriented image at
  full source resolution. ODIR images carry no orientation tag.
- A JPEG without the end-of-image marker (FFD9) in its last 4 KiB is refused as truncated: libjpeg
  would silently fill the missing rows with grey. Other formats are decoded by Pillow in strict
  mode, which raises on truncation.
- Images over `MAX_PIXELS` (25 MP, by header size, before decoding; the largest fundus cameras
  have about 24 MP) are refused, which bounds one decode's memory; images under `MIN_SIDE` pixels
  are refused as too small to hold a field of view. libjpeg's "Corrupt JPEG data" warnings are
  captured, not printed, and returned in `notes` (predict and the service show them as warnings).
- An ellipse (`FovCircle.radius_y`: a circle whose photograph was resized to another aspect ratio,
  as in Kaggle's 512 x 512 copies) is mapped to the square input by stretching its bounding box to
  the square: it becomes a circle again, which undoes the resize, and is masked as one. A
  photograph cropped to the fundus (method ``cropped``) or known only by its bright region's extent
  (``extent``) gets the ellipse inscribed in that box as its field of view and mask: the corners
  of a cut fundus are dropped rather than risk keeping border or labels.
- 16-bit images are scaled by their full 16-bit range (high byte), never by their content, so that
  the result does not depend on the picture; 32-bit float images are refused. Alpha is dropped
  (not composited); palette images are expanded; multi-frame files use their first frame.
- `graham` subtracts a mask-normalised Gaussian (the blur of the masked image divided by the blur of
  the mask), so the black outside the circle does not leak in as a bright halo at the edge. Ben
  Graham instead masked to 90 % of the radius, losing the periphery; here the mask keeps
  `FOV_MASK_FRACTION` (98 %) of the radius, which only drops the optics' dark fall-off at the rim,
  and also excludes the rows or columns where the circle is cut off by the frame.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from eyefuse.config import PreprocessConfig
from eyefuse.data.decode import (
    _SOURCE_LABEL_ARRAY,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MIN_SIDE,
    WORK_SIDE,
    PreprocessError,
    _label,
    decode_image,
    jpeg_reduction,
    work_block,
)
from eyefuse.data.fov import FOV_MASK_FRACTION, FOV_METHODS, FovCircle, find_fov
from eyefuse.errors import ConfigError
from eyefuse.utils.io import atomic_open, atomic_write_bytes

#: Headers of the lists `preprocess_files` writes beside its PNGs (the CLI recognises its own
#: earlier lists by them).
FOV_CSV_HEADER = ("path", "cx", "cy", "radius", "output", "radius_y", "method")
FAILED_CSV_HEADER = ("path", "reason")

# --- crop, resize, enhance, mask ----------------------------------------------------------------


def _crop_square(
    rgb: np.ndarray, x0: int, y0: int, side: int, height: int | None = None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`rgb[y0:y0+height, x0:x0+side]` (`height` defaults to `side`), padded with black where the
    box leaves the frame.

    Returns the crop and the box `(left, top, right, bottom)` of real pixels in crop coordinates.
    """
    h, w = rgb.shape[:2]
    side_y = side if height is None else height
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side_y, h)
    box = (xa - x0, ya - y0, xb - x0, yb - y0)
    if xa >= xb or ya >= yb:
        return np.zeros((side_y, side, 3), np.uint8), (0, 0, 0, 0)
    crop = rgb[ya:yb, xa:xb]
    pads = (ya - y0, y0 + side_y - yb, xa - x0, x0 + side - xb)
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return crop, box


def _fov_mask(size: int, cx: float, cy: float, radius: float, box: tuple[float, ...]) -> np.ndarray:
    """uint8 0/255 mask of the disc (sub-pixel centre and radius) within the box of real pixels."""
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (round(cx * 16), round(cy * 16)), max(0, round(radius * 16)), 255, -1, cv2.LINE_8, 4)
    left, top, right, bottom = (min(size, max(0, round(v))) for v in box)
    # Where the circle is cut by the frame (padded rows/columns), there is no retina to keep.
    mask[:top] = 0
    mask[bottom:] = 0
    mask[:, :left] = 0
    mask[:, right:] = 0
    return mask


def _apply_mask(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`img` where `mask` is non-zero, black elsewhere (OpenCV zero-fills the new array; ten times
    faster than numpy's broadcast over the 3-long channel axis)."""
    return cv2.copyTo(img, mask)


def _blur_factor(sigma: float, h: int, w: int) -> int:
    """Coarse-grid factor for a Gaussian of `sigma` px: the largest f <= sigma / 1.8 (at most 8) that
    divides both sides, so that the resizes take OpenCV's fast integer-ratio paths."""
    top = int(min(8, max(1, sigma / 1.8)))
    return max(f for f in range(1, top + 1) if h % f == 0 and w % f == 0)


def _coarse_blur(img: np.ndarray, sigma: float, f: int) -> np.ndarray:
    """Gaussian blur (sigma in px) of a uint8 image, as float32 on the grid `f` times coarser.

    A Gaussian of sigma >= 1.8 f px has almost no content near that grid's Nyquist frequency, so
    blurring there and upsampling bilinearly afterwards closely matches the full-resolution blur,
    several times faster. The variances of the area downsample ((f^2 - 1) / 12) and of the
    bilinear upsample (f^2 / 6) are taken off the Gaussian's. The downsample is done on the uint8
    image, which saves the conversion of the full image to float; its rounding, at most half a
    grey level per coarse pixel, is averaged by the blur.
    """
    if f == 1:
        return cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    h, w = img.shape[:2]
    small = cv2.resize(img, (w // f, h // f), interpolation=cv2.INTER_AREA).astype(np.float32)
    var = sigma * sigma - (f * f - 1) / 12.0 - f * f / 6.0
    return cv2.GaussianBlur(small, (0, 0), math.sqrt(var) / f, borderType=cv2.BORDER_REPLICATE)


def _graham(img: np.ndarray, cfg: PreprocessConfig, radius: float, mask: np.ndarray | None) -> np.ndarray:
    """`weight * (img - local mean) + 128`, the local mean a Gaussian of `graham_sigma` px per 300 px
    of field-of-view radius (Ben Graham's filter, made independent of the image scale)."""
    sigma = cfg.graham_sigma * radius / 300.0
    h, w = img.shape[:2]
    f = _blur_factor(sigma, h, w)
    if mask is None:
        mean = _coarse_blur(img, sigma, f)
    else:
        # Mask-normalised blur: the local mean over field-of-view pixels only, so the black outside
        # does not darken the mean near the edge (which would show as a bright halo). The quotient is
        # smooth, so it is taken on the coarse grid and only then upsampled. The mask is 0/255, so
        # its uint8 downsample keeps the covered fraction to 1/255.
        num = _coarse_blur(_apply_mask(img, mask), sigma, f)
        den = _coarse_blur(mask, sigma, f)
        mean = num * (255.0 / np.maximum(den, 0.255))[..., None]
    if f > 1:
        mean = cv2.resize(mean, (w, h), interpolation=cv2.INTER_LINEAR)
    wt = float(cfg.graham_weight)
    return cv2.addWeighted(img, wt, mean, -wt, 128.0, dtype=cv2.CV_8U)  # rounds and saturates to 0..255


def _resize_down(img: np.ndarray, size: int) -> np.ndarray:
    """Shrink a square image to `size`, anti-aliased, on OpenCV's fast paths.

    1. While the image is at least twice the size and its side is even, average 2 x 2 blocks
       (exact area averaging; `fov_square` makes the crop's side even).
    2. Then, under twice the size, bilinear: each output pixel from the 2 x 2 source pixels around
       it, so every source pixel still contributes and there is little aliasing (the input has
       also been low-passed by the DCT-domain reduction of the decoder).
    3. An odd side still twice the size or more (a crop made by other code): bilinear to the
       largest integer multiple m x `size` below it, then m x m block averaging.

    It stays close to OpenCV's direct area resize (`test_resize_down_matches_area_averaging`
    requires over 40 dB PSNR and the same geometry) at a fraction of its cost: OpenCV's area
    resize is fast only for integer ratios.
    """
    while img.shape[0] >= 2 * size and img.shape[0] % 2 == 0:
        half = img.shape[0] // 2
        img = cv2.resize(img, (half, half), interpolation=cv2.INTER_AREA)
    side = img.shape[0]
    if side == size:
        return np.ascontiguousarray(img)
    if side < 2 * size:
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    m = side // size
    img = cv2.resize(img, (m * size, m * size), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


@functools.lru_cache(maxsize=8)
def _clahe(clip: float, grid: int) -> cv2.CLAHE:
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid))


def _clahe_rgb(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab[..., 0] = _clahe(float(cfg.clahe_clip), int(cfg.clahe_grid)).apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def check_config(cfg: PreprocessConfig) -> None:
    """Validate `cfg`, including the numeric fields `PreprocessConfig.validate` leaves open."""
    cfg.validate()
    if not cfg.margin >= 0.0 or cfg.margin > 1.0:
        raise ConfigError(
            f"preprocess.margin must be between 0 and 1 (fraction of the radius), not {cfg.margin}"
        )
    if not cfg.graham_sigma > 0.0:
        raise ConfigError(f"preprocess.graham_sigma must be positive, not {cfg.graham_sigma}")
    if not cfg.clahe_clip > 0.0:
        raise ConfigError(f"preprocess.clahe_clip must be positive, not {cfg.clahe_clip}")
    if not 1 <= cfg.clahe_grid <= 64:
        raise ConfigError(f"preprocess.clahe_grid must be between 1 and 64, not {cfg.clahe_grid}")


def fov_square(fov: FovCircle, cfg: PreprocessConfig) -> tuple[int, int, int]:
    """The square crop around a circular field of view, `(x0, y0, side)` in the circle's pixel
    coordinates: half-side `radius * (1 + margin)` rounded to whole pixels (so the side is even,
    which lets the resize halve it exactly), possibly reaching beyond the frame (padded black).
    Shared by preprocessing and by everything that maps source pixels into the model input (lesion
    masks). For an ellipse it is the square of its horizontal semi-axis; `fov_box` is exact."""
    half = max(1, round(fov.radius * (1.0 + cfg.margin)))
    # Pixel x covers [x - 0.5, x + 0.5), so the square spans [x0 - 0.5, x0 + 2 half - 0.5): its
    # middle x0 + half - 0.5 is put within half a pixel of the circle's centre.
    return math.floor(fov.cx + 1.0) - half, math.floor(fov.cy + 1.0) - half, 2 * half


def fov_box(fov: FovCircle, cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    """The crop around a field of view, `(x0, y0, width, height)`: `fov_square` for a circle; for
    an ellipse its bounding box (+ margin), which preprocessing stretches to the square input, so
    the ellipse becomes a circle again (undoing the resize that made a circle an ellipse)."""
    x0, y0, side = fov_square(fov, cfg)
    if fov.radius_y is None:
        return x0, y0, side, side
    half_y = max(1, round(fov.radius_y * (1.0 + cfg.margin)))
    return x0, math.floor(fov.cy + 1.0) - half_y, side, 2 * half_y


def preprocess_array(
    rgb: np.ndarray, cfg: PreprocessConfig, *, name: str | None = None, scale: float = 1.0
) -> tuple[np.ndarray, FovCircle]:
    """Preprocess an already decoded RGB uint8 image (steps 2-5 of the module docstring).

    `scale` is the decoded pixels per source pixel (`decode_image`), so that the field of view is
    searched on the same block means of the source at every decode reduction.

    Returns:
        The model input (RGB uint8 `size x size x 3`) and the field of view in pixel coordinates
        of `rgb`.
    """
    check_config(cfg)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise PreprocessError(
            name or _SOURCE_LABEL_ARRAY, f"expected RGB uint8 H x W x 3, got {rgb.dtype} {rgb.shape}"
        )
    fov = find_fov(rgb, name=name, scale=scale)
    x0, y0, side, side_y = fov_box(fov, cfg)
    crop, box = _crop_square(rgb, x0, y0, side, side_y)
    size = cfg.size
    if side_y != side:  # an ellipse: stretched back to a circle
        interp = cv2.INTER_AREA if max(side, side_y) > size else cv2.INTER_CUBIC
        img = cv2.resize(crop, (size, size), interpolation=interp)
    elif side > size:
        img = _resize_down(crop, size)
    elif side < size:
        img = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
    else:
        img = np.ascontiguousarray(crop)

    kx, ky = size / side, size / side_y
    ocx, ocy = (fov.cx - x0 + 0.5) * kx - 0.5, (fov.cy - y0 + 0.5) * ky - 0.5
    orad = fov.radius * kx  # = radius_y * ky up to rounding: a circle in the output
    mask = None
    if cfg.mask:
        left, top, right, bottom = box
        mask = _fov_mask(
            size, ocx, ocy, FOV_MASK_FRACTION * orad, (left * kx, top * ky, right * kx, bottom * ky)
        )

    if cfg.enhance == "graham":
        img = _graham(img, cfg, orad, mask)
    elif cfg.enhance == "clahe":
        img = _clahe_rgb(img, cfg)
    if mask is not None:
        img = _apply_mask(img, mask)  # after enhancement: nothing computed outside the circle survives
    return img, fov


def preprocess_image(
    source: Path | str | bytes,
    cfg: PreprocessConfig,
    *,
    name: str | None = None,
    notes: list[str] | None = None,
) -> tuple[np.ndarray, FovCircle]:
    """Decode, find the field of view, crop, resize, enhance and mask one photograph.

    Args:
        source: an image file path or the file's bytes.
        cfg: the preprocessing settings (stored in every checkpoint).
        name: how to name the source in errors (default: the path, or ``<bytes>``).
        notes: if given, receives problems that did not stop preprocessing (corrupt JPEG data).

    Returns:
        The model input, RGB uint8 `cfg.size x cfg.size x 3`, and the field-of-view circle in pixel
        coordinates of the (EXIF-oriented) source image at full resolution.

    Raises:
        PreprocessError: the file cannot be read or decoded, or holds no field of view.
    """
    label = _label(source, name)
    check_config(cfg)
    rgb, scale = decode_image(source, cfg.size, name=label, notes=notes)
    out, fov = preprocess_array(rgb, cfg, name=label, scale=scale)
    return out, fov.scaled(1.0 / scale)


# --- the `eyefuse preprocess` command -----------------------------------------------------------


@dataclass
class PreprocessSummary:
    """What `preprocess_files` did: images written, failures with reasons, duplicate inputs."""

    out_dir: Path
    total: int
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    #: `(path, note)` for photographs written despite a problem (corrupt JPEG data).
    notes: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0
    enhance: str = ""

    def __str__(self) -> str:
        lines = [
            f"preprocessed {self.written} of {self.total} images into {self.out_dir} "
            f"({self.size} px, {self.enhance}); circles in fov.csv"
        ]
        if self.duplicates:
            shown = ", ".join(self.duplicates[:5])
            lines.append(f"{len(self.duplicates)} duplicate input path(s) processed once: {shown}")
        if self.notes:
            lines.append(f"{len(self.notes)} written with a warning:")
            lines += [f"  {path}: {note}" for path, note in self.notes[:10]]
            if len(self.notes) > 10:
                lines.append(f"  ... and {len(self.notes) - 10} more")
        if self.failed:
            lines.append(f"{len(self.failed)} failed (all listed in failed.csv):")
            lines += [f"  {path}: {reason}" for path, reason in self.failed[:10]]
            if len(self.failed) > 10:
                lines.append(f"  ... and {len(self.failed) - 10} more")
        return "\n".join(lines)


def output_names(paths: Sequence[Path]) -> list[str]:
    """PNG file names for `paths`: `<stem>.png`, or `<stem>-2.png`, `<stem>-3.png`, ... for later
    inputs whose stem is already taken (compared case-insensitively, for case-insensitive file
    systems). Names depend only on the input order, never on which images fail."""
    used: set[str] = set()
    names: list[str] = []
    for p in paths:
        stem = Path(p).stem or "image"
        candidate, k = stem, 1
        while candidate.casefold() in used:
            k += 1
            candidate = f"{stem}-{k}"
        used.add(candidate.casefold())
        names.append(f"{candidate}.png")
    return names


def preprocess_files(
    paths: Iterable[Path | str], out_dir: Path | str, cfg: PreprocessConfig
) -> PreprocessSummary:
    """Preprocess photographs to `OUT/<stem>.png` (see `output_names` for equal stems).

    Also writes `OUT/fov.csv` (`path,cx,cy,radius,output,radius_y,method`: the field of view in
    source pixels, the PNG written, the vertical semi-axis and how it was found) and
    `OUT/failed.csv` (`path,reason`; header only when nothing failed, so a stale list from an
    earlier run is never left behind). A path given twice is processed once and reported.
    """
    check_config(cfg)
    out_dir = Path(out_dir)
    unique: list[Path] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    for p in paths:
        key = os.path.abspath(p)
        if key in seen:
            duplicates.append(str(p))
            continue
        seen.add(key)
        unique.append(Path(p))
    summary = PreprocessSummary(
        out_dir=out_dir, total=len(unique), duplicates=duplicates, size=cfg.size, enhance=cfg.enhance
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, ...]] = []
    for path, out_name in zip(unique, output_names(unique), strict=True):
        notes: list[str] = []
        try:
            img, fov = preprocess_image(path, cfg, notes=notes)
        except PreprocessError as e:
            summary.failed.append((str(path), e.reason))
            continue
        summary.notes += [(str(path), note) for note in notes]
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - PNG encoding of a uint8 image does not fail
            raise RuntimeError(f"could not encode {out_name} as PNG")
        atomic_write_bytes(out_dir / out_name, buf.tobytes())
        rows.append(
            (
                str(path),
                f"{fov.cx:.2f}",
                f"{fov.cy:.2f}",
                f"{fov.radius:.2f}",
                out_name,
                f"{fov.ry:.2f}",
                fov.method,
            )
        )
        summary.written += 1
    with atomic_open(out_dir / "fov.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FOV_CSV_HEADER)
        writer.writerows(rows)
    with atomic_open(out_dir / "failed.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FAILED_CSV_HEADER)
        writer.writerows(summary.failed)
    return summary


__all__ = [
    "FOV_MASK_FRACTION",
    "FOV_METHODS",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "WORK_SIDE",
    "FovCircle",
    "PreprocessError",
    "PreprocessSummary",
    "check_config",
    "decode_image",
    "find_fov",
    "fov_box",
    "fov_square",
    "jpeg_reduction",
    "output_names",
    "preprocess_array",
    "preprocess_files",
    "preprocess_image",
    "work_block",
]
