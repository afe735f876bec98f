"""Parameter values a CWL engine would not pass as data (exported as JSON text), and the document header."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blockkit.export._cwl import dump_cwl, export_cwl, job_order
from blockkit.runner._plan import plan_workflow
from blockkit.runner._workflow import load_workflow

from .blocks import make_blocks, write_block
from .test_cwl import graph as graph_of

BIN = Path(sys.executable).parent
CWLTOOL = BIN / "cwltool"
BLOCKKIT = BIN / "blockkit"
NOOP = "print('never run')\n"


def _plan(workflow: Path):
    return plan_workflow(load_workflow(workflow))


def _images(plan) -> dict[str, str]:
    return {s.name: f"blockkit/{s.manifest.name}:test" for s in plan.steps}


@pytest.fixture()
def blocks(tmp_path: Path) -> dict[str, Path]:
    return make_blocks(tmp_path / "blocks")


def _mappings(node: object) -> list[dict]:
    """Every mapping in a parsed YAML document."""
    if isinstance(node, dict):
        return [node] + [m for v in node.values() for m in _mappings(v)]
    if isinstance(node, list):
        return [m for v in node for m in _mappings(v)]
    return []


@pytest.mark.parametrize("tags", [
    '[{class: File, location: "file:///etc/passwd"}]',
    '[{class: Directory, location: /home}]',
    '[a, {nested: [{$include: host-secret.txt}]}]',
    '[{$import: "http://evil.example/x.yml"}]',
    '[{kind: band, path: data/b04.tif, format: GTiff}]',
    '[x, {name: red, id: 7, run: r, symbols: [a]}]',
    '[{hints: {x: 1}, requirements: [], inputs: [], secondaryFiles: [s]}]',
], ids=["file", "directory", "include", "import", "path-format", "name-id-run-symbols", "schema-fields"])
def test_values_a_cwl_engine_would_act_on_travel_as_json_text(tmp_path, blocks, tags) -> None:
    """A CWL engine stages `{class: File}`, resolves `$include`, rewrites `name`/`path`/`format`/... in an `Any`
    value (see test_cwltool_rewrites_...): arrays and geometries are strings in the document and the job."""
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: hostile\nsteps:\n  src: {{block: {blocks['source']}}}\n"
                        f"  up: {{block: {blocks['upper']}, params: {{tags: {tags}}}}}\n")
    out, job = tmp_path / "app.cwl", tmp_path / "job.yml"
    result = subprocess.run([str(BLOCKKIT), "export", "cwl", str(workflow), "--no-build", "--image", "src=img:1", "--image", "up=img:1",
                             "-o", str(out), "--job", str(job)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    value = yaml.safe_load(tags)
    document = yaml.safe_load(out.read_text())
    [wf_input] = [i for i in graph_of(document)["main"]["inputs"] if i["id"] == "up__tags"]
    assert wf_input["type"] == "string" and json.loads(wf_input["default"]) == value
    assert json.loads(yaml.safe_load(job.read_text())["up__tags"]) == value
    # No mapping of the value reached the document as YAML: none of its keys is a mapping key there.
    keys = {k for m in _mappings(document) for k in m}
    assert not keys & {"$include", "$import", "symbols", "secondaryFiles", "format"}
    validated = subprocess.run([str(CWLTOOL), "--validate", str(out)], capture_output=True, text=True, timeout=120)
    assert validated.returncode == 0, validated.stderr


def test_a_block_manifest_default_is_json_text_too(tmp_path) -> None:
    block = write_block(tmp_path / "blocks", "sneaky", kind="data", source=NOOP, params={
        "items": {"type": "array", "default": [{"class": "File", "location": "host-secret.txt"}]},
    })
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: sneaky\nsteps:\n  s1: {{block: {block}}}\n")
    plan = _plan(workflow)
    document = export_cwl(plan, images=_images(plan))
    [tool_input] = [i for i in graph_of(document)["s1-tool"]["inputs"] if i["id"] == "items"]
    assert tool_input["default"] == '[{"class":"File","location":"host-secret.txt"}]'


@pytest.mark.slow
def test_geometries_and_lists_of_plain_mappings_still_export_and_validate(tmp_path, blocks) -> None:
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"""
name: plain
steps:
  src: {{block: {blocks['source']}}}
  up: {{block: {blocks['upper']}, params: {{tags: [{{kind: band, n: 1}}, x], aoi: {{type: Point, coordinates: [1, 2]}}}}}}
