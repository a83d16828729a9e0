"""`eyefuse ablate`: the paper's ablation study (attention, fusion, preprocessing, head) as one
resumable command.

Every cell trains with the same split file and the same seeds, then is evaluated on the same test
patients. The study's split is `data.split_file` when the grid's `set` (or `--set`) names one, else
one made by `eyefuse split`'s rule; either is kept as `split.csv` in the study folder and cannot change
on a resumed run. A factor `data.split_file` gives its cells their own split (a learning curve:
`eyefuse split --train-fraction`), which must hold the same evaluated patients. A finished cell
leaves `result.json` and is skipped on a rerun; a cell that was killed resumes from its `last`
checkpoint. The table compares every cell with the reference cell with
`eyefuse.eval.compare.paired_comparison`: a paired bootstrap over the same test patients for both
cells (much tighter than comparing two independent confidence intervals), averaged over the seeds of
each cell with the seeds resampled too, and a verdict "better", "worse" or "not distinguishable" from
the 95 % interval. List several seeds (`seeds: [0, 1, 2]`) so that seed-to-seed noise is measured.

A grid is YAML (or the built-in `paper`):

```yaml
base: paper                 # preset name or config file every cell starts from
set: [train.epochs=20]      # overrides for every cell
mode: one_at_a_time         # one_at_a_time (vary one factor from the reference) | full (all combinations)
factors:                    # config key -> values; the reference cell uses the base config's values
  model.attention: [none, se, cbam, residual_attention]
  model.fusion: [single, concat, ffm, cross_attention]
seeds: [0, 1, 2]            # training seeds per cell (one seed cannot measure seed-to-seed noise)
split: auto                 # evaluated split: auto = offsite when the dataset has it, else test
bootstrap: 1000
folds: 5                    # optional: K-fold cross-validation instead of one split (see below)
```

With `folds: K` every cell and seed trains K times, once per fold of `eyefuse split --folds K`'s
rule (the files are kept in the study's `folds/`), and is scored on the K folds' test parts
together: every patient of the training pool is a test patient once, so the paired comparison rests
on all of them instead of one held-out part, at K times the training. A split file (`set` or a
factor) cannot be combined with folds.

Grids shipped with the project (`eyefuse ablate --grid NAME`): `paper` (built in) and the YAML files in
`eyefuse/configs/grids/` (`real-study`: the paper's four questions on real photographs from scratch).
Cells run seed by seed (every cell's seed 0, then every cell's seed 1, ...), so a study stopped
part-way already holds complete seeds; `table_only=True` (`--table-only`) writes the table from the
seeds every cell has finished.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from eyefuse.config import load_config, parse_yaml
from eyefuse.data.odir import load_dataset
from eyefuse.data.splits import fold_file, fold_splits, split_dataset
from eyefuse.errors import ConfigError
from eyefuse.eval.compare import (
    arm_figures,
    bootstrap_samples,
    official_final,
    paired_comparison,
    ranking_macro_auroc,
)
from eyefuse.eval.metrics import macro_auroc, official_score
from eyefuse.eval.predictions import FILE_NAME as PREDICTIONS
from eyefuse.eval.predictions import read_predictions, write_predictions
from eyefuse.train.engine import fit
from eyefuse.utils.io import atomic_write_json, atomic_write_text
from eyefuse.workflows.evaluate import predict_split

PAPER_GRID: dict[str, Any] = {
    "base": "paper",
    "set": [],
    "mode": "one_at_a_time",
    "factors": {
        "model.attention": ["none", "se", "cbam", "residual_attention"],
        "model.fusion": ["single", "concat", "ffm", "cross_attention"],
        "preprocess.enhance": ["none", "graham", "clahe"],
        "model.head": ["softmax", "sigmoid"],
    },
    "seeds": [0, 1, 2],
    "split": "auto",
    "bootstrap": 1000,
}
GRID_KEYS = {"base", "set", "mode", "factors", "seeds", "split", "bootstrap", "folds"}


@dataclass
class Cell:
    """One configuration of the study: its name and the overrides that make it."""

    name: str
    overrides: dict[str, Any]
    reference: bool = False

    def set_args(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.overrides.items()]


def grid_names() -> list[str]:
    """Names `--grid` accepts besides a file: `paper` and the grids shipped in configs/grids."""
    folder = resources.files("eyefuse").joinpath("configs", "grids")
    shipped = (
        sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []
    )
    return ["paper", *shipped]


def load_grid(grid: str) -> dict[str, Any]:
    """The built-in `paper` grid, a grid shipped with the project (by name) or a YAML file, validated."""
    if grid == "paper":
        spec = json.loads(json.dumps(PAPER_GRID))
    else:
        path = Path(grid)
        if not path.is_file() and grid in grid_names():
            path = Path(str(resources.files("eyefuse").joinpath("configs", "grids", f"{grid}.yaml")))
        if not path.is_file():
            raise ConfigError(
                f"--grid {grid!r}: neither a shipped grid ({', '.join(grid_names())}) "
                "nor an existing YAML file"
            )
        try:
            spec = parse_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--grid {path}: invalid YAML: {e}") from e
        if not isinstance(spec, dict):
            raise ConfigError(f"--grid {path}: top level must be a mapping")
        unknown = set(spec) - GRID_KEYS
        if unknown:
            raise ConfigError(f"--grid {path}: unknown keys {sorted(unknown)} (allowed: {sorted(GRID_KEYS)})")
        spec = {**{k: v for k, v in PAPER_GRID.items() if k != "factors"}, "factors": {}, **spec}
    if not isinstance(spec["factors"], dict) or not spec["factors"]:
        raise ConfigError(f"--grid {grid}: 'factors' must map config keys to lists of values")
    for key, values in spec["factors"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {grid}: factor {key!r} needs a non-empty list of values")
    if spec["mode"] not in ("one_at_a_time", "full"):
        raise ConfigError(f"--grid {grid}: mode must be one_at_a_time or full, not {spec['mode']!r}")
    if not isinstance(spec["seeds"], list) or not all(isinstance(s, int) for s in spec["seeds"]):
        raise ConfigError(f"--grid {grid}: seeds must be a list of integers")
    folds = spec.get("folds")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ConfigError(
            f"--grid {grid}: folds must be an integer of at least 2 (or left out), not {folds!r}"
        )
    return spec


def grid_cells(spec: dict[str, Any]) -> list[Cell]:
    """The cells of a grid; the first is the reference (the base config as it is)."""
    base = load_config(spec["base"], list(spec.get("set") or []))
    ref_values = {key: _get(base, key) for key in spec["factors"]}
    cells = [Cell("reference", {}, reference=True)]
    if spec["mode"] == "one_at_a_time":
        for key, values in spec["factors"].items():
            for v in values:
                if v != ref_values[key]:
                    cells.append(Cell(f"{key.split('.')[-1]}={_shown(v)}", {key: v}))
    else:
        keys = list(spec["factors"])
        for combo in itertools.product(*(spec["factors"][k] for k in keys)):
            overrides = {k: v for k, v in zip(keys, combo, strict=True) if v != ref_values[k]}
            if overrides:
                cells.append(
                    Cell(",".join(f"{k.split('.')[-1]}={_shown(v)}" for k, v in overrides.items()), overrides)
                )
    names = [c.name for c in cells]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"grid cells would share the folder name(s) {', '.join(twice)}: rename the files")
    for cell in cells:  # every cell must be a valid config before anything trains
        load_config(spec["base"], [*list(spec.get("set") or []), *cell.set_args()])
        own_split = cell.overrides.get(SPLIT_KEY)
        if own_split is not None and not Path(str(own_split)).is_file():
            raise ConfigError(f"grid cell {cell.name}: {SPLIT_KEY} {own_split} does not exist")
    return cells


#: The config key of a split file: the study's in `set`, a cell's own as a factor.
SPLIT_KEY = "data.split_file"


def _shown(value: Any) -> str:
    """A factor value as a cell's folder name shows it: a path by its file name."""
    text = str(value)
    return Path(text).name if "/" in text or os.sep in text else text


