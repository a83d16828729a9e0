"""The `eyefuse` command: one subcommand per verb. Thin: each parses its options, then calls one
library function and prints its summary. Errors a user can cause (`EyefuseError`) print one clear
message and exit with status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from eyefuse import __version__
from eyefuse.errors import EyefuseError

Handler = Callable[[argparse.Namespace], int]


def _add_preprocess_options(p: argparse.ArgumentParser, *, size: int | None = 448) -> None:
    p.add_argument("--size", type=int, default=size, help="output side in pixels (default %(default)s)")
    p.add_argument(
        "--enhance",
        choices=("graham", "clahe", "none"),
        default="graham",
        help="detail enhancement (default graham)",
    )


def _preprocess_config(args: argparse.Namespace):
    from eyefuse.config import PreprocessConfig

    cfg = PreprocessConfig(size=args.size, enhance=args.enhance)
    cfg.validate()
    return cfg


# --- data commands ---------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from eyefuse.data.synth import synthesize

    summary = synthesize(
        args.out,
        n_patients=args.patients,
        n_test=args.test_patients,
        seed=args.seed,
        max_side=args.max_side,
        mix=args.mix,
    )
    print(summary)
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from eyefuse.data.preprocess import preprocess_files

    summary = preprocess_files(args.images, args.out, _preprocess_config(args))
    print(summary)
    return 1 if summary.failed and not summary.written else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from eyefuse.data.prepare import prepare_dataset

    summary = prepare_dataset(
        args.data,
        _preprocess_config(args),
        cache_dir=args.cache_dir,
        workers=args.workers,
        problem_images=args.problem_images,
        progress=not args.no_progress,
    )
    print(summary)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from eyefuse.data.splits import split_dataset

    summary = split_dataset(
        args.data,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        problem_images=args.problem_images,
    )
    print(summary)
    return 0


# --- model and training commands ---------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from eyefuse.models import describe_models

    print(describe_models())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from eyefuse.config import load_config
    from eyefuse.train.engine import fit, prepare_resume

    if args.resume:
        if args.config or args.out or args.weights:
            raise EyefuseError(
                "--resume RUN takes the run's own config and folder: drop --config/--out/--weights"
            )
        cfg = prepare_resume(args.resume, args.set)
        if args.data:
            cfg.data.root = str(Path(args.data).resolve())
        run_dir = args.resume
    else:
        if not args.out:
            raise EyefuseError("--out RUN_DIR is required (or --resume RUN_DIR)")
        cfg = load_config(args.config or "demo", args.set)
        if args.data:
            cfg.data.root = str(Path(args.data).resolve())
        if args.weights:
            cfg.model.weights = str(Path(args.weights).resolve())
        run_dir = args.out
    result = fit(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one summary, from rank 0
        print(result)
    return 0


# --- evaluation commands -------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    from eyefuse.eval.score import format_score, score_files

    print(format_score(score_files(args.predictions, args.truth), as_json=args.json))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from eyefuse.eval.evaluate import run_evaluate

    summary = run_evaluate(
        args.run,
        split=args.split,
        out=args.out,
        data=args.data,
        allow_same_split=args.allow_same_split,
        n_boot=args.bootstrap,
        device=args.device,
        progress=not args.no_progress,
    )
    print(summary)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from eyefuse.eval.ablation import run_ablation

    summary = run_ablation(args.data, args.grid, args.out, extra_set=args.set, progress=not args.no_progress)
    print(summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eyefuse.demo import run_demo

    summary = run_demo(
        args.out,
        patients=args.patients,
        test_patients=args.test_patients,
        seed=args.seed,
        max_side=args.max_side,
        mix=args.mix,
        compare_single=args.compare_single,
        seeds=args.seeds,
        overrides=args.set,
        progress=not args.no_progress,
    )
    print(summary)
    return 0


# --- inference commands --------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    from eyefuse.serve.predict import run_predict

    summary = run_predict(
        args.checkpoint,
        left=args.left,
        right=args.right,
        csv=args.csv,
        directory=args.dir,
        out=args.out,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        device=args.device,
    )
    print(summary)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from eyefuse.serve.explain import run_explain

    summary = run_explain(
        args.checkpoint, args.left, args.right, args.out, args.labels, device=args.device, layer=args.layer
    )
    print(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from eyefuse.serve.export import export_onnx

    print(export_onnx(args.checkpoint, args.out, opset=args.opset, check=not args.no_check))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from eyefuse.serve.app import serve

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        max_concurrency=args.max_concurrency,
        device=args.device,
        queue_timeout_s=args.queue_timeout,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eyefuse",
        description="Binocular multi-label fundus classification (ODIR-5K labels N D G C A H M O).",
    )
    parser.add_argument("--version", action="version", version=f"eyefuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "synth", help="write a synthetic ODIR-format dataset (challenge layout + off-site test)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--patients", type=int, default=300, help="training patients (default %(default)s)")
    p.add_argument(
        "--test-patients", type=int, default=None, help="off-site test patients (default patients/5)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="cap camera resolutions at this many pixels (default 768; 0 = full camera resolution)",
    )
    p.add_argument(
        "--mix",
        choices=("odir", "balanced"),
        default="odir",
        help="first diagnoses in ODIR-5K's proportions (default) or with the five rare labels twice as often",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("preprocess", help="preprocess photographs to PNG (+ fov.csv)")
    p.add_argument("images", nargs="+", type=Path, help="fundus photographs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_preprocess_options(p)
    p.set_defaults(func=cmd_preprocess)

    problem_help = "the 16 images whose background the hospital altered: exclude (default) or keep"
    p = sub.add_parser("prepare", help="preprocess a whole dataset once into the cache; check labels")
    p.add_argument(
        "--data", required=True, help="dataset folder or annotation file (format found automatically)"
    )
    _add_preprocess_options(p)
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="cache folder (default <data>/.eyefuse-cache)"
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--problem-images", choices=("exclude", "keep"), default="exclude", help=problem_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("split", help="patient-level multi-label stratified train/val split")
    p.add_argument("--data", required=True, help="dataset folder or annotation file")
    p.add_argument("--out", type=Path, required=True, help="CSV to write (patient_id,split)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--problem-images", choices=("exclude", "keep"), default="exclude", help=problem_help)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("models", help="list backbones, attention types, fusions, heads and config presets")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a binocular model (resumable; torchrun for several GPUs)")
    p.add_argument("--data", help="dataset folder or annotation file")
    p.add_argument("--config", help="preset name (paper, strong, demo) or YAML file (default demo)")
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. train.epochs=40",
    )
    p.add_argument("--weights", help="local backbone weights (safetensors, or a torchvision/timm state dict)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue a killed or finished run in RUN")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="evaluate a checkpoint on a split: metrics with CIs, report, submission"
    )
    p.add_argument("--run", required=True, help="run folder (uses its best checkpoint) or checkpoint folder")
    p.add_argument("--data", help="dataset (default: the one the run was trained on)")
    p.add_argument(
        "--split", default="test", help="split to evaluate: test, offsite, onsite, val (default test)"
    )
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument(
        "--allow-same-split",
        action="store_true",
        help="allow evaluating the split the thresholds were fitted on (the report says so)",
    )
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: config, 1000)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ablate", help="the paper's ablation study as one resumable command")
    p.add_argument("--data", required=True, help="dataset folder or annotation file")
    p.add_argument(
        "--grid", default="paper", help="'paper' (one factor at a time around the paper preset) or YAML"
    )
    p.add_argument("--out", type=Path, required=True, help="ablation folder (rerun to resume)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every cell")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("demo", help="synthesise, prepare, train, calibrate, evaluate and report, end to end")
    p.add_argument(
        "--out", type=Path, default=Path("demo"), help="demo folder (default demo/; rerun resumes)"
    )
    p.add_argument("--patients", type=int, default=400, help="synthetic training patients (default 400)")
    p.add_argument("--test-patients", type=int, default=100, help="synthetic off-site test patients (100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=None, help="cap synthetic camera resolutions (pixels)")
    p.add_argument(
        "--mix",
        choices=("odir", "balanced"),
        default="balanced",
        help="label mix of the synthetic patients (default balanced: enough of every label to learn)",
    )
    p.add_argument(
        "--compare-single", action="store_true", help="also train the no-fusion baseline and compare"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="training seeds per model for --compare-single (default 3; the comparison averages them)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the demo preset")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("score", help="the official ODIR-2019 score of a submission CSV against the truth")
    p.add_argument("--predictions", type=Path, required=True, help="submission CSV: ID,N,D,G,C,A,H,M,O")
    p.add_argument("--truth", type=Path, required=True, help="annotation xlsx/csv with ID and the 8 labels")
    p.add_argument("--json", action="store_true", help="print JSON (kappa, f1, auc, final)")
    p.set_defaults(func=cmd_score)

    ckpt_help = "run folder, checkpoint folder, or exported .onnx file"
    p = sub.add_parser("predict", help="predict patients: one pair, a CSV of pairs, or a folder")
    p.add_argument("--checkpoint", required=True, help=ckpt_help)
    p.add_argument("--left", type=Path, help="left-eye photograph (one patient)")
    p.add_argument("--right", type=Path, help="right-eye photograph (one patient)")
    p.add_argument("--csv", type=Path, help="CSV with patient_id,left,right")
    p.add_argument("--dir", type=Path, help="folder of {ID}_left.* / {ID}_right.* photographs")
    p.add_argument("--out", type=Path, help="output: .json (full) or .csv (official ID,N,...,O)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu or cuda (PyTorch checkpoints)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Grad-CAM per eye for the predicted (or chosen) labels")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder (PyTorch)")
    p.add_argument("--left", type=Path, help="left-eye photograph")
    p.add_argument("--right", type=Path, help="right-eye photograph")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs and explanation.json")
    p.add_argument("--labels", help="comma-separated labels to explain (default: those predicted positive)")
    p.add_argument(
        "--layer",
        choices=("last", "previous"),
        default="last",
        help="Grad-CAM on the backbone's last feature map (default) or the stage before it (twice as fine)",
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (+ JSON sidecar), checked against PyTorch")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check (not advised)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve", help="web service + page: upload two photographs, see probabilities and heatmaps"
    )
    p.add_argument("--checkpoint", required=True, help=ckpt_help)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-upload-mb", type=float, default=20, help="request size limit (default 20 MB; 413 beyond)"
    )
    p.add_argument("--max-concurrency", type=int, default=2, help="model calls at once (default 2)")
    p.add_argument("--queue-timeout", type=float, default=60, help="seconds a request may wait (503 after)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_serve)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EyefuseError as e:
        print(f"eyefuse {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eyefuse {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
