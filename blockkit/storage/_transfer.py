"""Parallel downloads: retries with backoff, size and checksum checks, `.part` files renamed only when complete."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from blockkit.contract.errors import BlockkitError
from blockkit.storage._errors import TargetNotEmpty, TooLarge, TransferFailed, UnsafePath

log = logging.getLogger("blockkit.storage")
T = TypeVar("T")
CHUNK = 1024 * 1024


_current = threading.local()


def current_deadline() -> float | None:
    """The `time.monotonic()` deadline of the file this thread is downloading (openers use it), or None."""
    return getattr(_current, "deadline", None)


class TransientError(Exception):
    """A failure worth retrying (connection reset, 5xx, 429, truncated body)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient failures."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): exponential, capped."""
        return min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))


GIB = 1024**3


@dataclass(frozen=True)
class TransferLimits:
    """Bounds on what a source may make us download: per file, per stage-in, and per-file wall time."""

    max_file_bytes: int = 20 * GIB
    max_total_bytes: int = 100 * GIB
    file_deadline: float = 2 * 3600.0  # seconds for one file, all its attempts together

    def describe_size(self, n: int) -> str:
        """A size as people read it."""
        return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n} bytes"


class Budget:
    """Bytes downloaded by one stage-in, shared by its threads; going past max_total_bytes is TooLarge."""

    def __init__(self, limits: TransferLimits) -> None:
        self.limits = limits
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int, label: str) -> None:
        """Count n bytes (negative to give back a failed attempt's)."""
        with self._lock:
            self.used += n
            over = self.used > self.limits.max_total_bytes
        if over and n > 0:
            limit = self.limits.describe_size(self.limits.max_total_bytes)
            raise TooLarge(f"{label}: the stage-in passed its limit of {limit} (max_total_bytes); raise it to fetch more")


def public_url(url: str) -> str:
    """A URL safe to print: no user:password, no query (it may hold a token or signature)."""
    parts = urlsplit(url)
    if parts.scheme == "s3" or not parts.netloc:
        return url  # s3 URIs carry no credentials; their "netloc" may be an ARN
    host = parts.netloc.rpartition("@")[2]  # as written: case, port and [IPv6] brackets kept
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", parts.fragment))


def with_retries(fn: Callable[[], T], policy: RetryPolicy, label: str) -> T:
    """Call fn, retrying TransientError with backoff; then raise TransferFailed naming `label`."""
    last: Exception | None = None
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except TransientError as exc:
            last = exc
            if attempt < policy.attempts:
                log.info("retrying %s in %.1fs (attempt %d/%d): %s", label, policy.delay(attempt), attempt,
                         policy.attempts, exc)
                time.sleep(policy.delay(attempt))
    raise TransferFailed(f"{label}: failed after {policy.attempts} attempts: {last}")


NAME_MAX = 255  # bytes of one file name on Linux filesystems


