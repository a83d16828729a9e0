"""Finding the field of view of a fundus photograph (`find_fov`), on the source's own pixels.

The field of view is a property of the photograph: it is searched on a working image of block means
of the source (`_work_image`), whose block size depends on the source size only, so the same
photograph gets the same field of view whatever output size is asked for
(`test_same_field_of_view_at_every_output_size`). When no circle fits, it falls back to what the
photograph shows (an ellipse, a fundus cropped by the frame, the bright region's extent), so that
real photographs that were resized, cut or cropped by earlier processing are not lost.

It also owns the field of view's geometry in the model input: the crop around it (`fov_square`,
`fov_box`) and its mask there (`fov_mask`), shared by preprocessing and by everything that maps
source pixels into the model input (lesion masks, Grad-CAM overlays).

Decisions where the task left room:

- An ellipse (`FovCircle.radius_y`: a circle whose photograph was resized to another aspect ratio,
  as in Kaggle's 512 x 512 copies) is mapped to the square input by stretching its bounding box to
  the square (`fov_box`): it becomes a circle again, which undoes the resize, and is masked as one.
  A photograph cropped to the fundus (method ``cropped``) or known only by its bright region's
  extent (``extent``) gets the ellipse inscribed in that box as its field of view and mask: the
  corners of a cut fundus are dropped rather than risk keeping border or labels.
- The mask keeps `FOV_MASK_FRACTION` (98 %) of the radius, which only drops the optics' dark
  fall-off at the rim, and also excludes the rows or columns where the circle is cut off by the
  frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from eyefuse.config import PreprocessConfig
from eyefuse.data.decode import _SOURCE_LABEL_ARRAY, PreprocessError, work_block

#: Fraction of the fitted radius kept by the mask (drops the dark fall-off at the rim).
FOV_MASK_FRACTION = 0.98

#: How a field of view was found, in the order they are tried (`find_fov`).
FOV_METHODS = ("circle", "ellipse", "cropped", "extent")


@dataclass(frozen=True)
class FovCircle:
    """The field of view: centre and radius in pixels (pixel centres at integer coordinates).

    `radius` is the horizontal semi-axis; `radius_y`, when set, the vertical one (an axis-aligned
    ellipse: a circle resized to another aspect ratio). `method` says how it was found
    (`FOV_METHODS`)."""

    cx: float
    cy: float
    radius: float
    radius_y: float | None = None
    method: str = "circle"

    @property
    def ry(self) -> float:
        """The vertical semi-axis (the radius for a circle)."""
        return self.radius if self.radius_y is None else self.radius_y

    def scaled(self, scale: float) -> FovCircle:
        """The same field of view in an image resized by `scale` (new pixels per old pixel)."""
        return FovCircle(
            (self.cx + 0.5) * scale - 0.5,
            (self.cy + 0.5) * scale - 0.5,
            self.radius * scale,
            None if self.radius_y is None else self.radius_y * scale,
            self.method,
        )


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


def _fit_ellipse_axis_aligned(pts: np.ndarray, tol: float) -> tuple[float, float, float, float, float] | None:
    """Axis-aligned ellipse `A x^2 + C y^2 + D x + E y = 1` by least squares, refitted twice on the
    points within `tol` of it (a notch, a printed label or a dim stretch of the edge drop out);
    returns (cx, cy, a, b, inlier share) or None when the conic is not an ellipse.

    Axis-aligned, because the ellipses found on real photographs are circles resized to another
    aspect ratio (a non-square crop scaled to a square), never rotated."""
    m = pts.mean(axis=0)
    s = max(float(np.abs(pts - m).max()), 1.0)
    q = (pts - m) / s  # centred and scaled: well conditioned
    keep = np.ones(len(q), bool)
    fit = None
    for _ in range(3):
        x, y = q[keep, 0], q[keep, 1]
        if len(x) < 8:
            return fit
        a_mat = np.stack([x * x, y * y, x, y], axis=1)
        coef, *_ = np.linalg.lstsq(a_mat, np.ones(len(x)), rcond=None)
        ca, cc, cd, ce = (float(v) for v in coef)
        if ca <= 0 or cc <= 0:
            return fit
        x0, y0 = -cd / (2 * ca), -ce / (2 * cc)
        rhs = 1 + ca * x0 * x0 + cc * y0 * y0
        if rhs <= 0:
            return fit
        ax, by = math.sqrt(rhs / ca), math.sqrt(rhs / cc)
        rho = np.hypot((q[:, 0] - x0) / ax, (q[:, 1] - y0) / by)
        # |rho - 1| times the semi-axis along the point's direction approximates the distance.
        dist = np.abs(rho - 1.0) * np.hypot((q[:, 0] - x0), (q[:, 1] - y0)) / np.maximum(rho, 1e-9) * s
        keep = dist < tol
        fit = (x0 * s + m[0], y0 * s + m[1], ax * s, by * s, float(keep.mean()))
    return fit


def _region_matches(
    region: np.ndarray, area: float, cx: float, cy: float, a: float, b: float, tol: float
) -> bool:
    """Whether the bright `region` (uint8 0/1, `area` pixels) is what an ellipse (clipped to the
    frame) covers: it fills most of the ellipse, and almost none of it lies outside the ellipse
    grown by `tol`. A shape that fits part of the outline but is much larger than the region (the
    inscribed circle of a rectangle) or cuts through it (a circle fitted to one side of an ellipse)
    is not the field of view."""
    hs, ws = region.shape
    disc = np.zeros((hs, ws), np.uint8)
    centre = (round(cx * 16), round(cy * 16))
    cv2.ellipse(disc, centre, (round(a * 16), round(b * 16)), 0, 0, 360, 1, -1, cv2.LINE_8, 4)
    if not 0.5 <= area / max(1, cv2.countNonZero(disc)) <= 1.1:
        return False
    grown = np.zeros((hs, ws), np.uint8)
    cv2.ellipse(
        grown, centre, (round((a + tol) * 16), round((b + tol) * 16)), 0, 0, 360, 1, -1, cv2.LINE_8, 4
    )
    return cv2.countNonZero(cv2.subtract(region, grown)) <= 0.02 * area


def _work_image(rgb: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """The working image: `rgb` (decoded at `scale` of the source) averaged over blocks of
    `work_block` source pixels, and the block side in pixels of `rgb`."""
    h, w = rgb.shape[:2]
    r = max(1, round(1.0 / scale))
    f = max(1, work_block(w * r, h * r) // r)
    if f == 1:
        return rgb, 1
    hs, ws = h // f, w // f
    # An integer-ratio area resize is OpenCV's fast path: exact block means.
    return cv2.resize(rgb[: hs * f, : ws * f], (ws, hs), interpolation=cv2.INTER_AREA), f


def _paint_bright_border(small: np.ndarray) -> np.ndarray:
    """Where the corners are bright (a white frame added around the photograph), pixels of the
    corners' colour become black, so the usual search (bright fundus on dark border) applies."""
    h, w = small.shape[:2]
    c = max(2, round(0.04 * min(h, w)))
    corners = np.concatenate(
        [x.reshape(-1, 3) for x in (small[:c, :c], small[:c, -c:], small[-c:, :c], small[-c:, -c:])]
    )
    colour = np.median(corners, axis=0)
    near = (np.abs(small.astype(np.int16) - colour.astype(np.int16)).max(axis=2) < 24).astype(np.uint8)
    return cv2.copyTo(small, 1 - near)