def _get(cfg: Any, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"grid factor {key!r}: unknown config key")
        obj = getattr(obj, part)
    return obj


@dataclass
class AblationSummary:
    table_md: Path
    table_csv: Path
    trained: int
    skipped: int
    markdown: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.markdown}\n"
            f"cells trained now: {self.trained}, already finished and skipped: {self.skipped}\n"
            f"table: {self.table_md}  {self.table_csv}"
        )


def run_ablation(
    data: str | os.PathLike[str],
    grid: str,
    out: str | os.PathLike[str],
    *,
    extra_set: list[str] | None = None,
    progress: bool = True,
    table_only: bool = False,
    seeds: list[int] | None = None,
) -> AblationSummary:
    """Train and evaluate every cell of `grid` under `out` (resumable), then write the table.

    With `table_only`, nothing trains: the table covers the seeds that every cell has finished.
    `seeds` replaces the grid's seeds (e.g. 3 seeds at full size where a GPU is at hand)."""
    out = Path(out)
    spec = load_grid(grid)
    spec["set"] = [*list(spec.get("set") or []), *(extra_set or [])]
    if seeds is not None:
        if not seeds:
            raise ConfigError("--seeds: give at least one seed")
        spec["seeds"] = list(seeds)
    cells = grid_cells(spec)
    base = load_config(spec["base"], spec["set"])
    folds = int(spec.get("folds") or 0)
    split_file = out / "split.csv"
    if table_only and not (split_file.is_file() or fold_file(out / FOLDS, 1).is_file()):
        raise ConfigError(f"{out}: no ablation study here yet (no split.csv); no seed has finished")
    given = Path(base.data.split_file) if base.data.split_file else None
    if folds:
        split = _fold_study(data, out, spec, cells, base, folds, given)
    elif given is not None:
        if not given.is_file():
            raise ConfigError(f"{SPLIT_KEY} {given} does not exist")
        text = given.read_text(encoding="utf-8")
        if not split_file.is_file():
            atomic_write_text(split_file, text)
        elif split_file.read_text(encoding="utf-8") != text:
            raise ConfigError(
                f"{SPLIT_KEY} {given} differs from this study's split {split_file}: a study keeps its "
                "split (start a new --out to use another)"
            )
    elif not split_file.is_file():
        split_dataset(
            data,
            split_file,
            val_fraction=base.data.val_fraction,
            seed=base.data.split_seed,
            problem_images=base.data.problem_images,
        )
    if not folds:
        split = spec["split"]
        if split == "auto":
            sources = load_dataset(data, problem_images=base.data.problem_images).sources()
            split = "offsite" if "offsite" in sources else "test"
    atomic_write_text(out / "grid.yaml", yaml.safe_dump({**spec, "split": split}, sort_keys=False))

    trained = skipped = 0
    for seed in spec["seeds"]:  # seed-major: a study stopped part-way holds complete seeds
        for cell in cells:
            for k, run_dir in enumerate(_run_dirs(out, cell, seed, folds), start=1):
                if (run_dir / "result.json").is_file():
                    skipped += 1
                    continue
                if table_only:
                    continue
                overrides = [*spec["set"], *cell.set_args(), f"train.seed={seed}"]
                run_split = fold_file(out / FOLDS, k) if folds else split_file
                cell_split = Path(str(cell.overrides.get(SPLIT_KEY, run_split)))
                _train_and_evaluate(data, spec["base"], overrides, run_dir, cell_split, split, spec, progress)
                trained += 1
    if table_only:
        done = [s for s in spec["seeds"] if all(_finished(out, c, s, folds) for c in cells)]
        if not done:
            raise ConfigError(f"{out}: no seed has finished in every cell yet; nothing to tabulate")
        spec = {**spec, "seeds": done}
    rows, markdown = _table(out, cells, spec, split)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "ablation.csv", buf.getvalue())
    atomic_write_text(out / "ablation.md", markdown + "\n")
    return AblationSummary(out / "ablation.md", out / "ablation.csv", trained, skipped, markdown, rows)


