"""CWL export of blocks whose image has no blockkit, without Docker: the document, its refusals, and the finish tool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blockkit.contract.errors import ExitCode
from blockkit.export import finish
from blockkit.export._cwl import (
    DEFAULT_HELPER_IMAGE, DIRECT_WRAPPER, HELPER, ExportError, check_exportable, direct_runs, dump_cwl, export_cwl,
)
from blockkit.runner._plan import plan_workflow
from blockkit.runner._workflow import load_workflow

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "blocks"
UP42 = Path(__file__).resolve().parent / "up42"
CWLTOOL = Path(sys.executable).parent / "cwltool"


def graph(document: dict) -> dict[str, dict]:
    return {item["id"]: item for item in document["$graph"]}


def plan_of(tmp_path: Path, body: str):
    path = tmp_path / "wf.yaml"
    path.write_text(body)
    return plan_workflow(load_workflow(path))


def images(plan) -> dict[str, str]:
    return {s.name: f"blockkit/{s.manifest.name}:test" for s in plan.steps} | {HELPER: "blockkit/helper:test"}


@pytest.fixture()
def annotate(tmp_path: Path) -> Path:
    return shutil.copytree(UP42 / "up42-annotate", tmp_path / "blocks" / "up42-annotate")


def test_an_up42_block_runs_its_own_command_at_the_fixed_paths(tmp_path: Path, annotate: Path) -> None:
    plan = plan_of(tmp_path, f"""
name: chain
steps:
  scene: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32}}}}
  annotate: {{block: {annotate}, params: {{label: x}}, timeout: 30, mode: DRY_RUN}}
  ndvi: {{block: {EXAMPLES / 'ndvi'}}}
""")
    assert set(direct_runs(plan)) == {"annotate"}
    document = export_cwl(plan, images=images(plan))
    tools = graph(document)
    tool = tools["annotate-tool"]
    req = tool["requirements"]
    assert req["DockerRequirement"] == {"dockerPull": "blockkit/up42-annotate:test", "dockerOutputDirectory": "/tmp/output"}
    assert req["InitialWorkDirRequirement"]["listing"] == [
        {"entry": "$(inputs.input)", "entryname": "/tmp/input", "writable": False}]
    assert req["EnvVarRequirement"]["envDef"]["UP42_JOB_MODE"] == "DRY_RUN"
    assert req["ToolTimeLimit"] == {"timelimit": 30}
    # The Dockerfile's relative CMD, started in its WORKDIR; no blockkit entrypoint.
    assert tool["baseCommand"] == ["/bin/sh", "-c", DIRECT_WRAPPER, "/block", "python", "src/run.py"]
    assert "arguments" not in tool
    assert [o["id"] for o in tool["outputs"]] == ["raw"]
    # The raw output is finished by the helper image; downstream steps read `<step>/output` as before.
    finish_tool = tools["annotate-finish-tool"]
    assert finish_tool["requirements"]["DockerRequirement"] == {"dockerPull": "blockkit/helper:test"}
    assert finish_tool["baseCommand"] == ["python", "-m", "blockkit.export.finish"]
    steps = {s["id"]: s for s in tools["main"]["steps"]}
    assert steps["annotate__run"]["run"] == "#annotate-tool"
    assert steps["annotate"]["in"] == [{"id": "raw", "source": "annotate__run/raw"}]
    assert {"id": "input", "source": "annotate/output"} in steps["ndvi"]["in"]
    # Blockkit blocks keep the step entrypoint.
    assert tools["ndvi-tool"]["baseCommand"] == ["python", "-m", "blockkit.export.step"]
    path = tmp_path / "app.cwl"
    path.write_text(dump_cwl(document))
    checked = subprocess.run([str(CWLTOOL), "--validate", str(path)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr


def test_a_scattered_propagating_up42_step_splits_and_finishes_in_the_helper_image(tmp_path: Path, annotate: Path) -> None:
    plan = plan_of(tmp_path, f"""
name: scattered
steps:
  scene: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32, limit: 3}}}}
  annotate: {{block: {annotate}, scatter: features, propagate: true}}
