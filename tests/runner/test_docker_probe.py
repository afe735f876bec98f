"""Asking whether a Docker daemon answers takes its timeout at most, whatever sits on the socket."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from blockkit.runner._docker_client import connect_if_available, docker_available
from tests.servers import serve_connections


@pytest.fixture
def dripping_socket(tmp_path: Path):
    """A unix socket that answers one byte every 0.2 s, for ever (each read succeeds: no socket timeout fires)."""
    path = tmp_path / "drip.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
                if stop.wait(0.2):
                    return
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    return

    def handle(conn: socket.socket) -> None:
        connections.append(conn)
        drip(conn)

    serve_connections(server, stop, handle)
    yield path
    stop.set()
    for conn in connections:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.mark.timeout(60)  # a regression hangs: fail it instead
def test_a_daemon_answering_a_byte_at_a_time_is_no_daemon_within_the_timeout(dripping_socket, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dripping_socket}")
    began = time.monotonic()
    assert connect_if_available(timeout=1.0) is None
    assert docker_available(timeout=1.0) is False
    assert time.monotonic() - began < 5.0  # two questions of 1 s each (it never ended before)


class _FakeDaemon:
    """An HTTP server on a unix socket answering `/_ping` and `/version` as told; it records the paths asked."""

    def __init__(self, path: Path, ping_status: int = 200, ping_version: str | None = "1.40",
                 ping_delay: float = 0.0) -> None:
        import http.server
        import socketserver

        self.paths: list[str] = []
        daemon = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                daemon.paths.append(self.path)
                if self.path.endswith("/_ping"):
                    time.sleep(ping_delay)
                    status, body, headers = ping_status, b"OK", {"Api-Version": ping_version} if ping_version else {}
                elif self.path.endswith("/version"):
                    status, body, headers = 200, b'{"ApiVersion": "1.39", "Version": "fake"}', {"Content-Type": "application/json"}
                else:
                    status, body, headers = 404, b"{}", {}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def get_request(self):  # http.server wants a (host, port) client address
                conn, _ = super().get_request()
                return conn, ("local", 0)

        self.server = Server(str(path), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("ping_version", "expected", "asked"), [
    ("1.40", "1.40", ["/_ping"]),  # one light question
    (None, "1.39", ["/_ping", "/version"]),  # no header: the SDK's own question
    ("1.41/../../containers/create", "1.39", ["/_ping", "/version"]),  # never put into a URL
])
def test_the_client_speaks_the_api_version_the_daemons_ping_gives(tmp_path: Path, monkeypatch, ping_version,
                                                                  expected, asked) -> None:
    from blockkit.runner._docker_client import docker_client

    fake = _FakeDaemon(tmp_path / "docker.sock", ping_version=ping_version)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    try:
        for connect in (docker_client, connect_if_available):
            fake.paths.clear()
            client = connect()
            assert client is not None and client.api.api_version == expected
            assert fake.paths == asked
            client.close()
    finally:
        fake.close()


def test_a_question_still_going_talks_to_the_daemon_it_began_with(tmp_path: Path, monkeypatch) -> None:
    """DOCKER_HOST changes while the ping is answered (a test's monkeypatch, a caller's own change): the
    fallback question goes to the same daemon, never to the one named later."""
    first = _FakeDaemon(tmp_path / "first.sock", ping_version=None, ping_delay=0.6)  # no header: /version next
    later = _FakeDaemon(tmp_path / "later.sock")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'first.sock'}")
    switch = threading.Timer(0.2, lambda: monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'later.sock'}"))
    switch.start()
    try:
        client = connect_if_available(timeout=3.0)
        assert client is not None
        client.close()
        assert first.paths == ["/_ping", "/version"]
        assert later.paths == []  # was: ["/version"], the rest of the question sent to another daemon
    finally:
        switch.cancel()
        first.close()
        later.close()


def test_a_daemon_whose_ping_fails_is_no_daemon(tmp_path: Path, monkeypatch) -> None:
    from blockkit.contract.errors import DockerUnavailableError
    from blockkit.runner._docker_client import docker_client

    fake = _FakeDaemon(tmp_path / "docker.sock", ping_status=500)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    try:
        with pytest.raises(DockerUnavailableError, match="no Docker daemon answers"):
            docker_client()
        assert connect_if_available() is None
    finally:
        fake.close()


@pytest.mark.docker
def test_the_real_daemons_api_version_comes_from_its_ping(docker_client) -> None:
    import docker

    from blockkit.runner._docker_client import docker_client as connect

    sdk = docker.from_env(version="auto")  # the SDK's way, /version, of the daemon DOCKER_HOST names
    expected = sdk.api.api_version
    sdk.close()
    client = connect()
    assert client.api.api_version == expected
    assert client.containers.list(limit=1) is not None  # it speaks to the daemon with it
    client.close()
