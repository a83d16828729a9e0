"""Shared test helpers: tiny ODIR-format datasets written on the fly (no real data, no network).

Fixtures:
- `write_table(path, header, rows)`: an .xlsx (pandas + openpyxl) or .csv annotation table.
- `write_jpeg(path, size=32)`: a small dummy fundus-like JPEG (bright disc on black).
- `odir_row(pid, left_kw, right_kw, labels="DH")`: one annotation row as a dict.
- `odir_rows()`: a few annotation rows (dicts keyed by `ODIR_COLUMNS`) whose labels follow the ODIR
  keyword rule; covers N, every disease, a non-fundus eye and non-deciding keywords.
- `make_challenge(root, rows=None, *, image_dir=..., offsite_rows=None, onsite_rows=None,
  images=True, synthetic=False)`: the challenge layout (what `eyefuse synth` writes), returns root.

Session fixtures, built once for every test file that asks (built lazily, so a run of fast tests
never builds them; every test that asks gets the same content whatever ran before it):
- `synth_dataset`: an `eyefuse synth` dataset (40 training + 16 off-site patients, 160 px).
- `tiny_run`: a run folder trained on it by `eyefuse train` (`helpers.TINY_SETS`, 3 epochs). Tests
  only read it; a test that changes a run copies it first (`shutil.copytree`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.data.synth import synthesize
from helpers import TINY_EPOCHS, TINY_SETS, set_args

ODIR_COLUMNS = [
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    *ODIR_LABELS,
]
CHALLENGE_XLSX = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
FW = "\uff0c"  # the full-width comma ODIR joins keywords with


def _write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any] | dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [r if isinstance(r, dict) else dict(zip(header, r, strict=True)) for r in rows]
    frame = pd.DataFrame(records, columns=list(header))
    if path.suffix == ".xlsx":
        frame.to_excel(path, index=False, engine="openpyxl")
    else:
        frame.to_csv(path, index=False)
    return path


def _write_jpeg(path: Path, size: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 2 - 2, (30, 60, 160 + seed % 60), -1)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _odir_row(
    pid: int | str, left_kw: str, right_kw: str, labels: str, age: int = 60, sex: str = "Female"
) -> dict:
    """One annotation row; `labels` is a string of label letters, e.g. "DH"."""
    row: dict[str, Any] = {
        "ID": pid,
        "Patient Age": age,
        "Patient Sex": sex,
        "Left-Fundus": f"{pid}_left.jpg",
        "Right-Fundus": f"{pid}_right.jpg",
        "Left-Diagnostic Keywords": left_kw,
        "Right-Diagnostic Keywords": right_kw,
    }
    row.update({lab: int(lab in labels) for lab in ODIR_LABELS})
    return row


def _odir_rows() -> list[dict]:
    return [
        _odir_row(0, "normal fundus", "normal fundus", "N", age=45, sex="Male"),
        _odir_row(1, "moderate non proliferative retinopathy", "normal fundus", "D"),
        _odir_row(2, f"suspected glaucoma{FW}lens dust", "glaucoma", "G"),
        _odir_row(3, "cataract", "hypertensive retinopathy", "CH", age=77),
        _odir_row(4, "dry age-related macular degeneration", "pathological myopia", "AM"),
        _odir_row(5, f"laser spot{FW}drusen", "normal fundus", "O"),
        _odir_row(6, "anterior segment image", "normal fundus", "N"),
        _odir_row(7, f"mild nonproliferative retinopathy{FW} hypertensive retinopathy", "", "DH"),
    ]


def _make_challenge(
    root: Path,
    rows: Sequence[dict] | None = None,
    *,
    image_dir: str = "ODIR-5K_Training_Dataset",
    offsite_rows: Sequence[dict] | None = None,
    onsite_rows: Sequence[dict] | None = None,
    images: bool = True,
    synthetic: bool = False,
) -> Path:
    rows = _odir_rows() if rows is None else rows
    _write_table(root / CHALLENGE_XLSX, ODIR_COLUMNS, rows)
    if images:
        for r in rows:
            for col in ("Left-Fundus", "Right-Fundus"):
                _write_jpeg(root / image_dir / r[col])
    for folder, name, test_rows in (
        ("Off-site Test Set", "off-site test annotation (English).xlsx", offsite_rows),
        ("On-site Test Set", "on-site test annotation (English).xlsx", onsite_rows),
    ):
        if test_rows is None:
            continue
        _write_table(root / folder / "Annotation" / name, ODIR_COLUMNS, test_rows)
        for r in test_rows:
            for col in ("Left-Fundus", "Right-Fundus"):
                _write_jpeg(root / folder / "Images" / r[col])
    if synthetic:
        (root / "SYNTHETIC.json").write_text('{"synthetic": true}\n')
    return root


@pytest.fixture
def write_table() -> Callable[..., Path]:
    return _write_table


@pytest.fixture
def write_jpeg() -> Callable[..., Path]:
    return _write_jpeg


@pytest.fixture
def odir_row() -> Callable[..., dict]:
    return _odir_row


@pytest.fixture
def odir_rows() -> list[dict]:
    return _odir_rows()


@pytest.fixture
def make_challenge() -> Callable[..., Path]:
    return _make_challenge


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny test models run fastest on one thread; idle OpenMP threads spin on a busy 2-core machine."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic ODIR-format dataset for every test that trains or evaluates on one (read only:
    the preprocessing cache it gains is the same whichever test fills it)."""
    root = tmp_path_factory.mktemp("synth_dataset") / "data"
    synthesize(root, n_patients=40, n_test=16, seed=5, max_side=160)
    return root


@pytest.fixture(scope="session")
def tiny_run(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run on `synth_dataset`: `eyefuse train --config demo --set TINY_SETS... --set
    train.epochs=3`, one thread. It is the uninterrupted reference of the resume test, which compares
    killed and resumed `eyefuse train` processes with it weight for weight, so it is made by the same
    entry point in a process of its own (no state left by other tests in this one). Read only: copy
    it before changing it."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("EYEFUSE_FAULT_KILL_AT_STEP", None)
    cmd = [sys.executable, "-m", "eyefuse", "train", "--no-progress", "--config", "demo"]
    cmd += ["--data", str(synth_dataset), "--out", str(run)]
    cmd += set_args([*TINY_SETS, f"train.epochs={TINY_EPOCHS}"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run
