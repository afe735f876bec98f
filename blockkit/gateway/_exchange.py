"""The gateway's request plumbing: shared state, the access log, reading bodies and sending answers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TextIO

from blockkit.gateway import _s3xml as s3xml
from blockkit.gateway._body import AwsChunkedBody, Body, Checksums, HttpChunkedBody, LengthBody
from blockkit.gateway._buckets import Bucket
from blockkit.gateway._errors import S3Error, access_denied, no_such_bucket
from blockkit.gateway._etags import ETagCache
from blockkit.gateway._multipart import MultipartStore
from blockkit.gateway._sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    SignatureContext,
    Verifier,
)


MAX_XML_BODY = 4 * 1024 * 1024


DRAIN_LIMIT = 1024 * 1024


DIGITS = re.compile(r"[0-9]{1,19}")


#: What the access log holds at most: a block making requests without end (or with 64 KiB
#: paths) cannot fill the disk, or the Docker daemon's copy of a sidecar's stderr, with it.
ACCESS_LOG_LIMIT = 64 << 20

#: Internal errors whose traceback goes to stderr (the gateway's log); later ones are only
#: counted: a block that found a way to make the gateway fail must not fill the disk with it.
MAX_PRINTED_TRACEBACKS = 20

#: A text field (path, range, ...) longer than this is cut in its record
#: (`"<field>_cut": <characters left out>`).
MAX_LOGGED_PATH = 1024


class AccessLog:
    """One JSON line per request, appended to a file, up to `limit` bytes.

    The record that would pass the limit is replaced by one saying the limit was reached;
    later requests are only counted, and `close()` adds a record with their number. (A
    sidecar killed with its step never closes: the first of those records is already there.)
    What a file already holds counts: the gateways of a scattered step's features append to
    one log. A log that cannot be written (a full disk) stops being written; requests go on.
    """

    def __init__(self, stream: TextIO, limit: int = ACCESS_LOG_LIMIT) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._room = limit
        self.limit = limit
        self.left_out = 0
        self._full = False
        try:
            # A file (not a pipe, as a sidecar's stderr): its size counts, also as others append to it.
            info = os.fstat(stream.fileno())
            self._fd: int | None = stream.fileno() if stat.S_ISREG(info.st_mode) else None
        except (OSError, ValueError, AttributeError):
            self._fd = None

    def write(self, record: dict[str, object]) -> None:
        """Append one record (its text fields cut to MAX_LOGGED_PATH characters)."""
        for key, value in list(record.items()):
            if isinstance(value, str) and len(value) > MAX_LOGGED_PATH:
                record = {**record, key: value[:MAX_LOGGED_PATH], f"{key}_cut": len(value) - MAX_LOGGED_PATH}
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._full:
                self.left_out += 1
                return
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    self._room = min(self._room, self.limit - os.fstat(self._fd).st_size)
            if len(line) > self._room:
                self._full = True
                self.left_out += 1
                line = json.dumps({"time": record.get("time"), "note": f"access log limit of {self.limit} bytes "
                                   "reached: later requests are counted, not logged"}, separators=(",", ":")) + "\n"
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):
                self._full = True  # a full disk, or a closed stream: the requests still get answers
            self._room -= len(line)

    def close(self) -> None:
        """Add the number of requests left out, if any (the stream is the caller's to close)."""
        with self._lock:
            if self.left_out:
                with contextlib.suppress(OSError, ValueError):
                    self._stream.write(json.dumps({"note": "requests left out of this log", "left_out": self.left_out},
                                                  separators=(",", ":")) + "\n")
                    self._stream.flush()
            self.left_out = 0


@dataclass
class Counters:
    """Bytes and requests served so far (tests and benchmarks read these)."""

    requests: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, out: int, inp: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes_out += out
            self.bytes_in += inp


@dataclass
class GatewayState:
    """Everything the handler threads share."""

    buckets: dict[str, Bucket]
    output: Bucket | None
    multipart: MultipartStore | None
    verifier: Verifier | None
    region: str
    etags: ETagCache
    access_log: AccessLog | None
    counters: Counters
    hash_pool: ThreadPoolExecutor
    #: Seconds a connection may send or take nothing before it is closed.
    idle_timeout: float = 300.0
    #: Requests answered 500 so far: only the first MAX_PRINTED_TRACEBACKS print their traceback.
    internal_errors: int = 0


class Exchange(BaseHTTPRequestHandler):
    """One request and its response: the body read (framing, digests), the answer sent (status, headers, XML).

    The per-request fields are set by the handler's dispatch before any operation runs.
    """

    _method: str
    _request_id: str
    _status: int
    _bytes_out: int
    _bytes_in: int
    _body_read: bool
    _continue_sent: bool
    _expect_continue: bool
    _error_code: str
    _authenticated: bool
    _content_length: int | None
    _headers: dict[str, str]

    @property
    def state(self) -> GatewayState:
        return self.server.state  # type: ignore[attr-defined]

    def _send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"", length: int | None = None) -> None:
        self._finish_unread_body()
        self._status = status
        self.send_response(status)
        self.send_header("x-amz-request-id", self._request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self._method != "HEAD":
            self.wfile.write(body)
            self._bytes_out += len(body)

    def _send_xml(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"Content-Type": "application/xml", **(headers or {})}, body)

    def _send_error(self, err: S3Error, resource: str) -> None:
        self._error_code = err.code
        if self._status:  # headers already sent: all we can do is drop the connection
            self.close_connection = True
            return
        body = b"" if self._method == "HEAD" or err.status == 304 else s3xml.error_document(err, resource, self._request_id)
        headers = {"Content-Type": "application/xml"} if body else {}
        headers.update(err.headers)
        self._send(err.status, headers, body)

    def _finish_unread_body(self) -> None:
        # A response sent before the request body was read. An unauthenticated request's body is
        # never received: the connection is closed after the answer. An authenticated small body
        # is drained so the connection stays usable; anything bigger closes it too.
        if self._body_read:
            return
        self._body_read = True
        chunked = "transfer-encoding" in self._headers
        length = self._content_length or 0
        if not chunked and length == 0:
            return
        if not self._authenticated or chunked or length > DRAIN_LIMIT or (self._expect_continue and not self._continue_sent):
            self.close_connection = True
            return
        try:
            self.rfile.read(length)
        except OSError:
            self.close_connection = True

    def _body(self, ctx: SignatureContext | None) -> tuple[Body, int | None]:
        """The request body with its framing removed, and its declared decoded length."""
        if not self._authenticated:  # defensive: routing happens only after authentication
            raise access_denied()
        h = self._headers
        if "transfer-encoding" not in h and self._content_length is None:
            raise S3Error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        if self._expect_continue and not self._continue_sent:
            self.send_response_only(100)
            self.end_headers()
            self._continue_sent = True
        self._body_read = True
        if "transfer-encoding" in h:
            raw: Body = HttpChunkedBody(self.rfile)  # type: ignore[arg-type]
            declared = None
        else:
            declared = self._content_length
            assert declared is not None
            raw = LengthBody(self.rfile, declared)  # type: ignore[arg-type]
        sha = h.get("x-amz-content-sha256", "")
        # aws-chunked framing: a STREAMING-* payload hash, or aws-chunked with its decoded length.
        # (boto3 can send "Content-Encoding: gzip, aws-chunked" over a plain body: that is not framing.)
        if sha.startswith("STREAMING-") or ("aws-chunked" in h.get("content-encoding", "").lower() and "x-amz-decoded-content-length" in h):
            signed = sha in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
            decoded = h.get("x-amz-decoded-content-length")
            declared = int(decoded) if decoded and DIGITS.fullmatch(decoded) else None
            return AwsChunkedBody(raw, ctx, signed), declared
        return raw, declared

    def _checksums(self) -> Checksums:
        h = self._headers
        wanted: dict[str, str | None] = {
            k: v for k, v in h.items() if k.startswith("x-amz-checksum-") and k not in ("x-amz-checksum-algorithm", "x-amz-checksum-type")
        }
        for name in h.get("x-amz-trailer", "").split(","):
            name = name.strip().lower()
            if name.startswith("x-amz-checksum-"):
                wanted.setdefault(name, None)
        sha = h.get("x-amz-content-sha256", "")
        # The payload hash is part of the signature, so it is checked when auth is on.
        verify_sha = self.state.verifier is not None and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
        return Checksums(wanted, sha if verify_sha else None)

    def _read_small_body(self, ctx: SignatureContext | None, object_checksums: bool = False) -> bytes:
        """A small request body (XML), its digests verified.

        object_checksums: the x-amz-checksum-* headers describe the object, not this body
        (CompleteMultipartUpload); they are then checked by the caller.
        """
        body, _ = self._body(ctx)
        out = bytearray()
        buf = bytearray(65536)
        view = memoryview(buf)
        checks = self._checksums()
        if object_checksums:
            checks = Checksums({}, checks._sha256_hex)
        while True:
            n = body.readinto(view)
            if not n:
                break
            checks.update(view[:n])
            out += view[:n]
            self._bytes_in += n
            if len(out) > MAX_XML_BODY:
                self.close_connection = True
                raise S3Error(400, "MaxMessageLengthExceeded", "Your request was too big.")
        checks.verify(self._headers.get("content-md5"), getattr(body, "trailers", {}))
        return bytes(out)

    def _bucket(self, name: str) -> Bucket:
        bucket = self.state.buckets.get(name)
        if bucket is None:
            raise no_such_bucket(name)
        return bucket
