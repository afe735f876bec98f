"""Fixtures for report tests: real runs made through the `blockkit` command, and a headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.report.chromium import Chromium, find_chromium

REPO = Path(__file__).resolve().parents[2]
BLOCKKIT = Path(sys.executable).with_name("blockkit")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `blockkit` command with a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    return subprocess.run([str(BLOCKKIT), *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd or REPO, env=env)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Chromium's executable; skipped when missing, except under CI=true (then the test fails)."""
    found = find_chromium()
    if found is None:
        if _in_ci():
            pytest.fail("CI=true but Chromium is missing (.ci/apt-packages.sh installs it)")
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    return found


@pytest.fixture()
def browser(chromium_path: str) -> Iterator[Chromium]:
    """A fresh headless Chromium (new empty profile) for one test."""
    with Chromium(chromium_path) as chrome:
        yield chrome


def keep_artifact(path: Path) -> Path:
    """Copy a test artifact (screenshot) to $BLOCKKIT_TEST_ARTIFACTS when set; it stays in the tmp dir too."""
    target_dir = os.environ.get("BLOCKKIT_TEST_ARTIFACTS")
    if target_dir:
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target_dir) / path.name)
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo workflow (scripts/demo's) run on the process engine; its run folder."""
    runs = tmp_path_factory.mktemp("demo") / "runs"
    done = cli("run", REPO / "examples" / "workflows" / "ndvi-demo.yaml", "--engine", "process", "--runs-dir", runs, "-q")
    assert done.returncode == 0, done.stderr
    [run] = [p for p in runs.iterdir() if (p / "run.json").is_file()]
    return run
