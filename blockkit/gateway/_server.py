"""The Gateway object: folders in, an S3 endpoint out."""

from __future__ import annotations

import errno
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Mapping, TextIO

from blockkit.gateway._buckets import OUTPUT_BUCKET, Bucket
from blockkit.gateway._errors import GatewayConfigError, GatewayStartError
from blockkit.gateway._etags import ETagCache
from blockkit.gateway._exchange import ACCESS_LOG_LIMIT, AccessLog, Counters, GatewayState
from blockkit.gateway._handler import S3Handler
from blockkit.gateway._multipart import MIN_PART_SIZE, MultipartStore
from blockkit.gateway._sigv4 import Credentials, Verifier

# A connection that sends or takes no byte for this long is closed (a stalled client holds a thread).
IDLE_TIMEOUT = 300.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    state: GatewayState

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up mid-request are routine; report anything else."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class Gateway:
    """An S3 endpoint over folders: each input read-only, `out` the writable output folder."""

    def __init__(
        self,
        inputs: Mapping[str, Path],
        output: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: Credentials | None = None,
        access_log: Path | TextIO | None = None,
        region: str = "us-east-1",
        min_part_size: int = MIN_PART_SIZE,
        access_log_limit: int = ACCESS_LOG_LIMIT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        if min_part_size < 0:
            raise GatewayConfigError("min_part_size must not be negative")
        if idle_timeout <= 0:
            raise GatewayConfigError("idle_timeout must be positive")
        buckets: dict[str, Bucket] = {}
        for name, folder in inputs.items():
            folder = Path(folder)
            if name == OUTPUT_BUCKET:
                raise GatewayConfigError(f"input bucket name {OUTPUT_BUCKET!r} is reserved for the output folder")
            if not folder.is_dir():
                raise GatewayConfigError(f"input {name!r}: {folder} is not a folder")
            buckets[name] = Bucket(name, folder, writable=False)
        out_bucket = None
        if output is not None:
            output = Path(output)
            if output.exists() and not output.is_dir():
                raise GatewayConfigError(f"output {output} exists and is not a folder")
            try:
                output.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise GatewayConfigError(f"output folder {output} cannot be created: {exc.strerror}") from None
            out_bucket = Bucket(OUTPUT_BUCKET, output, writable=True)
            buckets[OUTPUT_BUCKET] = out_bucket
        self.host = host
        self.port = port
        self._log_file: TextIO | None = None
        log: AccessLog | None = None
        if isinstance(access_log, (str, Path)):
            Path(access_log).parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(access_log, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
            log = AccessLog(self._log_file, access_log_limit)
        elif access_log is not None:
            log = AccessLog(access_log, access_log_limit)
        multipart = MultipartStore(out_bucket) if out_bucket else None
        if multipart is not None:
            multipart.min_part_size = min_part_size
        self.state = GatewayState(
            buckets=buckets,
            output=out_bucket,
            multipart=multipart,
            verifier=Verifier(credentials, region) if credentials else None,
            region=region,
            etags=ETagCache(),
            access_log=log,
            counters=Counters(),
            hash_pool=ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-md5"),
            idle_timeout=idle_timeout,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def counters(self) -> Counters:
        """Requests and bytes served so far."""
        return self.state.counters

    @property
    def endpoint(self) -> str:
        """The URL clients use (valid once bound)."""
        if self._server is None:
            raise GatewayStartError("the gateway is not listening yet")
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def bind(self) -> str:
        """Open the listening socket; returns the endpoint URL."""
        if self._server is not None:
            return self.endpoint
        server_cls: type[_Server] = _Server
        if ":" in self.host:
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            server = server_cls((self.host, self.port), S3Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise GatewayStartError(f"port {self.port} on {self.host} is already in use; pick another with --port") from None
            raise GatewayStartError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        server.state = self.state
        self._server = server
        return self.endpoint

    def start(self) -> str:
        """Serve in a background thread; returns the endpoint URL."""
        endpoint = self.bind()
        if self._thread is None:
            assert self._server is not None
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="blockkit-gateway", daemon=True)
            self._thread.start()
        return endpoint

    def serve_forever(self) -> None:
        """Serve in this thread until stop() is called from another one (or KeyboardInterrupt)."""
        self.bind()
        assert self._server is not None
        try:
            self._server.serve_forever()
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving, abort unfinished multipart uploads and close the access log."""
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._close()

    def _close(self) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server = None
        if self.state.multipart is not None:
            self.state.multipart.close()
        self.state.hash_pool.shutdown(wait=False)
        if self.state.access_log is not None:
            self.state.access_log.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "Gateway":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
