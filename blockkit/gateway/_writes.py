"""Writing objects into the output folder: temp file beside the target, then an atomic rename."""

from __future__ import annotations

import os
import secrets
import stat
import threading
from dataclasses import dataclass
from typing import Callable

from blockkit.gateway._beneath import NEW_FILE_FLAGS, open_folder
from blockkit.gateway._body import Body
from blockkit.gateway._buckets import INTERNAL_PREFIX, Bucket
from blockkit.gateway._errors import S3Error, invalid_argument
from blockkit.gateway._metadata import ObjectMeta

CHUNK = 1024 * 1024
# Conditional writes (If-Match / If-None-Match) check the target and rename under this lock,
# so two conditional writers of one key cannot both succeed.
COMMIT_LOCK = threading.Lock()


@dataclass
class Target:
    """Where a key is written: its folder, open beneath the bucket folder, and the file name in it."""

    key: str
    folder: int
    name: str

    def close(self) -> None:
        """Close the folder."""
        if self.folder >= 0:
            os.close(self.folder)
            self.folder = -1

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def names_a_folder(key: str) -> S3Error:
    """400 InvalidArgument: a key that is a folder in the output cannot also be an object."""
    return invalid_argument(f"key {key!r} names a folder in the output; it cannot also be an object")


def prepare_target(bucket: Bucket, key: str) -> Target:
    """The folder (created inside the bucket) and file name a key will be written to."""
    *folders, name = bucket.check_key(key)
    try:
        fd = open_folder(bucket.root, folders, create=True)
    except (FileExistsError, NotADirectoryError):
        raise invalid_argument(f"a parent of key {key!r} is an object; it cannot also be a folder") from None
    target = Target(key, fd, name)
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return target
    except BaseException:
        target.close()
        raise
    if stat.S_ISDIR(st.st_mode):
        target.close()
        raise names_a_folder(key)
    return target


class AtomicFile:
    """A temp file in the target's folder that becomes the target on commit and vanishes otherwise."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.tmp = f"{INTERNAL_PREFIX}tmp-{secrets.token_hex(8)}"
        self.fd = os.open(self.tmp, NEW_FILE_FLAGS, 0o644, dir_fd=target.folder)
        self._open = True
        self._exists = True

    def write(self, data: memoryview) -> None:
        """Append bytes (all of them)."""
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def commit(
        self,
        bucket: Bucket | None = None,
        key: str = "",
        meta: ObjectMeta | None = None,
        precheck: Callable[[], None] | None = None,
    ) -> os.stat_result:
        """Close and rename over the target (with its metadata); returns the stat of the new object.

        Args:
            bucket: the bucket whose metadata store gets `meta` (None: no metadata).
            key: the object's key (for metadata kept beside the file).
            meta: the object's metadata, attached to the file (or kept beside it where the file system
                has no extended attributes).
            precheck: the conditions of a conditional write, run under COMMIT_LOCK right before the
                rename; it may raise to refuse the write.
        """
        sidecar = False
        if bucket is not None and meta is not None:
            sidecar = not bucket.meta.attach(self.fd, meta)
        st = os.fstat(self.fd)
        os.close(self.fd)
        self._open = False
        if precheck is not None:
            with COMMIT_LOCK:
                precheck()
                self._rename()
        else:
            self._rename()
        if sidecar and bucket is not None and meta is not None:
            bucket.meta.write_sidecar(key, meta)
        return st

    def _rename(self) -> None:
        folder = self.target.folder
        try:
            os.replace(self.tmp, self.target.name, src_dir_fd=folder, dst_dir_fd=folder)
        except IsADirectoryError:
            # a folder of that name appeared while the body arrived (someone wrote `key/...`)
            raise names_a_folder(self.target.key) from None
        self._exists = False

    def abort(self) -> None:
        """Close and delete the temp file."""
        if self._open:
            os.close(self.fd)
            self._open = False
        if self._exists:
            try:
                os.unlink(self.tmp, dir_fd=self.target.folder)
            except FileNotFoundError:
                pass
            self._exists = False

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def pump(body: Body, sink: Callable[[memoryview], None], observe: Callable[[memoryview], None]) -> int:
    """Copy a body to a sink in fixed-size pieces, showing each to `observe`; returns the byte count."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        # Fill most of the buffer before writing: fewer syscalls and hash calls per byte.
        n = 0
        while n < CHUNK:
            k = body.readinto(view[n:])
            if not k:
                break
            n += k
        if not n:
            return total
        piece = view[:n]
        observe(piece)
        sink(piece)
        total += n


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int, observe: Callable[[memoryview], None] | None) -> None:
    """Copy `length` bytes from src at offset to the end of dst, in constant memory.

    Args:
        src_fd: the file descriptor read from.
        dst_fd: the file descriptor appended to.
        offset: where in src to start.
        length: how many bytes.
        observe: called with each chunk (hashing as the bytes pass), or None.
    """
    if observe is None and hasattr(os, "copy_file_range"):
        left, pos = length, offset
        try:
            while left:
                n = os.copy_file_range(src_fd, dst_fd, left, pos)
                if n == 0:
                    raise S3Error(500, "InternalError", "source changed while copying")
                left -= n
                pos += n
            return
        except OSError:
            length, offset = left, pos  # fall back to read/write for what is left
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left, pos = length, offset
    while left:
        n = os.preadv(src_fd, [view[: min(CHUNK, left)]], pos)
        if n == 0:
            raise S3Error(500, "InternalError", "source changed while copying")
        piece = view[:n]
        if observe is not None:
            observe(piece)
        while piece:
            w = os.write(dst_fd, piece)
            piece = piece[w:]
        left -= n
        pos += n
