"""Pointing game of the Grad-CAM maps on synthetic lesions, against chance.

    .venv/bin/python benchmarks/bench_pointing.py --run demo/run --data demo/data [--split offsite]

For a run trained on `eyefuse synth` data (e.g. by `make demo`), prints per label the fraction of
lesion-bearing eyes whose Grad-CAM peak falls on that label's lesion (dilated by 2 % of the image
side), the chance rate of a random peak in the field of view, and their ratio; then the pooled row
over every label and over the labels whose chance rate is at most 0.5 (M's tessellation covers most
of the fundus, so a hit there says little). Asserts nothing.
"""

from __future__ import annotations

import argparse
import time

from eyefuse.workflows.pointing import pointing_game_study


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="demo/run", help="run or checkpoint folder (default demo/run)")
    p.add_argument("--data", default="demo/data", help="synthetic dataset with masks/ (default demo/data)")
    p.add_argument("--split", default="offsite")
    p.add_argument("--labels", default=None, help="comma-separated labels (default: all but N and C)")
    p.add_argument("--max-patients", type=int, default=None)
    p.add_argument(
        "--layer",
        default="all",
        choices=("all", "last", "previous"),
        help="Grad-CAM feature map: the backbone's last, the stage before it (finer), or both (default)",
    )
    args = p.parse_args()
    for layer in ("last", "previous") if args.layer == "all" else (args.layer,):
        t0 = time.perf_counter()
        result = pointing_game_study(
            args.run,
            args.data,
            split=args.split,
            labels=args.labels.split(",") if args.labels else None,
            max_patients=args.max_patients,
            layer=layer,
        )
        print(result)
        print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
