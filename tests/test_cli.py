"""The `eyefuse` command as a user meets it: no output replaces an input, exit codes a script can
trust (0 all done, 1 some failed, 2 bad input), one line and no traceback for every error a user can
cause, inputs checked before torch is imported, and the small options (`--split`, `--test-fraction`,
defaults in every help)."""

from __future__ import annotations

import argparse
import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eyefuse.cli import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, build_parser, main
from helpers import draw_eye, make_checkpoint


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best")


# --- item 1: never overwrite an input -----------------------------------------------------------


def test_preprocess_refuses_to_replace_its_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = draw_eye(tmp_path / "d" / "eye.png")
    before = photo.read_bytes()
    rc, _, err = _run(["preprocess", photo, "--out", tmp_path / "d", "--size", 64], capsys)
    assert rc == EXIT_USAGE and "is an input" in _one_line_error(err)
    assert photo.read_bytes() == before
    rc, _, err = _run(["preprocess", photo, "--out", tmp_path / "d", "--size", 64, "--overwrite"], capsys)
    assert rc == EXIT_USAGE and photo.read_bytes() == before  # --overwrite never replaces an input


def test_preprocess_refuses_a_file_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = draw_eye(tmp_path / "a.jpg")
    other = tmp_path / "ow" / "a.png"
    other.parent.mkdir()
    other.write_bytes(b"someone else's picture")
    rc, _, err = _run(["preprocess", photo, "--out", tmp_path / "ow", "--size", 64], capsys)
    assert rc == EXIT_USAGE and "--overwrite" in _one_line_error(err)
    assert other.read_bytes() == b"someone else's picture"
    # with --overwrite it is replaced; a rerun into the same folder replaces its own outputs freely
    assert _run(["preprocess", photo, "--out", tmp_path / "ow", "--size", 64, "--overwrite"], capsys)[0] == 0
    assert other.read_bytes() != b"someone else's picture"
    assert _run(["preprocess", photo, "--out", tmp_path / "ow", "--size", 64], capsys)[0] == EXIT_OK
    # a fov.csv of the user's own (not eyefuse's header) is not replaced either
    (tmp_path / "ow2").mkdir()
    (tmp_path / "ow2" / "fov.csv").write_text("my,own,notes\n")
    rc, _, err = _run(["preprocess", photo, "--out", tmp_path / "ow2", "--size", 64], capsys)
    assert rc == EXIT_USAGE and "fov.csv" in err
    assert (tmp_path / "ow2" / "fov.csv").read_text() == "my,own,notes\n"


def test_predict_refuses_to_replace_its_input_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draw_eye(tmp_path / "1_left.jpg")
    listing = tmp_path / "p.csv"
    listing.write_text("patient_id,left,right\n1,1_left.jpg,\n")
    before = listing.read_bytes()
    rc, _, err = _run(["predict", "--checkpoint", tmp_path, "--csv", listing, "--out", listing], capsys)
    assert rc == EXIT_USAGE and "is an input" in _one_line_error(err)
    assert listing.read_bytes() == before
    notes = tmp_path / "notes.csv"
    notes.write_text("my own table\n")
    rc, _, err = _run(["predict", "--checkpoint", tmp_path, "--csv", listing, "--out", notes], capsys)
    assert rc == EXIT_USAGE and "--overwrite" in err and notes.read_text() == "my own table\n"


# --- item 2: exit codes -------------------------------------------------------------------------


