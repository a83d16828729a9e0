"""Writing a synthetic dataset: the patients' photographs, masks, annotation files and marker."""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from eyefuse import ODIR_LABELS, __version__
from eyefuse.data.odir import ODIR_COLUMNS
from eyefuse.data.synth.canvas import CAMERAS, FieldOfView, _camera_fov
from eyefuse.data.synth.plan import (
    _P_BOTH_EYES,
    _SECOND_DISEASE,
    DISEASE_KEYWORDS,
    MIXES,
    NON_DECIDING_KEYWORDS,
    P_ONE_EYE,
    P_SECOND_DISEASE,
    PatientPlan,
    plan_patient,
)
from eyefuse.data.synth.render import render_eye
from eyefuse.errors import ConfigError
from eyefuse.utils.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text

TRAIN_ANNOTATION = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
TRAIN_IMAGES = "ODIR-5K_Training_Dataset"
TEST_ANNOTATION = "Off-site Test Set/Annotation/off-site test annotation (English).xlsx"
TEST_IMAGES = "Off-site Test Set/Images"
MASKS = "masks"
FOV_CSV = "synth_fov.csv"
MARKER = "SYNTHETIC.json"
COLUMNS: tuple[str, ...] = ODIR_COLUMNS  # the annotation's 15 columns, as the readers expect them
KEYWORD_SEPARATOR = "\uff0c"
DEFAULT_MAX_SIDE = 768
#: first off-site test ID when the training set has fewer than 10000 patients (then the next 10000s)
TEST_ID_START = 10000
MIN_SIDE = 64  #: smallest allowed `max_side`: below this a field of view is a few dozen pixels


@dataclass(frozen=True)
class SynthImage:
    """One written photograph and its truth."""

    path: Path
    mask_path: Path
    patient_id: int
    split: str  #: "train" | "offsite"
    side: str
    camera: str
    width: int
    height: int
    fov: FieldOfView
    labels: tuple[str, ...]  #: per-eye labels, ("N",) for a normal eye
    keywords: tuple[str, ...]


def _split_dirs(out: Path, split: str) -> Path:
    return out / (TRAIN_IMAGES if split == "train" else TEST_IMAGES)


