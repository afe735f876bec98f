"""Request bodies read in fixed-size pieces: Content-Length, HTTP chunked and aws-chunked framing."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import BinaryIO, Protocol

from blockkit.gateway.errors import S3Error
from blockkit.gateway.sigv4 import SignatureContext, chunk_signature, trailer_signature

MAX_LINE = 8192


def _incomplete() -> S3Error:
    return S3Error(400, "IncompleteBody", "You did not provide the number of bytes specified by the Content-Length HTTP header")


class Body(Protocol):
    """A request body: readinto returns 0 at the end."""

    def readinto(self, view: memoryview) -> int: ...


class LengthBody:
    """Exactly `length` bytes of the connection."""

    def __init__(self, rfile: BinaryIO, length: int) -> None:
        self._rfile = rfile
        self.remaining = length

    def readinto(self, view: memoryview) -> int:
        if self.remaining <= 0:
            return 0
        n = self._rfile.readinto(view[: min(len(view), self.remaining)])  # type: ignore[attr-defined]
        if not n:
            raise _incomplete()
        self.remaining -= n
        return n


class _LineSource:
    """Adds line reading (with a small pushback buffer) on top of a Body."""

    def __init__(self, inner: Body) -> None:
        self._inner = inner
        self._pending = b""

    def readline(self) -> bytes:
        """One CRLF-terminated line without its terminator."""
        while True:
            idx = self._pending.find(b"\r\n")
            if idx >= 0:
                line, self._pending = self._pending[:idx], self._pending[idx + 2 :]
                return line
            if len(self._pending) > MAX_LINE:
                raise S3Error(400, "IncompleteBody", "chunk header line too long")
            buf = bytearray(256)
            n = self._inner.readinto(memoryview(buf))
            if not n:
                raise _incomplete()
            self._pending += bytes(buf[:n])

    def readinto(self, view: memoryview) -> int:
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        return self._inner.readinto(view)

    def read_exact(self, n: int) -> bytes:
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        while got < n:
            k = self.readinto(view[got:])
            if not k:
                raise _incomplete()
            got += k
        return bytes(out)


class HttpChunkedBody:
    """HTTP/1.1 `Transfer-Encoding: chunked` (trailers are read and dropped)."""

    def __init__(self, rfile: BinaryIO) -> None:
        self._src = _LineSource(_RawFile(rfile))
        self._left = 0
        self._done = False

    def readinto(self, view: memoryview) -> int:
        if self._done:
            return 0
        if self._left == 0:
            size_line = self._src.readline().split(b";", 1)[0].strip()
            try:
                self._left = int(size_line, 16)
            except ValueError:
                raise S3Error(400, "IncompleteBody", "malformed chunked encoding") from None
            if self._left == 0:
                while self._src.readline():
                    pass
                self._done = True
                return 0
        n = self._src.readinto(view[: min(len(view), self._left)])
        if not n:
            raise _incomplete()
        self._left -= n
        if self._left == 0 and self._src.read_exact(2) != b"\r\n":
            raise S3Error(400, "IncompleteBody", "malformed chunked encoding")
        return n


class _RawFile:
    """The connection itself, for framings that find their own end."""

    def __init__(self, rfile: BinaryIO) -> None:
        self._rfile = rfile

    def readinto(self, view: memoryview) -> int:
        # read1 returns what is buffered or one raw read, never blocking for more than needed
        data = self._rfile.read1(len(view))  # type: ignore[attr-defined]
        view[: len(data)] = data
        return len(data)


class AwsChunkedBody:
    """`Content-Encoding: aws-chunked`: signed (chained chunk signatures) or unsigned, with optional trailers."""

    def __init__(self, inner: Body, signature: SignatureContext | None, signed: bool) -> None:
        self._src = _LineSource(inner)
        self._ctx = signature
        self._verify = signed and signature is not None
        self._previous = signature.seed_signature if signature else ""
        self._left = 0
        self._chunk_sig = ""
        self._chunk_hash = hashlib.sha256() if self._verify else None
        self._done = False
        self.trailers: dict[str, str] = {}

    def readinto(self, view: memoryview) -> int:
        if self._done:
            return 0
        if self._left == 0:
            header = self._src.readline()
            size_part, _, ext = header.partition(b";")
            try:
                self._left = int(size_part.strip(), 16)
            except ValueError:
                raise S3Error(400, "IncompleteBody", "malformed aws-chunked encoding") from None
            self._chunk_sig = ext.partition(b"chunk-signature=")[2].strip().decode("ascii", "replace")
            if self._verify and not self._chunk_sig:
                raise _chunk_mismatch()
            if self._left == 0:
                self._finish_chunk()
                self._read_trailers()
                self._done = True
                return 0
        n = self._src.readinto(view[: min(len(view), self._left)])
        if not n:
            raise _incomplete()
        if self._chunk_hash is not None:
            self._chunk_hash.update(view[:n])
        self._left -= n
        if self._left == 0:
            if self._src.read_exact(2) != b"\r\n":
                raise S3Error(400, "IncompleteBody", "malformed aws-chunked encoding")
            self._finish_chunk()
        return n

    def _finish_chunk(self) -> None:
        if not self._verify or self._ctx is None or self._chunk_hash is None:
            return
        expected = chunk_signature(self._ctx, self._previous, self._chunk_hash.hexdigest())
        if expected != self._chunk_sig.lower():
            raise _chunk_mismatch()
        self._previous = expected
        self._chunk_hash = hashlib.sha256()

    def _read_trailers(self) -> None:
        raw = b""
        while True:
            line = self._src.readline()
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "x-amz-trailer-signature":
                if self._verify and self._ctx is not None:
                    expected = trailer_signature(self._ctx, self._previous, raw)
                    if expected != value.strip().lower():
                        raise _chunk_mismatch()
                continue
            raw += f"{name}:{value.strip()}\n".encode("latin-1")
            self.trailers[name] = value.strip()


def _chunk_mismatch() -> S3Error:
    return S3Error(403, "SignatureDoesNotMatch", "The chunk signature of the aws-chunked body does not match.")


class Checksums:
    """Digests computed while a body streams through: MD5 always, others when the client sent one."""

    def __init__(self, wanted: dict[str, str | None], sha256_hex: str | None) -> None:
        # wanted: x-amz-checksum-<alg> name -> expected base64 (None when it arrives in a trailer)
        self.md5 = hashlib.md5()
        self.wanted = dict(wanted)
        self._sha256_hex = sha256_hex
        self._crc32 = 0 if "x-amz-checksum-crc32" in wanted else None
        self._hashes: dict[str, "hashlib._Hash"] = {}
        for name in wanted:
            if name == "x-amz-checksum-sha1":
                self._hashes[name] = hashlib.sha1()
            elif name == "x-amz-checksum-sha256":
                self._hashes[name] = hashlib.sha256()
        self._payload = hashlib.sha256() if sha256_hex else None

    def update(self, data: memoryview) -> None:
        """Feed the next piece of the body."""
        self.md5.update(data)
        if self._crc32 is not None:
            self._crc32 = zlib.crc32(data, self._crc32)
        for h in self._hashes.values():
            h.update(data)
        if self._payload is not None:
            self._payload.update(data)

    def verify(self, content_md5: str | None, trailers: dict[str, str]) -> None:
        """Raise BadDigest / XAmzContentSHA256Mismatch when a digest the client sent differs."""
        if content_md5 is not None:
            try:
                expected = base64.b64decode(content_md5, validate=True)
            except ValueError:
                raise S3Error(400, "InvalidDigest", "The Content-MD5 you specified was invalid.") from None
            if expected != self.md5.digest():
                raise S3Error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
        if self._payload is not None and self._payload.hexdigest() != self._sha256_hex:
            raise S3Error(
                400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed."
            )
        for name, expected_b64 in self.wanted.items():
            expected_b64 = expected_b64 if expected_b64 is not None else trailers.get(name)
            if expected_b64 is None:
                continue
            if name == "x-amz-checksum-crc32" and self._crc32 is not None:
                actual = self._crc32.to_bytes(4, "big")
            elif name in self._hashes:
                actual = self._hashes[name].digest()
            else:
                continue  # crc32c / crc64nvme: no standard-library implementation, accepted unchecked
            if base64.b64encode(actual).decode() != expected_b64.strip():
                raise S3Error(400, "BadDigest", f"The {name[len('x-amz-checksum-'):].upper()} you specified did not match the calculated checksum.")
