"""`blockkit runs rm|gc|list|show|logs` housekeeping through the installed command, on real run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

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
    gc = cli("runs", "gc", "--keep", "0", "--runs-dir", runs)
    assert gc.returncode == 0 and "removed 0 run(s)" in gc.stdout and Path(busy["run_dir"]).is_dir()
    rm = cli("runs", "rm", "latest", "--runs-dir", runs)
    assert rm.returncode == 4 and rm.stderr.startswith("[WRONG_INPUT_ERROR]") and "is running" in rm.stderr
    assert cli("runs", "rm", "latest", "--force", "--runs-dir", runs).returncode == 0
    assert not Path(busy["run_dir"]).exists()


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
