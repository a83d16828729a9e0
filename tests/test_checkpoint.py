"""Checkpoints: safetensors + JSON only, atomic folder swap, nested train state round trip."""

from __future__ import annotations

import json

import numpy as np
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


# --- the typed metadata and the one calibration (eyefuse.models.checkpoint) -------------------------


def test_checkpoint_meta_reads_an_old_checkpoint_with_defaults(tmp_path) -> None:
    """A checkpoint written before thresholds, temperatures and run records existed: the head comes
    from the config, no calibration applies (T = 1, threshold 0.5) and absent records are None."""
    old = {"config": {"model": {"head": "sigmoid", "fusion": "ffm"}}, "label_names": ["A", "B"]}
    ckpt.save_checkpoint(tmp_path / "best", {"w": torch.zeros(1)}, old)
    meta = owner.CheckpointMeta.read(tmp_path)  # a run folder -> its best
    assert meta.label_names == ("A", "B") and meta.head == "sigmoid" and meta.fusion == "ffm"
    assert meta.thresholds is None and meta.temperatures is None and not meta.thresholds_fitted
    assert meta.epoch is None and meta.versions is None and meta.calibration_split_name is None
    assert meta.threshold_array().tolist() == [0.5, 0.5] and meta.temperature_array().tolist() == [1.0, 1.0]
    assert meta.format_version == owner.FORMAT_VERSION


def test_checkpoint_meta_types_every_field_it_is_given() -> None:
    raw = {
        "config": {"model": {"head": "softmax"}},
        "label_names": ["A", "B", "C"],
        "thresholds": {"A": 0.2, "B": 0.3, "C": 0.9},  # a label -> value mapping is read in label order
        "temperatures": {"temperatures": [2.0]},  # a stored TemperatureFit
        "calibration_split": {"name": "val"},
        "calibration_warnings": ["class C: no positive patient"],
        "threshold_method": "f1",
        "epoch": 4,
        "versions": {"torch": "x"},
    }
    meta = owner.CheckpointMeta.from_dict(raw)
    assert meta.head == "softmax" and meta.thresholds == (0.2, 0.3, 0.9) and meta.temperatures == (2.0,)
    assert meta.thresholds_fitted and meta.calibrated and meta.calibration_split_name == "val"
    assert meta.calibration_warnings == ("class C: no positive patient",) and meta.epoch == 4
    with pytest.raises(CheckpointError, match="no valid model head"):
        owner.CheckpointMeta.from_dict({**raw, "config": {"model": {"head": "tanh"}}})
    with pytest.raises(CheckpointError, match="lack label"):
        owner.CheckpointMeta.from_dict({**raw, "thresholds": {"A": 0.2}})
    with pytest.raises(CheckpointError, match="one shared temperature"):
        owner.CheckpointMeta.from_dict({**raw, "temperatures": [1.0, 2.0]})


def test_calibrate_applies_temperatures_head_rule_and_thresholds() -> None:
    logits = np.array([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    sigmoid = owner.CheckpointMeta.from_dict(
        {"head": "sigmoid", "label_names": ["A", "B", "C"], "temperatures": [2.0, 1.0, 0.5]}
    )
    out = owner.calibrate(logits, sigmoid)
    expected = 1 / (1 + np.exp(-logits / np.array([2.0, 1.0, 0.5])))
    np.testing.assert_allclose(out.prob, expected)
    np.testing.assert_allclose(out.rank_prob, expected)
    assert out.thresholds.tolist() == [0.5] * 3  # none fitted: 0.5
    np.testing.assert_array_equal(out.decisions, expected > 0.5)
    softmax = owner.CheckpointMeta.from_dict(
        {"head": "softmax", "label_names": ["A", "B", "C"], "temperatures": [2.0], "thresholds": [0.9] * 3}
    )
    out = owner.calibrate(torch.from_numpy(logits), softmax)  # a tensor in: the same numbers
    p = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.rank_prob, p)
    np.testing.assert_allclose(out.prob, p / p.max(axis=1, keepdims=True))  # p / max p decides
    np.testing.assert_array_equal(out.decisions, out.prob > 0.9)
    assert out.decisions[1].tolist() == [True, True, False]  # two labels tied at the top: both
    t = torch.tensor(logits, dtype=torch.float32)
    as_tensor = owner.calibrated_probabilities(t, "softmax", [2.0])
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_tensor.numpy(), out.prob, atol=1e-6)