def _train_and_evaluate(
    data: str | os.PathLike[str],
    base: str,
    overrides: list[str],
    run_dir: Path,
    split_file: Path,
    split: str,
    spec: dict[str, Any],
    progress: bool,
) -> None:

    t0, cpu0 = time.perf_counter(), time.process_time()
    cfg = load_config(base, overrides)
    cfg.data.root = str(Path(data).resolve())
    cfg.data.split_file = str(split_file.resolve())
    resume = (run_dir / "last" / "meta.json").is_file()
    fit(cfg, run_dir, resume=resume, progress=progress)
    sp = predict_split(run_dir, split, progress=progress)
    official = official_score(sp.truth, sp.prob, rank_prob=sp.rank_prob)
    write_predictions(run_dir / PREDICTIONS, sp.ids, sp.truth, sp.prob, sp.rank_prob, sp.label_names)
    atomic_write_json(
        run_dir / "result.json",
        {
            "overrides": overrides,
            "split": split,
            "n_patients": len(sp.ids),
            "official": official,
            "macro_auroc": macro_auroc(sp.truth, sp.rank_prob),
            "seconds": time.perf_counter() - t0,
            # CPU seconds of all threads: the cost on a busy machine, where wall time is not
            "cpu_seconds": time.process_time() - cpu0,
        },
    )


