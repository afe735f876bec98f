"""Fixtures shared by the runner tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .blocks import make_blocks


@pytest.fixture()
def blocks(tmp_path: Path) -> dict[str, Path]:
    """The tiny real blocks of `blocks.py`, written into this test's folder."""
    return make_blocks(tmp_path / "blocks")
