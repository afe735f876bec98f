"""Locks and atomic writes for files several runners share: one owner per run folder, merged caches."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType

from blockkit.contract.errors import WorkflowError

RUN_LOCK = ".lock"


def replace_atomic(path: Path, text: str, *, dir_fd: int | None = None) -> None:
    """Write text to path through a new, uniquely named temp file beside it, then rename over it.

    The temp file is created with O_EXCL and O_NOFOLLOW: a symlink or file planted under any
    name is never written through, and two writers never share a temp file.
    With `dir_fd`, `path` is a bare name inside that (already opened) folder.
    """
    path = Path(path)
    name = path.name
    folder_fd = dir_fd if dir_fd is not None else os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=folder_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=folder_fd)
            except OSError:
                pass
            raise
    finally:
        if dir_fd is None:
            os.close(folder_fd)


class FileLock:
    """An exclusive `flock` on a lock file, held for a `with` block (waits for other holders)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def runner_identity() -> dict[str, object]:
    """Who runs a run: pid, host and start time (kept in run.json and the run's lock file)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}


class RunLock:
    """One runner per run folder: a non-blocking `flock` on `<run>/.lock`, held while the run runs.

    The kernel drops the lock when the runner dies (even `kill -9`), so a folder whose lock is
    free has no runner; the lock file names the last holder for the refusal message.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RUN_LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise WorkflowError naming the runner that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkflowError(
                f"run {self.path.parent.name} is being run by {self.holder_text()}; "
                "only one runner may work on a run folder at a time (wait for it, or stop it first)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(runner_identity()).encode(), 0)
        self._fd = fd

    def holder_text(self, wait_s: float = 0.5) -> str:
        """'pid N on host H since T' from the lock file (or 'another runner').

        The holder writes its identity just after taking the lock: a runner refused in between
        reads an empty file, so it looks again for up to `wait_s` seconds.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                who = json.loads(self.path.read_text())
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(who["started"])))
                return f"pid {int(who['pid'])} on host {who['host']} since {since}"
            except (OSError, ValueError, KeyError, TypeError):
                if time.monotonic() >= deadline:
                    return "another runner"
                time.sleep(0.02)

    def release(self) -> None:
        """Let another runner take the folder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None


def runner_gone(run_dir: Path, runner: dict[str, object] | None) -> bool:
    """True when the runner recorded in run.json is certainly not running any more.

    On the same host: its pid is gone, or nobody holds the run's lock. On another host only
    the lock can tell (flock over a network file system may not), so a free lock decides.
    """
    lock = run_dir / RUN_LOCK
    if runner and runner.get("host") == socket.gethostname():
        try:
            os.kill(int(str(runner.get("pid") or 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, TypeError, OverflowError):
            pass
    if not lock.exists():
        return runner is not None  # a run made before runners were recorded: cannot tell
    return not lock.is_symlink() and not lock_held(lock)  # a link no runner locks tells nothing


def lock_held(path: Path) -> bool:
    """True while someone holds the `flock` on `path` (a shared probe that never waits, a FIFO there included).

    No lock file, or a link (which no runner locks: they open without following), is free; a
    file that cannot be opened counts as held.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno not in (errno.ENOENT, errno.ELOOP)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
