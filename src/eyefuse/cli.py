"""The `eyefuse` command: one subcommand per verb. Thin: each parses its options, checks what it can
check without the heavy libraries (paths exist, outputs are not inputs, the config is valid), then
imports its one library function (importing torch takes seconds, so a refused command line is
answered before it) and prints its summary.

Why the imports of this module sit inside the command functions (the one module allowed to do so,
see `tests/test_layers.py`): `eyefuse --help` and a refused command line must answer in a fraction
of a second (`benchmarks/bench_cli.py` measures it), and every library module imports torch.

Exit status, for scripts (README "Exit status"):
  0  everything asked for was done;
  1  some patients or images failed and were listed; everything else was written;
  2  bad input or usage: a wrong option, a missing file, a malformed file, an output that would
     replace an input, or nothing that could be used at all; one line on stderr, no traceback.
Errors a user can cause (`EyefuseError`, and file-system errors such as a read-only or full
folder) print that one line; anything else is a bug and keeps its traceback.

Over 500 lines on purpose: it is the parser of every subcommand with its options and help, and the
checks each makes before importing torch; one file is the one place a user's options are defined.
The choices it offers come from `eyefuse.registry`.
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from eyefuse import __version__
from eyefuse.errors import ConfigError, EyefuseError
from eyefuse.registry import ENHANCE, PROBLEM_IMAGES, describe_models, preset_names
from eyefuse.utils.optional import optional_import

Handler = Callable[[argparse.Namespace], int]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class _Formatter(argparse.HelpFormatter):
    """Shows every option's default in its help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or action.default == []
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


# --- checks that need no heavy import --------------------------------------------------------------


