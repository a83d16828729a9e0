"""Check: the project's field-of-view search on every photograph of some folders or files.

For each photograph it decodes and searches the field of view exactly as preprocessing does
(`decode_image` reduced for `--size`, then `find_fov` on the source's block means) and prints how
many were found by the circle fit and by each fallback (ellipse, cropped, extent), how many failed,
the failure rate, and every failure with its reason. With `--sizes 64,160,448` it also searches
each photograph at those output sizes and prints the largest disagreement of centre and radii
between sizes, in percent of the radius (the field of view is meant to be a property of the
photograph, the same at every output size).

Run: `.venv/bin/python benchmarks/check_fov.py PATH... [--size 448] [--sizes 64,160,448]`
(PATH: image files, or folders searched for *.jpg, *.jpeg, *.png, *.tif, *.tiff, *.bmp).
It takes paths as arguments and reads nothing else; it prints and does not assert.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from eyefuse.data.decode import PreprocessError, decode_image
from eyefuse.data.fov import FOV_METHODS, FovCircle, find_fov

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def image_paths(args: list[str]) -> list[Path]:
    """The photographs named by `args`: files as given, folders' image files sorted by name."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def fov_of(path: Path, size: int) -> FovCircle:
    """The field of view of `path` in source pixels, found as `preprocess_image` finds it."""
    rgb, scale = decode_image(path, size)
    return find_fov(rgb, name=str(path), scale=scale).scaled(1.0 / scale)


def disagreement(a: FovCircle, b: FovCircle) -> float:
    """Largest difference of centre or semi-axes, in percent of the larger radius."""
    r = max(a.radius, a.ry, 1e-9)
    return 100.0 * max(abs(a.cx - b.cx), abs(a.cy - b.cy), abs(a.radius - b.radius), abs(a.ry - b.ry)) / r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--size", type=int, default=448, help="output size the decode is reduced for")
    parser.add_argument(
        "--sizes", default="", help="comma-separated output sizes to compare, e.g. 64,160,448"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    paths = image_paths(args.paths)
    counts: collections.Counter[str] = collections.Counter()
    failures: list[tuple[Path, str]] = []
    worst = (0.0, "")
    over_1 = 0  # photographs whose field of view moves by more than 1 % of the radius between sizes
    start = time.perf_counter()
    for path in paths:
        try:
            fov = fov_of(path, args.size)
        except PreprocessError as e:
            counts["failed"] += 1
            failures.append((path, e.reason))
            continue
        counts[fov.method] += 1
        largest = 0.0
        for s in sizes:
            try:
                other = fov_of(path, s)
            except PreprocessError as e:
                failures.append((path, f"found at size {args.size} but not at size {s}: {e.reason}"))
                continue
            d = disagreement(fov, other)
            largest = max(largest, d)
            if d > worst[0]:
                worst = (d, f"{path.name} ({args.size} vs {s}: {fov.method} vs {other.method})")
        over_1 += largest > 1.0
    seconds = time.perf_counter() - start
    n = len(paths)
    print(f"{n} photographs in {', '.join(args.paths)} (decoded for output size {args.size})")
    for method in FOV_METHODS:
        print(f"  found by {method:8s}: {counts[method]}")
    print(f"  failed           : {counts['failed']}")
    print(f"failure rate: {counts['failed']}/{n} = {100.0 * counts['failed'] / max(n, 1):.2f} %")
    if sizes:
        print(
            f"largest disagreement between output sizes {sizes} and {args.size}: "
            f"{worst[0]:.2f} % of the radius" + (f", {worst[1]}" if worst[1] else "")
        )
        print(f"photographs whose field of view differs by over 1 % of the radius between sizes: {over_1}")
    print(f"time: {1000 * seconds / max(n, 1):.1f} ms per photograph")
    for path, reason in failures:
        print(f"FAILED {path}: {reason}")


if __name__ == "__main__":
    main()
