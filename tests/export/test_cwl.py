"""CWL export without Docker: the document, cwltool --validate, secrets, errors and the step entrypoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blockkit.contract._datajson import load_data_json, write_data_json
from blockkit.contract._manifest import MACHINE_TYPES
from blockkit.export import step as entry
from blockkit.export._cwl import dump_cwl, export_cwl, job_order
from blockkit.runner._plan import plan_workflow
from blockkit.runner._workflow import load_workflow

from .blocks import make_blocks

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CWLTOOL = BIN / "cwltool"
BLOCKKIT = BIN / "blockkit"
EXAMPLE_WORKFLOWS = sorted((REPO / "examples" / "workflows").glob("*.yaml"))


def fixed_images(plan) -> dict[str, str]:
    return {s.name: f"blockkit/{s.manifest.name}:test" for s in plan.steps}


def export_file(workflow: Path, out: Path) -> tuple[dict, Path]:
    plan = plan_workflow(load_workflow(workflow))
    # stac-to-s3.yaml publishes to S3 (`output:`), which CWL leaves to the platform.
    document = export_cwl(plan, images=fixed_images(plan), leave_output=True)
    out.write_text(dump_cwl(document, source=str(workflow)))
    return document, out


def cwltool_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CWLTOOL), "--validate", str(path)], capture_output=True, text=True, timeout=120)


def graph(document: dict) -> dict[str, dict]:
    return {item["id"]: item for item in document["$graph"]}


@pytest.fixture()
def blocks(tmp_path: Path) -> dict[str, Path]:
    return make_blocks(tmp_path / "blocks")


def write_workflow(tmp_path: Path, body: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def linear(tmp_path: Path, blocks: dict[str, Path]) -> Path:
    return write_workflow(tmp_path, f"""
name: linear
steps:
  src: {{block: {blocks['source']}, params: {{count: 3, text: hi}}}}
  up:  {{block: {blocks['upper']}, params: {{scale: 2.5, aoi: {{type: Point, coordinates: [13.4, 52.5]}}}}, timeout: 30}}
""")


def fan_in(tmp_path: Path, blocks: dict[str, Path]) -> Path:
    return write_workflow(tmp_path, f"""
name: fan-in
steps:
  a:  {{block: {blocks['source']}, params: {{text: aaa}}}}
  b:  {{block: {blocks['source']}, params: {{count: 1, text: bbb}}, after: []}}
  up: {{block: {blocks['upper']}, after: [a, b], propagate: true}}
