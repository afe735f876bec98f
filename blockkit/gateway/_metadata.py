"""Object metadata kept with each object: an extended attribute, or a hidden sidecar file.

What is stored (one small JSON document per object):

- the standard headers a client set (`Content-Type`, `Content-Encoding`, `Cache-Control`,
  `Content-Disposition`, `Content-Language`, `Expires`) and every `x-amz-meta-*`;
- the ETag (so multipart ETags and big files' MD5s survive a gateway restart);
- the part sizes of a multipart object (for `GET ?partNumber=`);
- the checksums the client sent and the gateway verified (`x-amz-checksum-*`).

The document records the size and mtime of the file it describes. A file rewritten by
someone else (the block, a copy tool) no longer matches and its metadata is ignored, so a
stale Content-Type or ETag is never served.

Where it lives: the extended attribute `user.blockkit.s3` when the folder's filesystem has
user xattrs (ext4, xfs, btrfs, tmpfs ≥ 6.6, overlayfs), written on the temp file *before*
the rename so object and metadata appear together. Otherwise a sidecar file
`<bucket>/.blockkit-meta/<sha256 of key>.json` (names under `.blockkit-` are never listed
nor addressable as keys).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from blockkit.gateway._beneath import NEW_FILE_FLAGS, own_folder, read_small
from blockkit.gateway._errors import S3Error

XATTR = "user.blockkit.s3"
SIDECAR_DIR = ".blockkit-meta"
# Standard headers stored as given (lower-case names) and returned on GET/HEAD.
STORED_HEADERS = ("content-type", "content-encoding", "cache-control", "content-disposition", "content-language", "expires")
USER_PREFIX = "x-amz-meta-"
# S3's limit on the user-defined metadata of one object (names + values, in bytes).
MAX_USER_METADATA = 2048
# All stored headers together (S3 limits a PUT's headers to 8 KB).
MAX_STORED_HEADERS = 8192
# Parsed documents cached by (device, inode, size, mtime, ctime): setting an xattr or writing
# the file changes ctime, so a cached answer (also "no metadata") is never stale.
CACHE_ENTRIES = 10_000
# A sidecar is read only if it is a regular file of at most this size (10,000 part sizes and
# part checksums fit); anything else under that name is ignored.
MAX_SIDECAR = 1024 * 1024
_NOT_SUPPORTED = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOSYS, errno.EACCES}


def _unfold(value: str) -> str:
    """Obsolete line folding (CRLF + whitespace inside a value) becomes one space, as RFC 9112 says,
    so a stored value can never start a new header line in a response."""
    if "\r" not in value and "\n" not in value:
        return value
    return re.sub(r"[\r\n]+[ \t]*", " ", value).replace("\x00", "")


def _raw(value: str) -> bytes:
    """Header values are kept as the client's bytes (UTF-8 where valid, else escaped)."""
    return value.encode("utf-8", "surrogateescape")


