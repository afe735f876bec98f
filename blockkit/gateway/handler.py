"""The HTTP request handler: addressing, auth, routing and every S3 operation we serve."""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import re
import json
import mimetypes
import os
import secrets
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable, TextIO
from urllib.parse import quote

from blockkit.gateway import conditions, listing, s3xml
from blockkit.gateway.body import (
    CHECKSUM_ALGORITHMS,
    CHECKSUM_PREFIX,
    CRC_PARAMS,
    AwsChunkedBody,
    Body,
    Checksums,
    HttpChunkedBody,
    LengthBody,
    check_content_md5,
    new_checksum,
)
from blockkit.gateway.buckets import Bucket, ObjectFile, decode_key, key_too_long
from blockkit.gateway.errors import (
    S3Error,
    access_denied,
    invalid_argument,
    no_such_bucket,
    no_such_key,
    not_implemented,
)
from blockkit.gateway.etags import EMPTY_MD5, ETagCache, identity
from blockkit.gateway.metadata import ObjectMeta
from blockkit.gateway.multipart import MultipartStore, Upload
from blockkit.gateway.listing import OWNER
from blockkit.gateway.s3xml import el
from blockkit.gateway.sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    SignatureContext,
    Verifier,
)
from blockkit.gateway.writes import CHUNK, AtomicFile, copy_range, prepare_target, pump

MAX_XML_BODY = 4 * 1024 * 1024
DRAIN_LIMIT = 1024 * 1024
_DIGITS = re.compile(r"[0-9]{1,19}")
# S3 codes for the errors http.server raises itself while parsing a request.
_STDLIB_ERRORS = {
    400: ("BadRequest", "The request line or a header could not be parsed."),
    414: ("RequestURITooLong", "The request URI is too long."),
    431: ("RequestHeaderSectionTooLarge", "Your request header section exceeds the maximum allowed size."),
    501: ("NotImplemented", "A header or method you provided implies functionality that is not implemented."),
    505: ("HttpVersionNotSupported", "The HTTP version specified is not supported."),
}

# Bucket/object subresources we do not serve: answered with NotImplemented rather than misread as listings.
UNSUPPORTED = {
    "acl", "policy", "policyStatus", "tagging", "cors", "lifecycle", "website", "logging", "notification",
    "replication", "encryption", "object-lock", "legal-hold", "retention", "requestPayment", "accelerate",
    "analytics", "inventory", "metrics", "intelligent-tiering", "ownershipControls", "publicAccessBlock",
    "versions", "torrent", "restore", "select",
}
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


class AccessLog:
    """One JSON line per request, appended to a file."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, record: dict[str, object]) -> None:
        """Append one record."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


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


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _parse_time(value: str) -> float | None:
    """An HTTP date or an ISO 8601 timestamp (as in DeleteObjects' LastModifiedTime), in seconds."""
    from datetime import datetime

    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        pass
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def parse_query(raw_query: str) -> dict[str, str]:
    """Query parameters, percent-decoded as UTF-8 (invalid UTF-8 is 400 InvalidURI, never replaced)."""
    out: dict[str, str] = {}
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        out[decode_key(name.replace("+", " "))] = decode_key(value.replace("+", " "))
    return out


