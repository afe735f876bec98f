"""Planning UP42-style blocks: entry points from Dockerfiles or layouts, fixed paths, machine caps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blockkit.contract.errors import ExitCode, WorkflowError
from blockkit.runner._plan import (
    EntryPointError,
    needs_fixed_paths,
    plan_workflow,
    prepare_for_engine,
    resolve_entry,
)
from blockkit.runner._process_engine import ProcessEngine
from blockkit.runner._workflow import load_workflow

from .conftest import BLOCKS, EXAMPLES

BLOCKKIT = Path(sys.executable).with_name("blockkit")
MANIFEST = {
    "_up42_specification_version": 2, "name": "entry-block", "type": "processing",
    "input_capabilities": {}, "output_capabilities": {},
}


def _block(tmp_path: Path, dockerfile: str | None, files: dict[str, str]) -> Path:
    block = tmp_path / "entry-block"
    block.mkdir(parents=True, exist_ok=True)
    (block / "UP42Manifest.json").write_text(json.dumps(MANIFEST))
    if dockerfile is not None:
        (block / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (block / name).parent.mkdir(parents=True, exist_ok=True)
        (block / name).write_text(text)
    return block


@pytest.mark.parametrize(
    ("dockerfile", "files", "entry"),
    [
        ('FROM x\nCMD ["python", "/block/src/run.py"]\n', {"src/run.py": ""}, ["python", "/block/src/run.py"]),
        ('FROM x\nCMD ["python3", "/block/src"]\n', {"src/__main__.py": ""}, ["python3", "/block/src"]),
        ('FROM x\nCMD ["python", "/block/run.py"]\n', {"run.py": ""}, ["python", "/block/run.py"]),
        ('FROM x\nWORKDIR /block\nCMD ["./indexes.sh"]\n', {"indexes.sh": ""}, ["./indexes.sh"]),
        ('FROM x\nENTRYPOINT ["python3"]\nCMD ["/block/src/run.py"]\n', {"src/run.py": ""},
         ["python3", "/block/src/run.py"]),
        ("FROM x\nCMD python /block/src/run.py\n", {}, ["/bin/sh", "-c", "python /block/src/run.py"]),
        ('FROM x AS build\nCMD ["nope"]\nFROM y\nCMD ["python", "-m", "src.run"]\n', {}, ["python", "-m", "src.run"]),
        (None, {"run.py": ""}, ["python", "/block/run.py"]),  # common layouts, in order
        (None, {"src/__main__.py": ""}, ["python", "/block/src/__main__.py"]),
        (None, {"src/run.py": "", "run.py": ""}, ["python", "/block/src/run.py"]),
    ],
)
def test_entry_from_dockerfile_or_layout(tmp_path: Path, dockerfile: str | None, files: dict, entry: list) -> None:
    assert resolve_entry(_block(tmp_path, dockerfile, files)) == entry


@pytest.mark.parametrize(
    ("dockerfile", "files", "message"),
    [
        ('FROM x\nCMD ["python", "/block/src/run.py"]\n', {}, "src/run.py does not exist"),
        ('FROM x\nCMD ["python", "/block/../etc/passwd"]\n', {}, "not under /block"),
        ('FROM x\nCMD ["python", "/app/run.py"]\n', {}, "not under /block"),
        ('FROM x\nCMD ["/block/run.sh"]\n', {}, "run.sh does not exist"),
        ('FROM x\nCMD ["no-such-program-here"]\n', {}, "neither in the block folder nor a program"),
        (None, {"main.py": ""}, "has no entry point"),
    ],
)
def test_missing_entry_is_a_planning_error(tmp_path: Path, dockerfile: str | None, files: dict, message: str) -> None:
    block = _block(tmp_path, dockerfile, files)
    with pytest.raises(EntryPointError, match=message):
        resolve_entry(block)
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: entry\nsteps:\n  only: {{block: {block}}}\n")
    with pytest.raises(WorkflowError) as info:
        plan_workflow(load_workflow(wf))
    assert info.value.exit_code == ExitCode.WRONG_INPUT_ERROR
    assert "step 'only' (line 3)" in str(info.value.problems[0]) and message in str(info.value.problems[0])


def test_cli_run_checks_the_entry_before_starting(tmp_path: Path) -> None:
    block = _block(tmp_path, 'FROM x\nCMD ["python", "/block/src/run.py"]\n', {})
    done = subprocess.run([str(BLOCKKIT), "run", str(block), "-e", "process", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == int(ExitCode.WRONG_INPUT_ERROR), done.stderr
    assert done.stderr.startswith("[WRONG_INPUT_ERROR]") and "src/run.py does not exist" in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("run.json"))  # nothing started


def test_fixed_path_blocks_are_recognised() -> None:
    for name in ("up42-scale", "up42-main-entry", "up42-nodata", "up42-blockutils"):
        assert needs_fixed_paths(BLOCKS / name), name
    for name in ("synthetic-scene", "threshold", "ndvi", "vectorize", "s3-copy"):
        assert not needs_fixed_paths(EXAMPLES / name), name


def test_plain_python_blockutils_style_without_dockerfile_is_fixed(tmp_path: Path) -> None:
    assert needs_fixed_paths(_block(tmp_path, None, {"src/run.py": "from blockutils.common import load_params\n"}))
    assert needs_fixed_paths(_block(tmp_path / "b", None, {"run.py": "open('/tmp/output/data.json', 'w')\n"}))
    env_block = _block(tmp_path / "c", None, {"run.py": "import os; os.environ['BLOCKKIT_OUTPUT_DIR']\n"})
    assert not needs_fixed_paths(env_block)


def _workflow(tmp_path: Path, *steps: Path) -> Path:
    wf = tmp_path / "chain.yaml"
    lines = ["name: up42-chain", "steps:", f"  scene: {{block: {EXAMPLES / 'synthetic-scene'}, params: {{size: 64, limit: 1}}}}"]
    lines += [f"  {block.name}: {{block: {block}}}" for block in steps]
    wf.write_text("\n".join(lines) + "\n")
    return wf


def test_process_engine_without_isolation_refuses_fixed_path_blocks_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where bubblewrap works the engine isolates paths (test_up42_process.py runs these blocks
    # there); the engine of a host without it is ProcessEngine(isolate=False) in-process and
    # BLOCKKIT_NO_ISOLATION for the CLI.
    monkeypatch.setenv("BLOCKKIT_NO_ISOLATION", "1")
    engine = ProcessEngine(isolate=False)
    assert not engine.isolates_paths
    plan = plan_workflow(load_workflow(_workflow(tmp_path, BLOCKS / "up42-main-entry")))
    with pytest.raises(WorkflowError) as info:
        prepare_for_engine(plan, engine)
    assert "\n" not in info.value.headline()
    assert "fixed UP42 paths" in info.value.headline() and "--engine docker" in info.value.headline()

    done = subprocess.run([str(BLOCKKIT), "run", str(_workflow(tmp_path, BLOCKS / "up42-main-entry")), "-e", "process",
                           "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert done.returncode == int(ExitCode.WRONG_INPUT_ERROR)
    assert "fixed UP42 paths" in done.stderr and "Traceback" not in done.stderr
    assert not any((tmp_path / "runs").rglob("run.json"))  # refused before any step ran


def test_machine_types_are_capped_to_the_host_with_a_warning(tmp_path: Path) -> None:
    from blockkit.cli._new_cmd import create_block

    block = create_block("big-block", tmp_path)
    manifest = json.loads((block / "UP42Manifest.json").read_text())
    manifest["machine"] = {"type": "xxxlarge"}  # 16 CPUs, 80 GB
    (block / "UP42Manifest.json").write_text(json.dumps(manifest))
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: big\ninput: {tmp_path}\nsteps:\n  big: {{block: {block}}}\n")
    engine = ProcessEngine()
    plan = plan_workflow(load_workflow(wf))
    warnings = prepare_for_engine(plan, engine)
    cpus, memory = plan.steps[0].resources
    import os

    assert cpus <= len(os.sched_getaffinity(0)) and cpus < 16
    assert any("capped" in w and "xxxlarge" in w for w in warnings)

    plan = plan_workflow(load_workflow(wf))
    warnings = prepare_for_engine(plan, engine, max_cpus=0.5, max_memory_mb=1024)
    assert plan.steps[0].resources == (0.5, 1024)
    assert any("--max-cpus/--max-memory" in w for w in warnings)


@pytest.mark.parametrize(("option", "value"), [("--max-cpus", "lots"), ("--max-cpus", "0"), ("--max-memory", "4x"),
                                               ("--max-memory", "1")])
def test_bad_caps_are_one_line_errors(tmp_path: Path, option: str, value: str) -> None:
    done = subprocess.run([str(BLOCKKIT), "run", str(EXAMPLES / "synthetic-scene"), option, value,
                           "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == int(ExitCode.WRONG_INPUT_ERROR)
    assert done.stderr.startswith("[WRONG_INPUT_ERROR]") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_unknown_exit_code_is_described(tmp_path: Path) -> None:
    block = _block(tmp_path, None, {"src/run.py": "import sys, blockkit\nsys.exit(100)\n"})
    done = subprocess.run([str(BLOCKKIT), "run", str(block), "-e", "process", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 100
    assert "[not a UP42 exit code] step" in done.stderr and "failed with exit code 100" in done.stderr and "EXIT_100" not in done.stderr


@pytest.mark.slow
def test_required_parameter_with_default_runs_and_warns(tmp_path: Path) -> None:
    block = _block(tmp_path, None, {"src/run.py": (
        "import json, os, blockkit\n"
        "p = json.loads(os.environ['UP42_TASK_PARAMETERS'])\n"
        "open(os.path.join(os.environ['BLOCKKIT_OUTPUT_DIR'], 'data.json'), 'w').write("
        "json.dumps({'type': 'FeatureCollection', 'features': [], 'tile': p['tile_width']}))\n")})
    manifest = dict(MANIFEST, parameters={"tile_width": {"type": "number", "required": True, "default": 768}})
    (block / "UP42Manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([str(BLOCKKIT), "run", str(block), "-e", "process", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "required with a default (768)" in done.stderr
    out = next((tmp_path / "runs").glob("*/steps/*/output/data.json"))
    assert json.loads(out.read_text())["tile"] == 768
