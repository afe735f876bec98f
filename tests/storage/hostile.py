"""A hostile HTTP/WebDAV/S3 server on loopback: every misbehaviour stage-in must survive, one route each.

Each request is recorded (method, Host header, path, Authorization) so tests can see who got credentials.
"""

from __future__ import annotations

import gzip
import http.server
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.servers import BackgroundHttpServer

Route = Callable[["_Handler"], None]


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    host: str
    path: str
    auth: str | None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _route(self) -> None:
        owner = self.server.owner
        path = self.path.split("?")[0]
        owner.seen.append(Seen(self.command, self.headers.get("Host", ""), self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        for prefix, route in sorted(owner.routes.items(), key=lambda kv: -len(kv[0])):
            if path == prefix or (prefix.endswith("*") and path.startswith(prefix[:-1])):
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return
        self.send(404, b"not here")

    do_GET = do_HEAD = do_PROPFIND = do_PUT = do_MKCOL = _route  # noqa: N815

    def send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """A complete answer with Content-Length."""
        self.send_response(code)
        headers = headers or {}
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@dataclass
class HostileServer(BackgroundHttpServer):
    """Routes (path or `prefix*` -> handler) served on 127.0.0.1; `url_for` gives either loopback name."""

    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "", host: str = "127.0.0.1") -> str:
        """http://<host>:<port><path>."""
        return f"http://{host}:{self.port}{path}"

    def handler(self) -> type[_Handler]:
        """Answers by `routes`, recording every request in `seen`."""
        return _Handler

    def gets(self, path: str) -> list[Seen]:
        """The GET requests for a path."""
        return [s for s in self.seen if s.method == "GET" and s.path.split("?")[0] == path]


# --- route makers ------------------------------------------------------------------------------


def body(data: bytes, content_type: str = "application/octet-stream") -> Route:
    """A plain answer."""
    return lambda h: h.send(200, data, {"Content-Type": content_type})


def gzip_bomb(size: int) -> Route:
    """`size` zero bytes gzip-compressed, sent with Content-Encoding: gzip although identity was asked."""
    packed = gzip.compress(b"\0" * size, compresslevel=9)
    return lambda h: h.send(200, packed, {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"})


def endless(chunk: int = 64 * 1024) -> Route:
    """A body without Content-Length that never ends (until the client goes away)."""

    def route(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        if h.command == "HEAD":
            return
        data = b"x" * chunk
        while True:
            h.wfile.write(data)

    return route


def slow_loris(length: int = 1000, every: float = 0.2) -> Route:
    """Declares `length` bytes and sends one byte every `every` seconds."""

    def route(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        if h.command == "HEAD":
            return
        for _ in range(length):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(every)

    return route


def slow_headers(every: float = 0.2, count: int = 2000) -> Route:
    """Sends its status line and then one header byte every `every` seconds (a slow loris before the body)."""

    def route(h: _Handler) -> None:
        if h.command == "HEAD":  # the GET is the attack (a trickling HEAD is bounded by HEAD_DEADLINE)
            h.send(200, b"", {"Content-Type": "application/octet-stream"})
            return
        h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        h.wfile.flush()
        for _ in range(count):
            h.wfile.write(b"a")
            h.wfile.flush()
            time.sleep(every)

    return route


def redirect(location: str) -> Route:
    """302 to location."""
    return lambda h: h.send(302, b"", {"Location": location})


def status(code: int) -> Route:
    """An error status."""
    return lambda h: h.send(code, b"no")


def endless_webdav() -> Route:
    """PROPFIND: every collection holds one more collection, and never a file."""

    def route(h: _Handler) -> None:
        path = h.path.split("?")[0].rstrip("/") + "/"
        xml = (
            '<?xml version="1.0" encoding="utf-8"?><d:multistatus xmlns:d="DAV:">'
            f"<d:response><d:href>{path}</d:href><d:propstat><d:prop><d:resourcetype><d:collection/>"
            "</d:resourcetype></d:prop></d:propstat></d:response>"
            f"<d:response><d:href>{path}deeper/</d:href><d:propstat><d:prop><d:resourcetype><d:collection/>"
            "</d:resourcetype></d:prop></d:propstat></d:response></d:multistatus>"
        ).encode()
        h.send(207, xml, {"Content-Type": "application/xml"})

    return route


def s3_listing(keys: dict[str, bytes], bucket: str) -> Route:
    """A bare S3 endpoint: ListObjectsV2 of `keys`, HEAD/GET of each, 404 for anything else."""
    import hashlib
    from urllib.parse import parse_qs, unquote, urlsplit

    def route(h: _Handler) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        if path.rstrip("/") == f"/{bucket}" and query.get("list-type"):
            prefix = query.get("prefix", [""])[0]
            contents = "".join(
                f"<Contents><Key>{k}</Key><Size>{len(v)}</Size><ETag>\"{hashlib.md5(v).hexdigest()}\"</ETag></Contents>"
                for k, v in sorted(keys.items()) if k.startswith(prefix)
            )
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(keys)}</KeyCount><MaxKeys>1000</MaxKeys>"
                f"<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
            ).encode()
            h.send(200, xml, {"Content-Type": "application/xml"})
            return
        key = path[len(f"/{bucket}/"):]
        if key in keys:
            data = keys[key]
            h.send(200, data, {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Content-Type": "application/octet-stream"})
            return
        h.send(404, b"<Error><Code>NoSuchKey</Code></Error>", {"Content-Type": "application/xml"})

    return route


def s3_failing_get(bucket: str, key: str, size: int = 10) -> Route:
    """HEAD answers (the object exists); every GET is a 503."""

    def route(h: _Handler) -> None:
        if h.command == "HEAD":
            h.send(200, b"", {"Content-Length": str(size), "ETag": '"0123456789abcdef0123456789abcdef"'})
            return
        h.send(503, b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>",
               {"Content-Type": "application/xml"})

    return route


def s3_endless_listing(bucket: str, per_page: int = 1000) -> Route:
    """ListObjectsV2 that is always truncated, with `per_page` new keys and a new continuation token each page."""
    import itertools
    from urllib.parse import parse_qs, urlsplit

    pages = itertools.count()

    def route(h: _Handler) -> None:
        if not parse_qs(urlsplit(h.path).query).get("list-type"):
            h.send(404, b"<Error><Code>NoSuchKey</Code></Error>", {"Content-Type": "application/xml"})
            return
        n = next(pages)
        contents = "".join(f"<Contents><Key>p/{n}-{i}</Key><Size>1</Size><ETag>\"x\"</ETag></Contents>"
                           for i in range(per_page))
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{bucket}</Name><Prefix>p/</Prefix><KeyCount>{per_page}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>true</IsTruncated><NextContinuationToken>token{n}</NextContinuationToken>{contents}"
            "</ListBucketResult>"
        ).encode()
        h.send(200, xml, {"Content-Type": "application/xml"})

    return route


def stac_catalog_tree(children: int = 50, levels: int = 5, delay: float = 0.0) -> Route:
    """A STAC catalog at every path: each links `children` child catalogs below it (`levels` deep, so
    children ** levels documents), and never an item; each answer waits `delay` seconds."""
    import json

    def route(h: _Handler) -> None:
        time.sleep(delay)
        path = h.path.split("?")[0].removesuffix(".json")
        below = range(children) if path.count("/") < levels else range(0)
        doc = {"type": "Catalog", "stac_version": "1.0.0", "id": "c", "description": "d",
               "links": [{"rel": "child", "href": f"{path}/{i}.json"} for i in below]}
        h.send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    return route
