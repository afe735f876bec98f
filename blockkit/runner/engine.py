"""The engine interface: what the runner asks an engine to do for one step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol


@dataclass(frozen=True)
class Resources:
    """CPU and memory a step may use (from the manifest's `machine.type`)."""

    cpus: float
    memory_mb: int


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
    network_container: str | None = None  # docker: join this container's network namespace (S3 sidecar)


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


class Engine(Protocol):
    """Runs one step and returns its result; never raises for a failing block."""

    name: str
    #: Whether steps see their folders at the contract paths (/tmp/input, /tmp/output,
    #: /tmp/quicklooks, /block) in a private view: blocks with fixed UP42 paths need it.
    isolates_paths: bool
    #: Masks secret values in every log line (set by the session before steps run).
    redact: "Callable[[str], str] | None"

    def run_step(self, spec: StepSpec, on_log_line: "LogSink | None" = None) -> StepResult:
        """Run the step to completion (or timeout) and return how it ended."""
        ...


class LogSink(Protocol):
    def __call__(self, step: str, line: str) -> None: ...