""", "fan.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("workflow", EXAMPLE_WORKFLOWS, ids=lambda p: p.name)
def test_cwltool_validates_every_example_workflow(workflow: Path, tmp_path: Path) -> None:
    _, path = export_file(workflow, tmp_path / "app.cwl")
    result = cwltool_validate(path)
    assert result.returncode == 0, result.stderr
    assert "is valid CWL" in result.stdout + result.stderr


def test_example_workflows_exist() -> None:
    # The parametrized test above must not pass vacuously.
    assert {p.name for p in EXAMPLE_WORKFLOWS} >= {"ndvi-demo.yaml", "fan-in.yaml"}


@pytest.mark.slow
def test_linear_document_maps_steps_images_params_resources_and_network(tmp_path, blocks) -> None:
    document, path = export_file(linear(tmp_path, blocks), tmp_path / "app.cwl")
    assert cwltool_validate(path).returncode == 0
    assert document["cwlVersion"] == "v1.2"
    items = graph(document)
    main, src, up = items["main"], items["src-tool"], items["up-tool"]
    assert main["class"] == "Workflow" and src["class"] == up["class"] == "CommandLineTool"
    assert src["requirements"]["DockerRequirement"] == {"dockerPull": "blockkit/cwl-source:test"}
    # Only the block whose manifest allows network gets it.
    assert src["requirements"]["NetworkAccess"] == {"networkAccess": True}
    assert "NetworkAccess" not in up["requirements"]
    cpus, memory = MACHINE_TYPES["medium"]
    assert up["requirements"]["ResourceRequirement"] == {"coresMin": cpus, "ramMin": memory}
    # Directory in, Directory out; a first data step has no input folder.
    up_inputs = {i["id"]: i for i in up["inputs"]}
    assert up_inputs["input"]["type"] == "Directory"
    assert not any(i["type"] == "Directory" for i in src["inputs"])
    assert {o["id"]: o["type"] for o in up["outputs"]}["output"] == "Directory"
    # Typed parameters with the manifest's defaults on the tool...
    assert up_inputs["scale"] == {**up_inputs["scale"], "type": "double", "default": 1.5}
    assert up_inputs["fail_with"]["type"] == "int"
    # Arrays and geometries as JSON text: a CWL engine passes a string as data, not an `Any` value.
    assert up_inputs["tags"]["type"] == "string" and up_inputs["tags"]["default"] == '["a","b"]'
    assert up_inputs["aoi"]["type"] == "string?" and "default" not in up_inputs["aoi"]
    assert up_inputs["dotted_name"]["default"] == "x"
    # ...and the workflow file's values as the defaults of the workflow inputs.
    wf_inputs = {i["id"]: i for i in main["inputs"]}
    assert wf_inputs["src__count"]["default"] == 3
    assert wf_inputs["up__scale"]["default"] == 2.5
    assert wf_inputs["up__aoi"]["default"] == '{"type":"Point","coordinates":[13.4,52.5]}'
    # UP42_TASK_PARAMETERS names the manifest's parameter names, not the CWL ids.
    params_js = up["requirements"]["EnvVarRequirement"]["envDef"]["UP42_TASK_PARAMETERS"]
    assert '"dotted.name": inputs.dotted_name' in params_js
    assert '"tags": (inputs.tags === null ? null : JSON.parse(inputs.tags))' in params_js
    assert up["requirements"]["ToolTimeLimit"]["timelimit"] >= 30
    assert "--timeout" in up["arguments"]
    assert [o["outputSource"] for o in main["outputs"]] == ["up/output"]


@pytest.mark.slow
def test_fan_in_has_one_directory_per_upstream_staged_as_the_runner_lays_it_out(tmp_path, blocks) -> None:
    document, path = export_file(fan_in(tmp_path, blocks), tmp_path / "app.cwl")
    assert cwltool_validate(path).returncode == 0
    items = graph(document)
    up = items["up-tool"]
    dirs = [i["id"] for i in up["inputs"] if i["type"] == "Directory"]
    assert dirs == ["input_a", "input_b"]
    listing = up["requirements"]["InitialWorkDirRequirement"]["listing"]
    assert [e["entryname"] for e in listing] == ["_input/a", "_input/b"]
    step_in = {i["id"]: i["source"] for i in next(s for s in items["main"]["steps"] if s["id"] == "up")["in"]}
    assert step_in["input_a"] == "a/output" and step_in["input_b"] == "b/output"
    assert "--propagate" in up["arguments"]


@pytest.mark.slow
def test_secrets_never_enter_the_document_and_are_marked_secret(tmp_path, blocks) -> None:
    secret = "hunter2-do-not-leak"
    workflow = write_workflow(tmp_path, f"""
name: secrets
steps:
  src:  {{block: {blocks['source']}}}
  priv: {{block: {blocks['secretive']}, params: {{password: {secret}}}, keys: [s3-archive]}}
""")
    out = tmp_path / "app.cwl"
    job = tmp_path / "job.yml"
    result = subprocess.run([str(BLOCKKIT), "export", "cwl", str(workflow), "--no-build", "-o", str(out),
                             "--job", str(job), "--image", "src=x:1", "--image", "priv=y:1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for text in (out.read_text(), job.read_text(), result.stdout, result.stderr):
        assert secret not in text
    document = yaml.safe_load(out.read_text())
    items = graph(document)
    assert document["$namespaces"]["cwltool"] == "http://commonwl.org/cwltool#"
    assert items["priv-tool"]["hints"]["cwltool:Secrets"]["secrets"] == ["password", "key_s3_archive"]
    assert items["main"]["hints"]["cwltool:Secrets"]["secrets"] == ["priv__password", "priv__key_s3_archive"]
    for process in (items["main"], items["priv-tool"]):
        for item in process["inputs"]:
            if "password" in item["id"] or "key_" in item["id"]:
                assert "default" not in item and item["type"] == "string"
    assert "priv__password" not in yaml.safe_load(job.read_text())
    assert "priv__password" in job.read_text()  # named in a comment so users know to give it
    assert cwltool_validate(out).returncode == 0


def _blockkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BLOCKKIT), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_invalid_step_fails_with_the_same_messages_as_validate(tmp_path, blocks) -> None:
    workflow = write_workflow(tmp_path, f"""
name: broken
steps:
  src: {{block: {blocks['source']}, params: {{count: 1000, colour: red}}}}
  up:  {{block: {blocks['upper']}, after: [nowhere]}}
  gone: {{block: does/not/exist}}
