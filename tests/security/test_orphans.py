"""No orphans: nothing a step started survives the step, a killed runner, SIGTERM or SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blockkit.runner._isolation import bwrap_problem
from blockkit.runner._session import RunRequest, run_request

from .engine_blocks import cli_command, kill_all, marked_workflow, processes_with, wait_for

BLOCKKIT = [sys.executable, "-m", "blockkit.cli.main"]
CI = os.environ.get("CI") == "true"


def _isolation_modes() -> list:
    modes = [pytest.param("0", id="bwrap")]
    modes.append(pytest.param("1", id="no-bwrap"))
    return modes


def _env(no_isolation: str, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs")}
    env.pop("BLOCKKIT_NO_ISOLATION", None)
    if no_isolation == "1":
        env["BLOCKKIT_NO_ISOLATION"] = "1"
    elif bwrap_problem() is not None:
        if CI:
            pytest.fail(f"CI=true but {bwrap_problem()}")
        pytest.skip(bwrap_problem())
    return env


def _run_dir(tmp_path: Path) -> Path:
    return next(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())


def _cli(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("no_isolation", _isolation_modes())
def test_a_background_child_dies_when_its_step_ends(tmp_path: Path, no_isolation: str) -> None:
    env = _env(no_isolation, tmp_path)
    marker, wf = marked_workflow(tmp_path, "daemon")
    try:
        proc = _cli(["run", str(wf), "-e", "process", "-q"], env)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert processes_with(marker) == []
        step = _run_dir(tmp_path) / "steps" / "evil"
        before = {p: p.read_bytes() for p in step.rglob("late-daemon.txt")}
        time.sleep(0.6)
        assert {p: p.read_bytes() for p in step.rglob("late-daemon.txt")} == before  # nothing writes any more
    finally:
        kill_all(processes_with(marker))


def test_a_setsid_daemon_dies_with_its_step_when_isolated(tmp_path: Path) -> None:
    env = _env("0", tmp_path)
    marker, wf = marked_workflow(tmp_path, "setsid-daemon")
    try:
        proc = _cli(["run", str(wf), "-e", "process", "-q"], env)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        # The pid namespace ends with the step: even a process that left the session is gone.
        assert wait_for(lambda: processes_with(marker) == [], timeout=5)
    finally:
        kill_all(processes_with(marker))


@pytest.mark.slow
@pytest.mark.parametrize("no_isolation", _isolation_modes())
def test_kill_9_of_the_runner_leaves_no_step_process(tmp_path: Path, no_isolation: str) -> None:
    env = _env(no_isolation, tmp_path)
    marker, wf = marked_workflow(tmp_path, "hang")
    proc = _cli(["run", str(wf), "-e", "process", "-q"], env)
    try:
        assert wait_for(lambda: len(processes_with(marker)) >= 2, timeout=30), proc.stderr.read() if proc.poll() else ""
        assert wait_for(lambda: len(list((tmp_path / "runs").rglob("late-*.txt"))) >= 2, timeout=30)
        proc.kill()  # SIGKILL: no handler of the runner runs
        proc.wait(timeout=10)
        assert wait_for(lambda: processes_with(marker) == [], timeout=10), processes_with(marker)
        step_dir = _run_dir(tmp_path) / "steps" / "evil"  # the block writes in work/ (sealed into output/ after)
        sizes = {p: p.stat().st_size for p in step_dir.rglob("late-*.txt")}
        assert sizes, "the block wrote nothing: the test did not test anything"
        time.sleep(1.0)
        assert {p: p.stat().st_size for p in step_dir.rglob("late-*.txt")} == sizes  # nothing writes any more
    finally:
        kill_all(processes_with(marker))
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["TERM", "HUP"])
def test_sigterm_and_sighup_stop_the_run_like_ctrl_c(tmp_path: Path, sig: int, code: int) -> None:
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs")}
    marker, wf = marked_workflow(tmp_path, "hang")
    proc = _cli(["run", str(wf), "-e", "process"], env)
    try:
        assert wait_for(lambda: len(processes_with(marker)) >= 2, timeout=30)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == code, err
        lines = [line for line in err.splitlines() if line.startswith("[INTERRUPTED]")]
        assert len(lines) == 1 and signal.Signals(sig).name in lines[0] and "blockkit run --resume" in lines[0]
        assert "Traceback" not in err
        assert processes_with(marker) == []
        run_json = json.loads((_run_dir(tmp_path) / "run.json").read_text())
        assert run_json["status"] == "interrupted"
    finally:
        kill_all(processes_with(marker))
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_in_process_interrupt_kills_the_step_group(tmp_path: Path) -> None:
    """KeyboardInterrupt raised while a step runs (what Ctrl-C, SIGTERM and SIGHUP become) kills the step."""
    marker, wf = marked_workflow(tmp_path, "hang", source=False)

    seen: list[int] = []

    def interrupt(kind: str, step: str, info: dict) -> None:
        if kind == "started":  # the block starts after this returns: interrupt from a thread once it runs
            def later() -> None:
                if wait_for(lambda: len(processes_with(marker)) >= 2, timeout=30):
                    seen.extend(processes_with(marker))
                os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread, inside the engine's wait

            threading.Thread(target=later, daemon=True).start()

    from blockkit.runner._run import RunInterrupted

    try:
        with pytest.raises(RunInterrupted):
            run_request(RunRequest(target=wf, engine="process", runs_dir=tmp_path / "runs", on_event=interrupt))
    finally:
        alive = processes_with(marker)
        kill_all(alive)
    assert len(seen) >= 2 and alive == []