def _header_bytes_as_text(value: str) -> str:
    """http.server decodes header bytes as latin-1; recover them and read them as UTF-8 (bytes kept)."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value


def _wire(value: str) -> str:
    """A stored header value back into the latin-1 text send_header encodes: the original bytes."""
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


class _Request:
    """The parsed addressing of one request."""

    def __init__(self, raw_path: str, raw_query: str, bucket: str | None, key: str | None) -> None:
        self.raw_path = raw_path
        self.raw_query = raw_query
        self.bucket = bucket
        self.key = key
        self.query = parse_query(raw_query)

    @property
    def resource(self) -> str:
        if self.bucket is None:
            return "/"
        return f"/{self.bucket}/{self.key}" if self.key else f"/{self.bucket}"


class S3Handler(BaseHTTPRequestHandler):
    """Serves one connection; each request is dispatched to an S3 operation."""

    protocol_version = "HTTP/1.1"
    server_version = "blockkit-gateway"

    def version_string(self) -> str:
        """The Server header."""
        return self.server_version

    # -- plumbing ---------------------------------------------------------
    @property
    def state(self) -> GatewayState:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Silence the stdlib's stderr log; the access log records requests."""

    def handle_expect_100(self) -> bool:
        """Defer `100 Continue` until we know we want the body (so refusals cost no upload)."""
        self._expect_continue = True
        return True

    def parse_request(self) -> bool:
        """The stdlib parser, minus HTTP/0.9 (it would get a response without a status line)."""
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 requests are not supported")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server raises itself (bad request line, unknown method, huge headers) as S3 XML.

        Nothing of the request is read after such an error: the connection is closed.
        """
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # always send a status line
        self.close_connection = True
        s3_code, default = _STDLIB_ERRORS.get(code, ("BadRequest", "The request could not be parsed."))
        request_id = secrets.token_hex(8).upper()
        body = s3xml.error_document(S3Error(code, s3_code, message or default), "/", request_id)
        self.send_response(code)
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        self._method = method
        self._request_id = secrets.token_hex(8).upper()
        self._status = 0
        self._bytes_out = 0
        self._bytes_in = 0
        self._body_read = False
        self._continue_sent = False
        self._expect_continue = getattr(self, "_expect_continue", False)
        self._error_code = ""
        self._authenticated = False
        self._content_length: int | None = None
        self._headers = {k.lower(): _header_bytes_as_text(v) for k, v in self.headers.items()}
        req: _Request | None = None
        try:
            self._check_framing()
            req = self._parse_target()
            ctx = self._authenticate(req, method)
            self._authenticated = True
            self._route(method, req, ctx)
        except S3Error as err:
            self._send_error(err, req.resource if req else self.path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                self._internal_error()
            else:
                self._send_error(key_too_long("a file or folder name of this key is too long for the folder's file system"), self.path)
        except Exception:  # noqa: BLE001 - one failing request must not kill the server
            self._internal_error()
        finally:
            self._expect_continue = False
            self.state.counters.add(self._bytes_out, self._bytes_in)
            if self.state.access_log is not None:
                self.state.access_log.write(
                    {
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "client": self.client_address[0],
                        "method": method,
                        "path": self.path,
                        "range": self._headers.get("range"),
                        "status": self._status,
                        "error": self._error_code or None,
                        "bytes_out": self._bytes_out,
                        "bytes_in": self._bytes_in,
                        "ms": round((time.monotonic() - started) * 1000, 1),
                        "request_id": self._request_id,
                    }
                )

    def _internal_error(self) -> None:
        traceback.print_exc(file=sys.stderr)
        try:
            self._send_error(S3Error(500, "InternalError", "We encountered an internal error. Please try again."), self.path)
        except OSError:
            self.close_connection = True

    def _check_framing(self) -> None:
        """Refuse ambiguous or malformed body framing from the headers alone, before anything is read."""
        te = self._headers.get("transfer-encoding")
        lengths = (self.headers.get_all("content-length") or []) if "content-length" in self._headers else []
        if lengths:
            values = {v.strip() for v in lengths}
            if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
                self.close_connection = True
                self._body_read = True  # never read a body whose length we cannot know
                raise S3Error(400, "InvalidArgument", "Content-Length must be one non-negative decimal number.")
            self._content_length = int(next(iter(values)))
        if te is not None and (lengths or te.strip().lower() != "chunked"):
            self._body_read = True  # never read a body whose framing is ambiguous or unknown
            self.close_connection = True
            if lengths:
                raise S3Error(400, "InvalidRequest", "A request must not carry both Content-Length and Transfer-Encoding.")
            raise S3Error(501, "NotImplemented", "A header you provided implies functionality that is not implemented: Transfer-Encoding.")

    def _parse_target(self) -> _Request:
        target = self.path
        if target.startswith(("http://", "https://")):
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        raw_path, _, raw_query = target.partition("?")
        host = self._headers.get("host", "").rsplit(":", 1)[0] if not self._headers.get("host", "").startswith("[") else ""
        bucket: str | None = None
        if host and not _is_ip(host):
            matches = [b for b in self.state.buckets if host.startswith(b + ".")]
            if matches:
                bucket = max(matches, key=len)
        if bucket is not None:
            key = decode_key(raw_path[1:]) if len(raw_path) > 1 else None
            return _Request(raw_path, raw_query, bucket, key)
        rest = raw_path.lstrip("/")
        if not rest:
            return _Request(raw_path, raw_query, None, None)
        name, _, key_part = rest.partition("/")
        return _Request(raw_path, raw_query, decode_key(name), decode_key(key_part) if key_part else None)

    def _authenticate(self, req: _Request, method: str) -> SignatureContext | None:
        verifier = self.state.verifier
        if verifier is None:
            return None
        return verifier.verify(method, req.raw_path, req.raw_query, self._headers)

    # -- responses --------------------------------------------------------
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

    # -- request bodies ---------------------------------------------------
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
            declared = int(decoded) if decoded and _DIGITS.fullmatch(decoded) else None
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

    # -- routing ----------------------------------------------------------
    def _bucket(self, name: str) -> Bucket:
        bucket = self.state.buckets.get(name)
        if bucket is None:
            raise no_such_bucket(name)
        return bucket

    def _route(self, method: str, req: _Request, ctx: SignatureContext | None) -> None:
        q = req.query
        if req.bucket is None:
            if method in ("GET", "HEAD"):
                return self._list_buckets()
            raise not_implemented(f"{method} on the service")
        bucket = self._bucket(req.bucket)
        if method in ("PUT", "POST", "DELETE") and not bucket.writable:
            raise access_denied(f"bucket {bucket.name!r} is a read-only input; only 'out' is writable")
        unsupported = sorted(UNSUPPORTED & q.keys())
        if unsupported:
            raise not_implemented(f"the ?{unsupported[0]} subresource")
        if req.key is None:
            return self._route_bucket(method, bucket, req, ctx)
        key = req.key
        if method == "GET":
            if "uploadId" in q:
                return self._list_parts(bucket, key, q)
            if "attributes" in q:
                return self._get_object_attributes(bucket, key)
            return self._get_object(bucket, key, q, head=False)
        if method == "HEAD":
            return self._get_object(bucket, key, q, head=True)
        if method == "PUT":
            if "uploadId" in q or "partNumber" in q:
                return self._upload_part(bucket, key, q, ctx)
            if "x-amz-copy-source" in self._headers:
                return self._copy_object(bucket, key)
            return self._put_object(bucket, key, ctx)
        if method == "POST":
            if "uploads" in q:
                return self._create_upload(bucket, key)
            if "uploadId" in q:
                return self._complete_upload(bucket, key, q, ctx)
            raise not_implemented("this POST on an object")
        if method == "DELETE":
            if "uploadId" in q:
                return self._abort_upload(bucket, key, q)
            return self._delete_object(bucket, key)
        raise not_implemented(method)

    def _route_bucket(self, method: str, bucket: Bucket, req: _Request, ctx: SignatureContext | None) -> None:
        q = req.query
        if method == "HEAD":
            return self._send(200, {"x-amz-bucket-region": self.state.region})
        if method == "GET":
            if "location" in q:
                region = "" if self.state.region == "us-east-1" else self.state.region
                return self._send_xml(s3xml.document("LocationConstraint", [s3xml.escape(region)]))
            if "versioning" in q:
                return self._send_xml(s3xml.document("VersioningConfiguration", []))
            if "uploads" in q:
                return self._list_uploads(bucket, q)
            if q.get("list-type") == "2":
                return self._list_objects(bucket, q, v2=True)
            return self._list_objects(bucket, q, v2=False)
        if method == "POST" and "delete" in q:
            return self._delete_objects(bucket, ctx)
        if method == "PUT" and not q:
            raise S3Error(409, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and you already own it.", BucketName=bucket.name)
        raise not_implemented(f"{method} on a bucket")

    # -- buckets ----------------------------------------------------------
    def _list_buckets(self) -> None:
        items = []
        for name, bucket in sorted(self.state.buckets.items()):
            try:
                created = bucket.root.stat().st_mtime
            except OSError:
                created = 0.0
            items.append(el("Name", name) + el("CreationDate", s3xml.iso8601(created)))
        body = s3xml.document(
            "ListAllMyBucketsResult",
            [OWNER, "<Buckets>", *(f"<Bucket>{i}</Bucket>" for i in items), "</Buckets>"],
        )
        self._send_xml(body)

    def _etags(self, bucket: Bucket, entries: list[tuple[str, os.stat_result]]) -> list[str]:
        cache = self.state.etags
        paths = [bucket.root / k for k, _ in entries]
        for (key, st), path in zip(entries, paths):
            # ETags stored with the object (multipart ETags, after a restart) win over re-hashing,
            # so a listing shows the same ETag as HEAD.
            if st.st_size and cache.get(identity(st)) is None:
                meta = bucket.meta.read(key, path, st)
                if meta is not None and meta.etag:
                    cache.put(identity(st), meta.etag)
        missing = [i for i, (_, st) in enumerate(entries) if cache.get(identity(st)) is None and st.st_size]
        if len(missing) > 1:
            # Hashing releases the GIL: a first listing of many big files uses several cores.
            list(self.state.hash_pool.map(lambda i: cache.etag_of(paths[i], entries[i][1]), missing))
        return [cache.etag_of(p, st) for p, (_, st) in zip(paths, entries)]

    def _list_objects(self, bucket: Bucket, q: dict[str, str], v2: bool) -> None:
        request = listing.parse_list_request(q, v2)
        page = listing.list_page(bucket.walk(request.prefix, request.after), request)
        etags = self._etags(bucket, page.contents)
        objects = [listing.ListedObject(key, st.st_mtime, st.st_size, etag)
                   for (key, st), etag in zip(page.contents, etags)]
        self._send_xml(listing.list_objects_xml(bucket.name, request, page, objects))

    # -- reads ------------------------------------------------------------
    def _meta_and_etag(self, bucket: Bucket, obj: ObjectFile) -> tuple[ObjectMeta | None, str]:
        """The stored metadata of an object (if current) and its ETag: cached, stored, or hashed."""
        meta = bucket.meta.read(obj.key, obj.path, obj.st)
        cache = self.state.etags
        etag = cache.get(identity(obj.st))
        if etag is None and meta is not None and meta.etag:
            etag = meta.etag
            cache.put(identity(obj.st), etag)
        if etag is None:
            etag = cache.etag_of(obj.path, obj.st)
        return meta, etag

    def _object_headers(self, obj: ObjectFile, etag: str, meta: ObjectMeta | None) -> dict[str, str]:
        stored = meta.response_headers() if meta is not None else {}
        headers = {
            "Content-Type": stored.get("Content-Type") or mimetypes.guess_type(obj.key)[0] or "application/octet-stream",
            "ETag": f'"{etag}"',
            "Last-Modified": _http_date(obj.st.st_mtime),
            "Accept-Ranges": "bytes",
        }
        if meta is not None:
            headers.update(stored)
        return headers

    def _checksum_headers(self, meta: ObjectMeta | None, q: dict[str, str]) -> dict[str, str]:
        """Stored checksums for x-amz-checksum-mode: ENABLED: the object's, or the part's for ?partNumber.

        Never on a Range response (the client would check them against a slice)."""
        if meta is None or self._headers.get("x-amz-checksum-mode", "").upper() != "ENABLED" or "range" in self._headers:
            return {}
        if "partNumber" not in q:
            return dict(meta.checksums)
        number = int(q["partNumber"])
        if meta.parts and meta.part_checksums and len(meta.part_checksums) == len(meta.parts) and 1 <= number <= len(meta.parts):
            name = next((k for k in meta.checksums if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS), None)
            if name is not None:
                return {name: meta.part_checksums[number - 1], "x-amz-checksum-type": meta.checksums.get("x-amz-checksum-type", "COMPOSITE")}
        return {} if meta.parts else dict(meta.checksums)

    def _get_object(self, bucket: Bucket, key: str, q: dict[str, str], head: bool) -> None:
        obj = bucket.open_object(key)
        meta, etag = self._meta_and_etag(bucket, obj)
        headers = self._object_headers(obj, etag, meta)
        verdict = conditions.evaluate(self._headers, etag, obj.st.st_mtime, read=True)
        if verdict == 304:
            return self._send(304, {"ETag": headers["ETag"], "Last-Modified": headers["Last-Modified"]})
        if verdict == 412:
            raise conditions.precondition_failed()
        for param, header in RESPONSE_OVERRIDES.items():
            if param in q:
                if any(c in q[param] for c in "\r\n\x00"):
                    raise invalid_argument(f"{param} must not contain line breaks or NUL")
                headers[header] = _wire(q[param])
        size = obj.st.st_size
        if "partNumber" in q:
            first, count, status = self._part_range(q, meta, size, headers)
        else:
            rng = conditions.parse_range(self._headers.get("range"), size)
            if rng is None:
                first, count, status = 0, size, 200
            else:
                first, count, status = rng[0], rng[1] - rng[0] + 1, 206
                headers["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{size}"
        headers.update(self._checksum_headers(meta, q))
        if head:
            return self._send(status, headers, length=count)
        with open(obj.path, "rb") as fh:
            self._send(status, headers, length=count)
            sent = self.connection.sendfile(fh, first, count) if count else 0
            self._bytes_out += sent
            if sent != count:
                self.close_connection = True  # the file shrank under us: the client sees a short body

    def _get_object_attributes(self, bucket: Bucket, key: str) -> None:
        """GetObjectAttributes: ETag, Checksum, ObjectParts, StorageClass, ObjectSize as asked."""
        wanted = {a.strip() for a in self._headers.get("x-amz-object-attributes", "").split(",") if a.strip()}
        known = {"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"}
        if not wanted or not wanted <= known:
            raise invalid_argument("x-amz-object-attributes must name some of: " + ", ".join(sorted(known)))
        obj = bucket.open_object(key)
        meta, etag = self._meta_and_etag(bucket, obj)
        verdict = conditions.evaluate(self._headers, etag, obj.st.st_mtime, read=True)
        if verdict == 304:
            return self._send(304, {"ETag": f'"{etag}"'})
        if verdict == 412:
            raise conditions.precondition_failed()
        items: list[str] = []
        if "ETag" in wanted:
            items.append(el("ETag", etag))
        checksums = dict(meta.checksums) if meta is not None else {}
        algo = next((k for k in checksums if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS), None)
        if "Checksum" in wanted and algo is not None:
            items.append(
                "<Checksum>"
                + el("Checksum" + algo[len(CHECKSUM_PREFIX):].upper(), checksums[algo])
                + el("ChecksumType", checksums.get("x-amz-checksum-type", "FULL_OBJECT"))
                + "</Checksum>"
            )
        if "ObjectParts" in wanted and meta is not None and meta.parts:
            try:
                marker = int(self._headers.get("x-amz-part-number-marker", "0") or 0)
                max_parts = min(int(self._headers.get("x-amz-max-parts", "1000") or 1000), 1000)
            except ValueError:
                raise invalid_argument("x-amz-part-number-marker and x-amz-max-parts must be integers") from None
            numbers = [n for n in range(1, len(meta.parts) + 1) if n > marker]
            page = numbers[:max_parts]
            part_items = []
            for n in page:
                extra = ""
                if algo is not None and meta.part_checksums and len(meta.part_checksums) == len(meta.parts):
                    extra = el("Checksum" + algo[len(CHECKSUM_PREFIX):].upper(), meta.part_checksums[n - 1])
                part_items.append("<Part>" + el("PartNumber", n) + el("Size", meta.parts[n - 1]) + extra + "</Part>")
            items.append(
                "<ObjectParts>"
                + el("PartsCount", len(meta.parts))
                + el("PartNumberMarker", marker)
                + el("NextPartNumberMarker", page[-1] if page else marker)
                + el("MaxParts", max_parts)
                + el("IsTruncated", "true" if len(numbers) > len(page) else "false")
                + "".join(part_items)
                + "</ObjectParts>"
            )
        if "StorageClass" in wanted:
            items.append(el("StorageClass", "STANDARD"))
        if "ObjectSize" in wanted:
            items.append(el("ObjectSize", obj.st.st_size))
        self._send_xml(
            s3xml.document("GetObjectAttributesResponse", items), headers={"Last-Modified": _http_date(obj.st.st_mtime)}
        )

    def _part_range(self, q: dict[str, str], meta: ObjectMeta | None, size: int, headers: dict[str, str]) -> tuple[int, int, int]:
        """First byte, length and status of GET/HEAD ?partNumber=N (a plain object is one part)."""
        if "range" in self._headers:
            raise S3Error(400, "InvalidRequest", "Cannot specify both Range header and partNumber query parameter.")
        number = self._part_number(q)
        parts = meta.parts if meta is not None and meta.parts else [size]
        if not 1 <= number <= len(parts):
            raise S3Error(400, "InvalidPart", "The requested partnumber is not satisfiable", PartNumber=str(number))
        first = sum(parts[: number - 1])
        count = parts[number - 1]
        headers["x-amz-mp-parts-count"] = str(len(parts))
        if meta is None or not meta.parts:
            return 0, size, 200
        if count:
            headers["Content-Range"] = f"bytes {first}-{first + count - 1}/{size}"
        return first, count, 206

    # -- writes -----------------------------------------------------------
    def _request_meta(self) -> ObjectMeta:
        return ObjectMeta.from_request(self._headers)

    def _put_object(self, bucket: Bucket, key: str, ctx: SignatureContext | None) -> None:
        if key.endswith("/"):
            return self._put_folder_marker(bucket, key, ctx)
        check_content_md5(self._headers.get("content-md5"))
        target = prepare_target(bucket, key)
        precheck = self._write_conditions(bucket, key, target)
        meta = self._request_meta()
        body, declared = self._body(ctx)
        checks = self._checksums()
        with AtomicFile(target) as out:
            total = pump(body, out.write, checks.update)
            self._bytes_in += total
            if declared is not None and total != declared:
                raise S3Error(400, "IncompleteBody", "The body is shorter than its declared length")
            verified = checks.verify(self._headers.get("content-md5"), getattr(body, "trailers", {}))
            meta.etag = checks.md5.hexdigest()
            meta.checksums = verified
            st = out.commit(bucket, key, meta, precheck)
        self.state.etags.put(identity(st), meta.etag)
        self._send(200, {"ETag": f'"{meta.etag}"', **verified})

    def _put_folder_marker(self, bucket: Bucket, key: str, ctx: SignatureContext | None) -> None:
        # "folder/" objects (made by consoles and some tools) become folders; they carry no bytes.
        # One with data is refused (400 InvalidArgument) before its body is read.
        if self._content_length and not self._headers.get("x-amz-decoded-content-length", "").strip() == "0":
            raise invalid_argument("a key ending in '/' is a folder here and cannot hold data")
        data = self._read_small_body(ctx)
        if data:
            raise invalid_argument("a key ending in '/' is a folder here and cannot hold data")
        path = bucket.path_for(key)
        if path.exists() and not path.is_dir():
            raise invalid_argument(f"{key!r} is an object; it cannot also be a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise invalid_argument(f"a parent of key {key!r} is an object; it cannot also be a folder") from None
        bucket.path_for(key)
        self._send(200, {"ETag": f'"{EMPTY_MD5}"'})

    def _current_etag(self, bucket: Bucket, key: str, target: Path) -> str | None:
        try:
            st = target.stat()
        except OSError:
            return None
        if not target.is_file():
            return None
        _, etag = self._meta_and_etag(bucket, ObjectFile(key, target, st))
        return etag

    def _write_conditions(self, bucket: Bucket, key: str, target: Path) -> Callable[[], None] | None:
        """Check If-Match / If-None-Match of a write now; returns the re-check to run right before the rename."""
        if_none = self._headers.get("if-none-match")
        if_match = self._headers.get("if-match")
        if if_none is None and if_match is None:
            return None

        def check() -> None:
            etag = self._current_etag(bucket, key, target)
            if if_match is not None:
                if etag is None:
                    raise no_such_key(key)
                if conditions.evaluate({"if-match": if_match}, etag, 0, read=False) == 412:
                    raise conditions.precondition_failed()
            if if_none is not None and etag is not None:
                if conditions.evaluate({"if-none-match": if_none}, etag, 0, read=False) == 412:
                    raise conditions.precondition_failed()

        check()
        return check

    def _copy_source(self) -> tuple[Bucket, ObjectFile, str, ObjectMeta | None]:
        raw = self._headers["x-amz-copy-source"]
        raw = raw.split("?versionId=", 1)[0]
        src = decode_key(raw).lstrip("/")
        name, _, key = src.partition("/")
        if not key:
            raise invalid_argument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey")
        bucket = self._bucket(name)
        obj = bucket.open_object(key)
        meta, etag = self._meta_and_etag(bucket, obj)
        verdict = conditions.evaluate(self._headers, etag, obj.st.st_mtime, read=False, prefix="x-amz-copy-source-if-")
        if verdict is not None:
            raise conditions.precondition_failed()
        return bucket, obj, etag, meta

    def _copy_object(self, bucket: Bucket, key: str) -> None:
        directive = self._headers.get("x-amz-metadata-directive", "COPY").strip().upper()
        if directive not in ("COPY", "REPLACE"):
            raise invalid_argument("Unknown metadata directive: use COPY or REPLACE.")
        src_bucket, src, _, src_meta = self._copy_source()
        if src_bucket is bucket and src.key == key and directive != "REPLACE":
            raise S3Error(
                400,
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without changing "
                "the object's metadata, storage class, website redirect location or encryption attributes.",
            )
        if directive == "REPLACE":
            meta = self._request_meta()
        else:
            meta = ObjectMeta()
            if src_meta is not None:
                meta.headers, meta.user = dict(src_meta.headers), dict(src_meta.user)
            meta.headers.setdefault("content-type", mimetypes.guess_type(src.key)[0] or "application/octet-stream")
        target = prepare_target(bucket, key)
        precheck = self._write_conditions(bucket, key, target)
        md5 = hashlib.md5()
        with AtomicFile(target) as out, open(src.path, "rb") as fh:
            copy_range(fh.fileno(), out.fd, 0, src.st.st_size, md5.update)
            meta.etag = md5.hexdigest()
            st = out.commit(bucket, key, meta, precheck)
        self.state.etags.put(identity(st), meta.etag)
        self._finish_unread_body()
        self._send_xml(
            s3xml.document("CopyObjectResult", [el("LastModified", s3xml.iso8601(st.st_mtime)), el("ETag", f'"{meta.etag}"')])
        )

    def _delete_object(self, bucket: Bucket, key: str) -> None:
        h = self._headers
        self._remove(
            bucket,
            key,
            etag=h.get("if-match"),
            mtime=h.get("x-amz-if-match-last-modified-time"),
            size=h.get("x-amz-if-match-size"),
        )
        self._send(204)

    def _remove(self, bucket: Bucket, key: str, etag: str | None = None, mtime: str | None = None, size: str | None = None) -> None:
        """Delete a key (missing keys are fine, as in S3); the conditions apply only to an existing object."""
        path = bucket.path_for(key)
        try:
            if key.endswith("/"):
                path.rmdir()
            elif path.is_file() or path.is_symlink():
                if etag is not None or mtime is not None or size is not None:
                    self._check_delete_conditions(bucket, key, path, etag, mtime, size)
                path.unlink()
                bucket.meta.forget(key)
            else:
                return
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise
            return
        # Empty folders are invisible in S3; remove the ones this delete emptied.
        parent = path.parent
        while parent != bucket.root and bucket.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _check_delete_conditions(
        self, bucket: Bucket, key: str, path: Path, etag: str | None, mtime: str | None, size: str | None
    ) -> None:
        st = path.stat()
        if etag is not None:
            _, current = self._meta_and_etag(bucket, ObjectFile(key, path, st))
            if conditions.evaluate({"if-match": etag}, current, 0, read=False) == 412:
                raise conditions.precondition_failed()
        if mtime is not None:
            wanted = _parse_time(mtime)
            if wanted is None:
                raise invalid_argument("x-amz-if-match-last-modified-time / LastModifiedTime is not a valid date")
            if int(wanted) != int(st.st_mtime):
                raise conditions.precondition_failed()
        if size is not None:
            if not _DIGITS.fullmatch(size.strip()):
                raise invalid_argument("x-amz-if-match-size / Size must be a non-negative integer")
            if int(size) != st.st_size:
                raise conditions.precondition_failed()

    def _delete_objects(self, bucket: Bucket, ctx: SignatureContext | None) -> None:
        request = s3xml.parse_delete(self._read_small_body(ctx))
        out = []
        for obj in request.objects:
            try:
                self._remove(bucket, obj.key, etag=obj.etag, mtime=obj.last_modified, size=obj.size)
                if not request.quiet:
                    out.append(f"<Deleted>{el('Key', obj.key)}</Deleted>")
            except S3Error as err:
                out.append(f"<Error>{el('Key', obj.key)}{el('Code', err.code)}{el('Message', err.message)}</Error>")
        self._send_xml(s3xml.document("DeleteResult", out))

    # -- multipart --------------------------------------------------------
    def _store(self) -> MultipartStore:
        store = self.state.multipart
        if store is None:
            raise access_denied("no writable bucket")
        return store

    def _create_upload(self, bucket: Bucket, key: str) -> None:
        if key.endswith("/"):
            raise invalid_argument("a key ending in '/' is a folder here and cannot hold data")
        algorithm = self._headers.get("x-amz-checksum-algorithm")
        headers: dict[str, str] = {}
        kind = self._headers.get("x-amz-checksum-type", "COMPOSITE").strip().upper()
        if kind not in ("COMPOSITE", "FULL_OBJECT"):
            raise S3Error(400, "InvalidRequest", "Value for x-amz-checksum-type header is invalid.")
        if algorithm is not None:
            algorithm = algorithm.strip().lower()
            new_checksum(algorithm)  # InvalidRequest for an unknown algorithm
            if kind == "FULL_OBJECT" and algorithm not in CRC_PARAMS:
                raise S3Error(400, "InvalidRequest", f"The FULL_OBJECT checksum type cannot be used with the {algorithm.upper()} algorithm.")
            headers["x-amz-checksum-algorithm"] = algorithm.upper()
            headers["x-amz-checksum-type"] = kind
        upload = self._store().create(key, self._request_meta(), algorithm, kind)
        self._send_xml(
            s3xml.document(
                "InitiateMultipartUploadResult", [el("Bucket", bucket.name), el("Key", key), el("UploadId", upload.upload_id)]
            ),
            headers=headers,
        )

    def _upload(self, key: str, q: dict[str, str]) -> Upload:
        return self._store().get(key, q.get("uploadId", ""))

    def _part_number(self, q: dict[str, str]) -> int:
        value = q.get("partNumber", "")
        if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= 10_000:
            raise invalid_argument("Part number must be an integer between 1 and 10000, inclusive")
        return int(value)

    def _upload_part(self, bucket: Bucket, key: str, q: dict[str, str], ctx: SignatureContext | None) -> None:
        upload = self._upload(key, q)
        number = self._part_number(q)
        store = self._store()
        if "x-amz-copy-source" in self._headers:
            return self._upload_part_copy(store, upload, number)
        check_content_md5(self._headers.get("content-md5"))
        body, declared = self._body(ctx)
        checks = self._checksums()
        writer = store.part_writer(upload, number, declared)
        try:
            total = pump(body, writer.write, checks.update)
            self._bytes_in += total
            if declared is not None and total != declared:
                raise S3Error(400, "IncompleteBody", "The body is shorter than its declared length")
            verified = checks.verify(self._headers.get("content-md5"), getattr(body, "trailers", {}))
            part = writer.commit(checks.md5.digest(), verified)
        except BaseException:
            writer.abort()
            raise
        self._send(200, {"ETag": f'"{part.etag}"', **verified})

    def _copy_source_range(self, size: int) -> tuple[int, int]:
        """First byte and length of x-amz-copy-source-range: `bytes=first-last`, inside the source."""
        value = self._headers.get("x-amz-copy-source-range")
        if value is None:
            return 0, size
        m = re.fullmatch(r"bytes=([0-9]{1,19})-([0-9]{1,19})", value.strip())
        if not m or int(m.group(2)) < int(m.group(1)):
            raise invalid_argument("The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy")
        first, last = int(m.group(1)), int(m.group(2))
        if last >= size:
            raise S3Error(
                416, "InvalidRange", "The requested range is not satisfiable: it goes past the end of the source object.", ActualObjectSize=str(size)
            )
        return first, last - first + 1

    def _upload_part_copy(self, store: MultipartStore, upload: Upload, number: int) -> None:
        _, src, _, _ = self._copy_source()
        first, count = self._copy_source_range(src.st.st_size)
        md5 = hashlib.md5()
        writer = store.part_writer(upload, number, count)
        try:
            with open(src.path, "rb") as fh:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                pos, left = first, count
                while left:
                    n = os.preadv(fh.fileno(), [view[: min(CHUNK, left)]], pos)
                    if not n:
                        raise S3Error(500, "InternalError", "source changed while copying")
                    md5.update(view[:n])
                    writer.write(view[:n])
                    pos += n
                    left -= n
            part = writer.commit(md5.digest())
        except BaseException:
            writer.abort()
            raise
        self._finish_unread_body()
        self._send_xml(
            s3xml.document("CopyPartResult", [el("LastModified", s3xml.iso8601(part.last_modified)), el("ETag", f'"{part.etag}"')])
        )

    def _complete_upload(self, bucket: Bucket, key: str, q: dict[str, str], ctx: SignatureContext | None) -> None:
        store = self._store()
        upload_id = q.get("uploadId", "")
        part_checksums: dict[int, dict[str, str]] = {}
        expected = {k: v for k, v in self._headers.items() if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS}
        try:
            upload = self._upload(key, q)
        except S3Error:
            # A repeated Complete of an upload that already finished answers 200 again, as S3 does.
            listed = s3xml.parse_complete(self._read_small_body(ctx, object_checksums=True))
            done = store.completed(key, upload_id, listed)
            if done is None:
                raise
            return self._send_complete(bucket, key, done[0], done[1])
        listed = s3xml.parse_complete(self._read_small_body(ctx, object_checksums=True), part_checksums)
        target = prepare_target(bucket, key)
        precheck = self._write_conditions(bucket, key, target)
        _, etag, st, _ = store.complete(upload, listed, precheck, part_checksums, expected)
        self.state.etags.put(identity(st), etag)
        self._send_complete(bucket, key, etag, dict(upload.meta.checksums))

    def _send_complete(self, bucket: Bucket, key: str, etag: str, headers: dict[str, str]) -> None:
        host = self._headers.get("host", "localhost")
        self._send_xml(
            s3xml.document(
                "CompleteMultipartUploadResult",
                [
                    el("Location", f"http://{host}/{bucket.name}/{quote(key)}"),
                    el("Bucket", bucket.name),
                    el("Key", key),
                    el("ETag", f'"{etag}"'),
                    *(
                        el("Checksum" + k[len(CHECKSUM_PREFIX):].upper(), v)
                        for k, v in headers.items()
                        if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS
                    ),
                    *(el("ChecksumType", headers["x-amz-checksum-type"]) for _ in [0] if "x-amz-checksum-type" in headers),
                ],
            ),
            headers=headers,
        )

    def _abort_upload(self, bucket: Bucket, key: str, q: dict[str, str]) -> None:
        upload = self._upload(key, q)
        self._store().abort(upload)
        self._send(204)

    def _list_parts(self, bucket: Bucket, key: str, q: dict[str, str]) -> None:
        upload = self._upload(key, q)
        request = listing.parse_parts_request(q)
        with upload.lock:
            parts = list(upload.parts.values())
        page, truncated, next_marker = listing.parts_page(parts, request)
        items = [
            "<Part>"
            + el("PartNumber", p.number)
            + el("LastModified", s3xml.iso8601(p.last_modified))
            + el("ETag", f'"{p.etag}"')
            + el("Size", p.size)
            + "</Part>"
            for p in page
        ]
        head = [
            el("Bucket", bucket.name),
            el("Key", key),
            el("UploadId", upload.upload_id),
            el("StorageClass", "STANDARD"),
            el("PartNumberMarker", request.marker),
            el("NextPartNumberMarker", next_marker),
            el("MaxParts", request.max_parts),
            el("IsTruncated", "true" if truncated else "false"),
        ]
        self._send_xml(s3xml.document("ListPartsResult", head + items))

    def _list_uploads(self, bucket: Bucket, q: dict[str, str]) -> None:
        store = self.state.multipart if bucket.writable else None
        request = listing.parse_uploads_request(q)
        page, truncated = listing.uploads_page(store.uploads() if store else [], request)
        items = [
            "<Upload>"
            + el("Key", u.key)
            + el("UploadId", u.upload_id)
            + el("StorageClass", "STANDARD")
            + el("Initiated", s3xml.iso8601(u.created))
            + "</Upload>"
            for u in page
        ]
        head = [el("Bucket", bucket.name), el("KeyMarker", request.key_marker),
                el("UploadIdMarker", request.upload_id_marker), el("Prefix", request.prefix)]
        if truncated:
            head += [el("NextKeyMarker", page[-1].key), el("NextUploadIdMarker", page[-1].upload_id)]
        head += [el("MaxUploads", request.max_uploads), el("IsTruncated", "true" if truncated else "false")]
        self._send_xml(s3xml.document("ListMultipartUploadsResult", head + items))
