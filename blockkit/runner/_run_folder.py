"""The run folder format: where a run's steps, logs, run.json and provenance.json live.

A run folder is `<runs dir>/<run id>/` (see docs/runner.md, "Run folders"). This module
knows its layout and how its JSON files are written (atomically, with room kept for the
final state on a full disk) and read back; it runs nothing.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shlex
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from blockkit.contract.errors import WorkflowError
from blockkit.runner._lock import replace_atomic

RUN_FILE = "run.json"
#: Room kept at the end of run.json for writing the final state when the disk is full.
RESERVE_BYTES = 4096
PROVENANCE_FILE = "provenance.json"


def default_runs_dir() -> Path:
    """Where run folders go: `$BLOCKKIT_RUNS_DIR` or `.blockkit/runs` in the current folder."""
    return Path(os.environ.get("BLOCKKIT_RUNS_DIR") or Path.cwd() / ".blockkit" / "runs")


def resume_command(run_dir: Path, block: Path | None = None) -> str:
    """`blockkit run [BLOCK] --resume ID`, with `--runs-dir` when the run is not in the default place (shell-quoted)."""
    words = ["blockkit", "run", *([str(block)] if block is not None else []), "--resume", run_dir.name]
    if run_dir.parent.resolve() != default_runs_dir().resolve():
        words += ["--runs-dir", str(run_dir.parent)]
    return " ".join(shlex.quote(word) for word in words)


@dataclass
class StepRecord:
    """What happened to one step (kept in run.json and provenance.json)."""

    name: str
    status: str = "pending"  # pending | running | ok | failed | cached | skipped
    exit_code: int | None = None
    exit_name: str | None = None
    started: float | None = None
    ended: float | None = None
    cache_key: str | None = None
    cached_from: str | None = None
    produced_by: dict[str, Any] | None = None  # a cached step: the run, step, engine and image that made it
    block: dict[str, Any] = field(default_factory=dict)
    engine: str | None = None
    image: str | None = None
    image_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    upstream: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    #: The hashes of its quicklooks (`steps/<step>/quicklooks`), checked and linked with the output on a cache hit.
    quicklooks: dict[str, str] = field(default_factory=dict)
    features_out: int | None = None
    detail: str = ""
    #: A scattered step: one entry per input feature, in input order (see `WorkflowRun._run_scattered`):
    #: name, feature id, status (pending | ran | reused | failed | interrupted), cache key, exit code,
    #: `from` (the part folder it was reused from), and the hashes of its output and quicklooks.
    parts: list[dict[str, Any]] = field(default_factory=list)
    #: What the step ran with (`_run.step_resources`): cpus, memory_mb, strict_cpu (asked) and
    #: cpu_capped (enforced by the engine); {} when it did not run here (cached, pending).
    resources: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepRecord:
        """A record read back from run.json (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def safe_name(workflow_name: str) -> str:
    """A workflow's name as folders of the runs dir carry it: letters, digits, `-`, `_`; at most 40."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in workflow_name)[:40]


class RunFolder:
    """The folder of one run: step outputs, logs, run.json and provenance.json."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, root: Path, workflow_name: str) -> RunFolder:
        """A new, uniquely named run folder."""
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(workflow_name)}-{secrets.token_hex(2)}"
        path = root / run_id
        path.mkdir(parents=True)
        return cls(path)

    @property
    def run_id(self) -> str:
        """The run's id (its folder name)."""
        return self.path.name

    def output_dir(self, step: str) -> Path:
        """Where a step's sealed output is (read-only; the block wrote it in `work_dir`)."""
        return self.path / "steps" / step / "output"

    def work_dir(self, step: str) -> Path:
        """The folder a step's block writes into (seen as /tmp/output); sealed into `output_dir` after."""
        return self.path / "steps" / step / "work"

    def input_dir(self, step: str) -> Path:
        """A folder the runner prepares as a step's input (first steps and fan-in)."""
        return self.path / "steps" / step / "input"

    def quicklook_dir(self, step: str) -> Path:
        """Where a step's quicklooks go."""
        return self.path / "steps" / step / "quicklooks"

    def parts_dir(self, step: str) -> Path:
        """A scattered step's per-feature folders (the datum cache: `<name>/output`, `<name>/quicklooks`)."""
        return self.path / "steps" / step / "parts"

    def part_dir(self, step: str, name: str) -> Path:
        """One feature's folder of a scattered step (`name` as `blockkit.runtime.scatter.part_names` gives it)."""
        return self.parts_dir(step) / name

    def split_dir(self, step: str) -> Path:
        """Where a scattered step's input is split into one-feature folders while it runs."""
        return self.path / "steps" / step / "split"

    def log_path(self, step: str) -> Path:
        """A step's log file."""
        return self.path / "logs" / f"{step}.log"

    def log_paths(self, step: str) -> list[Path]:
        """Every log file of a step: its own and its S3 gateway's (`gateway_log_path`)."""
        own = self.log_path(step)
        return [own, gateway_log_path(own)]

    def write_json(self, name: str, data: Any) -> None:
        """Write a JSON file of the run atomically.

        Trailing spaces (valid JSON) keep room so that on a full disk the final state can
        still be written over the old file in place.
        """
        text = json.dumps(data, indent=2, default=str)
        self.write_text(name, text + "\n" + " " * RESERVE_BYTES)

    def write_text(self, name: str, text: str) -> None:
        """Write a file of the run atomically; on a full disk, in place when it fits in the old one."""
        path = self.path / name
        try:
            replace_atomic(path, text)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            data = text.rstrip(" ").encode()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise exc from None  # no old file to write over: the disk is full, say so
            try:
                room = os.fstat(fd).st_size
                if room < len(data):
                    raise
                os.pwrite(fd, data + b" " * (room - len(data)), 0)  # no new block needed
            finally:
                os.close(fd)

    def read_json(self, name: str) -> Any:
        """Read a JSON file of the run (a broken one is a WorkflowError naming it)."""
        path = self.path / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkflowError(f"{path} is not readable JSON ({exc}); the run folder is damaged") from exc
        if not isinstance(data, dict):
            raise WorkflowError(f"{path} is not a JSON object; the run folder is damaged")
        return data


def find_run(root: Path, run_id: str) -> RunFolder:
    """The run folder with this id (or unique prefix)."""
    if not root.is_dir():
        raise WorkflowError(f"no runs in {root}")
    matches = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(run_id) and (p / RUN_FILE).exists())
    if len(matches) != 1:
        what = "no run" if not matches else f"{len(matches)} runs"
        raise WorkflowError(f"{what} matching {run_id!r} in {root}; see `blockkit runs list`")
    return RunFolder(matches[0])


def gateway_log_path(step_log: Path) -> Path:
    """The S3 gateway's log beside a step's log: `<step>.gateway.log`."""
    return step_log.with_name(step_log.stem + ".gateway.log")
