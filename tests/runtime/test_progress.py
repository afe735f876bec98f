"""Progress reporting: the protocol line, ctx.progress, map_windows, and the runner's live display."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from blockkit import BlockContext
from blockkit.contract._progress import format_progress, parse_progress
from blockkit.runner._session import LiveSteps
from blockkit.runtime._progress import ProgressReporter
from blockkit.runtime.raster import map_windows
from tests.runner.blocks import write_block


def test_protocol_line_round_trips_and_rejects_nonsense() -> None:
    assert format_progress(3, 10) == "BLOCKKIT_PROGRESS 3/10"
    assert parse_progress("BLOCKKIT_PROGRESS 3/10") == (3, 10)
    assert parse_progress("  BLOCKKIT_PROGRESS 10/10\r") == (10, 10)
    for line in ("BLOCKKIT_PROGRESS 11/10", "BLOCKKIT_PROGRESS 1/0", "x BLOCKKIT_PROGRESS 1/2", "BLOCKKIT_PROGRESS -1/2",
                 "BLOCKKIT_PROGRESS 1/2 extra", "BLOCKKIT_PROGRESS " + "9" * 5000 + "/1"):
        assert parse_progress(line) is None, line
    for bad in ((11, 10), (-1, 5), (0, 0)):
        with pytest.raises(ValueError):
            format_progress(*bad)
    with pytest.raises(TypeError):
        format_progress(1.5, 3)  # type: ignore[arg-type]


def test_reporter_throttles_but_always_writes_first_and_last() -> None:
    out, now = io.StringIO(), [0.0]
    report = ProgressReporter(out, clock=lambda: now[0])
    for done in range(1001):
        now[0] += 0.001
        report(done, 1000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "BLOCKKIT_PROGRESS 0/1000" and lines[-1] == "BLOCKKIT_PROGRESS 1000/1000"
    assert 3 <= len(lines) <= 8  # one second of calls: about four lines plus first and last


def test_ctx_progress_prints_the_protocol_line(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = BlockContext()
    ctx.progress(0, 4)
    ctx.progress(4, 4)
    assert capsys.readouterr().out.splitlines() == ["BLOCKKIT_PROGRESS 0/4", "BLOCKKIT_PROGRESS 4/4"]
    with pytest.raises(ValueError):
        ctx.progress(5, 4)


def _raster(path: Path) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=300, height=200, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(0, 0, 10, 10)) as dst:
        dst.write(np.ones((1, 200, 300), "uint8"))
    return path


@pytest.mark.parametrize("processes", [1, 2])
def test_map_windows_reports_windows_done_of_total(tmp_path: Path, processes: int) -> None:
    seen: list[tuple[int, int]] = []
    map_windows(_raster(tmp_path / "in.tif"), tmp_path / "out.tif", lambda w: w, dtype="uint8", window_size=100,
                processes=processes, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 6) for i in range(7)]  # 3 x 2 windows, in order of writing


def test_map_windows_prints_progress_only_inside_a_runner_step(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = _raster(tmp_path / "in.tif")
    map_windows(src, tmp_path / "a.tif", lambda w: w, dtype="uint8", window_size=100)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("BLOCKKIT_PROGRESS", "1")
    map_windows(src, tmp_path / "b.tif", lambda w: w, dtype="uint8", window_size=100)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "BLOCKKIT_PROGRESS 0/6" and lines[-1] == "BLOCKKIT_PROGRESS 6/6"


def test_live_display_shows_a_bar_and_elapsed_time_and_swallows_progress_lines() -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    now = [1000.0]
    live = LiveSteps(console, clock=lambda: now[0])
    echoed: list[str] = []
    events: list[str] = []
    on_event = live.wrap_events(lambda kind, step, info: events.append(kind))
    on_log = live.wrap_log(lambda step, line: echoed.append(line))
    assert on_log is not None
    with live:
        on_event("started", "ndvi", {})
        now[0] += 75
        on_log("ndvi", "BLOCKKIT_PROGRESS 3/10")
        on_log("ndvi", "an ordinary line")
        shown = Console(file=io.StringIO(), width=100, force_terminal=False)
        shown.print(live.render())
        text = shown.file.getvalue()  # type: ignore[attr-defined]
        on_event("done", "ndvi", {})
    assert "ndvi" in text and "3/10" in text and "1 min 15 s" in text
    assert echoed == ["an ordinary line"] and events == ["started", "done"]
    assert live.running == {} and not live.active


def test_without_a_terminal_every_line_passes_through() -> None:
    live = LiveSteps.for_console(None)
    echoed: list[str] = []
    on_log = live.wrap_log(lambda step, line: echoed.append(line))
    with live:
        on_log("s", "BLOCKKIT_PROGRESS 1/2")  # type: ignore[misc]
    assert echoed == ["BLOCKKIT_PROGRESS 1/2"] and live.wrap_log(None) is None


PROGRESS_BLOCK = '''
import time
import blockkit
from blockkit import FeatureCollection

@blockkit.data_block
def counting(query, ctx):
    for i in range(5):
        ctx.progress(i, 5)
        time.sleep(0.3)
    ctx.progress(5, 5)
    return FeatureCollection([])

if __name__ == "__main__":
    counting.run()
'''


@pytest.mark.slow
def test_a_run_on_a_terminal_shows_the_bar_and_keeps_the_lines_in_the_log(tmp_path: Path) -> None:
    block = write_block(tmp_path, "counting", kind="data", source=PROGRESS_BLOCK, params={})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKKIT_", "UP42_"))}
    env.update(FORCE_COLOR="1", COLUMNS="120")  # rich then draws as on a terminal
    done = subprocess.run([str(Path(sys.executable).with_name("blockkit")), "run", str(block), "-e", "process",
                           "--runs-dir", str(tmp_path / "runs"), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    log = Path(json.loads(done.stdout)["run_dir"]) / "logs" / "counting.log"
    assert "BLOCKKIT_PROGRESS 5/5" in log.read_text()
    shown = subprocess.run([str(Path(sys.executable).with_name("blockkit")), "run", str(block), "-e", "process",
                            "--runs-dir", str(tmp_path / "runs"), "--no-cache"], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "counting | BLOCKKIT_PROGRESS" not in shown.stderr  # not echoed as a log line
    assert "/5" in shown.stderr and "━" in shown.stderr  # the live bar was drawn
