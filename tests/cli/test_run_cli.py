"""`blockkit run` and `blockkit runs` through the installed command: progress, --json, failures, resume, run listing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runner.blocks import make_blocks

BLOCKKIT = Path(sys.executable).with_name("blockkit")


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    return subprocess.run([str(BLOCKKIT), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def _chain(tmp_path: Path, upper_params: str) -> Path:
    """make (2 items) -> up, with `up`'s parameters as given (YAML flow mapping)."""
    blocks = make_blocks(tmp_path / "blocks")
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: cli-chain\nsteps:\n"
        f"  make: {{block: {blocks['source']}, params: {{count: 2}}}}\n"
        f"  up: {{block: {blocks['upper']}, params: {upper_params}}}\n"
    )
    return wf


@pytest.fixture()
def workflow(tmp_path: Path) -> Path:
    return _chain(tmp_path, "{behaviour: exit, code: 3}")


def _fix(wf: Path) -> None:
    wf.write_text(wf.read_text().replace("{behaviour: exit, code: 3}", "{behaviour: ok}"))


@pytest.mark.slow
def test_progress_failure_line_resume_and_runs_commands(workflow: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    failed = cli("run", workflow, "--engine", "process", "--runs-dir", runs)
    assert failed.returncode == 3, failed.stderr
    assert "Traceback" not in failed.stderr
    assert "✔ make done in" in failed.stderr and "make | " in failed.stderr  # a line per step, logs prefixed
    assert "[NO_INPUT_ERROR] step 'up' failed with exit code 3: " in failed.stderr
    run_id = next(p.name for p in runs.iterdir() if (p / "run.json").exists())
    assert f"resume with: blockkit run --resume {run_id} --runs-dir {runs})" in failed.stderr

    listed = cli("runs", "list", "--runs-dir", runs)
    assert listed.returncode == 0
    line = next(l for l in listed.stdout.splitlines() if l.startswith(run_id))  # the whole id, never cut
    assert "cli-chain" in line and "failed" in line and "1/2" in line

    _fix(workflow)
    resumed = cli("run", "--resume", run_id, "--engine", "process", "--runs-dir", runs)
    assert resumed.returncode == 0, resumed.stderr
    assert "make done in the resumed run" in resumed.stderr and "✔ up done in" in resumed.stderr

    shown = cli("runs", "show", run_id[:12], "--runs-dir", runs)
    assert shown.returncode == 0 and "status ok" in shown.stdout
    assert "up" in shown.stdout and "exit 0 (OK)" in shown.stdout
    logs = cli("runs", "logs", run_id, "up", "--runs-dir", runs)
    assert logs.returncode == 0 and "running processing block" in logs.stdout
    as_json = json.loads(cli("runs", "list", "--json", "--runs-dir", runs).stdout)
    assert as_json[0]["run_id"] == run_id and as_json[0]["status"] == "ok"


@pytest.mark.slow
def test_json_summary_and_cached_second_run(workflow: Path, tmp_path: Path) -> None:
    _fix(workflow)
    runs = tmp_path / "runs"
    first = cli("run", workflow, "--engine", "process", "--runs-dir", runs, "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["status"] == "ok" and summary["engine"] == "process"
    assert summary["steps"]["up"]["features_out"] == 2
    second = json.loads(cli("run", workflow, "--engine", "process", "--runs-dir", runs, "--json").stdout)
    assert {s["status"] for s in second["steps"].values()} == {"cached"}

    # Run from the folder holding .blockkit/runs: the resume hint needs no --runs-dir then.
    _chain(tmp_path, "{behaviour: crash}")
    crashed = cli("run", workflow, "--engine", "process", "--json", cwd=tmp_path)
    assert crashed.returncode == 1
    report = json.loads(crashed.stdout)
    assert report["status"] == "failed" and report["step"] == "up"
    assert report["resume"] == f"blockkit run --resume {report['run_id']}"
    assert (tmp_path / ".blockkit" / "runs" / report["run_id"]).is_dir()

    failed = cli("run", workflow.with_name("missing.yaml"), "--runs-dir", runs, "--json")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr


@pytest.mark.slow
def test_auto_engine_says_which(workflow: Path, tmp_path: Path) -> None:
    from blockkit.runner._docker_engine import docker_available

    _fix(workflow)
    result = cli("run", workflow, "--engine", "auto", "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.returncode == 0, result.stderr
    expected = "engine: docker engine (a Docker daemon answers)" if docker_available() else "engine: process engine (no Docker daemon answers)"
    assert expected in result.stderr


@pytest.mark.slow
def test_damaged_run_folders_get_one_line(workflow: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "broken").mkdir(parents=True)
    (runs / "broken" / "run.json").write_text("{oops")
    (runs / "odd").mkdir()
    (runs / "odd" / "run.json").write_text("{}")

    listed = cli("runs", "list", "--runs-dir", runs)
    assert listed.returncode == 0
    assert any(l.startswith("broken") and "unreadable run.json" in l for l in listed.stdout.splitlines())

    for run_id, tag in (("broken", "WRONG_INPUT_ERROR"), ("odd", "WRONG_INPUT_ERROR")):
        shown = cli("runs", "show", run_id, "--runs-dir", runs)
        assert shown.returncode != 0
        lines = shown.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"[{tag}] "), shown.stderr
        resumed = cli("run", "--resume", run_id, "--runs-dir", runs)
        assert resumed.returncode != 0 and "Traceback" not in resumed.stderr

    unknown = cli("runs", "show", "nope", "--runs-dir", runs)
    assert unknown.returncode != 0 and "no run matching 'nope'" in unknown.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_run_with_a_resume_hint(tmp_path: Path) -> None:
    wf = _chain(tmp_path, "{behaviour: sleep}")
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    proc = subprocess.Popen([str(BLOCKKIT), "run", str(wf), "--engine", "process", "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(runs.glob("*/logs/up.log")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run_id = next(p.name for p in runs.iterdir() if (p / "run.json").exists())
    assert f"[INTERRUPTED] run {run_id} interrupted; resume with: blockkit run --resume {run_id} --runs-dir {runs}" in err
    assert json.loads((runs / run_id / "run.json").read_text())["status"] == "interrupted"


HOSTILE_NAME = "wf\x1b]8;;http://evil.example\x07click\x1b]8;;\x07\x1b[2J\x9b2J\r\u202egnp"


@pytest.mark.slow
def test_runs_list_and_show_neutralise_terminal_escapes_in_the_workflow_name(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path / "blocks")
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: {json.dumps(HOSTILE_NAME)}\nsteps:\n  make: {{block: {blocks['source']}, params: {{count: 1}}}}\n")
    runs = tmp_path / "runs"
    ran = cli("run", wf, "--engine", "process", "--runs-dir", runs)
    assert ran.returncode == 0, ran.stderr
    shown_name = r"wf\x1b]8;;http://evil.example\x07click\x1b]8;;\x07\x1b[2J\x9b2J\x0d\u202egnp"
    for args in (("runs", "list"), ("runs", "show", "latest")):
        result = cli(*args, "--runs-dir", runs)
        assert result.returncode == 0, result.stderr
        assert not any(c in result.stdout for c in "\x1b\x07\x9b\r\u202e"), repr(result.stdout)
        assert shown_name in result.stdout  # visible as text, as the runner's console shows block output
    # Machines still get the name exactly as written.
    [row] = json.loads(cli("runs", "list", "--json", "--runs-dir", runs).stdout)
    assert row["workflow"] == HOSTILE_NAME
