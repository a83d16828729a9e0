"""Benchmark: how quickly the `eyefuse` command answers, against Python's own start-up.

Each command is started as a fresh process (what a user or a script does), `--repeat` times,
interleaved, and the median wall time is printed beside two baselines measured in the same run:
`python -c pass` (the interpreter alone) and `eyefuse --help` (the interpreter + argparse + the CLI
module). Also timed, for reference: `python -c "import torch"`, the cost every command paid before
the CLI checked its inputs first and imported the heavy libraries only where they are used.

Targets (issue 11 item 7): `eyefuse models` under 5 s, a refused command line (an unknown option,
a missing file, a bad `--set` value) under 2 s.

Run: `.venv/bin/python benchmarks/bench_cli.py [--repeat 3]`. It prints the figures; it does not
assert (timings depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _eyefuse() -> list[str]:
    exe = Path(sys.executable).with_name("eyefuse")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "eyefuse"]


def _time(cmd: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    return time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command (median; default 3)")
    args = ap.parse_args()
    ef = _eyefuse()
    with tempfile.TemporaryDirectory() as tmp:
        missing = str(Path(tmp) / "missing")
        cases: dict[str, tuple[list[str], float | None]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], None),
            "eyefuse --help": ([*ef, "--help"], None),
            "eyefuse models": ([*ef, "models"], 5.0),
            "refused: unknown option": ([*ef, "train", "--bogus"], 2.0),
            "refused: missing --checkpoint": (
                [*ef, "predict", "--checkpoint", missing, "--left", "x.jpg"],
                2.0,
            ),
            "refused: missing --data": ([*ef, "train", "--data", missing, "--out", missing], 2.0),
            "refused: --set train.lr=-0.1": (
                [*ef, "train", "--data", tmp, "--out", missing, "--set", "train.lr=-0.1"],
                2.0,
            ),
            "refused: evaluate missing --run": ([*ef, "evaluate", "--run", missing, "--out", missing], 2.0),
            'reference: python -c "import torch"': ([sys.executable, "-c", "import torch"], None),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        codes: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, (cmd, _target) in cases.items():
                seconds, rc = _time(cmd)
                times[name].append(seconds)
                codes[name] = rc
    med = {k: statistics.median(v) for k, v in times.items()}
    base, help_ = med["python -c pass"], med["eyefuse --help"]
    print(f"median of {args.repeat} runs each, fresh processes, interleaved")
    print(f"{'command':<38} {'exit':>4} {'seconds':>8} {'x python':>9} {'x --help':>9}  target")
    for name, (_cmd, target) in cases.items():
        verdict = "" if target is None else f"< {target:g} s: {'met' if med[name] < target else 'NOT met'}"
        print(
            f"{name:<38} {codes[name]:>4} {med[name]:>8.2f} {med[name] / base:>9.1f} "
            f"{med[name] / help_:>9.1f}  {verdict}"
        )


if __name__ == "__main__":
    main()
