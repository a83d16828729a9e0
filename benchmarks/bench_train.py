"""Training throughput and peak memory: the paper's binocular model against plain ResNet-50.

Both are trained for a few steps on random 224 px batches, in the same run, each in its own fresh
process (so peak memory is the process's own): the paper model (ResNet-50 + residual attention in
the last stage, ffm fusion, softmax head) sees B patients = 2B eye images per step; the baseline is
timm's plain `resnet50` classifying one eye image at a time with batch 2B. The figure is the cost
per eye image: paper seconds-per-image / baseline seconds-per-image (target <= 1.15).

    .venv/bin/python benchmarks/bench_train.py                     # CPU, fp32
    .venv/bin/python benchmarks/bench_train.py --device cuda --amp bf16 --channels-last --compile

On CPU peak memory is the child process's maximum resident set size; on CUDA it is
`torch.cuda.max_memory_allocated`. Prints the figures; asserts nothing.

`--preset NAME` (with `--set KEY=VALUE` overrides) times that preset's model alone instead of the
paper/plain pair: the model-only figure that `eyefuse train`'s `train_images_per_s` is compared with
(scripts/device_check.sh). `--deterministic` applies the trainer's `train.deterministic` backend
settings (deterministic algorithms, no cuDNN autotuning); without it cuDNN autotunes, as the trainer
does with `train.deterministic=false`.

    .venv/bin/python benchmarks/bench_train.py --preset paper --size 448 --batch 32 \
        --device cuda --amp bf16 --channels-last --only-preset
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from typing import Any


def _worker(kind: str, args: dict[str, Any], queue: mp.Queue) -> None:
    import torch

    from eyefuse.config import ModelConfig, load_config
    from eyefuse.train.setup import seed_everything

    seed_everything(0, args["deterministic"])  # the trainer's backend settings
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    size, patients = args["size"], args["batch"]
    if kind == "preset":
        from eyefuse.models import build_model

        preset = load_config(args["preset"], ["model.pretrained=false", *args["set"]])
        model = build_model(preset.model)
        kind = "paper"  # two eyes per patient, as below
    elif kind == "paper":
        from eyefuse.models import build_model

        cfg = ModelConfig(
            backbone="resnet50",
            pretrained=False,
            attention="residual_attention",
            attention_placement="last",
            fusion="ffm",
            head="softmax",
        )
        model = build_model(cfg)
    else:
        import timm

        model = timm.create_model("resnet50", pretrained=False, num_classes=8)
    model.to(device).train()
    if args["channels_last"]:
        model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args["compile"] else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as eyefuse's trainer
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args["amp"])
    fmt = torch.channels_last if args["channels_last"] else torch.contiguous_format
    eyes = 2 * patients
    if kind == "paper":
        left = torch.randn(patients, 3, size, size, device=device).contiguous(memory_format=fmt)
        right = torch.randn(patients, 3, size, size, device=device).contiguous(memory_format=fmt)
        target = (torch.rand(patients, 8, device=device) > 0.7).float()
    else:
        images = torch.randn(eyes, 3, size, size, device=device).contiguous(memory_format=fmt)
        target = (torch.rand(eyes, 8, device=device) > 0.7).float()

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if kind == "paper":
                logits = step_model(left, right)["logits"]
            else:
                logits = step_model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args["warmup"]):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(args["steps"]):
        loss = step()
    sync()
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    finite = bool(torch.isfinite(loss))  # after the timing: a finite last loss, not a speed of NaNs
    queue.put(
        {"kind": kind, "images_per_s": eyes * args["steps"] / elapsed, "peak_mb": peak_mb, "finite": finite}
    )


def measure_preset(args: dict[str, Any]) -> dict[str, Any]:
    """Eye images per second of `args["preset"]`'s model alone (fresh process); see the module doc."""
    return measure("preset", args)


def measure(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(kind, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4, help="patients per step (eye images = 2x)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    p.add_argument("--deterministic", action="store_true", help="the trainer's train.deterministic=true")
    p.add_argument("--preset", help="also time this config preset's model (paper, strong, demo or a YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for --preset")
    p.add_argument("--only-preset", action="store_true", help="time only the --preset model")
    args = vars(p.parse_args())
    if args["preset"]:
        best = max((measure_preset(args) for _ in range(args["rounds"])), key=lambda r: r["images_per_s"])
        print(
            f"preset {args['preset']} {' '.join(args['set'])}: {best['images_per_s']:.1f} eye images/s, "
            f"peak {best['peak_mb']:.0f} MB, last loss {'finite' if best['finite'] else 'NOT FINITE'}"
        )
        if args["only_preset"]:
            return
    print(
        f"device {args['device']}, {args['size']} px, {args['batch']} patients = "
        f"{2 * args['batch']} eye images per step, {args['steps']} timed steps after "
        f"{args['warmup']} warm-up, amp {args['amp']}, "
        f"channels_last {args['channels_last']}, compile {args['compile']}, best of {args['rounds']} rounds"
    )
    # Alternate the two, each in a fresh process, and keep each one's best round: on a shared
    # machine the speed drifts between runs, and a fixed order would bias the ratio.
    rounds = [(measure("baseline", args), measure("paper", args)) for _ in range(args["rounds"])]
    base = max((r[0] for r in rounds), key=lambda r: r["images_per_s"])
    paper = max((r[1] for r in rounds), key=lambda r: r["images_per_s"])
    print(f"{'model':<44} {'eye images/s':>12} {'peak MB':>9}")
    for name, r in (
        ("plain timm resnet50, one eye at a time", base),
        ("paper model (2 eyes, attention, ffm fusion)", paper),
    ):
        print(f"{name:<44} {r['images_per_s']:>12.1f} {r['peak_mb']:>9.0f}")
    ratio = base["images_per_s"] / paper["images_per_s"]
    print(f"cost per eye image, paper / plain: {ratio:.3f}x (target <= 1.15)")
    print(f"peak memory, paper / plain: {paper['peak_mb'] / base['peak_mb']:.3f}x")


if __name__ == "__main__":
    main()
