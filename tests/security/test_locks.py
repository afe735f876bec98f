"""One runner per run folder; any number of runs share a runs folder without losing cache entries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import assert_runs_match_provenance, blockkit


def _popen(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    exe = str(Path(sys.executable).parent / "blockkit")
    return subprocess.Popen([exe, *args], cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_eight_concurrent_runs_in_one_runs_folder_all_succeed_and_keep_every_cache_entry(tmp_path: Path, evil) -> None:
    """D6: no shared temp name, no lost cache entries (cache index and hash cache are merged under a lock)."""
    runs = tmp_path / "runs"
    procs = []
    for i in range(8):
        wf = tmp_path / f"wf{i}.yaml"
        wf.write_text(f"name: conc{i}\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: many, arg: '{20 + i}'}}}}\n")
        procs.append(_popen(["run", str(wf), "-e", "process", "--runs-dir", str(runs), "-q", "--no-cache"], tmp_path))
    results = [(p.wait(timeout=240), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0] * 8, results
    statuses = [json.loads(p.read_text())["status"] for p in runs.glob("*/run.json")]
    assert statuses == ["ok"] * 8
    index = json.loads((runs / "cache-index.json").read_text())
    assert len(index) == 8 and len({rel.split("/")[0] for rel in index.values()}) == 8
    hash_cache = json.loads((runs / "hash-cache.json").read_text())
    assert sum(len(json.loads(p.read_text())["steps"]["a"]["outputs"]) for p in runs.glob("*/run.json")) <= len(hash_cache)
    assert not list(runs.glob(".*.tmp")) and not list(runs.glob("*.tmp"))
    assert_runs_match_provenance(runs)


@pytest.mark.slow
def test_three_concurrent_resumes_one_proceeds_the_others_are_refused(tmp_path: Path, evil) -> None:
    """D7: a second runner on the same run folder is refused with one line naming the holder."""
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: resume3\nsteps:\n"
        f"  a: {{block: {evil['evil']}}}\n"
        f"  b: {{block: {evil['evilproc']}, params: {{action: exit, arg: '1'}}}}\n"
    )
    runs = tmp_path / "runs"
    failed = blockkit("run", str(wf), "-e", "process", "--runs-dir", str(runs), "-q", cwd=tmp_path)
    assert failed.returncode == 1
    [run_dir] = runs.glob("*-resume3-*")
    wf.write_text(wf.read_text().replace("action: exit, arg: '1'", "action: sleep_write, arg: '2'"))
    procs = [_popen(["run", "--resume", run_dir.name, "-e", "process", "--runs-dir", str(runs), "-q"], tmp_path)
             for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 4, 4], results
    for rc, err in results:
        if rc == 4:
            [line] = [x for x in err.splitlines() if x.startswith("[")]
            assert line.startswith(f"[WRONG_INPUT_ERROR] run {run_dir.name} is being run by pid ")
            assert f"on host {os.uname().nodename}" in line and "one runner" in line
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "ok"
    assert len(list((run_dir / "steps/b/output").glob("f*.bin"))) == 200
    assert_runs_match_provenance(runs)


@pytest.mark.slow
def test_runs_list_marks_a_run_whose_runner_was_killed_as_interrupted(tmp_path: Path, evil) -> None:
    """D26: run.json records the runner (pid, host, start); a dead runner's `running` run is `interrupted`."""
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: killed\nsteps:\n  a: {{block: {evil['evil']}, params: {{action: sleep_write, arg: '30'}}}}\n")
    runs = tmp_path / "runs"
    runner = _popen(["run", str(wf), "-e", "process", "--runs-dir", str(runs), "-q"], tmp_path)
    deadline = time.monotonic() + 30
    run_json = None
    while time.monotonic() < deadline:
        found = list(runs.glob("*/run.json"))
        if found and json.loads(found[0].read_text() or "{}").get("steps", {}).get("a", {}).get("status") == "running":
            run_json = found[0]
            break
        time.sleep(0.1)
    assert run_json is not None
    run = json.loads(run_json.read_text())
    assert run["runner"]["pid"] == runner.pid and run["runner"]["host"] == os.uname().nodename
    listed = blockkit("runs", "list", "--runs-dir", str(runs), cwd=tmp_path).stdout
    assert " running " in listed
    children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children").read_text().split()
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    for child in children:  # the block's own process group (ending it with its runner is another fix)
        try:
            os.killpg(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass
    listed = blockkit("runs", "list", "--runs-dir", str(runs), cwd=tmp_path).stdout
    assert "interrupted (runner gone; resume with: blockkit run --resume " + run_json.parent.name in listed
    shown = blockkit("runs", "show", run_json.parent.name, "--runs-dir", str(runs), cwd=tmp_path).stdout
    assert "status interrupted (runner gone; resume with:" in shown
    # The resume takes the (free) lock and finishes the run.
    wf.write_text(wf.read_text().replace("arg: '30'", "arg: '0'"))
    resumed = blockkit("run", "--resume", run_json.parent.name, "-e", "process", "--runs-dir", str(runs), "-q",
                       cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(run_json.read_text())["status"] == "ok"


def test_a_runner_refused_while_the_holder_writes_its_name_still_names_it(tmp_path: Path) -> None:
    """The holder takes the lock, then writes who it is: a runner refused in between must not say 'another runner'."""
    import fcntl
    import threading

    from blockkit.contract.errors import WorkflowError
    from blockkit.runner._lock import RUN_LOCK, RunLock, runner_identity

    run = tmp_path / "20261201-000000-x-0000"
    run.mkdir()
    fd = os.open(run / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the holder, its name not yet written
    try:
        writer = threading.Timer(0.15, lambda: os.pwrite(fd, json.dumps(runner_identity()).encode(), 0))
        writer.start()
        with pytest.raises(WorkflowError) as info:
            RunLock(run).acquire()
        writer.join()
        assert f"is being run by pid {os.getpid()} on host " in info.value.message
    finally:
        os.close(fd)
