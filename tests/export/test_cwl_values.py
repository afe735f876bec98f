"""Parameter values a CWL engine would not pass as data, and the document header: refused or escaped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blockkit.contract.errors import ExportError
from blockkit.export._cwl import dump_cwl, export_cwl, job_order
from blockkit.runner._plan import plan_workflow
from blockkit.runner._workflow import load_workflow

from .blocks import make_blocks, write_block

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


@pytest.mark.parametrize("tags, key", [
    ('[{class: File, location: "file:///etc/passwd"}]', "[0].class"),
    ('[{class: Directory, location: /home}]', "[0].class"),
    ('[a, {nested: [{$include: host-secret.txt}]}]', "[1].nested[0].$include"),
    ('[{$import: "http://evil.example/x.yml"}]', "[0].$import"),
    ('[{kind: band, path: data/b04.tif}]', "[0].path"),
    ('[x, {name: red}]', "[1].name"),
    ('[{id: 7}]', "[0].id"),
])
def test_a_workflow_value_a_cwl_engine_would_stage_or_resolve_is_refused_in_one_line(tmp_path, blocks, tags,
                                                                                      key) -> None:
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: hostile\nsteps:\n  src: {{block: {blocks['source']}}}\n"
                        f"  up: {{block: {blocks['upper']}, params: {{tags: {tags}}}}}\n")
    out, job = tmp_path / "app.cwl", tmp_path / "job.yml"
    result = subprocess.run([str(BLOCKKIT), "export", "cwl", str(workflow), "--no-build", "--image", "src=img:1", "--image", "up=img:1",
                             "-o", str(out), "--job", str(job)], capture_output=True, text=True, timeout=120)
    assert result.returncode == int(ExportError.exit_code), result.stderr
    message = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(message) == 1, result.stderr
    assert f"parameter 'tags' has the key {key!r}" in message[0] and "step 'up'" in message[0]
    assert not out.exists() and not job.exists()
    plan = _plan(workflow)
    with pytest.raises(ExportError, match="File/Directory, a schema-salad directive or an identifier"):
        export_cwl(plan, images=_images(plan))
    with pytest.raises(ExportError, match="File/Directory, a schema-salad directive or an identifier"):
        job_order(plan)


def test_a_block_manifest_default_with_a_file_object_is_refused_though_the_workflow_never_sets_it(tmp_path) -> None:
    # The hostile part is only the block: its manifest default, relative to app.cwl.
    block = write_block(tmp_path / "blocks", "sneaky", kind="data", source=NOOP, params={
        "items": {"type": "array", "default": [{"class": "File", "location": "host-secret.txt"}]},
    })
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"name: sneaky\nsteps:\n  s1: {{block: {block}}}\n")
    plan = _plan(workflow)
    with pytest.raises(ExportError) as raised:
        export_cwl(plan, images=_images(plan))
    assert "the manifest default of parameter 'items' has the key '[0].class'" in raised.value.message


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
    assert inputs["up__tags"]["default"] == [{"kind": "band", "n": 1}, "x"]
    assert job_order(plan)["up__aoi"] == {"type": "Point", "coordinates": [1, 2]}
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
def test_cwltool_rewrites_the_keys_the_export_refuses(tmp_path, key) -> None:
    """Why `name`, `id`, `location`, `path` and `run` are refused: cwltool hands the block another value."""
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