def _must_exist(path: str | os.PathLike[str] | None, option: str, kind: str = "any") -> None:
    """A path the user typed must exist (and be a file / folder when `kind` says so)."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{option} {p} does not exist")
    if kind == "file" and not p.is_file():
        raise ConfigError(f"{option} {p}: not a file")
    if kind == "dir" and not p.is_dir():
        raise ConfigError(f"{option} {p}: not a folder")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_overwrite(
    out: Path,
    inputs: Sequence[Path],
    *,
    option: str,
    overwrite: bool,
    ours: Callable[[Path], bool] = lambda _: False,
) -> None:
    """Refuse an output that is one of the inputs (always), or an existing file that this command
    did not write (`ours` recognises its own earlier outputs), unless `overwrite`."""
    resolved = Path(os.path.abspath(out))
    for src in inputs:
        if resolved == Path(os.path.abspath(src)) or _same(out, src):
            raise ConfigError(f"{option} {out} is an input of this command: it would be replaced")
    if out.is_dir():
        raise ConfigError(f"{option} {out} is a folder: give a file name")
    if out.exists() and not overwrite and not ours(out):
        raise ConfigError(
            f"{option} {out} exists and was not written by eyefuse: choose another name, or pass "
            "--overwrite to replace it"
        )


def _is_prediction_file(path: Path) -> bool:
    """An earlier output of `eyefuse predict` (JSON with model/summary/predictions, or an official
    CSV starting `ID,`): replacing it is what a rerun is for."""
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(doc, dict) and {"model", "summary", "predictions"} <= doc.keys()
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        return bool(header) and header[0] == "ID"
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _has_header(path: Path, header: Sequence[str]) -> bool:
    """True when `path` is a CSV whose first row is `header` (a list eyefuse wrote earlier)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), []) == list(header)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def _csv_image_paths(path: Path) -> list[Path]:
    """The image paths a predict CSV names (so `--out` cannot replace one); [] when unreadable
    (the reader then says why, with the row)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError):
        return []
    if not rows:
        return []
    header = [c.strip() for c in rows[0]]
    cols = [header.index(c) for c in ("left", "right") if c in header]
    return [path.parent / r[i].strip() for r in rows[1:] for i in cols if i < len(r) and r[i].strip()]


# --- data commands ---------------------------------------------------------------------------


def _add_preprocess_options(p: argparse.ArgumentParser, *, size: int | None = 448) -> None:
    p.add_argument("--size", type=int, default=size, help="output side in pixels")
    p.add_argument("--enhance", choices=ENHANCE.names, default="graham", help="detail enhancement")


def _preprocess_config(args: argparse.Namespace):
    from eyefuse.config import PreprocessConfig

    cfg = PreprocessConfig(size=args.size, enhance=args.enhance)
    cfg.validate()
    return cfg


def cmd_synth(args: argparse.Namespace) -> int:
    from eyefuse.data.synth import synthesize

    print(f"writing a synthetic dataset into {args.out} ...", flush=True)
    summary = synthesize(
        args.out,
        n_patients=args.patients,
        n_test=args.test_patients,
        seed=args.seed,
        max_side=args.max_side,
        mix=args.mix,
        progress=not args.no_progress,
    )
    print(summary)
    return EXIT_OK


def _preprocess_outputs_of_earlier_run(out: Path) -> set[str]:
    """PNG names an earlier `eyefuse preprocess` wrote into `out` (its fov.csv lists them)."""
    fov = out / "fov.csv"
    try:
        with open(fov, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    return {r["output"] for r in rows if r.get("output")}


def cmd_preprocess(args: argparse.Namespace) -> int:
    for image in args.images:
        _must_exist(image, "image")
    cfg = _preprocess_config(args)
    from eyefuse.data.preprocess_files import (
        FAILED_CSV_HEADER,
        FOV_CSV_HEADER,
        output_names,
        preprocess_files,
    )

    # The lists `eyefuse preprocess` writes beside the PNGs, by their headers (an earlier run's lists
    # may be replaced; a user's file of the same name may not).
    own_lists = {"fov.csv": FOV_CSV_HEADER, "failed.csv": FAILED_CSV_HEADER}

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a folder")
    earlier = _preprocess_outputs_of_earlier_run(out)
    unique = list(dict.fromkeys(Path(os.path.abspath(p)) for p in args.images))
    targets = [out / name for name in output_names(unique)] + [out / "fov.csv", out / "failed.csv"]
    for target in targets:
        _refuse_overwrite(
            target,
            args.images,
            option="--out: output",
            overwrite=args.overwrite,
            ours=lambda t: t.name in earlier or _has_header(t, own_lists.get(t.name, ())),
        )
    summary = preprocess_files(args.images, out, cfg)
    print(summary)
    if not summary.written:
        return EXIT_USAGE  # nothing could be used at all
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    _must_exist(args.data, "--data")
    cfg = _preprocess_config(args)
    from eyefuse.data.prepare import default_cache_dir, prepare_dataset
    from eyefuse.utils.io import writable_dir_problem

    cache = args.cache_dir or default_cache_dir(args.data)
    problem = writable_dir_problem(cache)
    if problem:
        raise ConfigError(
            f"cannot write the preprocessing cache {cache} ({problem}): choose a writable folder "
            "with --cache-dir DIR"
        )
    summary = prepare_dataset(
        args.data,
        cfg,
        cache_dir=args.cache_dir,
        workers=args.workers,
        problem_images=args.problem_images,
        progress=not args.no_progress,
    )
    print(summary)
    return EXIT_OK


def cmd_split(args: argparse.Namespace) -> int:
    _must_exist(args.data, "--data")
    from eyefuse.data.splits import fold_splits, split_dataset

    if args.folds is not None:
        clash = [
            o
            for o, v in (("--test-fraction", args.test_fraction), ("--train-fraction", args.train_fraction))
            if v is not None
        ]
        if clash:
            raise ConfigError(f"--folds makes the test parts itself: drop {' and '.join(clash)}")
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f"--out {args.out}: --folds writes fold1.csv ... into a folder, not a file")
        summaries = fold_splits(
            args.data,
            args.out,
            folds=args.folds,
            val_fraction=args.val_fraction,
            seed=args.seed,
            problem_images=args.problem_images,
        )
        for k, fold in enumerate(summaries, start=1):
            print(f"fold {k} of {len(summaries)}:\n{fold}")
        return EXIT_OK
    summary = split_dataset(
        args.data,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        problem_images=args.problem_images,
        test_fraction=args.test_fraction,
        train_fraction=1.0 if args.train_fraction is None else args.train_fraction,
    )
    print(summary)
    return EXIT_OK


# --- model and training commands ---------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    print(describe_models())  # the light registries: no torch, no timm
    return EXIT_OK


def _print_calibration(run_dir: Path) -> None:
    """The calibration fitted at the end of training, with its warnings (a temperature at its
    search bound, a class without validation positives), so that they are seen, not only stored."""
    from eyefuse.models.checkpoint import CheckpointMeta  # torch is loaded already: training ran

    try:
        meta = CheckpointMeta.read(run_dir / "best")
    except EyefuseError:
        return
    if meta.thresholds is not None:
        print(f"calibration: thresholds and temperatures fitted on the validation split ({run_dir / 'best'})")
    for w in meta.calibration_warnings:
        print(f"calibration warning: {w}")


def cmd_train(args: argparse.Namespace) -> int:
    from eyefuse.config import load_config, resume_config

    _must_exist(args.data, "--data")
    _must_exist(args.weights, "--weights", "file")
    _must_exist(args.split, "--split", "file")
    if args.resume:
        if args.config or args.out or args.weights or args.split:
            raise EyefuseError(
                "--resume RUN takes the run's own config, folder and split: "
                "drop --config/--out/--weights/--split"
            )
        cfg = resume_config(args.resume, args.set)
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
        if args.split:
            cfg.data.split_file = str(Path(args.split).resolve())
        if not cfg.data.root:
            raise ConfigError("no dataset: pass --data DIR (or set data.root)")
        _must_exist(cfg.data.root, "data.root")
        if cfg.data.split_file:
            _must_exist(cfg.data.split_file, "data.split_file", "file")
        run_dir = args.out
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--out {run_dir}: exists and is not a folder")
        if (run_dir / "last").exists():
            raise ConfigError(
                f"{run_dir} already holds a run: use --resume {run_dir}, or choose another --out"
            )
    from eyefuse.train.engine import fit

    result = fit(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one summary, from rank 0
        print(result)
        _print_calibration(Path(run_dir))
    return EXIT_OK


# --- evaluation commands -------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    _must_exist(args.predictions, "--predictions", "file")
    _must_exist(args.truth, "--truth", "file")
    from eyefuse.eval.score import format_score, score_files

    print(format_score(score_files(args.predictions, args.truth), as_json=args.json))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    _must_exist(args.run, "--run")
    _must_exist(args.data, "--data")
    from eyefuse.workflows.evaluate import run_evaluate

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
    return EXIT_OK


def cmd_ablate(args: argparse.Namespace) -> int:
    _must_exist(args.data, "--data")
    from eyefuse.workflows.ablation import run_ablation

    summary = run_ablation(
        args.data,
        args.grid,
        args.out,
        extra_set=args.set,
        progress=not args.no_progress,
        table_only=args.table_only,
        seeds=args.seeds,
    )
    print(summary)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from eyefuse.workflows.compare import run_compare

    names = tuple(n.strip() for n in args.names.split(","))
    if len(names) != 2:
        raise ConfigError(
            f"--names takes two names separated by a comma, like fused,single: got {args.names}"
        )
    summary = run_compare(args.a, args.b, names=names, n_boot=args.bootstrap, out=args.out)  # type: ignore[arg-type]
    print(summary)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from eyefuse.workflows.demo import run_demo

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
    return EXIT_OK


# --- inference commands --------------------------------------------------------------------------


def _check_checkpoint(path: str) -> None:
    _must_exist(path, "--checkpoint")


def cmd_predict(args: argparse.Namespace) -> int:
    _check_checkpoint(args.checkpoint)
    given = [
        n
        for n, v in (("--left/--right", args.left or args.right), ("--csv", args.csv), ("--dir", args.dir))
        if v
    ]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one input: --left L --right R, --csv FILE or --dir FOLDER"
            + (f" (got {', '.join(given)})" if given else "")
        )
    _must_exist(args.left, "--left", "file")
    _must_exist(args.right, "--right", "file")
    _must_exist(args.csv, "--csv", "file")
    _must_exist(args.dir, "--dir", "dir")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.out is not None:
        if args.out.suffix.lower() not in (".json", ".csv"):
            raise ConfigError(f"--out {args.out}: choose a .json or .csv file name")
        inputs = [p for p in (args.left, args.right, args.csv, Path(args.checkpoint)) if p is not None]
        if args.csv is not None:
            inputs += _csv_image_paths(args.csv)
        if args.dir is not None:
            inputs += [p for p in args.dir.iterdir() if p.is_file()]
        _refuse_overwrite(
            args.out, inputs, option="--out", overwrite=args.overwrite, ours=_is_prediction_file
        )
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
    counts = summary.counts
    if counts["predicted"] == 0:
        return EXIT_USAGE  # nothing could be predicted: no usable photograph at all
    unusable_eye = any(p.unusable_eyes for p in summary.predictions if not p.failed)
    return EXIT_PARTIAL if counts["failed"] or unusable_eye else EXIT_OK


def _step_line(line: str) -> None:
    """A line per step of a long command, shown at once."""
    print(line, flush=True)


def cmd_explain(args: argparse.Namespace) -> int:
    _check_checkpoint(args.checkpoint)
    if args.left is None and args.right is None:
        raise ConfigError("give --left and/or --right")
    _must_exist(args.left, "--left", "file")
    _must_exist(args.right, "--right", "file")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: not a folder")
    from eyefuse.serve.explain import run_explain

    summary = run_explain(
        args.checkpoint,
        args.left,
        args.right,
        args.out,
        args.labels,
        device=args.device,
        layer=args.layer,
        log=_step_line,
    )
    print(summary)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    _check_checkpoint(args.checkpoint)
    if args.out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {args.out}: choose a file name ending in .onnx")
    from eyefuse.serve.export import export_onnx

    print(export_onnx(args.checkpoint, args.out, opset=args.opset, check=not args.no_check, log=_step_line))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    _check_checkpoint(args.checkpoint)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {args.port}")
    for module in ("fastapi", "uvicorn", "python_multipart"):  # the `serve` extra, before the model
        optional_import(module, "serve")
    from eyefuse.serve.app import serve

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        max_concurrency=args.max_concurrency,
        device=args.device,
        queue_timeout_s=args.queue_timeout,
        allowed_hosts=args.allowed_hosts.split(",") if args.allowed_hosts else None,
    )
    return EXIT_OK


def _seed_list(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2] (argparse turns the ValueError into one usage line)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None


def _add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    """`--set KEY=VALUE`, repeatable: a config override (see `eyefuse.config.apply_override`)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eyefuse",
        description="Binocular multi-label fundus classification (ODIR-5K labels N D G C A H M O).",
        epilog="Exit status: 0 all done; 1 some patients or images failed (the rest written); "
        "2 bad input or usage (one line on stderr).",
    )
    parser.add_argument("--version", action="version", version=f"eyefuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func: Handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        p.set_defaults(func=func)
        return p

    p = add("synth", "write a synthetic ODIR-format dataset (challenge layout + off-site test)", cmd_synth)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--patients", type=int, default=300, help="training patients")
    p.add_argument(
        "--test-patients", type=int, default=None, help="off-site test patients (default patients/5)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the annotations and images")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("preprocess", "preprocess photographs to PNG (+ fov.csv, failed.csv)", cmd_preprocess)
    p.add_argument("images", nargs="+", type=Path, help="fundus photographs")
    p.add_argument("--out", type=Path, required=True, help="output folder (never one of the inputs' files)")
    _add_preprocess_options(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace files in --out that eyefuse did not write"
    )

    problem_help = "the 16 images whose background the hospital altered (exclude: those eyes are left out)"
    p = add("prepare", "preprocess a whole dataset once into the cache; check labels", cmd_prepare)
    p.add_argument(
        "--data", required=True, help="dataset folder or annotation file (format found automatically)"
    )
    _add_preprocess_options(p)
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache folder (default <data>/.eyefuse-cache; give one when the dataset folder is read-only)",
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default 0: all cores)")
    p.add_argument("--problem-images", choices=PROBLEM_IMAGES.names, default="exclude", help=problem_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(
        "split",
        "patient-level multi-label stratified split; writes patient_id,source,split "
        "(use it with `eyefuse train --split FILE`)",
        cmd_split,
    )
    p.add_argument("--data", required=True, help="dataset folder or annotation file")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="CSV to write: patient_id,source,split (with --folds: the folder for the fold files)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.15, help="share of the training pool for validation"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="share of the training pool held out as 'test' (default 0.15 when the dataset has no "
        "official test set; must be 0 when it has one, whose off-site/on-site sets are the tests)",
    )
    p.add_argument(
        "--train-fraction",
        type=float,
        default=None,
        help="share of the 'train' patients to keep, the rest marked 'unused' (for a learning curve: "
        "the same seed keeps the same validation and test patients; default 1)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        help="K-fold cross-validation: write K split files fold1.csv ... into the folder --out, each "
        "patient of the training pool a test patient in exactly one (default: one split)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the stratification")
    p.add_argument("--problem-images", choices=PROBLEM_IMAGES.names, default="exclude", help=problem_help)

    add("models", "list backbones, attention types, fusions, heads and config presets", cmd_models)

    p = add("train", "train a binocular model (resumable; torchrun for several GPUs)", cmd_train)
    p.add_argument("--data", help="dataset folder or annotation file (default: data.root of the config)")
    p.add_argument("--config", help=f"preset name ({', '.join(preset_names())}) or YAML file (default demo)")
    p.add_argument("--out", type=Path, help="run folder to create (required unless --resume)")
    p.add_argument(
        "--split",
        type=Path,
        help="split CSV written by `eyefuse split` (default: a new stratified split, saved in the run)",
    )
    _add_set_option(p, "override a config key, e.g. train.epochs=40 (repeatable; default: none)")
    p.add_argument(
        "--weights",
        help="local backbone weights (safetensors, or a torchvision/timm state dict; default: none)",
    )
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue a killed or finished run in RUN")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add(
        "evaluate", "evaluate a checkpoint on a split: metrics with CIs, report, submission", cmd_evaluate
    )
    p.add_argument("--run", required=True, help="run folder (uses its best checkpoint) or checkpoint folder")
    p.add_argument("--data", help="dataset (default: the one the run was trained on)")
    p.add_argument(
        "--split",
        default=None,
        help="split to evaluate: test, offsite, onsite, val, train, unused (default: offsite when the "
        "dataset has the official off-site test, else the run's test split)",
    )
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument(
        "--allow-same-split",
        action="store_true",
        help="allow evaluating the split the thresholds were fitted on (the report says so)",
    )
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: config, 1000)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add("ablate", "the paper's ablation study as one resumable command", cmd_ablate)
    p.add_argument("--data", required=True, help="dataset folder or annotation file")
    p.add_argument(
        "--grid",
        default="paper",
        help="'paper' (one factor at a time around the paper preset), 'real-study' (the same questions "
        "on real photographs from scratch, preset real-small) or a YAML file (default: paper)",
    )
    p.add_argument("--out", type=Path, required=True, help="ablation folder (rerun to resume)")
    _add_set_option(p, "override for every cell (default: none)")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: write the table from the seeds every cell has finished (a study in progress)",
    )
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="comma-separated training seeds replacing the grid's, e.g. 0,1,2 (default: the grid's)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add(
        "compare",
        "is A better than B? paired bootstrap of separately trained runs on the same patients",
        cmd_compare,
    )
    arm_help = (
        "arm {}: predictions.csv files or folders holding one (`eyefuse evaluate --out` report folders, "
        "ablation seed folders), one per training seed"
    )
    p.add_argument("--a", nargs="+", required=True, metavar="REPORT", help=arm_help.format("A"))
    p.add_argument("--b", nargs="+", required=True, metavar="REPORT", help=arm_help.format("B"))
    p.add_argument("--names", default="A,B", help="the two arms' names, comma-separated (default A,B)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for comparison.md and comparison.json (default: print only)",
    )

    p = add("demo", "synthesise, prepare, train, calibrate, evaluate and report, end to end", cmd_demo)
    p.add_argument("--out", type=Path, default=Path("demo"), help="demo folder (rerun resumes)")
    p.add_argument("--patients", type=int, default=400, help="synthetic training patients")
    p.add_argument("--test-patients", type=int, default=100, help="synthetic off-site test patients")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    p.add_argument(
        "--max-side", type=int, default=None, help="cap synthetic camera resolutions (pixels; default 768)"
    )
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
        help="training seeds per model for --compare-single (the comparison averages them)",
    )
    _add_set_option(p, "override the demo preset (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add("score", "the official ODIR-2019 score of a submission CSV against the truth", cmd_score)
    p.add_argument("--predictions", type=Path, required=True, help="submission CSV: ID,N,D,G,C,A,H,M,O")
    p.add_argument("--truth", type=Path, required=True, help="annotation xlsx/csv with ID and the 8 labels")
    p.add_argument("--json", action="store_true", help="print JSON (kappa, f1, auc, final)")

    ckpt_help = "run folder, checkpoint folder, or exported .onnx file"
    p = add("predict", "predict patients: one pair, a CSV of pairs, or a folder", cmd_predict)
    p.add_argument("--checkpoint", required=True, help=ckpt_help)
    p.add_argument("--left", type=Path, help="left-eye photograph (one patient; any format Pillow reads)")
    p.add_argument("--right", type=Path, help="right-eye photograph (one patient)")
    p.add_argument("--csv", type=Path, help="CSV with patient_id,left,right")
    p.add_argument(
        "--dir", type=Path, help="folder of {ID}_left.* / {ID}_right.* photographs (same formats as --left)"
    )
    p.add_argument(
        "--out", type=Path, help="output: .json (full) or .csv (official ID,N,...,O) (default: print a table)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out file that eyefuse did not write"
    )
    p.add_argument("--batch-size", type=int, default=8, help="patients per model call")
    p.add_argument("--device", default="cpu", help="cpu or cuda (PyTorch checkpoints)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("explain", "Grad-CAM per eye for the predicted (or chosen) labels", cmd_explain)
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
    p.add_argument("--device", default="cpu", help="cpu or cuda")

    p = add("export", "export a checkpoint to ONNX (+ JSON sidecar), checked against PyTorch", cmd_export)
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check (not advised)")

    p = add("serve", "web service + page: upload two photographs, see probabilities and heatmaps", cmd_serve)
    p.add_argument("--checkpoint", required=True, help=ckpt_help)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port to bind")
    p.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host header names the service answers, '*' for any (default: the names of "
        "the --host address, e.g. 127.0.0.1,localhost; guards against DNS rebinding)",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=20, help="request size limit (default 20 MB; 413 beyond)"
    )
    p.add_argument("--max-concurrency", type=int, default=2, help="model calls at once")
    p.add_argument("--queue-timeout", type=float, default=60, help="seconds a request may wait (503 after)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")

    return parser


def _os_error_line(e: OSError) -> str:
    """One line for a file-system error: the file and what the system said, with the likely fix."""
    where = e.filename if e.filename is not None else "a file"
    what = e.strerror or str(e)
    hint = ""
    if e.errno == errno.ENOSPC:
        hint = ": the disk is full; free space or write elsewhere"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = ": choose a folder you can write (--out, --cache-dir / data.cache_dir)"
    return f"{where}: {what}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EyefuseError as e:
        print(f"eyefuse {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"eyefuse {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:
        # A read-only or full folder, a file removed underneath: the user's to fix, not a bug.
        print(f"eyefuse {args.command}: error: {_os_error_line(e)}", file=sys.stderr)
        return EXIT_USAGE


__all__ = ["EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
