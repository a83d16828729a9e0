"""Preprocessing of one fundus photograph into a model input: the one function used everywhere.

`preprocess_image` is called by `eyefuse preprocess`, by the preprocessing cache (training), by
predict and by the web service, so training and inference see exactly the same pixels:

1. decode (`decode_image`): a large JPEG is decoded at 1/2, 1/4 or 1/8 scale directly from its DCT
   coefficients, which skips most of the inverse DCT, colour conversion and memory traffic (the
   entropy decoding remains) and loses nothing once the image is shrunk to the input size anyway;
2. find the field of view (`find_fov`): the bright circle of the retina on the dark border, fitted
   robustly (RANSAC + least squares) to the edge of the largest bright region at a small working
   resolution, ignoring the frame edges where the circle is cut off;
3. crop the circle's bounding square (+ `margin`), padding with black where the square leaves the
   frame, and resize to `size` (anti-aliased when shrinking: `_resize_down`);
4. enhance (`graham` local contrast, `clahe` on the L channel of Lab, or `none`);
5. black out everything outside the circle (`mask`).

Decisions where the task left room (documented here once):

- EXIF orientation is applied, by both decoders (OpenCV and Pillow agree), so an image is processed
  as every viewer shows it; the returned circle is in the pixel coordinates of that oriented image at
  full source resolution. ODIR images carry no orientation tag.
- A JPEG without the end-of-image marker (FFD9) in its last 4 KiB is refused as truncated: libjpeg
  would silently fill the missing rows with grey. Other formats are decoded by Pillow in strict
  mode, which raises on truncation.
- Images over `MAX_PIXELS` (by header size, before decoding) are refused as decompression bombs;
  images under `MIN_SIDE` pixels are refused as too small to hold a field of view.
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
import io
import math
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from eyefuse.config import PreprocessConfig
from eyefuse.errors import ConfigError, EyefuseError
from eyefuse.utils.io import atomic_open, atomic_write_bytes

#: Largest image accepted, in pixels (by header size): a guard against decompression bombs.
MAX_PIXELS = 100_000_000
#: Smallest accepted image side, in pixels.
MIN_SIDE = 32
#: Assumed field-of-view diameter as a fraction of the shorter image side, to choose the JPEG
#: reduction before the circle is known (cameras fill 85-100 % of it; a cut-off circle more).
FOV_FILL = 0.9
#: The JPEG reduction keeps the expected field-of-view diameter at least this many times `target`.
REDUCE_HEADROOM = 1.15
#: Longest side of the working image on which the field of view is searched.
WORK_SIDE = 256
#: Fraction of the fitted radius kept by the mask (drops the dark fall-off at the rim).
FOV_MASK_FRACTION = 0.98

_SOURCE_LABEL_BYTES = "<bytes>"
_SOURCE_LABEL_ARRAY = "<array>"


class PreprocessError(EyefuseError):
    """A photograph cannot be preprocessed; `.path` names it and `.reason` says why."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep both fields when the error crosses a process boundary
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class FovCircle:
    """The field of view: centre and radius in pixels (pixel centres at integer coordinates)."""

    cx: float
    cy: float
    radius: float

    def scaled(self, scale: float) -> FovCircle:
        """The same circle in an image resized by `scale` (new pixels per old pixel)."""
        return FovCircle((self.cx + 0.5) * scale - 0.5, (self.cy + 0.5) * scale - 0.5, self.radius * scale)


# --- decoding -----------------------------------------------------------------------------------


#: Largest photograph file read (bytes): a fundus photograph is a few MB; a larger file, or one that
#: is not a regular file (/dev/zero, a pipe), is refused before it is read.
MAX_FILE_BYTES = 256 * 2**20


