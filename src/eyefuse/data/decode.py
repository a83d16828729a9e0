"""Decoding of a photograph's bytes to RGB uint8, reduced at the source when it is much larger than
needed, with the guards a service needs.

Memory per decode is bounded: `MAX_PIXELS` (by header, before any pixel is decoded) is set from real
fundus cameras, and a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain when the output
allows, so only formats without reduced decoding (PNG, TIFF, ...) ever hold a full-size image.

libjpeg's warnings about corrupt data ("Corrupt JPEG data: ...") are printed by the C library to the
process's standard error, where nobody reads them and nothing downstream knows. `decode_image`
captures them (`_capture_stderr`) and reports them in `notes` instead.

Decisions where the task left room:

- EXIF orientation is applied, by both decoders (OpenCV and Pillow agree), so an image is processed
  as every viewer shows it; a field of view found on it is in the pixel coordinates of that
  oriented image. ODIR images carry no orientation tag.
- A JPEG without the end-of-image marker (FFD9) in its last 4 KiB is refused as truncated: libjpeg
  would silently fill the missing rows with grey. Other formats are decoded by Pillow in strict
  mode, which raises on truncation.
- Images over `MAX_PIXELS` (25 MP, by header size, before decoding; the largest fundus cameras
  have about 24 MP) are refused, which bounds one decode's memory; images under `MIN_SIDE` pixels
  are refused as too small to hold a field of view.
- 16-bit images are scaled by their full 16-bit range (high byte), never by their content, so that
  the result does not depend on the picture; 32-bit float images are refused. Alpha is dropped
  (not composited); palette images are expanded; multi-frame files use their first frame.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from eyefuse.errors import EyefuseError

#: Largest image accepted, in pixels (by header size, before decoding). The largest fundus cameras
#: have about 24 megapixels (6000 x 4000 sensors); 25 MP leaves room for their sizes and bounds the
#: memory of one decode: a PNG at the limit is held once by Pillow (4 bytes a pixel) and
#: reduced before it is copied (`test_peak_memory_of_the_worst_allowed_upload_is_bounded`).
MAX_PIXELS = 25_000_000
#: Smallest accepted image side, in pixels.
MIN_SIDE = 32
#: Assumed field-of-view diameter as a fraction of the shorter image side, to choose the JPEG
#: reduction before the circle is known (cameras fill 85-100 % of it; a cut-off circle more).
FOV_FILL = 0.9
#: The JPEG reduction keeps the expected field-of-view diameter at least this many times `target`.
REDUCE_HEADROOM = 1.15
#: Longest side of the working image on which the field of view is searched (at most; see
#: `work_block`).
WORK_SIDE = 256

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


def work_block(width: int, height: int) -> int:
    """Side, in source pixels, of the blocks averaged into one pixel of the field-of-view working
    image: at least `max(width, height) / WORK_SIDE`, a power of two under 8 and a multiple of 8
    above. It depends on the source size only, and a decode reduced 1/2, 1/4 or 1/8 (never more
    than the block, see `decode_image`) divides it, so the working image is the same block average
    of the source whatever the output size (the field of view is a property of the photograph)."""
    need = max(1, math.ceil(max(width, height) / WORK_SIDE))
    if need <= 8:
        return 1 << (need - 1).bit_length()
    return 8 * math.ceil(need / 8)


def _max_reduction(width: int, height: int) -> int:
    """The largest DCT reduction (1, 2, 4, 8) that divides the working block of this source; 1 for
    a source of at most 4 x `WORK_SIDE` px, which is decoded fully at every output size (cheap at
    that size), so its field of view is exactly the same at every output size (a DCT-reduced decode
    and the block means of a full decode differ by rounding, which can tip a borderline fit)."""
    if max(width, height) <= 4 * WORK_SIDE:
        return 1
    b = work_block(width, height)
    return max(r for r in (1, 2, 4, 8) if b % r == 0)


# --- decoding -----------------------------------------------------------------------------------


def _label(source: object, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _SOURCE_LABEL_BYTES
    return str(source)


#: Largest photograph file read (bytes): a fundus photograph is a few MB; a larger file, or one that
#: is not a regular file (/dev/zero, a pipe), is refused before it is read.
MAX_FILE_BYTES = 256 * 2**20


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


def _pil_to_rgb(im: Image.Image, label: str, reduction: int = 1) -> np.ndarray:
    """Decode a Pillow image strictly and convert any mode to RGB uint8, box-averaged by
    `reduction` (like the DCT-domain reduction of a JPEG) before it is copied into numpy, so that a
    large PNG is held at full size once only."""
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
        rgb16 = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
        if reduction > 1:
            h, w = gray.shape
            rgb16 = cv2.resize(rgb16, (-(-w // reduction), -(-h // reduction)), interpolation=cv2.INTER_AREA)
        return rgb16
    if mode == "F":
        raise PreprocessError(label, "unsupported pixel format: 32-bit floating point")
    if mode != "RGB":  # convert() of an RGB image would only copy it
        try:
            im = im.convert("RGB")
        except ValueError:
            try:
                im = im.convert("RGBA").convert("RGB")
            except ValueError:
                raise PreprocessError(label, f"unsupported pixel format: {mode}") from None
    if reduction > 1:
        im = im.reduce(reduction)
    return np.asarray(im, dtype=np.uint8).copy()


#: libjpeg's warnings that mean the compressed data is damaged (jerror.h: JWRN_EXTRANEOUS_DATA,
#: JWRN_JPEG_EOF, JWRN_HIT_MARKER, JWRN_MUST_RESYNC, JWRN_NOT_SEQUENTIAL).
_CORRUPT_JPEG = re.compile(
    r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression)"
)
# fd 2 is process-wide: one capture at a time (decodes in other threads wait for the few
# milliseconds of one decode).
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _capture_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (where libjpeg prints its warnings, from C) to a temporary file
    for the duration; the yielded list receives the lines that match `_CORRUPT_JPEG`, and every
    other captured line (another thread's, OpenCV's own) is written back to the real stderr."""
    found: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as tmp:
        with contextlib.suppress(Exception):  # Python's own buffered stderr first, in order
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (a detached process): nothing can leak, nothing to capture
            yield found
            return
        try:
            os.dup2(tmp.fileno(), 2)
            yield found
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    rest = []
    for line in text.splitlines(keepends=True):
        if _CORRUPT_JPEG.match(line):
            found.append(line.strip())
        else:
            rest.append(line)
    if rest:
        os.write(2, "".join(rest).encode("utf-8", "replace"))


