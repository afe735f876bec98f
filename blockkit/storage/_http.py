"""HTTP(S) sources: a pooled session, credentials scoped to one origin, status codes mapped, bounded bodies.

Credentials: a key's Basic auth is attached only to requests whose origin (scheme, host, port) is the key's
endpoint, never to other hosts a STAC document names; and never over plain http except to loopback.
Bodies: blockkit asks for `Accept-Encoding: identity`; a compressed answer is refused (it would bypass the
size limits), bodies are read raw, one socket read at a time.
Deadlines: a per-thread watchdog shuts the socket of the request in flight when the file's deadline (or a
document's) passes, so a server that trickles its status line, headers or body (slow loris) cannot hold a
transfer longer than its deadline.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from blockkit.storage._errors import (
    AccessDenied,
    InsecureCredentials,
    SourceNotFound,
    StorageError,
    TooLarge,
    TransferFailed,
    UnsafePath,
)
from blockkit.storage._transfer import (
    CHUNK,
    Opener,
    RetryPolicy,
    TransientError,
    current_deadline,
    public_url,
    with_retries,
)

TIMEOUT = (10, 60)  # connect, read (seconds between bytes)
MAX_JSON_BYTES = 64 * 1024 * 1024
JSON_DEADLINE = 300.0  # seconds for one JSON document (catalog, item, PROPFIND answer)
HEAD_DEADLINE = 30.0  # seconds for the HEAD that asks a plain URL for its Content-Type
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: `webdav(s)` counts as `http(s)`, default ports filled in."""
    parts = urlsplit(url)
    scheme = {"webdav": "http", "webdavs": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme, 0)


class ScopedBasicAuth:
    """Basic auth for one origin: requests to any other scheme, host or port go without credentials."""

    def __init__(self, username: str, password: str, endpoint: str, key_name: str = "") -> None:
        self._auth = (username, password)
        self.origin = origin(endpoint)
        scheme, host, _ = self.origin
        if scheme not in ("http", "https") or not host:
            raise InsecureCredentials(f"key {key_name!r}: endpoint {public_url(endpoint)!r} is not an http(s) URL")
        if scheme == "http" and not is_loopback(host):
            raise InsecureCredentials(
                f"key {key_name!r}: refusing to send credentials over plain http to {host}; use an https endpoint "
                f"(plain http is allowed only for loopback: localhost, 127.0.0.1, ::1)"
            )

    def __call__(self, request: Any) -> Any:
        from requests.auth import HTTPBasicAuth

        if origin(request.url) == self.origin:
            return HTTPBasicAuth(*self._auth)(request)
        request.headers.pop("Authorization", None)
        return request


_local = threading.local()


class Watchdog:
    """Shuts the socket of this thread's request in flight once `seconds` have passed (then `fired` is True)."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: Any = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def start(self) -> "Watchdog":
        """Arm the timer and watch the requests this thread makes from now on."""
        _local.watch = self
        self._timer.start()
        return self

    def attach(self, sock: Any) -> None:
        """Called with the socket a response is about to be read from."""
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stop(self) -> None:
        """Disarm; stop watching this thread's requests."""
        self._timer.cancel()
        if getattr(_local, "watch", None) is self:
            _local.watch = None


def watched(cls: Any) -> Any:
    """A subclass of a urllib3 connection class that reports its socket to this thread's Watchdog before
    each response (also used for botocore's connections, see `_s3.watch_sockets`)."""

    class Watched(cls):  # type: ignore[misc,valid-type]
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            watch = getattr(_local, "watch", None)
            if watch is not None:
                watch.attach(self.sock)
            return super().getresponse(*args, **kwargs)

    return Watched


