"""Benchmark: eyefuse's `preprocess_image` against the naive preprocessing found in public code.

Both turn an ODIR-sized JPEG into a 448 px Graham-filtered model input, on one core, in the same
run. The naive way: full decode with Pillow, bounding box of the non-black pixels with `np.where`,
Lanczos resize with Pillow, Graham filter with OpenCV. eyefuse: reduced-scale DCT decode, field of
view fitted at a small working resolution, anti-aliased resize, mask-normalised Graham filter.

The photographs are generated here (fundus-like: a textured orange disc with vessels on a noisy
black border, JPEG quality 95) at the ODIR camera sizes 2592x1728, 1936x1296 and 2976x2976.

The JPEG file size matters: entropy decoding, which no reduced-scale decode can skip, grows with
it, and it is most of eyefuse's time. The table prints KB per megapixel. The default sensor noise
(1 grey level) gives about 150 KB/MP, several times denser than real fundus photographs (the IDRiD
disease-grading set as published on Hugging Face holds 413 camera JPEGs of 4288x2848 in 166 MB:
about 400 KB each, 33 KB/MP), so the default is, if anything, the harder case for eyefuse;
`--noise 2` (about 185 KB/MP) is harder still and is recorded beside it in benchmarks/RESULTS.md.

Run: `.venv/bin/python benchmarks/bench_preprocess.py [--repeat 3] [--images-per-size 3] [--noise 1]`.
It prints the figures; it does not assert (timings depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from eyefuse.config import PreprocessConfig
from eyefuse.data.preprocess import preprocess_image

SIZES = ((2592, 1728), (1936, 1296), (2976, 2976))
ODIR_TRAIN_IMAGES = 7000
OUT_SIZE = 448


def make_photograph(width: int, height: int, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """A fundus-like RGB photograph: textured orange disc, vessels, optic disc, noisy dark border.

    `noise` is the per-pixel sensor noise (grey levels). With the texture it sets the JPEG file
    size, and the file size sets the floor of any JPEG decode (entropy decoding is not reduced by
    DCT scaling): at quality 95, 1 gives about 0.7 MB at 2592x1728, 2 about 0.8 MB.
    """
    short = min(width, height)
    r = short * rng.uniform(0.46, 0.56)  # above 0.5: circle cut at the top and bottom, as on some cameras
    cx = width / 2 + rng.uniform(-0.02, 0.02) * short
    cy = height / 2 + rng.uniform(-0.02, 0.02) * short
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    d = np.hypot(xx - cx, yy - cy)
    # Texture at two scales so the JPEG has a realistic amount of detail (file sizes of real photos).
    fine = rng.normal(0, noise, (height, width)).astype(np.float32)
    coarse = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 6) * 60
    img = np.array([205, 100, 40], np.float32) * (1 - 0.4 * (d / r) ** 2)[..., None]
    img += (fine + coarse)[..., None] * np.array([1.0, 0.6, 0.3], np.float32)
    vessels = np.zeros((height, width), np.float32)
    for _ in range(12):
        a = rng.uniform(0, 2 * np.pi)
        p0 = (int(cx + 0.35 * r * np.cos(a)), int(cy))
        p1 = (int(cx + 1.1 * r * np.cos(a + 0.5)), int(cy + 1.1 * r * np.sin(a + 0.5)))
        cv2.line(vessels, p0, p1, 1.0, max(2, int(r / 90)), cv2.LINE_AA)
    img *= (1 - 0.45 * cv2.GaussianBlur(vessels, (0, 0), 2))[..., None]
    img += 70 * np.exp(-((xx - cx - 0.4 * r) ** 2 + (yy - cy) ** 2) / (2 * (0.07 * r) ** 2))[..., None]
    inside = np.clip(r - d + 0.5, 0, 1)[..., None]
    border = rng.normal(4, 2, (height, width)).astype(np.float32)[..., None]
    return np.clip(img * inside + border * (1 - inside), 0, 255).astype(np.uint8)


def naive_preprocess(path: Path, size: int = OUT_SIZE, sigma: float = 10.0) -> np.ndarray:
    """How public ODIR code typically does it (the baseline); the Graham sigma is the same as
    eyefuse's (10 px per 300 px of radius)."""
    img = Image.open(path).convert("RGB")
    gray = np.asarray(img.convert("L"))
    ys, xs = np.where(gray > 7)
    img = img.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    arr = np.asarray(img.resize((size, size), Image.LANCZOS))
    return cv2.addWeighted(arr, 4, cv2.GaussianBlur(arr, (0, 0), sigma * size / 600), -4, 128)


