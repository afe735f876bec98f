"""Blocks whose image has no blockkit (UP42 style) in an exported CWL workflow, run for real under cwltool.

The block runs its image's own command at /tmp/input -> /tmp/output (CWL v1.2
`dockerOutputDirectory` and an absolute `entryname`); blockkit's helper image takes the
raw output over. Chained after and before blockkit blocks, scattered, propagating: the
result has the same features and file bytes as `blockkit run --engine docker`. A hostile
block's data.json naming `../` or absolute paths, or its symlinks, fail its step and
leak nothing into the result.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from blockkit.export._cwl import HELPER, dump_cwl, export_cwl, helper_block_dir, job_order
from blockkit.runner._build import build_block_image
from blockkit.runner._plan import plan_workflow
from blockkit.runner._session import RunRequest, run_request
from blockkit.runner._workflow import load_workflow

from .test_cwltool_docker import CWLTOOL, features, file_hashes, stac_files
from .test_toil import toil_venv

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "blocks"
UP42 = Path(__file__).resolve().parent / "up42"
BULLSEYE = os.environ.get("BLOCKKIT_BULLSEYE_IMAGE", "blockkit-base:bullseye")


@pytest.fixture(scope="module")
def bullseye(docker_client) -> str:
    try:
        docker_client.images.get(BULLSEYE)
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true but {BULLSEYE} is missing: {exc}")
        pytest.skip(f"{BULLSEYE} missing: BLOCKKIT_BASE_SUITE=bullseye bash .ci/docker-setup.sh")
    return BULLSEYE


@pytest.fixture(scope="module")
def helper(docker_client, base_image) -> str:
    return build_block_image(helper_block_dir(), base_image=base_image, client=docker_client).tag


def cwltool(tmp_path: Path, app: Path, job: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CWLTOOL), "--parallel", *extra, "--outdir", str(tmp_path / "cwl-out"),
         "--tmpdir-prefix", f"{tmp_path}/cwl-tmp/", "--tmp-outdir-prefix", f"{tmp_path}/cwl-tmpout/", str(app), str(job)],
        capture_output=True, text=True, timeout=900,
    )


def export(workflow: Path, images: dict[str, str], tmp_path: Path) -> tuple[Path, Path]:
    plan = plan_workflow(load_workflow(workflow))
    app, job = tmp_path / "app.cwl", tmp_path / "job.yml"
    app.write_text(dump_cwl(export_cwl(plan, images=images)))
    job.write_text(yaml.safe_dump(job_order(plan)))
    return app, job


CHAIN = f"""
name: up42-chain
steps:
  scene:    {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 48, seed: 5, limit: 2}}}}
  annotate: {{block: {UP42 / 'up42-annotate'}, params: {{label: first}}, propagate: true}}
  ndvi:     {{block: {EXAMPLES / 'ndvi'}}}
  again:    {{block: {UP42 / 'up42-annotate'}, params: {{label: second, weight: 2.0}}, scatter: features}}
  last:     {{block: {UP42 / 'up42-annotate'}, params: {{label: third}}}}
"""


def test_up42_blocks_chain_with_blockkit_blocks_under_cwltool_as_under_the_docker_engine(
    tmp_path: Path, bullseye: str, helper: str
) -> None:
    workflow = tmp_path / "chain.yaml"
    workflow.write_text(CHAIN)
    summary = run_request(RunRequest(target=workflow, engine="docker", runs_dir=tmp_path / "runs"))
    record = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    images = {name: step["image"] for name, step in record["steps"].items()}
    app, job = export(workflow, {**images, HELPER: helper}, tmp_path)
    text = app.read_text()
    assert "blockkit.export.step" not in text.split("id: annotate-tool")[1].split("id: ")[0]  # nothing of blockkit inside

    result = cwltool(tmp_path, app, job)
    assert result.returncode == 0, result.stderr[-4000:]
    ours = Path(summary["steps"]["last"]["output_dir"])
    theirs = tmp_path / "cwl-out" / "last"
    assert features(theirs) == features(ours)
    added = stac_files(theirs)
    assert "catalog.json" in added
    assert file_hashes(theirs, skip=added) == file_hashes(ours, skip=set())
    props = [f[1] for f in features(theirs)]
    # scene (2) -> annotate + 2 forwarded (4) -> ndvi (4) -> again, once per feature (4) -> last (4)
    assert len(props) == 4 and {p["annotate:label"] for p in props} == {"third"}
    assert all(p["annotate:mode"] == "DEFAULT" and p["annotate:weight"] == 1.5 for p in props)
    assert not any((tmp_path / "cwl-out").rglob("scratch.txt"))  # HOME is /tmp, not the output folder
    assert not any((tmp_path / "cwl-out").rglob(".blockkit-quicklooks"))


def test_fan_in_into_an_up42_block_matches_the_docker_engine(tmp_path: Path, bullseye: str, helper: str) -> None:
    workflow = tmp_path / "fan.yaml"
    workflow.write_text(f"""