""")
    validated = _blockkit("validate", str(workflow), cwd=tmp_path)
    exported = _blockkit("export", "cwl", str(workflow), "--no-build", "-o", str(tmp_path / "app.cwl"), cwd=tmp_path)
    assert validated.returncode != 0
    assert exported.returncode == validated.returncode
    assert exported.stderr == validated.stderr
    assert "nowhere" in exported.stderr and "does/not/exist" in exported.stderr
    assert not (tmp_path / "app.cwl").exists()


@pytest.mark.slow
def test_cli_writes_the_document_and_a_job_order(tmp_path, blocks) -> None:
    input_dir = tmp_path / "scenes"
    write_data_json(input_dir, {"type": "FeatureCollection", "features": []})
    workflow = write_workflow(tmp_path, f"""
name: with-input
input: scenes
steps:
  up: {{block: {blocks['upper']}, params: {{scale: 3}}}}
""")
    result = _blockkit("export", "cwl", str(workflow), "--no-build", "--image", "up=img:1", "--registry",
                       "registry.example/team", "-o", str(tmp_path / "app.cwl"), "--job", str(tmp_path / "job.yml"),
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load((tmp_path / "app.cwl").read_text())
    assert graph(document)["up-tool"]["requirements"]["DockerRequirement"]["dockerPull"] == "registry.example/team/img:1"
    assert {i["id"]: i["type"] for i in graph(document)["main"]["inputs"]}["input"] == "Directory"
    job = yaml.safe_load((tmp_path / "job.yml").read_text())
    assert job["input"] == {"class": "Directory", "path": str(input_dir.resolve())}
    assert job["up__scale"] == 3 and job["up__tags"] == '["a","b"]'
    assert "aoi" not in " ".join(job)  # optional, no value: left to the block


def test_job_order_passes_a_stac_reference_through_for_platform_stage_in(tmp_path, blocks) -> None:
    workflow = write_workflow(tmp_path, f"""
name: stac
input: stac+https://example.org/items/S2A_1.json
steps:
  up: {{block: {blocks['upper']}}}
