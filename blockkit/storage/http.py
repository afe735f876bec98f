"""HTTP(S) sources: a pooled session, status codes mapped to retry/not-retry, streamed bodies."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from blockkit.storage.errors import AccessDenied, SourceNotFound, StorageError
from blockkit.storage.transfer import CHUNK, Opener, RetryPolicy, TransientError, public_url, with_retries

TIMEOUT = (10, 60)  # connect, read (seconds between bytes)
MAX_JSON_BYTES = 64 * 1024 * 1024


def session(auth: tuple[str, str] | None = None, pool: int = 16) -> Any:
    """A requests Session with a connection pool sized for parallel downloads."""
    import requests
    from requests.adapters import HTTPAdapter

    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool, pool_maxsize=pool, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    # identity: Content-Length is then the number of bytes we receive, so truncation shows
    s.headers.update({"Accept-Encoding": "identity", "User-Agent": "blockkit"})
    if auth:
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


def _get(sess: Any, url: str, stream: bool) -> Any:
    import requests

    try:
        resp = sess.get(url, stream=stream, timeout=TIMEOUT)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientError(f"{type(exc).__name__}") from exc
    check_status(resp, url)
    return resp


def opener(sess: Any, url: str) -> Opener:
    """An opener for transfer.Download: GET url and stream its body."""

    def open_() -> tuple[int | None, Iterable[bytes]]:
        resp = _get(sess, url, stream=True)
        length = resp.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() and not resp.headers.get("Content-Encoding") else None

        def chunks() -> Iterable[bytes]:
            import requests

            try:
                yield from resp.iter_content(CHUNK)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise TransientError(f"connection broke mid-body ({type(exc).__name__})") from exc
            finally:
                resp.close()

        return declared, chunks()

    return open_


def content_type(sess: Any, url: str) -> str:
    """The Content-Type a HEAD request reports, or '' when HEAD fails (the GET will tell why)."""
    import requests

    try:
        resp = sess.head(url, timeout=TIMEOUT, allow_redirects=True)
    except requests.RequestException:
        return ""
    resp.close()
    return str(resp.headers.get("Content-Type", "")) if resp.status_code < 400 else ""


def get_bytes(sess: Any, url: str, policy: RetryPolicy, limit: int = MAX_JSON_BYTES) -> tuple[bytes, str]:
    """GET a (small) document with retries; returns its bytes and content type."""

    def once() -> tuple[bytes, str]:
        import requests

        resp = _get(sess, url, stream=True)
        try:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                return b"", resp.headers.get("Content-Type", "")
            body = resp.raw.read(limit + 1, decode_content=True)
            if length and length.isdigit() and len(body) < int(length):
                raise TransientError(f"truncated: got {len(body)} of {length} bytes")
            return body, resp.headers.get("Content-Type", "")
        except requests.RequestException as exc:
            raise TransientError(type(exc).__name__) from exc
        except Exception as exc:  # noqa: BLE001 - urllib3 protocol errors while reading
            if isinstance(exc, TransientError):
                raise
            raise TransientError(f"{type(exc).__name__}") from exc
        finally:
            resp.close()

    return with_retries(once, policy, public_url(url))


def get_json(sess: Any, url: str, policy: RetryPolicy) -> Any:
    """GET and parse a JSON document with retries."""
    body, _ = get_bytes(sess, url, policy)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise StorageError(f"{public_url(url)}: not JSON ({exc})") from exc
