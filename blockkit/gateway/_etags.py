"""MD5 ETags, cached by file identity so big inputs are hashed once per gateway."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

CHUNK = 1024 * 1024
EMPTY_MD5 = hashlib.md5(b"").hexdigest()

# (device, inode, size, mtime_ns): a rewrite or touch of the file changes the key.
FileIdentity = tuple[int, int, int, int]


def identity(st: os.stat_result) -> FileIdentity:
    """The cache key of a file from its stat result."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def multipart_etag(part_md5s: list[bytes]) -> str:
    """S3's multipart ETag: md5 of the concatenated binary part MD5s, then `-N`."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


class ETagCache:
    """Thread-safe LRU map from file identity to ETag (plain MD5 or multipart form)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._entries: OrderedDict[FileIdentity, str] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, key: FileIdentity) -> str | None:
        """The cached ETag for a file identity, if any."""
        with self._lock:
            etag = self._entries.get(key)
            if etag is not None:
                self._entries.move_to_end(key)
            return etag

    def put(self, key: FileIdentity, etag: str) -> None:
        """Remember the ETag of a file identity."""
        with self._lock:
            self._entries[key] = etag
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def etag_of(self, fd: int, st: os.stat_result) -> str:
        """The ETag of an open file (as stat'ed): from the cache, else its MD5 computed in chunks."""
        key = identity(st)
        cached = self.get(key)
        if cached is not None:
            return cached
        if st.st_size == 0:
            return EMPTY_MD5
        digest = hashlib.md5()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pos = 0
        while True:
            n = os.preadv(fd, [buf], pos)
            if not n:
                break
            digest.update(view[:n])
            pos += n
        etag = digest.hexdigest()
        # Only cache if the file did not change while we read it.
        if identity(os.fstat(fd)) == key:
            self.put(key, etag)
        return etag
