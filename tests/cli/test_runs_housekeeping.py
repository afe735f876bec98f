"""`blockkit runs rm|gc|list|show|logs` housekeeping through the installed command, on real run folders."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from blockkit.runner._housekeeping import parse_age
from blockkit.contract.errors import WorkflowError
from tests.runner.blocks import make_blocks

BLOCKKIT = Path(sys.executable).with_name("blockkit")
pytestmark = pytest.mark.slow


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    return subprocess.run([str(BLOCKKIT), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture()
def chain(tmp_path: Path) -> Path:
    blocks = make_blocks(tmp_path / "blocks")
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: chain\nsteps:\n"
                  f"  make: {{block: {blocks['source']}, params: {{count: 2}}}}\n"
                  f"  up: {{block: {blocks['upper']}}}\n")
    return wf


def run(wf: Path, runs: Path, *extra: str) -> dict:
    done = cli("run", wf, "-e", "process", "--runs-dir", runs, "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def mark_running(run_dir: Path, **up_step: object) -> dict:
    """Rewrite a finished run's run.json as if the run were still going (step `up` updated with `up_step`)."""
    path = run_dir / "run.json"
    data = json.loads(path.read_text())
    data["status"] = "running"
    if up_step:
        data["steps"]["up"].update(up_step)
    path.write_text(json.dumps(data))
    return data


#: A child process that takes a lock the way a runner does (`RunLock` on a run folder, or the
#: `FileLock` of a shared file), says so, and keeps it until it is killed.
HOLDER = """import sys, time
from pathlib import Path
from blockkit.runner._lock import FileLock, RunLock
kind, path = sys.argv[1], Path(sys.argv[2])
RunLock(path).acquire() if kind == "run" else FileLock(path).__enter__()
print("locked", flush=True)
time.sleep(600)
"""


@contextmanager
def held_lock(kind: str, path: Path) -> Iterator[subprocess.Popen[str]]:
    """A live process holding `path`'s lock (`run`: a run folder's RunLock, `file`: a FileLock) while inside."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        yield child
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def age(path: Path, seconds: float = 120) -> None:
    """Make a file, folder or link look `seconds` old (not following a link)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def index(runs: Path) -> dict[str, str]:
    return json.loads((runs / "cache-index.json").read_text())