def _label(source: object, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _SOURCE_LABEL_BYTES
    return str(source)


def _read_bytes(source: Path | str | bytes, label: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    try:
        # stat first: reading /dev/zero, a FIFO or a huge file would never end or fill the memory.
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):
            raise PreprocessError(label, "not a regular file (a device, pipe or socket)")
        if st.st_size > MAX_FILE_BYTES:
            raise PreprocessError(
                label,
                f"file too large ({st.st_size >> 20} MiB; the limit is {MAX_FILE_BYTES >> 20} MiB)",
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise PreprocessError(label, "file not found") from None
    except IsADirectoryError:
        raise PreprocessError(label, "is a directory, not an image file") from None
    except PermissionError:
        raise PreprocessError(label, "permission denied") from None
    except OSError as e:
        raise PreprocessError(label, f"could not read file ({e.strerror or e})") from None


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _jpeg_complete(data: bytes) -> bool:
    # FFD9 (end of image) cannot occur inside entropy-coded data (an FF there is always followed by
    # 00 or a restart marker), so FFD9 near the end means the file was written to the end. The last
    # 4 KiB are searched to allow padding or a small trailer after the marker.
    return b"\xff\xd9" in data[-4096:]


#: JPEG start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC, which share the range).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's start-of-frame header, walking the marker segments (a tenth
    of the time Pillow takes to open the file); None when the header cannot be read this way, and
    the caller falls back to Pillow. Sizes are before EXIF orientation, which only swaps them."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # stand-alone markers (no length)
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return (w, h) if w > 0 and h > 0 else None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _open_header(data: bytes, label: str) -> Image.Image:
    """Open with Pillow without decoding pixels (size, mode, format, EXIF only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise PreprocessError(label, f"image too large ({e})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
            raise PreprocessError(label, "not an image (could not decode)") from None


def jpeg_reduction(width: int, height: int, target: int | None) -> int:
    """The largest DCT reduction (1, 2, 4 or 8) that keeps the expected field-of-view diameter at
    least `REDUCE_HEADROOM` times `target` pixels; 1 (full decode) when `target` is None."""
    if target is None:
        return 1
    expected_diameter = FOV_FILL * min(width, height)
    for r in (8, 4, 2):
        if expected_diameter / r >= REDUCE_HEADROOM * target:
            return r
    return 1


_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR_RGB,
    # IMREAD_REDUCED_COLOR_k already includes the BGR colour flag; the grayscale variant + RGB gives
    # reduced RGB output without a channel swap.
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2 | cv2.IMREAD_COLOR_RGB,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4 | cv2.IMREAD_COLOR_RGB,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_COLOR_RGB,
}


def _pil_to_rgb(im: Image.Image, label: str) -> np.ndarray:
    """Decode a Pillow image strictly and convert any mode to RGB uint8."""
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise PreprocessError(label, f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise PreprocessError(label, f"truncated or corrupt image ({e})") from None
    im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit data: keep the high byte (scale by the full 16-bit range, not by the content).
        arr = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        gray = (arr >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        raise PreprocessError(label, "unsupported pixel format: 32-bit floating point")
    try:
        rgb = im.convert("RGB")
    except ValueError:
        try:
            rgb = im.convert("RGBA").convert("RGB")
        except ValueError:
            raise PreprocessError(label, f"unsupported pixel format: {mode}") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


def decode_image(
    source: Path | str | bytes, target: int | None, *, name: str | None = None
) -> tuple[np.ndarray, float]:
    """Decode a photograph to RGB uint8 `H x W x 3`, reduced when the source is much larger.

    Args:
        source: an image file path, or the file's bytes.
        target: the field-of-view diameter the caller needs, in pixels (the output size); a JPEG is
            decoded at the largest 1/2, 1/4 or 1/8 DCT reduction that keeps the expected diameter
            at least `REDUCE_HEADROOM` x `target`. None decodes at full size.
        name: how to name the source in errors (default: the path, or ``<bytes>``).

    Returns:
        The RGB image and its scale factor (decoded pixels per source pixel; 1.0 for a full decode).

    Raises:
        PreprocessError: empty, unreadable, truncated, too large or too small, not an image.
    """
    label = _label(source, name)
    data = _read_bytes(source, label)
    if not data:
        raise PreprocessError(label, "empty file")
    if _is_jpeg(data) and not _jpeg_complete(data):
        raise PreprocessError(label, "truncated JPEG (no end-of-image marker)")
    frame = _jpeg_frame_size(data) if _is_jpeg(data) else None
    im: Image.Image | None = None
    if frame is None:
        im = _open_header(data, label)
        frame = im.size
    w, h = frame
    if w * h > MAX_PIXELS:
        raise PreprocessError(
            label,
            f"image too large ({w} x {h} = {w * h / 1e6:.1f} megapixels; the limit is {MAX_PIXELS / 1e6:g})",
        )
    if min(w, h) < MIN_SIDE:
        raise PreprocessError(label, f"image too small ({w} x {h}; at least {MIN_SIDE} px per side needed)")

    # MPO (multi-picture JPEG, format name from Pillow): the first picture is decoded.
    if im is None or im.format in ("JPEG", "MPO"):
        r = jpeg_reduction(w, h, target)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[r])
        if decoded is not None and decoded.ndim == 3 and decoded.shape[2] == 3:
            # DCT scaling maps r x r source pixels onto one output pixel exactly.
            return decoded, 1.0 / r
        # libjpeg refused it (rare encodings): let Pillow try at full size, and say why if it fails.
    if im is None:
        im = _open_header(data, label)
    return _pil_to_rgb(im, label), 1.0


# --- field of view ------------------------------------------------------------------------------


def _median_u8(x: np.ndarray) -> float:
    """`np.median` of a uint8 array through its histogram (a tenth of the time on small arrays)."""
    counts = np.bincount(x.ravel(), minlength=256).cumsum()
    n = int(counts[-1])
    lo = int(np.searchsorted(counts, (n - 1) // 2, side="right"))  # value at sorted index (n-1)//2
    hi = int(np.searchsorted(counts, n // 2, side="right"))  # value at sorted index n//2
    return (lo + hi) / 2.0


def _corner_level(lum: np.ndarray) -> float:
    h, w = lum.shape
    c = max(2, round(0.04 * min(h, w)))
    corners = [lum[:c, :c], lum[:c, -c:], lum[-c:, :c], lum[-c:, -c:]]
    # The median of the four corners ignores one corner with a printed label or a notch.
    return float(np.median([_median_u8(x) for x in corners]))


def _circles_through(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Circumcircles of point triples `p` (K x 3 x 2): centres x, y and radii (NaN if collinear)."""
    ax, ay = p[:, 0, 0], p[:, 0, 1]
    bx, by = p[:, 1, 0], p[:, 1, 1]
    cx, cy = p[:, 2, 0], p[:, 2, 1]
    d = 2.0 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    with np.errstate(divide="ignore", invalid="ignore"):
        a2, b2, c2 = ax * ax + ay * ay, bx * bx + by * by, cx * cx + cy * cy
        ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d
        uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d
        r = np.hypot(ax - ux, ay - uy)
    r[np.abs(d) < 1e-9] = np.nan
    return ux, uy, r


def _fit_circle_lsq(pts: np.ndarray) -> tuple[float, float, float]:
    """Least-squares circle: algebraic (Kasa) start, then Gauss-Newton on the geometric distance
    (the algebraic fit alone is biased towards small circles on noisy arcs). Both are solved through
    their 3 x 3 normal equations, on coordinates centred on the points' mean (well conditioned)."""
    m = pts.mean(axis=0)
    q = (pts - m).T  # 2 x N
    a = np.vstack([q, np.ones(q.shape[1])])  # 3 x N
    b = -(q * q).sum(axis=0)
    try:
        sol = np.linalg.solve(a @ a.T, a @ b)
    except np.linalg.LinAlgError:  # collinear points: the minimum-norm solution, as lstsq gives
        sol = np.linalg.lstsq(a.T, b, rcond=None)[0]
    cx, cy = -sol[0] / 2, -sol[1] / 2
    r = math.sqrt(max(cx * cx + cy * cy - sol[2], 1e-12))
    for _ in range(5):
        dx, dy = q[0] - cx, q[1] - cy
        dist = np.maximum(np.hypot(dx, dy), 1e-9)
        # Residual dist - r; its Jacobian is -(dx/dist, dy/dist, 1) per point.
        jac = np.vstack([dx / dist, dy / dist, a[2]])
        try:
            step = np.linalg.solve(jac @ jac.T, jac @ (dist - r))
        except np.linalg.LinAlgError:  # degenerate (all points in one spot): keep the estimate
            break
        cx, cy, r = cx + step[0], cy + step[1], r + step[2]
        if np.abs(step).max() < 1e-4:
            break
    return float(cx + m[0]), float(cy + m[1]), float(abs(r))


#: RANSAC draws, fixed once (seed 0) so that the same photograph always gives the same circle:
#: uniform numbers in [0, 1) that become point indices once the outline's length is known.
_RANSAC_DRAWS = np.random.default_rng(0).random((128, 3))


def _fit_circle_robust(
    pts: np.ndarray, tol: float, frame: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """RANSAC over point triples, then least squares on the inliers; returns (cx, cy, r, inlier
    share), or None when no triple gives a plausible circle.

    RANSAC ignores points that are not on the circle: a camera notch, flat chords where a mask cuts
    the circle, or a dark periphery that dips under the threshold.
    """
    h, w = frame
    n = len(pts)
    idx = (_RANSAC_DRAWS * n).astype(np.intp)
    ux, uy, r = _circles_through(pts[idx])
    plausible = (
        np.isfinite(r)
        & (r > 0.1 * min(h, w))
        & (r < 1.5 * max(h, w))
        & (ux > -0.25 * w)
        & (ux < 1.25 * w)
        & (uy > -0.25 * h)
        & (uy < 1.25 * h)
    )
    if not plausible.any():
        return None
    ux, uy, r = ux[plausible], uy[plausible], r[plausible]
    # Score the candidates on an evenly spaced subset of the outline (K x 256 distances): the inlier
    # share of a subset estimates that of the whole outline well enough to pick the best candidate.
    sub = pts[np.linspace(0, n - 1, min(n, 256)).astype(np.intp)]
    d2 = (sub[None, :, 0] - ux[:, None]) ** 2 + (sub[None, :, 1] - uy[:, None]) ** 2
    lo, hi = np.maximum(r - tol, 0.0) ** 2, (r + tol) ** 2  # |d - r| < tol without square roots
    counts = ((d2 > lo[:, None]) & (d2 < hi[:, None])).sum(axis=1)
    best = int(np.argmax(counts))
    cx, cy, rad = float(ux[best]), float(uy[best]), float(r[best])
    for _ in range(2):
        inl = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - rad) < tol
        if inl.sum() < 3:
            break
        cx, cy, rad = _fit_circle_lsq(pts[inl])
    inl = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - rad) < tol
    return cx, cy, rad, float(inl.mean())


