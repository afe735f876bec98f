"""One per-user cache folder: `$XDG_CACHE_HOME/blockkit`, else `~/.cache/blockkit`, for every cache blockkit keeps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import blockkit
from blockkit.export._cwl import HELPER_BLOCK, helper_block_dir
from blockkit.runner import _build
from blockkit.runner._blockenv import cache_root, venv_root


def _folders() -> dict[str, Path]:
    return {
        "root": cache_root(),
        "venvs": venv_root(),
        "probe": _build._target_record("sha256:abc"),
        "helper": helper_block_dir(),
    }


def test_xdg_cache_home_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BLOCKKIT_VENV_DIR", raising=False)
    base = tmp_path / "xdg" / "blockkit"
    assert _folders() == {
        "root": base, "venvs": base / "venvs", "probe": base / "base-images" / "sha256-abc.json",
        "helper": base / HELPER_BLOCK,
    }
    assert (base / HELPER_BLOCK / "UP42Manifest.json").is_file()  # written where it is looked for
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("xdg", [None, ""])
def test_xdg_cache_home_unset_or_empty_means_home_cache(xdg: str | None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BLOCKKIT_VENV_DIR", raising=False)
    base = tmp_path / "home" / ".cache" / "blockkit"
    assert _folders() == {
        "root": base, "venvs": base / "venvs", "probe": base / "base-images" / "sha256-abc.json",
        "helper": base / HELPER_BLOCK,
    }


def test_blockkit_venv_dir_still_wins_for_environments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    assert venv_root() == tmp_path / "venvs"
    assert cache_root() == tmp_path / "xdg" / "blockkit"


def test_only_cache_root_reads_xdg_cache_home() -> None:
    """No module works the cache folder out on its own again (a second copy drifts)."""
    package = Path(blockkit.__file__).resolve().parent
    readers = [
        f"{path.relative_to(package)}:{n}"
        for path in sorted(package.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"""environ(\.get\(|\[)\s*["']XDG_CACHE_HOME""", line) or re.search(r"""["']\.cache["']""", line)
    ]
    assert len(readers) == 1 and readers[0].startswith("runner/_blockenv.py:"), readers
