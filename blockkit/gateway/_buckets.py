"""Buckets over folders: key → path resolution that never leaves the folder, and sorted key walks."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_to_bytes

from blockkit.gateway._beneath import open_file, open_folder
from blockkit.gateway._errors import GatewayConfigError, S3Error, access_denied, invalid_argument, no_such_key
from blockkit.gateway._metadata import MetaStore

OUTPUT_BUCKET = "out"
# Names the gateway itself writes inside the output folder (temp files, multipart parts).
INTERNAL_PREFIX = ".blockkit-"
STAGING_DIR = ".blockkit-gateway"

MAX_KEY_BYTES = 1024


def key_too_long(message: str) -> S3Error:
    """400 KeyTooLongError."""
    return S3Error(400, "KeyTooLongError", message)


def decode_key(raw: str) -> str:
    """Percent-decode a key from a request line or header, refusing invalid UTF-8 (keys are bytes-exact).

    http.server hands us the request as latin-1 text, so the original bytes are recovered first;
    `x%ff` and `x%fe` are then refused with 400 InvalidURI instead of both becoming `x\ufffd`.
    """
    if "%" not in raw and raw.isascii():
        return raw
    try:
        return unquote_to_bytes(raw.encode("latin-1", "surrogateescape")).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise S3Error(400, "InvalidURI", "Couldn't parse the specified URI: a key or bucket name is not valid UTF-8.") from None


# What botocore accepts as a bucket name; virtual-host addressing additionally needs DNS-safe names.
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")


@dataclass
class ObjectFile:
    """A key that resolved to a regular file, open for reading (close it, or use it as a context manager)."""

    key: str
    fd: int
    st: os.stat_result

    def close(self) -> None:
        """Close the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "ObjectFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Bucket:
    """One folder served as a bucket; only the output bucket is writable."""

    name: str
    root: Path
    writable: bool = False
    meta: MetaStore = field(init=False, repr=False)
    name_max: int = field(init=False, repr=False, default=255)

    def __post_init__(self) -> None:
        if not _BUCKET_NAME.match(self.name):
            raise GatewayConfigError(
                f"bucket name {self.name!r} is not valid: use letters, digits, '.', '-' or '_' (at most 255)"
            )
        self.root = Path(os.path.realpath(self.root))
        try:
            self.name_max = int(os.pathconf(self.root, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):
            self.name_max = 255
        self.meta = MetaStore(self.root)

    # -- keys -------------------------------------------------------------
    def check_key(self, key: str) -> list[str]:
        """The path segments of a key, refusing keys that could leave the folder."""
        if not key:
            raise invalid_argument("an object key must not be empty")
        if "\x00" in key:
            raise invalid_argument("object keys must not contain NUL")
        if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
            raise key_too_long(f"Your key is too long: S3 keys are at most {MAX_KEY_BYTES} bytes of UTF-8.")
        if key.startswith("/") or key.startswith("\\"):
            raise access_denied("absolute keys are refused: they would leave the bucket folder")
        parts = key.split("/")
        if any(p == ".." for p in parts):
            raise access_denied("keys with '..' segments are refused: they would leave the bucket folder")
        # A trailing "/" is a folder marker; any other empty or "." segment has no file equivalent.
        inner = parts[:-1] if parts[-1] == "" else parts
        if any(p in ("", ".") for p in inner):
            raise invalid_argument(f"key {key!r} has an empty or '.' segment and cannot be stored as a file")
        if inner and inner[0].startswith(INTERNAL_PREFIX):
            raise access_denied("keys under .blockkit- are reserved for the gateway")
        if any(p.startswith(INTERNAL_PREFIX) for p in inner):
            raise access_denied("names starting with .blockkit- are reserved for the gateway")
        for p in inner:
            if len(p.encode("utf-8", "surrogateescape")) > self.name_max:
                raise key_too_long(
                    f"a '/'-separated part of the key is {len(p.encode('utf-8', 'surrogateescape'))} bytes; "
                    f"the folder's file system allows at most {self.name_max} bytes per file or folder name"
                )
        return inner

    def open_object(self, key: str) -> ObjectFile:
        """Open a key's regular file beneath the folder, or raise NoSuchKey (AccessDenied for a link out of it)."""
        parts = self.check_key(key)
        if key.endswith("/"):
            raise no_such_key(key)
        try:
            fd, st = open_file(self.root, parts)
        except (FileNotFoundError, NotADirectoryError):
            raise no_such_key(key) from None
        return ObjectFile(key, fd, st)

    # -- listing ----------------------------------------------------------
    def walk(self, prefix: str = "", after: str = "") -> "KeyWalk":
        """All keys ≥ prefix and > after, in S3 (code point) order."""
        return KeyWalk(self, prefix, after)


class KeyWalk:
    """A depth-first walk yielding (key, stat) in lexicographic key order.

    Directory entries are sorted by `name + "/"` so that `a/b` comes after
    `a-b`, exactly like S3 sorts flat keys. `skip(prefix)` prunes the rest of
    a subtree once the lister has rolled it into a common prefix.

    Folders are opened by descriptor, each inside the one before; symlinks are resolved beneath
    the bucket folder (one leading out of it is skipped), and a folder already open further up
    (a cycle such as `latest -> .`) is not entered again. A key goes through at most one
    symlinked folder: links inside a linked folder are not listed, so links that never loop
    (each folder linking the next one twice) cannot multiply the listing beyond one copy of a
    folder per link. A folder that cannot be read is skipped.
    """

    def __init__(self, bucket: Bucket, prefix: str, after: str) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.after = after
        self._skip: str | None = None

    def skip(self, prefix: str) -> None:
        """Do not yield any more keys starting with prefix."""
        self._skip = prefix

    def __iter__(self) -> Iterator[tuple[str, os.stat_result]]:
        try:
            fd = open_folder(self.bucket.root, [])
        except OSError:
            return iter(())
        return self._folder(fd, [], set(), linked=False)

    def _wanted_dir(self, dir_key: str) -> bool:
        # dir_key ends with "/"; every key inside starts with it.
        if not (dir_key.startswith(self.prefix) or self.prefix.startswith(dir_key)):
            return False
        if self.after and dir_key <= self.after and not self.after.startswith(dir_key):
            return False
        return True

    def _folder(self, fd: int, rel: list[str], above: set[tuple[int, int]],
                linked: bool) -> Iterator[tuple[str, os.stat_result]]:
        """Walk the open folder fd (key parts `rel`) and close it; `above` holds the folders it is inside,
        `linked` says whether a symlinked folder is on the way."""
        try:
            st = os.fstat(fd)
            here = (st.st_dev, st.st_ino)
            if here in above or len(rel) > 64:
                return
            yield from self._entries(fd, rel, above | {here}, linked)
        finally:
            os.close(fd)

    def _entries(self, fd: int, rel: list[str], above: set[tuple[int, int]],
                 linked: bool) -> Iterator[tuple[str, os.stat_result]]:
        entries: list[tuple[str, str, os.stat_result | None, bool]] = []  # sort name, name, a file's stat, a link
        try:
            with os.scandir(fd) as it:
                for e in it:
                    if e.name.startswith(INTERNAL_PREFIX):
                        continue
                    try:
                        link = e.is_symlink()
                        if link:
                            kind = self._link_kind(rel + [e.name])
                        elif e.is_dir(follow_symlinks=False):
                            kind = "/"
                        else:
                            kind = e.stat(follow_symlinks=False)
                    except (OSError, S3Error):
                        continue
                    if kind is None:
                        continue
                    if kind == "/":
                        if not (link and linked):  # at most one symlinked folder on a key's way
                            entries.append((e.name + "/", e.name, None, link))
                    elif isinstance(kind, os.stat_result) and stat.S_ISREG(kind.st_mode):
                        entries.append((e.name, e.name, kind, link))
        except OSError:
            return
        entries.sort(key=lambda t: t[0])
        prefix = "".join(p + "/" for p in rel)
        for sort_name, name, st, link in entries:
            key = prefix + sort_name
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                continue  # names that are not UTF-8 cannot be S3 keys
            if self._skip is not None and key.startswith(self._skip):
                continue
            if st is None:
                if not self._wanted_dir(key):
                    continue
                try:
                    child = open_folder(self.bucket.root, rel + [name])
                except (OSError, S3Error):
                    continue
                yield from self._folder(child, rel + [name], above, linked or link)
            else:
                if not key.startswith(self.prefix) or (self.after and key <= self.after):
                    continue
                yield key, st

    def _link_kind(self, parts: list[str]) -> str | os.stat_result | None:
        """What a symlink beneath the bucket folder names: "/" for a folder, a file's stat, None for neither."""
        try:
            fd = open_folder(self.bucket.root, parts)
        except NotADirectoryError:
            pass
        else:
            os.close(fd)
            return "/"
        try:
            fd, st = open_file(self.bucket.root, parts)
        except FileNotFoundError:
            return None
        os.close(fd)
        return st


def parse_inputs(values: list[str]) -> dict[str, Path]:
    """Turn `NAME=DIR` arguments (`--input`) into a bucket → folder map."""
    inputs: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise GatewayConfigError(f"--input {value!r}: expected NAME=DIR")
        if name in inputs:
            raise GatewayConfigError(f"--input {name!r} is given twice")
        inputs[name] = Path(folder)
    return inputs
