"""Checkpoints: safetensors + JSON only, atomic folder swap, nested train state round trip."""

from __future__ import annotations

import json

import pytest
import torch

from eyefuse.errors import CheckpointError
from eyefuse.models import checkpoint as owner
from eyefuse.train import checkpoint as ckpt


def _state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "history": [{"epoch": 1, "val_final": 0.5}],
        "rng": torch.get_rng_state(),
        "pair": (1, 2.5),
        "none": None,
    }


def test_train_state_round_trip(tmp_path) -> None:
    state = _state()
    weights = {"w": torch.randn(2, 3)}
    ckpt.save_checkpoint(tmp_path / "last", weights, {"config": {}, "label_names": ["N"]}, state)
    back = ckpt.load_train_state(tmp_path / "last")
    assert back["epoch"] == 3 and back["history"] == state["history"] and back["pair"] == (1, 2.5)
    assert back["none"] is None
    assert torch.equal(back["rng"], state["rng"])
    opt_back, opt_orig = back["optimizer"], state["optimizer"]
    assert set(opt_back["state"]) == set(opt_orig["state"])  # int keys restored
    for k, v in opt_orig["state"][0].items():
        assert torch.equal(opt_back["state"][0][k], v)
    model = torch.nn.Linear(3, 2)
    torch.optim.AdamW(model.parameters(), lr=0.1).load_state_dict(opt_back)
    assert torch.equal(owner.load_model_state(tmp_path / "last")["w"], weights["w"])
    # nothing in the folder is a pickle
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == [
        "meta.json",
        "model.safetensors",
        "train_state.json",
        "train_state.safetensors",
    ]


def test_swap_replaces_and_recovers(tmp_path) -> None:
    meta = {"config": {}, "label_names": ["N"]}
    ckpt.save_checkpoint(tmp_path / "best", {"w": torch.zeros(1)}, {**meta, "epoch": 1})
    ckpt.save_checkpoint(tmp_path / "best", {"w": torch.ones(1)}, {**meta, "epoch": 2})
    assert owner.read_meta(tmp_path / "best")["epoch"] == 2
    assert not any(p.name.startswith(".best") for p in tmp_path.iterdir())
    # a kill between the two renames leaves only the previous version under .best.old
    (tmp_path / "best").rename(tmp_path / ".best.old")
    assert owner.read_meta(tmp_path / "best")["epoch"] == 2
    # a run folder resolves to its best checkpoint
    (tmp_path / ".best.old").rename(tmp_path / "best")
    assert owner.resolve_checkpoint_dir(tmp_path) == tmp_path / "best"


def test_bad_checkpoints_are_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        owner.read_meta(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an eyefuse checkpoint"):
        owner.read_meta(tmp_path / "empty")
    d = tmp_path / "bad"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="no config/label_names"):
        owner.read_meta(d)
    (d / "meta.json").write_text(json.dumps({"config": {}, "label_names": []}))
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        owner.load_model_state(d)
    with pytest.raises(CheckpointError, match="no training state"):
        ckpt.load_train_state(d)


def test_update_meta(tmp_path) -> None:
    ckpt.save_checkpoint(tmp_path / "best", {"w": torch.zeros(1)}, {"config": {}, "label_names": ["N"]})
    ckpt.update_meta(tmp_path / "best", thresholds=[0.3])
    meta = owner.read_meta(tmp_path / "best")
    assert meta["thresholds"] == [0.3] and meta["format_version"] == owner.FORMAT_VERSION
    assert ckpt.package_versions()["torch"] == torch.__version__


def test_checkpoint_meta_records_the_models_own_normalisation() -> None:
    from types import SimpleNamespace

    from eyefuse.config import Config

    cfg = Config()
    cfg.preprocess.size = 96
    model = SimpleNamespace(
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )  # e.g. a timm backbone not on ImageNet stats
    meta = ckpt.checkpoint_meta(cfg, ("A", "B"), model)
    assert meta["model"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert meta["label_names"] == ["A", "B"] and meta["preprocess"]["size"] == 96
    assert meta["config"]["preprocess"] == meta["preprocess"]
    assert meta["thresholds"] is None and meta["temperatures"] is None
    json.dumps(meta)  # written as JSON