@functools.lru_cache(maxsize=1)
def _adapter_class() -> Any:
    """An HTTPAdapter whose connections report their socket to this thread's Watchdog before each response."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class WatchedHTTPPool(HTTPConnectionPool):
        ConnectionCls = watched(HTTPConnection)

    class WatchedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = watched(HTTPSConnection)

    class WatchedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}

    return WatchedAdapter


def session(auth: ScopedBasicAuth | None = None, pool: int = 16) -> Any:
    """A requests Session with a connection pool sized for parallel downloads; auth scoped to its origin."""
    import requests

    s = requests.Session()
    adapter = _adapter_class()(pool_connections=pool, pool_maxsize=pool, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    # identity: Content-Length is then the number of bytes we receive, so truncation shows
    s.headers.update({"Accept-Encoding": "identity", "User-Agent": "blockkit"})
    s.max_redirects = 10
    s.trust_env = False  # no ~/.netrc credentials sent to whatever host a document names
    if auth is not None:
        s.auth = auth
    return s


def check_status(resp: Any, url: str) -> None:
    """Raise the error a status code means: 401/403/404 are final, 429/5xx are worth a retry."""
    code = resp.status_code
    if code < 400:
        return
    shown = public_url(url)
    resp.close()
    if code in (401, 403):
        raise AccessDenied(
            f"{shown}: HTTP {code}; the server refused access: give a key with --key NAME or check its permissions"
        )
    if code in (404, 410):
        raise SourceNotFound(f"{shown}: HTTP {code} not found; check the URL")
    if code == 429 or code >= 500:
        raise TransientError(f"HTTP {code}")
    raise StorageError(f"{shown}: HTTP {code}; the request was refused as given")


def check_encoding(resp: Any, url: str) -> None:
    """Refuse a compressed body: blockkit asked for identity, and inflating it would bypass the size limits."""
    encoding = str(resp.headers.get("Content-Encoding", "")).strip().lower()
    if encoding not in ("", "identity"):
        resp.close()
        raise TooLarge(
            f"{public_url(url)}: the server sent Content-Encoding: {encoding} although blockkit asked for identity; "
            f"refusing the compressed body"
        )


def request(sess: Any, method: str, url: str, *, timeout: Any = TIMEOUT, **kwargs: Any) -> Any:
    """One request with transport errors mapped: connection problems are transient, redirect abuse is final.

    Args:
        sess: the requests session (`session`).
        method: the HTTP method.
        url: the URL.
        timeout: (connect, read) seconds.
        kwargs: passed to `requests.Session.request` (headers, data, stream...).
    """
    import requests

    try:
        resp = sess.request(method, url, timeout=timeout, **kwargs)
    except requests.TooManyRedirects as exc:
        raise StorageError(f"{public_url(url)}: more than {sess.max_redirects} redirects (a redirect loop?)") from exc
    except (requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidURL) as exc:
        raise UnsafePath(f"{public_url(url)}: redirected to a URL that is not http(s); refusing to follow it") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientError(f"{type(exc).__name__}") from exc
    except requests.RequestException as exc:
        raise StorageError(f"{public_url(url)}: {type(exc).__name__}") from exc
    check_status(resp, url)
    return resp


def _get(sess: Any, url: str, stream: bool) -> Any:
    resp = request(sess, "GET", url, stream=stream)
    check_encoding(resp, url)
    return resp


def too_slow(url: str, seconds: float | None) -> TransferFailed:
    """The error for a transfer its watchdog cut off (file_deadline)."""
    within = f" within {seconds:g} s" if seconds else ""
    return TransferFailed(f"{public_url(url)}: not finished{within} (file_deadline); the server sends too slowly")


def raw_chunks(resp: Any, size: int = CHUNK, watch: Watchdog | None = None, url: str = "") -> Iterable[bytes]:
    """The body as sent (no decoding), one socket read at a time so slow senders are noticed between reads.

    Args:
        resp: a streamed requests response.
        size: the most bytes of one read.
        watch: the watchdog of this transfer; when it fired, the broken read is reported as too slow.
        url: the URL for messages.
    """
    import requests

    try:
        while True:
            data = resp.raw.read1(size, decode_content=False)
            if not data:
                if watch is not None and watch.fired:
                    raise too_slow(url, None)
                return
            yield data
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        if watch is not None and watch.fired:
            raise too_slow(url, None) from exc
        raise TransientError(f"connection broke mid-body ({type(exc).__name__})") from exc
    except TransferFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - urllib3 protocol/timeout errors while reading
        if watch is not None and watch.fired:
            raise too_slow(url, None) from exc
        raise TransientError(f"{type(exc).__name__}") from exc
    finally:
        if watch is not None:
            watch.stop()
        resp.close()


def opener(sess: Any, url: str) -> Opener:
    """An opener for transfer.Download: GET url and stream its raw body, watched until the file's deadline."""

    def open_() -> tuple[int | None, Iterable[bytes]]:
        deadline = current_deadline()
        watch = Watchdog(deadline - time.monotonic()).start() if deadline is not None else None
        try:
            resp = _get(sess, url, stream=True)
        except BaseException as exc:
            if watch is not None:
                watch.stop()
                if watch.fired:
                    raise too_slow(url, None) from exc
            raise
        length = resp.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        return declared, raw_chunks(resp, watch=watch, url=url)

    return open_