name: up42-fan-in
steps:
  a:        {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32, seed: 1, limit: 1}}}}
  b:        {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32, seed: 2, limit: 2}}, after: []}}
  annotate: {{block: {UP42 / 'up42-annotate'}, after: [a, b]}}
""")
    summary = run_request(RunRequest(target=workflow, engine="docker", runs_dir=tmp_path / "runs"))
    record = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    images = {name: step["image"] for name, step in record["steps"].items()}
    app, job = export(workflow, {**images, HELPER: helper}, tmp_path)
    result = cwltool(tmp_path, app, job)
    assert result.returncode == 0, result.stderr[-4000:]
    ours = Path(summary["steps"]["annotate"]["output_dir"])
    theirs = tmp_path / "cwl-out" / "annotate"
    assert features(theirs) == features(ours)
    ids = [f[0] for f in features(theirs)]
    assert len(ids) == 3 and ids[0].startswith("a:") and all(i.startswith("b:") for i in ids[1:])  # the runner's rewriting
    assert file_hashes(theirs, skip=stac_files(theirs)) == file_hashes(ours, skip=set())


def test_quicklooks_of_an_up42_block_are_kept_as_under_the_docker_engine(
    tmp_path: Path, bullseye: str, helper: str
) -> None:
    workflow = tmp_path / "ql.yaml"
    workflow.write_text(f"""
name: up42-quicklooks
steps:
  scene:    {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32, seed: 9, limit: 2}}}}
  annotate: {{block: {UP42 / 'up42-annotate'}, scatter: features}}
