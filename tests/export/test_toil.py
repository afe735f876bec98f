"""An exported workflow with `scatter: features` runs under Toil (toil-cwl-runner) and cwltool to the same bytes.

Toil lives in its own virtual environment (.ci/toil-setup.sh): its pinned cwltool never meets
the project's. It runs with its single-machine batch system and the locally built images
(`--no-prepull`: nothing is pulled, as docs/cwl.md says). The scattered result must be
byte-identical between cwltool and Toil, and hold the same features and file bytes as
`blockkit run --engine docker` of the same blocks without scatter (there, each feature's files
sit at the top of the step's output; with scatter, under the feature's part folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from blockkit.export._cwl import dump_cwl, export_cwl, job_order
from blockkit.runner._plan import plan_workflow
from blockkit.runner._session import RunRequest, run_request
from blockkit.runner._workflow import load_workflow

from .test_cwltool_docker import CWLTOOL, features, file_hashes

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "blocks"


def toil_venv() -> Path | None:
    """Where .ci/toil-setup.sh installs Toil: $BLOCKKIT_TOIL_VENV, /opt/blockkit-toil, or .venv-toil."""
    candidates = [os.environ.get("BLOCKKIT_TOIL_VENV"), "/opt/blockkit-toil", str(REPO / ".venv-toil")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "toil-cwl-runner").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def toil() -> Path:
    venv = toil_venv()
    if venv is None:
        message = "Toil is not installed (bash .ci/toil-setup.sh)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return venv


def workflow_text(scatter: bool) -> str:
    field = ", scatter: features" if scatter else ""
    return f"""
name: scatter-small
steps:
  scenes: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 48, seed: 11, limit: 3}}}}
  ndvi:   {{block: {EXAMPLES / 'ndvi'}{field}}}
  mask:   {{block: {EXAMPLES / 'threshold'}, params: {{threshold: 0.3}}{field}}}
"""


def run_toil(venv: Path, tmp_path: Path, app: Path, job: Path) -> subprocess.CompletedProcess:
    """The documented single-machine command, with every folder Toil makes under tmp_path."""
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}  # Toil runs helpers from PATH
    return subprocess.run(
        [str(venv / "bin" / "toil-cwl-runner"), "--batchSystem", "single_machine", "--no-prepull",
         "--retryCount", "0", "--disableProgress", "--logLevel", "warning",
         "--jobStore", f"file:{tmp_path / 'toil-jobstore'}", "--workDir", str(tmp_path / "toil-work"),
         "--coordinationDir", str(tmp_path / "toil-coord"), "--outdir", str(tmp_path / "toil-out"),
         str(app), str(job)],
        capture_output=True, text=True, timeout=1200, env=env,
    )


def test_scattered_export_gives_the_same_bytes_on_toil_cwltool_and_blockkit(docker_client, base_image, toil, tmp_path) -> None:
    for name in ("toil-work", "toil-coord"):
        (tmp_path / name).mkdir()
    plain = tmp_path / "plain.yaml"
    plain.write_text(workflow_text(scatter=False))
    scattered = tmp_path / "scattered.yaml"
    scattered.write_text(workflow_text(scatter=True))

    # blockkit's docker engine, without scatter; its images are the ones the export names.
    summary = run_request(RunRequest(target=plain, engine="docker", runs_dir=tmp_path / "runs"))
    record = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    images = {name: step["image"] for name, step in record["steps"].items()}
    plan = plan_workflow(load_workflow(scattered))
    app = tmp_path / "app.cwl"
    app.write_text(dump_cwl(export_cwl(plan, images=images)))
    job = tmp_path / "job.yml"
    job.write_text(yaml.safe_dump(job_order(plan)))

    started = time.monotonic()
    cwl = subprocess.run([str(CWLTOOL), "--parallel", "--outdir", str(tmp_path / "cwl-out"),
                          "--tmpdir-prefix", f"{tmp_path}/cwl-tmp/", "--tmp-outdir-prefix", f"{tmp_path}/cwl-tmpout/",
                          str(app), str(job)], capture_output=True, text=True, timeout=1200)
    cwl_seconds = time.monotonic() - started
    assert cwl.returncode == 0, cwl.stderr[-4000:]
    started = time.monotonic()
    toil_run = run_toil(toil, tmp_path, app, job)
    toil_seconds = time.monotonic() - started
    assert toil_run.returncode == 0, toil_run.stderr[-4000:]
    print(f"scattered workflow, 3 features: cwltool --parallel {cwl_seconds:.1f}s, toil-cwl-runner {toil_seconds:.1f}s")

    ours = tmp_path / "cwl-out" / "mask"
    theirs = tmp_path / "toil-out" / "mask"
    # cwltool and Toil: every file, catalog included, byte for byte.
    assert file_hashes(theirs, skip=set()) == file_hashes(ours, skip=set())
    assert len(file_hashes(ours, skip=set())) >= 3 * 2 + 1  # 3 masks, 3 STAC items, catalog.json, data.json

    # blockkit without scatter: the same features; each data path is the part folder + blockkit's path.
    docker_out = Path(summary["steps"]["mask"]["output_dir"])
    docker_hashes = file_hashes(docker_out, skip=set())
    scattered_features = features(ours)
    plain_features = features(docker_out)
    assert [f[0] for f in scattered_features] == [f[0] for f in plain_features] and len(plain_features) == 3
    for (ident, props, geometry), (_, plain_props, plain_geometry) in zip(scattered_features, plain_features):
        part, _, rest = props["up42.data_path"].partition("/")
        assert rest == plain_props["up42.data_path"]
        assert part == f"{ident.removesuffix('_mask')}"  # the part is named after the mask step's input feature
        assert {**props, "up42.data_path": rest} == plain_props and geometry == plain_geometry
        assert file_hashes(ours / part, skip=set())[rest] == docker_hashes[rest]
