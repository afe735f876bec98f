"""Block output is data, never commands: bounded lines in linear time, escapes neutralised,
no rich markup, and the failure line carries the block's own error on both engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blockkit.runner._logfilter import MAX_LINE_CHARS, LineSplitter, LogFilter, StepLog, neutralise

from .engine_blocks import cli_command, workflow, write_hostile

ENGINES = ["process", pytest.param("docker", marks=pytest.mark.docker)]


def _cli(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def _engine(engine: str, request) -> None:
    if engine == "docker":
        request.getfixturevalue("base_image")


def test_a_20_mb_line_splits_in_linear_time_and_is_cut_with_a_marker() -> None:
    lines: list[tuple[str, int]] = []
    splitter = LineSplitter(lambda line, dropped: lines.append((line, dropped)))
    chunk = b"x" * (16 << 10)  # docker frames are small: many chunks per line
    started = time.process_time()  # CPU time: a guard against quadratic splitting, immune to load
    for _ in range((20 << 20) // len(chunk)):
        splitter.feed(chunk)
    splitter.feed(b"\nshort\r\nlast")
    splitter.close()
    elapsed = time.process_time() - started
    assert elapsed < 3.0, elapsed
    assert [len(line) for line, _ in lines] == [4 * MAX_LINE_CHARS, 5, 4]
    assert lines[0][1] == (20 << 20) - 4 * MAX_LINE_CHARS and lines[1] == ("short", 0)
    cleaned = LogFilter()(*lines[0])
    assert len(cleaned) < MAX_LINE_CHARS + 100 and cleaned.endswith(f"{(20 << 20) - MAX_LINE_CHARS} more bytes]")


def test_splitting_cost_grows_linearly() -> None:
    def cost(megabytes: int) -> float:
        splitter = LineSplitter(lambda line, dropped: None)
        chunk = b"y" * 4096
        started = time.perf_counter()
        for _ in range((megabytes << 20) // len(chunk)):
            splitter.feed(chunk)
        splitter.close()
        return time.perf_counter() - started

    small, large = cost(4), cost(16)
    assert large < 4 * small * 2.5 + 0.05, (small, large)  # quadratic would be 16x


def test_control_sequences_are_written_out_not_interpreted() -> None:
    line = "a\x1b[2Jb\x1b]0;title\x07c\x00d\x9b31m\u202eevil\tok"
    assert neutralise(line) == "a\\x1b[2Jb\\x1b]0;title\\x07c\\x00d\\x9b31m\\u202eevil\tok"
    assert LogFilter(lambda text: text.replace("s3cret", "***"))("token=s3cret\x1b[0m") == "token=***\\x1b[0m"
    # A secret across the cut is masked whole, never half shown.
    secret = "S" * 40
    cut = LogFilter(lambda text: text.replace(secret, "***"), max_chars=100)("x" * 80 + secret + "tail")
    assert "S" not in cut and cut.startswith("x" * 80 + "***")


@pytest.mark.parametrize("engine", ENGINES)
def test_escape_sequences_and_markup_from_a_block_reach_neither_terminal_nor_log(tmp_path: Path, engine: str,
                                                                               request) -> None:
    _engine(engine, request)
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs")}
    block = write_hostile(tmp_path / "blocks")
    wf = workflow(tmp_path, block, {"action": "escapes", "long": 200_000}, source=False)
    done = _cli(["run", str(wf), "-e", engine], env)
    assert done.returncode == 0, done.stderr
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
    log = (run_dir / "logs" / "evil.log").read_text()
    for text in (done.stderr, log):
        assert "\x1b" not in text and "\x07" not in text and "\x00" not in text
        assert "clear\\x1b[2Jscreen \\x1b]0;pwned-title\\x07" in text
    assert "rich [bold red]markup[/] [/] stays" in done.stderr  # printed verbatim, not styled
    long_line = next(line for line in log.splitlines() if line.startswith("xxxx"))
    assert len(long_line) < MAX_LINE_CHARS + 100 and long_line.endswith("more bytes]")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_the_failure_line_carries_the_blocks_error_on_both_engines(tmp_path: Path, engine: str, request) -> None:
    _engine(engine, request)
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs")}
    block = write_hostile(tmp_path / "blocks")
    wf = workflow(tmp_path, block, {"action": "error"}, source=False)
    done = _cli(["run", str(wf), "-e", engine], env)
    assert done.returncode == 4
    headline = [line for line in done.stderr.splitlines() if line.startswith("[WRONG_INPUT_ERROR] step")]
    assert len(headline) == 1
    assert headline[0] == "[WRONG_INPUT_ERROR] step 'evil' failed with exit code 4: band=100 does not exist in scene.tif", headline
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
    detail = json.loads((run_dir / "run.json").read_text())["steps"]["evil"]["detail"]
    assert detail == "[WRONG_INPUT_ERROR] band=100 does not exist in scene.tif"
    done = _cli(["run", str(wf), "-e", engine, "--json"], env)
    assert "band=100 does not exist" in json.loads(done.stdout)["message"], (done.stdout, done.stderr)


@pytest.mark.docker
def test_docker_stdout_and_stderr_are_split_into_lines_separately(tmp_path: Path, base_image: str) -> None:
    """The daemon copies the two pipes independently: a stderr line must not land inside a stdout line."""
    from blockkit.runner._run import RunFailed
    from blockkit.runner._session import RunRequest, run_request

    block = write_hostile(tmp_path / "blocks")
    with pytest.raises(RunFailed) as info:
        run_request(RunRequest(target=workflow(tmp_path, block, {"action": "interleave"}, source=False),
                               engine="docker", runs_dir=tmp_path / "runs"))
    assert info.value.message.endswith(": band=100 does not exist in scene.tif")  # [WRONG_INPUT_ERROR]: the headline's
    log = (info.value.run_dir / "logs" / "evil.log").read_text().splitlines()
    assert "progress 50% done" in log and "[WRONG_INPUT_ERROR] band=100 does not exist in scene.tif" in log


def test_paths_with_brackets_are_printed_verbatim(tmp_path: Path) -> None:
    folder = tmp_path / "scratch [v2]"
    folder.mkdir()
    block = write_hostile(folder / "blocks")
    wf = workflow(folder, block, {"action": "ok"}, source=False)
    env = dict(os.environ)
    env.pop("BLOCKKIT_RUNS_DIR", None)
    done = _cli(["run", str(wf), "-e", "process"], env, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert f"{folder}/.blockkit/runs/" in done.stderr
    odd = tmp_path / "r[/]x"
    done = _cli(["run", str(wf), "-e", "process", "--runs-dir", str(odd)], env)
    assert done.returncode == 0, done.stderr
    assert "MarkupError" not in done.stderr and f"{odd}/" in done.stderr
    assert any((p / "run.json").is_file() for p in odd.iterdir())


def test_a_step_log_keeps_its_first_and_last_lines_and_says_what_it_left_out(tmp_path: Path) -> None:
    path = tmp_path / "step.log"
    path.write_text("[blockkit] a line the runner wrote before\n")  # counts toward the limit
    log = StepLog(path, limit=64 << 10)
    for i in range(10_000):
        log.write_line(f"line {i:05d} " + "x" * 40)
        if i == 5000:
            log.write_line("[NO_INPUT_ERROR] an error in the middle")  # left out with it, yet kept
    log.write_line("[WRONG_INPUT_ERROR] the end")
    log.close()
    log.write_line("after close")  # a reader thread's late line: dropped, no error
    text = path.read_text()
    lines = text.splitlines()
    assert len(text.encode()) <= (64 << 10) + 200
    assert lines[0] == "[blockkit] a line the runner wrote before" and lines[1].startswith("line 00000 ")
    assert lines[-1] == "[WRONG_INPUT_ERROR] the end" and "after close" not in text
    marker = next(line for line in lines if line.startswith("[blockkit] ") and "left out" in line)
    left_out = int(marker.split()[1])
    kept = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert len(kept) + left_out == 10_001  # every line is either kept or counted (the middle error: both)
    assert marker.endswith("the last 1 error line(s) among them follow")
    assert lines[lines.index(marker) + 1] == "[NO_INPUT_ERROR] an error in the middle"
    first_gap = next(i for i, n in enumerate(kept) if n != i)
    assert kept[first_gap:] == list(range(10_000 - len(kept) + first_gap, 10_000))  # the head, then the tail
    assert "BLOCKKIT_MAX_LOG_MB" in marker


def test_a_step_log_written_from_many_threads_loses_no_count(tmp_path: Path) -> None:
    log = StepLog(tmp_path / "step.log", limit=32 << 10)
    threads = [threading.Thread(target=lambda t=t: [log.write_line(f"t{t} {i}") for i in range(5000)])
               for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    lines = (tmp_path / "step.log").read_text().splitlines()
    left_out = int(next(line for line in lines if "left out" in line).split()[1])
    assert sum(1 for line in lines if line.startswith("t")) + left_out == 20_000


@pytest.mark.parametrize("value", ["lots", "0", "-5", "0.5"])
def test_a_wrong_log_limit_fails_the_run_before_any_step(tmp_path: Path, value: str) -> None:
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs"), "BLOCKKIT_MAX_LOG_MB": value}
    block = write_hostile(tmp_path / "blocks")
    done = _cli(["run", str(workflow(tmp_path, block, {"action": "ok"}, source=False)), "-e", "process"], env)
    assert done.returncode == 4, done.stderr  # as a wrong BLOCKKIT_MAX_CPUS: WRONG_INPUT_ERROR
    assert f"BLOCKKIT_MAX_LOG_MB={value!r} must be a number of MB from 1 to 1048576" in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("run.json"))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_a_block_flooding_its_output_cannot_fill_the_disk_with_its_log(tmp_path: Path, engine: str, request) -> None:
    """30 MB of lines into a 1 MB log: the first and last lines kept, the rest counted, the failure line intact."""
    _engine(engine, request)
    env = {**os.environ, "BLOCKKIT_RUNS_DIR": str(tmp_path / "runs"), "BLOCKKIT_MAX_LOG_MB": "1"}
    block = write_hostile(tmp_path / "blocks")
    done = _cli(["run", str(workflow(tmp_path, block, {"action": "flood", "long": 300_000}, source=False)),
                 "-e", engine], env)
    assert done.returncode == 4, done.stderr[-2000:]
    assert "[WRONG_INPUT_ERROR] step 'evil' failed with exit code 4: the last line, after the flood" in done.stderr
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if (p / "run.json").is_file())
    log = run_dir / "logs" / "evil.log"
    assert log.stat().st_size <= (1 << 20) + 1024
    lines = log.read_text().splitlines()
    flood = [int(line.split()[1]) for line in lines if line.startswith("flood ")]
    left_out = int(next(line for line in lines if "left out" in line).split()[1])
    error = "[WRONG_INPUT_ERROR] the last line, after the flood"
    # Docker copies stderr beside stdout: the error may overtake the end of the flood and be
    # left out with it; the log keeps it anyway, after the line that counts what was left out.
    overtaken = lines.index(error) < lines.index(next(line for line in lines if "left out" in line)) + 2
    assert flood[0] == 0 and flood[-1] == 299_999 and len(flood) + left_out == 300_000 + overtaken
    assert lines.count(error) == 1


@pytest.mark.slow
def test_a_log_that_fills_the_disk_never_leaves_the_block_blocked(tmp_path: Path) -> None:
    """The runs folder on an 8 MB tmpfs, 30 MB of output: the step ends with the disk's error, at once.

    A log write that failed used to stop the reader: the block then blocked on its full pipe
    for ever (here: until `timeout` killed the run after 60 s).
    """
    from .test_halfstate import _namespace_prefix

    runs = tmp_path / "runs"
    runs.mkdir()
    block = write_hostile(tmp_path / "blocks")
    wf = workflow(tmp_path, block, {"action": "flood", "long": 300_000}, source=False)
    exe = Path(sys.executable).parent / "blockkit"
    script = (f"mount -t tmpfs -o size=8m tmpfs {runs} && timeout -s KILL 60 {exe} run {wf} -e process "
              f"--runs-dir {runs} -q; echo \"RC=$?\"")
    began = time.monotonic()
    done = subprocess.run([*_namespace_prefix(), "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert "RC=4" in done.stdout, (done.stdout, done.stderr[-2000:])
    assert time.monotonic() - began < 30
    # The block's own last words, seen as they came though the log file lost them (the runner's
    # own records keep room for their last state, so the step's failure is the block's).
    assert "[WRONG_INPUT_ERROR] step 'evil' failed with exit code 4: the last line, after the flood" in done.stderr


def test_a_step_log_on_a_full_device_counts_its_lines_and_never_raises() -> None:
    log = StepLog(Path("/dev/full"), limit=1 << 20)  # every write: ENOSPC
    for i in range(1000):
        log.write_line(f"line {i}")
    log.close()
    assert log.write_error is not None and log.write_error.errno == 28
    assert log.closed


FLOOD_FEATURE = '''
import sys
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def flood(fc, ctx):
    for i in range(20000):
        sys.stdout.write("flood %07d %s\\n" % (i, "x" * 86))
    sys.stdout.flush()
    return FeatureCollection([])

if __name__ == "__main__":
    flood.run()
'''


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, None], ids=["one-at-a-time", "at-once"])
def test_the_features_of_a_scattered_step_share_its_log_limit(tmp_path: Path, monkeypatch, jobs) -> None:
    """8 features of 2 MB of output each, one after another or at once: one 1 MB log for the step."""
    from blockkit.runner._session import RunRequest, run_request
    from tests.runner.blocks import write_block
    from tests.runner.test_datum import write_input

    monkeypatch.setenv("BLOCKKIT_MAX_LOG_MB", "1")
    write_input(tmp_path / "input", [(f"s{i}", f"scene {i}") for i in range(8)])
    block = write_block(tmp_path / "blocks", "flood", kind="processing", source=FLOOD_FEATURE, params={})
    workflow = tmp_path / "scatter.yaml"
    workflow.write_text(f"name: f\ninput: {tmp_path / 'input'}\nsteps:\n  flood: {{block: {block}, scatter: features}}\n")
    summary = run_request(RunRequest(target=workflow, runs_dir=tmp_path / "runs", engine="process", jobs=jobs))
    log = Path(summary["run_dir"]) / "logs" / "flood.log"
    assert log.stat().st_size <= (1 << 20) + 8 * 400  # the limit, and a line per feature saying what it left out
    lines = log.read_text().splitlines()
    left_out = sum(int(line.split()[1]) for line in lines if line.startswith("[blockkit] ") and "left out" in line)
    kept = sum(1 for line in lines if line.startswith("flood "))
    # Every flood line is kept or counted (the counts also hold the framework's few INFO lines).
    assert 8 * 20000 <= kept + left_out <= 8 * 20000 + 8 * 5 and lines.count("flood 0000000 " + "x" * 86) >= 1


def test_a_full_shared_log_still_keeps_each_features_error_and_last_lines_that_fit(tmp_path: Path) -> None:
    path = tmp_path / "step.log"
    path.write_text("x" * ((64 << 10) - 1500) + "\n")  # other features left ~1.5 KB of the limit
    for feature in range(5):
        log = StepLog(path, limit=64 << 10)
        for i in range(3000):
            log.write_line(f"f{feature} line {i:04d}")
            if i == 10:
                log.write_line(f"[WRONG_INPUT_ERROR] feature {feature} failed")
                log.write_line("progress 10%\u2028[FAKE_ERROR] not an error line of its own")
        log.close()
    lines = path.read_text().splitlines()
    for feature in range(5):  # the reason of every feature, even with the limit used up
        assert f"[WRONG_INPUT_ERROR] feature {feature} failed" in lines
    assert not any(line.startswith("[FAKE_ERROR]") for line in lines)
    assert "f0 line 2999" in lines  # the first feature's last lines fit in what was left, line by line
    assert path.stat().st_size <= (64 << 10) + 5 * 1500


def test_the_sidecars_of_a_scattered_step_share_one_gateway_log_limit(tmp_path: Path) -> None:
    """Each docker sidecar bounds its own log, written to a pipe; the copies share one file's limit."""
    from blockkit.runner._sidecar import _append_sidecar_log

    path = tmp_path / "step.gateway.log"
    record = b'{"method":"GET","path":"/input/x","status":200}\n'
    for _ in range(8):
        _append_sidecar_log(path, (record for _ in range(2000)), limit=32 << 10)
    text = path.read_text()
    assert len(text) <= (32 << 10) + 8 * 200
    records = [json.loads(line) for line in text.splitlines()]  # every line whole
    kept = sum(1 for r in records if "method" in r)
    assert kept * len(record) + sum(r.get("left_out_bytes", 0) for r in records) == 8 * 2000 * len(record)
