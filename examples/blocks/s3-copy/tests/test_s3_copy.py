"""s3-copy run for real as a process against a gateway started over folders; its input folder is not readable to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blockkit.gateway import Credentials, Gateway, client_env

BLOCK = Path(__file__).resolve().parents[1]
KEYS = Credentials("copy-access", "copy-secret-key")


def feature(fid: str, path: str) -> dict[str, Any]:
    return {"type": "Feature", "id": fid, "geometry": None, "properties": {"up42.data_path": path, "title": fid}}


@pytest.fixture()
def served(tmp_path: Path) -> Any:
    """Input folder with data.json and two files, an empty output, and a gateway over them."""
    inp, out = tmp_path / "input", tmp_path / "out"
    (inp / "a").mkdir(parents=True)
    (inp / "a" / "scene.tif").write_bytes(b"\x01" * 1234)
    (inp / "b.bin").write_bytes(b"hello")
    fc = {"type": "FeatureCollection", "features": [feature("a", "a/scene.tif"), feature("b", "b.bin")]}
    (inp / "data.json").write_text(json.dumps(fc))
    with Gateway({"input": inp}, out, credentials=KEYS) as gateway:
        yield gateway, inp, out


def run(tmp_path: Path, endpoint: str | None, inp: Path, output: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(
        BLOCKKIT_INPUT_DIR=str(inp),  # the runtime reads data.json here; the block itself only uses S3
        BLOCKKIT_OUTPUT_DIR=str(output),
        BLOCKKIT_QUICKLOOK_DIR=str(tmp_path / "quicklooks"),
        UP42_TASK_PARAMETERS="{}",
    )
    if endpoint is not None:
        env.update(client_env(endpoint, KEYS))
    return subprocess.run([sys.executable, str(BLOCK / "src" / "run.py")], env=env, capture_output=True,
                          text=True, timeout=120)


def test_copies_every_linked_object_and_writes_stats_and_data_json(tmp_path: Path, served: Any) -> None:
    gateway, inp, out = served
    result = run(tmp_path, gateway.endpoint, inp, out)
    assert result.returncode == 0, result.stderr
    assert (out / "a" / "scene.tif").read_bytes() == (inp / "a" / "scene.tif").read_bytes()
    assert (out / "b.bin").read_bytes() == b"hello"
    stats = json.loads((out / "a.stats.json").read_text())
    assert stats["size"] == 1234 and stats["key"] == "a/scene.tif"
    fc = json.loads((out / "data.json").read_text())
    assert [f["id"] for f in fc["features"]] == ["a", "b"]
    assert [f["properties"]["s3_copy.size"] for f in fc["features"]] == [1234, 5]
    assert fc["features"][0]["properties"]["title"] == "a"


def test_without_the_gateway_it_fails_with_a_clear_error(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "x.bin").write_bytes(b"x")
    (inp / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature("x", "x.bin")]}))
    result = run(tmp_path, None, inp, tmp_path / "out")
    assert result.returncode != 0
    assert "S3_ENDPOINT" in result.stderr + result.stdout
