"""The HTTP request handler: addressing, auth, routing and every S3 operation we serve."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
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
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qsl, quote, unquote

from blockkit.gateway import conditions, s3xml
from blockkit.gateway.body import AwsChunkedBody, Body, Checksums, HttpChunkedBody, LengthBody
from blockkit.gateway.buckets import Bucket, ObjectFile
from blockkit.gateway.errors import (
    S3Error,
    access_denied,
    invalid_argument,
    no_such_bucket,
    no_such_key,
    not_implemented,
)
from blockkit.gateway.etags import EMPTY_MD5, ETagCache, identity
from blockkit.gateway.multipart import MultipartStore, Upload
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
OWNER = "<Owner><ID>blockkit</ID><DisplayName>blockkit</DisplayName></Owner>"

# Bucket/object subresources we do not serve: answered with NotImplemented rather than misread as listings.
UNSUPPORTED = {
    "acl", "policy", "policyStatus", "tagging", "cors", "lifecycle", "website", "logging", "notification",
    "replication", "encryption", "object-lock", "legal-hold", "retention", "requestPayment", "accelerate",
    "analytics", "inventory", "metrics", "intelligent-tiering", "ownershipControls", "publicAccessBlock",
    "versions", "torrent", "restore", "select", "attributes",
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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class _Request:
    """The parsed addressing of one request."""

    def __init__(self, raw_path: str, raw_query: str, bucket: str | None, key: str | None) -> None:
        self.raw_path = raw_path
        self.raw_query = raw_query
        self.bucket = bucket
        self.key = key
        self.query = dict(parse_qsl(raw_query, keep_blank_values=True))

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
        self._headers = {k.lower(): v for k, v in self.headers.items()}
        req: _Request | None = None
        try:
            req = self._parse_target()
            ctx = self._authenticate(req, method)
            self._route(method, req, ctx)
        except S3Error as err:
            self._send_error(err, req.resource if req else self.path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - one failing request must not kill the server
            traceback.print_exc(file=sys.stderr)
            try:
                self._send_error(S3Error(500, "InternalError", "We encountered an internal error. Please try again."), self.path)
            except OSError:
                self.close_connection = True
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
            key = unquote(raw_path[1:]) if len(raw_path) > 1 else None
            return _Request(raw_path, raw_query, bucket, key)
        rest = raw_path.lstrip("/")
        if not rest:
            return _Request(raw_path, raw_query, None, None)
        name, _, key_part = rest.partition("/")
        return _Request(raw_path, raw_query, unquote(name), unquote(key_part) if key_part else None)

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
        # A response sent before the request body was read: drain a small body so the
        # connection stays usable, otherwise close it rather than read gigabytes.
        if self._body_read:
            return
        self._body_read = True
        chunked = "chunked" in self._headers.get("transfer-encoding", "").lower()
        length = int(self._headers.get("content-length", "0") or 0)
        if not chunked and length == 0:
            return
        if self._expect_continue and not self._continue_sent:
            self.close_connection = True
            return
        if chunked or length > DRAIN_LIMIT:
            self.close_connection = True
            return
        try:
            self.rfile.read(length)
        except OSError:
            self.close_connection = True

    # -- request bodies ---------------------------------------------------
    def _body(self, ctx: SignatureContext | None) -> tuple[Body, int | None]:
        """The request body with its framing removed, and its declared decoded length."""
        if self._expect_continue and not self._continue_sent:
            self.send_response_only(100)
            self.end_headers()
            self._continue_sent = True
        self._body_read = True
        h = self._headers
        if "chunked" in h.get("transfer-encoding", "").lower():
            raw: Body = HttpChunkedBody(self.rfile)  # type: ignore[arg-type]
            declared = None
        else:
            if "content-length" not in h:
                raise S3Error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
            try:
                declared = int(h["content-length"])
            except ValueError:
                raise invalid_argument("Content-Length is not a number") from None
            raw = LengthBody(self.rfile, declared)  # type: ignore[arg-type]
        sha = h.get("x-amz-content-sha256", "")
        if "aws-chunked" in h.get("content-encoding", "").lower() or sha.startswith("STREAMING-"):
            signed = sha in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
            decoded = h.get("x-amz-decoded-content-length")
            declared = int(decoded) if decoded and decoded.isdigit() else None
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

    def _read_small_body(self, ctx: SignatureContext | None) -> bytes:
        body, _ = self._body(ctx)
        out = bytearray()
        buf = bytearray(65536)
        view = memoryview(buf)
        checks = self._checksums()
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
        missing = [i for i, (_, st) in enumerate(entries) if cache.get(identity(st)) is None and st.st_size]
        if len(missing) > 1:
            # Hashing releases the GIL: a first listing of many big files uses several cores.
            list(self.state.hash_pool.map(lambda i: cache.etag_of(paths[i], entries[i][1]), missing))
        return [cache.etag_of(p, st) for p, (_, st) in zip(paths, entries)]

    def _list_objects(self, bucket: Bucket, q: dict[str, str], v2: bool) -> None:
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        url = q.get("encoding-type", "") == "url"
        if q.get("encoding-type") not in (None, "url"):
            raise invalid_argument("Invalid Encoding Method specified in Request")
        try:
            max_keys = min(int(q.get("max-keys", "1000")), 1000)
        except ValueError:
            raise invalid_argument("Provided max-keys not an integer or within integer range") from None
        if max_keys < 0:
            raise invalid_argument("max-keys must not be negative")
        token = q.get("continuation-token")
        if v2 and token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise invalid_argument("The continuation token provided is incorrect") from None
            skip_after = True
        elif v2:
            after, skip_after = q.get("start-after", ""), False
        else:
            after, skip_after = q.get("marker", ""), True
        walk = bucket.walk(prefix, after)
        if skip_after and delimiter and after.startswith(prefix) and after.endswith(delimiter) and delimiter in after[len(prefix):]:
            walk.skip(after)  # the previous page ended on this common prefix
        contents: list[tuple[str, os.stat_result]] = []
        prefixes: list[str] = []
        truncated = False
        last = ""
        for key, st in walk:
            if delimiter:
                i = key.find(delimiter, len(prefix))
                if i >= 0:
                    cp = key[: i + len(delimiter)]
                    if len(contents) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(cp)
                    last = cp
                    walk.skip(cp)
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            contents.append((key, st))
            last = key
        enc = (lambda s: quote(s, safe="/")) if url else (lambda s: s)
        etags = self._etags(bucket, contents)
        items = []
        for (key, st), etag in zip(contents, etags):
            items.append(
                "<Contents>"
                + el("Key", enc(key))
                + el("LastModified", s3xml.iso8601(st.st_mtime))
                + el("ETag", f'"{etag}"')
                + el("Size", st.st_size)
                + el("StorageClass", "STANDARD")
                + (OWNER if (not v2 or q.get("fetch-owner") == "true") else "")
                + "</Contents>"
            )
        cps = [f"<CommonPrefixes>{el('Prefix', enc(p))}</CommonPrefixes>" for p in prefixes]
        head = [el("Name", bucket.name), el("Prefix", enc(prefix))]
        if delimiter:
            head.append(el("Delimiter", enc(delimiter)))
        head += [el("MaxKeys", max_keys), el("IsTruncated", "true" if truncated else "false")]
        if url:
            head.append(el("EncodingType", "url"))
        if v2:
            head.append(el("KeyCount", len(contents) + len(prefixes)))
            if token is not None:
                head.append(el("ContinuationToken", token))
            if "start-after" in q:
                head.append(el("StartAfter", enc(q["start-after"])))
            if truncated:
                head.append(el("NextContinuationToken", base64.urlsafe_b64encode(last.encode()).decode()))
            root = "ListBucketResult"
        else:
            head.append(el("Marker", enc(q.get("marker", ""))))
            if truncated:
                head.append(el("NextMarker", enc(last)))
            root = "ListBucketResult"
        self._send_xml(s3xml.document(root, head + items + cps))

    # -- reads ------------------------------------------------------------
    def _object_headers(self, obj: ObjectFile, etag: str) -> dict[str, str]:
        ctype = mimetypes.guess_type(obj.key)[0] or "application/octet-stream"
        return {
            "Content-Type": ctype,
            "ETag": f'"{etag}"',
            "Last-Modified": _http_date(obj.st.st_mtime),
            "Accept-Ranges": "bytes",
        }

    def _get_object(self, bucket: Bucket, key: str, q: dict[str, str], head: bool) -> None:
        if "partNumber" in q:
            raise not_implemented("GET/HEAD by partNumber")
        obj = bucket.open_object(key)
        etag = self.state.etags.etag_of(obj.path, obj.st)
        headers = self._object_headers(obj, etag)
        verdict = conditions.evaluate(self._headers, etag, obj.st.st_mtime, read=True)
        if verdict == 304:
            return self._send(304, {"ETag": headers["ETag"], "Last-Modified": headers["Last-Modified"]})
        if verdict == 412:
            raise conditions.precondition_failed()
        for param, header in RESPONSE_OVERRIDES.items():
            if param in q:
                headers[header] = q[param]
        size = obj.st.st_size
        rng = conditions.parse_range(self._headers.get("range"), size)
        if rng is None:
            first, count, status = 0, size, 200
        else:
            first, count, status = rng[0], rng[1] - rng[0] + 1, 206
            headers["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{size}"
        if head:
            return self._send(status, headers, length=count)
        with open(obj.path, "rb") as fh:
            self._send(status, headers, length=count)
            sent = self.connection.sendfile(fh, first, count) if count else 0
            self._bytes_out += sent
            if sent != count:
                self.close_connection = True  # the file shrank under us: the client sees a short body

    # -- writes -----------------------------------------------------------
    def _put_object(self, bucket: Bucket, key: str, ctx: SignatureContext | None) -> None:
        if key.endswith("/"):
            return self._put_folder_marker(bucket, key, ctx)
        target = prepare_target(bucket, key)
        self._check_write_conditions(target)
        body, declared = self._body(ctx)
        checks = self._checksums()
        with AtomicFile(target) as out:
            total = pump(body, out.write, checks.update)
            self._bytes_in += total
            if declared is not None and total != declared:
                raise S3Error(400, "IncompleteBody", "The body is shorter than its declared length")
            checks.verify(self._headers.get("content-md5"), getattr(body, "trailers", {}))
            st = out.commit()
        etag = checks.md5.hexdigest()
        self.state.etags.put(identity(st), etag)
        self._send(200, {"ETag": f'"{etag}"'})

    def _put_folder_marker(self, bucket: Bucket, key: str, ctx: SignatureContext | None) -> None:
        # "folder/" objects (made by consoles and some tools) become folders; they carry no bytes.
        data = self._read_small_body(ctx)
        if data:
            raise invalid_argument("a key ending in '/' is a folder here and cannot hold data")
        path = bucket.path_for(key)
        if path.exists() and not path.is_dir():
            raise invalid_argument(f"{key!r} is an object; it cannot also be a folder")
        path.mkdir(parents=True, exist_ok=True)
        bucket.path_for(key)
        self._send(200, {"ETag": f'"{EMPTY_MD5}"'})

    def _check_write_conditions(self, target: Path) -> None:
        if_none = self._headers.get("if-none-match")
        if_match = self._headers.get("if-match")
        if if_none is None and if_match is None:
            return
        exists = target.is_file()
        if if_none is not None and if_none.strip() == "*" and exists:
            raise conditions.precondition_failed()
        if if_match is not None:
            if not exists:
                raise no_such_key(str(target.name))
            etag = self.state.etags.etag_of(target)
            if conditions.evaluate({"if-match": if_match}, etag, 0, read=False) == 412:
                raise conditions.precondition_failed()

    def _copy_source(self) -> tuple[ObjectFile, str]:
        raw = self._headers["x-amz-copy-source"]
        raw = raw.split("?versionId=", 1)[0]
        src = unquote(raw).lstrip("/")
        name, _, key = src.partition("/")
        if not key:
            raise invalid_argument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey")
        obj = self._bucket(name).open_object(key)
        etag = self.state.etags.etag_of(obj.path, obj.st)
        verdict = conditions.evaluate(self._headers, etag, obj.st.st_mtime, read=False, prefix="x-amz-copy-source-if-")
        if verdict is not None:
            raise conditions.precondition_failed()
        return obj, etag

    def _copy_object(self, bucket: Bucket, key: str) -> None:
        src, _ = self._copy_source()
        target = prepare_target(bucket, key)
        self._check_write_conditions(target)
        md5 = hashlib.md5()
        with AtomicFile(target) as out, open(src.path, "rb") as fh:
            copy_range(fh.fileno(), out.fd, 0, src.st.st_size, md5.update)
            st = out.commit()
        etag = md5.hexdigest()
        self.state.etags.put(identity(st), etag)
        self._finish_unread_body()
        self._send_xml(
            s3xml.document("CopyObjectResult", [el("LastModified", s3xml.iso8601(st.st_mtime)), el("ETag", f'"{etag}"')])
        )

    def _delete_object(self, bucket: Bucket, key: str) -> None:
        self._remove(bucket, key)
        self._send(204)

    def _remove(self, bucket: Bucket, key: str) -> None:
        path = bucket.path_for(key)
        try:
            if key.endswith("/"):
                path.rmdir()
            elif path.is_file() or path.is_symlink():
                path.unlink()
            else:
                return
        except (FileNotFoundError, OSError):
            return
        # Empty folders are invisible in S3; remove the ones this delete emptied.
        parent = path.parent
        while parent != bucket.root and bucket.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _delete_objects(self, bucket: Bucket, ctx: SignatureContext | None) -> None:
        request = s3xml.parse_delete(self._read_small_body(ctx))
        out = []
        for key in request.keys:
            try:
                self._remove(bucket, key)
                if not request.quiet:
                    out.append(f"<Deleted>{el('Key', key)}</Deleted>")
            except S3Error as err:
                out.append(f"<Error>{el('Key', key)}{el('Code', err.code)}{el('Message', err.message)}</Error>")
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
        upload = self._store().create(key)
        self._send_xml(
            s3xml.document(
                "InitiateMultipartUploadResult", [el("Bucket", bucket.name), el("Key", key), el("UploadId", upload.upload_id)]
            )
        )

    def _upload(self, key: str, q: dict[str, str]) -> Upload:
        return self._store().get(key, q.get("uploadId", ""))

    def _part_number(self, q: dict[str, str]) -> int:
        try:
            return int(q.get("partNumber", ""))
        except ValueError:
            raise invalid_argument("Part number must be an integer between 1 and 10000, inclusive") from None

    def _upload_part(self, bucket: Bucket, key: str, q: dict[str, str], ctx: SignatureContext | None) -> None:
        upload = self._upload(key, q)
        number = self._part_number(q)
        store = self._store()
        if "x-amz-copy-source" in self._headers:
            return self._upload_part_copy(store, upload, number)
        body, declared = self._body(ctx)
        checks = self._checksums()
        writer = store.part_writer(upload, number, declared)
        try:
            total = pump(body, writer.write, checks.update)
            self._bytes_in += total
            if declared is not None and total != declared:
                raise S3Error(400, "IncompleteBody", "The body is shorter than its declared length")
            checks.verify(self._headers.get("content-md5"), getattr(body, "trailers", {}))
            part = writer.commit(checks.md5.digest())
        except BaseException:
            writer.abort()
            raise
        self._send(200, {"ETag": f'"{part.etag}"'})

    def _upload_part_copy(self, store: MultipartStore, upload: Upload, number: int) -> None:
        src, _ = self._copy_source()
        size = src.st.st_size
        first, count = 0, size
        rng_header = self._headers.get("x-amz-copy-source-range")
        if rng_header:
            rng = conditions.parse_range(rng_header, size)
            if rng is None:
                raise invalid_argument("The x-amz-copy-source-range value must be of the form bytes=first-last")
            first, count = rng[0], rng[1] - rng[0] + 1
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
        upload = self._upload(key, q)
        listed = s3xml.parse_complete(self._read_small_body(ctx))
        _, etag, st = self._store().complete(upload, listed)
        self.state.etags.put(identity(st), etag)
        host = self._headers.get("host", "localhost")
        self._send_xml(
            s3xml.document(
                "CompleteMultipartUploadResult",
                [
                    el("Location", f"http://{host}/{bucket.name}/{quote(key)}"),
                    el("Bucket", bucket.name),
                    el("Key", key),
                    el("ETag", f'"{etag}"'),
                ],
            )
        )

    def _abort_upload(self, bucket: Bucket, key: str, q: dict[str, str]) -> None:
        upload = self._upload(key, q)
        self._store().abort(upload)
        self._send(204)

    def _list_parts(self, bucket: Bucket, key: str, q: dict[str, str]) -> None:
        upload = self._upload(key, q)
        try:
            marker = int(q.get("part-number-marker", "0") or 0)
            max_parts = min(int(q.get("max-parts", "1000")), 1000)
        except ValueError:
            raise invalid_argument("part-number-marker and max-parts must be integers") from None
        with upload.lock:
            parts = sorted((p for p in upload.parts.values() if p.number > marker), key=lambda p: p.number)
        page, truncated = parts[:max_parts], len(parts) > max_parts
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
            el("PartNumberMarker", marker),
            el("NextPartNumberMarker", page[-1].number if page else marker),
            el("MaxParts", max_parts),
            el("IsTruncated", "true" if truncated else "false"),
        ]
        self._send_xml(s3xml.document("ListPartsResult", head + items))

    def _list_uploads(self, bucket: Bucket, q: dict[str, str]) -> None:
        store = self.state.multipart if bucket.writable else None
        prefix = q.get("prefix", "")
        uploads = [u for u in (store.uploads() if store else []) if u.key.startswith(prefix)]
        items = [
            "<Upload>"
            + el("Key", u.key)
            + el("UploadId", u.upload_id)
            + el("StorageClass", "STANDARD")
            + el("Initiated", s3xml.iso8601(u.created))
            + "</Upload>"
            for u in uploads[:1000]
        ]
        head = [el("Bucket", bucket.name), el("Prefix", prefix), el("MaxUploads", 1000), el("IsTruncated", "true" if len(uploads) > 1000 else "false")]
        self._send_xml(s3xml.document("ListMultipartUploadsResult", head + items))

