"""Sealing: the runner takes over a folder a block wrote, never following a link the block made.

After a step ends, its output folder is renamed into the run folder's sealed place
(`steps/<step>/output`, where no block is ever given write access) and walked with
`lstat`/`O_NOFOLLOW` relative to open folder descriptors. Symlinks, devices, fifos and
sockets are refused with a line naming the path; every regular file is made read-only
(0444, owned by the runner) and hashed in the same pass; folders become 0555 once the
runner has finished forwarding into them. The per-file size, inode, mtime and ctime go to
the hash cache, so a later cache hit or resume re-verifies the folder cheaply.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from blockkit.contract.errors import BlockkitError, SealError, SealTimeout
from blockkit.runner._hashing import HashCache, HashDeadline, hash_fd
from blockkit.runner._logfilter import neutralise

GIB = 1 << 30
#: Default output size limit per machine type (bytes a step's output may hold, sparse files at
#: their apparent size, since hashing reads that many bytes). A step's `max_output` overrides it.
OUTPUT_LIMITS: dict[str, int] = {
    "small": 20 * GIB,
    "medium": 50 * GIB,
    "large": 100 * GIB,
    "xlarge": 200 * GIB,
    "xxlarge": 400 * GIB,
    "xxxlarge": 800 * GIB,
}
DEFAULT_OUTPUT_LIMIT = 200 * GIB  # GPU and unknown machine types
FILE_MODE = 0o444
DIR_MODE = 0o555
#: Folders nested deeper than this in an output are refused (the walk must stay bounded).
MAX_DEPTH = 128
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device"}


def output_limit(machine_type: str, override: int | None = None) -> int:
    """The output size limit of a step: its `max_output`, else its machine type's default."""
    return override if override is not None else OUTPUT_LIMITS.get(machine_type, DEFAULT_OUTPUT_LIMIT)


