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
