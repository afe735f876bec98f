"""cwltool runs exported workflows with the locally built images to the same results as `blockkit run --engine docker`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from blockkit.export._cwl import dump_cwl, export_cwl, job_order
from blockkit.runner._build import build_block_image
from blockkit.runner._plan import plan_workflow
from blockkit.runner._session import RunRequest, run_request
from blockkit.runner._workflow import load_workflow

from .blocks import make_blocks

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "blocks"
CWLTOOL = Path(sys.executable).parent / "cwltool"


def cwltool(tmp_path: Path, app: Path, job: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run cwltool with every folder it makes under tmp_path; returns the process and its wall time."""
    started = time.monotonic()
    result = subprocess.run(
        [str(CWLTOOL), "--outdir", str(tmp_path / "cwl-out"), "--tmpdir-prefix", f"{tmp_path}/cwl-tmp/",
         "--tmp-outdir-prefix", f"{tmp_path}/cwl-tmpout/", str(app), str(job)],
        capture_output=True, text=True, timeout=900,
    )
    return result, time.monotonic() - started


def export_with(workflow: Path, images: dict[str, str], tmp_path: Path, extra_job: dict | None = None) -> tuple[Path, Path]:
    plan = plan_workflow(load_workflow(workflow))
    app = tmp_path / "app.cwl"
    app.write_text(dump_cwl(export_cwl(plan, images=images)))
    job = tmp_path / "job.yml"
    job.write_text(yaml.safe_dump({**job_order(plan), **(extra_job or {})}))
    return app, job


def stac_files(folder: Path) -> set[str]:
    """catalog.json and the item files it links: what the CWL export adds to an output."""
    catalog = folder / "catalog.json"
    if not catalog.is_file():
        return set()
    links = json.loads(catalog.read_text())["links"]
    return {"catalog.json"} | {link["href"].removeprefix("./") for link in links if link["rel"] == "item"}


def file_hashes(folder: Path, skip: set[str]) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in skip
    }


def features(folder: Path) -> list[tuple]:
    data = json.loads((folder / "data.json").read_text())
    return [(f.get("id"), f.get("properties"), f.get("geometry")) for f in data["features"]]


def run_both(workflow: Path, tmp_path: Path) -> tuple[dict, subprocess.CompletedProcess, float]:
    """`blockkit run --engine docker`, then cwltool on the export using the very images that run used."""
    started = time.monotonic()
    summary = run_request(RunRequest(target=workflow, engine="docker", runs_dir=tmp_path / "runs"))
    print(f"blockkit run --engine docker ({workflow.stem}): {time.monotonic() - started:.1f}s incl. image builds")
    record = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    images = {name: step["image"] for name, step in record["steps"].items()}
    app, job = export_with(workflow, images, tmp_path)
    result, seconds = cwltool(tmp_path, app, job)
    assert result.returncode == 0, result.stderr[-4000:]
    return summary, result, seconds


def assert_same_outputs(summary: dict, step: str, tmp_path: Path) -> None:
    ours = Path(summary["steps"][step]["output_dir"])
    theirs = tmp_path / "cwl-out" / step
    assert features(theirs) == features(ours)
    added = stac_files(theirs)
    assert "catalog.json" in added  # the OGC App Package result: a STAC catalog beside data.json
    assert file_hashes(theirs, skip=added) == file_hashes(ours, skip=set())


@pytest.fixture()
def example_workflows(tmp_path: Path) -> dict[str, Path]:
    """Small versions of the example workflows (the same blocks, smaller rasters)."""
    linear = tmp_path / "linear.yaml"
    linear.write_text(f"""
name: linear-small
steps:
  scene: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 64, seed: 7}}}}
  ndvi:  {{block: {EXAMPLES / 'ndvi'}}}
  mask:  {{block: {EXAMPLES / 'threshold'}, params: {{threshold: 0.3}}, propagate: true}}
""")
    fan_in = tmp_path / "fan-in.yaml"
    fan_in.write_text(f"""
name: fan-in-small
steps:
  a:    {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 48, seed: 1, bbox: [13.30, 52.50, 13.35, 52.53]}}}}
  b:    {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 48, seed: 2, bbox: [13.35, 52.50, 13.40, 52.53]}}, after: []}}
  ndvi: {{block: {EXAMPLES / 'ndvi'}, after: [a, b]}}
  mask: {{block: {EXAMPLES / 'threshold'}, params: {{threshold: 0.3}}}}
""")
    return {"linear": linear, "fan-in": fan_in}


def test_linear_workflow_matches_the_docker_engine(docker_client, base_image, example_workflows, tmp_path) -> None:
    summary, result, seconds = run_both(example_workflows["linear"], tmp_path)
    assert_same_outputs(summary, "mask", tmp_path)
    outputs = json.loads(result.stdout)
    assert Path(outputs["results"]["path"]) == tmp_path / "cwl-out" / "mask"
    print(f"cwltool wall time, 3-step chain: {seconds:.1f}s")


