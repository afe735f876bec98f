"""The other direction: blocks made with blockkit are ready for a registry; hostile names and build options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from blockkit.contract.errors import ExitCode
from blockkit.runner._build import BuildError, build_block_image

BLOCKKIT = Path(sys.executable).with_name("blockkit")


@pytest.mark.parametrize("name", ["../../x", "x/y", "..", "/tmp/abs", "a\\\\b"])
def test_new_refuses_paths_in_one_line_with_a_contract_code(tmp_path: Path, name: str) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    done = subprocess.run([str(BLOCKKIT), "new", name], cwd=work, capture_output=True, text=True, timeout=60)
    assert done.returncode == int(ExitCode.INPUT_PARAMETERS_ERROR), done.stderr
    assert done.stderr.startswith("[INPUT_PARAMETERS_ERROR]") and len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b"]


def test_new_into_a_missing_folder_or_over_a_symlink(tmp_path: Path) -> None:
    done = subprocess.run([str(BLOCKKIT), "new", "ok-name", "--dir", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not a folder" in done.stderr
    (tmp_path / "ok-name").symlink_to(tmp_path / "elsewhere")
    done = subprocess.run([str(BLOCKKIT), "new", "ok-name", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "already exists" in done.stderr and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("base", ["blockkit-base:bullseye\nRUN touch /pwned", "x y", "", "$(id)"])
def test_base_image_cannot_inject_dockerfile_lines(tmp_path: Path, base: str) -> None:
    block = Path(__file__).resolve().parent / "blocks" / "up42-nodata"
    with pytest.raises(BuildError, match="is not an image reference"):
        build_block_image(block, base_image=base, client=object())
