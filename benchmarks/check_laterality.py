"""Check: the laterality estimate (`eyefuse.data.laterality`) against the side in the file names.

For every `{ID}_{left|right}.{jpg,png,...}` photograph of FOLDER it preprocesses the photograph as
predict does (`preprocess_image` with the default settings, or `--size` / `--enhance`), estimates
the side from the image, and prints: how many were estimated, the accuracy of those estimates
(with a 95 % Wilson interval), how many abstained ("unknown"), and each wrong estimate with its
margin and disc position, so a person can look at them.

Run: `.venv/bin/python benchmarks/check_laterality.py FOLDER [--size 448] [--enhance graham]`.
It takes the folder as an argument and reads nothing else; it prints and does not assert.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from eyefuse.config import PreprocessConfig
from eyefuse.data.laterality import estimate_laterality
from eyefuse.data.preprocess import PreprocessError, preprocess_image

NAME = re.compile(r"^(?P<id>[^_]+)_(?P<side>left|right)\.(jpe?g|png|tiff?|bmp)$", re.IGNORECASE)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=PreprocessConfig().size)
    parser.add_argument("--enhance", default=PreprocessConfig().enhance)
    args = parser.parse_args()
    cfg = PreprocessConfig(size=args.size, enhance=args.enhance)
    paths = sorted(p for p in args.folder.iterdir() if NAME.match(p.name))
    correct = wrong = abstained = failed = 0
    wrongs: list[str] = []
    for path in paths:
        truth = NAME.match(path.name).group("side").lower()  # type: ignore[union-attr]
        try:
            img, _ = preprocess_image(path, cfg)
        except PreprocessError:
            failed += 1
            continue
        est = estimate_laterality(img)
        if est.side == "unknown":
            abstained += 1
        elif est.side == truth:
            correct += 1
        else:
            wrong += 1
            wrongs.append(
                f"WRONG {path.name}: estimated {est.side} (margin {est.margin:.1f}, "
                f"disc at x {est.disc_x:+.2f}, y {est.disc_y:+.2f} radii)"
            )
    decided = correct + wrong
    lo, hi = wilson(correct, decided)
    print(f"{len(paths)} photographs in {args.folder} (size {args.size}, {args.enhance})")
    print(
        f"estimated {decided}, correct {correct}: accuracy {100 * correct / max(decided, 1):.1f} % "
        f"(95 % CI {100 * lo:.1f}-{100 * hi:.1f})"
    )
    share = 100 * abstained / max(len(paths), 1)
    print(f"abstained (unknown) {abstained} = {share:.1f} %; not preprocessed {failed}")
    for line in wrongs:
        print(line)


if __name__ == "__main__":
    main()
