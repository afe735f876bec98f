"""Fixtures: real folders, a real gateway on loopback, real clients."""

from __future__ import annotations

import hashlib
import http.client
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockkit.gateway import Credentials, Gateway

KEYS = Credentials("test-access", "test-secret-key")


@dataclass
class Served:
    """A running gateway and the folders behind it."""

    gateway: Gateway
    root: Path
    input: Path
    output: Path
    access_log: Path

    @property
    def endpoint(self) -> str:
        return self.gateway.endpoint


def raw(served: Served, method: str, path: str, body: bytes = b"",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request sent as written (no SDK in between): status, headers (lower-case names), body."""
    host, port = served.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def snapshot(root: Path, exclude: Path | None = None) -> dict[str, tuple[int, str]]:
    """Every file under root (except under `exclude`) with its size and MD5."""
    out = {}
    for path in sorted(root.rglob("*")):
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = (path.stat().st_size, hashlib.md5(path.read_bytes()).hexdigest())
        elif path.is_dir():
            out[str(path.relative_to(root)) + "/"] = (0, "")
    return out


def make_input(folder: Path) -> None:
    """A small input tree with nested folders, odd names and a 3 MB file."""
    (folder / "scenes" / "2024").mkdir(parents=True)
    (folder / "scenes" / "2024" / "a.tif").write_bytes(b"A" * 1000)
    (folder / "scenes" / "2024" / "b.tif").write_bytes(b"B" * 2000)
    (folder / "scenes" / "meta.json").write_text('{"id": 1}')
    (folder / "scenes-list.txt").write_text("a\nb\n")
    (folder / "with space+plus ü.txt").write_text("odd name")
    (folder / "data.json").write_text('{"type": "FeatureCollection", "features": []}')
    (folder / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    for i in range(25):
        (folder / "many" / f"f{i:03d}.txt").parent.mkdir(exist_ok=True)
        (folder / "many" / f"f{i:03d}.txt").write_text(str(i))


def _serve(tmp_path: Path, credentials: Credentials | None, **options: object) -> Served:
    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    out.mkdir()
    make_input(inp)
    (tmp_path / "outside.txt").write_text("must never change")
    log = tmp_path / "logs" / "access.log"
    gw = Gateway({"input": inp}, out, credentials=credentials, access_log=log, **options)  # type: ignore[arg-type]
    gw.start()
    return Served(gw, tmp_path, inp, out, log)


@pytest.fixture
def served(tmp_path: Path):
    """A gateway with auth off over a fresh input and output folder."""
    s = _serve(tmp_path, None)
    yield s
    s.gateway.stop()


@pytest.fixture
def served_small_parts(tmp_path: Path):
    """A gateway with auth off and no minimum part size (min_part_size=0), for tests with tiny parts."""
    s = _serve(tmp_path, None, min_part_size=0)
    yield s
    s.gateway.stop()


@pytest.fixture
def served_auth(tmp_path: Path):
    """A gateway that requires SigV4 with KEYS."""
    s = _serve(tmp_path, KEYS)
    yield s
    s.gateway.stop()


def client(endpoint: str, credentials: Credentials = Credentials("anything", "anything"), **config: object):
    """A boto3 S3 client for an endpoint."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, **config),
    )


@pytest.fixture
def s3(served: Served):
    """boto3 against the auth-off gateway."""
    return client(served.endpoint)
