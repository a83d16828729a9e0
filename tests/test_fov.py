"""Field of view: the fallbacks when no circle fits (ellipses, cut circles, white frames, dim
photographs, montages), and the same field of view at every output size. Photographs are drawn here."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from eyefuse.config import PreprocessConfig
from eyefuse.data.decode import PreprocessError, work_block
from eyefuse.data.fov import find_fov
from eyefuse.data.preprocess import preprocess_image
from test_preprocess import draw_fundus, jpeg_bytes


def squash(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to another aspect ratio, as an uploader who scaled non-square crops to a square did."""
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def test_work_block_depends_on_the_source_size_and_is_divided_by_every_reduction() -> None:
    assert work_block(512, 512) == 2
    assert work_block(256, 200) == 1
    assert work_block(2592, 1728) == 16
    assert work_block(2048, 1536) == 8
    for w in (300, 700, 1500, 2976, 3888):
        b = work_block(w, w)
        assert w / b <= 256 and ((b < 8 and b & (b - 1) == 0) or b % 8 == 0)


@pytest.mark.parametrize("shape", [(300, 220), (220, 300), (320, 256)])
def test_ellipse_of_a_resized_circle_is_found(shape: tuple[int, int]) -> None:
    w, h = shape
    img = squash(draw_fundus(300, 300, 150, 150, 140), w, h)
    fov = find_fov(img)
    assert fov.method == "ellipse", fov
    rx, ry = 140 * w / 300, 140 * h / 300
    assert abs(fov.cx - w / 2) <= 0.03 * rx and abs(fov.cy - h / 2) <= 0.03 * ry, fov
    assert abs(fov.radius - rx) <= 0.03 * rx and abs(fov.ry - ry) <= 0.03 * ry, fov


def test_circle_cut_by_the_frame_then_squashed_is_found() -> None:
    # A circle cut at the top and bottom, cropped to its extent and resized to a square (Kaggle).
    img = squash(draw_fundus(440, 330, 220, 165, 210), 256, 256)
    fov = find_fov(img)
    assert fov.method in ("ellipse", "cropped"), fov
    assert abs(fov.cx - 127.5) < 4 and abs(fov.cy - 127.5) < 6, fov
    assert abs(fov.radius - 210 * 256 / 440) <= 0.04 * fov.radius, fov


def test_white_frame_around_the_photograph() -> None:
    img = draw_fundus(300, 260, 150, 130, 120)
    dark = img.max(axis=2) < 20
    framed = img.copy()
    framed[:30] = 255
    framed[-30:] = 255
    framed[:, :40][dark[:, :40]] = 255
    fov = find_fov(framed)
    assert abs(fov.cx - 150) < 6 and abs(fov.cy - 130) < 6 and abs(fov.radius - 120) < 0.05 * 120, fov


def test_dim_photograph_with_a_dark_side_is_found() -> None:
    img = draw_fundus(400, 320, 200, 160, 140, gain=0.25).astype(np.float32)
    img *= np.linspace(0.45, 1.0, 400, dtype=np.float32)[None, :, None]  # uneven illumination
    fov = find_fov(np.clip(img, 0, 255).astype(np.uint8))
    assert abs(fov.cx - 200) < 0.06 * 140 and abs(fov.cy - 160) < 0.06 * 140, fov
    assert abs(fov.radius - 140) < 0.08 * 140, fov


def test_montage_of_two_circles_falls_back_to_the_extent() -> None:
    a = draw_fundus(360, 260, 130, 130, 110)
    b = draw_fundus(360, 260, 230, 130, 110, seed=1)
    fov = find_fov(np.maximum(a, b))
    assert fov.method in ("extent", "cropped"), fov
    assert abs(fov.cx - 180) < 4 and abs(fov.radius - 160) < 6 and abs(fov.ry - 110) < 6, fov


def test_rectangle_is_still_refused() -> None:
    img = cv2.rectangle(np.zeros((300, 400, 3), np.uint8), (100, 50), (300, 250), (200, 120, 60), -1)
    with pytest.raises(PreprocessError, match="no field of view found"):
        find_fov(img)


def test_ellipse_is_stretched_back_to_a_circle_in_the_model_input() -> None:
    data = jpeg_bytes(squash(draw_fundus(300, 300, 150, 150, 140), 300, 210), quality=95)
    out, fov = preprocess_image(data, PreprocessConfig(size=96, enhance="none"))
    assert fov.method == "ellipse"
    inside = out.max(axis=2) > 0
    rows, cols = np.nonzero(inside)
    width, height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert abs(int(width) - int(height)) <= 2, (width, height)  # a circle, not an ellipse
    assert not inside[0, 0] and not inside[-1, -1] and inside[48, 48]


def test_same_field_of_view_at_every_output_size() -> None:
    # 1600 x 1200: decoded at 1/8, 1/4, 1/2 or fully depending on the output size.
    rgb = draw_fundus(1600, 1200, 790, 610, 585)
    jpeg = jpeg_bytes(rgb, quality=95)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG", compress_level=1)
    for data in (jpeg, png.getvalue()):
        fovs = [
            preprocess_image(data, PreprocessConfig(size=s, enhance="none"))[1] for s in (32, 64, 160, 448)
        ]
        for f in fovs[1:]:
            for a, b in ((f.cx, fovs[0].cx), (f.cy, fovs[0].cy), (f.radius, fovs[0].radius)):
                assert abs(a - b) <= 0.002 * 585, fovs
    assert abs(fovs[0].cx - 790) < 0.01 * 585 and abs(fovs[0].radius - 585) < 0.01 * 585


def test_small_source_gets_exactly_the_same_field_of_view_at_every_size() -> None:
    # A Kaggle-sized copy (512 px): decoded fully whatever the output size, so nothing can differ.
    data = jpeg_bytes(squash(draw_fundus(300, 300, 150, 150, 140), 512, 470), quality=90)
    fovs = {preprocess_image(data, PreprocessConfig(size=s, enhance="none"))[1] for s in (32, 64, 160, 448)}
    assert len(fovs) == 1, fovs