def human_bytes(value: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def open_nofollow(name: str, dir_fd: int, flags: int, fix_modes: bool = True) -> int:
    """Open an entry of a folder without following a link; a file or folder of the runner's own
    user that the block made unreadable (mode 000) is given read access first."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        if not fix_modes:
            raise
        path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(path_fd)
            if st.st_uid != os.geteuid() or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise
            extra = stat.S_IRWXU if stat.S_ISDIR(st.st_mode) else stat.S_IRUSR
            os.chmod(f"/proc/self/fd/{path_fd}", stat.S_IMODE(st.st_mode) | extra)
        finally:
            os.close(path_fd)
        return os.open(name, flags, dir_fd=dir_fd)


def _enterable(fd: int) -> None:
    """Give a folder of the runner's own user its owner's bits back: a block may leave one readable
    but not enterable (0400, 0600), whose entries then cannot be opened."""
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and (st.st_mode & stat.S_IRWXU) != stat.S_IRWXU:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def _open_root(root: Path, fix_modes: bool = True) -> int:
    """Open a folder to take over (or delete), never through a link; one its owner made mode 000 too."""
    try:
        return os.open(root, _DIR_FLAGS)
    except PermissionError:
        if not fix_modes:
            raise
    parent = os.open(root.parent, _DIR_FLAGS)
    try:
        return open_nofollow(root.name, parent, _DIR_FLAGS)
    finally:
        os.close(parent)


def open_dir(base_fd: int, rel: str) -> int:
    """Open a folder below an open folder, refusing a symlink at every component."""
    fd = os.dup(base_fd)
    for part in [p for p in rel.split("/") if p]:
        try:
            child = open_nofollow(part, fd, _DIR_FLAGS)
        finally:
            os.close(fd)
        fd = child
    return fd


@dataclass
class _Dir:
    rel: str
    files: list[tuple[str, os.stat_result]] = field(default_factory=list)


@dataclass
class SealedTree:
    """A folder the runner took over: its files' hashes, and the folders to make read-only."""

    root: Path
    files: dict[str, str]
    dirs: list[str]
    total_bytes: int = 0

    def lock(self) -> None:
        """Make every folder read-only (deepest first); after this nothing can be added or removed."""
        lock_tree(self.root)


def lock_tree(root: Path) -> None:
    """chmod 0555 (and chown to the runner when root) every folder below root, deepest first."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        _lock(root_fd)
    finally:
        os.close(root_fd)


def _lock(fd: int) -> None:
    with os.scandir(fd) as entries:
        names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    for name in names:
        sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            _lock(sub)
        finally:
            os.close(sub)
    _own(fd, os.fstat(fd), DIR_MODE)


def _own(fd: int, st: os.stat_result, mode: int) -> None:
    """Give an inode to the runner and make it read-only (a uid 1000 container wrote it)."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0 and (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


class _Walk:
    """One lstat pass: every entry's type checked, sizes summed against the limit."""

    def __init__(self, root: Path, what: str, limit: int | None, deadline: float | None,
                 fix_modes: bool = True) -> None:
        self.root = root
        self.fix_modes = fix_modes
        self.what = what
        self.limit = limit
        self.deadline = deadline
        self.dirs: list[_Dir] = []
        self.names: dict[tuple[int, int], int] = {}
        self.total = 0
        self.count = 0

    def run(self, root_fd: int) -> None:
        self._walk(root_fd, "", 0)

    def _walk(self, fd: int, rel: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SealError(f"the {self.what} nests folders deeper than {MAX_DEPTH} levels (at {rel[:200]!r}...)")
        folder = _Dir(rel)
        self.dirs.append(folder)
        subdirs: list[str] = []
        if self.fix_modes:
            _enterable(fd)
        with os.scandir(fd) as entries:
            for entry in entries:
                self.count += 1
                if self.deadline is not None and self.count % 512 == 0 and time.monotonic() > self.deadline:
                    raise SealTimeout(f"taking over the {self.what} ran past the step's timeout")
                child = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                kind = stat.S_IFMT(st.st_mode)
                if kind == stat.S_IFDIR:
                    subdirs.append(entry.name)
                elif kind == stat.S_IFREG:
                    folder.files.append((entry.name, st))
                    inode = (st.st_dev, st.st_ino)
                    self.names[inode] = self.names.get(inode, 0) + 1
                    self.total += max(st.st_size, st.st_blocks * 512)
                    if self.limit is not None and self.total > self.limit:
                        raise SealError(
                            f"the {self.what} holds more than its limit of {human_bytes(self.limit)} "
                            f"(at {child!r}, {human_bytes(max(st.st_size, st.st_blocks * 512))}); "
                            "raise the step's max_output if that much is intended")
                elif kind == stat.S_IFLNK:
                    try:
                        target = os.readlink(entry.name, dir_fd=fd)
                    except OSError:
                        target = "?"
                    raise SealError(f"the {self.what} holds a symlink {child!r} -> {target!r}; "
                                    "a block's output may hold only regular files and folders")
                else:
                    raise SealError(f"the {self.what} holds a {_KINDS.get(kind, 'special file')} {child!r}; "
                                    "a block's output may hold only regular files and folders")
        for name in sorted(subdirs):
            sub = open_nofollow(name, fd, _DIR_FLAGS, self.fix_modes)
            try:
                self._walk(sub, f"{rel}/{name}" if rel else name, depth + 1)
            finally:
                os.close(sub)


def seal_tree(root: Path, hashes: HashCache, *, what: str = "output", limit: int | None = None,
              deadline: float | None = None, read_only: bool = True, hash_files: bool = True) -> SealedTree:
    """Take over the folder at root: refuse links and special files, make files read-only, hash them.

    `deadline` is a `time.monotonic()` value (the step's timeout); `limit` is in bytes. An
    inode that is also linked from outside the folder (its link count is higher than its
    names here) is hashed but never chmod-ed: it is not the block's to give away.
    Folders stay writable until `SealedTree.lock()`, so the runner can forward into them.
    """
    try:
        root_fd = _open_root(root, fix_modes=read_only)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SealError(f"the {what} {root} is a symlink") from None
        raise
    try:
        walk = _Walk(root, what, limit, deadline, fix_modes=read_only)
        walk.run(root_fd)
        files: dict[str, str] = {}
        by_inode: dict[tuple[int, int], str] = {}  # several names of one inode: taken over once
        # Files are hashed in threads only when several in one folder need reading: a tree
        # whose hashes the cache knows (a reused feature's) is checked without starting any.
        pool: ThreadPoolExecutor | None = None
        busy: list[Future[str]] = []  # hashing jobs still running when waiting for them was interrupted
        try:
            for folder in walk.dirs:
                if not folder.files:
                    continue
                dir_fd = open_dir(root_fd, folder.rel)
                try:
                    jobs: dict[tuple[int, int], tuple] = {}
                    for name, st in folder.files:
                        inode = (st.st_dev, st.st_ino)
                        if inode not in by_inode and inode not in jobs:
                            jobs[inode] = (dir_fd, name, st, walk.names[inode], read_only, hash_files, deadline)
                    todo = list(jobs.values())
                    unknown = sum(hash_files and hashes.known(job[2]) is None for job in todo)
                    if unknown > 1:
                        pool = pool or ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8))
                        futures = [pool.submit(_take_file, hashes, *job) for job in todo]
                        try:
                            results = [future.result() for future in futures]
                        finally:  # none may still use dir_fd once it is closed below
                            for future in futures:
                                future.cancel()
                            busy = futures
                            wait(futures)  # a second Ctrl-C here leaves dir_fd open (see below)
                            busy = []
                    else:
                        results = [_take_file(hashes, *job) for job in todo]
                    by_inode.update(zip(jobs, results))
                    for name, st in folder.files:
                        files[f"{folder.rel}/{name}" if folder.rel else name] = by_inode[(st.st_dev, st.st_ino)]
                except HashDeadline:
                    raise SealTimeout(f"hashing the {what} ran past the step's timeout") from None
                except _Changed as changed:
                    rel = f"{folder.rel}/{changed.name}" if folder.rel else changed.name
                    raise SealError(f"{rel!r} in the {what} changed while the runner took it over "
                                    "(a process of the step is still writing)") from None
                finally:
                    if all(future.done() for future in busy):
                        os.close(dir_fd)  # else a hashing thread still reads through it: left to the exit
        finally:
            if pool is not None:
                pool.shutdown()
        return SealedTree(root, dict(sorted(files.items())), [d.rel for d in walk.dirs], walk.total)
    finally:
        os.close(root_fd)