def time_both(
    ours: Callable[[Path], object], naive: Callable[[Path], object], paths: list[Path], repeat: int
) -> tuple[dict[Path, float], dict[Path, float]]:
    """Best-of-`repeat` seconds per image for both ways, interleaved image by image so that a
    change in machine load hits both alike (the minimum is the least disturbed measurement)."""
    best = ({p: float("inf") for p in paths}, {p: float("inf") for p in paths})
    for _ in range(repeat):
        for p in paths:
            for fn, times in zip((ours, naive), best, strict=True):
                t = time.perf_counter()
                fn(p)
                times[p] = min(times[p], time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the images (best is kept)")
    parser.add_argument("--images-per-size", type=int, default=3, help="photographs per camera size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise", type=float, default=1.0, help="sensor noise in grey levels (sets the JPEG file size)"
    )
    args = parser.parse_args()

    cv2.setNumThreads(1)  # single core for both
    rng = np.random.default_rng(args.seed)
    cfg = PreprocessConfig(size=OUT_SIZE, enhance="graham")
    with tempfile.TemporaryDirectory(prefix="eyefuse-bench-") as tmp:
        paths: dict[tuple[int, int], list[Path]] = {}
        for w, h in SIZES:
            for i in range(args.images_per_size):
                p = Path(tmp) / f"{w}x{h}_{i}.jpg"
                Image.fromarray(make_photograph(w, h, rng, args.noise)).save(p, quality=95)
                paths.setdefault((w, h), []).append(p)
        everything = [p for ps in paths.values() for p in ps]
        for p in everything:  # warm-up: page cache, OpenCV/Pillow initialisation
            preprocess_image(p, cfg)
            naive_preprocess(p)
        ours, naive = time_both(lambda p: preprocess_image(p, cfg), naive_preprocess, everything, args.repeat)
        file_kb = {p: p.stat().st_size / 1024 for p in everything}

    print(
        f"preprocess to {OUT_SIZE} px, graham, one core; best of {args.repeat}; {args.images_per_size}/size; "
        f"sensor noise {args.noise:g}"
    )
    header = ("camera size", "file KB", "KB/MP", "naive ms", "eyefuse ms", "speed-up")
    print(" ".join(f"{t:>{w}}" for t, w in zip(header, (12, 8, 6, 9, 11, 9), strict=True)))
    for (w, h), ps in paths.items():
        kb = statistics.mean(file_kb[p] for p in ps)
        n = statistics.mean(naive[p] for p in ps) * 1e3
        o = statistics.mean(ours[p] for p in ps) * 1e3
        print(f"{f'{w}x{h}':>12} {kb:>8.0f} {kb / (w * h / 1e6):>6.0f} {n:>9.1f} {o:>11.1f} {n / o:>8.1f}x")
    n_all = statistics.mean(naive.values()) * 1e3
    o_all = statistics.mean(ours.values()) * 1e3
    ratio = n_all / o_all
    print(f"{'mean':>12} {'':>8} {'':>6} {n_all:>9.1f} {o_all:>11.1f} {ratio:>8.1f}x   (target >= 8x)")
    minutes = ODIR_TRAIN_IMAGES * o_all / 1e3 / 2 / 60
    print(
        f"extrapolated: {ODIR_TRAIN_IMAGES} ODIR training images on 2 cores: {minutes:.1f} min with eyefuse "
        f"(target < 2 min), {ODIR_TRAIN_IMAGES * n_all / 1e3 / 2 / 60:.1f} min the naive way "
        "(preprocessing only, two processes assumed to scale linearly)"
    )


if __name__ == "__main__":
    main()
