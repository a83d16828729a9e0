"""Grad-CAM per eye: output files and shapes, one forward and one backward per label for both eyes,
joint normalisation, label choice and errors, the pointing game and lesion-mask mapping."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eyefuse import ODIR_LABELS
from eyefuse.config import Config, PreprocessConfig
from eyefuse.data.preprocess import preprocess_image
from eyefuse.errors import CheckpointError, ConfigError
from eyefuse.models import build_model
from eyefuse.serve.explain import (
    MIN_PANEL,
    backward_maps,
    capture_previous_stage,
    explain_pair,
    lesion_mask,
    mask_to_preprocessed,
    normalize_jointly,
    pointing_game,
    previous_stage_maps,
    run_explain,
)
from eyefuse.serve.predict import Predictor
from helpers import SIZE, draw_eye, make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best", attention="cbam", fusion="concat")


@pytest.fixture(scope="module")
def eyes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("eyes")
    return draw_eye(d / "3_left.jpg"), draw_eye(d / "3_right.jpg", spot=-14)


def test_run_explain_writes_one_png_per_label_attention_and_json(tmp_path, ckpt, eyes) -> None:
    steps: list[str] = []
    summary = run_explain(ckpt, eyes[0], eyes[1], tmp_path / "out", labels="D,G", log=steps.append)
    assert len(steps) == 3 and "Grad-CAM" in steps[1] and "2 label(s)" in steps[2]  # a line per step
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["D.png", "G.png", "attention.png", "explanation.json"]
    for name in ("D.png", "G.png", "attention.png"):
        img = cv2.imread(str(tmp_path / "out" / name))
        # heading band + title band + panel; two panels and a gap side by side
        assert img.shape == (40 + 32 + MIN_PANEL, 2 * MIN_PANEL + 8, 3)
        assert img[72:, :MIN_PANEL].std() > 0 and img[72:, MIN_PANEL + 8 :].std() > 0
    doc = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert doc["labels"] == ["D", "G"] and doc["patient"] == "3"
    assert doc["files"] == {"D": "D.png", "G": "G.png", "attention": "attention.png"}
    assert set(doc["probabilities"]) == set(ODIR_LABELS) and doc["attention"]["module"] == "attn.spatial"
    assert doc["normalization"].startswith("joint")  # one spelling in public names
    expl = summary.explanation
    for label in ("D", "G"):
        left, right = expl.cams[label]["left"], expl.cams[label]["right"]
        assert left.shape == right.shape == (SIZE, SIZE) and left.dtype == np.float32
        assert min(left.min(), right.min()) >= 0.0
        assert max(left.max(), right.max()) == pytest.approx(1.0)  # joint normalisation
    assert expl.attention["left"].shape == (SIZE, SIZE)
    assert "D: p = " in str(summary)


def test_one_forward_and_one_backward_per_label_give_both_eyes(monkeypatch, ckpt, eyes) -> None:
    predictor = Predictor.from_checkpoint(ckpt)
    forwards: list[int] = []
    handle = predictor.model.register_forward_hook(lambda *args: forwards.append(1))
    backward_inputs: list[int] = []
    real_grad = torch.autograd.grad

    def counting_grad(outputs, inputs, *args, **kwargs):
        backward_inputs.append(len(inputs))
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    try:
        expl = explain_pair(predictor, eyes[0], eyes[1], labels=["N", "C", "O"])
    finally:
        handle.remove()
    assert len(forwards) == 1
    assert backward_inputs == [2, 2, 2]  # one backward per label, each for both eyes' features
    for label in ("N", "C", "O"):
        assert all(expl.cams[label][side] is not None for side in ("left", "right"))
    # the two eyes look different, so their maps differ
    assert not np.allclose(expl.cams["N"]["left"], expl.cams["N"]["right"])


def test_absent_eye_has_no_map_and_default_label_is_top1(tmp_path, eyes) -> None:
    ckpt = make_checkpoint(
        tmp_path / "strict", attention="cbam", fusion="concat", thresholds=[1.0] * 8
    )  # nothing is ever positive
    predictor = Predictor.from_checkpoint(ckpt)
    expl = explain_pair(predictor, eyes[0], None)
    top = max(expl.probabilities, key=expl.probabilities.get)
    assert expl.labels == [top] and expl.predicted == []
    assert expl.cams[top]["right"] is None and expl.cams[top]["left"].max() == pytest.approx(1.0)
    assert expl.warnings and "right eye: no image given" in expl.warnings[0]
    assert expl.attention["right"] is None


def test_default_labels_are_the_predicted_ones(tmp_path, eyes) -> None:
    thresholds = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # D and C always positive
    predictor = Predictor.from_checkpoint(
        make_checkpoint(tmp_path / "dc", attention="cbam", fusion="concat", thresholds=thresholds)
    )
    assert explain_pair(predictor, *eyes).labels == ["D", "C"]


def test_bare_model_with_preprocessed_arrays() -> None:
    cfg = Config().model
    cfg.backbone, cfg.pretrained, cfg.attention, cfg.fusion = "resnet10t", False, "none", "sum"
    model = build_model(cfg, ODIR_LABELS).eval()
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    right = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    expl = explain_pair(model, left, right, labels="A")
    assert expl.labels == ["A"] and expl.cams["A"]["left"].shape == (SIZE, SIZE)
    assert expl.attention == {} and expl.thresholds["A"] == 0.5


def _bare_model(shared: bool) -> torch.nn.Module:
    cfg = Config().model
    cfg.backbone, cfg.pretrained, cfg.attention, cfg.fusion = "resnet10t", False, "none", "sum"
    cfg.shared_backbone = shared
    torch.manual_seed(0)
    return build_model(cfg, ODIR_LABELS).eval()


@pytest.mark.parametrize("shared", [True, False])
def test_previous_stage_maps_are_twice_as_fine_and_keep_the_eyes_apart(shared: bool) -> None:
    model = _bare_model(shared)
    rng = np.random.default_rng(1)
    left = torch.from_numpy(rng.normal(size=(1, 3, SIZE, SIZE)).astype(np.float32))
    right = torch.from_numpy(rng.normal(size=(1, 3, SIZE, SIZE)).astype(np.float32))
    present = torch.tensor([True])

    labels = list(range(len(ODIR_LABELS)))

    def maps(a: torch.Tensor, b: torch.Tensor) -> tuple[dict, dict]:
        with capture_previous_stage(model) as captured, torch.enable_grad():
            out = model(a, b, present, present)
            fine = previous_stage_maps(model, captured, out["logits"], labels)
        assert len(captured) == (1 if shared else 2)  # one forward pass, hooked
        with torch.enable_grad():
            coarse = backward_maps(model(a, b, present, present, return_features=True), labels)
        return fine, coarse

    fine, coarse = maps(left, right)
    for k in labels:
        assert fine[k][0].shape == (1, SIZE // 16, SIZE // 16)
        assert coarse[k][0].shape == (1, SIZE // 32, SIZE // 32)
    # some label has evidence (random weights: ReLU zeroes others), and the eyes' maps differ
    assert any(fine[k][0].max() > 0 and not torch.allclose(fine[k][0], fine[k][1]) for k in labels)
    # The right eye absent: its features are replaced by the left's, so only the left map can be hot.
    with capture_previous_stage(model) as captured, torch.enable_grad():
        out = model(left, right, present, torch.tensor([False]))
        one_eyed = previous_stage_maps(model, captured, out["logits"], labels)
    assert all(float(one_eyed[k][1].abs().max()) == 0.0 for k in labels)
    assert any(float(one_eyed[k][0].max()) > 0.0 for k in labels)
    if shared:  # `sum` fusion is symmetric: swapping the eyes swaps their maps exactly
        swapped, _ = maps(right, left)
        for k in labels:
            torch.testing.assert_close(swapped[k][0], fine[k][1])
            torch.testing.assert_close(swapped[k][1], fine[k][0])


def test_explain_on_the_previous_stage(tmp_path, ckpt, eyes) -> None:
    summary = run_explain(ckpt, eyes[0], eyes[1], tmp_path / "fine", labels="D", layer="previous")
    doc = json.loads((tmp_path / "fine" / "explanation.json").read_text())
    assert doc["layer"] == "previous" and "stage before the last" in doc["method"]
    cams = summary.explanation.cams["D"]
    assert cams["left"].shape == (SIZE, SIZE)
    assert max(cams["left"].max(), cams["right"].max()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="layer must be one of last, previous"):
        explain_pair(Predictor.from_checkpoint(ckpt), eyes[0], eyes[1], labels="D", layer="first")


def test_label_and_checkpoint_errors(tmp_path, ckpt, eyes) -> None:
    with pytest.raises(ConfigError, match="unknown label.*X.*N, D, G"):
        run_explain(ckpt, eyes[0], eyes[1], tmp_path / "o", labels="D,X")
    assert not (tmp_path / "o").exists()
    with pytest.raises(CheckpointError, match="needs the PyTorch checkpoint"):
        run_explain(tmp_path / "model.onnx", eyes[0], eyes[1], tmp_path / "o")
    with pytest.raises(ConfigError, match="at least one photograph"):
        run_explain(ckpt, None, None, tmp_path / "o")


def test_normalize_jointly_keeps_the_ratio_between_eyes() -> None:
    left, right = np.array([[0.0, 2.0]]), np.array([[1.0, 4.0]])
    a, b = normalize_jointly([left, right])
    np.testing.assert_allclose(a, [[0.0, 0.5]])
    np.testing.assert_allclose(b, [[0.25, 1.0]])
    zero, none = normalize_jointly([np.zeros((2, 2)), None])
    assert none is None and not zero.any()


def test_pointing_game_on_hand_made_maps() -> None:
    cam = np.zeros((100, 100), np.float32)
    cam[30, 40] = 1.0
    mask = np.zeros((100, 100), bool)
    mask[28:33, 38:43] = True
    assert pointing_game(cam, mask)
    far = np.zeros_like(mask)
    far[80:90, 80:90] = True
    assert not pointing_game(cam, far)
    near = np.zeros_like(mask)
    near[30, 50:55] = True  # 10 px from the peak
    assert pointing_game(cam, near, tolerance=15)
    assert not pointing_game(cam, near, tolerance=5)
    with pytest.raises(ValueError, match="empty"):
        pointing_game(cam, np.zeros_like(mask))
    with pytest.raises(ValueError, match="one shape"):
        pointing_game(cam, mask[:50])


def test_lesion_mask_bits_follow_the_label_order() -> None:
    mask = np.array([[2 | 32, 4], [0, 128]], np.uint8)
    np.testing.assert_array_equal(lesion_mask(mask, "D"), [[True, False], [False, False]])
    np.testing.assert_array_equal(lesion_mask(mask, "H"), [[True, False], [False, False]])
    np.testing.assert_array_equal(lesion_mask(mask, "G"), [[False, True], [False, False]])
    np.testing.assert_array_equal(lesion_mask(mask, "O"), [[False, False], [False, True]])
    with pytest.raises(ConfigError, match="unknown label"):
        lesion_mask(mask, "Z")


def test_mask_maps_into_the_preprocessed_frame() -> None:
    # An off-centre field of view on a wide frame, a white lesion drawn into the photograph and
    # the same lesion as a mask: after mapping, the mask must cover the lesion's preprocessed pixels.
    img = np.zeros((180, 260, 3), np.uint8)
    cv2.circle(img, (150, 92), 80, (40, 110, 210), -1)
    mask = np.zeros((180, 260), np.uint8)
    cv2.circle(mask, (185, 70), 12, 2, -1)  # label D
    img[mask > 0] = (255, 255, 255)
    cfg = PreprocessConfig(size=SIZE, enhance="none")
    out, fov = preprocess_image(cv2.imencode(".png", img[..., ::-1])[1].tobytes(), cfg)
    mapped = mask_to_preprocessed(lesion_mask(mask, "D"), fov, cfg)
    assert mapped.shape == (SIZE, SIZE) and mapped.dtype == bool
    lesion = out.min(axis=2) > 200  # the white spot in the preprocessed image
    iou = (lesion & mapped).sum() / (lesion | mapped).sum()
    assert iou > 0.6
    assert pointing_game(lesion.astype(np.float32), mapped, tolerance=0)
