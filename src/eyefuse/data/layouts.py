"""What each dataset format looks like on disk: the ODIR columns (and their Chinese headers), the
file and folder names of the challenge, OIA-ODIR and Kaggle releases, the paired CSV's header and
the training images known to be altered. Facts only; `eyefuse.data.odir` describes the formats."""

from __future__ import annotations

from eyefuse import ODIR_LABELS
from eyefuse.data.records import SIDES

FORMATS = ("challenge", "oia", "kaggle", "paired_csv")

#: Columns of every ODIR annotation table, in the order of the release.
ODIR_COLUMNS: tuple[str, ...] = (
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    *ODIR_LABELS,
)
KAGGLE_COLUMNS: tuple[str, ...] = (*ODIR_COLUMNS, "filename")
#: The Chinese headers of the OIA-ODIR Chinese annotations and of the authors' test ground truth
#: (`off_gt.xls`, `on_gt.xlsx`), read as the English columns they stand for.
ZH_COLUMNS: dict[str, str] = {
    "编号": "ID",
    "病人年龄": "Patient Age",
    "病人性别": "Patient Sex",
    "左眼眼底图像": "Left-Fundus",
    "右眼眼底图像": "Right-Fundus",
    "左眼诊断关键词": "Left-Diagnostic Keywords",
    "右眼诊断关键词": "Right-Diagnostic Keywords",
}
ZH_SEX = {"女": "Female", "男": "Male"}
#: Optional `split` column (the one-row-per-patient table of all 5,000 patients): value -> source.
SPLIT_COLUMN = "split"
SPLIT_SOURCES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "off-site-test": "offsite",
    "offsite": "offsite",
    "on-site-test": "onsite",
    "onsite": "onsite",
}
PAIRED_COLUMNS: tuple[str, ...] = ("patient_id", "left", "right")

CHALLENGE_XLSX = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
CHALLENGE_GLOB = "ODIR-5K_Training_Annotations*.xlsx"
KAGGLE_CSV = "full_df.csv"
SYNTHETIC_MARKER = "SYNTHETIC.json"
#: OIA-ODIR split folders and the source name each gives its patients.
OIA_SPLITS: tuple[tuple[str, str], ...] = (
    ("Training Set", "train"),
    ("Off-site Test Set", "offsite"),
    ("On-site Test Set", "onsite"),
)
#: Image folders tried first beside a challenge annotation (then a search three levels deep).
CHALLENGE_IMAGE_DIRS = (
    "ODIR-5K_Training_Dataset",
    "ODIR-5K_Training_Images",
    "Training Images",
    "ODIR-5K/Training Images",
    "ODIR-5K/ODIR-5K/Training Images",
    "images",
    "Images",
)
#: Beside full_df.csv: the original photographs first, then Kaggle's 512 px preprocessed copies.
KAGGLE_IMAGE_DIRS = (
    "ODIR-5K/ODIR-5K/Training Images",
    "ODIR-5K/Training Images",
    "Training Images",
    "preprocessed_images",
)

#: The 16 training images whose background the hospital altered: (patient ID, side).
PROBLEM_IMAGES: frozenset[tuple[str, str]] = frozenset(
    [("2174", "right"), ("2175", "left"), ("2176", "left"), ("2178", "right")]
    + [(pid, side) for pid in ("2177", "2179", "2180", "2181", "2182", "2957") for side in SIDES]
)
