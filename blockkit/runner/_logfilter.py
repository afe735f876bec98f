"""What a block prints, made safe for the console and the step log (both engines).

Every line a block writes passes through `LogFilter` before it reaches the log file or the
console: terminal control and escape sequences are neutralised (shown as `\\x1b`-style text,
never interpreted), a line longer than `MAX_LINE_CHARS` is cut with a marker, and secret
values are replaced by `***`. `LineSplitter` turns a byte stream into lines in linear time,
without ever holding more than one maximum line plus one chunk.
"""

from __future__ import annotations

import re
from typing import Callable

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
