"""Fan-in on the docker engine: upstream outputs are mounted, not linked, and results match the process engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockkit.runner.session import RunRequest, run_request

from .blocks import make_blocks

pytestmark = pytest.mark.docker


def _fan_in(tmp_path: Path, blocks: dict[str, Path]) -> Path:
    wf = tmp_path / "fanin.yaml"
    wf.write_text(
        "name: fanin\nsteps:\n"
        f"  a: {{block: {blocks['source']}, params: {{count: 1, text: aaa}}}}\n"
        f"  b: {{block: {blocks['source']}, params: {{count: 2, text: bbb}}, after: []}}\n"
        f"  up: {{block: {blocks['upper']}, after: [a, b], propagate: true}}\n"
    )
    return wf


def test_docker_fan_in_mounts_upstreams_and_matches_the_process_engine(tmp_path: Path, docker_client, base_image) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    wf = _fan_in(tmp_path, blocks)
    runs = {}
    for engine in ("process", "docker"):
        summary = run_request(RunRequest(target=wf, engine=engine, runs_dir=tmp_path / engine, use_cache=False))
        runs[engine] = Path(summary["run_dir"])
        prov = json.loads((runs[engine] / "provenance.json").read_text())
        assert prov["engine"] == engine and [s["status"] for s in prov["steps"]] == ["ok"] * 3

    docker_input = runs["docker"] / "steps/up/input"
    # Mount points only: the docker engine bind-mounts each upstream output read-only there.
    assert sorted(p.name for p in docker_input.iterdir()) == ["a", "b", "data.json"]
    assert list((docker_input / "a").iterdir()) == [] and list((docker_input / "b").iterdir()) == []
    # The process engine links the files into the input folder instead.
    assert (runs["process"] / "steps/up/input/b/item1.txt").is_file()

    outputs = {e: json.loads((r / "steps/up/output/data.json").read_text()) for e, r in runs.items()}
    assert outputs["docker"]["features"] == outputs["process"]["features"]
    assert {f["id"] for f in outputs["docker"]["features"]} >= {"a:item0", "b:item0", "b:item1"}
    hashes = {
        e: json.loads((r / "provenance.json").read_text())["steps"][2]["outputs"] for e, r in runs.items()
    }
    assert hashes["docker"] == hashes["process"]
    # Forwarded upstream files are hard links to the upstream output, not copies.
    forwarded = runs["docker"] / "steps/up/output/b/item1.txt"
    assert forwarded.stat().st_ino == (runs["docker"] / "steps/b/output/item1.txt").stat().st_ino
