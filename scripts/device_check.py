"""The GPU check of eyefuse as one command (run by scripts/device_check.sh; see its header).

Steps, in order of importance, each in its own process with a timeout, skipped once the time budget
is spent (the table says so):

1. environment: GPU, driver, torch, CUDA/cuDNN versions;
2. tests that use the device: tests/test_bf16.py (bf16 autocast on the CPU) and the CUDA tests of
   tests/test_augment.py and tests/test_dataset.py;
3. `eyefuse train` of each preset for a few epochs on synthetic data, and for each run
   benchmarks/bench_train.py's model-only figure for the same model, size, batch, compile and
   determinism setting: the table gives the trainer's images/s in epoch 1 and in the later epochs,
   and the later epochs' share of the model-only figure (target >= 95 %);
4. bench_train.py for the paper model eager and compiled at 224 and 448 px;
5. with `--real DIR` (a Kaggle-layout dataset such as a 224-px copy of kaggle_512_dev): the paper
   preset trained on it (from scratch) with a held-out test part of the split, and `eyefuse
   evaluate` of that part;
6. with `--real DIR --study`: the paper's study on those photographs at full size, the `real-study`
   grid with the recipe's 13 epochs and 3 seeds (`eyefuse ablate --grid real-study --seeds 0,1,2
   --set train.epochs=13`), its table copied into the log and to WORK/real-study.md.

`--smoke` runs the same steps tiny (small backbone, 64 px, a few steps; compile and the GPU cache
only where CUDA is used) so that the script itself is checked without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """One `eyefuse train` run on synthetic data and its model-only comparison."""

    preset: str
    size: int
    batch: int
    compile: bool
    gpu_cache: bool
    deterministic: bool = True  # the config default
    extra: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return (
            f"{self.preset} {self.size}px b{self.batch} {'compiled' if self.compile else 'eager'} "
            f"{'gpu-cache' if self.gpu_cache else 'loader'}{'' if self.deterministic else ' nondet'}"
        )


# The two runs (paper 448 px eager with the GPU cache; strong 224 px compiled, which went to
# NaN), the DataLoader path, the demo preset, and the paper run without train.deterministic.
RUNS = [
    Run("paper", 448, 32, compile=False, gpu_cache=True),
    Run("strong", 224, 64, compile=True, gpu_cache=True),
    Run("paper", 448, 32, compile=False, gpu_cache=False, extra=["train.num_workers=12"]),
    Run("paper", 448, 32, compile=False, gpu_cache=True, deterministic=False),
    Run("demo", 160, 16, compile=True, gpu_cache=True),
    Run("demo", 160, 16, compile=False, gpu_cache=False, extra=["train.num_workers=8"]),
    Run("strong", 224, 64, compile=False, gpu_cache=True),
]


#: What the smoke mode adds to every training run: three steps an epoch, no worker processes.
SMOKE_SETS = ["train.max_steps_per_epoch=3", "train.num_workers=0", "eval.bootstrap=20"]


def train_command(data: Path, preset: str, out_dir: Path, sets: list[str]) -> list[str]:
    """The `eyefuse train` command line for one run of the check."""
    return [
        sys.executable,
        "-m",
        "eyefuse",
        "train",
        "--no-progress",
        "--data",
        str(data),
        "--config",
        preset,
        "--out",
        str(out_dir),
        *[x for s in sets for x in ("--set", s)],
    ]


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = (self.work / "device_check.log").open("a", encoding="utf-8")
        self.start = time.perf_counter()
        self.rows: list[tuple[str, str, str]] = []  # step, result, seconds
        self._bench: dict[tuple, float | None] = {}  # bench_train figures by setting
        self._trained: set[tuple] = set()  # train runs done, by effective setting
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        src = str(ROOT / "src")
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)

    # --- plumbing ------------------------------------------------------------------------------

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, step: str, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str] | None:
        """Run `cmd` (output to the log), or record the step as skipped when the budget is spent."""
        timeout = min(timeout, self.left())
        if timeout < 10:
            self.rows.append((step, "skipped: time budget spent", "-"))
            return None
        self.say(f"\n$ {' '.join(cmd)}")
        t0 = time.perf_counter()
        try:
            out = subprocess.run(
                cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as e:
            self.log.write(_text(e.stdout) + _text(e.stderr))
            self.rows.append((step, f"TIMEOUT after {timeout:.0f} s", f"{time.perf_counter() - t0:.0f}"))
            return None
        self.log.write(out.stdout + out.stderr)
        self.log.flush()
        out.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
        return out

    def fail_text(self, out: subprocess.CompletedProcess[str]) -> str:
        lines = [ln for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
        return f"FAIL (exit {out.returncode}): {lines[-1][:150] if lines else ''}"

    # --- steps ---------------------------------------------------------------------------------

    def environment(self) -> None:
        import torch

        if self.args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("device_check: --device cuda but torch sees no CUDA device")
        parts = [f"python {sys.version.split()[0]}", f"torch {torch.__version__}"]
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            parts += [
                f"GPU {p.name} ({p.total_memory / 2**30:.0f} GiB)",
                f"driver {driver or '?'}",
                f"CUDA {torch.version.cuda}",
                f"cuDNN {torch.backends.cudnn.version()}",
                f"bf16 {torch.cuda.is_bf16_supported()}",
            ]
        else:
            parts.append("no CUDA device")
        parts.append(f"{os.cpu_count()} CPU cores")
        self.say("environment: " + ", ".join(parts))
        self.rows.append(("environment", "; ".join(parts), "-"))

    def tests(self) -> None:
        files = ["tests/test_bf16.py", "tests/test_augment.py", "tests/test_dataset.py"]
        select = ["-k", "float32 or cuda"] if self.args.smoke else ["-k", "bf16 or float32 or cuda"]
        out = self.run(
            "tests",
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *select, *files],
            300,
        )
        if out is not None:
            last = [ln for ln in out.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
            result = last[0] if out.returncode == 0 else self.fail_text(out)
            self.rows.append(
                (f"tests ({', '.join(Path(f).name for f in files)})", result, f"{out.seconds:.0f}")
            )

    def synth(self) -> Path:
        root = self.work / f"synth{self.args.patients}"
        if not (root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx").is_file():
            cmd = [
                sys.executable,
                "-m",
                "eyefuse",
                "synth",
                "--out",
                str(root),
                "--patients",
                str(self.args.patients),
                "--max-side",
                str(self.args.max_side),
                "--seed",
                "0",
            ]
            out = self.run("synthetic data", cmd, 300)
            if out is None or out.returncode:
                raise SystemExit(f"device_check: could not synthesise data: {out and self.fail_text(out)}")
            self.rows.append((f"synthetic data ({self.args.patients} patients)", "ok", f"{out.seconds:.0f}"))
        return root

    def bench(
        self, preset: str, size: int, batch: int, compile: bool, deterministic: bool, channels_last: bool
    ) -> float | None:
        """bench_train.py's model-only eye images/s, cached per setting within this check."""
        key = (preset, size, batch, compile, deterministic, channels_last)
        if key in self._bench:
            return self._bench[key]
        a = self.args
        cmd = [
            sys.executable,
            "benchmarks/bench_train.py",
            "--device",
            a.device,
            "--size",
            str(size),
            "--batch",
            str(batch),
            "--steps",
            str(a.bench_steps),
            "--warmup",
            str(a.bench_warmup),
            "--rounds",
            "1",
            "--preset",
            preset,
            "--only-preset",
            *self.model_sets_args(),
        ]
        if a.device == "cuda":
            cmd += ["--amp", "bf16"]
        if compile:
            cmd.append("--compile")
        if deterministic:
            cmd.append("--deterministic")
        if channels_last:
            cmd.append("--channels-last")
        name = f"bench {preset} {size}px b{batch} {'compiled' if compile else 'eager'}"
        name += "" if deterministic else " nondet"
        out = self.run(name, cmd, 240)
        value = None
        if out is not None and out.returncode == 0:
            line = next(ln for ln in out.stdout.splitlines() if ln.startswith("preset "))
            value = float(line.split(": ")[1].split()[0])
            verdict = "" if "NOT FINITE" not in line else "; FAIL: last loss not finite"
            self.rows.append((name, f"{value:.1f} eye images/s (model alone){verdict}", f"{out.seconds:.0f}"))
        elif out is not None:
            self.rows.append((name, self.fail_text(out), f"{out.seconds:.0f}"))
        self._bench[key] = value
        return value

    def model_sets(self) -> list[str]:
        return ["model.backbone=resnet10t"] if self.args.smoke else []

    def model_sets_args(self) -> list[str]:
        return [a for s in self.model_sets() for a in ("--set", s)]

    def train(self, run: Run, data: Path) -> None:
        a = self.args
        cuda = a.device == "cuda"
        size, batch = (64, 4) if a.smoke else (run.size, run.batch)
        compile_, gpu_cache = run.compile and cuda, run.gpu_cache and cuda
        sets = [
            "model.pretrained=false",
            f"preprocess.size={size}",
            f"train.batch_size={batch}",
            f"train.compile={str(compile_).lower()}",
            f"train.gpu_cache={str(gpu_cache).lower()}",
            f"train.deterministic={str(run.deterministic).lower()}",
            f"train.epochs={a.epochs}",
            "train.early_stop_patience=0",
            f"train.device={a.device}",
            f"data.cache_dir={self.work / 'cache'}",
            *(["train.amp=bf16"] if cuda else []),
            *self.model_sets(),
            *run.extra,
        ]
        if a.smoke:
            sets += SMOKE_SETS
        # Runs that the smoke mode (or a CPU) makes identical are run once.
        key = (
            run.preset,
            size,
            batch,
            compile_,
            gpu_cache,
            run.deterministic,
            *([] if a.smoke else run.extra),
        )
        if key in self._trained:
            return
        self._trained.add(key)
        label = run.name if not a.smoke else f"{run.name} [smoke: {size}px b{batch}, eager, loader]"
        out_dir = self.work / "runs" / hashlib.sha256(label.encode()).hexdigest()[:10]
        out = self.run(f"train {label}", train_command(data, run.preset, out_dir, sets), 420)
        if out is None:
            return
        if out.returncode:
            self.rows.append((f"train {label}", self.fail_text(out), f"{out.seconds:.0f}"))
            return
        with (out_dir / "metrics.csv").open(newline="") as f:
            speeds = [float(r["train_images_per_s"]) for r in csv.DictReader(f)]
        later = sum(speeds[1:]) / len(speeds[1:]) if len(speeds) > 1 else float("nan")
        channels_last = cuda and run.preset != "demo"  # demo sets train.channels_last=false
        model_only = self.bench(run.preset, size, batch, compile_, run.deterministic, channels_last)
        share = (
            f"{100 * later / model_only:.0f} % of model-only {model_only:.1f}" if model_only else "no bench"
        )
        self.rows.append(
            (
                f"train {label}",
                f"img/s epoch 1 {speeds[0]:.1f}, later {later:.1f} ({share}); "
                f"epoch 1 / later {speeds[0] / later:.2f}",
                f"{out.seconds:.0f}",
            )
        )

    def real(self, data: Path) -> None:
        a = self.args
        cuda = a.device == "cuda"
        split = self.work / "real_split.csv"
        out = self.run(
            "real: split",
            [
                sys.executable,
                "-m",
                "eyefuse",
                "split",
                "--data",
                str(data),
                "--out",
                str(split),
                "--val-fraction",
                "0.2",
                "--seed",
                "0",
            ],
            120,
        )
        if out is None or out.returncode:
            self.rows.append(("real: split", self.fail_text(out) if out else "skipped", "-"))
            return
        held_out = hold_out_test(split, fraction=0.2)
        run_dir = self.work / "runs" / "real-paper"
        size = 64 if a.smoke else 224
        sets = [
            "model.pretrained=false",
            f"preprocess.size={size}",
            f"data.split_file={split}",
            f"data.cache_dir={self.work / 'cache-real'}",
            f"train.epochs={2 if a.smoke else a.real_epochs}",
            f"train.batch_size={4 if a.smoke else 32}",
            f"train.gpu_cache={str(cuda).lower()}",
            f"train.device={a.device}",
            "train.early_stop_patience=0",
            *self.model_sets(),
        ]
        if a.smoke:
            sets += SMOKE_SETS
        out = self.run("real: train paper", train_command(data, "paper", run_dir, sets), 400)
        if out is None:
            return
        if out.returncode:
            self.rows.append(("real: train paper", self.fail_text(out), f"{out.seconds:.0f}"))
            return
        last = [ln for ln in out.stdout.splitlines() if ln.startswith("best epoch")]
        self.rows.append(("real: train paper (from scratch)", "; ".join(last) or "ok", f"{out.seconds:.0f}"))
        report = self.work / "real_report"
        cmd = [
            sys.executable,
            "-m",
            "eyefuse",
            "evaluate",
            "--run",
            str(run_dir),
            "--split",
            "test",
            "--out",
            str(report),
            "--device",
            a.device,
            "--no-progress",
        ]
        if a.smoke:
            cmd += ["--bootstrap", "20"]
        out = self.run("real: evaluate test", cmd, 240)
        if out is None:
            return
        if out.returncode:
            self.rows.append(("real: evaluate held-out test", self.fail_text(out), f"{out.seconds:.0f}"))
            return
        self.say(out.stdout)
        keep = [
            ln.strip() for ln in out.stdout.splitlines() if "final" in ln.lower() or "auroc" in ln.lower()
        ]
        self.rows.append(
            (
                f"real: evaluate held-out test ({held_out} patients)",
                " | ".join(keep[:3]) or "ok",
                f"{out.seconds:.0f}",
            )
        )

    def study(self, data: Path) -> None:
        """The `real-study` grid at full size (13 epochs, 3 seeds) on the GPU; its table in the log."""
        a = self.args
        out_dir = self.work / "real-study"
        sets = [
            f"train.epochs={1 if a.smoke else 13}",
            f"train.device={a.device}",
            f"train.gpu_cache={str(a.device == 'cuda').lower()}",
            f"data.cache_dir={self.work / 'cache-study'}",
        ]
        if a.smoke:
            sets += [*SMOKE_SETS, "preprocess.size=64"]
        base = [sys.executable, "-m", "eyefuse", "ablate", "--data", str(data), "--grid", "real-study"]
        base += ["--out", str(out_dir), "--seeds", "0" if a.smoke else "0,1,2"]
        cmd = [*base, "--no-progress"]
        for item in sets:
            cmd += ["--set", item]
        out = self.run("real: study (real-study grid)", cmd, 560)
        if out is None and (out_dir / "split.csv").exists():  # timed out: tabulate the finished seeds
            out = self.run("real: study table (finished seeds)", [*base, "--table-only"], 120)
        if out is None:
            return
        table = out_dir / "ablation.md"
        if out.returncode or not table.exists():
            self.rows.append(("real: study", self.fail_text(out), f"{out.seconds:.0f}"))
            return
        text = table.read_text(encoding="utf-8")
        self.say(text)
        (self.work / "real-study.md").write_text(text, encoding="utf-8")
        cells = sum(1 for ln in text.splitlines() if ln.startswith("|")) - 2
        self.rows.append(
            ("real: study (real-study grid)", f"{cells} table rows, WORK/real-study.md", f"{out.seconds:.0f}")
        )

    def summary(self) -> None:
        width = max(len(r[0]) for r in self.rows)
        lines = [f"{'step':<{width}}  {'seconds':>7}  result", "-" * (width + 40)]
        lines += [f"{step:<{width}}  {sec:>7}  {result}" for step, result, sec in self.rows]
        lines.append(f"total {time.perf_counter() - self.start:.0f} s (budget {self.args.budget_s:.0f} s)")
        text = "\n".join(lines)
        self.say("\n" + text)
        (self.work / "summary.txt").write_text(text + "\n", encoding="utf-8")