""")
    plan = plan_workflow(load_workflow(workflow))
    job = job_order(plan, input_location=plan.workflow.input)
    assert job["input"] == {"class": "Directory", "location": "https://example.org/items/S2A_1.json"}


# --- the entrypoint that runs inside the container (tested here as a plain process) ---------------

BLOCK_SOURCE = '''
import json, os, sys, time
from pathlib import Path
params = json.loads(os.environ["UP42_TASK_PARAMETERS"])
if params.get("sleep"):
    time.sleep(params["sleep"])
if params.get("exit"):
    print("[WRONG_INPUT_ERROR] feature 1: bad", file=sys.stderr)
    sys.exit(params["exit"])
inp, out = Path(os.environ["BLOCKKIT_INPUT_DIR"]), Path(os.environ["BLOCKKIT_OUTPUT_DIR"])
features = json.loads((inp / "data.json").read_text())["features"] if (inp / "data.json").exists() else []
(out / "seen.json").write_text(json.dumps({"params": params, "ids": [f["id"] for f in features],
                                           "paths": [f["properties"].get("up42.data_path") for f in features]}))
(out / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
    {"type": "Feature", "id": "seen", "geometry": None, "properties": {"up42.data_path": "seen.json"}}]}))
'''


def _upstream(folder: Path, name: str) -> Path:
    (folder / f"{name}.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(name)
    write_data_json(folder, {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "x", "geometry": None, "properties": {"up42.data_path": f"{name}.txt"}}]})
    return folder


def _entry(tmp_path: Path, *args: str, params: dict | None = None) -> tuple[int, Path]:
    block = tmp_path / "block.py"
    block.write_text(BLOCK_SOURCE)
    out = tmp_path / "work" / "step"
    env = {**os.environ, "UP42_TASK_PARAMETERS": json.dumps(params or {})}
    code = entry.main(["--step", "s", "--output", str(out), "--quicklooks", str(tmp_path / "work" / "_q"),
                       "--workdir", str(tmp_path), *args, "--", sys.executable, str(block)], env)
    return code, out


def test_entrypoint_merges_fan_in_like_the_runner(tmp_path) -> None:
    fan = tmp_path / "work" / "_input"
    _upstream(fan / "a", "a")
    _upstream(fan / "b", "b")
    code, out = _entry(tmp_path, "--fan-in", str(fan), "--upstream", "a", "--upstream", "b", "--stac")
    assert code == 0
    seen = json.loads((out / "seen.json").read_text())
    assert seen["ids"] == ["a:x", "b:x"] and seen["paths"] == ["a/a.txt", "b/b.txt"]
    merged = load_data_json(fan)
    assert [f["properties"]["blockkit.step"] for f in merged] == ["a", "b"]
    assert (out / "catalog.json").is_file()


def test_entrypoint_joins_secret_parameters_inside_the_container(tmp_path) -> None:
    os.environ.pop("SECRET_0", None)
    env_secret = {"SECRET_0": 'p"a\\ss'}
    os.environ.update(env_secret)
    try:
        code, out = _entry(tmp_path, "--secret-param", "password=SECRET_0:string",
                           "--secret-param", "pin=SECRET_1:integer", params={"n": 1})
    finally:
        os.environ.pop("SECRET_0")
    assert code == 0
    assert json.loads((out / "seen.json").read_text())["params"] == {"n": 1, "password": 'p"a\\ss'}


def test_entrypoint_reports_the_block_exit_code(tmp_path, capfd) -> None:
    code, _ = _entry(tmp_path, params={"exit": 4})
    assert code == 4
    assert "failed with exit code 4 (WRONG_INPUT_ERROR)" in capfd.readouterr().err


def test_entrypoint_enforces_the_timeout_with_124(tmp_path) -> None:
    code, _ = _entry(tmp_path, "--timeout", "0.5", params={"sleep": 30})
    assert code == entry.TIMEOUT_EXIT_CODE


def test_entrypoint_forwards_input_when_the_step_propagates(tmp_path) -> None:
    upstream = _upstream(tmp_path / "up", "u")
    code, out = _entry(tmp_path, "--input", str(upstream), "--propagate")
    assert code == 0
    fc = load_data_json(out)
    assert [f["id"] for f in fc] == ["seen", "x"]
    assert (out / "u.txt").read_text() == "u"


def test_block_runtime_works_under_cwl_staging_paths_and_writes_stac(tmp_path, blocks) -> None:
    """A real block run with --input/--output elsewhere than /tmp, reading a STAC-only input."""
    staged = tmp_path / "var" / "lib" / "cwl" / "stg1" / "src"
    from blockkit.runtime._stac import write_catalog

    _upstream(staged, "item0")
    write_catalog(staged, load_data_json(staged))
    (staged / "data.json").unlink()  # an App Package stage-in: catalog.json only
    out = tmp_path / "spool" / "up"
    env = {**os.environ, "BLOCKKIT_WRITE_STAC": "1", "UP42_TASK_PARAMETERS": "{}"}
    result = subprocess.run([sys.executable, str(blocks["upper"] / "src" / "run.py"), "--input", str(staged),
                             "--output", str(out), "--quicklooks", str(tmp_path / "q")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [f["properties"]["up42.data_path"] for f in load_data_json(out)] == ["item0.txt.upper"]
    catalog = json.loads((out / "catalog.json").read_text())
    assert [link["rel"] for link in catalog["links"]].count("item") == 1


def test_entrypoint_gives_a_json_key_the_runners_per_field_variables() -> None:
    key = {"type": "s3", "endpoint": "http://127.0.0.1:9", "bucket": "b", "access_key": "AK", "secret_key": "SK"}
    env = {"BLOCKKIT_KEY_RESULTS": json.dumps(key), "BLOCKKIT_KEY_RESULTS_BUCKET": "set-wins",
           "BLOCKKIT_KEY_BROKEN": "{not json", "BLOCKKIT_KEY_LIST": "[1]"}
    entry.expand_keys(env)
    assert env["BLOCKKIT_KEY_RESULTS_TYPE"] == "s3" and env["BLOCKKIT_KEY_RESULTS_SECRET_KEY"] == "SK"
    assert env["BLOCKKIT_KEY_RESULTS_ENDPOINT"] == "http://127.0.0.1:9" and env["BLOCKKIT_KEY_RESULTS_BUCKET"] == "set-wins"
    assert "BLOCKKIT_KEY_RESULTS_REGION" not in env
    assert sorted(k for k in env if k.startswith(("BLOCKKIT_KEY_BROKEN", "BLOCKKIT_KEY_LIST"))) == [
        "BLOCKKIT_KEY_BROKEN", "BLOCKKIT_KEY_LIST"]