def test_predict_exit_codes(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good_l, good_r = draw_eye(tmp_path / "7_left.jpg"), draw_eye(tmp_path / "7_right.jpg", spot=-10)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    ck = ["predict", "--checkpoint", checkpoint, "--no-progress"]
    assert _run([*ck, "--left", good_l, "--right", good_r], capsys)[0] == EXIT_OK
    rc, out, _ = _run([*ck, "--left", good_l, "--right", bad], capsys)
    assert rc == EXIT_PARTIAL and "unusable" in out  # predicted from one eye, the other failed
    one_eye = tmp_path / "one_eye.json"
    assert _run([*ck, "--left", good_l, "--right", bad, "--out", one_eye], capsys)[0] == EXIT_PARTIAL
    assert json.loads(one_eye.read_text())["predictions"][0]["unusable_eyes"] == ["right"]
    # an eye not given at all is not an unusable photograph: exit 0
    assert _run([*ck, "--left", good_l], capsys)[0] == EXIT_OK
    rc, out, _ = _run([*ck, "--left", bad, "--right", bad], capsys)
    assert rc == EXIT_USAGE and "FAILED" in out  # nothing could be predicted
    rc, _, err = _run([*ck, "--left", tmp_path / "missing.jpg", "--right", good_r], capsys)
    assert rc == EXIT_USAGE and "missing.jpg" in _one_line_error(err)  # a typed path must exist
    listing = tmp_path / "p.csv"
    listing.write_text("patient_id,left,right\n1,7_left.jpg,7_right.jpg\n2,bad.jpg,bad.jpg\n")
    rc, _, _ = _run([*ck, "--csv", listing, "--out", tmp_path / "pred.json"], capsys)
    assert rc == EXIT_PARTIAL  # one patient failed, the other written
    doc = json.loads((tmp_path / "pred.json").read_text())
    assert doc["summary"] == {"patients": 2, "predicted": 1, "with_warnings": 0, "failed": 1}
    # rerunning into its own earlier output is allowed
    assert _run([*ck, "--csv", listing, "--out", tmp_path / "pred.json"], capsys)[0] == EXIT_PARTIAL


def test_preprocess_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = draw_eye(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff broken")
    size = ["--size", 64]
    assert _run(["preprocess", good, "--out", tmp_path / "o1", *size], capsys)[0] == EXIT_OK
    assert _run(["preprocess", good, bad, "--out", tmp_path / "o2", *size], capsys)[0] == EXIT_PARTIAL
    assert (tmp_path / "o2" / "good.png").is_file()
    assert _run(["preprocess", bad, "--out", tmp_path / "o3", *size], capsys)[0] == EXIT_USAGE
    rc, _, err = _run(["preprocess", good, tmp_path / "nope.jpg", "--out", tmp_path / "o4", *size], capsys)
    assert rc == EXIT_USAGE and "nope.jpg" in _one_line_error(err)
    assert not (tmp_path / "o4").exists()  # refused before anything was written


# --- item 3: one clear line, never a traceback ------------------------------------------------------


def test_unwritable_cache_names_the_option(
    tmp_path: Path, make_challenge, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running as root, chmod cannot make a folder read-only; a path under a regular file cannot be
    written by anyone, which is what a read-only dataset folder looks like to the cache."""
    # Imported before `default_cache_dir` is patched below: a module first imported inside the patch
    # would keep the patched function for the rest of the session.
    from eyefuse.config import load_config
    from eyefuse.errors import ConfigError
    from eyefuse.train.distributed import DistInfo
    from eyefuse.train.run_data import load_run_data

    root = make_challenge(tmp_path / "data")
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    rc, _, err = _run(["prepare", "--data", root, "--cache-dir", blocker / "cache", "--no-progress"], capsys)
    assert rc == EXIT_USAGE and "--cache-dir" in _one_line_error(err)
    # the default cache (inside the dataset folder) unwritable: the same message
    import eyefuse.data.prepare as prepare

    monkeypatch.setattr(prepare, "default_cache_dir", lambda data: blocker / "cache")
    rc, _, err = _run(["prepare", "--data", root, "--no-progress"], capsys)
    assert rc == EXIT_USAGE and "--cache-dir" in _one_line_error(err)
    # training reads the same cache: its message names data.cache_dir before any epoch
    cfg = load_config("demo", ["preprocess.size=64", f"data.cache_dir={blocker / 'cache'}"])
    cfg.data.root = str(root)
    with pytest.raises(ConfigError, match="data.cache_dir"):
        load_run_data(cfg, tmp_path / "run", DistInfo(), progress=False)


def test_unwritable_or_full_output_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = draw_eye(tmp_path / "eye.jpg")
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    rc, _, err = _run(["preprocess", photo, "--out", blocker / "out", "--size", 64], capsys)
    assert rc == EXIT_USAGE and "plain-file" in _one_line_error(err)

    import eyefuse.data.preprocess_files as pre

    def full(path: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pre, "atomic_write_bytes", full)  # the atomic writer meets a full disk
    rc, _, err = _run(["preprocess", photo, "--out", tmp_path / "out", "--size", 64], capsys)
    assert rc == EXIT_USAGE and "disk is full" in _one_line_error(err)


@pytest.mark.parametrize(
    "setting", ["train.lr=-0.1", "train.seed=-5", "train.weight_decay=-1", "model.drop_rate=1.5"]
)
def test_bad_numbers_are_refused_before_a_run_folder_exists(
    setting: str, tmp_path: Path, make_challenge, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_challenge(tmp_path / "data")
    run = tmp_path / "run"
    rc, _, err = _run(["train", "--data", root, "--out", run, "--set", setting], capsys)
    assert rc == EXIT_USAGE and setting.split("=")[0] in _one_line_error(err)
    assert not run.exists()


def test_devices_and_folders_are_not_read_as_photographs(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draw_eye(tmp_path / "1_left.jpg")
    (tmp_path / "folder").mkdir()
    listing = tmp_path / "p.csv"
    listing.write_text("patient_id,left,right\n1,1_left.jpg,/dev/zero\n2,/dev/zero,folder\n")
    rc, out, _ = _run(["predict", "--checkpoint", checkpoint, "--csv", listing, "--no-progress"], capsys)
    assert rc == EXIT_PARTIAL  # patient 1 from its left eye, patient 2 failed; nothing hangs
    assert "not a regular file" in out and "is a directory" in out


def test_tampered_checkpoint_metadata_is_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    eye = draw_eye(tmp_path / "e.jpg")
    for field, value, words in (
        ("format_version", 99, "format_version 99"),
        ("label_names", ["X", "D", "G", "C", "A", "H", "M", "O"], "differ from those the weights"),
    ):
        ck = tmp_path / f"ck-{field}"
        shutil.copytree(checkpoint, ck)
        meta = json.loads((ck / "meta.json").read_text())
        meta[field] = value
        (ck / "meta.json").write_text(json.dumps(meta))
        rc, _, err = _run(["predict", "--checkpoint", ck, "--left", eye], capsys)
        assert rc == EXIT_USAGE and words in _one_line_error(err)


# --- item 7: answers before torch -----------------------------------------------------------------


def _torch_imported_after(args: list[str]) -> tuple[int, bool, str]:
    code = (
        "import sys; from eyefuse.cli import main; rc = main(sys.argv[1:]); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, check=False
    )
    return proc.returncode, "NO-TORCH" not in proc.stdout, proc.stderr


def test_models_and_refusals_do_not_import_torch(tmp_path: Path) -> None:
    rc, torch_loaded, _ = _torch_imported_after(["models"])
    assert rc == 0 and not torch_loaded
    rc, torch_loaded, err = _torch_imported_after(
        ["predict", "--checkpoint", str(tmp_path / "none"), "--left", "x.jpg"]
    )
    assert rc == 2 and not torch_loaded and "Traceback" not in err
    rc, torch_loaded, _ = _torch_imported_after(
        ["train", "--data", str(tmp_path), "--out", "r", "--set", "x.y=1"]
    )
    assert rc == 2 and not torch_loaded


def test_the_real_binary_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("eyefuse")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "eyefuse"]
    proc = subprocess.run(
        [*cmd, "evaluate", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no-run" in proc.stderr


# --- item 8 and issue 9 item 5: small things ---------------------------------------------------------


def test_split_help_names_the_real_columns(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["split", "--help"])
    assert "patient_id,source,split" in capsys.readouterr().out


def test_every_option_help_shows_its_default() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if action.default is None or action.default is False or isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action)  # "%(default)s" is expanded when printed
            if "default" not in text:
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, missing


def test_split_test_fraction_and_train_split(
    tmp_path: Path,
    make_challenge,
    odir_row,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [odir_row(i, "normal fundus", "normal fundus", "N") for i in range(20)]
    root = make_challenge(tmp_path / "data", rows)  # no official test set
    split = tmp_path / "split.csv"
    rc, out, _ = _run(["split", "--data", root, "--out", split, "--test-fraction", "0.25"], capsys)
    assert rc == 0 and "test_fraction 0.25" in out
    lines = split.read_text().splitlines()
    assert lines[0] == "patient_id,source,split"
    assert 3 <= sum(ln.endswith(",test") for ln in lines) <= 7  # a quarter of 20, stratified
    half = tmp_path / "half.csv"
    argv = ["split", "--data", root, "--out", half, "--test-fraction", "0.25", "--train-fraction", "0.5"]
    rc, out, _ = _run(argv, capsys)
    assert rc == 0 and "train_fraction 0.5" in out and half.read_text().count(",unused\n") >= 3
    rc, _, err = _run([*argv[:-1], "1.5"], capsys)
    assert rc == EXIT_USAGE and "train_fraction must be in (0, 1]" in _one_line_error(err)

    import eyefuse.train.engine as engine

    seen = {}

    def fake_fit(cfg, run_dir, **kwargs):
        seen["split_file"] = cfg.data.split_file
        return "fitted"

    monkeypatch.setattr(engine, "fit", fake_fit)
    rc, _, _ = _run(["train", "--data", root, "--out", tmp_path / "run", "--split", split], capsys)
    assert rc == 0 and seen["split_file"] == str(split.resolve())
    rc, _, err = _run(
        ["train", "--data", root, "--out", tmp_path / "run", "--split", tmp_path / "no.csv"], capsys
    )
    assert rc == EXIT_USAGE and "no.csv" in err


def test_dir_takes_every_format_left_takes(tmp_path: Path) -> None:
    from eyefuse.serve.pairs import pairs_from_dir

    draw_eye(tmp_path / "3_left.bmp")
    draw_eye(tmp_path / "3_right.webp")
    draw_eye(tmp_path / "4_left.JPG")
    inputs = pairs_from_dir(tmp_path)
    assert [p[0] for p in inputs] == ["3", "4"] and not inputs.ignored


def test_evaluate_defaults_to_a_split_the_dataset_has() -> None:
    from eyefuse.workflows.evaluate import default_split

    assert build_parser().parse_args(["evaluate", "--run", "r", "--out", "o"]).split is None
    assert default_split({"train": 1, "val": 1, "offsite": 1, "onsite": 1}) == "offsite"  # official test
    assert default_split({"train": 1, "val": 1, "test": 1}) == "test"  # made by `eyefuse split`
    assert default_split({"train": 1, "val": 1}) is None  # then the command asks for --split


def test_calibration_warnings_are_printed_after_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eyefuse.cli import _print_calibration

    (tmp_path / "best").mkdir()
    meta = {
        "config": {"model": {"head": "sigmoid"}},
        "label_names": list("NDGCAHMO"),
        "thresholds": [0.5] * 8,
        "calibration_warnings": ["class G: no positive patient in validation"],
    }
    (tmp_path / "best" / "meta.json").write_text(json.dumps(meta))
    _print_calibration(tmp_path)
    out = capsys.readouterr().out
    assert "calibration warning: class G: no positive patient in validation" in out


def test_ablate_seeds_option_parses_and_refuses_non_integers(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["ablate", "--data", "d", "--out", "o", "--seeds", "0,1, 2"])
    assert args.seeds == [0, 1, 2] and args.table_only is False
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["ablate", "--data", "d", "--out", "o", "--seeds", "0,a"])
    assert e.value.code == EXIT_USAGE
    assert "--seeds: expected comma-separated integers, not '0,a'" in capsys.readouterr().err
