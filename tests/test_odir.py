"""Dataset readers: every format, format detection, malformed files, problem images, keyword report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eyefuse import ODIR_LABELS
from eyefuse.data.dataset import PairDataset
from eyefuse.data.odir import CHALLENGE_XLSX, ODIR_COLUMNS, PROBLEM_IMAGES, keyword_report, load_dataset
from eyefuse.errors import ConfigError, DataError


def letters(labels) -> str:
    return "".join(lab for lab, v in zip(ODIR_LABELS, labels, strict=True) if v)


def by_id(ds) -> dict:
    return {p.id: p for p in ds}


# --- challenge -------------------------------------------------------------------------------------


def test_challenge_folder(tmp_path, make_challenge, odir_rows):
    root = make_challenge(tmp_path)
    ds = load_dataset(root)
    assert ds.format == "challenge" and not ds.synthetic
    assert ds.label_names == ODIR_LABELS
    assert ds.sources() == ["train"]
    assert ds.annotation_files == [root / CHALLENGE_XLSX]
    assert [p.id for p in ds] == [str(r["ID"]) for r in odir_rows]
    p = by_id(ds)
    assert p["0"].age == 45 and p["0"].sex == "Male"
    assert p["0"].left == root / "ODIR-5K_Training_Dataset" / "0_left.jpg"
    assert p["0"].eye_path("right") == root / "ODIR-5K_Training_Dataset" / "0_right.jpg"
    assert p["0"].labels.dtype == np.uint8 and p["0"].labels.shape == (8,)
    assert letters(p["3"].labels) == "CH"
    assert p["2"].left_keywords == ("suspected glaucoma", "lens dust")
    assert letters(p["2"].left_labels) == "G"
    assert letters(p["1"].right_labels) == "N"
    assert p["7"].right_keywords == () and p["7"].right_labels is None


def test_non_fundus_eye_has_no_path_and_is_noted(tmp_path, make_challenge):
    ds = load_dataset(make_challenge(tmp_path))
    p = by_id(ds)["6"]
    assert not p.left_fundus and p.right_fundus
    assert p.left is not None and p.eye_path("left") is None
    assert p.left_labels is None
    assert p.usable
    assert any("6_left" in n and "not fundus" in n for n in ds.notes)


def test_challenge_xlsx_path_and_other_image_folders(tmp_path, make_challenge):
    for i, folder in enumerate(["Training Images", "images", "ODIR-5K/Training Images", "photos/all"]):
        root = make_challenge(tmp_path / str(i), image_dir=folder)
        ds = load_dataset(root / CHALLENGE_XLSX)
        assert ds.format == "challenge"
        assert ds[0].left == root / folder / "0_left.jpg", folder


def test_challenge_with_offsite_and_onsite(tmp_path, make_challenge, odir_row):
    off = [odir_row(100, "normal fundus", "glaucoma", "G"), odir_row(101, "cataract", "cataract", "C")]
    on = [odir_row(200, "normal fundus", "normal fundus", "N")]
    root = make_challenge(tmp_path, offsite_rows=off, onsite_rows=on)
    ds = load_dataset(root)
    assert ds.sources() == ["train", "offsite", "onsite"]
    assert len(ds.annotation_files) == 3
    test = by_id(ds.select("offsite"))
    assert set(test) == {"100", "101"}
    assert test["100"].right == root / "Off-site Test Set" / "Images" / "100_right.jpg"
    assert len(ds.select(["offsite", "onsite"])) == 3
    with pytest.raises(DataError, match="no patients with source val"):
        ds.select("val")


def test_synthetic_marker(tmp_path, make_challenge, odir_row):
    rows = [odir_row(2177, "normal fundus", "glaucoma", "G")]
    ds = load_dataset(make_challenge(tmp_path, rows, synthetic=True))
    assert ds.synthetic
    p = ds[0]
    assert not p.left_excluded and p.eye_path("left") is not None  # the problem list is not applied


def test_dataset_helpers(tmp_path, make_challenge):
    ds = load_dataset(make_challenge(tmp_path))
    m = ds.label_matrix()
    assert m.shape == (8, 8) and m.dtype == np.uint8
    assert m[:, ODIR_LABELS.index("N")].tolist() == [1, 0, 0, 0, 0, 0, 1, 0]
    assert "challenge dataset" in str(ds) and "8 patients" in str(ds)


# --- OIA-ODIR --------------------------------------------------------------------------------------


def make_oia(root: Path, write_table, write_jpeg, odir_row) -> Path:
    splits = {
        "Training Set": (
            "training annotation (English).xlsx",
            [odir_row(1, "glaucoma", "normal fundus", "G")],
        ),
        "Off-site Test Set": ("off-site test annotation (English).xlsx", [odir_row(2, "cataract", "", "C")]),
        "On-site Test Set": (
            "on-site test annotation (English).xlsx",
            [odir_row(3, "drusen", "drusen", "O")],
        ),
    }
    for folder, (name, rows) in splits.items():
        write_table(root / folder / "Annotation" / name, ODIR_COLUMNS, rows)
        # The release also ships a Chinese annotation; the English one must be chosen.
        write_table(root / folder / "Annotation" / name.replace("English", "Chinese"), ODIR_COLUMNS, [])
        for r in rows:
            write_jpeg(root / folder / "Images" / r["Left-Fundus"])
            write_jpeg(root / folder / "Images" / r["Right-Fundus"])
    return root


def test_oia_root_detection(tmp_path, write_table, write_jpeg, odir_row):
    root = make_oia(tmp_path / "OIA-ODIR", write_table, write_jpeg, odir_row)
    ds = load_dataset(root)
    assert ds.format == "oia"
    assert [(p.id, p.source) for p in ds] == [("1", "train"), ("2", "offsite"), ("3", "onsite")]
    assert all("English" in f.name for f in ds.annotation_files)
    assert ds[0].left == root / "Training Set" / "Images" / "1_left.jpg"
    # The archive's top folder: the release is found one level down.
    assert load_dataset(tmp_path).format == "oia"


def test_oia_one_split_folder_or_its_annotation(tmp_path, write_table, write_jpeg, odir_row):
    root = make_oia(tmp_path, write_table, write_jpeg, odir_row)
    ds = load_dataset(root / "Off-site Test Set")
    assert ds.format == "oia" and [(p.id, p.source) for p in ds] == [("2", "offsite")]
    ds = load_dataset(root / "On-site Test Set" / "Annotation" / "on-site test annotation (English).xlsx")
    assert ds.format == "oia" and [(p.id, p.source) for p in ds] == [("3", "onsite")]


# --- Kaggle full_df.csv ----------------------------------------------------------------------------

KAGGLE_EXTRA = ["filepath", "labels", "target", "filename"]


def kaggle_rows(odir_row) -> list[dict]:
    rows = []
    patients = [
        odir_row(0, "normal fundus", "normal fundus", "N"),
        odir_row(1, "cataract", "normal fundus", "C"),
        odir_row(2, "glaucoma", "lens dust", "G"),
    ]
    for p in patients:
        for side in ("Left", "Right"):
            if p["ID"] == 2 and side == "Right":
                continue  # Kaggle dropped some images: patient 2 has only its left row
            name = p[f"{side}-Fundus"]
            rows.append(
                {**p, "filepath": f"../input/{name}", "labels": "['N']", "target": "[1]", "filename": name}
            )
    return rows


def test_kaggle_dedup_and_preprocessed_images(tmp_path, write_table, write_jpeg, odir_row):
    rows = kaggle_rows(odir_row)
    write_table(tmp_path / "full_df.csv", [*ODIR_COLUMNS, *KAGGLE_EXTRA], rows)
    for r in rows:
        write_jpeg(tmp_path / "preprocessed_images" / r["filename"])
    ds = load_dataset(tmp_path)
    assert ds.format == "kaggle" and ds.sources() == ["train"]
    assert [p.id for p in ds] == ["0", "1", "2"]
    p = by_id(ds)
    assert letters(p["1"].labels) == "C"
    assert p["1"].right == tmp_path / "preprocessed_images" / "1_right.jpg"
    assert p["2"].right is None and p["2"].eye_path("left") is not None  # no row, no file: missing eye
    assert any("2_right" in n for n in ds.notes)


def test_kaggle_prefers_original_images(tmp_path, write_table, write_jpeg, odir_row):
    rows = kaggle_rows(odir_row)
    write_table(tmp_path / "full_df.csv", [*ODIR_COLUMNS, *KAGGLE_EXTRA], rows)
    for r in rows:
        write_jpeg(tmp_path / "preprocessed_images" / r["filename"])
    originals = tmp_path / "ODIR-5K" / "ODIR-5K" / "Training Images"
    for pid in range(3):
        write_jpeg(originals / f"{pid}_left.jpg")
        write_jpeg(originals / f"{pid}_right.jpg")
    ds = load_dataset(tmp_path / "full_df.csv")
    assert by_id(ds)["1"].left == originals / "1_left.jpg"
    assert by_id(ds)["2"].right == originals / "2_right.jpg"  # no row, but the original exists


def test_kaggle_rows_that_disagree(tmp_path, write_table, odir_row):
    rows = kaggle_rows(odir_row)
    rows[3]["D"] = 1  # second row of patient 1 (spreadsheet row 5) contradicts the first (row 4)
    path = write_table(tmp_path / "full_df.csv", [*ODIR_COLUMNS, *KAGGLE_EXTRA], rows)
    with pytest.raises(DataError, match=r"rows 4 and 5 of patient '1' disagree on 'D'") as e:
        load_dataset(path, check_images=False)
    assert e.value.row == 5 and e.value.column == "D" and e.value.file == path


def test_kaggle_filename_must_name_an_eye(tmp_path, write_table, odir_row):
    rows = kaggle_rows(odir_row)
    rows[0]["filename"] = "99_left.jpg"
    path = write_table(tmp_path / "full_df.csv", [*ODIR_COLUMNS, *KAGGLE_EXTRA], rows)
    with pytest.raises(DataError, match="neither Left-Fundus") as e:
        load_dataset(path, check_images=False)
    assert e.value.row == 2 and e.value.column == "filename"


# --- generic paired CSV ----------------------------------------------------------------------------


def test_paired_csv(tmp_path, write_table, write_jpeg):
    elsewhere = write_jpeg(tmp_path / "elsewhere" / "b_right.png.jpg")
    write_jpeg(tmp_path / "data" / "img" / "a_l.jpg")
    write_jpeg(tmp_path / "data" / "img" / "a_r.jpg")
    write_jpeg(tmp_path / "data" / "img" / "c_l.jpg")
    rows = [
        ["a", "img/a_l.jpg", "img/a_r.jpg", 1, 0],
        ["b", "", str(elsewhere), 0, 1],
        ["c", "img/c_l.jpg", "", 1, 1],
    ]
    write_table(tmp_path / "data" / "pairs.csv", ["patient_id", "left", "right", "dr", "amd"], rows)
    ds = load_dataset(tmp_path / "data")
    assert ds.format == "paired_csv" and ds.label_names == ("dr", "amd")
    p = by_id(ds)
    assert p["a"].left == tmp_path / "data" / "img" / "a_l.jpg"
    assert p["b"].left is None and p["b"].right == elsewhere
    assert p["c"].labels.tolist() == [1, 1]
    assert all(q.left_labels is None and q.right_labels is None and q.source == "all" for q in ds)
    assert keyword_report(ds).applicable is False


def test_paired_csv_errors(tmp_path, write_table):
    header = ["patient_id", "left", "right", "dr"]
    path = write_table(tmp_path / "a.csv", header, [["a", "", "", 1]])
    with pytest.raises(DataError, match="both eyes are empty") as e:
        load_dataset(path, check_images=False)
    assert e.value.row == 2
    path = write_table(tmp_path / "b.csv", header[:3], [["a", "x.jpg", "y.jpg"]])
    with pytest.raises(DataError, match="no label columns"):
        load_dataset(path, check_images=False)
    path = write_table(tmp_path / "c.csv", header, [["a", "x.jpg", "", 1], ["a", "y.jpg", "", 0]])
    with pytest.raises(DataError, match="rows 2 and 3"):
        load_dataset(path, check_images=False)
    path = write_table(tmp_path / "d.csv", header, [["a", "x.jpg", "", 1]])
    with pytest.raises(DataError, match=r"x\.jpg does not exist") as e:
        load_dataset(path)
    assert e.value.column == "left" and e.value.row == 2


# --- malformed annotations -------------------------------------------------------------------------


def challenge_with(tmp_path, make_challenge, odir_rows, changes: dict[int, dict]):
    return make_challenge(tmp_path, [dict(r, **changes.get(i, {})) for i, r in enumerate(odir_rows)])


def test_missing_column_names_expected_and_found(tmp_path, write_table, odir_rows):
    cols = [c for c in ODIR_COLUMNS if c != "G"]
    path = write_table(tmp_path / CHALLENGE_XLSX, cols, [{c: r[c] for c in cols} for r in odir_rows])
    with pytest.raises(DataError, match=r"missing column 'G'; expected columns: ID, .*; found: 'ID'") as e:
        load_dataset(path, check_images=False)
    assert e.value.column == "G" and e.value.row == 1


def test_wrong_column_name(tmp_path, write_table, odir_rows):
    cols = [c.replace("Left-Diagnostic Keywords", "Left-Diagnostic Keyword") for c in ODIR_COLUMNS]
    rows = [[r[c] for c in ODIR_COLUMNS] for r in odir_rows]
    path = write_table(tmp_path / CHALLENGE_XLSX, cols, rows)
    expected = r"missing column 'Left-Diagnostic Keywords'.*found: .*'Left-Diagnostic Keyword'"
    with pytest.raises(DataError, match=expected):
        load_dataset(path, check_images=False)


def test_duplicated_id_names_both_rows(tmp_path, make_challenge, odir_rows):
    root = challenge_with(tmp_path, make_challenge, odir_rows, {5: {"ID": 1}})
    with pytest.raises(DataError, match=r"patient ID '1' is duplicated: rows 3 and 7") as e:
        load_dataset(root)
    assert e.value.row == 7 and e.value.column == "ID"


@pytest.mark.parametrize(
    ("value", "message"),
    [(2, "is not 0 or 1"), (0.5, "is not 0 or 1"), ("x", "is not a number"), ("", "empty")],
)
def test_bad_label_value(tmp_path, make_challenge, odir_rows, value, message):
    root = challenge_with(tmp_path, make_challenge, odir_rows, {2: {"C": value}})
    with pytest.raises(DataError, match=message) as e:
        load_dataset(root)
    assert e.value.row == 4 and e.value.column == "C"
    assert CHALLENGE_XLSX in str(e.value) and "row 4" in str(e.value)


def test_missing_image(tmp_path, make_challenge):
    root = make_challenge(tmp_path)
    (root / "ODIR-5K_Training_Dataset" / "3_right.jpg").unlink()
    with pytest.raises(DataError, match=r"3_right\.jpg does not exist") as e:
        load_dataset(root)
    assert e.value.row == 5 and e.value.column == "Right-Fundus"
    assert len(load_dataset(root, check_images=False)) == 8


def test_no_image_folder(tmp_path, make_challenge):
    root = make_challenge(tmp_path, images=False)
    with pytest.raises(DataError, match="cannot find the images"):
        load_dataset(root)
    ds = load_dataset(root, check_images=False)
    assert any("image folder not found" in n for n in ds.notes)


def test_unreadable_and_empty_files(tmp_path):
    (tmp_path / CHALLENGE_XLSX).write_bytes(b"")
    with pytest.raises(DataError, match="file is empty"):
        load_dataset(tmp_path / CHALLENGE_XLSX)
    (tmp_path / CHALLENGE_XLSX).write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="cannot read spreadsheet"):
        load_dataset(tmp_path)
    (tmp_path / "x.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="unknown CSV format"):
        load_dataset(tmp_path / "x.csv")


def test_unknown_format_says_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unknown dataset format: looked for .*full_df\.csv"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_blank_rows_are_counted(tmp_path, write_table, odir_rows, write_jpeg):
    rows = [[r[c] for c in ODIR_COLUMNS] for r in odir_rows[:2]]
    rows.insert(1, [None] * len(ODIR_COLUMNS))
    path = write_table(tmp_path / "ann.csv", ODIR_COLUMNS, rows)
    ds = load_dataset(path, check_images=False)
    assert len(ds) == 2 and any("skipped 1 blank row" in n for n in ds.notes)


# --- problem images ------------------------------------------------------------------------------


def problem_rows(odir_row):
    return [
        odir_row(2174, "normal fundus", "cataract", "C"),
        odir_row(2177, "glaucoma", "glaucoma", "G"),
        odir_row(10, "normal fundus", "normal fundus", "N"),
    ]


def test_problem_images_excluded_by_default(tmp_path, make_challenge, odir_row):
    ds = load_dataset(make_challenge(tmp_path, problem_rows(odir_row)))
    p = by_id(ds)
    assert p["2174"].right_excluded and not p["2174"].left_excluded
    assert p["2174"].eye_path("right") is None and p["2174"].eye_path("left") is not None
    assert p["2177"].left_excluded and p["2177"].right_excluded and not p["2177"].usable
    assert [q.id for q in ds.unusable()] == ["2177"]
    assert any("3 known problem image(s) excluded" in n for n in ds.notes)
    assert any("no usable eye" in n and "2177" in n for n in ds.notes)
    assert len(PROBLEM_IMAGES) == 16


def test_problem_images_keep(tmp_path, make_challenge, odir_row):
    ds = load_dataset(make_challenge(tmp_path, problem_rows(odir_row)), problem_images="keep")
    assert all(q.usable and not q.left_excluded and not q.right_excluded for q in ds)
    with pytest.raises(ConfigError, match="problem_images"):
        load_dataset(tmp_path, problem_images="drop")


def test_problem_images_not_applied_to_paired_csv_or_test_sets(
    tmp_path, write_table, make_challenge, odir_row
):
    header = ["patient_id", "left", "right", "x"]
    path = write_table(tmp_path / "p" / "pairs.csv", header, [["2177", "a", "b", 1]])
    assert load_dataset(path, check_images=False)[0].usable
    root = make_challenge(tmp_path / "c", offsite_rows=[odir_row(2957, "glaucoma", "glaucoma", "G")])
    assert by_id(load_dataset(root).select("offsite"))["2957"].usable


# --- keyword report ------------------------------------------------------------------------------


def test_keyword_report_agrees_on_consistent_annotation(tmp_path, make_challenge):
    report = keyword_report(load_dataset(make_challenge(tmp_path)))
    assert report.checked == 8 and report.agreeing == 8 and report.agreement == 1.0
    assert report.non_fundus_eyes == 1 and not report.unknown_keywords
    assert "8 of 8 patients checked, 8 agree (100.0%)" in str(report)


def test_keyword_report_finds_disagreement_and_unknown_keywords(tmp_path, make_challenge, odir_rows):
    odir_rows[1]["H"] = 1  # annotation says DH, keywords say D
    odir_rows[4]["Left-Diagnostic Keywords"] = "purple spots\uff0cdrusen"
    report = keyword_report(load_dataset(make_challenge(tmp_path, odir_rows)))
    assert report.checked == 7 and report.agreeing == 6
    assert report.disagreeing == ["1"]
    assert report.label_mismatches["H"] == (0, 1)
    assert report.unknown_keywords == {"purple spots": 1} and report.patients_with_unknown == 1
    text = str(report)
    assert "disagreeing patients: 1" in text and "'purple spots' x1" in text


# --- the real files' shapes: Chinese headers and keywords, an xlsx named .xls, a split column ----

ZH_HEADER = [
    *("编号", "病人年龄", "病人性别", "左眼眼底图像", "右眼眼底图像", "左眼诊断关键词", "右眼诊断关键词"),
    *ODIR_LABELS,
]


def zh_rows() -> list[list]:
    """Rows as the authors' off_gt.xls writes them: ASCII commas, one full-width, trailing spaces."""

    def row(pid, sex, left, right, labels):
        return [pid, 60, sex, f"{pid}_left.jpg", f"{pid}_right.jpg", left, right] + [
            int(lab in labels) for lab in ODIR_LABELS
        ]

    return [
        row(937, "女", "高血压视网膜病变", "高血压视网膜病变,可疑糖尿病视网膜病变", "DH"),
        row(967, "男", "糖尿病视网膜病变2期", "糖尿病视网膜病变2期\uff0c视网膜前膜 ", "DO"),
        row(995, "男", "正常眼底", "镜头污点,视网膜色素沉着", "O"),
        row(1322, "女", "正常眼底", "外眼像", "N"),
        row(1600, "女", "正常眼底 ", "正常眼底", "N"),
    ]


