"""examples/workflows/s3-gateway.yaml end to end: s3-copy reads and writes only through the S3 gateway."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from blockkit.runner._session import RunRequest, run_request

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "workflows" / "s3-gateway.yaml"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_run(summary: dict[str, Any]) -> None:
    """The copy step's output mirrors the scene through S3; provenance lists every output file."""
    run_dir = Path(summary["run_dir"])
    scene_out = Path(summary["steps"]["scene"]["output_dir"])
    copy_out = Path(summary["steps"]["copy"]["output_dir"])
    fc = json.loads((copy_out / "data.json").read_text())
    assert len(fc["features"]) == 1
    [feature] = fc["features"]
    tif = feature["properties"]["up42.data_path"]
    assert (copy_out / tif).is_file()
    assert sha256(copy_out / tif) == sha256(scene_out / tif)
    assert not (copy_out / tif).is_symlink()
    stats = json.loads((copy_out / feature["properties"]["s3_copy.stats"]).read_text())
    assert stats["size"] == (scene_out / tif).stat().st_size == feature["properties"]["s3_copy.size"]
    assert stats["etag"] == hashlib.md5((scene_out / tif).read_bytes()).hexdigest()

    provenance = json.loads((run_dir / "provenance.json").read_text())
    step = next(s for s in provenance["steps"] if s["name"] == "copy")
    assert step["status"] == "ok" and step["upstream"] == ["scene"]
    files = {p.relative_to(copy_out).as_posix(): sha256(p) for p in copy_out.rglob("*") if p.is_file()}
    assert set(files) == {"data.json", tif, feature["properties"]["s3_copy.stats"]}
    assert step["outputs"] == files

    # The block really went through the gateway: its access log has the reads and writes.
    log = run_dir / "logs" / "copy.gateway.log"
    requests = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    seen = {(r["method"], r["path"].split("?")[0], r["status"]) for r in requests}
    assert ("GET", "/input/data.json", 200) in seen
    assert ("PUT", "/out/data.json", 200) in seen
    assert ("PUT", f"/out/{tif}", 200) in seen


@pytest.mark.slow
def test_s3_gateway_workflow_process_engine(tmp_path: Path) -> None:
    summary = run_request(RunRequest(target=WORKFLOW, engine="process", runs_dir=tmp_path, use_cache=False))
    assert summary["engine"] == "process"
    check_run(summary)


@pytest.mark.docker
def test_s3_gateway_workflow_docker_engine(tmp_path: Path, docker_client: Any, base_image: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKKIT_BASE_IMAGE", base_image)
    summary = run_request(RunRequest(target=WORKFLOW, engine="docker", runs_dir=tmp_path, use_cache=False))
    assert summary["engine"] == "docker"
    check_run(summary)