#: The study folder's subfolder of fold split files when the grid has `folds`.
FOLDS = "folds"


def _fold_study(
    data: str | os.PathLike[str],
    out: Path,
    spec: dict[str, Any],
    cells: list[Cell],
    base: Any,
    folds: int,
    given: Path | None,
) -> str:
    """Check a cross-validated study's grid and make (or keep) its fold split files; the evaluated
    split is each fold's `test` part."""
    if given is not None or any(SPLIT_KEY in c.overrides for c in cells):
        raise ConfigError(
            f"the grid's folds make the study's splits: drop {SPLIT_KEY} from the grid and --set"
        )
    if spec["split"] not in ("auto", "test"):
        raise ConfigError(f"with folds the evaluated split is each fold's test part, not {spec['split']!r}")
    existing = sorted((out / FOLDS).glob("fold*.csv"))
    if existing and len(existing) != folds:
        raise ConfigError(
            f"{out}: this study has {len(existing)} folds, the grid asks for {folds} (start a new --out)"
        )
    if not existing:
        fold_splits(
            data,
            out / FOLDS,
            folds=folds,
            val_fraction=base.data.val_fraction,
            seed=base.data.split_seed,
            problem_images=base.data.problem_images,
        )
    return "test"


def _run_dirs(out: Path, cell: Cell, seed: int, folds: int) -> list[Path]:
    """The run folders of one cell and seed: the seed's folder, or one per fold inside it."""
    seed_dir = out / "cells" / cell.name / f"seed{seed}"
    return [seed_dir / f"fold{k}" for k in range(1, folds + 1)] if folds else [seed_dir]


def _finished(out: Path, cell: Cell, seed: int, folds: int = 0) -> bool:
    return all((d / "result.json").is_file() for d in _run_dirs(out, cell, seed, folds))


