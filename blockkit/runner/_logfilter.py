"""What a block prints, made safe for the console and the step log (both engines).

Every line a block writes passes through `LogFilter` before it reaches the log file or the
console: terminal control and escape sequences are neutralised (shown as `\\x1b`-style text,
never interpreted), a line longer than `MAX_LINE_CHARS` is cut with a marker, and secret
values are replaced by `***`. `LineSplitter` turns a byte stream into lines in linear time,
without ever holding more than one maximum line plus one chunk. `StepLog` is the step's log
file, bounded: a block printing without end cannot fill the disk with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import deque
from pathlib import Path
from typing import Callable

from blockkit.contract.errors import WorkflowError

#: What a step's log keeps by default: its first lines, then its last ones, this many MB in all.
DEFAULT_MAX_LOG_MB = 64
#: The environment variable that changes it (MB, at least 1).
MAX_LOG_ENV = "BLOCKKIT_MAX_LOG_MB"

#: Longest line kept in a log; the rest is dropped and the line ends with TRUNCATED_MARK.
MAX_LINE_CHARS = 16 * 1024
TRUNCATED_MARK = " [blockkit: line truncated, {dropped} more bytes]"

# C0 controls except tab, DEL, and C1 controls (U+0080..U+009F: CSI/OSC introducers on some terminals).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Unicode bidi overrides and isolates can make a line read differently from what it holds.
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def neutralise(line: str) -> str:
    """The line with control, escape and bidi characters written out as visible `\\xNN` text."""
    line = _CONTROL.sub(_escape, line)
    return _BIDI.sub(_escape, line)


class LogFilter:
    """Cleans one log line: secrets out, control characters neutralised, length bounded."""

    def __init__(self, redact: Callable[[str], str] | None = None, max_chars: int = MAX_LINE_CHARS) -> None:
        self.redact = redact
        self.max_chars = max_chars

    def __call__(self, line: str, dropped: int = 0) -> str:
        """The cleaned line; `dropped` counts bytes the splitter already cut off."""
        if self.redact is not None:
            # Before the cut: a secret across the cut is masked whole, not half shown.
            line = self.redact(line)
        if len(line) > self.max_chars:
            dropped += len(line[self.max_chars:].encode("utf-8", errors="replace"))
            line = line[: self.max_chars]
        line = neutralise(line)
        if dropped:
            line += TRUNCATED_MARK.format(dropped=dropped)
        return line


class LineSplitter:
    """Turns a stream of byte chunks into complete, decoded lines, in linear time.

    A line longer than `max_bytes` is emitted once, cut at `max_bytes`, with the number of
    bytes dropped; the rest of that line is counted and discarded as it arrives (a block
    printing one 80 MB line costs one pass over it and `max_bytes` of memory).
    """

    def __init__(self, emit: Callable[[str, int], None], max_bytes: int = 4 * MAX_LINE_CHARS) -> None:
        self._emit = emit
        self._max = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._dropped = 0  # bytes of the current line discarded past the limit

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the stream."""
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return
            self._keep(chunk[start:end])
            self._flush()
            start = end + 1

    def close(self) -> None:
        """The stream ended: emit what is left as a last line."""
        if self._size or self._dropped:
            self._flush()

    def _keep(self, piece: bytes) -> None:
        if not piece:
            return
        room = self._max - self._size
        if room > 0:
            self._parts.append(piece[:room])
            self._size += min(room, len(piece))
        if len(piece) > room:
            self._dropped += len(piece) - max(room, 0)

    def _flush(self) -> None:
        data = b"".join(self._parts)
        dropped = self._dropped
        self._parts, self._size, self._dropped = [], 0, 0
        if data.endswith(b"\r"):
            data = data[:-1]
        self._emit(data.decode("utf-8", errors="replace"), dropped)


def is_error_line(text: str) -> bool:
    """Whether a (stripped) log line is a block's error line: `[..._ERROR] ...` or `[OUT_OF_MEMORY] ...`."""
    return text.startswith("[") and ("_ERROR]" in text or text.startswith("[OUT_OF_MEMORY]"))