def test_example_fan_in_workflow_matches_the_docker_engine(docker_client, base_image, example_workflows, tmp_path) -> None:
    summary, _, _ = run_both(example_workflows["fan-in"], tmp_path)
    assert_same_outputs(summary, "mask", tmp_path)
    ids = [f[0] for f in features(tmp_path / "cwl-out" / "mask")]
    assert any(i.startswith("a:") for i in ids) and any(i.startswith("b:") for i in ids)


def test_fan_in_with_propagation_matches_the_docker_engine(docker_client, base_image, tmp_path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    workflow = tmp_path / "fan.yaml"
    workflow.write_text(f"""
name: fan-in-tiny
steps:
  a:  {{block: {blocks['source']}, params: {{count: 2, text: aaa}}}}
  b:  {{block: {blocks['source']}, params: {{count: 1, text: bbb}}, after: []}}
  up: {{block: {blocks['upper']}, after: [a, b], propagate: true}}
""")
    summary, _, _ = run_both(workflow, tmp_path)
    assert_same_outputs(summary, "up", tmp_path)
    ids = [f[0] for f in features(tmp_path / "cwl-out" / "up")]
    assert ids[:3] == ["a:item0", "a:item1", "b:item0"] and len(ids) == 6  # 3 results + 3 forwarded


@pytest.fixture()
def test_images(docker_client, base_image, tmp_path) -> tuple[dict[str, Path], dict[str, str]]:
    blocks = make_blocks(tmp_path / "blocks")
    images = {name: build_block_image(folder, base_image=base_image, client=docker_client).tag
              for name, folder in blocks.items()}
    return blocks, images


def test_a_failing_block_reports_its_exit_code_through_cwltool(test_images, tmp_path) -> None:
    blocks, images = test_images
    workflow = tmp_path / "fail.yaml"
    workflow.write_text(f"""
name: fails
steps:
  src: {{block: {blocks['source']}}}
  up:  {{block: {blocks['upper']}, params: {{fail_with: 4}}}}
""")
    app, job = export_with(workflow, {"src": images["source"], "up": images["upper"]}, tmp_path)
    result, _ = cwltool(tmp_path, app, job)
    assert result.returncode != 0
    assert "step 'up': failed with exit code 4 (WRONG_INPUT_ERROR)" in result.stderr
    assert "[job up] completed permanentFail" in result.stderr
    assert "[WRONG_INPUT_ERROR] asked to fail" in result.stderr


def test_secret_reaches_the_block_but_not_the_logs(test_images, tmp_path) -> None:
    blocks, images = test_images
    secret = 'pa"ss\\word-do-not-log'
    workflow = tmp_path / "secret.yaml"
    workflow.write_text(f"""
name: secret
steps:
  src:  {{block: {blocks['source']}, params: {{count: 1}}}}
  priv: {{block: {blocks['secretive']}, params: {{password: from-the-workflow-file}}}}
""")
    app, job = export_with(workflow, {"src": images["source"], "priv": images["secretive"]}, tmp_path,
                           extra_job={"priv__password": secret})
    assert secret not in app.read_text() and "from-the-workflow-file" not in app.read_text()
    result, _ = cwltool(tmp_path, app, job)
    assert result.returncode == 0, result.stderr[-4000:]
    assert secret not in result.stderr and secret not in result.stdout
    (feature,) = json.loads((tmp_path / "cwl-out" / "priv" / "data.json").read_text())["features"]
    assert feature["properties"]["password_sha256"] == hashlib.sha256(secret.encode()).hexdigest()


def test_arrays_and_geometries_reach_the_block_unchanged_whatever_keys_they_hold(test_images, tmp_path) -> None:
    """Keys a CWL engine acts on in an `Any` value (class, $include, name, path, format) travel as JSON text."""
    blocks, images = test_images
    tags = [{"class": "File", "location": "/etc/passwd"}, {"name": "red", "format": "GTiff", "path": "b04.tif"},
            {"$include": "host-secret.txt", "id": 7}, "plain"]
    aoi = {"type": "Feature", "id": "aoi-1", "geometry": {"type": "Point", "coordinates": [13.4, 52.5]}, "properties": {}}
    workflow = tmp_path / "values.yaml"
    workflow.write_text(f"""
name: values
steps:
  src: {{block: {blocks['source']}, params: {{count: 1}}}}
  up:  {{block: {blocks['upper']}, params: {{tags: {json.dumps(tags)}, aoi: {json.dumps(aoi)}}}}}
""")
    (tmp_path / "host-secret.txt").write_text("HOST-SECRET")
    app, job = export_with(workflow, {"src": images["source"], "up": images["upper"]}, tmp_path)
    result, _ = cwltool(tmp_path, app, job)
    assert result.returncode == 0, result.stderr[-4000:]
    (feature,) = json.loads((tmp_path / "cwl-out" / "up" / "data.json").read_text())["features"]
    assert feature["properties"]["tags"] == tags and feature["properties"]["aoi"] == aoi
    assert "HOST-SECRET" not in (tmp_path / "cwl-out" / "up" / "data.json").read_text()
