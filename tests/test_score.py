"""Tests of eyefuse.eval.score: every refusal of the submission checker names what is wrong, and a
submission written by `write_submission` scores exactly as the arrays it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.errors import DataError
from eyefuse.eval.metrics import OFFICIAL_F1_NOTE, official_score
from eyefuse.eval.score import (
    ScoreResult,
    format_score,
    read_predictions,
    read_truth,
    score_files,
    write_submission,
)

HEADER = "ID," + ",".join(ODIR_LABELS)
IDS = [937, 951, 952, 960, 980, 983, 1001, 1002, 1003, 1010, 1011, 1020]


def _truth_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = (rng.random((len(IDS), 8)) < 0.3).astype(int)
    labels[0] = [1, 0, 0, 0, 0, 0, 0, 0]
    labels[1] = [0, 1, 1, 1, 1, 1, 1, 1]
    frame = pd.DataFrame(labels, columns=list(ODIR_LABELS))
    frame.insert(0, "ID", IDS)
    frame.insert(1, "Patient Age", 60)
    frame.insert(2, "Left-Diagnostic Keywords", "normal fundus")
    return frame


@pytest.fixture
def truth_xlsx(tmp_path: Path) -> Path:
    path = tmp_path / "off-site test annotation (English).xlsx"
    _truth_frame().to_excel(path, index=False)
    return path


def _prob(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((len(IDS), 8))


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _rows(prob: np.ndarray, ids: list[int] = IDS) -> list[str]:
    return [f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in zip(ids, prob, strict=True)]


def test_round_trip_scores_exactly_as_the_arrays(tmp_path: Path, truth_xlsx: Path) -> None:
    prob = _prob()
    prob[0, 0] = np.nextafter(0.5, 1.0)  # must stay above 0.5 through the file
    prob[1, 1] = 0.5
    sub = write_submission(tmp_path / "team_ODIR.csv", IDS, prob)
    ids, back = read_predictions(sub)
    assert ids == [str(i) for i in IDS]
    np.testing.assert_array_equal(back, prob)
    result = score_files(sub, truth_xlsx)
    expected = official_score(_truth_frame()[list(ODIR_LABELS)].to_numpy(), prob)
    assert result.to_dict() == {**expected, "n_patients": len(IDS)}
    assert sub.read_text().splitlines()[0] == HEADER
    assert all(len(v.split(".")[1]) >= 6 for v in sub.read_text().splitlines()[2].split(",")[1:])


def test_csv_truth_and_float_ids(tmp_path: Path) -> None:
    frame = _truth_frame()
    frame["ID"] = frame["ID"].astype(float)
    truth = tmp_path / "truth.csv"
    frame.to_csv(truth, index=False)
    table = read_truth(truth)
    assert table.ids[0] == "937" and table.labels.shape == (len(IDS), 8)
    sub = write_submission(tmp_path / "sub.csv", IDS, _prob())
    assert score_files(sub, truth).n_patients == len(IDS)


def test_format_score_text_and_json(tmp_path: Path, truth_xlsx: Path) -> None:
    result = score_files(write_submission(tmp_path / "s.csv", IDS, _prob()), truth_xlsx)
    text = format_score(result)
    assert OFFICIAL_F1_NOTE in text and f"{result.final:.4f}" in text and "kappa" in text
    payload = json.loads(format_score(result, as_json=True))
    assert set(payload) == {"kappa", "f1", "auc", "final", "n_patients"}
    assert payload["final"] == result.final
    plain = ScoreResult(kappa=0.5, f1=0.9, auc=0.9, final=0.7666, n_patients=3)
    assert "0.7666" in format_score(plain)


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ("ID,N,D,X,C,A,H,M,O", "unexpected column 'X' at position 4: expected 'G'"),
        ("ID,D,N,G,C,A,H,M,O", "column 'D' at position 2 is out of order: expected 'N'"),
        ("ID,N,D,G,C,A,H,M,O,extra", "extra column(s) 'extra' from position 10"),
        ("ID,N,D,G,C,A,H,M", "missing column(s) O from position 9"),
        ("Id,N,D,G,C,A,H,M,O", "unexpected column 'Id' at position 1"),
    ],
)
def test_wrong_header_is_refused(tmp_path: Path, truth_xlsx: Path, header: str, needle: str) -> None:
    n = len(header.split(",")) - 1
    rows = [f"{i}," + ",".join(["0.1"] * n) for i in IDS]
    sub = _write_csv(tmp_path / "s.csv", header, rows)
    with pytest.raises(DataError) as err:
        score_files(sub, truth_xlsx)
    assert needle in str(err.value) and "row 1" in str(err.value)


def _refusal(tmp_path: Path, truth: Path, rows: list[str]) -> str:
    sub = _write_csv(tmp_path / "s.csv", HEADER, rows)
    with pytest.raises(DataError) as err:
        score_files(sub, truth)
    return str(err.value)


def test_row_out_of_order_is_refused(tmp_path: Path, truth_xlsx: Path) -> None:
    ids = list(IDS)
    ids[2], ids[3] = ids[3], ids[2]
    msg = _refusal(tmp_path, truth_xlsx, _rows(_prob(), ids))
    assert "row 4" in msg and "patient 960 is out of order" in msg and "patient 952 here" in msg


def test_missing_patients_are_named(tmp_path: Path, truth_xlsx: Path) -> None:
    msg = _refusal(tmp_path, truth_xlsx, _rows(_prob()[:-2], IDS[:-2]))
    assert "2 patient(s) of the truth file missing: 1011, 1020" in msg


def test_extra_patient_is_named(tmp_path: Path, truth_xlsx: Path) -> None:
    rows = [*_rows(_prob()), "4242," + ",".join(["0.2"] * 8)]
    msg = _refusal(tmp_path, truth_xlsx, rows)
    assert "not in the truth file" in msg and f"4242 (row {len(IDS) + 2})" in msg


def test_duplicate_id_is_refused(tmp_path: Path, truth_xlsx: Path) -> None:
    rows = _rows(_prob())
    rows[5] = rows[4]
    msg = _refusal(tmp_path, truth_xlsx, rows)
    assert "patient 980 appears twice (rows 6 and 7)" in msg


@pytest.mark.parametrize(
    ("value", "needle"),
    [("1.5", "value 1.5 is outside [0, 1]"), ("abc", "'abc' is not a number"), ("nan", "not a finite")],
)
def test_bad_values_name_row_and_column(tmp_path: Path, truth_xlsx: Path, value: str, needle: str) -> None:
    rows = _rows(_prob())
    cells = rows[3].split(",")
    cells[5] = value  # column A
    rows[3] = ",".join(cells)
    msg = _refusal(tmp_path, truth_xlsx, rows)
    assert needle in msg and "row 5" in msg and "column 'A'" in msg


def test_short_row_is_refused(tmp_path: Path, truth_xlsx: Path) -> None:
    rows = _rows(_prob())
    rows[0] = rows[0].rsplit(",", 1)[0]
    assert "8 value(s) where the header has 9" in _refusal(tmp_path, truth_xlsx, rows)


def test_per_image_truth_is_refused(tmp_path: Path) -> None:
    frame = _truth_frame()
    frame["filename"] = [f"{i}_left.jpg" for i in IDS]
    path = tmp_path / "full_df.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="one row per image"):
        read_truth(path)


def test_bad_truth_files_are_refused(tmp_path: Path) -> None:
    frame = _truth_frame()
    frame.loc[3, "G"] = 2
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 5, column 'G': label must be 0 or 1"):
        read_truth(path)
    frame = _truth_frame()
    frame.loc[4, "ID"] = IDS[0]
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"patient 937 appears twice \(rows 2 and 6\)"):
        read_truth(path)
    with pytest.raises(DataError, match="missing column"):
        _truth_frame().drop(columns=["H"]).to_csv(path, index=False)
        read_truth(path)
    with pytest.raises(DataError, match="not found"):
        read_truth(tmp_path / "nope.xlsx")


def test_write_submission_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        write_submission(tmp_path / "s.csv", IDS, _prob() * 2)
    with pytest.raises(DataError, match="appears more than once"):
        write_submission(tmp_path / "s.csv", [1, 1, *IDS[2:]], _prob())
    with pytest.raises(DataError, match="probabilities"):
        write_submission(tmp_path / "s.csv", IDS[:3], _prob())
    assert not (tmp_path / "s.csv").exists()


def test_truth_with_chinese_headers_in_an_xlsx_named_xls(tmp_path: Path, truth_xlsx: Path) -> None:
    # As the authors publish off_gt.xls: Chinese headers (编号 for ID), Chinese keywords, xlsx content.
    frame = _truth_frame().rename(columns={"ID": "编号", "Patient Age": "病人年龄"})
    frame = frame.rename(columns={"Left-Diagnostic Keywords": "左眼诊断关键词"})
    frame["左眼诊断关键词"] = "糖尿病视网膜病变2期,激光斑 "
    xlsx = tmp_path / "gt.xlsx"
    frame.to_excel(xlsx, index=False)
    path = xlsx.rename(tmp_path / "off_gt.xls")
    table = read_truth(path)
    english = read_truth(truth_xlsx)
    assert table.ids == [str(i) for i in IDS]
    np.testing.assert_array_equal(table.labels, english.labels)
    sub = write_submission(tmp_path / "s.csv", IDS, _prob())
    assert score_files(sub, path).final == score_files(sub, truth_xlsx).final


def test_truth_csv_named_xls_and_old_binary_xls(tmp_path: Path) -> None:
    path = tmp_path / "truth.xls"
    _truth_frame().to_csv(path, index=False)
    assert read_truth(path).ids == [str(i) for i in IDS]
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512)
    with pytest.raises(DataError, match=r"truth\.xls: an old binary Excel"):
        read_truth(path)