def hold_out_test(split_file: Path, fraction: float) -> int:
    """Move about `fraction` of the split's train patients to `test` (chosen by a hash of the patient
    id, so the same every time): the part neither training nor calibration sees. Returns the number
    of test patients (with any the split already held out)."""
    with split_file.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    for row in rows:
        digest = int(hashlib.sha256(row["patient_id"].encode()).hexdigest()[:8], 16)
        if row["split"] == "train" and digest % 1000 < fraction * 1000:
            row["split"] = "test"
    with split_file.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return sum(row["split"] == "test" for row in rows)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="the same steps, tiny (checks this script)")
    p.add_argument("--real", help="a Kaggle-layout dataset folder to train and evaluate the paper preset on")
    p.add_argument("--work", default="/tmp/eyefuse-device-check", help="scratch folder (data, runs, log)")
    p.add_argument("--budget-s", type=float, default=450, help="skip the remaining steps after this long")
    p.add_argument("--patients", type=int, default=0, help="synthetic patients (default 640; smoke 24)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--real-epochs", type=int, default=8)
    p.add_argument(
        "--study", action="store_true", help="with --real: the real-study grid at full size, 3 seeds"
    )
    p.add_argument("--max-side", type=int, default=0, help="synthetic photo size (default 512; smoke 128)")
    args = p.parse_args()
    args.patients = args.patients or (24 if args.smoke else 640)
    args.max_side = args.max_side or (128 if args.smoke else 512)
    args.bench_steps, args.bench_warmup = (2, 1) if args.smoke else (20, 5)
    if args.smoke:
        args.epochs = min(args.epochs, 2)
    check = Check(args)
    try:
        check.environment()
        check.tests()
        data = check.synth()
        for run in RUNS:
            check.train(run, data)
        for size in (224, 448):
            for compiled in (False, True):
                check.bench(
                    "paper",
                    64 if args.smoke else size,
                    4 if args.smoke else 32,
                    compiled and args.device == "cuda",
                    True,
                    args.device == "cuda",
                )
        if args.real:
            check.real(Path(args.real))
            if args.study:
                check.study(Path(args.real))
    finally:
        check.summary()


if __name__ == "__main__":
    main()
