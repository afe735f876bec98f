"""Raw-socket attacks on the gateway: nothing is read before auth, framing and keys are checked exactly.

Every answer is an S3 XML error document with a status line, never Python's HTML page, a
traceback or silence. Requests are written byte by byte so that malformed ones reach the server
exactly as an attacker would send them.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
from datetime import datetime, timezone
from urllib.parse import quote

import pytest

from tests.gateway.conftest import KEYS, Served

MB = 1024 * 1024


def _addr(served: Served) -> tuple[str, int]:
    host, port = served.endpoint.removeprefix("http://").split(":")
    return host, int(port)


def _read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (reads to Content-Length)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _exchange(served: Served, request: bytes, check_close: bool = True) -> tuple[int, dict[str, str], bytes, bool]:
    """Send raw bytes; returns status, headers, body and whether the server then closed the connection."""
    with socket.create_connection(_addr(served)) as sock:
        sock.sendall(request)
        status, headers, body = _read_response(sock)
        if not check_close:
            return status, headers, body, False
        sock.settimeout(2)
        try:
            closed = sock.recv(1) == b""
        except (TimeoutError, socket.timeout):
            closed = False
        except ConnectionResetError:
            closed = True
    return status, headers, body, closed


def _code(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    assert text.startswith("<?xml") and "<Error>" in text, text[:200]
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def sign(method: str, path: str, headers: dict[str, bytes], payload_hash: str = "UNSIGNED-PAYLOAD", query: str = "") -> dict[str, bytes]:
    """SigV4 headers for a request, computed over the exact header bytes (AWS's documented algorithm)."""
    now = datetime.now(timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {k.lower(): v for k, v in headers.items()}
    headers["x-amz-date"] = amz_date.encode()
    headers["x-amz-content-sha256"] = payload_hash.encode()
    names = sorted(headers)
    canon_headers = b"".join(n.encode() + b":" + b" ".join(headers[n].strip().split()) + b"\n" for n in names)
    signed = ";".join(names)
    creq = b"\n".join([method.encode(), path.encode(), query.encode(), canon_headers, signed.encode(), payload_hash.encode()])
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq).hexdigest()])
    k = hmac.new(("AWS4" + KEYS.secret_key).encode(), amz_date[:8].encode(), hashlib.sha256).digest()
    for part in ("us-east-1", "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={KEYS.access_key}/{scope}, SignedHeaders={signed}, Signature={sig}".encode()
    return headers


def _request(method: str, path: str, headers: dict[str, bytes], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode()] + [k.encode() + b": " + v for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- nothing is received before authentication --------------------------------------------------


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("length", ["-1", "5000000000", "67108864"])
def test_unauthenticated_upload_is_refused_without_receiving_the_body(served_auth: Served, length: str) -> None:
    """The 403/400 comes right after the headers, the connection is closed, and the body is never read."""
    rss_before = _rss_kb()
    with socket.create_connection(_addr(served_auth)) as sock:
        sock.sendall(f"PUT /out/x HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        status, headers, body = _read_response(sock)  # no body sent yet: the answer must not wait for it
        assert status in (400, 403) and headers.get("connection") == "close"
        assert _code(body) in ("AccessDenied", "InvalidArgument")
        sock.settimeout(2)
        assert sock.recv(1) == b"", "the server kept the connection open"
        # Keep pushing 64 MiB: the server has closed, so the kernel refuses long before that.
        sent = 0
        chunk = b"\0" * MB
        sock.settimeout(5)
        with pytest.raises(OSError):
            for _ in range(64):
                sock.sendall(chunk)
                sent += len(chunk)
            time.sleep(0.5)
            sock.sendall(chunk)
            sock.sendall(chunk)
    assert sent < 32 * MB, f"the server kept receiving ({sent} bytes accepted)"
    assert served_auth.gateway.counters.bytes_in == 0
    assert _rss_kb() - rss_before < 30 * 1024, "the refused body was buffered in memory"
    assert not any(served_auth.output.iterdir())


def test_unauthenticated_small_body_is_not_drained_either(served_auth: Served) -> None:
    status, headers, body, closed = _exchange(served_auth, b"PUT /out/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    assert (status, _code(body)) == (403, "AccessDenied")
    assert headers["connection"] == "close" and closed


@pytest.mark.parametrize("value", ["abc", "-1", "+3", "3, 4", "0x10", "1e3", "99999999999999999999"])
def test_malformed_content_length_is_400_xml_and_closes(served_auth: Served, value: str) -> None:
    status, headers, body, closed = _exchange(
        served_auth, f"PUT /out/x HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\nConnection: close\r\n\r\nxyz".encode()
    )
    assert (status, _code(body)) == (400, "InvalidArgument")
    assert headers["connection"] == "close" and closed


def test_conflicting_content_lengths_and_te_with_cl_are_refused(served_auth: Served) -> None:
    status, _, body, _ = _exchange(served_auth, b"PUT /out/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nxyz")
    assert (status, _code(body)) == (400, "InvalidArgument")
    status, _, body, _ = _exchange(
        served_auth, b"PUT /out/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nxyz"
    )
    assert (status, _code(body)) == (400, "InvalidRequest")
    status, _, body, _ = _exchange(served_auth, b"PUT /out/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert (status, _code(body)) == (501, "NotImplemented")


def test_signed_malformed_content_length_is_400(served_auth: Served) -> None:
    headers = sign("PUT", "/out/x", {"host": b"x", "content-length": b"+3"})
    status, _, body, _ = _exchange(served_auth, _request("PUT", "/out/x", headers, b"xyz"), check_close=False)
    assert (status, _code(body)) == (400, "InvalidArgument")
    assert not (served_auth.output / "x").exists()


@pytest.mark.parametrize(
    ("request_bytes", "status", "s3_code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "BadRequest"),
        (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505, "HttpVersionNotSupported"),
        (b"BREW /out/x HTTP/1.1\r\nHost: x\r\n\r\n", 501, "NotImplemented"),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 501, "NotImplemented"),
        ("M\u00c9THOD / HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"), 501, "NotImplemented"),
        (b"GET /\r\n\r\n", 400, "BadRequest"),  # HTTP/0.9: still a status line and XML
        (b"PUT /out/x\r\n\r\n", 400, "BadRequest"),
    ],
)
def test_malformed_request_lines_get_s3_xml(served_auth: Served, request_bytes: bytes, status: int, s3_code: str) -> None:
    got, headers, body, closed = _exchange(served_auth, request_bytes)
    assert (got, _code(body)) == (status, s3_code)
    assert headers["content-type"] == "application/xml" and closed


def test_oversized_headers_get_s3_xml(served_auth: Served) -> None:
    got, _, body, _ = _exchange(served_auth, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert (got, _code(body)) == (431, "RequestHeaderSectionTooLarge")


# -- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "c" * 256,  # one component over 255 bytes
        "k" * 1024,  # a legal 1024-byte S3 key, but one 1024-byte file name
        "d/" + "\u00e9" * 128,  # 256 bytes of UTF-8 in 128 characters
    ],
)
def test_path_component_over_255_bytes_is_key_too_long(served_auth: Served, key: str) -> None:
    path = "/out/" + quote(key)
    headers = sign("PUT", path, {"host": b"x", "content-length": b"3"})
    status, _, body, _ = _exchange(served_auth, _request("PUT", path, headers, b"xyz"), check_close=False)
    assert (status, _code(body)) == (400, "KeyTooLongError")
    headers = sign("GET", path, {"host": b"x"})
    status, _, body, _ = _exchange(served_auth, _request("GET", path, headers), check_close=False)
    assert (status, _code(body)) == (400, "KeyTooLongError")
    assert not any(served_auth.output.iterdir())


def test_255_byte_components_and_deep_keys_work(served_auth: Served) -> None:
    key = "/".join(["p" * 255, "q" * 255, "r" * 255, "s" * 250])  # 1018 bytes
    path = "/out/" + quote(key)
    headers = sign("PUT", path, {"host": b"x", "content-length": b"3"})
    status, _, _, _ = _exchange(served_auth, _request("PUT", path, headers, b"xyz"), check_close=False)
    assert status == 200
    key = "k" * 1025
    path = "/out/" + quote(key)
    headers = sign("PUT", path, {"host": b"x", "content-length": b"3"})
    status, _, body, _ = _exchange(served_auth, _request("PUT", path, headers, b"xyz"), check_close=False)
    assert (status, _code(body)) == (400, "KeyTooLongError")


@pytest.mark.parametrize("path", ["/out/x%ff", "/out/x%fe", "/out/%c3", "/out/ok/%ed%a0%80", "/input/%ff%fe"])
def test_invalid_utf8_keys_are_refused_not_aliased(served_auth: Served, path: str) -> None:
    for method in ("PUT", "GET", "DELETE"):
        headers = sign(method, path, {"host": b"x", "content-length": b"3" if method == "PUT" else b"0"})
        status, _, body, _ = _exchange(served_auth, _request(method, path, headers, b"FFF" if method == "PUT" else b""), check_close=False)
        assert (status, _code(body)) == (400, "InvalidURI"), method
    assert not any(served_auth.output.iterdir())


def test_invalid_utf8_in_query_is_refused(served_auth: Served) -> None:
    headers = sign("GET", "/out", {"host": b"x"}, query="prefix=%FF")
    status, _, body, _ = _exchange(served_auth, _request("GET", "/out?prefix=%FF", headers), check_close=False)
    assert (status, _code(body)) == (400, "InvalidURI")


def test_utf8_keys_stay_distinct(served_auth: Served) -> None:
    for key, data in (("caf\u00e9", b"nfc"), ("cafe\u0301", b"nfd")):
        path = "/out/" + quote(key)
        headers = sign("PUT", path, {"host": b"x", "content-length": b"3"})
        status, _, _, _ = _exchange(served_auth, _request("PUT", path, headers, data), check_close=False)
        assert status == 200
    assert (served_auth.output / "caf\u00e9").read_bytes() == b"nfc"
    assert (served_auth.output / "cafe\u0301").read_bytes() == b"nfd"


# -- SigV4 over the exact bytes ------------------------------------------------------------------


def test_signed_utf8_header_value_round_trips_bytes_exact(served_auth: Served) -> None:
    value = "caf\u00e9 \u2603".encode()
    headers = sign("PUT", "/out/meta.txt", {"host": b"x", "content-length": b"2", "x-amz-meta-name": value})
    status, resp_headers, body, _ = _exchange(served_auth, _request("PUT", "/out/meta.txt", headers, b"hi"), check_close=False)
    assert status == 200, body
    headers = sign("HEAD", "/out/meta.txt", {"host": b"x"})
    with socket.create_connection(_addr(served_auth)) as sock:
        sock.sendall(_request("HEAD", "/out/meta.txt", headers))
        sock.settimeout(5)
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
    assert b"\r\nx-amz-meta-name: " + value + b"\r\n" in raw


def test_tampered_utf8_header_value_is_refused(served_auth: Served) -> None:
    headers = sign("PUT", "/out/meta.txt", {"host": b"x", "content-length": b"2", "x-amz-meta-name": "caf\u00e9".encode()})
    headers["x-amz-meta-name"] = "caf\u00e8".encode()
    status, _, body, _ = _exchange(served_auth, _request("PUT", "/out/meta.txt", headers, b"hi"), check_close=False)
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch")