def _make_patient(job: tuple[str, int, str, int, int, str]) -> tuple[PatientPlan, list[SynthImage]]:
    """Plan, draw and write one patient's two photographs and masks (runs in worker processes)."""
    out_s, pid, split, seed, max_side, mix = job
    out = Path(out_s)
    plan = plan_patient(seed, pid, mix)
    width, height = plan.camera.size(max_side)
    images = []
    for k, eye in enumerate((plan.left, plan.right)):
        rng = np.random.default_rng([seed, 2, pid, k])
        fov = _camera_fov(rng, plan.camera, width, height)
        drawn = render_eye(
            rng,
            eye.labels,
            eye.side,
            (width, height),
            keywords=eye.keywords,
            fov=fov,
            border=plan.border,
            notch=plan.camera.notch,
            color=plan.color,
        )
        path = _split_dirs(out, split) / f"{pid}_{eye.side}.jpg"
        mask_path = out / MASKS / f"{pid}_{eye.side}.png"
        ok, jpg = cv2.imencode(".jpg", drawn.rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, eye.jpeg_quality])
        png_params = [cv2.IMWRITE_PNG_COMPRESSION, 6, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        ok2, png = cv2.imencode(".png", drawn.mask, png_params)
        if not (ok and ok2):
            raise OSError(f"OpenCV could not encode {path.name}")
        atomic_write_bytes(path, jpg.tobytes())
        atomic_write_bytes(mask_path, png.tobytes())
        images.append(
            SynthImage(
                path,
                mask_path,
                pid,
                split,
                eye.side,
                plan.camera.name,
                width,
                height,
                fov,
                eye.labels,
                eye.keywords,
            )
        )
    return plan, images


def _worker_init() -> None:
    cv2.setNumThreads(1)  # processes already use every core


# ----------------------------------------------------------------------------------------------
# Dataset writer


@dataclass
class SynthSummary:
    """What `synthesize` wrote; `str()` gives a readable report."""

    out: Path
    seed: int
    max_side: int
    workers: int
    patients: dict[str, int]  #: split -> patients
    label_counts: dict[str, dict[str, int]]  #: split -> label -> patients
    one_eye_only: dict[str, int]  #: split -> diseased patients with one normal eye
    images: list[SynthImage]
    files: dict[str, Path]
    removed_stale: int
    elapsed_s: float
    plans: list[PatientPlan] = field(repr=False, default_factory=list)

    def __str__(self) -> str:
        side = f"max side {self.max_side} px" if self.max_side else "full camera resolution"
        lines = [
            f"synthetic ODIR-format dataset in {self.out}",
            f"  seed {self.seed}, {side}, {self.workers} process(es), {self.elapsed_s:.1f} s",
            "  split     patients images " + " ".join(f"{lab:>5}" for lab in ODIR_LABELS) + "  one-eye",
        ]
        for split, n in self.patients.items():
            counts = self.label_counts[split]
            prev = " ".join(f"{100 * counts[lab] / max(n, 1):4.0f}%" for lab in ODIR_LABELS)
            diseased = n - counts["N"]
            one = f"{100 * self.one_eye_only[split] / max(diseased, 1):5.0f}%"
            lines.append(f"  {split:<9} {n:>8} {2 * n:>6} {prev}  {one}")
        lines.append("  (label columns: % of patients; one-eye: % of diseased patients with one normal eye)")
        for name, path in self.files.items():
            lines.append(f"  {name:<20} {path}")
        if self.removed_stale:
            lines.append(f"  removed {self.removed_stale} file(s) left from an earlier, larger synthetic run")
        return "\n".join(lines)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_out(out: Path) -> set[Path]:
    """Refuse to write into a folder holding anything but an earlier synthetic dataset; return the
    earlier run's image and mask files so that stale ones can be removed afterwards."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(
            f"--out {out}: folder is not empty and holds no {MARKER} marker; refusing to write a synthetic "
            "dataset over other files (choose an empty or new folder)"
        )
    old: set[Path] = {out / TEST_ANNOTATION} if (out / TEST_ANNOTATION).is_file() else set()
    for sub in (TRAIN_IMAGES, TEST_IMAGES, MASKS):
        folder = out / sub
        if folder.is_dir():
            old.update(p for p in folder.iterdir() if p.suffix in (".jpg", ".png") and p.is_file())
    return old


def _write_annotation(path: Path, plans: list[PatientPlan]) -> None:
    rows = []
    for p in plans:
        rows.append(
            [
                p.patient_id,
                p.age,
                p.sex,
                f"{p.patient_id}_left.jpg",
                f"{p.patient_id}_right.jpg",
                KEYWORD_SEPARATOR.join(p.left.keywords),
                KEYWORD_SEPARATOR.join(p.right.keywords),
                *p.labels,
            ]
        )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_excel(tmp, index=False, sheet_name="Sheet1", engine="openpyxl")


def _write_fov_csv(path: Path, out: Path, images: list[SynthImage]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "path",
            "cx",
            "cy",
            "radius",
            "width",
            "height",
            "camera",
            "split",
            "patient_id",
            "side",
            "labels",
            "mask",
        ]
    )
    for im in images:
        writer.writerow(
            [
                im.path.relative_to(out).as_posix(),
                f"{im.fov.cx:.2f}",
                f"{im.fov.cy:.2f}",
                f"{im.fov.radius:.2f}",
                im.width,
                im.height,
                im.camera,
                im.split,
                im.patient_id,
                im.side,
                " ".join(im.labels),
                im.mask_path.relative_to(out).as_posix(),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def synthesize(
    out: str | os.PathLike[str],
    *,
    n_patients: int = 300,
    n_test: int | None = None,
    seed: int = 0,
    max_side: int | None = None,
    workers: int | None = None,
    mix: str = "odir",
    progress: bool = False,
) -> SynthSummary:
    """Write a synthetic ODIR-format dataset (challenge layout + off-site test split) to `out`.

    Args:
        out: folder to create; it must be empty, new, or hold an earlier synthetic dataset (whose
            leftover images are then removed and counted).
        n_patients: training patients (IDs 0 .. n_patients - 1).
        n_test: off-site test patients; None means max(20, n_patients // 5); 0 writes no test split.
        seed: non-negative; the same seed gives the same annotations and byte-identical images.
        max_side: longest image side in pixels; None means `DEFAULT_MAX_SIDE`, 0 the full camera
            resolution (2976 px, slow).
        workers: processes; None uses all cores for sets of 40 patients or more. The result does not
            depend on it.
        mix: the patients' first diagnoses: `odir` (ODIR-5K's proportions) or `balanced` (the five
            rare labels twice as often; see `MIXES`).
        progress: show a progress bar over the patients (on stderr).
    """
    start = time.perf_counter()
    if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < 1:
        raise ConfigError(f"--patients must be a positive whole number, not {n_patients!r}")
    if n_test is None:
        n_test = max(20, n_patients // 5)
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 0:
        raise ConfigError(f"--test-patients must be a whole number >= 0, not {n_test!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a whole number >= 0, not {seed!r}")
    if max_side is None:
        max_side = DEFAULT_MAX_SIDE
    if isinstance(max_side, bool) or not isinstance(max_side, int) or (max_side != 0 and max_side < MIN_SIDE):
        raise ConfigError(
            f"--max-side must be 0 (full resolution) or at least {MIN_SIDE} pixels, not {max_side!r}"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive whole number, not {workers!r}")
    if mix not in MIXES:
        raise ConfigError(f"--mix must be one of {', '.join(MIXES)}, not {mix!r}")
    out = Path(out)
    old_files = _check_out(out)
    out.mkdir(parents=True, exist_ok=True)

    test_start = TEST_ID_START * (n_patients // TEST_ID_START + 1)
    jobs = [(str(out), pid, "train", seed, max_side, mix) for pid in range(n_patients)]
    test_ids = range(test_start, test_start + n_test)
    jobs += [(str(out), pid, "offsite", seed, max_side, mix) for pid in test_ids]
    n_workers = workers if workers is not None else (_default_workers() if len(jobs) >= 40 else 1)
    n_workers = max(1, min(n_workers, len(jobs)))

    marker = {
        "synthetic": True,
        "complete": False,
        "generator": "eyefuse.data.synth",
        "eyefuse_version": __version__,
        "seed": seed,
        "max_side": max_side,
        "mix": mix,
        "patients": {"train": n_patients, "offsite": n_test},
        "id_ranges": {
            "train": [0, n_patients - 1],
            "offsite": [test_start, test_start + n_test - 1] if n_test else [],
        },
        "label_order": list(ODIR_LABELS),
        "mask_encoding": (
            "single-channel uint8 PNG, same size as the photograph; bit i (value 1 << i) is set where a sign "
            "of label label_order[i] was drawn; bit 0 (N) is never set; C marks the whole field of view"
        ),
        "keyword_separator": KEYWORD_SEPARATOR,
        "orientation": "optic disc on the viewer's right in right-eye photographs, on the left in left-eye",
        "cameras": [
            {
                "name": cam.name,
                "width": cam.width,
                "height": cam.height,
                "fov_diameter_over_height": cam.fov_diameter,
                "notch": cam.notch,
                "scaled_size": list(cam.size(max_side)),
            }
            for cam in CAMERAS
        ],
        "generator_settings": {
            "block": list(MIXES[mix]),
            "second_disease_probability": P_SECOND_DISEASE,
            "second_disease_weights": _SECOND_DISEASE,
            "one_eye_probability": P_ONE_EYE,
            "both_eyes_probability": _P_BOTH_EYES,
            "keywords": {lab: dict(opts) for lab, opts in DISEASE_KEYWORDS.items()},
            "non_deciding_keywords": NON_DECIDING_KEYWORDS,
            "jpeg_quality": [85, 95],
        },
    }
    atomic_write_json(out / MARKER, marker)

    bar = tqdm(total=len(jobs), desc="synth", unit="patient", disable=not progress)
    if n_workers > 1:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe after OpenCV/torch threads started
        with ctx.Pool(n_workers, initializer=_worker_init) as pool:
            chunk = max(1, len(jobs) // (n_workers * 6))
            results = []
            for result in pool.imap(_make_patient, jobs, chunksize=chunk):  # in order, like map
                results.append(result)
                bar.update()
    else:
        results = []
        for job in jobs:
            results.append(_make_patient(job))
            bar.update()
    bar.close()

    plans = [plan for plan, _ in results]
    images = [im for _, ims in results for im in ims]
    train_plans, test_plans = plans[:n_patients], plans[n_patients:]
    files = {"training annotation": out / TRAIN_ANNOTATION, "training images": out / TRAIN_IMAGES}
    _write_annotation(out / TRAIN_ANNOTATION, train_plans)
    if n_test:
        _write_annotation(out / TEST_ANNOTATION, test_plans)
        files.update({"off-site annotation": out / TEST_ANNOTATION, "off-site images": out / TEST_IMAGES})
    files.update({"lesion masks": out / MASKS, "fov circles": out / FOV_CSV, "marker": out / MARKER})
    _write_fov_csv(out / FOV_CSV, out, images)

    written = {im.path for im in images} | {im.mask_path for im in images} | set(files.values())
    stale = sorted(old_files - written)
    for path in stale:
        path.unlink(missing_ok=True)
    if not n_test:  # an empty off-site folder left by an earlier run would look like a broken split
        test_root = (out / TEST_IMAGES).parent
        for folder in (out / TEST_IMAGES, (out / TEST_ANNOTATION).parent, test_root):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    patients: dict[str, int] = {}
    label_counts: dict[str, dict[str, int]] = {}
    one_eye: dict[str, int] = {}
    for split, group in (("train", train_plans), ("offsite", test_plans)):
        if split == "offsite" and not group:
            continue
        patients[split] = len(group)
        label_counts[split] = {lab: sum(p.labels[i] for p in group) for i, lab in enumerate(ODIR_LABELS)}
        one_eye[split] = sum((p.left.labels == ("N",)) != (p.right.labels == ("N",)) for p in group)
    marker["complete"] = True
    marker["label_counts"] = label_counts
    marker["one_eye_only"] = one_eye
    atomic_write_json(out / MARKER, marker)
    return SynthSummary(
        out=out,
        seed=seed,
        max_side=max_side,
        workers=n_workers,
        patients=patients,
        label_counts=label_counts,
        one_eye_only=one_eye,
        images=images,
        files=files,
        removed_stale=len(stale),
        elapsed_s=time.perf_counter() - start,
        plans=plans,
    )
