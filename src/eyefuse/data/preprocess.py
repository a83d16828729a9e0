"""Preprocessing of one fundus photograph into a model input: the one pipeline used everywhere.

`preprocess_image` is called by `eyefuse preprocess` (`eyefuse.data.preprocess_files`), by the
preprocessing cache (training), by predict and by the web service, so training and inference see
exactly the same pixels:

1. read and decode (`eyefuse.data.decode.decode_image`): a large JPEG is decoded at 1/2, 1/4 or 1/8
   scale directly from its DCT coefficients, which skips most of the inverse DCT, colour conversion
   and memory traffic (the entropy decoding remains) and loses nothing once the image is shrunk to
   the input size anyway; other formats are box-averaged by the same factor right after decoding;
2. find the field of view (`eyefuse.data.fov.find_fov`) on block means of the source whose size
   depends on the source only, so the same photograph gets the same field of view at every output
   size: the bright circle of the retina on the dark border, fitted robustly (RANSAC + least
   squares) to the edge of the largest bright region, ignoring the frame edges where the circle is
   cut off; when no circle fits, an ellipse, a fundus cropped by the frame, or the region's extent;
3. crop the field of view's bounding box (`eyefuse.data.fov.fov_box`, + `margin`), padding with
   black where it leaves the frame, and resize to `size` (anti-aliased when shrinking:
   `_resize_down`);
4. enhance (`ENHANCERS`: `graham` local contrast, `clahe` on the L channel of Lab, or `none`);
5. black out everything outside the field of view (`mask`, `eyefuse.data.fov.fov_mask`).

The decisions of steps 1 and 2 are written in `eyefuse.data.decode` and `eyefuse.data.fov`.

Decisions where the task left room:

- libjpeg's "Corrupt JPEG data" warnings are captured, not printed, and returned in `notes`
  (predict and the service show them as warnings).
- `graham` subtracts a mask-normalized Gaussian (the blur of the masked image divided by the blur of
  the mask), so the black outside the circle does not leak in as a bright halo at the edge. Ben
  Graham instead masked to 90 % of the radius, losing the periphery; here the mask keeps
  `FOV_MASK_FRACTION` (98 %) of the radius (see `eyefuse.data.fov`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from eyefuse.config import PreprocessConfig
from eyefuse.data.decode import _SOURCE_LABEL_ARRAY, PreprocessError, _label, decode_image
from eyefuse.data.fov import FOV_MASK_FRACTION, FovCircle, find_fov, fov_box, fov_mask
from eyefuse.registry import ENHANCE

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
        # Mask-normalized blur: the local mean over field-of-view pixels only, so the black outside
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


def _clahe_enhance(
    img: np.ndarray, cfg: PreprocessConfig, radius: float, mask: np.ndarray | None
) -> np.ndarray:
    return _clahe_rgb(img, cfg)


def _no_enhance(img: np.ndarray, cfg: PreprocessConfig, radius: float, mask: np.ndarray | None) -> np.ndarray:
    return img


#: `preprocess.enhance` -> `(image, cfg, field-of-view radius in output px, mask or None) -> image`;
#: names and descriptions: `eyefuse.registry.ENHANCE`.
ENHANCERS: dict[str, Callable[[np.ndarray, PreprocessConfig, float, np.ndarray | None], np.ndarray]] = (
    ENHANCE.bind({"graham": _graham, "clahe": _clahe_enhance, "none": _no_enhance})
)


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
    cfg.validate()
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
        mask = fov_mask(
            size, ocx, ocy, FOV_MASK_FRACTION * orad, (left * kx, top * ky, right * kx, bottom * ky)
        )

    img = ENHANCERS[cfg.enhance](img, cfg, orad, mask)
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
    cfg.validate()
    rgb, scale = decode_image(source, cfg.size, name=label, notes=notes)
    out, fov = preprocess_array(rgb, cfg, name=label, scale=scale)
    return out, fov.scaled(1.0 / scale)


# `PreprocessError` (from decode) and `FovCircle` (from fov) are part of this pipeline's interface:
# what it raises and what it returns, so its many callers import them from here.
__all__ = [
    "ENHANCERS",
    "FovCircle",
    "PreprocessError",
    "preprocess_array",
    "preprocess_image",
]
