"""blockkit.testing.run_block: a block folder run as the process engine runs it."""

from __future__ import annotations

import json
from pathlib import Path

from blockkit.testing import run_block
from tests.runner.blocks import make_blocks


def _input(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("abc\n")
    feature = {"type": "Feature", "id": "a", "geometry": None, "properties": {"up42.data_path": "a.txt", "k": 1}}
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return folder


def test_run_block_gives_features_streams_and_folders(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    result = run_block(blocks["upper"], _input(tmp_path), tmp_path / "out", {"behaviour": "ok"})
    assert result.returncode == 0, result.stderr
    assert [f["properties"]["up42.data_path"] for f in result.features] == ["a.txt.upper"]
    assert (result.output_dir / "a.txt.upper").read_text() == "ABC\n"
    assert result.quicklook_dir == tmp_path / "out-quicklooks"
    assert "running processing block" in result.stderr


def test_run_block_failure_headline_and_exit_code(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    input_dir = _input(tmp_path)
    result = run_block(blocks["upper"], input_dir, tmp_path / "out", {"behaviour": "bad-output"})
    assert result.returncode == 6
    assert result.headline.startswith("[NO_OUTPUT_ERROR] ") and "missing.txt" in result.headline
    bad = run_block(blocks["upper"], input_dir, tmp_path / "out2", {"behaviour": "nope"})
    assert bad.returncode == 2 and bad.headline.startswith("[INPUT_PARAMETERS_ERROR] ")


def test_run_block_honours_the_manifest_command_and_mode(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    block = blocks["source"]
    manifest = json.loads((block / "UP42Manifest.json").read_text())
    manifest["blockkit"] = {"command": ["python", "-c", "import os, sys; print(os.environ['UP42_JOB_MODE']); sys.exit(5)"]}
    (block / "UP42Manifest.json").write_text(json.dumps(manifest))
    result = run_block(block, tmp_path, tmp_path / "out", mode="DRY_RUN")
    assert result.returncode == 5 and result.stdout.strip() == "DRY_RUN"
