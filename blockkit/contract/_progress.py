"""The progress protocol: a block prints `BLOCKKIT_PROGRESS <done>/<total>` as one line on stdout.

The runner reads these lines from the step's log stream and shows a bar; everything else about
the line (the log file keeps it) is ordinary output. `BlockContext.progress` writes it.
"""

from __future__ import annotations

import re

from blockkit.contract.errors import InvalidArgument

PROGRESS_PREFIX = "BLOCKKIT_PROGRESS"
_LINE = re.compile(r"BLOCKKIT_PROGRESS (\d{1,15})/(\d{1,15})")


def format_progress(done: int, total: int) -> str:
    """The protocol line for `done` of `total` units (without the newline)."""
    if isinstance(done, bool) or isinstance(total, bool) or not isinstance(done, int) or not isinstance(total, int):
        raise TypeError("progress: done and total must be integers")
    if total < 1 or not 0 <= done <= total:
        raise InvalidArgument(f"progress: need 0 <= done <= total and total >= 1, got {done}/{total}")
    return f"{PROGRESS_PREFIX} {done}/{total}"


def parse_progress(line: str) -> tuple[int, int] | None:
    """(done, total) when the whole line is a valid progress line, else None."""
    found = _LINE.fullmatch(line.strip())
    if found is None:
        return None
    done, total = int(found.group(1)), int(found.group(2))
    if total < 1 or done > total:
        return None
    return done, total