def content_type(sess: Any, url: str) -> str:
    """The Content-Type a HEAD request reports, or '' when HEAD fails (the GET will tell why)."""
    import requests

    watch = Watchdog(HEAD_DEADLINE).start()
    try:
        resp = sess.head(url, timeout=TIMEOUT, allow_redirects=True)
    except requests.RequestException:
        return ""
    finally:
        watch.stop()
    resp.close()
    return str(resp.headers.get("Content-Type", "")) if resp.status_code < 400 else ""


def read_limited(resp: Any, url: str, limit: int, deadline: float = JSON_DEADLINE) -> bytes:
    """A whole (small) body: at most `limit` bytes, within `deadline` seconds, else a final error.

    Args:
        resp: a streamed requests response.
        url: the URL for messages.
        limit: the most bytes accepted (more is TooLarge).
        deadline: seconds for the whole body.
    """
    start = time.monotonic()
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        resp.close()
        raise TooLarge(f"{public_url(url)}: the document is {length} bytes, more than the limit of {limit}")
    out = bytearray()
    for chunk in raw_chunks(resp, 64 * 1024):
        out += chunk
        if len(out) > limit:
            resp.close()
            raise TooLarge(f"{public_url(url)}: the document is more than the limit of {limit} bytes")
        if time.monotonic() - start > deadline:
            resp.close()
            raise TransferFailed(f"{public_url(url)}: not received within {deadline:g} s; the server sends too slowly")
    if length and length.isdigit() and len(out) < int(length):
        raise TransientError(f"truncated: got {len(out)} of {length} bytes")
    return bytes(out)


def get_bytes(sess: Any, url: str, policy: RetryPolicy, limit: int = MAX_JSON_BYTES) -> tuple[bytes, str]:
    """GET a (small) document with retries; returns its bytes and content type.

    Args:
        sess: the requests session (`session`).
        url: the document's URL.
        policy: retries of transient failures.
        limit: the most bytes accepted (more is TooLarge).
    """

    def once() -> tuple[bytes, str]:
        watch = Watchdog(JSON_DEADLINE).start()
        try:
            resp = _get(sess, url, stream=True)
            return read_limited(resp, url, limit), str(resp.headers.get("Content-Type", ""))
        except (TransientError, StorageError) as exc:
            if watch.fired:
                raise TransferFailed(f"{public_url(url)}: not received within {JSON_DEADLINE:g} s") from exc
            raise
        finally:
            watch.stop()

    return with_retries(once, policy, public_url(url))


def get_json(sess: Any, url: str, policy: RetryPolicy) -> Any:
    """GET and parse a JSON document with retries."""
    body, _ = get_bytes(sess, url, policy)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise StorageError(f"{public_url(url)}: not JSON ({type(exc).__name__})") from exc
