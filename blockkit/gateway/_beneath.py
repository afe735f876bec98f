"""Files and folders beneath a bucket folder, reached by descriptor: never through a link that leaves it.

The block can change its output folder at any moment, also while a request is being served, so a
key is never checked once and then used as a path. Every component is opened relative to the
descriptor of the folder before it, with O_NOFOLLOW. A symlink met on the way is read (readlink)
and resolved the same way, from the folder that holds it; a `..` that would climb above the bucket
folder, or an absolute link to anywhere else, is AccessDenied. What was opened stays what was
checked: swapping a link afterwards changes nothing for the request (no check-then-use gap).

The gateway's own folders (`.blockkit-meta`, `.blockkit-gateway`) are never followed through a
link at all: `own_folder` replaces whatever else the block put under such a name.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from blockkit.gateway._errors import S3Error, access_denied

# As the kernel: at most 40 symlinks while resolving one key.
MAX_LINKS = 40
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a key must not wait for a writer.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def escaped() -> S3Error:
    """403 AccessDenied for a key that a symlink leads out of the bucket folder."""
    return access_denied("the key resolves outside the bucket folder (symlink)")


def link_loop() -> S3Error:
    """403 AccessDenied for a key that goes through more than MAX_LINKS symlinks (a loop)."""
    return access_denied("the key goes through too many symlinks (a loop)")


class _Walk:
    """Open folders from the bucket folder down; `..` closes the last one, never the bucket folder."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.stack = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        self.links = 0

    @property
    def top(self) -> int:
        return self.stack[-1]

    def close(self) -> None:
        while self.stack:
            os.close(self.stack.pop())

    def take(self) -> int:
        """The innermost open folder (now the caller's to close); the others are closed."""
        fd = self.stack.pop()
        self.close()
        return fd

    def _up(self) -> None:
        if len(self.stack) == 1:
            raise escaped()
        os.close(self.stack.pop())

    def link(self, name: str) -> list[str] | None:
        """The components the symlink `name` of the innermost folder points to (None: not a link).

        An absolute target inside the bucket folder restarts from it; anything else absolute is refused.
        """
        try:
            target = os.readlink(name, dir_fd=self.top)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return None
            raise
        self._budget()
        if target.startswith("/"):
            if target != self.root and not target.startswith(self.root + "/"):
                raise escaped()
            while len(self.stack) > 1:
                os.close(self.stack.pop())
            target = target[len(self.root):]
        return [p for p in target.split("/") if p not in ("", ".")]

    def descend(self, parts: list[str], create: bool) -> None:
        """Open the folders named by parts, each inside the one before (creating missing ones if asked)."""
        pending = list(reversed(parts))  # a stack: pop() gives the next component
        while pending:
            name = pending.pop()
            if name == "..":
                self._up()
                continue
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=self.top)
            except FileNotFoundError:
                if not create:
                    raise
                self._budget()  # a folder removed again and again by the block cannot keep us here
                try:
                    os.mkdir(name, 0o755, dir_fd=self.top)
                except FileExistsError:
                    pass
                pending.append(name)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                target = self.link(name)
                if target is None:
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder", name) from None
                pending.extend(reversed(target))
                continue
            self.stack.append(fd)

    def _budget(self) -> None:
        self.links += 1
        if self.links > MAX_LINKS:
            raise link_loop()

    def open_file(self, name: str, flags: int) -> int:
        """Open `name` of the innermost folder, following symlinks that stay inside the bucket folder."""
        while True:
            try:
                return os.open(name, flags, dir_fd=self.top)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
            target = self.link(name)
            if target is None:
                raise link_loop()  # a link that was replaced by a link again: treat as a loop
            if not target or target[-1] == "..":
                raise IsADirectoryError(errno.EISDIR, "a folder", name)
            *folders, name = target
            self.descend(folders, create=False)


def open_folder(root: Path, parts: list[str], create: bool = False) -> int:
    """A descriptor of the folder `parts` beneath root (symlinks followed only inside it).

    Raises FileNotFoundError / NotADirectoryError when it is missing or a file (with create=True,
    missing folders are made), and AccessDenied when a link leads out of root.
    """
    walk = _Walk(root)
    try:
        walk.descend(parts, create)
        return walk.take()
    finally:
        walk.close()


def open_file(root: Path, parts: list[str]) -> tuple[int, os.stat_result]:
    """A read descriptor and the stat of the regular file `parts` beneath root.

    Raises FileNotFoundError when there is no regular file there (a folder, a FIFO, a device
    count as none), and AccessDenied when a link leads out of root.
    """
    walk = _Walk(root)
    try:
        *folders, name = parts
        walk.descend(folders, create=False)
        fd = walk.open_file(name, FILE_FLAGS)
    except (NotADirectoryError, IsADirectoryError):
        raise FileNotFoundError(errno.ENOENT, "no such file", "/".join(parts)) from None
    finally:
        walk.close()
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular file", "/".join(parts))
    return fd, st


def own_folder(parent: int, name: str, create: bool = True) -> int | None:
    """A descriptor of the gateway's own folder `name` in `parent`, never reached through a link.

    Whatever else the block left under that name (a symlink, a file, a FIFO) is removed and a real
    folder made in its place; with create=False a missing or replaced folder is None.
    """
    for _ in range(8):
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if not create:
                return None
            try:
                os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                pass
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
    raise S3Error(409, "OperationAborted", f"the gateway's folder {name} keeps being replaced; try again")


def read_small(parent: int, name: str, limit: int) -> bytes | None:
    """The bytes of the regular file `name` in `parent` if it is at most `limit` bytes; else None.

    Never follows a link, never waits on a FIFO, never reads more than `limit` + 1 bytes.
    """
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            data = os.read(fd, limit + 1 - got)
            if not data:
                break
            chunks.append(data)
            got += len(data)
        return b"".join(chunks) if got <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)
