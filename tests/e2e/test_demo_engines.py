"""The demo workflow gives the same features and file hashes on the process and docker engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockkit.runner._session import RunRequest, run_request

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "workflows" / "ndvi-demo.yaml"


def _run(tmp_path: Path, engine: str) -> tuple[dict, dict]:
    summary = run_request(RunRequest(target=DEMO, engine=engine, runs_dir=tmp_path / engine))
    prov = json.loads((Path(summary["run_dir"]) / "provenance.json").read_text())
    return summary, prov


def _final(summary: dict) -> dict:
    return json.loads((Path(summary["steps"]["polygons"]["output_dir"]) / "data.json").read_text())


@pytest.mark.slow
def test_demo_runs_and_second_run_is_cached(tmp_path: Path) -> None:
    first, prov = _run(tmp_path, "process")
    assert [s["status"] for s in prov["steps"]] == ["ok"] * 4
    fc = _final(first)
    assert fc["features"] and fc["features"][0]["geometry"]["type"] in ("Polygon", "MultiPolygon")
    second, prov2 = _run(tmp_path, "process")
    assert [s["status"] for s in prov2["steps"]] == ["cached"] * 4
    assert [s["outputs"] for s in prov2["steps"]] == [s["outputs"] for s in prov["steps"]]


@pytest.mark.docker
def test_process_and_docker_engines_agree(tmp_path: Path, docker_client, base_image) -> None:
    process, prov_p = _run(tmp_path, "process")
    docker, prov_d = _run(tmp_path, "docker")
    assert prov_d["engine"] == "docker" and all(s["image_id"] for s in prov_d["steps"])
    assert _final(process) == _final(docker)
    for step_p, step_d in zip(prov_p["steps"], prov_d["steps"]):
        assert step_p["outputs"] == step_d["outputs"], step_p["name"]