def write_xlsx_named_xls(path: Path, header, rows) -> Path:
    import pandas as pd

    xlsx = path.with_suffix(".xlsx")
    pd.DataFrame(rows, columns=header).to_excel(xlsx, index=False, engine="openpyxl")
    xlsx.rename(path)
    return path


def test_chinese_ground_truth_xlsx_named_xls(tmp_path):
    path = write_xlsx_named_xls(tmp_path / "off_gt.xls", ZH_HEADER, zh_rows())
    ds = load_dataset(path, check_images=False)
    assert ds.format == "challenge" and len(ds) == 5 and ds.sources() == ["offsite"]
    p = by_id(ds)
    assert p["937"].sex == "Female" and p["967"].sex == "Male"
    assert p["967"].right_keywords == ("糖尿病视网膜病变2期", "视网膜前膜")
    assert letters(p["967"].right_labels) == "DO" and letters(p["995"].left_labels) == "N"
    assert not p["1322"].right_fundus and p["1322"].eye_path("right") is None
    report = keyword_report(ds)
    assert (report.checked, report.agreeing, report.patients_with_unknown) == (5, 5, 0)


def test_table_kind_comes_from_content_not_extension(tmp_path, odir_rows):
    import pandas as pd

    csv_as_xls = tmp_path / "a" / "annotation.xls"
    csv_as_xls.parent.mkdir()
    pd.DataFrame(odir_rows, columns=ODIR_COLUMNS).to_csv(csv_as_xls, index=False)
    assert len(load_dataset(csv_as_xls, check_images=False)) == len(odir_rows)
    assert len(load_dataset(csv_as_xls.parent, check_images=False)) == len(odir_rows)  # found in a folder
    old = tmp_path / "old.xls"
    old.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512)
    with pytest.raises(DataError, match=r"old\.xls.*old binary Excel"):
        load_dataset(old, check_images=False)