@dataclass
class ObjectMeta:
    """The metadata of one object."""

    headers: dict[str, str] = field(default_factory=dict)
    user: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    parts: list[int] | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    part_checksums: list[str] | None = None
    size: int = -1
    mtime_ns: int = -1
    _wire: dict[str, str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_request(cls, headers: Mapping[str, str]) -> "ObjectMeta":
        """The metadata a PUT, POST ?uploads or REPLACE-copy sets; raises MetadataTooLarge."""
        meta = cls()
        for name in STORED_HEADERS:
            value = headers.get(name)
            if value is None:
                continue
            value = _unfold(value)
            if name == "content-encoding":
                # aws-chunked is framing of this one request, not an encoding of the object
                value = ", ".join(t.strip() for t in value.split(",") if t.strip() and t.strip().lower() != "aws-chunked")
                if not value:
                    continue
            meta.headers[name] = value
        total = 0
        for name, value in headers.items():
            if name.startswith(USER_PREFIX) and len(name) > len(USER_PREFIX):
                short = name[len(USER_PREFIX):]
                meta.user[short] = _unfold(value)
                total += len(_raw(short)) + len(_raw(value))
        if total > MAX_USER_METADATA:
            raise S3Error(
                400,
                "MetadataTooLarge",
                f"Your metadata headers exceed the maximum allowed metadata size ({total} > {MAX_USER_METADATA} bytes).",
            )
        stored = total + sum(len(_raw(v)) for v in meta.headers.values())
        if stored > MAX_STORED_HEADERS:
            raise S3Error(
                400, "MetadataTooLarge", f"The stored headers of this object exceed {MAX_STORED_HEADERS} bytes ({stored})."
            )
        return meta

    def matches(self, st: os.stat_result) -> bool:
        """Whether this document describes the file as it is now."""
        return self.size == st.st_size and self.mtime_ns == st.st_mtime_ns

    def response_headers(self) -> dict[str, str]:
        """Stored headers and x-amz-meta-* as they go on a GET/HEAD response (computed once per document).

        Values are the client's bytes as latin-1 text, which is what http.server writes out.
        """
        if self._wire is None:
            out = {_title(k): _latin1(v) for k, v in self.headers.items()}
            for k, v in self.user.items():
                out[USER_PREFIX + k] = _latin1(v)
            self._wire = out
        return self._wire

    def dumps(self) -> bytes:
        doc: dict[str, object] = {"s": self.size, "m": self.mtime_ns}
        if self.headers:
            doc["h"] = self.headers
        if self.user:
            doc["u"] = self.user
        if self.etag:
            doc["e"] = self.etag
        if self.parts:
            doc["p"] = self.parts
        if self.checksums:
            doc["c"] = self.checksums
        if self.part_checksums:
            doc["pc"] = self.part_checksums
        return json.dumps(doc, separators=(",", ":")).encode("ascii")

    @classmethod
    def loads(cls, data: bytes) -> "ObjectMeta | None":
        try:
            doc = json.loads(data)
            return cls(
                headers={str(k): str(v) for k, v in doc.get("h", {}).items()},
                user={str(k): str(v) for k, v in doc.get("u", {}).items()},
                etag=doc.get("e"),
                parts=[int(p) for p in doc["p"]] if doc.get("p") else None,
                checksums={str(k): str(v) for k, v in doc.get("c", {}).items()},
                part_checksums=[str(c) for c in doc["pc"]] if doc.get("pc") else None,
                size=int(doc["s"]),
                mtime_ns=int(doc["m"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def _latin1(value: str) -> str:
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def _title(name: str) -> str:
    return "-".join(p.capitalize() for p in name.split("-"))


class MetaStore:
    """Reads and writes object metadata for one bucket folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sidecars = root / SIDECAR_DIR
        # Whether the filesystem has user xattrs is learnt from the first write or read that tries
        # (a probe at start-up could run before the folder is writable for us).
        self.xattrs = hasattr(os, "setxattr")
        # Sidecars are consulted only where they can exist: no xattrs, or a folder that has them.
        # (A real folder only: a symlink under that name is the block's, never followed.)
        try:
            self.use_sidecars = not self.xattrs or stat.S_ISDIR(os.lstat(self.sidecars).st_mode)
        except OSError:
            self.use_sidecars = not self.xattrs
        self._cache: OrderedDict[tuple[int, int, int, int, int], ObjectMeta | None] = OrderedDict()
        self._lock = threading.Lock()

    def _sidecar(self, key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest() + ".json"

    def _sidecar_folder(self, create: bool) -> int | None:
        """The sidecar folder, opened beneath the bucket folder and never through a link (None: none)."""
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return own_folder(root, SIDECAR_DIR, create)
        finally:
            os.close(root)

    def read(self, key: str, path: Path | int, st: os.stat_result) -> ObjectMeta | None:
        """The metadata of the file at path or open as fd (as stat'ed), or None when there is none or it is stale."""
        # Sidecars are found by key, not inode: only the xattr answers can be cached by identity.
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if not self.use_sidecars:
            with self._lock:
                if ident in self._cache:
                    self._cache.move_to_end(ident)
                    return self._cache[ident]
        meta = self._read(key, path, st)
        if not self.use_sidecars:
            with self._lock:
                self._cache[ident] = meta
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return meta

    def _read(self, key: str, path: Path | int, st: os.stat_result) -> ObjectMeta | None:
        data: bytes | None = None
        if self.xattrs:
            try:
                data = os.getxattr(path, XATTR)
            except OSError as exc:
                if exc.errno in _NOT_SUPPORTED:
                    self.xattrs = False
                    self.use_sidecars = True
        if data is None and self.use_sidecars:
            try:
                folder = self._sidecar_folder(create=False)
            except OSError:
                return None
            if folder is None:
                return None
            try:
                data = read_small(folder, self._sidecar(key), MAX_SIDECAR)
            finally:
                os.close(folder)
        if data is None:
            return None
        meta = ObjectMeta.loads(data)
        if meta is None or not meta.matches(st):
            return None
        return meta

    def attach(self, fd: int, meta: ObjectMeta) -> bool:
        """Store metadata on an open temp file before it is renamed into place; False: use a sidecar."""
        st = os.fstat(fd)
        meta.size, meta.mtime_ns = st.st_size, st.st_mtime_ns
        if not self.xattrs:
            return False
        try:
            os.setxattr(fd, XATTR, meta.dumps())
            return True
        except OSError as exc:
            if exc.errno in _NOT_SUPPORTED:
                self.xattrs = False  # from now on: sidecars
                self.use_sidecars = True
                return False
            if exc.errno in (errno.E2BIG, errno.ENOSPC):
                return False  # this document does not fit in an xattr here: a sidecar for this one
            raise

    def write_sidecar(self, key: str, meta: ObjectMeta) -> None:
        """Store metadata beside the bucket after the object was renamed into place."""
        folder = self._sidecar_folder(create=True)
        assert folder is not None
        self.use_sidecars = True
        try:
            tmp = f".tmp-{secrets.token_hex(8)}"
            fd = os.open(tmp, NEW_FILE_FLAGS, 0o644, dir_fd=folder)
            try:
                os.write(fd, meta.dumps())  # a few KB: one write
            finally:
                os.close(fd)
            os.replace(tmp, self._sidecar(key), src_dir_fd=folder, dst_dir_fd=folder)
        finally:
            os.close(folder)

    def forget(self, key: str) -> None:
        """Drop the sidecar of a deleted object (xattrs go with the file)."""
        if not self.use_sidecars:
            return
        folder = self._sidecar_folder(create=False)
        if folder is None:
            return
        try:
            os.unlink(self._sidecar(key), dir_fd=folder)
        except FileNotFoundError:
            pass
        finally:
            os.close(folder)