def find_fov(rgb: np.ndarray, *, name: str | None = None, scale: float = 1.0) -> FovCircle:
    """Find the field of view of a fundus photograph: a circle, or what the photograph shows.

    The brightest channel (robust for dim and strongly tinted photographs) of the working image
    (`_work_image`: block means whose size depends on the source size only, so the same photograph
    gives the same field of view at every output size) is smoothed and thresholded between the
    border level (the corners, which lie outside the circle for every camera, even one whose circle
    is cut at the top and bottom) and the interior level (the centre). A white frame around the
    photograph is painted black first. Then, on the largest bright region, in this order:

    1. ``circle``: a circle fitted (RANSAC + least squares) to its outline, leaving out the points
       on the frame edges, where the circle is cut off; at least 40 % of the outline on the circle,
       the region's area that of the circle within the frame, and almost none of the region
       outside it (`_region_matches`).
    2. ``ellipse``: an axis-aligned ellipse fitted to the same points (a circle whose photograph
       was resized to another aspect ratio, as in Kaggle's 512 x 512 copies of non-square crops);
       at least 60 % of the outline on it and the region matching. It replaces a circle that passed
       only when it is clearly not round (axes differing by 5 % or more) and holds at least 15 %
       more of the outline (a circle also fits one long arc of an ellipse).
    3. ``cropped``: the region reaches the frame on all four sides (a photograph cropped to the
       fundus and then cut or distorted): the ellipse inscribed in the frame.
    4. ``extent``: a compact region (it fills 60-92 % of its bounding box, as a disc fills 79 %)
       or one reaching two opposite frame edges: the ellipse inscribed in its bounding box.

    Args:
        rgb: RGB uint8 `H x W x 3`.
        name: how to name the image in errors.
        scale: decoded pixels per source pixel of `rgb` (`decode_image`'s second result).

    Returns:
        The field of view in pixel coordinates of `rgb`.

    Raises:
        PreprocessError: "no field of view found" (uniform, all dark, or no bright region shaped
            like a field of view).
    """
    label = name or _SOURCE_LABEL_ARRAY
    small, f = _work_image(rgb, scale)
    off = (f - 1) / 2.0  # working pixel i is the mean of decoded pixels i * f ... i * f + f - 1
    hs, ws = small.shape[:2]
    lum = cv2.max(cv2.max(small[..., 0], small[..., 1]), small[..., 2])
    lum = cv2.medianBlur(lum, 5)  # JPEG noise and specks in the border

    border = _corner_level(lum)
    centre = _median_u8(lum[hs // 3 : hs - hs // 3, ws // 3 : ws - ws // 3])
    if border - centre >= 8.0:  # a bright frame around the photograph
        painted = _paint_bright_border(small)
        lum = cv2.medianBlur(cv2.max(cv2.max(painted[..., 0], painted[..., 1]), painted[..., 2]), 5)
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

    region = np.zeros((hs, ws), np.uint8)
    cv2.drawContours(region, [outline], -1, 1, -1)

    def result(cx: float, cy: float, a: float, b: float | None, method: str) -> FovCircle:
        return FovCircle(cx * f + off, cy * f + off, a * f, None if b is None else b * f, method)

    all_pts = outline.reshape(-1, 2).astype(np.float64)
    on_edge = (
        (all_pts[:, 0] <= 1) | (all_pts[:, 0] >= ws - 2) | (all_pts[:, 1] <= 1) | (all_pts[:, 1] >= hs - 2)
    )
    pts = all_pts[~on_edge]
    tol = max(1.5, 0.01 * max(hs, ws))
    # The outline runs through the centres of the outermost pixels above the threshold, about a
    # quarter of a working pixel inside the half-intensity edge (measured on drawn anti-aliased discs).
    edge = 0.25
    circle = ellipse = None
    if len(pts) >= 20:
        fit = _fit_circle_robust(pts, tol=tol, frame=(hs, ws))
        if fit is not None:
            cx, cy, r, share = fit
            # At least 40 % of the outline must lie on the circle (the rest: notch, chords, dim
            # periphery), and the circle must account for the region (a rectangle has a
            # well-fitting inscribed circle along part of its outline, but is much larger).
            if (
                share >= 0.4
                and 0 <= cx < ws
                and 0 <= cy < hs
                and r >= 0.1 * min(hs, ws)
                and _region_matches(region, area, cx, cy, r, r, tol)
            ):
                circle = (cx, cy, r, share)
        # An ellipse can only win by explaining 15 % more of the outline than the circle does.
        ell = None if circle is not None and circle[3] > 0.85 else _fit_ellipse_axis_aligned(pts, tol)
        if ell is not None:
            cx, cy, a, b, share = ell
            if (
                share >= 0.6
                and 0 <= cx < ws
                and 0 <= cy < hs
                and 0.5 <= b / a <= 2.0
                and min(a, b) >= 0.1 * min(hs, ws)
                and max(a, b) <= 1.5 * max(hs, ws)
                and _region_matches(region, area, cx, cy, a, b, tol)
            ):
                ellipse = ell
    # The circle wins unless a clearly non-circular ellipse explains clearly more of the outline:
    # a circle also fits one long arc of an ellipse (40 % of its outline) while lying beside it.
    if circle is not None and (
        ellipse is None or ellipse[4] < circle[3] + 0.15 or abs(ellipse[3] / ellipse[2] - 1.0) < 0.05
    ):
        cx, cy, r, _ = circle
        return result(cx, cy, r + edge, None, "circle")
    if ellipse is not None:
        cx, cy, a, b, _ = ellipse
        return result(cx, cy, a + edge, b + edge, "ellipse")

    x, y, bw, bh = cv2.boundingRect(outline)
    spans_x, spans_y = x <= 1 and x + bw >= ws - 1, y <= 1 and y + bh >= hs - 1
    fill = area / max(1, bw * bh)
    if area >= 0.25 * hs * ws and (spans_x or spans_y or 0.6 <= fill <= 0.92):
        # Pixel i covers [i - 0.5, i + 0.5): the box spans [x - 0.5, x + bw - 0.5].
        method = "cropped" if spans_x and spans_y else "extent"
        return result(x + (bw - 1) / 2.0, y + (bh - 1) / 2.0, bw / 2.0, bh / 2.0, method)
    raise PreprocessError(
        label,
        "no field of view found (the bright region is neither a circle, an ellipse, nor a fundus "
        f"cropped by the frame: it fills {100 * fill:.0f} % of its bounding box)",
    )


# --- the field of view in the model input ------------------------------------------------------


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


def fov_mask(size: int, cx: float, cy: float, radius: float, box: tuple[float, ...]) -> np.ndarray:
    """uint8 0/255 mask `size x size` of the disc (sub-pixel centre and radius) within `box`, the
    `(left, top, right, bottom)` of real pixels (outside it the crop was padded)."""
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (round(cx * 16), round(cy * 16)), max(0, round(radius * 16)), 255, -1, cv2.LINE_8, 4)
    left, top, right, bottom = (min(size, max(0, round(v))) for v in box)
    # Where the circle is cut by the frame (padded rows/columns), there is no retina to keep.
    mask[:top] = 0
    mask[bottom:] = 0
    mask[:, :left] = 0
    mask[:, right:] = 0
    return mask
