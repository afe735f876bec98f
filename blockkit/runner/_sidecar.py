"""The S3 gateway beside a step: a loopback subprocess (process engine) or a sidecar container (docker)."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from blockkit.contract.errors import GatewayStartError
from blockkit.gateway._exchange import ACCESS_LOG_LIMIT
from blockkit.runner._logfilter import shared_log
from blockkit.runner._run_folder import gateway_log_path

if TYPE_CHECKING:
    from blockkit.runner._engine import StepSpec

if TYPE_CHECKING:  # the docker SDK is an optional dependency
    import docker

GATEWAY_PORT = 9000


def gateway_buckets(spec: StepSpec, upstream: list[str]) -> dict[str, Path]:
    """Read-only buckets: `input` (the step's input folder) and one per upstream step."""
    buckets = {"input": spec.input_dir}
    for name in upstream:
        buckets[name] = spec.upstream_dirs.get(name) or (
            spec.input_dir / name if len(upstream) > 1 else spec.input_dir
        )
    return buckets


@contextlib.contextmanager
def process_gateway(spec: StepSpec, upstream: list[str]) -> Iterator[dict[str, str]]:
    """Run a gateway on a free loopback port for the step; yields the env the block gets."""
    from blockkit.gateway import start_gateway_subprocess

    log = gateway_log_path(spec.log_path)
    handle = start_gateway_subprocess(gateway_buckets(spec, upstream), spec.output_dir, log)
    try:
        yield handle.env()
    finally:
        handle.stop()


@contextlib.contextmanager
def docker_gateway(
    spec: StepSpec, upstream: list[str], image: str, client: docker.DockerClient
) -> Iterator[dict[str, str]]:
    """Start a gateway container (the block's own image has blockkit) whose network the block joins."""
    from docker.types import Mount

    from blockkit.runner._docker_client import hosts_file, watch_owned_containers

    mounts, args = [], ["python", "-m", "blockkit.gateway", "--host", "127.0.0.1", "--port", str(GATEWAY_PORT)]
    for name, folder in gateway_buckets(spec, upstream).items():
        target = f"/buckets/{name}"
        mounts.append(Mount(target, str(Path(folder).resolve()), type="bind", read_only=True))
        args += ["--input", f"{name}={target}"]
    mounts.append(Mount("/buckets-out", str(spec.output_dir.resolve()), type="bind", read_only=False))
    log = gateway_log_path(spec.log_path)
    # The access log goes to the container's stderr so that container.logs() keeps it in <step>.gateway.log
    # (a file inside the sidecar is lost when the container is removed).
    args += ["--output", "/buckets-out", "--access-log", "/dev/stderr"]
    container_name = f"blockkit-s3-{spec.name}-{secrets.token_hex(3)}"
    watch_owned_containers()  # a killed runner's sidecar is removed with its step container
    with hosts_file(spec.output_dir.parent, container_name) as hosts:
        yield from _run_sidecar(spec, image, client, container_name, args, mounts, hosts, log)


def _run_sidecar(spec: StepSpec, image: str, client: docker.DockerClient, container_name: str, args: list[str],
                 mounts: list[Any], hosts: Path, log: Path) -> Iterator[dict[str, str]]:
    """Start the sidecar container, yield the block's environment while it serves, then remove it."""
    import docker

    from blockkit.gateway import client_env
    from blockkit.runner._docker_client import error_line, helper_container_options

    try:
        container: Any = client.containers.run(
            spec.image_id or image, args, name=container_name, detach=True,  # the step's very image
            user="1000:1000" if _host_is_root() else None,
            # Hardened like a step: the block shares this container's network namespace.
            **helper_container_options("s3-gateway", spec.name, pids=256, mounts=mounts, hosts=hosts),
        )
    except docker.errors.DockerException as exc:
        # `run` is create + start: a container that was created but could not start is removed here.
        with contextlib.suppress(docker.errors.DockerException):
            client.containers.get(container_name).remove(force=True)
        raise GatewayStartError(_why(f"the S3 gateway sidecar could not start in {image}: {error_line(exc)}")) from exc
    try:
        _wait_listening(container, image)
        spec.network_container = container.id
        yield client_env(f"http://127.0.0.1:{GATEWAY_PORT}")
    finally:
        spec.network_container = None
        with contextlib.suppress(Exception):
            _append_sidecar_log(log, container.logs(stream=True, follow=False))
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def _append_sidecar_log(log: Path, chunks: Iterable[bytes], limit: int = ACCESS_LOG_LIMIT) -> None:
    """Append a sidecar's log to `<step>.gateway.log`, within one access log's limit for the whole file.

    Each sidecar bounds its own log, but writes it to a pipe, not to this file: the sidecars
    of a scattered step's parts would each add their limit. So the file is appended to under
    its lock, in pieces (never the whole log in memory), and what would pass the limit is
    counted in a closing record instead.
    """
    with shared_log(log) as shared, shared.lock, log.open("ab") as out:
        room = limit - out.tell()
        left_out = 0
        for chunk in chunks:
            if left_out or len(chunk) > room:
                left_out += len(chunk)
                continue
            out.write(chunk)
            room -= len(chunk)
        if left_out:
            note = {"note": f"{left_out} bytes of this sidecar's log left out: the step's gateway log holds {limit} "
                            "bytes at most", "left_out_bytes": left_out}
            out.write(json.dumps(note, separators=(",", ":")).encode() + b"\n")


def _host_is_root() -> bool:
    import os

    return os.getuid() == 0


def _wait_listening(container: Any, image: str, timeout: float = 30.0) -> None:
    """Wait until the sidecar prints its endpoint; GatewayStartError (one line) when it stops or hangs."""
    import docker

    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            container.reload()
            if container.status != "running":
                raise GatewayStartError(_why(f"the S3 gateway sidecar ({image}) stopped: {_last_line(container.logs())}"))
            if b"http://" in container.logs(stdout=True, stderr=False):
                return
            time.sleep(0.1)
    except docker.errors.DockerException as exc:  # the container vanished, the daemon went away
        raise GatewayStartError(f"the S3 gateway sidecar ({image}) could not be watched: {exc}") from exc
    raise GatewayStartError(f"the S3 gateway sidecar ({image}) did not start listening in {timeout:g} s")


def _last_line(logs: bytes) -> str:
    """The sidecar's last words, as one line (its log file keeps the rest)."""
    lines = [line.strip() for line in logs.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _why(message: str) -> str:
    """The message, plus the likely cause when the image has no `python` or no blockkit."""
    if "No module named" in message or "executable file not found" in message:
        message += (" (the sidecar runs `python -m blockkit.gateway` in the block's own image, "
                    "so that image needs python and blockkit-eo)")
    return message