""")
    summary = run_request(RunRequest(target=workflow, engine="docker", runs_dir=tmp_path / "runs"))
    record = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    images = {name: step["image"] for name, step in record["steps"].items()}
    plan = plan_workflow(load_workflow(workflow))
    document = export_cwl(plan, images={**images, HELPER: helper})
    # The step's quicklooks become a workflow output too, to compare them.
    document["$graph"][0]["outputs"].append({"id": "quicklooks", "type": "Directory?",
                                             "outputSource": "annotate/quicklooks"})
    app, job = tmp_path / "app.cwl", tmp_path / "job.yml"
    app.write_text(dump_cwl(document))
    job.write_text("{}\n")
    result = cwltool(tmp_path, app, job)
    assert result.returncode == 0, result.stderr[-4000:]
    outputs = json.loads(result.stdout)
    theirs = Path(outputs["quicklooks"]["path"])
    ours = Path(summary["run_dir"]) / "steps" / "annotate" / "quicklooks"
    assert file_hashes(theirs, skip=set()) == file_hashes(ours, skip=set())
    assert len(file_hashes(theirs, skip=set())) == 2  # one per feature, under the feature's part folder


def test_a_hostile_up42_block_leaks_nothing_into_the_result(tmp_path: Path, bullseye: str, helper: str) -> None:
    attacks = ["dotdot", "absolute", "symlink", "symlink-dir", "fifo"]
    workflow = tmp_path / "hostile.yaml"
    workflow.write_text("name: hostile\nsteps:\n"
                        f"  scene: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32, seed: 3, limit: 1}}}}\n"
                        + "".join(f"  h_{a.replace('-', '_')}: {{block: {UP42 / 'up42-hostile'}, "
                                  f"params: {{attack: {a}}}, after: [scene]}}\n" for a in attacks)
                        + f"  after: {{block: {UP42 / 'up42-annotate'}, after: [h_symlink]}}\n")
    hostile = build_block_image(UP42 / "up42-hostile").tag
    annotate = build_block_image(UP42 / "up42-annotate").tag
    scene = build_block_image(EXAMPLES / "synthetic-scene", base_image="blockkit-base:bookworm").tag
    images = {"scene": scene, "after": annotate, HELPER: helper,
              **{f"h_{a.replace('-', '_')}": hostile for a in attacks}}
    app, job = export(workflow, images, tmp_path)
    result = cwltool(tmp_path, app, job, "--on-error", "continue")
    assert result.returncode != 0
    for attack in attacks:
        step = f"h_{attack.replace('-', '_')}"
        assert f"step {step!r}: failed with exit code 6 (NO_OUTPUT_ERROR)" in result.stderr, (attack, result.stderr[-3000:])
    assert "is absolute" in result.stderr and "leaves its folder" in result.stderr
    assert "refusing to forward symlink" in result.stderr
    assert "[step after] completed success" not in result.stderr  # nothing runs on a refused output
    passwd = Path("/etc/passwd").read_bytes()
    for path in (tmp_path / "cwl-out").rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file():
            assert path.read_bytes() != passwd


@pytest.mark.skipif(toil_venv() is None and os.environ.get("CI", "").lower() not in {"1", "true", "yes"},
                    reason="Toil is not installed (bash .ci/toil-setup.sh)")
def test_up42_blocks_run_under_toil_to_the_same_bytes_as_cwltool(tmp_path: Path, bullseye: str, helper: str) -> None:
    venv = toil_venv()
    assert venv is not None, "CI=true but Toil is not installed (bash .ci/toil-setup.sh)"
    workflow = tmp_path / "chain.yaml"
    workflow.write_text(CHAIN)
    images = {"scene": build_block_image(EXAMPLES / "synthetic-scene", base_image="blockkit-base:bookworm").tag,
              "ndvi": build_block_image(EXAMPLES / "ndvi", base_image="blockkit-base:bookworm").tag,
              **{name: build_block_image(UP42 / "up42-annotate").tag for name in ("annotate", "again", "last")},
              HELPER: helper}
    app, job = export(workflow, images, tmp_path)
    result = cwltool(tmp_path, app, job)
    assert result.returncode == 0, result.stderr[-4000:]
    toil = subprocess.run(
        [str(venv / "bin" / "toil-cwl-runner"), "--no-prepull", "--batchSystem", "single_machine",
         "--jobStore", f"file:{tmp_path / 'jobstore'}", "--workDir", str(tmp_path), "--retryCount", "0",
         "--outdir", str(tmp_path / "toil-out"), str(app), str(job)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"},
    )
    assert toil.returncode == 0, toil.stderr[-4000:]
    assert file_hashes(tmp_path / "toil-out" / "last", skip=set()) == file_hashes(tmp_path / "cwl-out" / "last", skip=set())


def test_push_and_export_name_the_helper_image_when_a_step_has_no_blockkit(
    tmp_path: Path, bullseye: str, helper: str, base_image: str
) -> None:
    from blockkit.export._cwl import build_images, expected_images
    from blockkit.export._push import images_to_push

    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"""
name: needs-helper
steps:
  scene:    {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32}}}}
  annotate: {{block: {UP42 / 'up42-annotate'}}}
""")
    plan = plan_workflow(load_workflow(workflow))
    built = build_images(plan, base_image=base_image)
    assert built[HELPER] == helper
    # The block with its own Dockerfile keeps its own FROM (bullseye), not --base-image.
    assert built["annotate"] == build_block_image(UP42 / "up42-annotate").tag
    assert expected_images(plan, base_image=base_image) == built
    assert images_to_push(workflow, build=False, base_image=base_image) == [built["scene"], built["annotate"], helper]
    only_blockkit = tmp_path / "plain.yaml"
    only_blockkit.write_text(f"name: plain\nsteps:\n  scene: {{block: {EXAMPLES / 'synthetic-scene'}}}\n")
    assert HELPER not in build_images(plan_workflow(load_workflow(only_blockkit)), base_image=base_image)
