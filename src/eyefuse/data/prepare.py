"""`eyefuse prepare`: preprocess every image of a dataset once into the cache, check the labels.

Glue between the readers (`odir`), the keyword check and the image cache (`cache`). Every image
that is not cached is listed in `prepare_report.csv` (path, status, reason) beside the cache:
eyes excluded by option, eyes that are not fundus photographs, and images that failed
preprocessing. The summary counts each kind; nothing is skipped silently.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from eyefuse.config import PreprocessConfig
from eyefuse.data.cache import prepare_images, write_prepare_report
from eyefuse.data.odir import keyword_report, load_dataset


def default_cache_dir(data: str | os.PathLike[str]) -> Path:
    """`<dataset folder>/.eyefuse-cache` (the folder holding the annotation file when given a file)."""
    p = Path(data)
    return (p if p.is_dir() else p.parent) / ".eyefuse-cache"


@dataclass
class PrepareSummary:
    data: str
    format: str
    patients: int
    images: int
    already_cached: int
    prepared: int
    failed: list[tuple[str, str]]
    excluded: list[tuple[str, str]]
    keyword_report: str
    cache_dir: Path
    report_path: Path
    seconds: float
    notes: list[str] = field(default_factory=list)
    #: `(path, note)` of photographs used despite a problem (corrupt JPEG data), this run's only
    image_notes: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"dataset: {self.data} ({self.format}, {self.patients} patients)",
            f"images: {self.images} usable; {self.already_cached} already cached, "
            f"{self.prepared} prepared now, {len(self.failed)} failed",
            f"skipped eyes: {len(self.excluded)} (excluded by option or not fundus photographs)",
        ]
        for path, reason in self.failed[:10]:
            lines.append(f"  failed: {path}: {reason}")
        if len(self.failed) > 10:
            lines.append(f"  ... and {len(self.failed) - 10} more")
        if self.image_notes:
            lines.append(
                f"used with a note: {len(self.image_notes)} photograph(s) (e.g. corrupt JPEG data), "
                "listed in the report"
            )
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.keyword_report)
        lines.append(f"cache: {self.cache_dir}")
        lines.append(f"report of every skipped image: {self.report_path}")
        lines.append(f"time: {self.seconds:.1f} s")
        return "\n".join(lines)


def prepare_dataset(
    data: str | os.PathLike[str],
    cfg: PreprocessConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    problem_images: str = "exclude",
    progress: bool = True,
) -> PrepareSummary:
    """Load the dataset, check its keywords, and fill the preprocessing cache for `cfg`."""
    t0 = time.perf_counter()
    cfg.validate()
    dataset = load_dataset(data, problem_images=problem_images)
    report = keyword_report(dataset)
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir(data)

    paths: list[Path] = []
    excluded: list[tuple[str, str]] = []
    for p in dataset.patients:
        for side in ("left", "right"):
            usable = p.eye_path(side)
            raw = getattr(p, side)
            if usable is not None:
                paths.append(Path(usable))
            elif raw is not None:
                if getattr(p, f"{side}_excluded"):
                    reason = f"known problem image excluded (--problem-images {problem_images})"
                elif not getattr(p, f"{side}_fundus"):
                    reason = "not a fundus photograph (keywords: anterior segment / no fundus image)"
                else:
                    reason = "not usable"
                excluded.append((str(raw), reason))
    paths = sorted(set(paths))
    result = prepare_images(paths, cfg, cache_root, workers=workers, progress=progress)

    report_path = cache_root / "prepare_report.csv"
    write_prepare_report(result, report_path, excluded)
    return PrepareSummary(
        data=str(data),
        format=dataset.format,
        patients=len(dataset.patients),
        images=len(paths),
        already_cached=result.cached,
        prepared=result.done,
        failed=[(str(p), r) for p, r in result.failed],
        image_notes=[(str(p), n) for p, n in result.notes],
        excluded=excluded,
        keyword_report=str(report),
        cache_dir=cache_root,
        report_path=report_path,
        seconds=time.perf_counter() - t0,
        notes=list(dataset.notes),
    )
