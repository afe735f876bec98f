"""Run a block folder for real in a test: a subprocess with the contract's folders and parameters.

    from blockkit.testing import run_block

    def test_scales(tmp_path):
        result = run_block(BLOCK, input_dir, tmp_path / "out", {"factor": 2})
        assert result.returncode == 0, result.stderr
        assert result.features[0]["properties"]["up42.data_path"].endswith(".tif")

The block runs as the process engine runs it (its manifest's `blockkit.command` or
`python src/run.py`, this Python), so a test sees exactly what a workflow step would.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


@dataclass
class BlockResult:
    """How a block run ended: exit code, its output streams, and where its output went."""

    returncode: int
    stdout: str
    stderr: str
    output_dir: Path
    quicklook_dir: Path

    @property
    def data(self) -> dict[str, Any]:
        """The block's output data.json."""
        return json.loads((self.output_dir / "data.json").read_text(encoding="utf-8"))

    @property
    def features(self) -> list[dict[str, Any]]:
        """The features of the block's output data.json."""
        return list(self.data["features"])

    @property
    def headline(self) -> str:
        """The block's one-line error (`[NAME] message`), or its last line of stderr."""
        lines = self.stderr.strip().splitlines()
        return next((line for line in lines if line.startswith("[")), lines[-1] if lines else "")


def run_block(
    block_dir: Path | str,
    input_dir: Path | str,
    output_dir: Path | str,
    params: Mapping[str, Any] | None = None,
    *,
    mode: str = "DEFAULT",
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> BlockResult:
    """Run the block in `block_dir` on `input_dir`, writing to `output_dir` (quicklooks to `<output>-quicklooks`).

    The block runs as a local process (as the process engine runs it), its streams captured.

    Args:
        block_dir: the block folder (with UP42Manifest.json).
        input_dir: the folder the block reads as `/tmp/input` (data.json and its files).
        output_dir: the folder the block writes as `/tmp/output` (created when missing).
        params: the block's parameters (UP42_TASK_PARAMETERS); None: none given.
        mode: the job mode (UP42_JOB_MODE): `DEFAULT` or `DRY_RUN`.
        env: extra environment variables for the block.
        timeout: seconds before the block is killed (subprocess.TimeoutExpired).
    """
    from blockkit.contract._manifest import MANIFEST_FILE, load_manifest
    from blockkit.runner._engine import StepSpec
    from blockkit.runner._process_engine import block_command, step_environment

    block_dir, output_dir = Path(block_dir).resolve(), Path(output_dir).resolve()
    manifest = load_manifest(block_dir / MANIFEST_FILE)
    spec = StepSpec(
        name=manifest.name,
        block_dir=block_dir,
        image=None,
        input_dir=Path(input_dir).resolve(),
        output_dir=output_dir,
        quicklook_dir=output_dir.with_name(output_dir.name + "-quicklooks"),
        log_path=output_dir.with_name(output_dir.name + ".log"),  # unused: the streams are returned
        params=dict(params or {}),
        env=dict(env or {}),
        mode=mode,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        block_command(block_dir, manifest.command),
        cwd=block_dir,
        env=step_environment(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return BlockResult(done.returncode, done.stdout, done.stderr, output_dir, spec.quicklook_dir)
