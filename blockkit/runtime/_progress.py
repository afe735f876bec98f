"""Progress a block reports to the runner: `BLOCKKIT_PROGRESS <done>/<total>` lines on stdout.

The runner shows them as a bar beside the running step (see docs/report.md, "Progress").
Lines are throttled: at most about four a second, plus the first and the last, so a loop
over a million items does not flood the step's log.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

from blockkit.contract._progress import format_progress

ENV_PROGRESS = "BLOCKKIT_PROGRESS"  # set to "1" by the runner for every step
_MIN_INTERVAL_S = 0.25


class ProgressReporter:
    """Writes throttled progress lines to a stream (stdout by default)."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self._last_time: float | None = None
        self._last: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        """Report `done` of `total` (a line is written unless one was written very recently)."""
        line = format_progress(done, total)  # checks the values even when the line is skipped
        now = self.clock()
        if (done, total) == self._last:
            return
        first_or_last = self._last is None or done == total or total != self._last[1]
        if not first_or_last and self._last_time is not None and now - self._last_time < _MIN_INTERVAL_S:
            return
        stream = self.stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()
        self._last, self._last_time = (done, total), now


def runner_wants_progress() -> bool:
    """True inside a step started by the blockkit runner (which shows progress lines as a bar)."""
    return os.environ.get(ENV_PROGRESS) == "1"
