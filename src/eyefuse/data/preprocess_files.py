"""The `eyefuse preprocess` command's work: the preprocessing pipeline applied to a list of
photographs, each written as a PNG, with the lists of what was done beside them.

`preprocess_files` writes `OUT/<stem>.png` per photograph (`output_names` for equal stems),
`OUT/fov.csv` (the field of view found in each) and `OUT/failed.csv` (what could not be used and
why); one photograph that fails never stops the others.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from eyefuse.config import PreprocessConfig
from eyefuse.data.decode import PreprocessError
from eyefuse.data.preprocess import preprocess_image
from eyefuse.utils.io import atomic_open, atomic_write_bytes

#: Headers of the lists `preprocess_files` writes beside its PNGs (the CLI recognises its own
#: earlier lists by them).
FOV_CSV_HEADER = ("path", "cx", "cy", "radius", "output", "radius_y", "method")
FAILED_CSV_HEADER = ("path", "reason")


@dataclass
class PreprocessSummary:
    """What `preprocess_files` did: images written, failures with reasons, duplicate inputs."""

    out_dir: Path
    total: int
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    #: `(path, note)` for photographs written despite a problem (corrupt JPEG data).
    notes: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0
    enhance: str = ""

    def __str__(self) -> str:
        lines = [
            f"preprocessed {self.written} of {self.total} images into {self.out_dir} "
            f"({self.size} px, {self.enhance}); circles in fov.csv"
        ]
        if self.duplicates:
            shown = ", ".join(self.duplicates[:5])
            lines.append(f"{len(self.duplicates)} duplicate input path(s) processed once: {shown}")
        if self.notes:
            lines.append(f"{len(self.notes)} written with a warning:")
            lines += [f"  {path}: {note}" for path, note in self.notes[:10]]
            if len(self.notes) > 10:
                lines.append(f"  ... and {len(self.notes) - 10} more")
        if self.failed:
            lines.append(f"{len(self.failed)} failed (all listed in failed.csv):")
            lines += [f"  {path}: {reason}" for path, reason in self.failed[:10]]
            if len(self.failed) > 10:
                lines.append(f"  ... and {len(self.failed) - 10} more")
        return "\n".join(lines)


def output_names(paths: Sequence[Path]) -> list[str]:
    """PNG file names for `paths`: `<stem>.png`, or `<stem>-2.png`, `<stem>-3.png`, ... for later
    inputs whose stem is already taken (compared case-insensitively, for case-insensitive file
    systems). Names depend only on the input order, never on which images fail."""
    used: set[str] = set()
    names: list[str] = []
    for p in paths:
        stem = Path(p).stem or "image"
        candidate, k = stem, 1
        while candidate.casefold() in used:
            k += 1
            candidate = f"{stem}-{k}"
        used.add(candidate.casefold())
        names.append(f"{candidate}.png")
    return names


def preprocess_files(
    paths: Iterable[Path | str], out_dir: Path | str, cfg: PreprocessConfig
) -> PreprocessSummary:
    """Preprocess photographs to `OUT/<stem>.png` (see `output_names` for equal stems).

    Also writes `OUT/fov.csv` (`path,cx,cy,radius,output,radius_y,method`: the field of view in
    source pixels, the PNG written, the vertical semi-axis and how it was found) and
    `OUT/failed.csv` (`path,reason`; header only when nothing failed, so a stale list from an
    earlier run is never left behind). A path given twice is processed once and reported.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    unique: list[Path] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    for p in paths:
        key = os.path.abspath(p)
        if key in seen:
            duplicates.append(str(p))
            continue
        seen.add(key)
        unique.append(Path(p))
    summary = PreprocessSummary(
        out_dir=out_dir, total=len(unique), duplicates=duplicates, size=cfg.size, enhance=cfg.enhance
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, ...]] = []
    for path, out_name in zip(unique, output_names(unique), strict=True):
        notes: list[str] = []
        try:
            img, fov = preprocess_image(path, cfg, notes=notes)
        except PreprocessError as e:
            summary.failed.append((str(path), e.reason))
            continue
        summary.notes += [(str(path), note) for note in notes]
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - PNG encoding of a uint8 image does not fail
            raise RuntimeError(f"could not encode {out_name} as PNG")
        atomic_write_bytes(out_dir / out_name, buf.tobytes())
        rows.append(
            (
                str(path),
                f"{fov.cx:.2f}",
                f"{fov.cy:.2f}",
                f"{fov.radius:.2f}",
                out_name,
                f"{fov.ry:.2f}",
                fov.method,
            )
        )
        summary.written += 1
    with atomic_open(out_dir / "fov.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FOV_CSV_HEADER)
        writer.writerows(rows)
    with atomic_open(out_dir / "failed.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FAILED_CSV_HEADER)
        writer.writerows(summary.failed)
    return summary


__all__ = [
    "FAILED_CSV_HEADER",
    "FOV_CSV_HEADER",
    "PreprocessSummary",
    "output_names",
    "preprocess_files",
]
