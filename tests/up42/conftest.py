"""Fixtures for UP42-style blocks: the block folders, the bullseye (Python 3.9) base image."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BLOCKS = Path(__file__).resolve().parent / "blocks"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "blocks"
BULLSEYE = os.environ.get("BLOCKKIT_BULLSEYE_IMAGE", "blockkit-base:bullseye")


def in_ci() -> bool:
    """True under CI=true: nothing may skip for a missing component."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def bullseye_image(docker_client) -> str:
    """The Python 3.9 base (BLOCKKIT_BASE_SUITE=bullseye bash .ci/docker-setup.sh)."""
    try:
        docker_client.images.get(BULLSEYE)
    except Exception as exc:  # noqa: BLE001
        if in_ci():
            pytest.fail(f"CI=true but {BULLSEYE} is missing (scripts/test makes it): {exc}")
        pytest.skip(f"{BULLSEYE} missing: BLOCKKIT_BASE_SUITE=bullseye BLOCKKIT_BASE_IMAGE={BULLSEYE} bash .ci/docker-setup.sh")
    return BULLSEYE


@pytest.fixture
def up42_blocks(tmp_path: Path) -> dict[str, Path]:
    """Copies of the UP42-style test blocks (tests may change them) plus the example blocks."""
    blocks = {}
    for block in BLOCKS.iterdir():
        blocks[block.name] = shutil.copytree(block, tmp_path / "blocks" / block.name, symlinks=True)
    blocks["synthetic-scene"] = EXAMPLES / "synthetic-scene"
    return blocks
