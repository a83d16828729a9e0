"""Patients without a usable eye never stop a run (issue 9 item 3): a patient whose both photographs
fail preprocessing, and one whose only other eye is a known problem image, are set aside before
training or evaluation starts, counted, and listed in `set_aside.csv` with the reason."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from eyefuse.cli import main
from helpers import make_checkpoint

FAILING = "53"  # both photographs black: no field of view, preprocessing fails
MIXED = "2178"  # left photograph black, right a known problem image (excluded by default)


@pytest.fixture
def troubled_data(tmp_path: Path, make_challenge, odir_row) -> tuple[Path, Path]:
    rows = [odir_row(i, "normal fundus", "moderate non proliferative retinopathy", "D") for i in range(12)]
    rows += [odir_row(int(FAILING), "normal fundus", "normal fundus", "N")]
    rows += [odir_row(int(MIXED), "cataract", "normal fundus", "C")]
    root = make_challenge(tmp_path / "data", rows)
    black = cv2.imencode(".jpg", np.zeros((48, 48, 3), np.uint8))[1].tobytes()
    for name in (f"{FAILING}_left.jpg", f"{FAILING}_right.jpg", f"{MIXED}_left.jpg"):
        (root / "ODIR-5K_Training_Dataset" / name).write_bytes(black)
    split = tmp_path / "split.csv"
    lines = ["patient_id,split"] + [f"{i},{'train' if i < 8 else 'val'}" for i in range(12)]
    lines += [f"{FAILING},train", f"{MIXED},val"]
    split.write_text("\n".join(lines) + "\n")
    return root, split


def _set_aside(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["patient_id"]: r for r in csv.DictReader(f)}


def test_patients_without_a_usable_eye_are_set_aside_before_training(
    troubled_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from eyefuse.config import load_config
    from eyefuse.data.dataset import PairDataset
    from eyefuse.train.distributed import DistInfo
    from eyefuse.train.run_data import load_run_data

    root, split = troubled_data
    cfg = load_config("demo", ["preprocess.size=64", f"data.split_file={split}"])
    cfg.data.root = str(root)
    run = tmp_path / "run"
    data = load_run_data(cfg, run, DistInfo(), progress=False)
    ids = {name: [p.id for p in ps] for name, ps in data.splits.items()}
    assert FAILING not in ids["train"] and MIXED not in ids["val"]
    assert len(ids["train"]) == 8 and len(ids["val"]) == 4
    listed = _set_aside(run / "set_aside.csv")
    assert set(listed) == {FAILING, MIXED}
    assert (
        listed[FAILING]["split"] == "train" and listed[FAILING]["reason"].count("failed preprocessing") == 2
    )
    assert (
        "known problem image" in listed[MIXED]["reason"] and "failed preprocessing" in listed[MIXED]["reason"]
    )
    assert "set aside 2 patient(s)" in data.summary() and "train 1, val 1" in data.summary()
    # every patient left loads: nothing can stop the first epoch any more
    for name in ("train", "val"):
        ds = PairDataset(data.splits[name], data.loader, data.label_names, size=64)
        for i in range(len(ds)):
            item = ds[i]
            assert bool(item["left_present"]) or bool(item["right_present"])


def test_unused_patients_are_not_part_of_the_run(troubled_data: tuple[Path, Path], tmp_path: Path) -> None:
    from eyefuse.config import load_config
    from eyefuse.train.distributed import DistInfo
    from eyefuse.train.run_data import load_run_data

    root, split = troubled_data
    text = split.read_text().replace(f"{FAILING},train", f"{FAILING},unused").replace("3,train", "3,unused")
    split.write_text(text)
    cfg = load_config("demo", ["preprocess.size=64", f"data.split_file={split}"])
    cfg.data.root = str(root)
    data = load_run_data(cfg, tmp_path / "run", DistInfo(), progress=False)
    assert set(data.splits) == {"train", "val"} and len(data.splits["train"]) == 7
    assert data.unused == 2 and "2 patients left out (split 'unused')" in data.summary()
    # never prepared, never set aside: only the val patient's black photograph failed
    assert data.failed_images == 1 and set(_set_aside(tmp_path / "run" / "set_aside.csv")) == {MIXED}


@pytest.mark.slow
def test_evaluate_sets_aside_and_lists_them(troubled_data: tuple[Path, Path], tmp_path: Path) -> None:
    from eyefuse.workflows.evaluate import run_evaluate

    root, split = troubled_data
    ckpt = make_checkpoint(tmp_path / "ck", split_file=str(split))
    summary = run_evaluate(ckpt, split="val", data=root, out=tmp_path / "rep", n_boot=10, progress=False)
    assert summary.n_patients == 4
    assert set(_set_aside(tmp_path / "rep" / "set_aside.csv")) == {MIXED}
    assert "set aside 1 patient(s)" in summary.headline


@pytest.mark.slow
def test_train_command_runs_past_unusable_patients(
    troubled_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, split = troubled_data
    sets = [
        "preprocess.size=64",
        "model.backbone=resnet10t",
        "train.epochs=1",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.device=cpu",
        "train.channels_last=false",
        "eval.bootstrap=10",
    ]
    argv = [
        "train",
        "--data",
        str(root),
        "--config",
        "demo",
        "--out",
        str(tmp_path / "run"),
        "--split",
        str(split),
    ]
    rc = main([*argv, "--no-progress", *[a for s in sets for a in ("--set", s)]])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "set aside 2 patient(s)" in out and "usable_patients()" not in out
    assert (tmp_path / "run" / "best" / "meta.json").is_file()
