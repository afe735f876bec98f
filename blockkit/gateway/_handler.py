"""The HTTP request handler: addressing, framing checks, auth and routing to the S3 operations.

The operations live by their seams: `bucket_ops` (listings), `object_ops` (single objects),
`multipart_ops` (multipart uploads), all on `exchange` (reading bodies, sending answers);
listing pages are pure functions in `listing`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import secrets
import sys
import time
import traceback
from typing import Callable

from blockkit.gateway import _s3xml as s3xml
from blockkit.gateway._bucket_ops import BucketOps
from blockkit.gateway._buckets import Bucket, decode_key, key_too_long
from blockkit.gateway._errors import S3Error, access_denied, not_implemented
from blockkit.gateway._exchange import DIGITS, MAX_PRINTED_TRACEBACKS
from blockkit.gateway._multipart_ops import MultipartOps
from blockkit.gateway._sigv4 import SignatureContext

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


def request_timeout() -> S3Error:
    """400 RequestTimeout: the client sent nothing for the idle timeout."""
    return S3Error(400, "RequestTimeout", "Your socket connection to the server was not read from or written to within the timeout period.")


# File-system errors a hostile or mistaken request can cause, as the S3 errors they are.
_OS_ERRORS: dict[int, Callable[[], S3Error]] = {
    errno.ENAMETOOLONG: lambda: key_too_long("a file or folder name of this key is too long for the folder's file system"),
    errno.EFBIG: lambda: S3Error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum file size of the output folder."),
    errno.ELOOP: lambda: access_denied("the key goes through a symlink the gateway does not follow"),
}


class S3Handler(BucketOps, MultipartOps):
    """Serves one connection; each request is dispatched to an S3 operation."""

    protocol_version = "HTTP/1.1"
    server_version = "blockkit-gateway"

    def version_string(self) -> str:
        """The Server header."""
        return self.server_version

    # -- plumbing ---------------------------------------------------------

    def setup(self) -> None:
        """Every read and write of the connection waits at most the gateway's idle timeout."""
        self.timeout = self.state.idle_timeout  # type: ignore[misc]  # stdlib: a class attribute read in setup()
        super().setup()

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
        except TimeoutError:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_error(request_timeout(), self.path)
        except OSError as exc:
            known = _OS_ERRORS.get(exc.errno or 0)
            if known is None:
                self._internal_error()
            else:
                self._send_error(known(), self.path)
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
        self.state.internal_errors += 1  # (a lost count between threads only prints one more)
        if self.state.internal_errors <= MAX_PRINTED_TRACEBACKS:
            traceback.print_exc(file=sys.stderr)
            if self.state.internal_errors == MAX_PRINTED_TRACEBACKS:
                print(f"blockkit gateway: {MAX_PRINTED_TRACEBACKS} internal errors printed; later ones are only "
                      "counted (status 500 in the access log)", file=sys.stderr, flush=True)
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
            if len(values) != 1 or not DIGITS.fullmatch(next(iter(values))):
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

    # -- request bodies ---------------------------------------------------

    # -- routing ----------------------------------------------------------

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

    # -- reads ------------------------------------------------------------

    # -- writes -----------------------------------------------------------

    # -- multipart --------------------------------------------------------


