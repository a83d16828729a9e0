"""Tests for eyefuse.data.preprocess: decoding, field-of-view detection, crop/resize/enhance/mask and
the `eyefuse preprocess` file writer. Photographs are drawn here (small, every camera shape)."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from eyefuse.config import PreprocessConfig
from eyefuse.data.decode import PreprocessError, _jpeg_frame_size, decode_image, jpeg_reduction
from eyefuse.data.fov import FOV_MASK_FRACTION, FovCircle, _median_u8, find_fov, fov_square
from eyefuse.data.preprocess import _resize_down, preprocess_array, preprocess_image
from eyefuse.data.preprocess_files import output_names, preprocess_files
from eyefuse.errors import ConfigError, EyefuseError


def draw_fundus(
    w: int,
    h: int,
    cx: float,
    cy: float,
    r: float,
    *,
    border: float = 0.0,
    gain: float = 1.0,
    notch: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """RGB uint8 photograph: textured orange disc with vessels and an optic disc, anti-aliased edge,
    on a noisy black (or dark-grey) border; optional dark or bright camera notch at the top."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    d = np.hypot(xx - cx, yy - cy)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 2) * 25
    img = np.array([210, 105, 45], np.float32) * (1 - 0.35 * (d / r) ** 2)[..., None] + tex[..., None]
    vessels = np.zeros((h, w), np.float32)
    for _ in range(6):
        a = rng.uniform(0, 2 * np.pi)
        p0 = (int(cx + 0.3 * r * np.cos(a)), int(cy + 0.3 * r * np.sin(a)))
        p1 = (int(cx + 1.2 * r * np.cos(a + 0.4)), int(cy + 1.2 * r * np.sin(a + 0.4)))
        cv2.line(vessels, p0, p1, 1.0, max(1, int(r / 60)))
    img *= (1 - 0.4 * vessels)[..., None]
    img += 60 * np.exp(-((xx - cx - 0.4 * r) ** 2 + (yy - cy) ** 2) / (2 * (0.08 * r) ** 2))[..., None]
    img *= gain
    cover = np.clip(r - d + 0.5, 0, 1)
    if notch == "dark":
        cover[(np.abs(xx - cx) < 0.05 * r) & (np.abs(yy - (cy - r)) < 0.05 * r)] = 0
    bg = border + rng.normal(0, 2, (h, w)).astype(np.float32)
    out = img * cover[..., None] + bg[..., None] * (1 - cover[..., None])
    if notch == "bright":
        out[int(cy - r - 0.07 * r) : int(cy - r + 0.01 * r), int(cx - 0.05 * r) : int(cx + 0.05 * r)] = 230
    return np.clip(out, 0, 255).astype(np.uint8)


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(rgb, quality))
    return path


