"""The one Docker client module: connecting to the daemon and its errors (used by the engine and builds)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from blockkit.contract.errors import DockerError, DockerUnavailableError, ImageMissingError, ManifestError
from blockkit.runner._isolation import Watchdog

if TYPE_CHECKING:  # the docker SDK is an optional dependency
    import docker


def docker_client(timeout: float = 120.0) -> "docker.DockerClient":
    """Return a client connected to a live daemon, or raise DockerUnavailableError."""
    try:
        import docker
    except ImportError as exc:
        raise DockerUnavailableError(
            "the docker SDK is not installed: pip install 'blockkit-eo[docker]'"
        ) from exc
    try:
        client = _from_env(int(timeout))
    except Exception as exc:  # noqa: BLE001 - any failure here means no usable daemon
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise DockerUnavailableError(
            f"no Docker daemon answers at {where}; start one "
            "(as root: bash .ci/docker-setup.sh) or use --engine process"
        ) from exc
    return client


def connect_if_available(timeout: float = 2.0) -> "docker.DockerClient | None":
    """A client of a daemon that answers within `timeout` seconds, else None (no exception)."""
    # The environment as it is now: a question left behind after its timeout must never read a
    # DOCKER_HOST set later and talk to another daemon.
    environment = dict(os.environ)
    host = environment.get("DOCKER_HOST", "")
    # Without DOCKER_HOST the SDK talks to the default socket: no socket, no daemon.
    if not host and not Path("/var/run/docker.sock").exists():
        return None
    answer: list[Any] = []

    def ask() -> None:
        try:
            # The client asks the daemon for its API version as it is made: that is the question.
            answer.append(_from_env(max(1, int(timeout)), environment))
        except Exception:  # noqa: BLE001 - "not available" is the answer to any failure
            answer.append(None)

    # The socket timeout bounds each read, not the answer: a daemon (or anything on its socket)
    # sending a byte now and then would hold the question for ever. It gets `timeout` in all.
    asking = threading.Thread(target=ask, name="docker-probe", daemon=True)
    asking.start()
    asking.join(timeout + 0.5)
    client = answer[0] if answer else None
    if client is None:
        return None
    # The short timeout was for the question; steps and builds need a patient client.
    client.api.timeout = 120
    return client


#: An API version as a daemon's `Api-Version` header gives it (anything else: ask `/version`).
_API_VERSION = re.compile(r"^1\.[0-9]{1,3}$")


def _from_env(timeout: int, environment: dict[str, str] | None = None) -> "docker.DockerClient":
    """A client of the daemon the environment names, speaking the daemon's API version.

    The SDK's own way (`version="auto"`) asks `/version`, which Docker 20.10 answers in about
    5 ms (it asks containerd for its version too): a run asks once, so that was 5 ms of each
    run. `/_ping` answers in under 1 ms and carries the version in its `Api-Version` header.
    A daemon that sends no such header, or something else in it, is asked the SDK's way; one
    that does not answer raises, as the SDK does. Over ssh:// the SDK's way too: a second
    client would be a second ssh connection. Both clients read `environment` (default: the
    process's now), so they talk to one daemon even if DOCKER_HOST changes meanwhile.
    """
    import docker
    from docker.constants import MINIMUM_DOCKER_API_VERSION

    env = dict(os.environ) if environment is None else environment
    if env.get("DOCKER_HOST", "").startswith("ssh://"):
        return _local(docker.from_env(timeout=timeout, version="auto", environment=env))  # one ssh connection, not two
    probe = docker.from_env(timeout=timeout, version=MINIMUM_DOCKER_API_VERSION, environment=env)
    try:
        answer = probe.api.get(f"{probe.api.base_url}/_ping", timeout=timeout)
        answer.raise_for_status()
        version = answer.headers.get("Api-Version", "")
    finally:
        probe.close()
    return _local(docker.from_env(timeout=timeout, version=version if _API_VERSION.fullmatch(version) else "auto",
                                  environment=env))


def _local(client: "docker.DockerClient") -> "docker.DockerClient":
    """A client of a daemon on a unix socket does not look up proxies and .netrc before each request.

    The SDK's HTTP session does by default (`trust_env`): a scan of the whole environment per
    request, a tenth of what the runner itself spends on a short container. No proxy applies to
    a unix socket; a daemon reached over tcp:// keeps the default.
    """
    if str(getattr(client.api, "base_url", "")).startswith("http+docker://localhost"):
        client.api.trust_env = False
    return client


def docker_available(timeout: float = 2.0) -> bool:
    """Tell quickly whether a Docker daemon answers."""
    client = connect_if_available(timeout)
    if client is None:
        return False
    client.close()
    return True


def error_line(exc: BaseException) -> str:
    """One line for a docker error: the daemon's own words (APIError.explanation), not the HTTP status and URL."""
    text = str(getattr(exc, "explanation", None) or exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def image_manifest(image: str, client: "docker.DockerClient | None" = None) -> dict[str, Any]:
    """The UP42 manifest an image carries in its `up42_manifest` label (a step given by image)."""
    import docker

    own = client is None
    client = client or docker_client(timeout=30)
    try:
        labels = client.images.get(image).labels or {}
    except docker.errors.ImageNotFound:
        raise ImageMissingError(f"image {image} does not exist locally; build or pull it first") from None
    except docker.errors.APIError as exc:
        raise DockerError(f"cannot inspect image {image}: {error_line(exc)}") from exc
    finally:
        if own:
            client.close()
    if "up42_manifest" not in labels:
        raise ManifestError(f"image {image} has no up42_manifest label (images made by `blockkit build` have one)")
    try:
        data = json.loads(labels["up42_manifest"])
    except ValueError as exc:
        raise ManifestError(f"the up42_manifest label of image {image} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"the up42_manifest label of image {image} is not a JSON object")
    return data


#: The label every container a blockkit runner starts carries (the orphan sweep looks for it).
CONTAINER_LABEL = "blockkit"


def owner_labels() -> dict[str, str]:
    """Labels naming the runner that owns a container: host, process namespace and pid."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""  # no /proc: such containers are never swept as orphans
    return {CONTAINER_LABEL: "1", "blockkit.host": socket.gethostname(), "blockkit.pidns": pidns,
            "blockkit.pid": str(os.getpid())}


#: The /etc/hosts of a container without network, as `--network none` writes it (Docker writes
#: none when the network is disabled): localhost and the IPv6 names.
HOSTS_TEXT = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
              "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")


@contextlib.contextmanager
def hosts_file(folder: Path, name: str) -> Iterator[Path]:
    """A container's own /etc/hosts in `folder`, removed on leaving (after the container is).

    `folder` is beside the container's output folder: the daemon sees the run folder already,
    wherever it runs (a file of the runner's installation may not be there). One file per
    container, 0644 whatever the umask (the block runs as another user), never written through
    a planted link.
    """
    path = folder / f".blockkit-hosts-{name}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, HOSTS_TEXT.encode())
    finally:
        os.close(fd)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def no_network(mounts: list[Any], hosts: Path | None) -> dict[str, Any]:
    """Container settings for a network namespace of its own with only loopback; `mounts` plus `hosts` at /etc/hosts.

    `network_disabled` leaves the namespace to runc: Docker 20.10 then makes no network sandbox
    and adds no prestart hook (a run of dockerd's own binary per container), so the container
    starts in about 55 ms here instead of 130 ms with `--network none`, whose namespace is the
    same: loopback up, nothing else. Docker then writes no /etc/hosts, so `hosts_file` gives it
    one, read-only (None: none, for a container that resolves no name). Such a container
    cannot join another's namespace (Docker then ignores `container:`): see `join_network`.
    """
    from docker.types import Mount

    extra = [Mount("/etc/hosts", str(hosts), type="bind", read_only=True)] if hosts is not None else []
    return {"network_mode": "none", "network_disabled": True, "mounts": [*mounts, *extra]}


def join_network(container: str, mounts: list[Any], hosts: Path | None) -> dict[str, Any]:
    """Container settings for joining `container`'s network namespace (a sidecar's), with its own /etc/hosts.

    `network_disabled` must be False here: with it Docker would ignore `container:` and give
    the container an empty namespace of its own, without a word.
    """
    return {**no_network(mounts, hosts), "network_mode": f"container:{container}", "network_disabled": False}


def helper_container_options(role: str, step: str, pids: int, mounts: list[Any] | None = None,
                             hosts: Path | None = None) -> dict[str, Any]:
    """Settings of a container started beside a step (the S3 sidecar), with `mounts` and its /etc/hosts.

    No network of its own (see `no_network`), hardened like a step, and labelled with its
    owner, role and step, so that the runner's watchdog and the orphan sweep find it.
    """
    return {**no_network(mounts or [], hosts), "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
            "pids_limit": pids, "labels": {**owner_labels(), "blockkit.role": role, "blockkit.step": step}}


_WATCHDOGS: dict[tuple[int, str], Watchdog] = {}
_WATCHDOGS_LOCK = threading.Lock()


def watch_owned_containers() -> None:
    """Make sure a watchdog removes this process's containers if it dies, even by kill -9.

    One per process and daemon, started before its first container: it finds them by their
    owner labels, so a container costs no process of its own. It is never told to stop: when
    the process ends, it looks once more and finds nothing left, or what an error left behind.
    """
    address = _daemon_address()
    if address is None:
        return  # a daemon over TLS or ssh: the next run's orphan sweep removes them
    key = (os.getpid(), address)
    with _WATCHDOGS_LOCK:
        if key not in _WATCHDOGS:
            _WATCHDOGS[key] = Watchdog.for_containers(address, owner_labels())


def _daemon_address() -> str | None:
    """Where the watchdog reaches the daemon: its unix socket's path, or `tcp:HOST:PORT` for a
    plain tcp:// daemon; None for one over TLS (DOCKER_TLS_VERIFY or DOCKER_CERT_PATH set, as the
    SDK decides) or ssh, which the watchdog's few lines of standard library do not speak."""
    socket_path = _docker_socket()
    if socket_path is not None:
        return socket_path
    host = os.environ.get("DOCKER_HOST", "")
    if not host.startswith("tcp://") or os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH"):
        return None
    netloc = host[len("tcp://"):].split("/", 1)[0]
    name, _, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    if not name or not port.isdigit():
        name, port = netloc, "2375"  # the daemon's plain port when none is given
    return f"tcp:{name.strip('[]')}:{port}"


def _docker_socket() -> str | None:
    """The daemon's unix socket path, when the client talks to one (None for tcp:// hosts)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://"):]
    if not host and Path("/var/run/docker.sock").exists():
        return "/var/run/docker.sock"
    return None
