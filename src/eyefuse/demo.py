"""`eyefuse demo` (what `make demo` runs): the whole tool on synthetic data, end to end.

Synthesise an ODIR-format dataset, prepare the cache, train the `demo` preset, fit thresholds and
temperatures on validation (part of training), evaluate on the held-out synthetic off-site split,
write the report and print the headline table. With `compare_single`, also train the no-fusion
baseline (`model.fusion=single`) on the same split and seed, and compare the two on the same
test patients. Rerunning continues where a previous run stopped (finished parts are reused).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoSummary:
    headline: str
    report: Path
    macro_auroc: float
    final: float
    single_final: float | None
    seconds: float

    def __str__(self) -> str:
        lines = ["", "=== eyefuse demo: held-out synthetic off-site test split ===", self.headline]
        if self.single_final is not None:
            verdict = "fusion beats" if self.final > self.single_final else "fusion does NOT beat"
            lines.append(
                f"fused model ODIR final {self.final:.4f} vs single-eye (no fusion) {self.single_final:.4f}: "
                f"{verdict} the single-eye baseline"
            )
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
    overrides: list[str] | None = None,
    progress: bool = True,
) -> DemoSummary:
    from eyefuse.config import load_config
    from eyefuse.data.prepare import prepare_dataset
    from eyefuse.data.synth import synthesize
    from eyefuse.eval.evaluate import predict_split, run_evaluate
    from eyefuse.eval.metrics import official_score
    from eyefuse.train.engine import fit

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

    def train(run_dir: Path, extra: list[str]) -> None:
        run_cfg = load_config("demo", [f"train.seed={seed}", *(overrides or []), *extra])
        run_cfg.data.root = str(data.resolve())
        resume = (run_dir / "last" / "meta.json").is_file()  # a rerun continues, never starts over
        print(fit(run_cfg, run_dir, resume=resume, progress=progress), flush=True)

    train(out / "run", [])
    summary = run_evaluate(out / "run", split="offsite", out=out / "report", progress=progress)
    single_final = None
    if compare_single:
        split_file = out / "run" / "split.csv"
        train(out / "run-single", ["model.fusion=single", f"data.split_file={split_file.resolve()}"])
        sp = predict_split(out / "run-single", "offsite", progress=progress)
        single_final = official_score(sp.truth, sp.prob)["final"]
    ev = summary.evaluation
    return DemoSummary(
        headline=summary.headline,
        report=summary.report,
        macro_auroc=float(ev["macro"]["auroc"]),
        final=float(ev["official"]["final"]),
        single_final=single_final,
        seconds=time.perf_counter() - t0,
    )
