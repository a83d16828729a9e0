"""Optional dependencies that fail like every other user error (after MONAI's `optional_import`).

The `export` extra (onnx, onnxruntime, onnxscript) and the `serve` extra (fastapi, uvicorn,
python-multipart) are not installed by a plain `pip install eyefuse`. A command that needs one
imports it through `optional_import`, so a missing package is a `MissingExtraError` naming the extra
to install, printed by the CLI as one line (exit 2), never an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from eyefuse.errors import MissingExtraError


def optional_import(module: str, extra: str) -> ModuleType:
    """Import `module` (dotted names allowed), or raise `MissingExtraError` whose one line names the
    pip extra that provides it: `onnxruntime is not installed: pip install 'eyefuse[export]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = getattr(e, "name", None)
        if isinstance(e, ModuleNotFoundError) or missing is None or missing.split(".")[0] == top:
            raise MissingExtraError(f"{top} is not installed: pip install 'eyefuse[{extra}]'") from None
        # The package is there but one of its own imports failed (a broken install): say which.
        raise MissingExtraError(
            f"{top} cannot be imported ({e}): reinstall it with pip install --force-reinstall "
            f"'eyefuse[{extra}]'"
        ) from None


__all__ = ["optional_import"]
