"""Running the gateway as a child process beside a block (the process engine's sidecar)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Mapping
from urllib.parse import urlsplit

from blockkit.gateway._errors import GatewayStartError
from blockkit.gateway._sigv4 import Credentials

# Fixed, well-known keys when auth is off (Pachyderm does the same): clients need *some* keys to sign.
SIDECAR_CREDENTIALS = Credentials("blockkit", "blockkit-secret")
DEFAULT_REGION = "us-east-1"


def client_env(endpoint: str, credentials: Credentials = SIDECAR_CREDENTIALS, region: str = DEFAULT_REGION) -> dict[str, str]:
    """Environment that points boto3, the AWS CLI, s3fs/fsspec and GDAL at a gateway endpoint."""
    hostport = urlsplit(endpoint).netloc
    return {
        "S3_ENDPOINT": endpoint,
        "AWS_ENDPOINT_URL": endpoint,  # boto3 >= 1.28.57, AWS CLI
        "AWS_ENDPOINT_URL_S3": endpoint,
        "FSSPEC_S3_ENDPOINT_URL": endpoint,  # s3fs via fsspec's config-from-environment
        "AWS_ACCESS_KEY_ID": credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_S3_ADDRESSING_STYLE": "path",
        "AWS_EC2_METADATA_DISABLED": "true",  # never wait on an instance-metadata lookup
        # GDAL /vsis3/: host:port without scheme, plain HTTP, path-style.
        "AWS_S3_ENDPOINT": hostport,
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


@dataclass
class GatewayProcess:
    """A gateway running as `python -m blockkit.gateway`; stop() ends it."""

    process: subprocess.Popen[bytes]
    endpoint: str
    credentials: Credentials
    region: str = DEFAULT_REGION
    _log: IO[bytes] | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """Environment variables for the block next to this gateway."""
        return client_env(self.endpoint, self.credentials, self.region)

    def stop(self, timeout: float = 10.0) -> int:
        """Terminate the gateway (it aborts unfinished uploads); returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_gateway_subprocess(
    inputs: Mapping[str, Path],
    output: Path | None,
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    credentials: Credentials | None = None,
    python: str = sys.executable,
    startup_timeout: float = 30.0,
) -> GatewayProcess:
    """Start a gateway child process on a free loopback port; its stderr and access log go to log_path.

    Args:
        inputs: bucket name -> folder, each served read-only.
        output: the folder served as the writable `out` bucket, or None.
        log_path: the file the child's stderr and access log are appended to.
        host: the address to listen on (loopback).
        port: the port (0: a free one, read back from the child).
        credentials: access/secret key requests must be signed with (passed through the
            environment, never argv), or None for no authentication.
        python: the interpreter that runs the child.
        startup_timeout: seconds to wait for the child to print its endpoint.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "blockkit.gateway", "--host", host, "--port", str(port), "--access-log", str(log_path.resolve())]
    for name, folder in inputs.items():
        cmd += ["--input", f"{name}={Path(folder).resolve()}"]
    if output is not None:
        cmd += ["--output", str(Path(output).resolve())]
    env = dict(os.environ)
    if credentials is not None:
        # Through the environment, not argv: other users can read a process's arguments.
        env["BLOCKKIT_GATEWAY_ACCESS_KEY"] = credentials.access_key
        env["BLOCKKIT_GATEWAY_SECRET_KEY"] = credentials.secret_key
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the handle
    # From "/": `-m` puts the working folder first on the import path (a block's folder, perhaps).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd="/")
    assert proc.stdout is not None
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(startup_timeout)
    endpoint = line[0].decode().strip() if line else ""
    if not endpoint.startswith("http"):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
        raise GatewayStartError(f"the gateway did not start: {tail[0] if tail else 'no output'} (log: {log_path})")
    return GatewayProcess(proc, endpoint, credentials or SIDECAR_CREDENTIALS, _log=log)