class _Changed(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _take_file(hashes: HashCache, dir_fd: int, name: str, seen: os.stat_result, names_here: int,
               read_only: bool, hash_files: bool, deadline: float | None) -> str:
    try:
        fd = open_nofollow(name, dir_fd, _FILE_FLAGS, read_only)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
            raise _Changed(name) from None
        raise
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or before.st_ino != seen.st_ino:
            raise _Changed(name)
        st = before
        if read_only and before.st_nlink <= names_here:
            _own(fd, before, FILE_MODE)
            st = os.fstat(fd)
            hashes.moved(before, st)
        if not hash_files:
            return ""
        sha = hashes.known(st)
        if sha is None:
            sha = hash_fd(fd, deadline)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                raise _Changed(name)
            hashes.remember(st, sha)
        return sha
    finally:
        os.close(fd)


def verify_tree(root: Path, expected: dict[str, str], hashes: HashCache,
                deadline: float | None = None) -> str | None:
    """Why a sealed folder no longer matches its recorded hashes, or None when it does.

    Files whose size, inode, mtime and ctime still match the hash cache are not read;
    any other file is hashed again and compared.
    """
    try:
        tree = seal_tree(root, hashes, what="sealed output", read_only=False, deadline=deadline)
    except SealError as err:
        return err.message
    except SealTimeout:
        return "re-checking it ran past the deadline"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if tree.files == expected:
        return None
    missing = sorted(set(expected) - set(tree.files))
    extra = sorted(set(tree.files) - set(expected))
    changed = sorted(k for k in set(expected) & set(tree.files) if expected[k] != tree.files[k])
    parts = []
    for label, names in (("changed", changed), ("missing", missing), ("added", extra)):
        if names:
            # The block chose the names: control and bidi characters are shown, never sent to a terminal.
            shown = neutralise(", ".join(names[:3]))
            parts.append(f"{label}: {shown}" + (f" (+{len(names) - 3})" if len(names) > 3 else ""))
    return "; ".join(parts)


def make_writable(root: Path) -> None:
    """Give the owner write access to every folder below root again (so it can be deleted)."""
    try:
        root_fd = _open_root(root)
    except OSError:
        return
    try:
        _unlock(root_fd)
    finally:
        os.close(root_fd)


def _unlock(fd: int) -> None:
    try:
        st = os.fstat(fd)
        if (st.st_mode & stat.S_IRWXU) != stat.S_IRWXU:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        with os.scandir(fd) as entries:
            names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for name in names:
        try:
            sub = open_nofollow(name, fd, _DIR_FLAGS)  # a folder the block made mode 000 too
        except OSError:
            continue
        try:
            _unlock(sub)
        finally:
            os.close(sub)


def remove_tree(path: Path) -> None:
    """Delete a folder the runner sealed (read-only folders included), never following links."""
    import shutil

    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    try:
        make_writable(path)
        shutil.rmtree(path)
    except RecursionError:
        # A block nested folders thousands deep: the iterative coreutils tools cope.
        import subprocess

        subprocess.run(["chmod", "-R", "u+rwx", "--", str(path)], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", "--", str(path)], check=True, capture_output=True)
