"""The Docker engine: each step runs as a locked-down container of its block image.

Exit codes in `StepResult` (beyond the block's own 0..6):
  * 124 -- the step ran past `StepSpec.timeout_s` and was killed (`timed_out=True`),
    like GNU `timeout`;
  * 137 -- the container was killed by the kernel's OOM killer (`oom_killed=True`),
    i.e. OUT_OF_MEMORY; a block that catches MemoryError exits 137 by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator

from blockkit.contract.errors import TIMEOUT_EXIT_CODE, BaseImageMissingError, ExitCode
from blockkit.runner._docker_client import (  # noqa: F401 - re-exported: the engine's errors and client
    CONTAINER_LABEL,
    DockerError,
    DockerUnavailableError,
    ImageMissingError,
    connect_if_available,
    docker_available,
    docker_client,
    error_line,
    helper_container_options,
    hosts_file,
    join_network,
    no_network,
    owner_labels,
    watch_owned_containers,
)
from blockkit.runner._engine import Engine, LogSink, StepResult, StepSpec
from blockkit.runner._logfilter import ErrorLineTracker, LineSplitter, LogFilter, StepLog

if TYPE_CHECKING:  # the docker SDK is an optional dependency
    import docker

    from blockkit.runner._plan import Plan, PlannedStep


INPUT_DIR = "/tmp/input"
OUTPUT_DIR = "/tmp/output"
QUICKLOOK_DIR = "/tmp/quicklooks"
DEFAULT_USER = "1000:1000"
#: Processes (and threads) a step may have: per CPU of its machine type, at least MIN_PIDS.
PIDS_PER_CPU = 256
MIN_PIDS = 512
#: The private /tmp of a step (scratch, HOME): at most this many MB, and half its memory.
MAX_TMP_MB = 4096


def _container_user() -> tuple[str, bool]:
    """The uid:gid the block runs as, and whether output dirs must be handed to it."""
    uid = os.getuid()
    if uid != 0:
        # The host user itself: output files end up owned by whoever ran blockkit.
        return f"{uid}:{os.getgid()}", False
    return DEFAULT_USER, True


class DockerEngine(Engine):
    """Runs each step as a container: read-only input, no network, limits, always removed."""

    name = "docker"
    #: Fan-in: each upstream output is bind-mounted read-only at /tmp/input/<step>/ (no links).
    mounts_upstreams = True
    runs_images = True
    caps_cpu = True

    @property
    def isolates_paths(self) -> bool:
        """Steps see their folders at the contract paths (/tmp/input, ...): fixed-path blocks work."""
        return True

    @property
    def isolation_note(self) -> str:
        """How steps are isolated."""
        return "each step in a container"

    def __init__(
        self,
        client: "docker.DockerClient | None" = None,
        *,
        base_image: str = "blockkit-base:bookworm",
        wheelhouse: Path | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._client = client
        #: Masks secret values in every log line before the log file and the console see it.
        self.redact = redact
        # Used only when a step names a block folder but no image: it is built first.
        self.base_image = base_image
        self.wheelhouse = wheelhouse
        #: Image id -> the daemon's image object (an id's image never changes).
        self._images: dict[str, Any] = {}
        self._images_lock = threading.Lock()
        self._capacity: tuple[float, int] | None = None
        self._capacity_lock = threading.Lock()

    @property
    def client(self) -> "docker.DockerClient":
        """The docker SDK client (connected on first use)."""
        if self._client is None:
            self._client = docker_client()
        return self._client

    def capacity(self) -> tuple[float, int] | None:
        """(CPUs, memory MB) of the Docker daemon's machine (None when it does not say)."""
        with self._capacity_lock:  # asked by the plan's caps and the run's budget: one question
            if self._capacity is None:
                try:
                    info = self.client.info()
                    self._capacity = float(info["NCPU"]), int(info["MemTotal"]) >> 20
                except Exception:  # noqa: BLE001 - no answer: the runner falls back to this host
                    return None
            return self._capacity

    def prepare_images(self, plan: Plan, say: Callable[[str], None]) -> Callable[[PlannedStep], tuple[str, str]]:
        """Build (or reuse) an image per block step up front, so build errors come before any step runs.

        The blocks are checked (and built) at once, a few at a time: checking an up-to-date image
        hashes its build context, most of a run's start. Messages and the first error come in
        the order of the workflow's steps, as if one after another. The daemon's size
        (`capacity`, which the session asks next) is asked meanwhile.
        """
        from concurrent.futures import ThreadPoolExecutor

        from blockkit.runner._build import BuiltImage, build_block_image

        client = self.client  # one connection for builds, lookups and steps
        folders = list(dict.fromkeys(step.block_dir for step in plan.steps if step.block_dir is not None))
        with ThreadPoolExecutor(max_workers=min(4, len(folders)) + 1, thread_name_prefix="image") as pool:
            sizing = pool.submit(self.capacity)  # ~5 ms of the daemon's time, beside the checks (its own worker)
            pending = [pool.submit(build_block_image, folder, client=client) for folder in folders]
            outcomes: list[BuiltImage | BaseException] = []
            for future in pending:
                try:
                    outcomes.append(future.result())
                except BaseException as exc:  # noqa: BLE001 - raised below, in step order
                    outcomes.append(exc)
            sizing.result()  # never raises: no answer is None
        built = dict(zip(folders, outcomes))
        images: dict[str, tuple[str, str]] = {}
        said: set[Path] = set()
        for step in plan.steps:
            if step.block_dir is not None:
                outcome = built[step.block_dir]
                if isinstance(outcome, BaseImageMissingError) and outcome.hints:  # its own Dockerfile's FROM
                    raise BaseImageMissingError(f"step {step.name!r}: {outcome.message}", hints=[
                        *outcome.hints[:1], "then run again: it uses that image", *outcome.hints[1:]]) from None
                if isinstance(outcome, BaseException):
                    raise outcome
                if step.block_dir not in said:
                    said.add(step.block_dir)
                    say(f"image {outcome.tag} ({'built' if outcome.rebuilt else 'up to date'}) for step {step.name!r}")
                images[step.name] = (outcome.tag, outcome.image_id)
            elif step.image:
                images[step.name] = (step.image, str(client.images.get(step.image).id))
        return lambda step: images[step.name]

    def gateway(self, spec: StepSpec, upstream: list[str], image: str | None) -> ContextManager[dict[str, str]]:
        """The S3 gateway as a sidecar container whose network namespace the step joins."""
        from blockkit.runner._sidecar import docker_gateway, process_gateway

        if not image:
            return process_gateway(spec, upstream)
        return docker_gateway(spec, upstream, image, self.client)

    def remove_orphans(self) -> list[str]:
        """Remove containers (steps, sidecars) left by blockkit runners that no longer exist.

        Only a runner of this host and this process namespace can tell that a pid is dead:
        containers of other hosts or namespaces sharing the daemon are never touched.
        """
        # The low-level list: no inspect per container, which fails for one removed meanwhile.
        listed = self.client.api.containers(all=True, filters={"label": [f"{CONTAINER_LABEL}=1"]})
        return self.remove_dead_owners(listed)

    def remove_dead_owners(self, listed: list[dict[str, Any]]) -> list[str]:
        """Remove the containers of `listed` (the daemon's list entries) whose runner is dead.

        The list may be stale: a container that another runner, its watchdog or a person removed
        since it was listed is already gone, which is what the sweep wants (404, or 409 "removal
        in progress"). Any other error of the daemon is a DockerError.
        """
        import docker

        removed = []
        mine = owner_labels()
        for entry in listed:
            labels = entry.get("Labels") or {}
            same_owner_space = all(labels.get(k) == mine[k] for k in ("blockkit.host", "blockkit.pidns"))
            if not mine["blockkit.pidns"] or not same_owner_space or _pid_alive(labels.get("blockkit.pid", "")):
                continue
            shown = ((entry.get("Names") or [entry["Id"][:12]])[0]).lstrip("/")
            try:
                self.client.api.remove_container(entry["Id"], force=True, v=True)
            except docker.errors.NotFound:
                continue  # removed since it was listed
            except docker.errors.APIError as exc:
                if _removal_in_progress(exc):
                    continue
                raise DockerError(f"cannot remove container {shown} left by a killed run: {error_line(exc)}") from exc
            removed.append(shown)
        return removed

    def image_for(self, spec: StepSpec) -> str:
        """The image a step runs: its own, or one built from its block folder."""
        if spec.image:
            return spec.image
        if spec.block_dir is None:
            raise DockerError(f"step {spec.name!r} names neither an image nor a block folder")
        from blockkit.runner._build import build_block_image

        built = build_block_image(
            spec.block_dir, base_image=self.base_image, wheelhouse=self.wheelhouse, client=self.client
        )
        return built.tag

    def _image(self, spec: StepSpec) -> Any:
        """The image the step runs: the one the run prepared (`spec.image_id`), else its reference's now.

        A tag can be moved while a run goes on (a rebuild, `docker tag`); the step still runs
        the image its cache key and run.json name. An id names one image for good, so its
        inspection is kept for the engine's life: the parts of a scattered step ask once.
        """
        import docker

        ref = spec.image_id or self.image_for(spec)
        known = self._images.get(ref)
        if known is not None:
            return known
        try:
            image = self.client.images.get(ref)
        except docker.errors.ImageNotFound as exc:
            if spec.image_id:
                raise ImageMissingError(self._removed(spec)) from exc
            raise ImageMissingError(
                f"step {spec.name!r}: image {ref} does not exist locally; build it with `blockkit build BLOCK_DIR`"
            ) from exc
        except docker.errors.APIError as exc:
            raise DockerError(f"step {spec.name!r}: cannot inspect image {ref}: {error_line(exc)}") from exc
        if spec.image_id:
            with self._images_lock:
                self._images[ref] = image
        return image

    @staticmethod
    def _removed(spec: StepSpec) -> str:
        shown = f"{spec.image} ({(spec.image_id or '')[:19]})" if spec.image_id else str(spec.image)
        return f"step {spec.name!r}: image {shown} was removed after the run began; run again to rebuild it"

    def run_step(self, spec: StepSpec, on_log_line: LogSink | None = None) -> StepResult:
        """Run the step in a container to completion (or timeout) and return how it ended."""
        import docker

        client = self.client
        image = self._image(spec)
        user, hand_over = _container_user()
        for folder in (spec.output_dir, spec.quicklook_dir):
            folder.mkdir(parents=True, exist_ok=True)
            if hand_over:
                # Root on the host, uid 1000 in the container: let the block write its outputs.
                os.chown(folder, 1000, 1000)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)

        name = f"blockkit-{_safe_name(spec.name)}-{secrets.token_hex(4)}"
        with contextlib.ExitStack() as stack:
            # The container's own /etc/hosts (without a network of its own Docker writes none),
            # beside its output: removed after the container.
            bridged = spec.network and not spec.network_container  # Docker writes its /etc/hosts then
            hosts = None if bridged else stack.enter_context(hosts_file(spec.output_dir.parent, name))
            kwargs = self._container_kwargs(spec, user, block_options(spec, image), hosts)
            started = time.time()
            container = None
            assert image.id is not None  # an image the daemon returned always has one
            watch_owned_containers()
            try:
                try:
                    container = client.containers.create(image.id, name=name, **kwargs)
                except docker.errors.ImageNotFound as exc:
                    with self._images_lock:
                        self._images.pop(str(image.id), None)
                    raise ImageMissingError(self._removed(spec)) from exc
                except docker.errors.APIError as exc:
                    raise DockerError(f"step {spec.name!r}: cannot create container: {error_line(exc)}") from exc
                return self._run(container, spec, image.id, started, on_log_line)
            finally:
                if container is None:
                    # Interrupted while the daemon was creating it: find it by its unique name.
                    try:
                        container = client.containers.get(name)
                    except Exception:  # noqa: BLE001 - not created at all
                        container = None
                if container is not None:
                    _remove(container)

    def _container_kwargs(self, spec: StepSpec, user: str, options: dict[str, Any] | None = None,
                          hosts: Path | None = None) -> dict[str, Any]:
        """The container's settings: contract mounts, environment, limits and hardening.

        Hardened by default: no capabilities, no privilege gain (setuid binaries do nothing),
        a read-only root filesystem with a private tmpfs /tmp (HOME, TMPDIR), a process limit
        per machine type. A manifest's `blockkit` object can ask for `writable_root: true` or
        a different `pids` limit.
        """
        from docker.types import Mount

        options = options or {}

        mounts = [Mount(INPUT_DIR, str(spec.input_dir.resolve()), type="bind", read_only=True)]
        for upstream, folder in sorted(spec.upstream_dirs.items()):
            # The mountpoint must exist inside the (read-only) input; create it on the host.
            (spec.input_dir / upstream).mkdir(parents=True, exist_ok=True)
            mounts.append(
                Mount(f"{INPUT_DIR}/{upstream}", str(Path(folder).resolve()), type="bind", read_only=True)
            )
        mounts.append(Mount(OUTPUT_DIR, str(spec.output_dir.resolve()), type="bind", read_only=False))
        mounts.append(Mount(QUICKLOOK_DIR, str(spec.quicklook_dir.resolve()), type="bind", read_only=False))

        environment = {
            "UP42_TASK_PARAMETERS": json.dumps(dict(spec.params)),
            "UP42_JOB_MODE": spec.mode,
            "BLOCKKIT_INPUT_DIR": INPUT_DIR,
            "BLOCKKIT_OUTPUT_DIR": OUTPUT_DIR,
            "BLOCKKIT_QUICKLOOK_DIR": QUICKLOOK_DIR,
            "BLOCKKIT_STEP": spec.name,
            # The host uid may have no passwd entry in the image, so no usable home.
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
        }
        environment.update(spec.env)

        kwargs: dict[str, Any] = {
            "command": list(spec.command) if spec.command else None,
            "environment": environment,
            "user": user,
            # Owner labels let `remove_orphans` find containers of a runner that was killed.
            "labels": {**owner_labels(), "blockkit.step": spec.name},
            "detach": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": pids_limit(spec, options),
            "read_only": not bool(options.get("writable_root", False)),
        }
        if spec.network_container:
            # With an S3 sidecar the block joins the sidecar's namespace, like containers of one pod,
            # with an /etc/hosts of its own (`hosts`: the sidecar has none from Docker either).
            kwargs.update(join_network(spec.network_container, mounts, hosts))
        elif spec.network:
            kwargs.update(mounts=mounts, network_mode="bridge")
        else:
            kwargs.update(no_network(mounts, hosts))
        memory_mb = spec.resources.memory_mb if spec.resources is not None else 2048
        tmp_mb = max(64, min(MAX_TMP_MB, int(memory_mb) // 2))
        kwargs["tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={tmp_mb}m,mode=1777"}
        if spec.resources is not None:
            # The machine type's CPUs weigh the step against the others (1024 shares per CPU);
            # a hard cap only when asked (--strict-cpu), so a step alone may use idle CPUs.
            kwargs["cpu_shares"] = max(2, int(spec.resources.cpus * 1024))
            if spec.resources.strict_cpu:
                kwargs["nano_cpus"] = int(spec.resources.cpus * 1e9)
            memory = f"{int(spec.resources.memory_mb)}m"
            # Same value for memory and memory+swap: no swapping past the limit.
            kwargs["mem_limit"] = memory
            kwargs["memswap_limit"] = memory
        return kwargs

    def _run(
        self,
        container: Any,
        spec: StepSpec,
        image_id: str,
        started: float,
        on_log_line: LogSink | None,
    ) -> StepResult:
        import docker

        log = StepLog(spec.log_path)
        lock = threading.Lock()
        clean = LogFilter(self.redact)
        errors = ErrorLineTracker()

        def emit(raw: str, dropped: int = 0) -> None:
            line = clean(raw, dropped)
            with lock:
                if log.closed:  # the step is over (e.g. Ctrl-C) and the reader still had a line
                    return
                log.write_line(line)
                errors.see(line)
            if on_log_line is not None:
                try:
                    on_log_line(spec.name, line)
                except Exception:  # noqa: BLE001 - a faulty display must not stop log capture
                    pass

        try:
            # Attach before starting (as `docker run` does): one stream, no line lost at start-up.
            try:
                sock = _attach(container)
            except docker.errors.APIError as exc:
                raise DockerError(f"step {spec.name!r}: cannot attach to container: {error_line(exc)}") from exc
            reader = threading.Thread(
                target=_pump_logs, args=(sock, emit), name=f"logs-{spec.name}", daemon=True
            )
            reader.start()
            try:
                try:
                    container.start()
                except docker.errors.APIError as exc:
                    raise DockerError(f"step {spec.name!r}: cannot start container: {error_line(exc)}") from exc
                with self.watch_cancel(spec, lambda: _kill(container)):
                    timed_out = not _wait(container, spec.timeout_s)
                if timed_out:
                    _kill(container)
                    _wait(container, 30.0)
                # The log stream ends with the container; wait briefly for its tail.
                reader.join(timeout=10.0)
            finally:
                if reader.is_alive():
                    # Ctrl-C, an error, or a stream that did not end: stop the block, end the stream.
                    _kill(container)
                    _shutdown(sock)
                    reader.join(timeout=5.0)
                _close(sock)
            container.reload()
            state = container.attrs.get("State", {})
            ended = time.time()
            exit_code = int(state.get("ExitCode", -1))
            oom_killed = bool(state.get("OOMKilled", False))
            detail = ""
            if timed_out:
                exit_code = TIMEOUT_EXIT_CODE
                oom_killed = False
                detail = f"killed after the {spec.timeout_s:g} s timeout"
            elif oom_killed:
                exit_code = int(ExitCode.OUT_OF_MEMORY)
                limit = f" of {spec.resources.memory_mb} MB" if spec.resources else ""
                detail = f"OUT_OF_MEMORY: the container exceeded its memory limit{limit} and was killed"
            if exit_code != 0:  # the failure's words and the log's last line, as every engine gives them
                detail, closing = errors.ending(exit_code, detail)
                emit(closing)
            return StepResult(
                exit_code=exit_code,
                started=started,
                ended=ended,
                image_id=image_id,
                oom_killed=oom_killed,
                timed_out=timed_out,
                detail=detail,
            )
        finally:
            with lock:
                log.close()


def pids_limit(spec: StepSpec, options: dict[str, Any]) -> int:
    """The step's process limit: the manifest's `blockkit.pids`, else per CPU of its machine type."""
    asked = options.get("pids")
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
        return asked
    cpus = spec.resources.cpus if spec.resources is not None else 1.0
    return max(MIN_PIDS, int(PIDS_PER_CPU * cpus))


def block_options(spec: StepSpec, image: Any) -> dict[str, Any]:
    """The `blockkit` object of the step's manifest: from its block folder, else its image label."""
    data: Any = None
    if spec.block_dir is not None:
        try:
            data = json.loads((spec.block_dir / "UP42Manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
    if data is None:
        try:
            data = json.loads((getattr(image, "labels", None) or {}).get("up42_manifest") or "null")
        except ValueError:
            data = None
    options = data.get("blockkit") if isinstance(data, dict) else None
    return options if isinstance(options, dict) else {}


def _pid_alive(pid: str) -> bool:
    """Whether a process with this id runs on this host (unknown ids count as alive: hands off)."""
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _safe_name(step: str) -> str:
    """A container-name-safe version of a step name."""
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in step).strip("-.")
    return (cleaned or "step")[:40]


def _attach(container: Any) -> Any:
    """A socket carrying the container's stdout and stderr, including what it already wrote.

    The SDK's frame reader polls the socket before each read, so a step that stays quiet
    longer than the client's timeout keeps its stream (tested).
    """
    return container.client.api.attach_socket(container.id, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 1})


def _shutdown(sock: Any) -> None:
    """End a blocked read on an attach socket (closing the SDK's wrapper alone does not)."""
    import socket

    try:
        getattr(sock, "_sock", sock).shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


def _close(sock: Any) -> None:
    for layer in (sock, getattr(sock, "_sock", None)):
        try:
            if layer is not None:
                layer.close()
        except OSError:
            pass


def _pump_logs(sock: Any, emit: Callable[[str, int], None]) -> None:
    """Copy the container's stdout and stderr (multiplexed frames) into lines until it exits.

    Each stream has its own splitter: the daemon copies the two pipes independently, so a
    stderr frame can arrive between two pieces of one stdout line.
    """
    from docker.utils.socket import frames_iter

    splitters: dict[int, LineSplitter] = {}
    try:
        for stream, chunk in frames_iter(sock, tty=False):
            splitter = splitters.get(stream)
            if splitter is None:
                splitter = splitters[stream] = LineSplitter(emit)
            splitter.feed(chunk)
    except Exception as exc:  # noqa: BLE001 - a broken log stream must not hide the exit code
        for splitter in splitters.values():
            splitter.close()
        splitters.clear()
        emit(f"[blockkit] log stream interrupted: {error_line(exc)}", 0)
    finally:
        for splitter in splitters.values():
            splitter.close()


def _wait(container: Any, timeout_s: float | None) -> bool:
    """Wait until the container stops; False when `timeout_s` passed first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        # Short polls keep Ctrl-C responsive and bound each HTTP call.
        step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        try:
            container.wait(timeout=max(step, 0.05))
            return True
        except Exception as exc:  # noqa: BLE001 - requests raises ReadTimeout/ConnectionError on timeout
            if not _is_timeout(exc):
                raise
        if deadline is not None and time.monotonic() >= deadline:
            return False


def _is_timeout(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    # Over the unix socket a read timeout can surface as a ConnectionError.
    return isinstance(exc, requests.exceptions.ConnectionError) and "timed out" in str(exc).lower()


def _kill(container: Any) -> None:
    import docker

    try:
        container.kill()
    except docker.errors.APIError:
        pass  # already stopped: nothing to kill


def _remove(container: Any) -> None:
    """Remove the container whatever state it is in (retrying briefly if the daemon is busy)."""
    import docker

    interrupted: KeyboardInterrupt | None = None
    for attempt in range(5):
        try:
            container.remove(force=True, v=True)
            break
        except docker.errors.NotFound:
            break
        except KeyboardInterrupt as exc:
            interrupted = exc  # a second Ctrl-C must not leave the container behind
        except docker.errors.APIError as exc:
            if _removal_in_progress(exc):
                break
            time.sleep(0.2 * (attempt + 1))
        except Exception:  # noqa: BLE001 - e.g. a connection hiccup during shutdown
            time.sleep(0.2 * (attempt + 1))
    if interrupted is not None:
        raise interrupted


def _removal_in_progress(exc: BaseException) -> bool:
    """Whether the daemon refused because the container is already being removed (409): it is going away."""
    return getattr(exc, "status_code", None) == 409 and "in progress" in str(exc)
