"""A failed run's line names its exit code once: `[NAME] step 'x' failed with exit code N: <block's words>`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockkit.runner._run import failure_line

from .blocks import SOURCE, write_block

BLOCKKIT = Path(sys.executable).parent / "blockkit"

RAISER = '''
import blockkit
from blockkit.contract.errors import WrongInputError

@blockkit.processing_block
def refuse(fc, ctx):
    raise WrongInputError("the input has no band 4")

if __name__ == "__main__":
    refuse.run()
'''


def _workflow(tmp_path: Path) -> Path:
    blocks = tmp_path / "blocks"
    source = write_block(blocks, "source", kind="data", source=SOURCE, params={
        "count": {"type": "integer", "default": 1}, "text": {"type": "string", "default": "x"}})
    raiser = write_block(blocks, "raiser", kind="processing", source=RAISER, params={})
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: refused\nsteps:\n  make: {{block: {source}}}\n  geo: {{block: {raiser}, after: [make]}}\n")
    return wf


def _run(tmp_path: Path, engine: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    return subprocess.run([str(BLOCKKIT), "run", str(_workflow(tmp_path)), "--engine", engine,
                           "--runs-dir", str(tmp_path / "runs"), "-q", *extra],
                          capture_output=True, text=True, timeout=600, env=env)


EXPECTED = "step 'geo' failed with exit code 4: the input has no band 4"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_the_failure_names_its_exit_code_once_in_the_console_and_in_json(tmp_path: Path, engine: str,
                                                                         request: pytest.FixtureRequest) -> None:
    if engine == "docker":
        request.getfixturevalue("base_image")
    done = _run(tmp_path / "console", engine)
    assert done.returncode == 4, done.stderr
    headlines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert headlines == [f"[WRONG_INPUT_ERROR] {EXPECTED}"], done.stderr

    as_json = _run(tmp_path / "json", engine, "--json")
    assert as_json.returncode == 4, as_json.stderr
    document = json.loads(as_json.stdout)
    assert (document["exit_name"], document["exit_code"], document["message"]) == ("WRONG_INPUT_ERROR", 4, EXPECTED)
    assert [line for line in as_json.stderr.splitlines() if line.startswith("[")] == [f"[WRONG_INPUT_ERROR] {EXPECTED}"]


@pytest.mark.parametrize(("detail", "expected"), [
    ("[WRONG_INPUT_ERROR] the input has no band 4", "step 's' failed with exit code 4: the input has no band 4"),
    ("WRONG_INPUT_ERROR (exit 4)", "step 's' failed with exit code 4"),
    ("", "step 's' failed with exit code 4"),
    (None, "step 's' failed with exit code 4"),
    # Another code's name in the block's words is information, not a repetition: it stays.
    ("[NO_INPUT_ERROR] nothing came", "step 's' failed with exit code 4: [NO_INPUT_ERROR] nothing came"),
])
def test_the_message_drops_only_what_the_headline_already_says(detail: str | None, expected: str) -> None:
    assert failure_line("s", 4, "WRONG_INPUT_ERROR", detail) == expected


def test_out_of_memory_and_timeout_read_once() -> None:
    assert failure_line("up", 137, "OUT_OF_MEMORY", "OUT_OF_MEMORY: the container exceeded its memory limit of "
                        "2048 MB and was killed") == ("step 'up' failed with exit code 137: the container exceeded "
                                                     "its memory limit of 2048 MB and was killed")
    assert failure_line("t", 124, "TIMEOUT", "killed after the 2 s timeout") == (
        "step 't' failed with exit code 124: killed after the 2 s timeout")