def decode_image(
    source: Path | str | bytes,
    target: int | None,
    *,
    name: str | None = None,
    notes: list[str] | None = None,
) -> tuple[np.ndarray, float]:
    """Decode a photograph to RGB uint8 `H x W x 3`, reduced when the source is much larger.

    Args:
        source: an image file path, or the file's bytes.
        target: the field-of-view diameter the caller needs, in pixels (the output size); the image
            is reduced by the largest factor 1, 2, 4 or 8 that keeps the expected diameter at least
            `REDUCE_HEADROOM` x `target` and divides the field-of-view working block
            (`work_block`): a JPEG in the DCT domain, other formats by box averaging after the
            decode. None decodes at full size.
        name: how to name the source in errors (default: the path, or ``<bytes>``).
        notes: if given, receives one line per problem that did not stop the decode (libjpeg's
            "Corrupt JPEG data" warnings: the picture may be damaged), instead of stderr.

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
    r = min(jpeg_reduction(w, h, target), _max_reduction(w, h))

    # MPO (multi-picture JPEG, format name from Pillow): the first picture is decoded.
    if im is None or im.format in ("JPEG", "MPO"):
        with _capture_stderr() as corrupt:
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[r])
        if decoded is not None and decoded.ndim == 3 and decoded.shape[2] == 3:
            if corrupt and notes is not None:
                notes.append(f"corrupt JPEG data, the picture may be damaged (libjpeg: {corrupt[0]})")
            # DCT scaling maps r x r source pixels onto one output pixel exactly.
            return decoded, 1.0 / r
        # libjpeg refused it (rare encodings): let Pillow try, and say why if it fails.
    if im is None:
        im = _open_header(data, label)
    return _pil_to_rgb(im, label, r), 1.0 / r