def test_gc_keeps_cache_entries_working_by_moving_them_to_a_run_with_the_same_result(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = run(chain, runs)
    second = run(chain, runs)  # every step reused from the first run (hard links)
    assert {s["status"] for s in second["steps"].values()} == {"cached"}
    assert {v.split("/")[0] for v in index(runs).values()} == {first["run_id"]}
    done = cli("runs", "gc", "--keep", "1", "--runs-dir", runs)
    assert done.returncode == 0, done.stderr
    assert f"removed {first['run_id']}" in done.stdout and "moved to another run: 2, dropped: 0" in done.stdout
    assert not Path(first["run_dir"]).exists() and Path(second["run_dir"]).is_dir()
    assert {v.split("/")[0] for v in index(runs).values()} == {second["run_id"]}
    third = run(chain, runs)  # the moved entries still serve the cache
    assert {s["status"] for s in third["steps"].values()} == {"cached"}
    assert (Path(third["steps"]["up"]["output_dir"]) / "item0.txt.upper").read_text() == "HELLO 0\n"


def test_rm_drops_entries_no_other_run_can_serve_and_the_next_run_recomputes(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    only = run(chain, runs)
    done = cli("runs", "rm", only["run_id"], "--runs-dir", runs)
    assert done.returncode == 0, done.stderr
    assert "dropped: 2" in done.stdout and index(runs) == {}
    again = run(chain, runs)
    assert {s["status"] for s in again["steps"].values()} == {"ok"}


def test_latest_alias_filters_and_gc_by_age(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    old = run(chain, runs)
    newer = run(chain, runs, "--no-cache")
    shown = cli("runs", "show", "latest", "--runs-dir", runs)
    assert shown.returncode == 0 and shown.stdout.startswith(f"run {newer['run_id']} ")
    logs = cli("runs", "logs", "latest", "up", "--runs-dir", runs)
    assert logs.returncode == 0 and logs.stdout.startswith("up | ")
    # Make the first run look 3 days old.
    run_json = Path(old["run_dir"]) / "run.json"
    data = json.loads(run_json.read_text())
    data["started"] -= 3 * 86400
    data["status"] = "failed"
    run_json.write_text(json.dumps(data))
    listed = cli("runs", "list", "--runs-dir", runs, "--status", "failed", "--json")
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [old["run_id"]]
    assert json.loads(cli("runs", "list", "--runs-dir", runs, "--workflow", "other", "--json").stdout) == []
    assert len(json.loads(cli("runs", "list", "--runs-dir", runs, "--workflow", "chain", "--status", "ok,failed", "--json").stdout)) == 2
    dry = cli("runs", "gc", "--older-than", "2d", "--dry-run", "--runs-dir", runs)
    assert f"would remove {old['run_id']}" in dry.stdout and Path(old["run_dir"]).is_dir()
    done = cli("runs", "gc", "--older-than", "2d", "--runs-dir", runs)
    assert done.returncode == 0 and not Path(old["run_dir"]).exists() and Path(newer["run_dir"]).is_dir()
    assert {v.split("/")[0] for v in index(runs).values()} == {newer["run_id"]}  # moved, the cache still works


def test_running_runs_are_never_collected_and_rm_refuses_them(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    busy = run(chain, runs)
    mark_running(Path(busy["run_dir"]))
    with held_lock("run", Path(busy["run_dir"])) as runner:
        gc = cli("runs", "gc", "--keep", "0", "--runs-dir", runs)
        assert gc.returncode == 0 and "removed 0 run(s)" in gc.stdout and Path(busy["run_dir"]).is_dir()
        rm = cli("runs", "rm", "latest", "--runs-dir", runs)
        assert rm.returncode == 4 and rm.stderr.startswith("[WRONG_INPUT_ERROR]"), rm.stderr
        assert f"is being run by pid {runner.pid} " in rm.stderr and len(rm.stderr.splitlines()) == 1
        assert cli("runs", "rm", "latest", "--force", "--runs-dir", runs).returncode == 0  # --force: anyway
        assert not Path(busy["run_dir"]).exists()


@pytest.mark.parametrize("status", ["ok", "interrupted"])
def test_a_run_whose_runner_holds_its_lock_is_never_removed_whatever_run_json_says(chain: Path, tmp_path: Path,
                                                                                  status: str) -> None:
    # `ok` while its results are staged out; `interrupted` while a --resume starts up.
    runs = tmp_path / "runs"
    old = run(chain, runs)
    busy = run(chain, runs)
    data = mark_running(Path(busy["run_dir"]))
    data["status"] = status
    (Path(busy["run_dir"]) / "run.json").write_text(json.dumps(data))
    with held_lock("run", Path(busy["run_dir"])) as runner:
        rm = cli("runs", "rm", busy["run_id"], "--runs-dir", runs)
        assert rm.returncode == 4 and rm.stderr.startswith("[WRONG_INPUT_ERROR]"), rm.stderr
        assert f"run {busy['run_id']} is being run by pid {runner.pid} " in rm.stderr and "nothing removed" in rm.stderr
        assert len(rm.stderr.splitlines()) == 1 and Path(busy["run_dir"]).is_dir()
        gc = cli("runs", "gc", "--keep", "0", "--runs-dir", runs)  # would remove only the old run: refused
        assert gc.returncode == 4 and f"pid {runner.pid} " in gc.stderr and "cache index" in gc.stderr, gc.stderr
        assert Path(old["run_dir"]).is_dir()
        gc = cli("runs", "gc", "--keep", "0", "--force", "--runs-dir", runs)
        assert gc.returncode == 0 and "removed 1 run(s)" in gc.stdout, gc.stderr
        assert not Path(old["run_dir"]).exists() and Path(busy["run_dir"]).is_dir()
    rm = cli("runs", "rm", busy["run_id"], "--runs-dir", runs)  # its runner is gone now
    assert rm.returncode == 0 and not Path(busy["run_dir"]).exists(), rm.stderr


def test_a_run_left_running_by_a_killed_runner_is_removed_without_force(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    old = run(chain, runs)
    killed = run(chain, runs)
    mark_running(Path(killed["run_dir"]))
    with held_lock("run", Path(killed["run_dir"])):
        pass  # its runner took the lock, then died by kill -9: run.json still says running
    listed = json.loads(cli("runs", "list", "--runs-dir", runs, "--json").stdout)
    assert listed[0]["status"].startswith("interrupted (runner gone")
    gc = cli("runs", "gc", "--keep", "1", "--runs-dir", runs)
    assert gc.returncode == 0 and f"removed {old['run_id']}" in gc.stdout, gc.stderr
    rm = cli("runs", "rm", killed["run_id"], "--runs-dir", runs)
    assert rm.returncode == 0 and f"removed {killed['run_id']}" in rm.stdout, rm.stderr
    assert not Path(old["run_dir"]).exists() and not Path(killed["run_dir"]).exists()


def test_gc_removes_run_folders_a_runner_left_without_run_json(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    real = run(chain, runs)
    left, fresh, locked = runs / "20261201-183122-fst-195c", runs / "20261201-183123-fst-216f", runs / "20261201-183124--2812"
    for folder in (left, fresh, locked):
        folder.mkdir()
        (folder / ".lock").write_text("")
    (left / "workflow.yaml").write_text("name: fst\n")
    notes = runs / "notes"  # not shaped like a run id: not ours to remove
    notes.mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / ".lock").write_text("")
    planted = runs / "20261201-183125-fst-aaaa"
    planted.symlink_to(outside, target_is_directory=True)
    linked_lock = runs / "20261201-183126-fst-bbbb"  # its lock a link to a file outside: never written through
    linked_lock.mkdir()
    (outside / "target").write_text("keep me")
    (linked_lock / ".lock").symlink_to(outside / "target")
    for path in (left, notes, planted, linked_lock):
        age(path)
    with held_lock("run", locked):
        age(locked)
        dry = cli("runs", "gc", "--keep", "5", "--dry-run", "--runs-dir", runs)
        assert dry.returncode == 0 and f"would remove {left.name} (no run.json" in dry.stdout and left.is_dir(), dry.stderr
        assert "1 run folder(s) without run.json" in dry.stdout
        gc = cli("runs", "gc", "--keep", "5", "--runs-dir", runs)
        assert gc.returncode == 0, gc.stderr
        assert "removed 0 run(s), 1 run folder(s) without run.json" in gc.stdout and f"removed {left.name} " in gc.stdout
        assert not left.exists() and fresh.is_dir() and locked.is_dir() and notes.is_dir()
    assert planted.is_symlink() and (outside / ".lock").is_file() and Path(real["run_dir"]).is_dir()
    assert (outside / "target").read_text() == "keep me" and linked_lock.is_dir()


def test_gc_removes_temp_files_of_killed_writers_under_the_writers_lock(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    hashes, index_tmp = runs / ".hash-cache.json.a2635c37c1e93e68.tmp", runs / ".cache-index.json.0123456789abcdef.tmp"
    fresh, other = runs / ".hash-cache.json.fedcba9876543210.tmp", runs / ".notes.json.0123456789abcdef.tmp"
    folder = runs / ".cache-index.json.1111111111111111.tmp"
    for path in (hashes, index_tmp, fresh, other):
        path.write_text("{}")
    folder.mkdir()
    outside = tmp_path / "precious.json"
    outside.write_text("keep me")
    link = runs / ".hash-cache.json.2222222222222222.tmp"
    link.symlink_to(outside)
    for path in (hashes, index_tmp, other, folder, link):
        age(path)
    with held_lock("file", runs / "hash-cache.lock"):  # a runner saving the hash cache
        gc = subprocess.Popen([str(BLOCKKIT), "runs", "gc", "--keep", "0", "--runs-dir", str(runs)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        waited = gc.poll() is None and hashes.is_file()  # it waits for the writer
    out, err = gc.communicate(timeout=60)
    assert waited and gc.returncode == 0, err
    assert "removed 0 run(s), 3 temp file(s)" in out and f"removed {hashes.name} (temp file" in out
    assert not hashes.exists() and not index_tmp.exists() and not os.path.lexists(link)
    assert fresh.is_file() and other.is_file() and folder.is_dir() and outside.read_text() == "keep me"


def test_removal_never_follows_a_link_out_of_the_runs_folder(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    real = run(chain, runs)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "run.json").write_text(json.dumps({"status": "ok", "workflow": "x", "started": 0, "steps": {}}))
    (runs / "zz-link").symlink_to(outside, target_is_directory=True)
    rm = cli("runs", "rm", "zz-link", "--runs-dir", runs)
    assert rm.returncode == 4 and "not a run folder" in rm.stderr
    gc = cli("runs", "gc", "--keep", "0", "--runs-dir", runs)
    assert gc.returncode == 0, gc.stderr
    assert (outside / "run.json").is_file() and (runs / "zz-link").is_symlink() and not Path(real["run_dir"]).exists()


def test_bad_arguments_are_one_line_with_a_contract_code(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    for args, needle in ((["gc"], "--keep N"), (["gc", "--older-than", "soon"], "30m"), (["rm", "nope"], "no run"),
                         (["show", "latest"], "no latest run"), (["gc", "--keep", "-1"], "0 or more")):
        done = cli("runs", *args, "--runs-dir", tmp_path / "runs")
        assert done.returncode == 4, (args, done.stderr)
        assert done.stderr.startswith("[WRONG_INPUT_ERROR]") and needle in done.stderr, done.stderr
    with pytest.raises(WorkflowError):
        parse_age("7 days")
    assert parse_age("1d12h") == 36 * 3600 and parse_age("2w") == 14 * 86400


@pytest.mark.parametrize("damage", ['{"run_id": "x"', '{"run_id": "x"}', '{"run_id": "x", "workflow": "w", "status": "ok", '
                                    '"engine": "process", "steps": {"a": {"status": "ok"}, "b": []}}', "[1, 2]"])
def test_show_of_a_damaged_run_json_is_one_line(chain: Path, tmp_path: Path, damage: str) -> None:
    runs = tmp_path / "runs"
    done = run(chain, runs)
    (Path(done["run_dir"]) / "run.json").write_text(damage)
    shown = cli("runs", "show", "latest", "--runs-dir", runs)
    assert shown.returncode == 4, shown.stderr
    assert shown.stderr.startswith("[WRONG_INPUT_ERROR]") and "damaged" in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1 and "Traceback" not in shown.stderr


def test_logs_follow_prints_lines_as_they_come_and_stops_when_the_run_ends(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = run(chain, runs)
    folder = Path(done["run_dir"])
    data = mark_running(folder)
    log = folder / "logs" / "up.log"

    def write_more() -> None:
        time.sleep(1.0)
        with log.open("a") as handle:
            handle.write("late line 1\nlate ")
            handle.flush()
            time.sleep(0.5)
            handle.write("line 2\n")
        time.sleep(0.5)
        data["status"] = "ok"
        (folder / "run.json").write_text(json.dumps(data))

    writer = threading.Thread(target=write_more)
    writer.start()
    started = time.time()
    followed = cli("runs", "logs", done["run_id"], "up", "--follow", "--runs-dir", runs)
    writer.join()
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    assert lines[-2:] == ["up | late line 1", "up | late line 2"]  # a partial line waited for its end
    assert 1.5 < time.time() - started < 30


def test_show_of_a_running_step_gives_elapsed_time_and_progress(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = run(chain, runs)
    folder = Path(done["run_dir"])
    mark_running(folder, status="running", started=time.time() - 42, ended=None, exit_code=None)
    with (folder / "logs" / "up.log").open("a") as handle:
        handle.write("BLOCKKIT_PROGRESS 3/10\n")
    shown = cli("runs", "show", done["run_id"], "--runs-dir", runs)
    assert shown.returncode == 0, shown.stderr
    [line] = [line for line in shown.stdout.splitlines() if line.strip().startswith("up ")]
    assert "running for 4" in line and "3/10 done" in line and "None" not in line


def test_logs_print_a_last_line_without_a_newline(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = run(chain, runs)
    with (Path(done["run_dir"]) / "logs" / "up.log").open("a") as handle:
        handle.write("no newline at the end")
    for extra in ([], ["--follow"]):
        shown = cli("runs", "logs", "latest", "up", "--runs-dir", runs, *extra)
        assert shown.stdout.splitlines()[-1] == "up | no newline at the end", extra


def test_gc_removes_staged_inputs_whose_session_is_over(tmp_path: Path) -> None:
    """A runner killed during or after stage-in leaves `staged/<name>-<hex>/`; one whose lock is held is in use."""
    runs = tmp_path / "runs"
    staged = runs / "staged"
    for name in ("dead-0123abcd", "live-89abcdef", "fresh-00000000"):
        (staged / name).mkdir(parents=True)
        (staged / name / "scene.tif").write_bytes(b"x" * 1000)
    for name in ("dead-0123abcd", "live-89abcdef"):
        age(staged / name)
    (tmp_path / "outside").mkdir()
    (staged / "link-11111111").symlink_to(tmp_path / "outside", target_is_directory=True)
    age(staged / "link-11111111")
    with held_lock("file", staged / "live-89abcdef.lock"):
        done = cli("runs", "gc", "--keep", "5", "--runs-dir", runs)
    assert done.returncode == 0, done.stderr
    assert "removed staged/dead-0123abcd (staged-in input of a killed runner)" in done.stdout
    assert "1 staged-in input(s)" in done.stdout
    assert sorted(p.name for p in staged.iterdir()) == ["fresh-00000000", "link-11111111", "live-89abcdef",
                                                        "live-89abcdef.lock"]
    assert (tmp_path / "outside").is_dir()


def test_a_fifo_planted_as_a_run_lock_never_hangs_housekeeping(chain: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    planted = run(chain, runs)
    other = run(chain, runs)
    lock = Path(planted["run_dir"]) / ".lock"
    lock.unlink()
    os.mkfifo(lock)
    data = mark_running(Path(planted["run_dir"]))  # a live runner's pid: `runs list` then probes the lock
    data["runner"] = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    (Path(planted["run_dir"]) / "run.json").write_text(json.dumps(data))
    listed = cli("runs", "list", "--runs-dir", runs)  # was: waited forever on the FIFO
    assert listed.returncode == 0 and planted["run_id"] in listed.stdout, listed.stderr
    done = cli("runs", "gc", "--keep", "0", "--runs-dir", runs)  # was: waited forever on the FIFO
    assert done.returncode == 4 and "cannot be locked" in done.stderr, done.stderr
    removed = cli("runs", "rm", other["run_id"], "--runs-dir", runs)
    assert removed.returncode == 0, removed.stderr
