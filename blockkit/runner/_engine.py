"""The engine interface: what the runner asks an engine to do for one step."""

from __future__ import annotations

import abc
import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager, Iterator, Mapping

if TYPE_CHECKING:
    from blockkit.runner._plan import Plan, PlannedStep


#: Receives every log line of a step as (step name, line).
LogSink = Callable[[str, str], None]


@dataclass(frozen=True)
class Resources:
    """CPU and memory a step may use (from the manifest's `machine.type`).

    Memory is a hard limit. `cpus` is what the scheduler reserves and the step's share when
    CPUs are contended; it is a hard cap only with `strict_cpu` (`blockkit run --strict-cpu`),
    as cwltool's `--strict-cpu-limit`: an idle machine's other CPUs are not held back from a
    step that runs alone.
    """

    cpus: float
    memory_mb: int
    strict_cpu: bool = False


@dataclass
class StepSpec:
    """Everything an engine needs to run one step of a workflow.

    `inputs` maps the name under which an upstream output is visible to the
    folder holding it. The single-input case uses the key "input" and the folder
    is mounted as the step's input dir itself. With fan-in, `input_dir` is a
    folder the runner prepared (merged data.json) and each upstream output is
    mounted at `<input dir>/<step name>/`.
    """

    name: str
    block_dir: Path | None          # block folder (process engine, build context)
    image: str | None                # image reference (docker engine)
    input_dir: Path                  # folder seen as /tmp/input (may hold only data.json for fan-in)
    output_dir: Path                 # folder seen as /tmp/output (empty, created by the runner)
    quicklook_dir: Path              # folder seen as /tmp/quicklooks
    log_path: Path                   # where the step's combined stdout/stderr go
    params: Mapping[str, object] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)       # extra environment (keys, S3_ENDPOINT, ...)
    upstream_dirs: Mapping[str, Path] = field(default_factory=dict)  # fan-in: step name -> its output dir
    mode: str = "DEFAULT"
    network: bool = False
    resources: Resources | None = None
    timeout_s: float | None = None
    command: list[str] | None = None  # override of the block's entry command
    venv: Path | None = None  # process engine: the block venv any entry runs in (bin first on PATH)
    network_container: str | None = None  # docker: join this container's network namespace (S3 sidecar)
    #: Set by the runner to stop the step (Ctrl-C/SIGTERM in a parallel run, --fail-fast): the
    #: engine kills its process group / container as soon as it sees it (see `Engine.watch_cancel`).
    cancel: threading.Event | None = None
    #: docker: the id `image` had when the run prepared its images. The step runs exactly this
    #: image, the one its cache key and run.json name, even if the tag is moved meanwhile.
    image_id: str | None = None


@dataclass
class StepResult:
    """What happened when an engine ran a step."""

    exit_code: int
    started: float
    ended: float
    image_id: str | None = None
    oom_killed: bool = False
    timed_out: bool = False
    detail: str = ""


class Engine(abc.ABC):
    """What the runner asks of an engine; a new engine is one module with one subclass.

    Only `run_step` is required. The other hooks have defaults that suit an engine running
    steps on this host; override the ones your engine does differently. Register the engine
    with `register_engine` so that `--engine NAME` finds it.
    """

    #: The name `--engine` takes, run.json records and the cache key includes.
    name: ClassVar[str] = ""
    #: Fan-in: True when the engine mounts each upstream output at `<input>/<step>/` itself
    #: (`StepSpec.upstream_dirs`); False and the runner hard-links them there.
    mounts_upstreams: ClassVar[bool] = False
    #: True when steps run from images (the image's entry point); False when the block's
    #: command runs on this host from its folder (the plan resolves `entry` for it).
    runs_images: ClassVar[bool] = False
    #: True when the engine can hold a step to its machine type's CPUs (`Resources.strict_cpu`).
    caps_cpu: ClassVar[bool] = False
    #: Masks secret values in every log line (set by the session before steps run).
    redact: Callable[[str], str] | None = None

    @property
    def isolation_note(self) -> str:
        """One sentence on how steps are isolated (said once when the engine is chosen)."""
        return ""

    @property
    def isolates_paths(self) -> bool:
        """Whether steps see their folders at the contract paths (/tmp/input, /tmp/output,
        /tmp/quicklooks, /block) in a private view: blocks with fixed UP42 paths need it."""
        return False

    @abc.abstractmethod
    def run_step(self, spec: StepSpec, on_log_line: LogSink | None = None) -> StepResult:
        """Run the step to completion (or timeout, or `spec.cancel`) and return how it ended.

        A failing block is a result with its exit code, never an exception; raise a
        BlockkitError only when the engine could not run the block at all.
        """

    def capacity(self) -> tuple[float, int] | None:
        """(CPUs, memory MB) of the machine steps run on; None: this host's."""
        return None

    def prepare_images(self, plan: Plan, say: Callable[[str], None]) -> Callable[[PlannedStep], tuple[str, str]] | None:
        """Build or find what steps run before any step starts; returns step -> (image ref, image id).

        None (the default): steps run from their block folders, no image.
        """
        return None

    def remove_orphans(self) -> list[str]:
        """Remove what runners killed earlier left behind (containers...); the names removed."""
        return []

    def gateway(self, spec: StepSpec, upstream: list[str], image: str | None) -> ContextManager[dict[str, str]]:
        """Start the S3 gateway beside the step; yields the environment the block gets."""
        from blockkit.runner._sidecar import process_gateway

        return process_gateway(spec, upstream)

    @staticmethod
    @contextlib.contextmanager
    def watch_cancel(spec: StepSpec, kill: Callable[[], Any]) -> Iterator[None]:
        """While the block runs, call `kill` once when `spec.cancel` is set (at once if it already is).

        Leaving the block does not wait for the watcher's next poll (that cost every step and
        every feature of a scattered step 0.1 s on average): a lock makes sure that once the
        block is over, the watcher never calls `kill`, and it ends at its next poll.
        """
        event = spec.cancel
        if event is None:
            yield
            return
        over = threading.Event()
        deciding = threading.Lock()

        def watch() -> None:
            while not over.is_set():
                if event.wait(0.2):
                    with deciding:
                        if not over.is_set():
                            kill()
                    return

        watcher = threading.Thread(target=watch, name=f"cancel-{spec.name}", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            with deciding:  # a kill under way finishes first; none starts after this
                over.set()


_REGISTRY: dict[str, Callable[[], tuple[Engine, str]]] = {}


def register_engine(name: str, factory: Callable[[], tuple[Engine, str]]) -> None:
    """Make `--engine NAME` use this factory (returns the engine and why it was chosen)."""
    _REGISTRY[name] = factory


def registered_engines() -> dict[str, Callable[[], tuple[Engine, str]]]:
    """The engine factories by name (the built-in ones are registered by `blockkit.runner._engines`)."""
    return dict(_REGISTRY)