def png_with_huge_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width x height` (no pixel data needed to read the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


SMALL = PreprocessConfig(size=128)

# (width, height, cx, cy, r, drawing options): the camera shapes of ODIR, scaled down.
CAMERAS = {
    "2592x1728 / 4": (648, 432, 324, 216, 205, {}),
    "1444x1444 / 4": (361, 361, 180, 180, 170, {}),
    "circle cut at top and bottom": (400, 300, 200, 150, 185, {}),
    "dark notch": (400, 400, 200, 200, 180, {"notch": "dark"}),
    "bright notch": (500, 420, 250, 215, 180, {"notch": "bright"}),
    "dim photograph": (500, 400, 250, 200, 180, {"gain": 0.2}),
    "dark-grey border": (500, 400, 250, 200, 180, {"border": 25.0}),
    "fills the frame": (300, 300, 150, 150, 148, {}),
    "off centre": (600, 400, 280, 210, 180, {}),
}


@pytest.mark.parametrize("camera", list(CAMERAS))
def test_find_fov_on_every_camera_shape(camera: str, tmp_path: Path) -> None:
    w, h, cx, cy, r, opts = CAMERAS[camera]
    path = write_jpeg(tmp_path / "eye.jpg", draw_fundus(w, h, cx, cy, r, **opts))
    decoded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    for fov in (find_fov(decoded), preprocess_image(path, SMALL)[1]):  # array, and source coordinates
        assert abs(fov.cx - cx) <= 0.02 * r, fov
        assert abs(fov.cy - cy) <= 0.02 * r, fov
        assert abs(fov.radius - r) <= 0.02 * r, fov


@pytest.mark.parametrize(
    "image",
    [
        np.full((200, 300, 3), 128, np.uint8),
        np.zeros((200, 300, 3), np.uint8),
        np.random.default_rng(0).integers(0, 256, (200, 300, 3)).astype(np.uint8),
        cv2.rectangle(np.zeros((300, 400, 3), np.uint8), (100, 50), (300, 250), (200, 120, 60), -1),
    ],
    ids=["uniform grey", "all black", "noise", "rectangle"],
)
def test_find_fov_refuses_images_without_a_circle(image: np.ndarray) -> None:
    with pytest.raises(PreprocessError, match="no field of view found"):
        find_fov(image, name="x.jpg")


def test_error_names_path_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(PreprocessError) as info:
        preprocess_image(path, SMALL)
    err = info.value
    assert isinstance(err, EyefuseError)
    assert err.path == str(path) and err.reason == "empty file"
    assert str(err) == f"{path}: empty file"


def test_unusable_files_raise_with_the_right_reason(tmp_path: Path) -> None:
    good = jpeg_bytes(draw_fundus(400, 300, 200, 150, 140))
    png = io.BytesIO()
    Image.fromarray(draw_fundus(200, 150, 100, 75, 70)).save(png, format="PNG")
    cases = {
        "empty.jpg": (b"", "empty file"),
        "notes.jpg": (b"This is a text file, not a photograph.\n" * 20, "not an image (could not decode)"),
        "random.jpg": (np.random.default_rng(1).bytes(5000), "not an image (could not decode)"),
        "truncated.jpg": (good[: len(good) * 6 // 10], "truncated JPEG"),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], "truncated or corrupt image"),
        "bomb.png": (png_with_huge_header(20000, 20000), "image too large"),
        "tiny.png": (_png(np.zeros((10, 10, 3), np.uint8)), "image too small"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PreprocessError) as info:
            preprocess_image(tmp_path / name, SMALL)
        assert info.value.reason.startswith(reason), (name, info.value.reason)
    with pytest.raises(PreprocessError, match="file not found"):
        preprocess_image(tmp_path / "missing.jpg", SMALL)
    with pytest.raises(PreprocessError, match="is a directory"):
        preprocess_image(tmp_path, SMALL)
    with pytest.raises(PreprocessError, match=r"^<bytes>: empty file"):
        preprocess_image(b"", SMALL)
    with pytest.raises(PreprocessError, match=r"^upload\.jpg: empty file"):
        preprocess_image(b"", SMALL, name="upload.jpg")


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_pixel_formats_decode_to_rgb_uint8() -> None:
    rgb = draw_fundus(160, 120, 80, 60, 55)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.where(gray > 10, 255, 0).astype(np.uint8)])
    formats: dict[str, tuple[bytes, np.ndarray]] = {}
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG", quality=95)
    formats["grayscale JPEG"] = (buf.getvalue(), np.dstack([gray] * 3))
    formats["grayscale PNG"] = (_png(gray), np.dstack([gray] * 3))
    formats["RGBA PNG (alpha dropped)"] = (_png(rgba), rgb)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([gray, gray])).convert("LA").save(buf, "PNG")
    formats["LA PNG"] = (buf.getvalue(), np.dstack([gray] * 3))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    formats["palette PNG"] = (buf.getvalue(), np.asarray(pal.convert("RGB")))
    _, png16 = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    formats["16-bit RGB PNG"] = (png16.tobytes(), rgb)
    _, gray16 = cv2.imencode(".png", gray.astype(np.uint16) * 257)
    formats["16-bit grayscale PNG"] = (gray16.tobytes(), np.dstack([gray] * 3))
    _, tif16 = cv2.imencode(".tiff", gray.astype(np.uint16) * 257)
    formats["16-bit grayscale TIFF"] = (tif16.tobytes(), np.dstack([gray] * 3))
    for what, (data, expected) in formats.items():
        decoded, scale = decode_image(data, None)
        assert decoded.dtype == np.uint8 and decoded.shape == (120, 160, 3), what
        assert scale == 1.0
        diff = np.abs(decoded.astype(int) - expected)
        if "JPEG" in what:  # lossy: compare on average, and the three channels must be equal
            assert diff.mean() < 1.5 and (decoded == decoded[..., :1]).all(), what
        else:
            assert diff.max() == 0, what
        out, fov = preprocess_image(data, PreprocessConfig(size=64))
        assert out.shape == (64, 64, 3) and abs(fov.radius - 55) <= 0.03 * 55, what


def test_float_images_are_refused() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.float32), mode="F").save(buf, "TIFF")
    with pytest.raises(PreprocessError, match="32-bit floating point"):
        decode_image(buf.getvalue(), None)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    rgb = np.zeros((60, 100, 3), np.uint8)
    rgb[:20, :30] = 255  # bright block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    decoded, _ = decode_image(buf.getvalue(), None)
    assert decoded.shape == (100, 60, 3)
    assert decoded[:15, -15:].mean() > 200 and decoded[:15, :15].mean() < 50  # block now top-right


@pytest.mark.parametrize("variant", ["baseline", "progressive", "exif", "grayscale"])
def test_jpeg_frame_size_reads_the_header_as_pillow_does(variant: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert("L") if variant == "grayscale" else Image.fromarray(rgb)
    extra: dict[str, object] = {"progressive": True} if variant == "progressive" else {}
    if variant == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        extra["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **extra)
    assert _jpeg_frame_size(buf.getvalue()) == Image.open(io.BytesIO(buf.getvalue())).size == (53, 37)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff",
        b"\xff\xd8\xff\xe0\x00",
        b"\xff\xd8\x00\x00\x00\x00",
        b"\xff\xd8\xff\xda\x00\x02\xff\xd9",
    ],
)
def test_jpeg_frame_size_gives_up_on_unreadable_headers(data: bytes) -> None:
    assert _jpeg_frame_size(data) is None  # the caller then lets Pillow open (and refuse) the file


def test_histogram_median_equals_numpy_median() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 64, 81, 1000):
        x = rng.integers(0, 256, n, dtype=np.uint8)
        assert _median_u8(x) == float(np.median(x))
    assert _median_u8(np.full((9, 9), 17, np.uint8)) == 17.0


def test_fov_square_has_an_even_side_centred_on_the_circle() -> None:
    for cx, cy, r in ((100.3, 80.7, 50.2), (99.5, 99.5, 49.5), (10.0, 10.0, 0.2)):
        for margin in (0.0, 0.1):
            x0, y0, side = fov_square(FovCircle(cx, cy, r), PreprocessConfig(margin=margin))
            assert side % 2 == 0 and side >= 2
            assert abs(side - max(2.0, 2 * r * (1 + margin))) <= 1.0
            # pixel x covers [x - 0.5, x + 0.5), so the square spans [x0 - 0.5, x0 + side - 0.5)
            assert abs(x0 - 0.5 + side / 2 - cx) <= 0.5 and abs(y0 - 0.5 + side / 2 - cy) <= 0.5


@pytest.mark.parametrize("side", [96, 150, 191, 192, 250, 301, 700])
def test_resize_down_matches_area_averaging(side: int) -> None:
    size = 96
    rng = np.random.default_rng(side)
    img = cv2.GaussianBlur(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), (0, 0), 1.5)
    out = _resize_down(img, size)
    ref = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    psnr = 10 * np.log10(255**2 / max(np.mean((out.astype(float) - ref) ** 2), 1e-12))
    assert psnr > 40, psnr
    # The geometry is kept: a bright dot lands where the area resize puts it.
    dot = np.zeros((side, side, 3), np.uint8)
    y, x = side // 3, (2 * side) // 3
    dot[y - 2 : y + 3, x - 2 : x + 3] = 255
    peak_out = np.unravel_index(_resize_down(dot, size)[..., 0].argmax(), (size, size))
    peak_ref = np.unravel_index(
        cv2.resize(dot, (size, size), interpolation=cv2.INTER_AREA)[..., 0].argmax(), (size, size)
    )
    assert max(abs(int(a) - int(b)) for a, b in zip(peak_out, peak_ref, strict=True)) <= 1


def test_jpeg_reduction_choice() -> None:
    assert jpeg_reduction(2592, 1728, 448) == 2
    assert jpeg_reduction(1936, 1296, 448) == 2
    assert jpeg_reduction(2976, 2976, 448) == 4
    assert jpeg_reduction(2976, 2976, 224) == 8
    assert jpeg_reduction(640, 480, 448) == 1
    assert jpeg_reduction(2976, 2976, None) == 1


def test_reduced_decode_matches_full_decode(tmp_path: Path) -> None:
    w, h, r = 1600, 1200, 560
    path = write_jpeg(tmp_path / "big.jpg", draw_fundus(w, h, 800, 600, r), quality=95)
    reduced, scale = decode_image(path, 128)
    assert scale == 0.25 and reduced.shape == (300, 400, 3)
    full, full_scale = decode_image(path, None)
    assert full_scale == 1.0 and full.shape == (h, w, 3)
    for enhance in ("none", "graham"):
        cfg = PreprocessConfig(size=128, enhance=enhance)
        out_reduced, fov_reduced = preprocess_image(path, cfg)
        out_full, fov_full = preprocess_array(full, cfg)
        for a, b in ((fov_reduced.cx, fov_full.cx), (fov_reduced.cy, fov_full.cy), (fov_reduced.radius, r)):
            assert abs(a - b) <= 0.005 * r
        diff = np.abs(out_reduced.astype(int) - out_full.astype(int))
        # graham multiplies differences by 4; both stay far below visible differences on average
        assert diff.mean() < (1.5 if enhance == "none" else 4.0), (enhance, diff.mean())


def _disc_stats(out: np.ndarray, r_out: float) -> tuple[np.ndarray, np.ndarray]:
    size = out.shape[0]
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2)
    return d, out.max(axis=2)


@pytest.mark.parametrize("enhance", ["graham", "clahe", "none"])
def test_enhancements_shape_dtype_and_mask(enhance: str, tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "eye.jpg", draw_fundus(648, 432, 324, 216, 205))
    cfg = PreprocessConfig(size=96, enhance=enhance)
    out, _ = preprocess_image(path, cfg)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    d, brightest = _disc_stats(out, 48)
    assert (brightest[d > 48 * FOV_MASK_FRACTION + 1.0] == 0).all()  # outside the circle: black
    assert (brightest[d < 40] > 0).mean() > 0.99  # inside: picture
    if enhance == "graham":
        assert abs(float(out[d < 40].mean()) - 128) < 12  # local mean removed, centred on 128
    none, _ = preprocess_image(path, PreprocessConfig(size=96, enhance="none"))
    if enhance != "none":
        assert np.abs(out.astype(int) - none).mean() > 5  # the enhancement did something


def test_graham_has_no_halo_at_the_edge(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "eye.jpg", draw_fundus(500, 500, 250, 250, 230))
    masked, _ = preprocess_image(path, PreprocessConfig(size=128, enhance="graham"))
    plain, _ = preprocess_image(path, PreprocessConfig(size=128, enhance="graham", mask=False))
    d, _ = _disc_stats(masked, 64)
    rim = (d > 0.93 * 64) & (d < 0.975 * 64)  # the last few pixels inside the mask
    assert abs(float(masked[rim].mean()) - 128) < 10  # mask-normalised blur: no halo
    assert float(plain[rim].mean()) > 145  # the plain blur of Ben Graham's formula has one
    assert (plain[d > 66] != 0).any()  # mask=False leaves the outside unmasked


def test_cut_off_rows_stay_black_and_margin_shrinks_the_disc(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "cut.jpg", draw_fundus(400, 300, 200, 150, 185))
    out, fov = preprocess_image(path, PreprocessConfig(size=128, enhance="graham"))
    # The circle (r 185) leaves the 300-px frame by 35 px top and bottom: 12 rows of 128 are padding.
    assert (out[:10] == 0).all() and (out[-10:] == 0).all()
    assert (out[64, 5:123].max(axis=1) > 0).mean() > 0.95
    wide, _ = preprocess_image(path, PreprocessConfig(size=128, enhance="none", margin=0.25))
    d, brightest = _disc_stats(wide, 64)
    assert (brightest[d > 64 / 1.25 + 1.5] == 0).all()
    assert abs(fov.radius - 185) < 0.02 * 185


def test_bytes_and_path_give_the_same_result(tmp_path: Path) -> None:
    data = jpeg_bytes(draw_fundus(648, 432, 324, 216, 205))
    path = tmp_path / "eye.jpg"
    path.write_bytes(data)
    a, fa = preprocess_image(path, SMALL)
    b, fb = preprocess_image(data, SMALL)
    assert np.array_equal(a, b) and fa == fb
    assert isinstance(fa, FovCircle)


def test_invalid_settings_raise_config_error() -> None:
    image = draw_fundus(200, 200, 100, 100, 90)
    for cfg in (
        PreprocessConfig(margin=-0.1),
        PreprocessConfig(enhance="sharpen"),
        PreprocessConfig(size=8),
        PreprocessConfig(graham_sigma=0.0),
    ):
        with pytest.raises(ConfigError):
            preprocess_array(image, cfg)


def test_output_names_disambiguate_equal_stems() -> None:
    paths = [Path("x/a.jpg"), Path("y/a.png"), Path("a-2.jpg"), Path("A.jpg"), Path("b.jpeg")]
    assert output_names(paths) == ["a.png", "a-2.png", "a-2-2.png", "A-3.png", "b.png"]


def test_preprocess_files_writes_pngs_fov_csv_and_failures(tmp_path: Path) -> None:
    first = write_jpeg(tmp_path / "in" / "1_left.jpg", draw_fundus(648, 432, 324, 216, 205))
    second = write_jpeg(
        tmp_path / "in" / "other" / "1_left.jpg", draw_fundus(361, 361, 180, 180, 170, seed=1)
    )
    bad = tmp_path / "in" / "readme.jpg"
    bad.write_text("not a photograph")
    out_dir = tmp_path / "out"
    summary = preprocess_files([first, second, bad, first], out_dir, SMALL)
    assert summary.written == 2 and summary.total == 3
    assert summary.failed == [(str(bad), "not an image (could not decode)")]
    assert summary.duplicates == [str(first)]
    text = str(summary)
    assert "2 of 3" in text and "readme.jpg" in text and "failed" in text
    png = cv2.cvtColor(cv2.imread(str(out_dir / "1_left.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(png, preprocess_image(first, SMALL)[0])
    assert (out_dir / "1_left-2.png").is_file()
    with open(out_dir / "fov.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["output"] for row in rows] == ["1_left.png", "1_left-2.png"]
    assert rows[1]["path"] == str(second)
    assert abs(float(rows[0]["cx"]) - 324) < 4 and abs(float(rows[0]["radius"]) - 205) < 4
    assert rows[0]["method"] == "circle" and rows[0]["radius_y"] == rows[0]["radius"]
    with open(out_dir / "failed.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{"path": str(bad), "reason": "not an image (could not decode)"}]
    assert not list(out_dir.glob(".*.tmp*"))  # atomic writes leave no temporary files
