"""Patient-level iterative stratification, the split CSV, and applying a split to a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.data.odir import Dataset, Patient, load_dataset
from eyefuse.data.splits import apply_split, iterative_stratification, read_split, split_dataset
from eyefuse.errors import ConfigError, DataError

#: Roughly the ODIR training prevalence (N D G C A H M O).
PREVALENCE = np.array([0.32, 0.32, 0.06, 0.06, 0.05, 0.03, 0.05, 0.27])


def random_labels(n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, len(PREVALENCE))) < PREVALENCE).astype(np.uint8)


def memory_dataset(n: int = 500, sources: dict[str, int] | None = None) -> Dataset:
    """A dataset without files: n training patients plus `sources` official test patients."""
    labels = random_labels(n + sum((sources or {}).values()))
    src = ["train"] * n + [s for s, k in (sources or {}).items() for _ in range(k)]
    patients = [
        Patient(id=str(i), age=None, sex=None, left=Path(f"{i}_left.jpg"), right=None, labels=y, source=s)
        for i, (y, s) in enumerate(zip(labels, src, strict=True))
    ]
    return Dataset(root=Path("."), format="challenge", label_names=ODIR_LABELS, patients=patients)


def test_iterative_stratification_keeps_prevalence_and_sizes():
    y = random_labels(500)
    assign = iterative_stratification(y, [0.7, 0.15, 0.15], np.random.default_rng(0))
    assert sorted(set(assign.tolist())) == [0, 1, 2]
    assert [int((assign == j).sum()) for j in range(3)] == [350, 75, 75]
    overall = y.mean(axis=0)
    for j in range(3):
        # A random split of 75 patients is typically off by 5-10 points on some label.
        assert np.abs(y[assign == j].mean(axis=0) - overall).max() < 0.02


def test_iterative_stratification_seeded():
    y = random_labels(300)
    a = iterative_stratification(y, [0.85, 0.15], np.random.default_rng(3))
    b = iterative_stratification(y, [0.85, 0.15], np.random.default_rng(3))
    c = iterative_stratification(y, [0.85, 0.15], np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_iterative_stratification_rows_without_labels():
    y = np.zeros((40, 3), dtype=np.uint8)
    y[:10, 0] = 1
    assign = iterative_stratification(y, [0.5, 0.5], np.random.default_rng(0))
    assert (assign >= 0).all()
    assert [int((assign == j).sum()) for j in range(2)] == [20, 20]
    assert [int((assign[:10] == j).sum()) for j in range(2)] == [5, 5]


def test_split_without_official_tests_carves_a_test_split(tmp_path):
    ds = memory_dataset(500)
    summary = split_dataset(ds, tmp_path / "split.csv", val_fraction=0.15, seed=0)
    assert summary.counts == {"train": 350, "val": 75, "test": 75}
    assert summary.test_fraction == 0.15
    split = read_split(tmp_path / "split.csv")
    assert len(split) == 500  # every patient exactly once
    assert set(split.values()) == {"train", "val", "test"}
    groups = apply_split(ds, tmp_path / "split.csv")
    ids = [p.id for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == 500
    overall = ds.label_matrix().mean(axis=0)
    for name, prev in summary.prevalence.items():
        assert np.abs(prev - overall).max() < 0.02, name
    text = str(summary)
    assert "train" in text and "350" in text and str(tmp_path / "split.csv") in text
    assert text.splitlines()[0].split()[-8:] == list(ODIR_LABELS)


def test_split_is_deterministic_for_a_seed(tmp_path):
    ds = memory_dataset(200)
    split_dataset(ds, tmp_path / "a.csv", seed=5)
    split_dataset(ds, tmp_path / "b.csv", seed=5)
    split_dataset(ds, tmp_path / "c.csv", seed=6)
    a, b, c = ((tmp_path / f"{n}.csv").read_bytes() for n in "abc")
    assert a == b
    assert a != c
    assert a.decode().splitlines()[0] == "patient_id,source,split"


def test_official_tests_keep_their_split(tmp_path):
    ds = memory_dataset(100, {"offsite": 20, "onsite": 10})
    summary = split_dataset(ds, tmp_path, val_fraction=0.2)  # a folder: split.csv inside
    assert summary.path == tmp_path / "split.csv"
    assert summary.counts == {"train": 80, "val": 20, "offsite": 20, "onsite": 10}
    split = read_split(summary.path)
    for p in ds:
        expected = {p.source} if p.source in ("offsite", "onsite") else {"train", "val"}
        assert split[p.key] in expected
    with pytest.raises(ConfigError, match="official test sets"):
        split_dataset(ds, tmp_path / "x.csv", test_fraction=0.1)


def test_split_from_files_with_offsite(tmp_path, make_challenge, odir_row, odir_rows):
    off = [odir_row(100 + i, "normal fundus", "glaucoma", "G") for i in range(3)]
    rows = [*odir_rows, odir_row(2177, "glaucoma", "glaucoma", "G")]  # both eyes known problem images
    root = make_challenge(tmp_path / "data", rows, offsite_rows=off)
    summary = split_dataset(root, tmp_path / "split.csv", val_fraction=0.25, seed=1)
    assert summary.counts["offsite"] == 3 and summary.counts["train"] + summary.counts["val"] == 9
    assert summary.unusable == 1 and "1 patient(s) have no usable eye" in str(summary)
    kept = split_dataset(root, tmp_path / "kept.csv", val_fraction=0.25, seed=1, problem_images="keep")
    assert kept.unusable == 0
    assert (tmp_path / "kept.csv").read_bytes() == summary.path.read_bytes()  # same patients, same split
    groups = apply_split(load_dataset(root), summary.path)
    assert [p.id for p in groups["offsite"]] == ["100", "101", "102"]


def test_cli_split(tmp_path, make_challenge, capsys):
    from eyefuse.cli import main

    root = make_challenge(tmp_path / "data")
    assert main(["split", "--data", str(root), "--out", str(tmp_path / "s.csv"), "--seed", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(read_split(tmp_path / "s.csv")) == 8
    assert main(["split", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "below 1"),
        ({"test_fraction": -0.1}, "test_fraction"),
    ],
)
def test_bad_fractions(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        split_dataset(memory_dataset(20), tmp_path / "s.csv", **kwargs)
    assert not (tmp_path / "s.csv").exists()


def test_train_fraction_keeps_validation_and_test_and_leaves_the_rest_unused(tmp_path):
    ds = memory_dataset(500)
    split_dataset(ds, tmp_path / "full.csv", seed=3)
    summary = split_dataset(ds, tmp_path / "half.csv", seed=3, train_fraction=0.5)
    full, half = read_split(tmp_path / "full.csv"), read_split(tmp_path / "half.csv")
    assert summary.counts == {"train": 175, "val": 75, "test": 75, "unused": 175}
    for key, name in full.items():  # the same validation and test patients
        if name in ("val", "test"):
            assert half[key] == name
        else:
            assert half[key] in ("train", "unused")
    groups = apply_split(ds, tmp_path / "half.csv")
    assert [p.key for p in groups["unused"]] == [p.key for p in ds if half[p.key] == "unused"]
    overall = ds.label_matrix().mean(axis=0)
    assert np.abs(summary.prevalence["train"] - overall).max() < 0.03  # stratified
    assert "train_fraction 0.5" in str(summary)
    last = str(split_dataset(ds, tmp_path / "again.csv", seed=3)).splitlines()[-1]
    assert last.endswith("test_fraction 0.15)")  # all of `train` kept: not mentioned


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_bad_train_fraction(tmp_path, fraction):
    with pytest.raises(ConfigError, match="train_fraction must be in"):
        split_dataset(memory_dataset(20), tmp_path / "s.csv", train_fraction=fraction)
    assert not (tmp_path / "s.csv").exists()


def test_test_fraction_zero_gives_no_test_split(tmp_path):
    summary = split_dataset(memory_dataset(40), tmp_path / "s.csv", test_fraction=0)
    assert set(summary.counts) == {"train", "val"}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message", "row"),
    [
        ("id,split\n1,train\n", "header must be patient_id,source,split", 1),
        ("patient_id,source,split\n1,train,train\n2,train,holdout\n", "unknown split 'holdout'", 3),
        (
            "patient_id,source,split\n1,train,train\n2,train,val\n1,train,val\n",
            "listed twice: rows 2 and 4",
            4,
        ),
    ],
)
def test_read_split_errors(tmp_path, text, message, row):
    with pytest.raises(DataError, match=message) as e:
        read_split(write(tmp_path / "s.csv", text))
    assert e.value.row == row


def test_read_split_without_source_column(tmp_path):
    path = write(tmp_path / "s.csv", "patient_id,split\n0,train\n1,val\n2,offsite\n")
    assert read_split(path) == {("", "0"): "train", ("", "1"): "val", ("", "2"): "offsite"}
    ds = memory_dataset(3)
    groups = apply_split(ds, path)
    assert {k: [p.id for p in v] for k, v in groups.items()} == {
        "train": ["0"],
        "val": ["1"],
        "offsite": ["2"],
    }


def test_apply_split_missing_and_unknown_patients(tmp_path):
    ds = memory_dataset(3)
    path = write(tmp_path / "s.csv", "patient_id,source,split\n0,train,train\n1,train,val\n")
    with pytest.raises(DataError, match=r"patient '2' \(source 'train'\) is not in the split"):
        apply_split(ds, path)
    path = write(
        tmp_path / "t.csv", "patient_id,source,split\n0,train,train\n1,train,val\n2,train,val\n9,train,val\n"
    )
    with pytest.raises(DataError, match="patient '9' of source 'train', who is not in the dataset") as e:
        apply_split(ds, path)
    assert e.value.row == 5
    mapping = {("train", "0"): "train", ("train", "1"): "val", ("train", "2"): "test"}
    assert [p.id for p in apply_split(ds, mapping)["test"]] == ["2"]
    with pytest.raises(DataError, match="unknown split 'dev'"):
        apply_split(ds, {**mapping, ("train", "2"): "dev"})


def test_folds_partition_the_pool_into_stratified_test_parts(tmp_path):
    from eyefuse.data.splits import fold_file, fold_splits

    ds = memory_dataset(300, {"offsite": 20})
    summaries = fold_splits(ds, tmp_path / "folds", folds=3, val_fraction=0.2, seed=1)
    splits = [read_split(fold_file(tmp_path / "folds", k)) for k in (1, 2, 3)]
    tests = [{key for key, s in split.items() if s == "test"} for split in splits]
    assert sum(len(t) for t in tests) == 300 and set().union(*tests) == {p.key for p in ds.patients[:300]}
    overall = ds.label_matrix()[:300].mean(axis=0)
    for k, (split, summary) in enumerate(zip(splits, summaries, strict=True)):
        assert summary.counts["test"] == 100 and summary.counts["offsite"] == 20
        assert summary.counts["val"] == 40 and summary.counts["train"] == 160  # 0.2 of the other parts
        assert [s for key, s in split.items() if key[0] == "offsite"] == ["offsite"] * 20
        assert np.abs(summary.prevalence["test"] - overall).max() < 0.03, k
    # seeded: the same seed gives the same files, another seed other test parts
    again = fold_splits(ds, tmp_path / "again", folds=3, val_fraction=0.2, seed=1)
    assert [s.path.read_bytes() for s in again] == [s.path.read_bytes() for s in summaries]
    other = fold_splits(ds, tmp_path / "other", folds=3, val_fraction=0.2, seed=2)
    assert other[0].path.read_bytes() != summaries[0].path.read_bytes()


@pytest.mark.parametrize("folds", [1, 0, True, 2.5])
def test_bad_fold_counts(tmp_path, folds):
    from eyefuse.data.splits import fold_splits

    with pytest.raises(ConfigError, match="folds must be an integer of at least 2"):
        fold_splits(memory_dataset(20), tmp_path, folds=folds)
    with pytest.raises(ConfigError, match="at least 40 patients"):
        fold_splits(memory_dataset(30), tmp_path, folds=20)


def test_cli_split_folds(tmp_path, make_challenge, capsys):
    from eyefuse.cli import main

    root = make_challenge(tmp_path / "data")
    assert main(["split", "--data", str(root), "--out", str(tmp_path / "cv"), "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "fold 1 of 2" in out and "fold 2 of 2" in out
    assert sorted(p.name for p in (tmp_path / "cv").iterdir()) == ["fold1.csv", "fold2.csv"]
    for argv, message in (
        (["--folds", "2", "--test-fraction", "0.2"], "drop --test-fraction"),
        (["--folds", "2", "--train-fraction", "0.5"], "drop --train-fraction"),
    ):
        assert main(["split", "--data", str(root), "--out", str(tmp_path / "cv2"), *argv]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "f.csv").write_text("x")
    assert main(["split", "--data", str(root), "--out", str(tmp_path / "f.csv"), "--folds", "2"]) == 2
    assert "not a file" in capsys.readouterr().err and (tmp_path / "f.csv").read_text() == "x"
    assert not (tmp_path / "cv2").exists()
