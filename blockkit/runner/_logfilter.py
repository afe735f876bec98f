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
from typing import Callable, Iterator

from blockkit.contract.errors import ExitCode, WorkflowError

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


class SharedLog:
    """What the writers of one log file in this process share: a lock, and the file's size as they wrote it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.size = 0


@contextlib.contextmanager
def shared_log(path: Path) -> Iterator[SharedLog]:
    """The `SharedLog` of this file (by its real path), for as long as the caller writes it.

    The parts of a scattered step append to their step's log at once; so do the docker
    sidecars of its parts to `<step>.gateway.log`. Writers that take the lock keep their lines
    whole, and the step log's size limit counts what all of them wrote.
    """
    key = os.path.realpath(path)
    with _SHARED_GUARD:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = SharedLog()
        shared.users += 1
    try:
        yield shared
    finally:
        with _SHARED_GUARD:
            shared.users -= 1
            if shared.users == 0:
                del _SHARED[key]


_SHARED: dict[str, SharedLog] = {}
_SHARED_GUARD = threading.Lock()

#: The longest error line kept from the part of a log that is left out.
KEPT_ERROR_CHARS = 1000


class StepLog:
    """A step's log file that keeps the first and the last lines of a block's output, within a limit.

    Lines are appended (and flushed) as they come while the file stays within three quarters
    of the limit; the file's own size decides, so the features of a scattered step, whose
    logs share the file, share the limit too. Later lines go to a ring of the last quarter's
    worth, kept as chunks of text (not an object per line: a block printing empty lines costs
    the runner what the ring holds). Closing the log writes a line saying how many lines and
    bytes were left out, the last error lines (`is_error_line`) among them (Docker copies
    stderr beside stdout, so a block's error can arrive before the end of its output), then
    as much of the ring as the limit still allows. Lines may come from several threads.
    """

    def __init__(self, path: Path, limit: int | None = None) -> None:
        self.limit = max_log_bytes() if limit is None else limit
        self._tail_limit = self.limit // 4
        self._chunk_limit = max(1, min(64 << 10, self._tail_limit // 8))
        self._share = shared_log(path)
        self._shared = self._share.__enter__()
        self._lock = self._shared.lock
        try:
            with self._lock:
                # errors="replace": a lone surrogate must not stop the log (nor the reader behind it).
                self._file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by close()
                # The runner writes its own lines between features: the file says how big it is now.
                self._shared.size = os.fstat(self._file.fileno()).st_size
                # The file only grows: no more of the ring than fits now can ever be written. (A
                # feature whose step log is full already holds about one chunk, not a quarter.)
                self._ring_limit = min(self._tail_limit, max(self._chunk_limit, self.limit - self._shared.size))
        except BaseException:
            self._share.__exit__(None, None, None)
            raise
        self._tailing = False
        self._chunks: deque[tuple[str, int, int]] = deque()  # (whole lines, bytes, lines), oldest first
        self._current: list[str] = []
        self._current_bytes = 0
        self._tail_bytes = 0
        self._left_out_lines = 0
        self._left_out_bytes = 0
        self._errors: deque[str] = deque(maxlen=KEPT_ERROR_LINES)
        self.closed = False
        #: Why the file could not be written (a full disk): later lines are only counted, and
        #: the block's output is still read to its end, so that the block never blocks on it.
        self.write_error: Exception | None = None
        self._lost_lines = 0

    def write_line(self, line: str) -> None:
        """Append one (already cleaned) line; ignored once the log is closed."""
        data = line + "\n"
        size = len(data) if data.isascii() else len(data.encode("utf-8", errors="replace"))
        with self._lock:
            if self.closed:
                return
            if self.write_error is not None:
                self._lost_lines += 1
                return
            if not self._tailing:
                try:
                    if self._shared.size + size <= self.limit - self._tail_limit:
                        self._file.write(data)
                        self._file.flush()
                        self._shared.size += size
                        return
                except (OSError, ValueError) as exc:
                    self.write_error = exc
                    self._lost_lines += 1
                    return
                self._tailing = True
            self._current.append(data)
            self._current_bytes += size
            self._tail_bytes += size
            if self._current_bytes >= self._chunk_limit:
                self._seal_chunk()
            while self._tail_bytes > self._ring_limit and self._chunks:
                self._leave_out_oldest()

    def _seal_chunk(self) -> None:
        if self._current:
            self._chunks.append(("".join(self._current), self._current_bytes, len(self._current)))
            self._current, self._current_bytes = [], 0

    def _leave_out_oldest(self, excess: int | None = None) -> None:
        """Leave out the oldest chunk of the tail, or only its first lines up to `excess` bytes."""
        text, size, lines = self._chunks.popleft()
        if excess is not None and excess < size:
            cut = gone = count = 0
            while gone < excess:
                end = text.index("\n", cut) + 1
                gone += len(text[cut:end].encode("utf-8", errors="replace"))
                count += 1
                cut = end
            if cut < len(text):
                self._chunks.appendleft((text[cut:], size - gone, lines - count))
            text, size, lines = text[:cut], gone, count
        self._tail_bytes -= size
        self._left_out_lines += lines
        self._left_out_bytes += size
        for line in text.split("\n"):  # only "\n" ends a line here (U+2028 stays inside one)
            if is_error_line(line.strip()):
                self._errors.append(line[:KEPT_ERROR_CHARS] + "\n")

    def close(self) -> None:
        """Write what was left out (counted), its last error lines and the kept last lines; close the file."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                if self.write_error is not None:
                    why = getattr(self.write_error, "strerror", None) or str(self.write_error)
                    self._file.write(f"[blockkit] writing this log failed ({why}): the {self._lost_lines} "
                                     "line(s) of output after this point are lost\n")
                    return
                self._seal_chunk()
                # Only what the limit still allows (other features may have used it; 400 bytes are
                # the line about what was left out): its error lines, then the last lines, line by line.
                room = self.limit - max(self._shared.size, os.fstat(self._file.fileno()).st_size) - 400
                while self._chunks and self._tail_bytes + _size(self._errors) > room:
                    self._leave_out_oldest(self._tail_bytes + _size(self._errors) - room)
                kept = list(self._errors)
                while kept and _size(kept) > room - self._tail_bytes:
                    kept.pop(0)
                if not kept and self._errors:
                    kept = [self._errors[-1]]  # a feature's reason, even in a full log: 1000 characters at most
                if self._left_out_lines:
                    errors = "".join(kept)
                    said = f"; the last {len(kept)} error line(s) among them follow" if kept else ""
                    self._file.write(
                        f"[blockkit] {self._left_out_lines} line(s) of output ({self._left_out_bytes} bytes) left out "
                        f"here: a step's log keeps its first and last lines, {self.limit / (1 << 20):g} MB in all "
                        f"({MAX_LOG_ENV}){said}\n")
                    self._file.write(errors)
                self._file.writelines(text for text, _, _ in self._chunks)
                self._chunks.clear()
                self._file.flush()
                self._shared.size = os.fstat(self._file.fileno()).st_size
            except (OSError, ValueError) as exc:
                self.write_error = self.write_error or exc
            finally:
                with contextlib.suppress(OSError, ValueError):  # what could not be flushed is lost with the disk
                    self._file.close()
                self._share.__exit__(None, None, None)


def _size(lines: "deque[str] | list[str]") -> int:
    return sum(len(line.encode("utf-8", errors="replace")) for line in lines)


class ErrorLineTracker:
    """Remembers the line that best explains a failure: the last `[..._ERROR]` line, else the last line."""

    def __init__(self) -> None:
        self._error: str | None = None
        self._last: str | None = None

    def see(self, line: str) -> None:
        """Take one (already cleaned) log line."""
        text = line.strip()
        if not text or text.startswith("[blockkit]"):
            return
        self._last = text[:KEPT_ERROR_CHARS]
        if is_error_line(text):
            self._error = text[:KEPT_ERROR_CHARS]

    @property
    def line(self) -> str | None:
        """The explaining line, or None when the block printed nothing."""
        return self._error or self._last

    def ending(self, code: int, detail: str = "") -> tuple[str, str]:
        """A failed step's words and the line that ends its log, the same on every engine.

        The words are `detail` when the runner ended the step (a timeout, its memory), else the
        block's own explaining line, else the exit code's name; the closing line repeats the
        runner's words, or only says the code when the block's line is in the log already.
        """
        name = f"{ExitCode.describe(code)} (exit {code})"
        if detail:
            return detail, f"[blockkit] {detail}"
        return self.line or name, f"[blockkit] {name}"
