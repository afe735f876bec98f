"""Content hashes of files and folders, cached by inode so unchanged files are read once.

A cache entry is keyed by (device, inode) and holds the file's size, `mtime_ns`, `ctime_ns`
and sha256. Any write to a file moves its ctime (even one that restores the mtime), so a
file whose four values still match is unchanged; anything else is hashed again. The limit is
the timestamps' granularity: a same-size rewrite within one tick of the file system's clock
keeps all four values (docs/runner.md, "cache").
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Iterator

_CHUNK = 1 << 20
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".git", ".mypy_cache"}
#: Entries kept in hash-cache.json (the oldest are dropped beyond it).
MAX_ENTRIES = 200_000


#: A cache file larger than this is not read (MAX_ENTRIES entries take about 22 MB).
_MAX_FILE = 64 << 20
_HEX = frozenset("0123456789abcdef")


class HashDeadline(Exception):
    """Hashing ran past the deadline it was given (the step's timeout)."""


def signature(st: os.stat_result) -> list[int]:
    """What detects a later change of a file cheaply: size, inode, mtime_ns, ctime_ns."""
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _well_formed(entry: object) -> bool:
    """[size, inode, mtime_ns, ctime_ns, sha256 in hex]: anything else in a cache file is dropped."""
    return (isinstance(entry, list) and len(entry) == 5
            and all(type(n) is int for n in entry[:4])
            and isinstance(entry[4], str) and len(entry[4]) == 64 and set(entry[4]) <= _HEX)


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def hash_fd(fd: int, deadline: float | None = None) -> str:
    """sha256 of what an open file descriptor reads from its start (checks the deadline per MiB)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        offset += len(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise HashDeadline()


class HashCache:
    """sha256 of files keyed by (device, inode), valid while size, mtime and ctime match; persisted as JSON.

    Several runners share one cache file: `save` merges this runner's new entries into what is
    on disk under a lock, through a uniquely named temp file, so no runner loses another's.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, list] = self._read()
        self._changed: dict[str, list] = {}

    def _read(self) -> dict[str, list]:
        """The cache file's well-formed entries; {} for a missing, broken or planted (symlink, FIFO, huge) file."""
        if not self.path:
            return {}
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return {}
        try:
            with os.fdopen(fd, "rb") as handle:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_FILE:
                    return {}
                data = json.loads(handle.read(_MAX_FILE + 1))
        except (ValueError, OSError):
            return {}  # a broken cache only costs re-hashing
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if _well_formed(v)}

    # --- lookups --------------------------------------------------------------------------

    def known(self, st: os.stat_result) -> str | None:
        """The sha256 recorded for this exact file state, or None (never seen, or changed since)."""
        entry = self._entries.get(_key(st))
        if entry and entry[:4] == signature(st):
            return str(entry[4])
        return None

    def remember(self, st: os.stat_result, sha: str) -> None:
        """Record a file state's sha256."""
        entry = [*signature(st), sha]
        key = _key(st)
        self._entries[key] = entry
        self._changed[key] = entry

    def moved(self, before: os.stat_result, after: os.stat_result) -> None:
        """The runner itself linked or chmod-ed a file (ctime moved, bytes not): keep its hash valid."""
        sha = self.known(before)
        if sha is not None and before.st_ino == after.st_ino and before.st_size == after.st_size \
                and before.st_mtime_ns == after.st_mtime_ns:
            self.remember(after, sha)

    def file_sha256(self, path: Path, deadline: float | None = None) -> str:
        """The sha256 of a file's bytes (the path's final component is never followed)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            cached = self.known(st)
            if cached:
                return cached
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{path} is not a regular file")
            value = hash_fd(fd, deadline)
            self.remember(st, value)
            return value
        finally:
            os.close(fd)

    def tree(self, root: Path, prefix: str = "") -> dict[str, str]:
        """sha256 of every regular file below root, by POSIX path relative to root (symlinks skipped)."""
        files = dict(_regular_files(root, prefix))
        if len(files) < 2:
            return {rel: self.file_sha256(path) for rel, path in files.items()}
        # hashlib releases the GIL on large buffers: new files are hashed on every core.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1, 8)) as pool:
            digests = pool.map(self.file_sha256, files.values())
            return dict(zip(files, digests))

    # --- persistence ----------------------------------------------------------------------

    def save(self) -> None:
        """Merge this runner's new entries into the cache file (under a lock, unique temp name)."""
        if not self.path or not self._changed:
            return
        from blockkit.runner._lock import FileLock, replace_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_suffix(".lock")):
            merged = self._read()
            for key, entry in self._changed.items():
                if key not in merged or merged[key][3] <= entry[3]:  # keep the later state of an inode
                    merged[key] = entry
            if len(merged) > MAX_ENTRIES:
                merged = dict(list(merged.items())[-MAX_ENTRIES:])
            replace_atomic(self.path, json.dumps(merged, separators=(",", ":")))
        self._entries.update(merged)
        self._changed = {}


def _regular_files(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            yield f"{prefix}{path.relative_to(root).as_posix()}", path


def digest_of(value: object) -> str:
    """sha256 of a JSON-serialisable value (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def source_hash(block_dir: Path, cache: HashCache) -> str:
    """A hash of a block folder's source (tests and caches excluded)."""
    files = {k: v for k, v in cache.tree(block_dir).items() if not k.startswith("tests/")}
    return digest_of(files)