def _read_predictions(run_dirs: list[Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """IDs, truth and the `stack_scores` entry (decisions and ranking scores, ``N x 2 x L``) of one
    cell and seed; with folds, the folds' test predictions one after the other (each patient once)."""
    parts = [read_predictions(d / PREDICTIONS) for d in run_dirs]
    ids = [pid for p in parts for pid in p.ids]
    return ids, np.concatenate([p.truth for p in parts]), np.concatenate([p.scores for p in parts])


def _table(
    out: Path, cells: list[Cell], spec: dict[str, Any], split: str
) -> tuple[list[dict[str, Any]], str]:
    """Per cell: official final and macro AUROC (mean over seeds) with bootstrap CIs, and the
    paired comparison with the reference cell (`paired_comparison`: difference, 95 % CI, verdict)."""
    n_boot = int(spec.get("bootstrap", 1000))
    folds = int(spec.get("folds") or 0)
    evaluated = (
        f"the test parts of {folds} cross-validation folds together" if folds else f"the {split} split"
    )
    preds = {
        (c.name, s): _read_predictions(_run_dirs(out, c, s, folds)) for c in cells for s in spec["seeds"]
    }
    ref_ids = preds[("reference", spec["seeds"][0])][0]
    for key, (ids, _, _) in preds.items():
        if ids != ref_ids:
            raise ConfigError(f"ablation cell {key[0]} seed {key[1]} was evaluated on other patients")
    n = len(ref_ids)
    samples = bootstrap_samples(n, n_boot)

    truth = preds[("reference", spec["seeds"][0])][1]

    def compare(name: str, metric: Any, metric_name: str) -> Any:
        return paired_comparison(
            truth,
            [preds[(name, s)][2] for s in spec["seeds"]],
            [preds[("reference", s)][2] for s in spec["seeds"]],
            metric,
            metric_name=metric_name,
            names=(name, "reference"),
            n_boot=n_boot,
        )

    rows: list[dict[str, Any]] = []
    for cell in cells:
        fig = arm_figures(truth, [preds[(cell.name, s)][2] for s in spec["seeds"]], samples)
        d_final = compare(cell.name, official_final, "ODIR final")
        d_auroc = compare(cell.name, ranking_macro_auroc, "macro AUROC")
        rows.append(
            {
                "cell": cell.name,
                "overrides": ";".join(cell.set_args()) or "(reference)",
                "seeds": len(spec["seeds"]),
                "final": round(fig.final, 4),
                "final_lo": round(fig.final_ci[0], 4),
                "final_hi": round(fig.final_ci[1], 4),
                "macro_auroc": round(fig.auroc, 4),
                "macro_auroc_lo": round(fig.auroc_ci[0], 4),
                "macro_auroc_hi": round(fig.auroc_ci[1], 4),
                "delta_final": round(d_final.diff, 4),
                "delta_final_lo": round(d_final.lo, 4),
                "delta_final_hi": round(d_final.hi, 4),
                "verdict_final": d_final.verdict,
                "delta_macro_auroc": round(d_auroc.diff, 4),
                "delta_macro_auroc_lo": round(d_auroc.lo, 4),
                "delta_macro_auroc_hi": round(d_auroc.hi, 4),
                "verdict_macro_auroc": d_auroc.verdict,
                "labels_at_0_5": round(fig.labels_at_0_5, 2),
            }
        )
    results = [
        json.loads((d / "result.json").read_text())
        for c in cells
        for s in spec["seeds"]
        for d in _run_dirs(out, c, s, folds)
    ]
    seconds = sum(r.get("seconds", 0.0) for r in results)
    cpu_seconds = sum(r.get("cpu_seconds", 0.0) for r in results)
    lines = [
        f"## Ablation around `{spec['base']}` on {evaluated} ({n} patients, "
        f"{len(spec['seeds'])} seed(s): {', '.join(map(str, spec['seeds']))}; "
        f"{n_boot} paired bootstrap resamples)",
        "",
        f"Training and evaluation time of these {len(results)} runs: "
        f"{seconds / 60:.0f} min wall, {cpu_seconds / 60:.0f} CPU-minutes (sums over the cells' "
        "`result.json`; on an idle machine with N cores the wall time is about CPU-minutes / N).",
        "",
        "Δ: the cell minus the reference, mean over seeds; the 95 % CI resamples the same patients for "
        "both and each cell's seeds; the verdict is better / worse when the CI excludes 0, otherwise "
        "not distinguishable.",
        "",
        "Labels at 0.5: labels per patient whose probability reaches the official threshold of 0.5 "
        f"(the ODIR final's decisions; the test patients have {truth.sum(1).mean():.2f} each).",
        "",
        "| cell | ODIR final [95% CI] | Δ final vs reference [95% CI]: verdict | macro AUROC [95% CI] "
        "| Δ macro AUROC [95% CI]: verdict | labels at 0.5 |",
        "|---|---|---|---|---|---:|",
    ]

    def verdict(r: dict[str, Any], key: str) -> str:
        return "-" if r["cell"] == "reference" else str(r[key])

    for r in rows:
        ref_mark = " (reference)" if r["cell"] == "reference" else ""
        lines.append(
            f"| {r['cell']}{ref_mark} | {r['final']:.4f} [{r['final_lo']:.4f}, {r['final_hi']:.4f}] "
            f"| {r['delta_final']:+.4f} [{r['delta_final_lo']:+.4f}, {r['delta_final_hi']:+.4f}]: "
            f"{verdict(r, 'verdict_final')} "
            f"| {r['macro_auroc']:.4f} [{r['macro_auroc_lo']:.4f}, {r['macro_auroc_hi']:.4f}] "
            f"| {r['delta_macro_auroc']:+.4f} "
            f"[{r['delta_macro_auroc_lo']:+.4f}, {r['delta_macro_auroc_hi']:+.4f}]: "
            f"{verdict(r, 'verdict_macro_auroc')} | {r['labels_at_0_5']:.2f} |"
        )
    return rows, "\n".join(lines)
