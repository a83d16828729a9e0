"""ONNX export: parity with PyTorch at batch 1 and 3 (sigmoid head with per-class temperatures;
softmax head with cross-attention fusion), dynamic batch, sidecar content, prediction from the .onnx
file equal to the checkpoint's, and a broken parity or a broken export raising without leaving files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import eyefuse
from eyefuse import ODIR_LABELS
from eyefuse.errors import CheckpointError, ConfigError
from eyefuse.models.checkpoint import load_model, read_meta
from eyefuse.serve import export as export_module
from eyefuse.serve.export import INPUT_NAMES, OUTPUT_NAMES, ExportWrapper, check_parity, export_onnx
from eyefuse.serve.predict import Predictor
from eyefuse.utils.io import sha256_file
from helpers import SIZE, draw_eye, make_checkpoint

TEMPERATURES = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 0.9]
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.2, 0.5, 0.5, 0.45]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, export_module.ExportSummary]:
    """A sigmoid-head checkpoint with fitted temperatures and thresholds, exported once."""
    root = tmp_path_factory.mktemp("sigmoid")
    ckpt = make_checkpoint(
        root / "run" / "best",
        head="sigmoid",
        fusion="ffm",
        temperatures=TEMPERATURES,
        thresholds=THRESHOLDS,
        threshold_method="youden",
        calibration_split={"name": "val", "file": "split.csv", "hash": "0" * 64},
        calibration_warnings=["H: temperature at its search bound"],
        epoch=3,
    )
    steps: list[str] = []
    summary = export_onnx(root / "run", root / "model.onnx", log=steps.append)
    # a line per step
    assert [s.split()[0] for s in steps] == ["loading", "exporting", "checking", "checking"]
    return ckpt, root / "model.onnx", summary


@pytest.mark.slow
def test_sigmoid_export_parity_and_dynamic_batch(exported) -> None:
    _, onnx_path, summary = exported
    assert sorted(summary.diff_by_batch) == [1, 3]
    assert summary.max_abs_diff is not None and summary.max_abs_diff <= 1e-4
    assert "max abs difference" in str(summary)
    model = onnx.load(str(onnx_path))
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    for graph_input in model.graph.input:
        batch_dim = graph_input.type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not fixed
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, SIZE, SIZE]


@pytest.mark.slow
def test_sidecar_holds_what_a_client_needs(exported) -> None:
    ckpt, onnx_path, _ = exported
    side = json.loads(Path(str(onnx_path) + ".json").read_text())
    meta = read_meta(ckpt)
    assert side["format"] == "eyefuse-onnx" and side["eyefuse_version"] == eyefuse.__version__
    assert side["label_names"] == list(ODIR_LABELS) and side["head"] == "sigmoid"
    assert side["preprocess"] == meta["preprocess"] and side["input_size"] == SIZE
    assert side["thresholds"] == THRESHOLDS and side["temperatures"] == TEMPERATURES
    assert side["temperatures_applied_in_graph"] is True
    assert side["source_checkpoint"]["weights_sha256"] == sha256_file(ckpt / "model.safetensors")
    assert side["source_checkpoint"]["epoch"] == 3
    assert side["onnx_sha256"] == sha256_file(onnx_path)
    assert side["parity"]["max_abs_diff"] <= 1e-4 and side["parity"]["batch_sizes"] == [1, 3]
    assert set(side["inputs"]) == set(INPUT_NAMES)


@pytest.mark.slow
def test_predict_with_onnx_equals_the_checkpoint(tmp_path, exported) -> None:
    ckpt, onnx_path, _ = exported
    left, right = draw_eye(tmp_path / "1_left.jpg"), draw_eye(tmp_path / "1_right.jpg", spot=-12)
    pairs = [("1", left, right), ("2", None, right), ("3", left, None)]
    from_torch = Predictor.from_checkpoint(ckpt).predict_pairs(pairs)
    onnx_predictor = Predictor.from_checkpoint(onnx_path)
    assert onnx_predictor.backend == "onnx" and list(onnx_predictor.thresholds) == THRESHOLDS
    from_onnx = onnx_predictor.predict_pairs(pairs, batch_size=2)
    for a, b in zip(from_torch, from_onnx, strict=True):
        assert a.id == b.id and a.warnings == b.warnings
        np.testing.assert_allclose(
            [a.probabilities[k] for k in ODIR_LABELS], [b.probabilities[k] for k in ODIR_LABELS], atol=1e-4
        )
        assert a.thresholds == b.thresholds
    # the decision note says the same with either: the method and split the thresholds were fitted by
    assert onnx_predictor.decision_rule() == Predictor.from_checkpoint(ckpt).decision_rule()
    assert "(youden on val)" in onnx_predictor.decision_rule()
    assert onnx_predictor.meta.calibration_warnings == ("H: temperature at its search bound",)


@pytest.mark.slow
def test_broken_parity_raises(monkeypatch, exported) -> None:
    ckpt, onnx_path, _ = exported
    wrapper = ExportWrapper(load_model(ckpt), read_meta(ckpt)).eval()
    assert max(check_parity(onnx_path, wrapper, SIZE).values()) <= 1e-4
    real = export_module._onnx_outputs
    monkeypatch.setattr(
        export_module, "_onnx_outputs", lambda session, inputs: [x + 1e-3 for x in real(session, inputs)]
    )
    with pytest.raises(CheckpointError, match=r"ONNX output differs from PyTorch by 0\.001\d* > 0\.0001"):
        check_parity(onnx_path, wrapper, SIZE)


@pytest.mark.slow
def test_failed_export_leaves_no_file(monkeypatch, tmp_path, exported) -> None:
    ckpt, _, _ = exported

    def broken_export(model, args, f, **kwargs):
        Path(f).write_bytes(b"not an onnx model")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(CheckpointError):
        export_onnx(ckpt, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match=r"must end in \.onnx"):
        export_onnx(ckpt, tmp_path / "x.bin")


@pytest.mark.slow
def test_onnx_without_sidecar_or_altered_is_refused(tmp_path, exported) -> None:
    _, onnx_path, _ = exported
    copy = tmp_path / "m.onnx"
    copy.write_bytes(onnx_path.read_bytes())
    with pytest.raises(CheckpointError, match="sidecar m.onnx.json is missing"):
        Predictor.from_checkpoint(copy)
    Path(str(copy) + ".json").write_text(Path(str(onnx_path) + ".json").read_text())
    assert Predictor.from_checkpoint(copy).backend == "onnx"
    copy.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="does not match its sidecar"):
        Predictor.from_checkpoint(copy)


@pytest.mark.slow
def test_softmax_head_with_cross_attention_exports_with_parity(tmp_path) -> None:
    ckpt = make_checkpoint(
        tmp_path / "best", head="softmax", fusion="cross_attention", temperatures=[1.7], epoch=3
    )
    summary = export_onnx(ckpt, tmp_path / "softmax.onnx")
    assert summary.max_abs_diff is not None and summary.max_abs_diff <= 1e-4
    # the graph applies the stored temperature and the softmax head's rescaling (max = 1 per patient)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "softmax.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, SIZE, SIZE)).astype(np.float32)
    feeds = {
        "left": x,
        "right": x[::-1].copy(),
        "left_present": np.array([True, True]),
        "right_present": np.array([True, False]),
    }
    prob, logits = session.run(None, feeds)
    expected = torch.softmax(torch.from_numpy(logits) / 1.7, dim=-1)
    np.testing.assert_allclose(prob, (expected / expected.amax(-1, keepdim=True)).numpy(), atol=1e-5)
    assert np.allclose(prob.max(axis=1), 1.0)


@pytest.mark.slow
def test_mirror_swap_tta_is_part_of_the_exported_graph(tmp_path) -> None:
    ckpt = make_checkpoint(tmp_path / "best", tta="mirror_swap", epoch=3)
    summary = export_onnx(ckpt, tmp_path / "tta.onnx")
    assert summary.max_abs_diff is not None and summary.max_abs_diff <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "tta.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(0, 255, (2, 3, SIZE, SIZE)).astype(np.float32)
    y = x[::-1].copy()
    present = np.array([True, True])

    def logits(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        feeds = {"left": left, "right": right, "left_present": present, "right_present": present}
        return session.run(None, feeds)[1]

    # the graph averages the given and the mirrored view: feeding the mirrored view gives the same
    mirrored = logits(y[..., ::-1].copy(), x[..., ::-1].copy())
    np.testing.assert_allclose(logits(x, y), mirrored, atol=1e-4)