def check_component(name: str, what: str) -> str:
    """Return name if it is a single safe path component, else raise UnsafePath."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise UnsafePath(f"{what} {name!r} is not a plain file or folder name; refusing to write it")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a server's escaped name): no file system name is that
        raise UnsafePath(f"{what} {name!r} is not valid Unicode text; refusing to write it") from None
    if len(os.fsencode(name + ".part")) > NAME_MAX:  # the download's `.part` file must fit too
        raise UnsafePath(f"{what} {name[:40]!r}… is longer than {NAME_MAX - len('.part')} bytes; refusing it")
    return name


def safe_join(root: Path, relative: str, what: str = "path") -> Path:
    """root/relative, a path strictly inside root: refuses absolute paths, `..`, backslashes, NULs, and paths
    that name root itself (`.`, `./.`: its `.part` file would be written beside root)."""
    if not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative:
        raise UnsafePath(f"{what} {relative!r} would write outside {root}; refusing it")
    parts = [p for p in PurePosixPath(relative).parts if p != "."]
    if ".." in parts:
        raise UnsafePath(f"{what} {relative!r} would write outside {root}; refusing it")
    if not parts:
        raise UnsafePath(f"{what} {relative!r} names the target folder itself, not a file in it; refusing it")
    for part in parts:
        check_component(part, f"{what}: part")
    target = root.joinpath(*parts)
    if root.resolve() not in target.resolve().parents:
        raise UnsafePath(f"{what} {relative!r} resolves outside {root}; refusing it")
    return target


Opener = Callable[[], "tuple[int | None, Iterable[bytes]]"]


@dataclass
class Download:
    """One file to fetch: where from (for messages), where to, how to open it, what to expect."""

    label: str
    dest: Path
    open: Opener  # returns (declared size or None, chunks); raises TransientError or a BlockkitError
    size: int | None = None
    checksums: dict[str, str] = field(default_factory=dict)  # hashlib name -> lowercase hex


def _fetch_once(task: Download, part: Path, advance: Callable[[int], None], budget: Budget, deadline: float) -> int:
    limits = budget.limits
    if time.monotonic() > deadline:
        raise TransferFailed(f"{task.label}: not finished within {limits.file_deadline:g} s (file_deadline)")
    too_big = f"{task.label}: larger than the limit of {limits.describe_size(limits.max_file_bytes)} per file (max_file_bytes)"
    if task.size is not None and task.size > limits.max_file_bytes:
        raise TooLarge(too_big)
    declared, chunks = task.open()
    if declared is not None and declared > limits.max_file_bytes:
        close = getattr(chunks, "close", None)
        if close:
            close()
        raise TooLarge(too_big)
    hashers = {name: hashlib.new(name) for name in task.checksums}
    written = 0
    try:
        with open(part, "wb") as fh:
            for chunk in chunks:
                written += len(chunk)
                budget.take(len(chunk), task.label)
                if written > limits.max_file_bytes:
                    raise TooLarge(too_big)
                if time.monotonic() > deadline:
                    raise TransferFailed(
                        f"{task.label}: not finished within {limits.file_deadline:g} s (file_deadline); "
                        f"the server sends too slowly"
                    )
                fh.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
                advance(len(chunk))
    except TransientError:
        _give_back(advance, budget, written)
        raise
    except OSError as exc:
        _give_back(advance, budget, written)
        if isinstance(exc, (ConnectionError, TimeoutError)):
            raise TransientError(str(exc)) from exc
        raise TransferFailed(f"{task.label}: cannot write {part.name}: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - transport libraries raise their own types mid-stream
        _give_back(advance, budget, written)
        if isinstance(exc, BlockkitError):
            raise
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    expected = task.size if task.size is not None else declared
    if expected is not None and written != expected:
        _give_back(advance, budget, written)
        raise TransientError(f"truncated: got {written} of {expected} bytes")
    for name, h in hashers.items():
        if h.hexdigest() != task.checksums[name].lower():
            _give_back(advance, budget, written)
            raise TransientError(f"{name} checksum mismatch (got {h.hexdigest()}, expected {task.checksums[name]})")
    return written


def _give_back(advance: Callable[[int], None], budget: Budget, written: int) -> None:
    advance(-written)
    budget.take(-written, "")


def download(
    task: Download, policy: RetryPolicy, advance: Callable[[int], None] = lambda n: None,
    budget: Budget | None = None,
) -> int:
    """Fetch one file to `<dest>.part`, verify it, then rename: a partial file never looks complete.

    Args:
        task: what to fetch, from where, to where, with which size and checksums expected.
        policy: retries of transient failures (a retry starts the file again).
        advance: called with each chunk's size (negative to roll back a failed attempt): the progress bar.
        budget: the stage-in's byte budget shared by all its files (default: a fresh one).

    Returns the number of bytes written.
    """
    budget = budget or Budget(TransferLimits())
    deadline = time.monotonic() + budget.limits.file_deadline
    try:
        task.dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnsafePath(f"{task.label}: cannot make folder {task.dest.parent.name!r} ({exc.strerror})") from exc
    part = task.dest.with_name(task.dest.name + ".part")
    _current.deadline = deadline
    try:
        n = with_retries(lambda: _fetch_once(task, part, advance, budget, deadline), policy, task.label)
        os.replace(part, task.dest)
        return n
    finally:
        _current.deadline = None
        part.unlink(missing_ok=True)


@dataclass
class Progress:
    """A rich progress bar over bytes (or nothing when disabled)."""

    enabled: bool
    total: int | None
    description: str

    def __enter__(self) -> "Progress":
        self._lock = threading.Lock()
        self._bar: Any = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress as RichProgress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=Console(stderr=True), transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int) -> None:
        """Count n more bytes (negative to roll back a failed attempt)."""
        if self._bar is not None:
            with self._lock:
                self._bar.update(self._task, advance=n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def download_all(
    tasks: list[Download], *, workers: int = 8, policy: RetryPolicy | None = None, progress: bool = True,
    description: str = "downloading", limits: TransferLimits | None = None,
) -> int:
    """Fetch all tasks in parallel; the first failure cancels what has not started and is raised.

    Args:
        tasks: the files to fetch; two tasks writing one file (or a file and a folder) are refused first.
        workers: files fetched at once.
        policy: retries of transient failures, per file.
        progress: show a progress bar over the bytes on stderr.
        description: the progress bar's text.
        limits: bounds on the bytes per file, in total, and the time per file.

    Returns the number of bytes written.
    """
    policy = policy or RetryPolicy()
    budget = Budget(limits or TransferLimits())
    check_destinations(tasks)
    check_sizes(tasks, budget.limits)
    sizes = [t.size for t in tasks]
    total = sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else None
    done = 0
    with Progress(progress and bool(tasks), total, f"{description} {len(tasks)} file(s)") as bar:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                done += download(t, policy, bar.advance, budget)
            return done
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blockkit-dl") as pool:
            futures = [pool.submit(download, t, policy, bar.advance, budget) for t in tasks]
            finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
            if errors:
                wait(futures)  # let running downloads end before their .part files are cleaned
                raise errors[0]  # type: ignore[misc]
            done = sum(f.result() for f in futures)
    return done


def check_destinations(tasks: list[Download]) -> None:
    """Refuse two sources writing one file, or a file where another source needs a folder (keys `a` and `a/b`)."""
    seen: dict[Path, str] = {}
    for t in tasks:
        if t.dest in seen:
            raise UnsafePath(f"{t.label} and {seen[t.dest]} would write the same local file; rename one of them")
        seen[t.dest] = t.label
    for t in tasks:
        for parent in t.dest.parents:
            if parent in seen:
                raise UnsafePath(
                    f"{seen[parent]} is a file but {t.label} needs it as a folder; they cannot both be staged in"
                )


def check_sizes(tasks: list[Download], limits: TransferLimits) -> None:
    """Refuse, before a byte is fetched, a file listed larger than max_file_bytes or listed sizes over max_total_bytes."""
    total = 0
    for t in tasks:
        if t.size is None:
            continue
        if t.size > limits.max_file_bytes:
            raise TooLarge(f"{t.label}: listed as {limits.describe_size(t.size)}, larger than the limit of "
                           f"{limits.describe_size(limits.max_file_bytes)} per file (max_file_bytes)")
        total += t.size
    if total > limits.max_total_bytes:
        raise TooLarge(f"the {len(tasks)} files listed hold {limits.describe_size(total)}, more than the stage-in "
                       f"limit of {limits.describe_size(limits.max_total_bytes)} (max_total_bytes); raise it to fetch more")


def iter_file(path: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    """Read a local file in chunks."""
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            yield data


# --- uploads (stage-out) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One local file to publish at `relative` ('/'-separated) under a stage-out target."""

    path: Path
    relative: str
    size: int
    content_type: str


@dataclass(frozen=True)
class Document:
    """A small generated file (a STAC item or catalog) written after every upload."""

    relative: str
    data: bytes
    content_type: str


def check_relatives(uploads: list[Upload], documents: list[Document]) -> None:
    """Refuse, before anything is sent, a target path that is absolute, empty, or has `..`, `.`, empty or NUL parts."""
    for relative in [u.relative for u in uploads] + [d.relative for d in documents]:
        parts = relative.split("/")
        if not relative or relative.startswith("/") or "\x00" in relative or any(p in ("", ".", "..") for p in parts):
            raise UnsafePath(f"upload path {relative!r} is not a plain relative path under the target; refusing it")


def upload_all(put: Callable[[Upload], None], uploads: list[Upload], workers: int) -> None:
    """Call `put` for every upload, `workers` at a time; the first failure is raised."""
    if workers <= 1 or len(uploads) <= 1:
        for job in uploads:
            put(job)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blockkit-ul") as pool:
        for _ in pool.map(put, uploads):
            pass


def target_not_empty(where: str) -> TargetNotEmpty:
    """The error for a stage-out target that already holds files."""
    return TargetNotEmpty(
        f"{where} already holds files; stage out to a new folder or prefix, or pass --overwrite to replace them"
    )
