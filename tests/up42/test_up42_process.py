"""UP42-style blocks on the process engine: their own venv, and the fixed paths through per-step isolation.

The runs below need an engine that shows each step its own /tmp/input, /tmp/output,
/tmp/quicklooks and /block (the process engine with bubblewrap, `isolates_paths()`). Where the
engine cannot, they skip -- but never under CI=true: there they fail until that isolation is
merged, on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from blockkit.runner._blockenv import ensure_block_env, env_key
from blockkit.runner._process_engine import ProcessEngine

from .conftest import in_ci

BLOCKKIT = Path(sys.executable).with_name("blockkit")


def _require_isolation() -> None:
    if not ProcessEngine().isolates_paths and not in_ci():
        pytest.skip("the process engine cannot isolate the fixed UP42 paths here (needs the bubblewrap isolation)")


@pytest.mark.slow
def test_block_env_from_requirements_is_cached_and_has_no_blockkit_nor_dev_tools(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    block = tmp_path / "block"
    block.mkdir()
    (block / "requirements.txt").write_text("affine\npytest\n")
    messages: list[str] = []
    first = ensure_block_env(block, say=messages.append)
    assert first.created and first.path.parent == tmp_path / "venvs" and first.path.name == env_key(block)
    assert any("development tools left out" in w and "pytest" in w for w in first.warnings)
    assert messages and "making the Python environment" in messages[0]
    probe = subprocess.run(
        [str(first.python), "-c", "import affine, importlib.util as u; "
         "print(u.find_spec('blockkit') is None, u.find_spec('pytest') is None)"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path,
    )
    assert probe.stdout.split() == ["True", "True"], probe.stderr
    again = ensure_block_env(block)
    assert not again.created and again.python == first.python
    # Another requirements file: another environment; a comment change of a dev tool line: the same.
    (block / "requirements.txt").write_text("affine\npytest>=7\n")
    assert env_key(block) == first.path.name
    (block / "requirements.txt").write_text("affine\ncligj\n")
    assert env_key(block) != first.path.name


@pytest.mark.slow
def test_concurrent_and_killed_env_builds_leave_only_complete_envs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    block = tmp_path / "block"
    block.mkdir()
    (block / "requirements.txt").write_text("affine\n")
    # A build killed half-way (a leftover temporary folder) is never taken for an environment.
    (tmp_path / "venvs").mkdir()
    (tmp_path / "venvs" / f"{env_key(block)}.tmp-killed").mkdir()
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_block_env(block))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and sum(r.created for r in results) == 1
    assert len({r.python for r in results}) == 1 and results[0].python.is_file()


@pytest.mark.slow
def test_bad_requirement_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    from blockkit.contract.errors import BlockkitError

    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # no index: only the wheelhouse
    block = tmp_path / "block"
    block.mkdir()
    (block / "requirements.txt").write_text("no-such-package-blockkit-test==1.0\n")
    with pytest.raises(BlockkitError) as info:
        ensure_block_env(block, wheelhouse=tmp_path / "wheels")
    assert "\n" not in info.value.headline() and "no-such-package-blockkit-test" in info.value.headline()
    assert not [p for p in (tmp_path / "venvs").iterdir() if p.is_dir()]  # nothing half-made left


def _chain(tmp_path: Path, *blocks: Path) -> Path:
    examples = Path(__file__).resolve().parents[2] / "examples" / "blocks"
    wf = tmp_path / "chain.yaml"
    lines = ["name: up42-process", "steps:", f"  scene: {{block: {examples / 'synthetic-scene'}, params: {{size: 64, limit: 1}}}}"]
    lines += [f"  {block.name}: {{block: {block}}}" for block in blocks]
    wf.write_text("\n".join(lines) + "\n")
    return wf


@pytest.mark.slow
def test_fixed_path_blocks_chain_on_the_process_engine(tmp_path: Path, up42_blocks, monkeypatch) -> None:
    _require_isolation()
    monkeypatch.setenv("BLOCKKIT_VENV_DIR", str(tmp_path / "venvs"))
    host_output = Path("/tmp/output/data.json")
    before = host_output.stat().st_mtime_ns if host_output.exists() else None
    wf = _chain(tmp_path, up42_blocks["up42-scale"], up42_blocks["up42-main-entry"])
    done = subprocess.run([str(BLOCKKIT), "run", str(wf), "-e", "process", "--runs-dir", str(tmp_path / "runs"), "--json"],
                          capture_output=True, text=True, timeout=1800, env={**os.environ})
    assert done.returncode == 0, done.stderr
    run_dir = Path(json.loads(done.stdout)["run_dir"])
    labelled = json.loads((run_dir / "steps/up42-main-entry/output/data.json").read_text())["features"]
    assert len(labelled) == 1 and labelled[0]["properties"]["label"] == "labelled by a UP42-style block"
    assert len(labelled[0]["bbox"]) == 4
    # The blocks wrote into their step folders, never into the host's /tmp/output.
    after = host_output.stat().st_mtime_ns if host_output.exists() else None
    assert after == before
    assert (tmp_path / "venvs").is_dir()  # up42-scale ran with its own environment


@pytest.mark.slow
def test_block_without_data_json_is_no_output_error_on_the_process_engine(tmp_path: Path, up42_blocks) -> None:
    _require_isolation()
    wf = _chain(tmp_path, up42_blocks["up42-nodata"])
    done = subprocess.run([str(BLOCKKIT), "run", str(wf), "-e", "process", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 6 and "[NO_OUTPUT_ERROR]" in done.stderr
