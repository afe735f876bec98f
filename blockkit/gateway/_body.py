"""Request bodies read in fixed-size pieces: Content-Length, HTTP chunked and aws-chunked framing."""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from typing import BinaryIO, Protocol

from blockkit.gateway._errors import S3Error
from blockkit.gateway._sigv4 import SignatureContext, chunk_signature, trailer_signature

MAX_LINE = 8192
# RFC 9112: chunk-size = 1*HEXDIG (no sign, "0x", "_" or spaces, which int(..., 16) would take).
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# The whole trailer section of an aws-chunked body (S3 sends one checksum and a signature).
MAX_TRAILERS = 16 * 1024
CHECKSUM_PREFIX = "x-amz-checksum-"
# Algorithms S3 knows; the header names are x-amz-checksum-<name>.
CHECKSUM_ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


def _crc_table(poly: int) -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


class _ReflectedCrc:
    """CRC32C / CRC64NVME in pure Python (no standard-library implementation; about 5-10 MB/s)."""

    def __init__(self, poly: int, bits: int) -> None:
        self._table = _TABLES.setdefault(poly, _crc_table(poly))
        self._mask = (1 << bits) - 1
        self._bytes = bits // 8
        self._crc = self._mask

    def update(self, data: memoryview | bytes) -> None:
        crc, table = self._crc, self._table
        for b in bytes(data):
            crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
        self._crc = crc

    def digest(self) -> bytes:
        return (self._crc ^ self._mask).to_bytes(self._bytes, "big")


_TABLES: dict[int, list[int]] = {}


class _Crc32:
    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: memoryview | bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


def new_checksum(algorithm: str) -> "_Crc32 | _ReflectedCrc | hashlib._Hash":
    """A fresh digest object for an S3 checksum algorithm name (crc32, crc32c, crc64nvme, sha1, sha256)."""
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "crc32c":
        return _ReflectedCrc(0x82F63B78, 32)
    if algorithm == "crc64nvme":
        return _ReflectedCrc(0x9A6C9329AC4BC9B5, 64)
    if algorithm == "sha1":
        return hashlib.sha1()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise S3Error(400, "InvalidRequest", f"Value for x-amz-checksum-algorithm header is invalid: {algorithm!r}.")


# Reflected polynomials and widths of the CRCs S3 can combine into a whole-object checksum.
CRC_PARAMS = {"crc32": (0xEDB88320, 32), "crc32c": (0x82F63B78, 32), "crc64nvme": (0x9A6C9329AC4BC9B5, 64)}


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc_combine(algorithm: str, crc1: bytes, crc2: bytes, len2: int) -> bytes:
    """The CRC of A+B from the CRCs of A and B and the length of B (zlib's crc32_combine, any width).

    Lets a FULL_OBJECT multipart checksum be computed from the parts' checksums without re-reading
    the object.

    Args:
        algorithm: the CRC's name (`crc32`, `crc32c`, `crc64nvme`).
        crc1: the CRC of A, big-endian bytes.
        crc2: the CRC of B, big-endian bytes.
        len2: the length of B in bytes.
    """
    poly, bits = CRC_PARAMS[algorithm]
    c1, c2 = int.from_bytes(crc1, "big"), int.from_bytes(crc2, "big")
    if len2 == 0:
        return crc1
    odd = [poly] + [1 << (n - 1) for n in range(1, bits)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            c1 = _gf2_times(even, c1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            c1 = _gf2_times(odd, c1)
        len2 >>= 1
        if not len2:
            break
    return (c1 ^ c2).to_bytes(bits // 8, "big")


def check_content_md5(value: str | None) -> bytes | None:
    """The 16 bytes a Content-MD5 header announces; InvalidDigest when it is not base64 of 16 bytes."""
    if value is None:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise S3Error(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
    return raw


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
            if not _CHUNK_SIZE.fullmatch(size_line):
                raise S3Error(400, "IncompleteBody", "malformed chunked encoding")
            self._left = int(size_line, 16)
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
            if not _CHUNK_SIZE.fullmatch(size_part.strip()):
                raise S3Error(400, "IncompleteBody", "malformed aws-chunked encoding")
            self._left = int(size_part.strip(), 16)
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
        raw: list[bytes] = []
        total = 0
        while True:
            line = self._src.readline()
            if not line:
                break
            total += len(line) + 2
            if total > MAX_TRAILERS:
                raise S3Error(400, "InvalidRequest", f"The trailers of the aws-chunked body exceed {MAX_TRAILERS} bytes.")
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "x-amz-trailer-signature":
                if self._verify and self._ctx is not None:
                    expected = trailer_signature(self._ctx, self._previous, b"".join(raw))
                    if expected != value.strip().lower():
                        raise _chunk_mismatch()
                continue
            raw.append(f"{name}:{value.strip()}\n".encode("latin-1"))
            self.trailers[name] = value.strip()


def _chunk_mismatch() -> S3Error:
    return S3Error(403, "SignatureDoesNotMatch", "The chunk signature of the aws-chunked body does not match.")


class Checksums:
    """Digests computed while a body streams through: MD5 always, others when the client sent one."""

    def __init__(self, wanted: dict[str, str | None], sha256_hex: str | None) -> None:
        # wanted: x-amz-checksum-<alg> name -> expected base64 (None when it arrives in a trailer)
        self.md5 = hashlib.md5()
        self.wanted = {k: v for k, v in wanted.items() if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS}
        self._sha256_hex = sha256_hex
        self._hashes = {name: new_checksum(name[len(CHECKSUM_PREFIX):]) for name in self.wanted}
        self._payload = hashlib.sha256() if sha256_hex else None

    def update(self, data: memoryview) -> None:
        """Feed the next piece of the body."""
        self.md5.update(data)
        for h in self._hashes.values():
            h.update(data)
        if self._payload is not None:
            self._payload.update(data)

    def verify(self, content_md5: str | None, trailers: dict[str, str]) -> dict[str, str]:
        """Raise BadDigest / XAmzContentSHA256Mismatch when a digest the client sent differs.

        Returns the verified checksums (header name -> base64) to echo and store.
        """
        expected_md5 = check_content_md5(content_md5)
        if expected_md5 is not None and expected_md5 != self.md5.digest():
            raise S3Error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
        if self._payload is not None and self._payload.hexdigest() != self._sha256_hex:
            raise S3Error(
                400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed."
            )
        verified: dict[str, str] = {}
        for name, expected_b64 in self.wanted.items():
            expected_b64 = expected_b64 if expected_b64 is not None else trailers.get(name)
            if expected_b64 is None:
                continue
            actual = base64.b64encode(self._hashes[name].digest()).decode()
            if actual != expected_b64.strip():
                raise S3Error(
                    400,
                    "BadDigest",
                    f"The {name[len(CHECKSUM_PREFIX):].upper()} you specified did not match the calculated checksum.",
                )
            verified[name] = actual
        return verified