""")
    document = export_cwl(plan, images={s.name: f"img-{s.name}" for s in plan.steps})  # no helper given: default name
    tools = graph(document)
    assert tools["annotate-split-tool"]["requirements"]["DockerRequirement"]["dockerPull"] == DEFAULT_HELPER_IMAGE
    steps = {s["id"]: s for s in tools["main"]["steps"]}
    assert steps["annotate__each"]["scatter"] == "input" and steps["annotate__each"]["out"] == ["raw"]
    assert steps["annotate"]["in"] == [
        {"id": "names", "source": "annotate__split/names"},
        {"id": "raws", "source": "annotate__each/raw"},
        {"id": "inputs", "source": "annotate__split/parts"},
    ]
    assert "--propagate" in tools["annotate-finish-tool"]["arguments"]
    path = tmp_path / "app.cwl"
    path.write_text(dump_cwl(document))
    checked = subprocess.run([str(CWLTOOL), "--validate", str(path)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr


def test_what_cannot_run_without_blockkit_in_the_image_is_refused_in_one_go(tmp_path: Path, annotate: Path) -> None:
    manifest = json.loads((annotate / "UP42Manifest.json").read_text())
    manifest["parameters"]["token"] = {"type": "string", "secret": True}
    (annotate / "UP42Manifest.json").write_text(json.dumps(manifest))
    dockerfile = annotate / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace('CMD ["python", "src/run.py"]',
                                                         'ENTRYPOINT ["python"]\nCMD ["src/run.py"]'))
    plan = plan_of(tmp_path, f"""
name: refused
steps:
  a: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32}}}}
  b: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32}}, after: []}}
  annotate: {{block: {annotate}, after: [a, b], propagate: true}}
""")
    with pytest.raises(ExportError) as caught:
        check_exportable(plan)
    text = str(caught.value) + "".join(f"\n{p.where}: {p.message}" for p in caught.value.problems)
    assert caught.value.exit_code == ExitCode.WRONG_INPUT_ERROR
    assert "ENTRYPOINT" in text and "fan-in" in text and "propagate" in text and "token" in text and "secret" in text


def test_fan_in_into_an_up42_block_stages_the_merged_data_json_beside_the_upstreams(tmp_path: Path, annotate: Path) -> None:
    plan = plan_of(tmp_path, f"""
name: fan
steps:
  a: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32}}}}
  b: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 32}}, after: []}}
  annotate: {{block: {annotate}, after: [a, b]}}
