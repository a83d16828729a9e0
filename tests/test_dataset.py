"""PairDataset and TensorCache with stand-in patients and a fake image cache (no preprocessing stack)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from eyefuse.data.dataset import BATCH_KEYS, PairDataset, TensorCache, usable_patients
from eyefuse.data.decode import PreprocessError
from eyefuse.errors import DataError, EyefuseError

SIZE = 16
LABELS = ("N", "D", "G")


class FakeLoadError(Exception):
    """Stands in for PreprocessError."""


@dataclass
class FakePatient:
    id: str
    left: Path | None
    right: Path | None
    labels: np.ndarray
    left_labels: np.ndarray | None = None
    right_labels: np.ndarray | None = None

    def eye_path(self, side: str) -> Path | None:
        return getattr(self, side)


class FakeCache:
    """Picklable loader: a distinct image per path; paths in `bad` raise; counts calls per path."""

    def __init__(self, bad: tuple[str, ...] = (), size: int = SIZE) -> None:
        self.bad = set(bad)
        self.size = size
        self.calls: dict[str, int] = {}

    def load(self, path: Path) -> np.ndarray:
        self.calls[str(path)] = self.calls.get(str(path), 0) + 1
        if str(path) in self.bad:
            raise FakeLoadError(f"{path}: no field of view found")
        return image_for(path, self.size)


def image_for(path: Path, size: int = SIZE) -> np.ndarray:
    seed = sum(str(path).encode())
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def lab(*bits: int) -> np.ndarray:
    return np.array(bits, dtype=np.uint8)


def make_patients() -> list[FakePatient]:
    return [
        FakePatient("1", Path("1_left.jpg"), Path("1_right.jpg"), lab(0, 1, 0), lab(0, 1, 0), lab(1, 0, 0)),
        FakePatient("2", None, Path("2_right.jpg"), lab(0, 0, 1), None, lab(0, 0, 1)),
        FakePatient("3", Path("3_left.jpg"), Path("3_right.jpg"), lab(1, 0, 0)),
        FakePatient("4", Path("4_left.jpg"), Path("bad.jpg"), lab(0, 1, 1), lab(0, 1, 1), lab(0, 1, 0)),
    ]


def make_dataset(patients=None, cache=None) -> PairDataset:
    cache = cache or FakeCache(bad=("bad.jpg",))
    return PairDataset(
        patients or make_patients(), cache.load, LABELS, size=SIZE, load_errors=(FakeLoadError,)
    )


def test_item_shapes_dtypes_and_content() -> None:
    ds = make_dataset()
    assert len(ds) == 4
    item = ds[0]
    assert tuple(item) == BATCH_KEYS
    assert item["left"].dtype == torch.uint8 and item["left"].shape == (3, SIZE, SIZE)
    assert item["right"].dtype == torch.uint8 and item["right"].shape == (3, SIZE, SIZE)
    # CHW of exactly the loaded HWC array.
    assert torch.equal(item["left"], torch.from_numpy(image_for(Path("1_left.jpg"))).permute(2, 0, 1))
    assert item["left_present"].dtype == torch.bool and bool(item["left_present"])
    assert bool(item["right_present"])
    assert item["labels"].dtype == torch.float32 and item["labels"].tolist() == [0.0, 1.0, 0.0]
    assert item["left_labels"].tolist() == [0.0, 1.0, 0.0]
    assert item["right_labels"].tolist() == [1.0, 0.0, 0.0]
    assert item["eye_labels_known"].dtype == torch.bool and item["eye_labels_known"].tolist() == [True, True]
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 0


def test_missing_eye_is_zero_and_absent() -> None:
    item = make_dataset()[1]
    assert not bool(item["left_present"]) and bool(item["right_present"])
    assert item["left"].shape == (3, SIZE, SIZE) and not item["left"].any()
    assert item["right"].any()
    assert item["left_labels"].tolist() == [0.0, 0.0, 0.0]
    assert item["eye_labels_known"].tolist() == [False, True]


def test_unknown_eye_labels_are_zero_and_flagged() -> None:
    item = make_dataset()[2]
    assert bool(item["left_present"]) and bool(item["right_present"])
    assert item["eye_labels_known"].tolist() == [False, False]
    assert not item["left_labels"].any() and not item["right_labels"].any()


def test_load_error_makes_the_eye_absent_and_is_counted_once() -> None:
    cache = FakeCache(bad=("bad.jpg",))
    ds = make_dataset(cache=cache)
    assert ds.n_failed == 0
    for _ in range(3):
        item = ds[3]
        assert bool(item["left_present"]) and not bool(item["right_present"])
        assert not item["right"].any()
        # Per-eye labels of an eye without image are not usable by the auxiliary loss.
        assert item["eye_labels_known"].tolist() == [True, False]
    assert ds.n_failed == 1
    assert ds.failed_eyes() == [("4", "right")]
    assert "no field of view" in ds.failure_reasons[("4", "right")]
    # A flagged eye is not loaded again.
    assert cache.calls["bad.jpg"] == 1


def test_other_exceptions_propagate() -> None:
    def broken(path: Path) -> np.ndarray:
        raise KeyError("a bug, not a bad image")

    ds = PairDataset(make_patients(), broken, LABELS, size=SIZE, load_errors=(FakeLoadError,))
    with pytest.raises(KeyError):
        ds[0]


def test_both_eyes_unusable_raises_naming_the_patient() -> None:
    patients = [
        FakePatient("77", None, None, lab(1, 0, 0)),
        FakePatient("88", Path("bad_l.jpg"), Path("bad_r.jpg"), lab(1, 0, 0)),
        FakePatient("99", None, Path("bad_r.jpg"), lab(1, 0, 0)),
    ]
    ds = make_dataset(patients, FakeCache(bad=("bad_l.jpg", "bad_r.jpg")))
    with pytest.raises(EyefuseError, match="patient 77"):
        ds[0]
    with pytest.raises(DataError, match=r"patient 88: neither eye.*no field of view"):
        ds[1]
    with pytest.raises(DataError, match=r"patient 99.*left: no usable image path"):
        ds[2]
    assert ds.n_failed == 3


def test_usable_patients_checks_paths_only() -> None:
    patients = [*make_patients(), FakePatient("5", None, None, lab(1, 0, 0))]
    kept, dropped = usable_patients(patients)
    assert [p.id for p in kept] == ["1", "2", "3", "4"]
    assert [p.id for p in dropped] == ["5"]


def test_wrong_label_length_and_wrong_image_size_are_errors() -> None:
    with pytest.raises(DataError, match=r"patient 1: labels has shape \(2,\)"):
        make_dataset([FakePatient("1", Path("a.jpg"), None, lab(0, 1))])
    ds = PairDataset(
        make_patients(), FakeCache(size=SIZE * 2).load, LABELS, size=SIZE, load_errors=(FakeLoadError,)
    )
    with pytest.raises(DataError, match=r"1_left.jpg.*preprocess.size=16"):
        ds[0]


def test_default_collate_and_pickle() -> None:
    ds = make_dataset()
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["left"].shape == (4, 3, SIZE, SIZE) and batch["left"].dtype == torch.uint8
    assert batch["left_present"].tolist() == [True, False, True, True]
    assert batch["right_present"].tolist() == [True, True, True, False]
    assert batch["eye_labels_known"].shape == (4, 2)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0]["left"], ds[0]["left"])


def test_failures_in_a_worker_process_reach_the_main_process() -> None:
    ds = make_dataset()
    loader = DataLoader(ds, batch_size=2, num_workers=1)
    batches = list(loader)
    assert batches[1]["right_present"].tolist() == [True, False]
    assert ds.n_failed == 1 and ds.failed_eyes() == [("4", "right")]


def test_default_load_errors_is_preprocess_error() -> None:
    def load(path: Path) -> np.ndarray:
        if path.name == "bad.jpg":
            raise PreprocessError(path, "unreadable")
        return image_for(path)

    patients = [FakePatient("1", Path("1_left.jpg"), Path("bad.jpg"), lab(1, 0, 0))]
    ds = PairDataset(patients, load, LABELS, size=SIZE)
    assert not bool(ds[0]["right_present"]) and ds.n_failed == 1
    assert "unreadable" in ds.failure_reasons[("1", "right")]


def test_tensor_cache_batch_equals_dataset_items() -> None:
    ds = make_dataset()
    cache = TensorCache(ds, batch_size=3, progress=False)
    assert len(cache) == 4
    assert cache.images.shape == (4, 2, 3, SIZE, SIZE) and cache.images.dtype == torch.uint8
    assert cache.nbytes >= 4 * 2 * 3 * SIZE * SIZE
    assert ds.n_failed == 1
    indices = [3, 1, 0]
    batch = cache.batch(indices)
    assert tuple(batch) == BATCH_KEYS
    for row, i in enumerate(indices):
        item = ds[i]
        for key in BATCH_KEYS:
            assert batch[key][row].dtype == item[key].dtype, key
            assert torch.equal(batch[key][row], item[key]), key


def test_tensor_cache_batches_cover_everything_once() -> None:
    cache = TensorCache(make_dataset(), progress=False)
    seen = torch.cat(
        [b["index"] for b in cache.batches(3, shuffle=True, generator=torch.Generator().manual_seed(1))]
    )
    assert sorted(seen.tolist()) == [0, 1, 2, 3]
    assert [len(b["index"]) for b in cache.batches(3, drop_last=True)] == [3]
    moved = cache.to("cpu")
    assert torch.equal(moved.batch([2])["left"], cache.batch([2])["left"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tensor_cache_on_cuda() -> None:
    ds = make_dataset()
    cache = TensorCache(ds, device="cuda", progress=False)
    batch = cache.batch(torch.tensor([0, 2], device="cuda"))
    assert batch["left"].is_cuda
    assert torch.equal(batch["left"][1].cpu(), ds[2]["left"])
