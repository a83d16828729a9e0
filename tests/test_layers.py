"""The import contract: eyefuse's packages import only downwards (docs/architecture.md).

Layers, lowest first; a module may import from its own layer and those below, never above:

  0 root       eyefuse (__init__), errors, config, utils
  1 data       reading, preprocessing, splitting, synthesising, augmenting datasets
  2 models     the networks, model inputs and the checkpoint's owner (`models.checkpoint`)
  3 eval       metrics, official score, thresholds, calibration fitting, comparison, report
  4 train      the training engine (may use eval's metrics and calibration)
  5 serve      predict, explain, export, the web app (load checkpoints through models.checkpoint)
  6 workflows  evaluate, ablation, demo, pointing: load a model and run it over a split
  7 cli        the command line (`eyefuse.cli`, `eyefuse.__main__`)

Every import of an eyefuse module sits at the top of its module, except in `eyefuse.cli`, whose
commands import their library lazily so that `eyefuse --help` answers at once. The contract is
checked by parsing the source (`ast`), so it needs no import and no third-party tool.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "eyefuse"

#: Package (first component under `eyefuse`) -> (layer number, layer name).
LAYERS: dict[str, tuple[int, str]] = {
    "": (0, "root"),
    "errors": (0, "root"),
    "config": (0, "root"),
    "registry": (0, "root"),
    "utils": (0, "root"),
    "data": (1, "data"),
    "models": (2, "models"),
    "eval": (3, "eval"),
    "train": (4, "train"),
    "serve": (5, "serve"),
    "workflows": (6, "workflows"),
    "cli": (7, "cli"),
    "__main__": (7, "cli"),
}
#: Modules whose eyefuse imports may sit inside functions (the reason is written at the top of cli.py).
FUNCTION_IMPORTS_ALLOWED = frozenset({"eyefuse.cli"})


def module_name(path: Path, src: Path = SRC) -> str:
    """`src/eyefuse/serve/predict.py` -> `eyefuse.serve.predict` (a package's `__init__` -> the package)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["eyefuse", *parts])


def layer_of(module: str) -> tuple[int, str]:
    """The layer of an eyefuse module, by its first component below `eyefuse`."""
    parts = module.split(".")
    if parts[0] != "eyefuse":
        raise ValueError(f"{module} is not an eyefuse module")
    top = parts[1] if len(parts) > 1 else ""
    if top not in LAYERS:
        raise KeyError(f"{module}: no layer for eyefuse.{top}; add it to LAYERS in tests/test_layers.py")
    return LAYERS[top]


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The eyefuse modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "eyefuse"]
    if node.level:
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "eyefuse":
        return []
    if target == "eyefuse":  # `from eyefuse import x`: a submodule x, or a name of the root package
        return [f"eyefuse.{a.name}" if a.name in LAYERS and a.name else "eyefuse" for a in node.names]
    return [target]


def check_source(module: str, source: str, filename: str, *, is_package: bool = False) -> list[str]:
    """Every breach of the contract in one module's source, one line each naming the file, line,
    module and offending import."""
    tree = ast.parse(source, filename=filename)
    own_layer, own_name = layer_of(module)
    problems: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                stmt = ast.unparse(child)
                for target in _imported(child, module, is_package):
                    layer, name = layer_of(target)
                    if layer > own_layer:
                        problems.append(
                            f"{filename}:{child.lineno}: {module} (layer {own_layer} {own_name}) imports "
                            f"{target} (layer {layer} {name}), a higher layer: `{stmt}`"
                        )
                    if in_function and module not in FUNCTION_IMPORTS_ALLOWED:
                        problems.append(
                            f"{filename}:{child.lineno}: {module} imports {target} inside a function: "
                            f"`{stmt}` (move it to the top of the module)"
                        )
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, False)
    return problems


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    for path in _modules():
        layer_of(module_name(path))  # raises naming the module when its package has no layer


def test_imports_run_one_way() -> None:
    problems: list[str] = []
    for path in _modules():
        rel = str(path.relative_to(SRC.parents[1]))
        problems += check_source(
            module_name(path), path.read_text(encoding="utf-8"), rel, is_package=path.name == "__init__.py"
        )
    assert not problems, "import contract broken:\n" + "\n".join(problems)


# --- the checker itself can fail ------------------------------------------------------------------


def test_a_wrong_way_import_is_named_with_its_line() -> None:
    source = "from eyefuse.errors import ConfigError\n\nfrom eyefuse.train.engine import fit\n"
    problems = check_source("eyefuse.eval.fake", source, "src/eyefuse/eval/fake.py")
    assert problems == [
        "src/eyefuse/eval/fake.py:3: eyefuse.eval.fake (layer 3 eval) imports eyefuse.train.engine "
        "(layer 4 train), a higher layer: `from eyefuse.train.engine import fit`"
    ]


@pytest.mark.parametrize(
    "source",
    [
        "import eyefuse.serve.predict\n",
        "from eyefuse import workflows\n",
        "from ..serve import predict\n",
        "if True:\n    from eyefuse.cli import main\n",
    ],
)
def test_every_spelling_of_an_upward_import_is_caught(source: str) -> None:
    problems = check_source("eyefuse.models.fake", source, "fake.py")
    assert len(problems) == 1 and "a higher layer" in problems[0]


def test_a_function_level_import_is_refused_outside_the_cli() -> None:
    source = "import json\n\n\ndef f():\n    import numpy\n    from eyefuse.data.odir import load_dataset\n"
    problems = check_source("eyefuse.eval.fake", source, "fake.py")
    assert len(problems) == 1
    assert problems[0].startswith("fake.py:6: eyefuse.eval.fake imports eyefuse.data.odir inside a function")
    assert check_source("eyefuse.cli", source, "cli.py") == []  # the CLI's lazy imports are allowed


def test_downward_and_sibling_imports_pass() -> None:
    source = (
        "from eyefuse import ODIR_LABELS\nimport eyefuse\nfrom eyefuse.models.binocular import build_model\n"
        "from eyefuse.eval.metrics import macro_auroc\nfrom . import thresholds\n"
    )
    assert check_source("eyefuse.eval.fake", source, "fake.py") == []


def test_a_package_without_a_layer_is_refused() -> None:
    with pytest.raises(KeyError, match="no layer for eyefuse.newpkg"):
        check_source("eyefuse.newpkg.mod", "x = 1\n", "fake.py")