""")
    document = export_cwl(plan, images=images(plan))
    tools = graph(document)
    listing = tools["annotate-tool"]["requirements"]["InitialWorkDirRequirement"]["listing"]
    assert [e["entryname"] for e in listing] == ["/tmp/input/data.json", "/tmp/input/a", "/tmp/input/b"]
    fan_in = tools["annotate-fan-in-tool"]
    assert fan_in["requirements"]["DockerRequirement"]["dockerPull"] == "blockkit/helper:test"
    assert fan_in["arguments"][:2] == ["--step", "annotate"] and "--fan-in" in fan_in["arguments"]
    steps = {s["id"]: s for s in tools["main"]["steps"]}
    assert {"id": "fan_in_data", "source": "annotate__fan_in/data"} in steps["annotate__run"]["in"]
    path = tmp_path / "app.cwl"
    path.write_text(dump_cwl(document))
    checked = subprocess.run([str(CWLTOOL), "--validate", str(path)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr


def _raw(tmp_path: Path, features: list[dict]) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return raw


def _feature(path: str) -> dict:
    return {"type": "Feature", "id": "f", "geometry": {"type": "Point", "coordinates": [1, 2]},
            "properties": {"up42.data_path": path}}


def test_finish_takes_regular_files_and_moves_quicklooks_aside(tmp_path: Path) -> None:
    raw = _raw(tmp_path, [_feature("sub/a.txt")])
    (raw / "sub").mkdir()
    (raw / "sub" / "a.txt").write_text("a")
    (raw / "extra.log").write_text("kept, as blockkit run keeps it")
    (raw / finish.RAW_QUICKLOOKS / "f").mkdir(parents=True)
    (raw / finish.RAW_QUICKLOOKS / "f" / "q.png").write_bytes(b"png")
    code = finish.main(["--step", "s", "--raw", str(raw), "--output", str(tmp_path / "out"),
                        "--quicklooks", str(tmp_path / "ql"), "--stac"])
    assert code == 0
    assert (tmp_path / "out" / "sub" / "a.txt").read_text() == "a"
    assert (tmp_path / "out" / "extra.log").is_file() and (tmp_path / "out" / "catalog.json").is_file()
    assert (tmp_path / "ql" / "f" / "q.png").read_bytes() == b"png"
    assert not (tmp_path / "out" / finish.RAW_QUICKLOOKS).exists()


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink", "symlink-dir", "fifo", "nested-symlink",
                                    "no-data-json", "data-json-symlink"])
def test_finish_refuses_an_output_that_reaches_outside(tmp_path: Path, attack: str, capsys) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    paths = {"dotdot": "../secret.txt", "absolute": str(secret), "symlink": "link.txt", "symlink-dir": "dir/secret.txt",
             "fifo": "pipe", "nested-symlink": "sub/link.txt", "no-data-json": "x", "data-json-symlink": "x"}
    raw = _raw(tmp_path, [_feature(paths[attack])])
    if attack == "symlink":
        (raw / "link.txt").symlink_to(secret)
    elif attack == "symlink-dir":
        (raw / "dir").symlink_to(tmp_path)
    elif attack == "fifo":
        os.mkfifo(raw / "pipe")
    elif attack == "nested-symlink":
        (raw / "sub").mkdir()
        (raw / "sub" / "link.txt").symlink_to(secret)
    elif attack == "no-data-json":
        (raw / "data.json").unlink()
    elif attack == "data-json-symlink":
        (tmp_path / "elsewhere.json").write_text((raw / "data.json").read_text())
        (raw / "data.json").unlink()
        (raw / "data.json").symlink_to(tmp_path / "elsewhere.json")
    out = tmp_path / "out"
    code = finish.main(["--step", "evil", "--raw", str(raw), "--output", str(out), "--quicklooks", str(tmp_path / "ql")])
    assert code == ExitCode.NO_OUTPUT_ERROR
    err = capsys.readouterr().err
    assert "step 'evil': failed with exit code 6 (NO_OUTPUT_ERROR)" in err
    assert "host secret" not in err
    for path in out.rglob("*"):
        assert not path.is_symlink()
        if path.is_file():
            assert path.read_text(errors="replace") != "host secret"


def test_finish_merges_parts_like_the_runner_and_names_the_failing_feature(tmp_path: Path, capsys) -> None:
    parts = []
    for name in ("a", "b"):
        raw = tmp_path / "raws" / name
        raw.mkdir(parents=True)
        (raw / "x.txt").write_text(name)
        (raw / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [_feature("x.txt")]}))
        parts += ["--name", name, "--raw", str(raw)]
    code = finish.main(["--step", "s", *parts, "--work", str(tmp_path / "work"), "--output", str(tmp_path / "out"),
                        "--quicklooks", str(tmp_path / "ql")])
    assert code == 0
    merged = json.loads((tmp_path / "out" / "data.json").read_text())["features"]
    assert [f["properties"]["up42.data_path"] for f in merged] == ["a/x.txt", "b/x.txt"]
    assert [f["id"] for f in merged] == ["f", "b-f"]
    (tmp_path / "raws" / "b" / "x.txt").unlink()
    (tmp_path / "raws" / "b" / "x.txt").symlink_to("/etc/passwd")
    code = finish.main(["--step", "s", *parts, "--work", str(tmp_path / "work2"), "--output", str(tmp_path / "out2"),
                        "--quicklooks", str(tmp_path / "ql2")])
    assert code == ExitCode.NO_OUTPUT_ERROR
    assert "feature 'b'" in capsys.readouterr().err
