"""The public API: each subpackage declares its names, they resolve, they stay light, docs/api.md is current."""

from __future__ import annotations

import ast
import importlib
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import blockkit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(blockkit.__file__).parent
APIDOC = ROOT / "scripts" / "apidoc"
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and p.name != "templates")
HEAVY = ("rasterio", "shapely", "numpy", "jsonschema", "fastjsonschema", "typer", "rich", "boto3", "botocore",
         "docker", "pystac", "yaml", "cryptography", "requests")


def _apidoc() -> dict[str, object]:
    return runpy.run_path(str(APIDOC), run_name="apidoc")


def test_docs_api_md_is_current_and_every_public_name_is_documented() -> None:
    done = subprocess.run([sys.executable, str(APIDOC), "--check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_each_subpackage_declares_its_public_names(name: str) -> None:
    module = importlib.import_module(f"blockkit.{name}")
    assert module.__doc__, f"blockkit.{name} has no docstring"
    exported = getattr(module, "__all__", None)
    assert exported, f"blockkit.{name}/__init__.py declares no __all__"
    assert len(set(exported)) == len(exported), f"blockkit.{name}.__all__ repeats a name"
    for public in exported:
        assert hasattr(module, public), f"blockkit.{name}.{public} is in __all__ but does not resolve"
    assert f"blockkit.{name}" in _apidoc()["PUBLIC_MODULES"], f"blockkit.{name} is missing from docs/api.md"


def _lazy_table(path: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(_EXPORTS, the imports under TYPE_CHECKING as name -> module, __all__) read from an __init__.py."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exports: dict[str, str] = {}
    typed: dict[str, str] = {}
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            if target == "_EXPORTS" and isinstance(node.value, ast.Dict):
                exports = {ast.literal_eval(k): ast.literal_eval(v) for k, v in zip(node.value.keys, node.value.values)
                           if k is not None}
            elif target == "__all__":
                names = list(ast.literal_eval(node.value)) if not isinstance(node.value, ast.Call) else []
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module:
                    typed.update({alias.asname or alias.name: stmt.module for alias in stmt.names})
    return exports, typed, names


LAZY = [name for name in SUBPACKAGES if _lazy_table(PACKAGE / name / "__init__.py")[0]]


@pytest.mark.parametrize("name", LAZY)
def test_lazy_exports_agree_with_all_and_with_what_the_type_checker_sees(name: str) -> None:
    exports, typed, names = _lazy_table(PACKAGE / name / "__init__.py")
    if names:
        assert sorted(names) == sorted(exports), f"blockkit.{name}: __all__ and _EXPORTS differ"
    if typed:
        assert typed == exports, f"blockkit.{name}: TYPE_CHECKING imports and _EXPORTS differ"
    module = importlib.import_module(f"blockkit.{name}")
    for public, source in exports.items():
        assert getattr(importlib.import_module(source), public) is not None
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        getattr(module, "no_such_name")


def test_importing_any_subpackage_stays_light() -> None:
    """A subpackage's __init__ imports no heavy library: its heavy names load on first use."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {SUBPACKAGES!r}:\n"
        "    importlib.import_module('blockkit.' + name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_a_lazy_name_loads_its_heavy_module_on_first_use() -> None:
    code = (
        "import json, sys\n"
        "from blockkit.runtime import BlockContext\n"
        "before = 'rasterio' in sys.modules\n"
        "from blockkit.runtime import map_windows\n"
        "print(json.dumps([before, 'rasterio' in sys.modules, map_windows.__module__]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, after, module = json.loads(done.stdout)
    assert (before, after) == (False, True)
    assert module.startswith("blockkit.runtime.")


def test_apidoc_check_fails_on_a_stale_page_and_on_a_missing_docstring(tmp_path: Path) -> None:
    """The check is real: a changed page or an undocumented public function makes it fail, naming it."""
    apidoc = _apidoc()
    text, missing = apidoc["render"]()  # type: ignore[operator]
    assert missing == []
    assert "### `def map_windows(" in text and "window_size:" in text
    api_md = ROOT / "docs" / "api.md"
    assert api_md.read_text(encoding="utf-8") == text

    import blockkit.runtime.raster as raster

    original = raster.write_cog.__doc__
    try:
        raster.write_cog.__doc__ = None
        _, missing = apidoc["render"]()  # type: ignore[operator]
        assert [m for m in missing if m.endswith(".write_cog: no docstring")], missing
        raster.write_cog.__doc__ = "Write a COG."
        problems = apidoc["parameter_problems"]("blockkit.runtime")  # type: ignore[operator]
        assert any(p.startswith("blockkit.runtime.write_cog: parameters not explained") for p in problems)
    finally:
        raster.write_cog.__doc__ = original


def test_public_functions_with_more_than_three_parameters_explain_each_one() -> None:
    apidoc = _apidoc()
    problems = [p for module in apidoc["PARAMETERS_DOCUMENTED_IN"]  # type: ignore[attr-defined]
                for p in apidoc["parameter_problems"](module)]  # type: ignore[operator]
    assert problems == []