""")
    plan = _plan(workflow)
    document = export_cwl(plan, images=_images(plan))
    inputs = {i["id"]: i for i in document["$graph"][0]["inputs"]}
    assert json.loads(inputs["up__tags"]["default"]) == [{"kind": "band", "n": 1}, "x"]
    assert json.loads(job_order(plan)["up__aoi"]) == {"type": "Point", "coordinates": [1, 2]}
    out = tmp_path / "app.cwl"
    out.write_text(dump_cwl(document, source=str(workflow)))
    result = subprocess.run([str(CWLTOOL), "--validate", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("line_break", ["\n", "\r", "\x85", "\u2028", "\u2029"])
def test_a_line_break_in_the_workflow_file_name_stays_inside_the_header_comment(tmp_path, blocks, line_break) -> None:
    name = f"wf.yaml{line_break}hints: {{ResourceRequirement: {{ramMin: 999999999}}}}{line_break}#.yaml"
    workflow = tmp_path / name
    workflow.write_text(f"name: header\nsteps:\n  src: {{block: {blocks['source']}}}\n")
    plan = _plan(workflow)
    text = dump_cwl(export_cwl(plan, images=_images(plan)), source=str(workflow))
    header = text.splitlines()[1]
    assert header.startswith("# Exported by `blockkit export cwl ") and "ramMin" in header
    document = yaml.safe_load(text)
    assert "hints" not in document
    assert document["cwlVersion"] == "v1.2"


@pytest.mark.slow
@pytest.mark.parametrize("key", ["name", "id", "location", "path", "run"])
def test_cwltool_rewrites_keys_inside_an_any_value(tmp_path, key) -> None:
    """Why arrays and geometries travel as JSON text: cwltool hands the block another value for these keys."""
    tool = tmp_path / "t.cwl"
    tool.write_text(f"""cwlVersion: v1.2
class: CommandLineTool
requirements: {{InlineJavascriptRequirement: {{}}}}
inputs:
  v: {{type: Any, default: [{{{key}: plain, other: plain}}]}}
arguments: [python3, -c, "import sys; print(sys.argv[1])", $(JSON.stringify(inputs.v))]
stdout: out.txt
outputs: {{o: {{type: stdout}}}}
""")
    result = subprocess.run([str(CWLTOOL), "--quiet", "--outdir", str(tmp_path / "out"), str(tool)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    [seen] = json.loads((tmp_path / "out" / "out.txt").read_text())
    assert seen["other"] == "plain" and seen[key] != "plain" and seen[key].startswith("file://")


def test_export_never_prints_a_url_password_or_signature(tmp_path, blocks) -> None:
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: urls\ninput: 'http://alice:PW-IN@data.example/scene/?X-Amz-Signature=SIG-IN'\n"
                        f"output: 'https://bob:PW-OUT@dav.example/results/'\n"
                        f"steps:\n  up: {{block: {blocks['upper']}}}\n")
    base = [str(BLOCKKIT), "export", "cwl", str(workflow), "--no-build", "--image", "up=img:1", "-o", str(tmp_path / "app.cwl")]
    refused = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "https://dav.example/results/" in refused.stderr
    written = subprocess.run([*base, "--leave-output", "--job", str(tmp_path / "job.yml")], capture_output=True, text=True,
                             timeout=120)
    assert written.returncode == 0, written.stderr
    assert "http://data.example/scene/?…" in written.stderr and "https://dav.example/results/" in written.stderr
    for text in (refused.stderr, refused.stdout, written.stderr, written.stdout):
        assert not any(secret in text for secret in ("PW-IN", "SIG-IN", "PW-OUT")), text
