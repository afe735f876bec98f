"""The type checker runs in CI: zero errors, strict for the public layers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRICT = ["blockkit/__init__.py", "blockkit/contract", "blockkit/stac", "blockkit/runtime"]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true but mypy is not installed (it is in the test extra)")
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_the_package_type_checks() -> None:
    done = _mypy()  # settings from pyproject.toml [tool.mypy]
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_public_layers_type_check_strictly() -> None:
    done = _mypy("--strict", *STRICT)
    assert done.returncode == 0, done.stdout + done.stderr