def find_fov(rgb: np.ndarray, *, name: str | None = None) -> FovCircle:
    """Find the circular field of view of a fundus photograph.

    The brightest channel (robust for dim and strongly tinted photographs) is smoothed at a working
    resolution of `WORK_SIDE` px and thresholded between the border level (the corners, which lie
    outside the circle for every camera, even one whose circle is cut at the top and bottom) and the
    interior level (the centre). A circle is fitted to the outline of the largest bright region,
    leaving out outline points on the frame edges, where the circle is cut off.

    Args:
        rgb: RGB uint8 `H x W x 3`.
        name: how to name the image in errors.

    Returns:
        The circle in pixel coordinates of `rgb`.

    Raises:
        PreprocessError: "no field of view found" (uniform, all dark, or no circular bright region).
    """
    label = name or _SOURCE_LABEL_ARRAY
    h, w = rgb.shape[:2]
    # Point sampling every f-th pixel (at the centre of each f x f block) is ten times faster than
    # area averaging and, on the already DCT-smoothed decode, as accurate once the circle is fitted
    # to hundreds of outline points; the median blur below takes care of the noise.
    f = max(1, math.ceil(max(h, w) / WORK_SIDE))
    off = f // 2  # working pixel i is decoded pixel i * f + off
    if f > 1:
        hs, ws = (h - off) // f, (w - off) // f
        # Nearest-neighbour resizing by an exact integer factor samples pixel off + i * f: the same
        # as rgb[off::f, off::f], five times faster than numpy's strided copy.
        small = cv2.resize(
            rgb[off : off + hs * f, off : off + ws * f], (ws, hs), interpolation=cv2.INTER_NEAREST
        )
    else:
        small = rgb
    hs, ws = small.shape[:2]
    lum = cv2.max(cv2.max(small[..., 0], small[..., 1]), small[..., 2])
    lum = cv2.medianBlur(lum, 5)  # JPEG noise and specks in the border

    border = _corner_level(lum)
    centre = _median_u8(lum[hs // 3 : hs - hs // 3, ws // 3 : ws - ws // 3])
    if centre - border < 8.0:
        raise PreprocessError(label, "no field of view found (the centre is not brighter than the border)")
    thr = border + max(0.2 * (centre - border), 4.0)
    binary = (lum > thr).astype(np.uint8)
    # Opening cuts thin bridges to printed labels and removes isolated bright pixels.
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise PreprocessError(label, "no field of view found (no bright region)")
    outline = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(outline)
    if area < 0.05 * hs * ws:
        raise PreprocessError(
            label,
            "no field of view found (the largest bright region covers "
            f"{100 * area / (hs * ws):.1f} % of the frame)",
        )
    pts = outline.reshape(-1, 2).astype(np.float64)
    on_edge = (pts[:, 0] <= 1) | (pts[:, 0] >= ws - 2) | (pts[:, 1] <= 1) | (pts[:, 1] >= hs - 2)
    pts = pts[~on_edge]
    if len(pts) < 20:
        raise PreprocessError(label, "no field of view found (no circular edge inside the frame)")
    fit = _fit_circle_robust(pts, tol=max(1.5, 0.01 * max(hs, ws)), frame=(hs, ws))
    if fit is None:
        raise PreprocessError(label, "no field of view found (the bright region is not circular)")
    cx, cy, r, share = fit
    # At least 40 % of the outline must lie on the circle (the rest: notch, chords, dim periphery).
    if share < 0.4 or not (0 <= cx < ws and 0 <= cy < hs) or r < 0.1 * min(hs, ws):
        raise PreprocessError(label, "no field of view found (the bright region is not circular)")
    # The circle must also account for the region's area: a rectangle has a well-fitting inscribed
    # circle along part of its outline, but is much larger than it.
    disc = np.zeros((hs, ws), np.uint8)
    cv2.circle(disc, (round(cx * 16), round(cy * 16)), round(r * 16), 1, -1, cv2.LINE_8, 4)
    if not 0.5 <= area / max(1, cv2.countNonZero(disc)) <= 1.1:
        raise PreprocessError(label, "no field of view found (the bright region is not circular)")
    # The outline runs through the centres of the outermost pixels above the threshold, about a
    # quarter of a working pixel inside the half-intensity edge (measured on drawn anti-aliased discs).
    r += 0.25
    return FovCircle(cx * f + off, cy * f + off, r * f)


# --- crop, resize, enhance, mask ----------------------------------------------------------------


def _crop_square(
    rgb: np.ndarray, x0: int, y0: int, side: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`rgb[y0:y0+side, x0:x0+side]`, padded with black where the square leaves the frame.

    Returns the crop and the box `(left, top, right, bottom)` of real pixels in crop coordinates.
    """
    h, w = rgb.shape[:2]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    box = (xa - x0, ya - y0, xb - x0, yb - y0)
    if xa >= xb or ya >= yb:
        return np.zeros((side, side, 3), np.uint8), (0, 0, 0, 0)
    crop = rgb[ya:yb, xa:xb]
    pads = (ya - y0, y0 + side - yb, xa - x0, x0 + side - xb)
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
    """The square crop around a field of view, `(x0, y0, side)` in the circle's pixel coordinates:
    half-side `radius * (1 + margin)` rounded to whole pixels (so the side is even, which lets the
    resize halve it exactly), possibly reaching beyond the frame (padded black). Shared by
    preprocessing and by everything that maps source pixels into the model input (lesion masks)."""
    half = max(1, round(fov.radius * (1.0 + cfg.margin)))
    # Pixel x covers [x - 0.5, x + 0.5), so the square spans [x0 - 0.5, x0 + 2 half - 0.5): its
    # middle x0 + half - 0.5 is put within half a pixel of the circle's centre.
    return math.floor(fov.cx + 1.0) - half, math.floor(fov.cy + 1.0) - half, 2 * half


def preprocess_array(
    rgb: np.ndarray, cfg: PreprocessConfig, *, name: str | None = None
) -> tuple[np.ndarray, FovCircle]:
    """Preprocess an already decoded RGB uint8 image (steps 2-5 of the module docstring).

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
    fov = find_fov(rgb, name=name)
    x0, y0, side = fov_square(fov, cfg)
    crop, box = _crop_square(rgb, x0, y0, side)
    size = cfg.size
    if side > size:
        img = _resize_down(crop, size)
    elif side < size:
        img = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
    else:
        img = np.ascontiguousarray(crop)

    k = size / side
    ocx, ocy = (fov.cx - x0 + 0.5) * k - 0.5, (fov.cy - y0 + 0.5) * k - 0.5
    orad = fov.radius * k
    mask = None
    if cfg.mask:
        mask = _fov_mask(size, ocx, ocy, FOV_MASK_FRACTION * orad, tuple(v * k for v in box))

    if cfg.enhance == "graham":
        img = _graham(img, cfg, orad, mask)
    elif cfg.enhance == "clahe":
        img = _clahe_rgb(img, cfg)
    if mask is not None:
        img = _apply_mask(img, mask)  # after enhancement: nothing computed outside the circle survives
    return img, fov


def preprocess_image(
    source: Path | str | bytes, cfg: PreprocessConfig, *, name: str | None = None
) -> tuple[np.ndarray, FovCircle]:
    """Decode, find the field of view, crop, resize, enhance and mask one photograph.

    Args:
        source: an image file path or the file's bytes.
        cfg: the preprocessing settings (stored in every checkpoint).
        name: how to name the source in errors (default: the path, or ``<bytes>``).

    Returns:
        The model input, RGB uint8 `cfg.size x cfg.size x 3`, and the field-of-view circle in pixel
        coordinates of the (EXIF-oriented) source image at full resolution.

    Raises:
        PreprocessError: the file cannot be read or decoded, or holds no field of view.
    """
    label = _label(source, name)
    check_config(cfg)
    rgb, scale = decode_image(source, cfg.size, name=label)
    out, fov = preprocess_array(rgb, cfg, name=label)
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

    Also writes `OUT/fov.csv` (`path,cx,cy,radius,output`: the circle in source pixels and the PNG
    written) and `OUT/failed.csv` (`path,reason`; header only when nothing failed, so a stale list
    from an earlier run is never left behind). A path given twice is processed once and reported.
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
    rows: list[tuple[str, str, str, str, str]] = []
    for path, out_name in zip(unique, output_names(unique), strict=True):
        try:
            img, fov = preprocess_image(path, cfg)
        except PreprocessError as e:
            summary.failed.append((str(path), e.reason))
            continue
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - PNG encoding of a uint8 image does not fail
            raise RuntimeError(f"could not encode {out_name} as PNG")
        atomic_write_bytes(out_dir / out_name, buf.tobytes())
        rows.append((str(path), f"{fov.cx:.2f}", f"{fov.cy:.2f}", f"{fov.radius:.2f}", out_name))
        summary.written += 1
    with atomic_open(out_dir / "fov.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "cx", "cy", "radius", "output"])
        writer.writerows(rows)
    with atomic_open(out_dir / "failed.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(summary.failed)
    return summary


__all__ = [
    "FOV_MASK_FRACTION",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "FovCircle",
    "PreprocessError",
    "PreprocessSummary",
    "check_config",
    "decode_image",
    "find_fov",
    "jpeg_reduction",
    "output_names",
    "preprocess_array",
    "preprocess_files",
    "preprocess_image",
]
