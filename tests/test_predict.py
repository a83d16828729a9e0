"""Prediction from a checkpoint: pairs, CSV and folder inputs, missing and corrupt eyes, stored
thresholds and temperatures, JSON and official-CSV outputs (tiny random ResNet, 64 px, CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eyefuse import ODIR_LABELS
from eyefuse.config import Config
from eyefuse.data.preprocess import preprocess_image
from eyefuse.errors import CheckpointError, ConfigError, DataError
from eyefuse.models import build_model
from eyefuse.models.checkpoint import CheckpointMeta, calibrated_probabilities
from eyefuse.models.inputs import normalize
from eyefuse.serve.pairs import pairs_from_csv, pairs_from_dir
from eyefuse.serve.predict import PatientPrediction, Predictor, run_predict, write_predictions
from eyefuse.train.checkpoint import update_meta
from helpers import SIZE, draw_eye, make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best")


@pytest.fixture(scope="module")
def predictor(ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("photos")
    corrupt = d / "corrupt.jpg"
    corrupt.write_text("this is not a JPEG")
    return {
        "left": draw_eye(d / "7_left.jpg"),
        "right": draw_eye(d / "7_right.jpg", colour=(30, 90, 190), spot=-12),
        "corrupt": corrupt,
        "missing": d / "nothere.jpg",
    }


def reference_probabilities(predictor: Predictor, left: Path | None, right: Path | None) -> np.ndarray:
    """The model run by hand: preprocess, normalise, forward, sigmoid (no temperatures)."""
    model = predictor.model
    batch, present = [], []
    for src in (left, right):
        if src is None:
            img = np.zeros((SIZE, SIZE, 3), np.uint8)
        else:
            img, _ = preprocess_image(src, predictor.preprocess)
        batch.append(normalize(torch.from_numpy(img.transpose(2, 0, 1).copy())[None].float()))
        present.append(torch.tensor([src is not None]))
    with torch.no_grad():
        logits = model(batch[0], batch[1], present[0], present[1])["logits"]
    return torch.sigmoid(logits)[0].numpy()


def test_pair_prediction_matches_the_model_run_by_hand(predictor, photos) -> None:
    (pred,) = predictor.predict_pairs([("7", photos["left"], photos["right"])])
    expected = reference_probabilities(predictor, photos["left"], photos["right"])
    got = np.array([pred.probabilities[k] for k in ODIR_LABELS])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert pred.labels == [k for k in ODIR_LABELS if pred.probabilities[k] > 0.5]
    assert pred.thresholds == dict.fromkeys(ODIR_LABELS, 0.5)
    assert not pred.failed and pred.warnings == []
    assert json.loads(json.dumps(pred.to_dict()))["id"] == "7"
    # the file's bytes give the same result as its path
    (from_bytes,) = predictor.predict_pairs(
        [("7", photos["left"].read_bytes(), photos["right"].read_bytes())]
    )
    assert from_bytes.probabilities == pytest.approx(pred.probabilities, abs=1e-6)


def test_missing_and_corrupt_eyes_warn_and_both_bad_fails(predictor, photos) -> None:
    pairs = [
        ("a", photos["left"], None),
        ("b", photos["left"], photos["corrupt"]),
        ("c", photos["corrupt"], photos["missing"]),
        ("d", photos["left"], photos["right"]),
    ]
    a, b, c, d = predictor.predict_pairs(pairs, batch_size=3)
    one_eye = reference_probabilities(predictor, photos["left"], None)
    for p in (a, b):
        assert not p.failed
        np.testing.assert_allclose([p.probabilities[k] for k in ODIR_LABELS], one_eye, atol=1e-6)
        assert len(p.warnings) == 1 and "predicted from the left eye only" in p.warnings[0]
    assert "right eye: no image given" in a.warnings[0]
    assert str(photos["corrupt"]) in b.warnings[0] and "not an image" in b.warnings[0]
    assert c.failed and c.probabilities == {} and c.labels == []
    assert (
        str(photos["corrupt"]) in c.error
        and str(photos["missing"]) in c.error
        and "file not found" in c.error
    )
    assert not d.failed and d.warnings == []  # the patients after a failure go on


def test_stored_thresholds_and_temperatures_are_applied(tmp_path, predictor, photos) -> None:
    thresholds = [0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    temperatures = [2.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    ckpt = make_checkpoint(tmp_path / "calibrated", thresholds=thresholds, temperatures=temperatures)
    (pred,) = Predictor.from_checkpoint(ckpt).predict_pairs([("7", photos["left"], photos["right"])])
    assert "N" in pred.labels and "D" not in pred.labels  # threshold 0 -> always; 1 -> never
    assert pred.thresholds["N"] == 0.0 and pred.thresholds["D"] == 1.0
    raw = reference_probabilities(predictor, photos["left"], photos["right"])
    logit = np.log(raw / (1 - raw))
    expected = 1 / (1 + np.exp(-logit / np.array(temperatures)))
    np.testing.assert_allclose([pred.probabilities[k] for k in ODIR_LABELS], expected, atol=1e-5)
    assert pred.probabilities["N"] != pytest.approx(raw[0], abs=1e-4)


def test_calibrated_probabilities_softmax_uses_one_temperature_and_rescales() -> None:
    cfg = Config().model
    cfg.backbone, cfg.pretrained, cfg.head, cfg.fusion = "resnet10t", False, "softmax", "concat"
    model = build_model(cfg, ODIR_LABELS)
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 1.0, 0.2, -0.3, 0.9]])
    labels = list(ODIR_LABELS)
    meta = CheckpointMeta.from_dict({"label_names": labels, "head": "softmax", "temperatures": [2.5]})
    got = calibrated_probabilities(logits, meta.head, meta.temperature_array())
    soft = torch.softmax(logits / 2.5, dim=-1)
    torch.testing.assert_close(got, soft / soft.max())
    plain = CheckpointMeta.from_dict({"label_names": labels, "head": "softmax", "temperatures": None})
    uncalibrated = calibrated_probabilities(logits, plain.head, plain.temperature_array())
    torch.testing.assert_close(uncalibrated, model.probabilities(logits))
    with pytest.raises(CheckpointError, match="one shared temperature"):
        CheckpointMeta.from_dict({"label_names": labels, "head": "softmax", "temperatures": [1.0, 2.0]})


def test_invalid_stored_calibration_is_refused(tmp_path) -> None:
    ckpt = make_checkpoint(tmp_path / "bad")
    update_meta(ckpt, temperatures=[1.0] * 7 + [0.0])
    with pytest.raises(CheckpointError, match="finite and positive"):
        Predictor.from_checkpoint(ckpt)
    update_meta(ckpt, temperatures=None, thresholds=[0.5] * 5)
    with pytest.raises(CheckpointError, match="expected 8 stored thresholds"):
        Predictor.from_checkpoint(ckpt)


def test_csv_input_relative_paths_and_json_output(tmp_path, ckpt, photos) -> None:
    (tmp_path / "imgs").mkdir()
    draw_eye(tmp_path / "imgs" / "L.png")
    table = tmp_path / "pairs.csv"
    table.write_text(
        "patient_id,left,right\n"
        f"p1,imgs/L.png,{photos['right']}\n"  # relative to the CSV's folder, and absolute
        "p2,,imgs/L.png\n"  # empty cell: missing eye
        "\n"
        "p3,imgs/none.jpg,\n",  # neither eye usable: failed, the others go on
        encoding="utf-8",
    )
    pairs = pairs_from_csv(table)
    assert [p[0] for p in pairs] == ["p1", "p2", "p3"]
    assert pairs[0][1] == tmp_path / "imgs" / "L.png" and pairs[1][1] is None
    summary = run_predict(ckpt, csv=table, out=tmp_path / "out.json", progress=False)
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["summary"] == {"patients": 3, "predicted": 2, "with_warnings": 1, "failed": 1}
    assert [p["id"] for p in doc["predictions"]] == ["p1", "p2", "p3"]
    assert doc["predictions"][2]["failed"] and "none.jpg" in doc["predictions"][2]["error"]
    assert doc["model"]["label_names"] == list(ODIR_LABELS) and doc["model"]["preprocess"]["size"] == SIZE
    text = str(summary)
    assert "3 patients: 2 predicted (1 with warnings), 1 failed" in text and "out.json" in text


@pytest.mark.parametrize(
    ("content", "match", "row", "column"),
    [
        ("patient_id,left\n1,a.jpg\n", "missing column 'right'", 1, "right"),
        ("patient_id,left,right,age\n1,a.jpg,b.jpg,3\n", "unexpected column 'age'", 1, "age"),
        ("patient_id,left,right\n1,a.jpg,b.jpg\n1,c.jpg,d.jpg\n", "appears twice", 3, "patient_id"),
        ("patient_id,left,right\n1,a.jpg,b.jpg\n ,c.jpg,d.jpg\n", "empty patient ID", 3, "patient_id"),
        ("patient_id,left,right\n1\n", "1 value", 2, None),
        ("patient_id,left,right\n", "no patient rows", None, None),
    ],
)
def test_csv_errors_name_row_and_column(tmp_path, content, match, row, column) -> None:
    table = tmp_path / "bad.csv"
    table.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as info:
        pairs_from_csv(table)
    assert info.value.row == row and info.value.column == column and str(table) in str(info.value)


def test_folder_input_official_csv_output(tmp_path, ckpt, photos) -> None:
    folder = tmp_path / "dir"
    draw_eye(folder / "10_left.jpg")
    draw_eye(folder / "10_right.JPEG", spot=-12)
    draw_eye(folder / "2_left.png")  # one eye only: predicted from it, with a warning
    (folder / "3_left.jpg").write_bytes(photos["corrupt"].read_bytes())  # the only eye is corrupt
    (folder / "notes.txt").write_text("not an image")
    (folder / "10_middle.jpg").write_bytes(b"")
    (folder / "sub").mkdir()
    inputs = pairs_from_dir(folder)
    assert [p[0] for p in inputs] == ["2", "3", "10"]  # numeric order
    assert inputs[2][2] == folder / "10_right.JPEG" and inputs[0][2] is None
    assert sorted(inputs.ignored) == ["10_middle.jpg", "notes.txt", "sub/"]
    out = tmp_path / "submission.csv"
    summary = run_predict(ckpt, directory=folder, out=out, progress=False)
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["ID", *ODIR_LABELS]
    assert [r[0] for r in rows[1:]] == ["2", "10"]  # the failed patient is omitted
    assert all(0.0 <= float(v) <= 1.0 for r in rows[1:] for v in r[1:])
    by_id = {p.id: p for p in summary.predictions}
    assert float(rows[2][1]) == pytest.approx(by_id["10"].probabilities["N"], abs=1e-6)
    text = str(summary)
    assert "3 entries" in text and "notes.txt" in text  # ignored files are reported
    assert "1 failed patient(s) omitted (3)" in text
    assert "patient 2: right eye: no image given" in text


def test_duplicate_eye_files_in_folder_are_an_error(tmp_path) -> None:
    draw_eye(tmp_path / "1_left.jpg")
    draw_eye(tmp_path / "1_left.png")
    with pytest.raises(DataError, match="two left-eye files"):
        pairs_from_dir(tmp_path)


def test_single_pair_summary_from_run_folder(ckpt, photos) -> None:
    summary = run_predict(ckpt.parent, left=photos["left"], right=photos["missing"], progress=False)
    (pred,) = summary.predictions
    assert pred.id == "7" and summary.single
    text = str(summary)
    for k in ODIR_LABELS:
        assert f"\n  {k} " in text
    assert "predicted labels:" in text and "file not found" in text and str(ckpt) in text


def test_run_predict_option_errors(ckpt, photos, tmp_path) -> None:
    with pytest.raises(ConfigError, match="exactly one input"):
        run_predict(ckpt)
    with pytest.raises(ConfigError, match="--csv, --dir"):
        run_predict(ckpt, csv=tmp_path / "a.csv", directory=tmp_path)
    with pytest.raises(ConfigError, match=r"--out .*\.json or \.csv"):
        run_predict(ckpt, left=photos["left"], out=tmp_path / "x.txt")
    with pytest.raises(ConfigError, match="--batch-size"):
        Predictor.from_checkpoint(ckpt).predict_pairs([("1", photos["left"], None)], batch_size=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        run_predict(tmp_path / "nowhere", left=photos["left"])


def test_write_predictions_counts_failed_patients(tmp_path) -> None:
    ok = PatientPrediction("5", dict(zip(ODIR_LABELS, np.linspace(0, 1, 8), strict=True)), ["O"])
    bad = PatientPrediction("6", failed=True, error="no usable eye")
    result = write_predictions([ok, bad], tmp_path / "p.csv", label_names=ODIR_LABELS)
    assert result.rows == 1 and result.omitted == ["6"]
    assert (tmp_path / "p.csv").read_text().splitlines()[1].startswith("5,0.0")
    assert list(tmp_path.iterdir()) == [tmp_path / "p.csv"]  # no temporary file left behind