def test_split_column_gives_each_row_its_source(tmp_path, write_table, odir_rows):
    splits = ["train", "off-site-test", "on-site-test"]
    rows = [dict(r, split=s) for r, s in zip(odir_rows[:3], splits, strict=True)]
    path = write_table(tmp_path / "all.csv", [*ODIR_COLUMNS, "split"], rows)
    ds = load_dataset(path, check_images=False)
    assert [p.source for p in ds] == ["train", "offsite", "onsite"]
    rows[2]["split"] = "holdout"
    write_table(path, [*ODIR_COLUMNS, "split"], rows)
    with pytest.raises(DataError, match=r"all\.csv.*row 4.*split.*'holdout'"):
        load_dataset(path, check_images=False)


def test_unknown_keyword_eye_is_masked_patient_keeps_labels_and_is_counted(
    tmp_path, make_challenge, odir_row
):
    # Left eye unknown, right eye normal: the patient must keep the annotated O, not become N.
    rows = [odir_row(0, "purple spots", "normal fundus", "O"), odir_row(1, "drusen", "normal fundus", "O")]
    ds = load_dataset(make_challenge(tmp_path, rows))
    p = by_id(ds)["0"]
    assert letters(p.labels) == "O"
    assert p.left_labels is None and letters(p.right_labels) == "N"  # None: masked per-eye loss
    assert p.eye_path("left") is not None  # the photograph is still used for the patient
    assert any("1 eye(s) have a keyword not in the map ('purple spots' x1)" in n for n in ds.notes)
    report = keyword_report(ds)
    assert (report.patients_with_unknown, report.eyes_with_unknown, report.checked) == (1, 1, 1)
    assert "1 with an unknown keyword (1 eyes" in str(report)
    # What training sees: the eye's per-eye labels are masked, the patient's labels are O.
    item = PairDataset([p], lambda path: np.zeros((8, 8, 3), np.uint8), ds.label_names, size=8)[0]
    assert item["eye_labels_known"].tolist() == [False, True]
    assert letters(item["labels"].numpy().astype(int)) == "O"
