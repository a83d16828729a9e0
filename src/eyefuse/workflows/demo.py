"""`eyefuse demo` (what `make demo` runs): the whole tool on synthetic data, end to end.

Synthesise an ODIR-format dataset, prepare the cache, train the `demo` preset, fit thresholds and
temperatures on validation (part of training), evaluate on the held-out synthetic off-site split,
write the report and print the headline table. With `compare_single`, train both the fused model
and the no-fusion baseline (`model.fusion=single`) with `seeds` training seeds each (seed, seed + 1,
...) on the same split, and compare them on the same test patients with
`eyefuse.eval.compare.paired_comparison` (paired bootstrap over patients and seeds): the printed
difference comes with its 95 % interval and a verdict "better", "worse" or "not distinguishable".
Rerunning continues where a previous run stopped (finished parts are reused).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from eyefuse.config import load_config
from eyefuse.data.prepare import prepare_dataset
from eyefuse.data.synth import synthesize
from eyefuse.errors import ConfigError
from eyefuse.eval.compare import (
    Comparison,
    official_final,
    paired_comparison,
    ranking_macro_auroc,
    stack_scores,
)
from eyefuse.train.engine import fit
from eyefuse.workflows.evaluate import predict_split, run_evaluate


@dataclass
class DemoSummary:
    headline: str
    report: Path
    macro_auroc: float
    final: float
    seconds: float
    comparisons: list[Comparison] = field(default_factory=list)

    def __str__(self) -> str:
        lines = ["", "=== eyefuse demo: held-out synthetic off-site test split ===", self.headline]
        if self.comparisons:
            c = self.comparisons[0]
            lines.append(
                f"fused model vs single-eye (no fusion) baseline, {c.a_seeds} training seeds each, "
                f"paired bootstrap over the same {c.n_patients} test patients and the seeds:"
            )
            lines += [f"  {comp.sentence()}" for comp in self.comparisons]
        lines.append(f"report: {self.report}")
        lines.append(f"total time: {self.seconds / 60:.1f} min")
        return "\n".join(lines)


def run_demo(
    out: str | os.PathLike[str],
    *,
    patients: int = 400,
    test_patients: int | None = 100,
    seed: int = 0,
    max_side: int | None = None,
    mix: str = "balanced",
    compare_single: bool = False,
    seeds: int = 3,
    n_boot: int = 1000,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> DemoSummary:
    """Run the demo into `out` (see the module); `seeds` and `n_boot` apply to `compare_single`.

    The headline and report are those of the first seed's fused model (`out/run`); further seeds
    train into `out/run-seed{k}`, the baseline into `out/run-single` and `out/run-single-seed{k}`.
    """
    if compare_single and seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, not {seeds}")
    t0 = time.perf_counter()
    out = Path(out)
    data = out / "data"
    if not (data / "SYNTHETIC.json").is_file():
        print(
            synthesize(
                data, n_patients=patients, n_test=test_patients, seed=seed, max_side=max_side, mix=mix
            ),
            flush=True,
        )
    else:
        print(f"using the synthetic dataset already in {data}", flush=True)

    cfg = load_config("demo", [f"train.seed={seed}", *(overrides or [])])
    cfg.data.root = str(data.resolve())
    print(prepare_dataset(data, cfg.preprocess, progress=progress), flush=True)

    def train(run_dir: Path, extra: list[str], run_seed: int = seed) -> None:
        run_cfg = load_config("demo", [f"train.seed={run_seed}", *(overrides or []), *extra])
        run_cfg.data.root = str(data.resolve())
        resume = (run_dir / "last" / "meta.json").is_file()  # a rerun continues, never starts over
        print(fit(run_cfg, run_dir, resume=resume, progress=progress), flush=True)

    train(out / "run", [])
    summary = run_evaluate(out / "run", split="offsite", out=out / "report", progress=progress)
    comparisons: list[Comparison] = []
    if compare_single:
        same_split = f"data.split_file={(out / 'run' / 'split.csv').resolve()}"
        arms: dict[str, list[object]] = {"fused": [], "single": []}
        truth = None
        for k in range(seeds):
            suffix = "" if k == 0 else f"-seed{seed + k}"
            for arm, extra in (("fused", []), ("single", ["model.fusion=single"])):
                run_dir = out / ("run" if arm == "fused" else "run-single")
                run_dir = run_dir.with_name(run_dir.name + suffix)
                if not (arm == "fused" and k == 0):  # the first fused run is the one trained above
                    train(run_dir, [*extra, same_split], seed + k)
                sp = predict_split(run_dir, "offsite", progress=progress)
                truth = sp.truth
                arms[arm].append(stack_scores(sp.prob, sp.rank_prob))
        names = ("fused", "single-eye")
        comparisons = [
            paired_comparison(
                truth, arms["fused"], arms["single"], metric, metric_name=name, names=names, n_boot=n_boot
            )
            for name, metric in (("ODIR final", official_final), ("macro AUROC", ranking_macro_auroc))
        ]
    ev = summary.evaluation
    return DemoSummary(
        headline=summary.headline,
        report=summary.report,
        macro_auroc=float(ev["macro"]["auroc"]),
        final=float(ev["official"]["final"]),
        seconds=time.perf_counter() - t0,
        comparisons=comparisons,
    )
