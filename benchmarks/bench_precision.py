"""Training speed on the CPU: float32 against bf16 autocast, for a preset's model, in the same run.

`train.amp=auto` trains in bf16 on a CPU that computes it natively (AMX tiles or AVX-512 BF16,
`eyefuse.train.setup.cpu_has_native_bf16`) and in float32 elsewhere. This script measures what that
choice buys on this machine: the preset's model alone (random 160 px batches, as
`bench_train.py --preset`), each precision in its own fresh process, alternating rounds, best of
each. The figure is bf16 eye images per second / float32 eye images per second, with and without
`channels_last`. Prints the figures and what `auto` resolves to here; asserts nothing.

    .venv/bin/python benchmarks/bench_precision.py [--preset demo] [--size 160] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train, when run from elsewhere
from bench_train import measure_preset
from eyefuse.train.setup import describe_precision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo", help="config preset or YAML whose model is timed")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch", type=int, default=16, help="patients per step (eye images = 2x)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    base = {
        "device": "cpu",
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "compile": False,
        "deterministic": True,
        "preset": args.preset,
        "set": [],
    }
    print(describe_precision("auto", torch.device("cpu")))
    print(
        f"preset {args.preset}'s model alone, CPU, {args.size} px, {args.batch} patients = "
        f"{2 * args.batch} eye images per step, {args.steps} timed steps after {args.warmup} warm-up, "
        f"best of {args.rounds} alternating rounds"
    )
    print(f"{'layout':<16} {'float32 img/s':>14} {'bf16 img/s':>11} {'bf16 / float32':>15}")
    fp32_plain = None
    for channels_last in (False, True):
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for amp in ("off", "bf16"):
                r = measure_preset({**base, "amp": amp, "channels_last": channels_last})
                if not r["finite"]:
                    print(f"warning: the last loss was not finite ({amp}, channels_last {channels_last})")
                best[amp] = max(best.get(amp, 0.0), r["images_per_s"])
        fp32_plain = fp32_plain or best["off"]
        layout = "channels_last" if channels_last else "contiguous"
        print(f"{layout:<16} {best['off']:>14.1f} {best['bf16']:>11.1f} {best['bf16'] / best['off']:>14.2f}x")
    print(f"(bf16 channels_last against float32 contiguous: {best['bf16'] / fp32_plain:.2f}x)")


if __name__ == "__main__":
    main()
