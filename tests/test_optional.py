"""Optional extras fail like every other user error: one line naming the extra, exit 2, no traceback.

Each test hides one package of an extra (`sys.modules[name] = None` makes its import fail as if it
were not installed) and runs the command through the CLI's `main`, in-process."""

from __future__ import annotations

import sys

import pytest

from eyefuse.cli import main
from eyefuse.errors import MissingExtraError
from eyefuse.utils.optional import optional_import
from helpers import draw_eye


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line: no traceback
    return err[0]


def test_optional_import_returns_the_module_or_names_the_extra(monkeypatch) -> None:
    assert optional_import("json", "serve").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError) as info:
        optional_import("onnxruntime", "export")
    assert str(info.value) == "onnxruntime is not installed: pip install 'eyefuse[export]'"
    # hide the submodule too: an earlier test of the session may have imported it already
    monkeypatch.setitem(sys.modules, "python_multipart", None)
    monkeypatch.setitem(sys.modules, "python_multipart.multipart", None)
    with pytest.raises(MissingExtraError, match=r"^python_multipart is not installed: .*eyefuse\[serve\]"):
        optional_import("python_multipart.multipart", "serve")


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_export_without_the_export_extra(module: str, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "ckpt").mkdir()
    monkeypatch.setitem(sys.modules, module, None)
    rc = main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.onnx")])
    assert rc == 2
    line = _one_error_line(capsys)
    assert line == f"eyefuse export: error: {module} is not installed: pip install 'eyefuse[export]'"
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "python_multipart"])
def test_serve_without_the_serve_extra(module: str, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "ckpt").mkdir()
    monkeypatch.setitem(sys.modules, module, None)
    assert main(["serve", "--checkpoint", str(tmp_path / "ckpt"), "--port", "0"]) == 2
    line = _one_error_line(capsys)
    assert line == f"eyefuse serve: error: {module} is not installed: pip install 'eyefuse[serve]'"


def test_predict_with_an_onnx_model_without_the_export_extra(tmp_path, monkeypatch, capsys) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not needed: the missing package is reported first")
    left = draw_eye(tmp_path / "1_left.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    rc = main(["predict", "--checkpoint", str(model), "--left", str(left), "--no-progress"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert line == "eyefuse predict: error: onnxruntime is not installed: pip install 'eyefuse[export]'"
