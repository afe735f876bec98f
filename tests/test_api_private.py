"""Private by default: a module is public (docs/api.md) or its name starts with an underscore.

Written by the privatize script that made the internal modules private; see docs/api.md.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import blockkit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(blockkit.__file__).parent
APIDOC = runpy.run_path(str(ROOT / "scripts" / "apidoc"), run_name="apidoc")
PUBLIC = set(APIDOC["PUBLIC_MODULES"]) | set(APIDOC["ENTRY_POINT_MODULES"])
USER_FACING = ["docs", "examples", "templates", "README.md"]
INTERNAL_IMPORT = re.compile(r"^\s*(?:from|import)\s+(blockkit(?:\.\w+)*\._[a-z]\w*)", re.MULTILINE)


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_every_module_is_public_or_underscore_named() -> None:
    loose = sorted(
        _module(path) for path in PACKAGE.rglob("*.py")
        if "templates" not in path.relative_to(PACKAGE).parts
        and not path.name.startswith("_") and _module(path) not in PUBLIC
    )
    assert not loose, "modules neither public (scripts/apidoc) nor underscore-named: " + ", ".join(loose)


def test_public_modules_exist() -> None:
    for name in PUBLIC:
        parts = name.split(".")
        as_module = PACKAGE.parent.joinpath(*parts).with_suffix(".py")
        as_package = PACKAGE.parent.joinpath(*parts, "__init__.py")
        assert as_module.exists() or as_package.exists(), name


def test_user_facing_files_import_no_internal_module() -> None:
    found = []
    for entry in USER_FACING:
        base = ROOT / entry
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.suffix in {".py", ".md"}]
        for path in files:
            if path.name == "api.md":
                continue
            for match in INTERNAL_IMPORT.finditer(path.read_text(encoding="utf-8", errors="replace")):
                found.append(f"{path.relative_to(ROOT)}: {match.group(1)}")
    assert not found, "user-facing files import internal modules:\n" + "\n".join(found)