#: Error lines a step's log keeps from the part of the output it leaves out (the last ones).
KEPT_ERROR_LINES = 20


def max_log_bytes() -> int:
    """How many bytes a step's log keeps: `$BLOCKKIT_MAX_LOG_MB`, else DEFAULT_MAX_LOG_MB."""
    text = os.environ.get(MAX_LOG_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_LOG_MB << 20
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = 0.0
    if not 1 <= megabytes <= 1 << 20:
        raise WorkflowError(f"{MAX_LOG_ENV}={text!r} must be a number of MB from 1 to 1048576")
    return int(megabytes * (1 << 20))


class StepLog:
    """A step's log file that keeps the first and the last lines of a block's output, within a limit.

    Lines are appended (and flushed) as they come until three quarters of the limit are used,
    counting what the file already held (the other features of a scattered step, the runner's
    own lines). Later lines go to a ring of the last quarter's worth; closing the log writes a
    line saying how many lines and bytes were left out, then that ring: the beginning and the
    end of the output, where a failure shows, stay. The last error lines (`is_error_line`)
    among those left out are kept too, after that line: Docker copies stderr beside stdout,
    so a block's error can arrive before the end of its output. Lines may come from several
    threads.
    """

    def __init__(self, path: Path, limit: int | None = None) -> None:
        self.limit = max_log_bytes() if limit is None else limit
        self._tail_limit = self.limit // 4
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._head_room = self.limit - self._tail_limit - self._file.tell()
        self._tail: deque[tuple[str, int]] = deque()
        self._tail_bytes = 0
        self._left_out_lines = 0
        self._left_out_bytes = 0
        self._errors: deque[str] = deque(maxlen=KEPT_ERROR_LINES)
        self._lock = threading.Lock()
        self.closed = False
        #: Why the file could not be written (a full disk): later lines are only counted, and
        #: the block's output is still read to its end, so that the block never blocks on it.
        self.write_error: OSError | None = None
        self._lost_lines = 0

    def write_line(self, line: str) -> None:
        """Append one (already cleaned) line; ignored once the log is closed."""
        data = line + "\n"
        size = len(data.encode("utf-8", errors="replace"))
        with self._lock:
            if self.closed:
                return
            if self.write_error is not None:
                self._lost_lines += 1
                return
            if not self._tail and size <= self._head_room:
                try:
                    self._file.write(data)
                    self._file.flush()
                except OSError as exc:
                    self.write_error = exc
                    self._lost_lines += 1
                    return
                self._head_room -= size
                return
            self._tail.append((data, size))
            self._tail_bytes += size
            while self._tail_bytes > self._tail_limit and self._tail:
                text, dropped = self._tail.popleft()
                self._tail_bytes -= dropped
                self._left_out_lines += 1
                self._left_out_bytes += dropped
                if is_error_line(text.strip()):
                    self._errors.append(text)

    def close(self) -> None:
        """Write the kept last lines (after a line about those left out) and close the file."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                if self.write_error is not None:
                    why = self.write_error.strerror or str(self.write_error)
                    self._file.write(f"[blockkit] writing this log failed ({why}): the {self._lost_lines} "
                                     "line(s) of output after this point are lost\n")
                    return
                if self._left_out_lines:
                    errors = f"; the last {len(self._errors)} error line(s) among them follow" if self._errors else ""
                    self._file.write(
                        f"[blockkit] {self._left_out_lines} line(s) of output ({self._left_out_bytes} bytes) left out "
                        f"here: a step's log keeps its first and last lines, {self.limit >> 20} MB in all "
                        f"({MAX_LOG_ENV}){errors}\n")
                    self._file.writelines(self._errors)
                self._file.writelines(data for data, _ in self._tail)
                self._tail.clear()
            except OSError as exc:
                self.write_error = self.write_error or exc
            finally:
                with contextlib.suppress(OSError):  # what could not be flushed is lost with the disk
                    self._file.close()
