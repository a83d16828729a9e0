"""Benchmark: latency of one patient (two ODIR-sized JPEGs -> 8 probabilities) on the CPU.

The paper's model (ResNet-50 + residual attention in the last stage + ffm fusion + softmax head,
random weights, ``pretrained=False``) at 224 px with the Graham filter, three ways, in the same run:

(a) eyefuse with ONNX Runtime: `Predictor` on an `.onnx` export of a temporary checkpoint;
(b) eyefuse with PyTorch: `Predictor` on that checkpoint;
(c) the naive path of public ODIR code: full-size Pillow decode, bounding box of the non-black
    pixels with `np.where`, Lanczos resize, Graham filter (`naive_preprocess` of
    `bench_preprocess.py`), then an eager model call per eye (batch 1, no batching of the two eyes)
    under `torch.no_grad()` (not `inference_mode`), fusion and head.

Both eyefuse paths decode at a reduced JPEG scale, fit the field of view at a small working
resolution and run both eyes through the model as one batch. The photographs are generated here
(`make_photograph` of `bench_preprocess.py`, 2592x1728, JPEG quality 95) in a temporary folder.

Run: `.venv/bin/python benchmarks/bench_infer.py [--repeat 10] [--threads N]`. Every path uses the
same number of threads (torch intra-op, ONNX Runtime intra-op and OpenCV; default: all cores). It
prints medians and ratios (target: (a) at least 3x faster than (c)); it does not assert.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_preprocess, when run from elsewhere
from bench_preprocess import make_photograph, naive_preprocess
from eyefuse import ODIR_LABELS
from eyefuse.config import load_config
from eyefuse.models import build_model
from eyefuse.serve.predict import Predictor
from eyefuse.train.checkpoint import checkpoint_meta, save_checkpoint

ODIR_SIZE = (2592, 1728)
INPUT_SIZE = 224


def make_checkpoint(folder: Path, size: int) -> Path:
    """The paper model (random weights) at `size` px, saved as a checkpoint folder."""
    cfg = load_config("paper")
    cfg.preprocess.size = size
    cfg.model.pretrained = False
    torch.manual_seed(0)
    model = build_model(cfg.model, ODIR_LABELS, load_weights=False)
    return save_checkpoint(folder, model.state_dict(), checkpoint_meta(cfg, ODIR_LABELS, model))


def onnx_predictor(path: Path, threads: int) -> Predictor:
    """A `Predictor` on an ONNX file whose session uses `threads` intra-op threads."""
    import onnxruntime as ort

    predictor = Predictor.from_checkpoint(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    predictor.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return predictor


def naive_predict(model: torch.nn.Module, left: Path, right: Path, size: int) -> np.ndarray:
    """The baseline: naive preprocessing, then the backbone on each eye separately, eagerly."""
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    features = []
    with torch.no_grad():
        for path in (left, right):
            img = naive_preprocess(path, size=size)
            x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None].float() / 255.0
            features.append(model.backbone((x - mean) / std))
        logits = model.forward_head(model.fusion(features[0], features[1]))
        return model.probabilities(logits)[0].numpy()


def time_all(paths: dict[str, Callable[[], object]], repeat: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each path, interleaved call by call so that a change in machine load
    hits all paths alike."""
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeat):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per path (the median is kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per path first")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads for every path (default: all cores)"
    )
    parser.add_argument("--size", type=int, default=INPUT_SIZE, help="model input size in px")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeat < 1 or args.threads < 1 or args.warmup < 0:
        parser.error("--repeat and --threads must be at least 1, --warmup at least 0")

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="eyefuse-bench-infer-") as tmp:
        root = Path(tmp)
        eyes = []
        for side in ("left", "right"):
            path = root / f"1_{side}.jpg"
            Image.fromarray(make_photograph(*ODIR_SIZE, rng)).save(path, quality=95)
            eyes.append(path)
        ckpt = make_checkpoint(root / "run" / "best", args.size)
        from eyefuse.serve.export import export_onnx

        print("exporting the model to ONNX (checked against PyTorch) ...", flush=True)
        export_onnx(ckpt, root / "model.onnx")
        ort_predictor = onnx_predictor(root / "model.onnx", args.threads)
        torch_predictor = Predictor.from_checkpoint(ckpt)
        naive_model = torch_predictor.model  # the same weights, called the naive way
        assert naive_model is not None
        patient = [("1", eyes[0], eyes[1])]

        def ours(predictor: Predictor) -> np.ndarray:
            (pred,) = predictor.predict_pairs(patient)
            return np.array([pred.probabilities[k] for k in ODIR_LABELS])

        paths: dict[str, Callable[[], object]] = {
            "(a) eyefuse, ONNX Runtime": lambda: ours(ort_predictor),
            "(b) eyefuse, PyTorch": lambda: ours(torch_predictor),
            "(c) naive": lambda: naive_predict(naive_model, eyes[0], eyes[1], args.size),
        }
        # Where the time goes: the preprocessing of both eyes alone, each way.
        parts: dict[str, Callable[[], object]] = {
            "eyefuse preprocessing": lambda: torch_predictor.prepare_pair("1", eyes[0], eyes[1]),
            "naive preprocessing": lambda: [naive_preprocess(p, size=args.size) for p in eyes],
        }
        results = {name: fn() for name, fn in paths.items()}
        times = time_all({**paths, **parts}, args.repeat, args.warmup)
        file_kb = [p.stat().st_size / 1024 for p in eyes]

    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    naive_ms = medians["(c) naive"]
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"one patient: two {ODIR_SIZE[0]}x{ODIR_SIZE[1]} JPEGs (quality 95, {file_kb[0]:.0f} and "
        f"{file_kb[1]:.0f} KB) -> probabilities; paper model (resnet50 + residual attention + ffm + "
        f"softmax, random weights) at {args.size} px, graham"
    )
    print(
        f"CPU ({cpu}, {os.cpu_count()} logical cores, load average {load:.1f} at the end); {args.threads} "
        f"thread(s) for torch, ONNX Runtime and OpenCV; torch {torch.__version__}; median of {args.repeat} "
        f"after {args.warmup} warm-up call(s)"
    )
    print(f"{'path':<28} {'median ms':>10} {'min ms':>8} {'vs naive':>9}")
    for name in paths:
        t = times[name]
        print(f"{name:<28} {medians[name]:>10.1f} {min(t) * 1e3:>8.1f} {naive_ms / medians[name]:>8.2f}x")
    print(
        f"(a) vs (c): {naive_ms / medians['(a) eyefuse, ONNX Runtime']:.2f}x faster (target >= 3x); "
        f"(a) vs (b): {medians['(b) eyefuse, PyTorch'] / medians['(a) eyefuse, ONNX Runtime']:.2f}x"
    )
    ours_pre, naive_pre = (statistics.median(times[name]) * 1e3 for name in parts)
    ort_ms = medians["(a) eyefuse, ONNX Runtime"]
    print(
        f"of which preprocessing both eyes: eyefuse {ours_pre:.1f} ms, naive {naive_pre:.1f} ms "
        f"({naive_pre / ours_pre:.1f}x); the rest (model, batching): (a) {ort_ms - ours_pre:.1f} ms, "
        f"(c) {naive_ms - naive_pre:.1f} ms"
    )
    diff = np.abs(results["(a) eyefuse, ONNX Runtime"] - results["(b) eyefuse, PyTorch"]).max()
    print(
        f"max |(a) - (b)| probability difference: {diff:.2e} (same preprocessing; (c) differs by its "
        "preprocessing, not compared)"
    )


if __name__ == "__main__":
    main()
