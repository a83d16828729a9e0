"""Decoding: bounded memory for the worst upload allowed, corrupt JPEG data flagged (not printed),
reduced decoding of large non-JPEG images. Images are made here."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from eyefuse.config import PreprocessConfig
from eyefuse.data import decode
from eyefuse.data.decode import MAX_PIXELS, PreprocessError, decode_image
from eyefuse.data.preprocess import preprocess_image
from eyefuse.data.preprocess_files import preprocess_files
from test_preprocess import draw_fundus, jpeg_bytes

# Runs in a fresh interpreter: the peak resident memory (ru_maxrss) of preprocessing one file,
# above the peak reached after the imports and after reading the file's bytes.
_MEASURE = """
import resource, sys
from pathlib import Path
from eyefuse.config import PreprocessConfig
from eyefuse.data.preprocess import preprocess_image
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out, fov = preprocess_image(data, PreprocessConfig(size=448))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, out.shape, round(fov.radius))
"""


def test_peak_memory_of_the_worst_allowed_upload_is_bounded(tmp_path: Path) -> None:
    # The worst allowed upload: a PNG (no reduced decoding) of the largest accepted pixel count.
    side = math.isqrt(MAX_PIXELS)
    img = np.zeros((side, side, 3), np.uint8)
    cv2.circle(img, (side // 2, side // 2), int(0.45 * side), (60, 110, 200), -1)  # BGR orange disc
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    del img
    path = tmp_path / "huge.png"
    path.write_bytes(buf.tobytes())
    del buf
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True
    )
    peak_mb, *_ = run.stdout.split()
    # Pillow holds the decoded image once (4 bytes a pixel) before it is reduced, and nothing else
    # full-size is kept. Under the former 100 MP limit the worst upload was four times larger, and
    # its full-size copies (Pillow's, the RGB conversion's, numpy's) were all alive at once.
    assert float(peak_mb) < 250, run.stdout
    assert "(448, 448, 3)" in run.stdout


def test_large_png_is_reduced_like_a_jpeg() -> None:
    rgb = draw_fundus(1200, 900, 600, 450, 420)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG", compress_level=1)
    reduced, scale = decode_image(png.getvalue(), 64)
    assert scale == 0.125 and reduced.shape == (113, 150, 3)
    full, full_scale = decode_image(png.getvalue(), None)
    assert full_scale == 1.0 and np.array_equal(full, rgb)
    box = cv2.resize(rgb[:896, :1200], (150, 112), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced[:112].astype(int) - box.astype(int)).max() <= 1


def corrupt_jpeg() -> bytes:
    """A JPEG whose entropy-coded data has garbage bytes in the middle: libjpeg decodes it, warning
    'Corrupt JPEG data' on stderr (the end-of-image marker is intact, so it is not truncated)."""
    data = bytearray(jpeg_bytes(draw_fundus(320, 240, 160, 120, 110), quality=90))
    sos = data.index(b"\xff\xda")
    mid = (sos + len(data)) // 2
    data[mid : mid + 6] = b"\xff\xd5\xff\xd3\x00\xff"  # stray restart markers inside the scan
    return bytes(data)


def test_corrupt_jpeg_is_flagged_and_nothing_leaks_to_stderr(capfd) -> None:
    notes: list[str] = []
    out, _ = preprocess_image(corrupt_jpeg(), PreprocessConfig(size=64), name="eye.jpg", notes=notes)
    assert out.shape == (64, 64, 3)
    assert len(notes) == 1 and notes[0].startswith("corrupt JPEG data"), notes
    assert "Corrupt JPEG data" in notes[0]
    captured = capfd.readouterr()
    assert "Corrupt JPEG" not in captured.err and "Corrupt JPEG" not in captured.out, captured


def test_good_jpeg_gives_no_note_and_other_stderr_output_is_kept(capfd) -> None:
    notes: list[str] = []
    with decode._capture_stderr() as found:
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\nsomething else\n")
    assert found == ["Corrupt JPEG data: 3 extraneous bytes before marker 0xd9"]
    assert capfd.readouterr().err == "something else\n"
    preprocess_image(jpeg_bytes(draw_fundus(320, 240, 160, 120, 110)), PreprocessConfig(size=64), notes=notes)
    assert notes == []


def test_over_the_pixel_limit_is_refused_by_header() -> None:
    side = math.isqrt(MAX_PIXELS) + 1
    data = jpeg_bytes(np.zeros((8, 8, 3), np.uint8))
    # Patch the frame header's size fields (SOF0: FFC0, length, precision, height, width).
    i = data.index(b"\xff\xc0")
    data = data[: i + 5] + side.to_bytes(2, "big") + side.to_bytes(2, "big") + data[i + 9 :]
    try:
        decode_image(data, 448, name="big.jpg")
    except PreprocessError as e:
        assert e.reason.startswith("image too large") and "limit is 25" in e.reason
    else:
        raise AssertionError("not refused")


def test_preprocess_command_counts_corrupt_jpegs(tmp_path: Path, capfd) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(corrupt_jpeg())
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(draw_fundus(320, 240, 160, 120, 110)))
    summary = preprocess_files([bad, good], tmp_path / "out", PreprocessConfig(size=64))
    assert summary.written == 2 and [p for p, _ in summary.notes] == [str(bad)]
    assert "1 written with a warning" in str(summary) and "corrupt JPEG data" in str(summary)
    assert "Corrupt JPEG" not in capfd.readouterr().err
