"""Running a planned workflow: run folders, data passing, provenance, caching and resume."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import blockkit
from blockkit.contract.datajson import (
    DATA_JSON,
    FeatureCollection,
    load_data_json,
    write_atomic,
    write_data_json,
)
from blockkit.contract.errors import BlockkitError, ExitCode, NoOutputError, WorkflowError
from blockkit.contract.parameters import redact_parameters
from blockkit.runner.engine import Engine, Resources, StepResult, StepSpec
from blockkit.runner.hashing import HashCache, digest_of, source_hash
from blockkit.runner.plan import Plan, PlannedStep
from blockkit.runtime.propagation import fan_in_feature, forward_all, forward_fan_in, link_tree

RUN_FILE = "run.json"
PROVENANCE_FILE = "provenance.json"
Event = Callable[[str, str, dict[str, Any]], None]  # (kind, step, info)


class RunFailed(BlockkitError):
    """A step of a run failed; the message names the step and its exit code."""

    def __init__(self, message: str, *, step: str, step_exit: int, run_dir: Path) -> None:
        super().__init__(message)
        self.step = step
        self.step_exit = step_exit
        self.run_dir = run_dir
        self.exit_code = ExitCode(step_exit) if step_exit in ExitCode._value2member_map_ else ExitCode.UNEXPECTED_ERROR


class RunInterrupted(BlockkitError):
    """The run was stopped by Ctrl-C (SIGINT); its folder says which steps finished."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"run {run_dir.name} interrupted")
        self.run_dir = run_dir


def default_runs_dir() -> Path:
    """Where run folders go: `$BLOCKKIT_RUNS_DIR` or `.blockkit/runs` in the current folder."""
    return Path(os.environ.get("BLOCKKIT_RUNS_DIR") or Path.cwd() / ".blockkit" / "runs")


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
    block: dict[str, Any] = field(default_factory=dict)
    engine: str | None = None
    image: str | None = None
    image_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    upstream: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    features_out: int | None = None
    detail: str = ""


class RunFolder:
    """The folder of one run: step outputs, logs, run.json and provenance.json."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, root: Path, workflow_name: str) -> RunFolder:
        """A new, uniquely named run folder."""
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in workflow_name)[:40]
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(2)}"
        path = root / run_id
        path.mkdir(parents=True)
        return cls(path)

    @property
    def run_id(self) -> str:
        """The run's id (its folder name)."""
        return self.path.name

    def output_dir(self, step: str) -> Path:
        """Where a step's output goes."""
        return self.path / "steps" / step / "output"

    def input_dir(self, step: str) -> Path:
        """A folder the runner prepares as a step's input (first steps and fan-in)."""
        return self.path / "steps" / step / "input"

    def quicklook_dir(self, step: str) -> Path:
        """Where a step's quicklooks go."""
        return self.path / "steps" / step / "quicklooks"

    def log_path(self, step: str) -> Path:
        """A step's log file."""
        return self.path / "logs" / f"{step}.log"

    def write_json(self, name: str, data: Any) -> None:
        """Write a JSON file of the run atomically."""
        write_atomic(self.path / name, json.dumps(data, indent=2, default=str))

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


class CacheIndex:
    """Maps a step's cache key to the run folder output that has that result."""

    def __init__(self, root: Path) -> None:
        self.path = root / "cache-index.json"
        try:
            self.entries: dict[str, str] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def lookup(self, key: str, root: Path) -> Path | None:
        """A still-valid cached output folder for this key, or None."""
        rel = self.entries.get(key)
        if not rel:
            return None
        folder = root / rel
        try:
            load_data_json(folder, required=False)
        except BlockkitError:
            return None
        return folder

    def store(self, key: str, output_dir: Path, root: Path) -> None:
        """Remember that this output folder is the result for this key."""
        self.entries[key] = output_dir.relative_to(root).as_posix()
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.entries, indent=1))


@dataclass
class RunOptions:
    """How to run: engine, run folder root, cache, resume, callbacks."""

    engine: Engine
    runs_dir: Path = field(default_factory=default_runs_dir)
    use_cache: bool = True
    resume: str | None = None
    on_event: Event | None = None
    on_log_line: Callable[[str, str], None] | None = None
    env_for_step: Callable[[PlannedStep], Mapping[str, str]] | None = None  # keys, gateway, ...
    redact: Callable[[str], str] | None = None
    image_for_step: Callable[[PlannedStep], tuple[str, str]] | None = None  # -> (image ref, image id)
    input_dir: Path | None = None  # staged-in workflow input


class WorkflowRun:
    """Runs the steps of a plan one after another in a run folder."""

    def __init__(self, plan: Plan, options: RunOptions) -> None:
        self.plan = plan
        self.options = options
        self.root = options.runs_dir
        self.hashes = HashCache(self.root / "hash-cache.json")
        self.cache = CacheIndex(self.root)
        if options.resume:
            self.folder = find_run(self.root, options.resume)
            previous = self.folder.read_json(RUN_FILE)
            self.records = {name: StepRecord(**rec) for name, rec in previous.get("steps", {}).items()}
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self.folder = RunFolder.create(self.root, plan.workflow.name)
            self.records = {}
        for step in plan.steps:
            self.records.setdefault(step.name, StepRecord(name=step.name))
        self.started = time.time()

    # --- events ---------------------------------------------------------------------------

    def _emit(self, kind: str, step: str, **info: Any) -> None:
        if self.options.on_event:
            self.options.on_event(kind, step, info)

    # --- the run ----------------------------------------------------------------------------

    def execute(self) -> RunFolder:
        """Run every step; raise RunFailed at the first failing step (earlier outputs stay)."""
        if self.plan.workflow.path and not (self.folder.path / "workflow.yaml").exists():
            shutil.copyfile(self.plan.workflow.path, self.folder.path / "workflow.yaml")
        self._save("running")
        try:
            for step in self.plan.steps:
                self._run_step(step)
        except RunFailed:
            self._save("failed")
            raise
        except KeyboardInterrupt:
            self._save("interrupted")
            raise
        except Exception as exc:
            # Anything else (a full disk, a vanished folder): the run folder must not say "running".
            for record in self.records.values():
                if record.status == "running":
                    record.status, record.detail = "failed", f"{type(exc).__name__}: {exc}"[:500]
            self._save("failed")
            raise
        finally:
            self.hashes.save()
        self._save("ok")
        return self.folder

    def _run_step(self, step: PlannedStep) -> None:
        record = self.records[step.name]
        engine = self.options.engine
        input_dir, upstream_dirs = self._prepare_input(step)
        inputs = self._input_hashes(step, input_dir)
        block_info, image, image_id = self._block_identity(step)
        key = digest_of({
            "block": block_info.get("source_sha256") or image_id,
            "params": step.params,
            "inputs": inputs,
            "mode": step.definition.mode,
            "propagate": step.propagate,
            "blockkit": blockkit.__version__,
        })
        output_dir = self.folder.output_dir(step.name)
        record.block, record.image, record.image_id = block_info, image, image_id
        record.engine = engine.name
        record.params = redact_parameters(step.manifest, step.params)
        record.upstream = list(step.upstream)
        record.inputs = inputs
        if self.options.resume and record.status in ("ok", "cached") and record.cache_key == key and output_dir.is_dir():
            self._emit("skipped", step.name, reason="done in the resumed run", features=record.features_out)
            return
        cached = self.cache.lookup(key, self.root) if self.options.use_cache else None
        if cached is not None and cached.resolve() != output_dir.resolve():
            self._reset_dir(output_dir)
            link_tree(cached, output_dir)
            record.status, record.cached_from = "cached", cached.relative_to(self.root).as_posix()
            record.exit_code, record.exit_name, record.cache_key = 0, "OK", key
            record.started = record.ended = time.time()
            self._finish_outputs(step, record, output_dir)
            self._emit("cached", step.name, source=record.cached_from, features=record.features_out)
            self._save("running")
            return
        self._reset_dir(output_dir)
        self._reset_dir(self.folder.quicklook_dir(step.name))
        log_path = self.folder.log_path(step.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        cpus, memory = step.resources  # the machine type, capped to the host (plan.prepare_for_engine)
        spec = StepSpec(
            name=step.name,
            block_dir=step.block_dir,
            image=image,
            input_dir=input_dir,
            output_dir=output_dir,
            quicklook_dir=self.folder.quicklook_dir(step.name),
            log_path=log_path,
            params=step.params,
            env={
                "BLOCKKIT_RUNNER_FORWARDS": "1",
                **(dict(self.options.env_for_step(step)) if self.options.env_for_step else {}),
            },
            upstream_dirs=upstream_dirs,
            mode=step.definition.mode,
            network=step.manifest.network,
            resources=Resources(cpus=cpus, memory_mb=memory),
            timeout_s=step.definition.timeout or step.manifest.options.get("timeout"),
            command=step.command,  # the entry resolved for this engine (plan.prepare_for_engine)
        )
        record.status, record.started, record.cache_key = "running", time.time(), key
        record.exit_code = record.ended = None
        record.detail = ""
        self._save("running")
        self._emit("started", step.name)
        try:
            with self._gateway(step, spec, image):
                result = engine.run_step(spec, self._log_sink(step.name))
        except BlockkitError as err:
            # The engine could not run the block at all (no such command, image, daemon gone...):
            # the step fails like a crashing block, so the run folder says so and --resume works.
            detail = f"the {engine.name} engine could not run the step: {err.message}"
            with log_path.open("a", encoding="utf-8") as log:
                log.write(f"[blockkit] {detail}\n")
            result = StepResult(int(ExitCode.UNEXPECTED_ERROR), record.started or time.time(), time.time(), detail=detail)
        record.image_id = result.image_id or record.image_id
        self._redact_log(step.name)
        self._after_step(step, record, result, input_dir, output_dir, upstream_dirs)

    def _after_step(self, step: PlannedStep, record: StepRecord, result: StepResult,
                    input_dir: Path, output_dir: Path, upstream_dirs: Mapping[str, Path]) -> None:
        record.started, record.ended = result.started, result.ended
        record.exit_code, record.exit_name = result.exit_code, ExitCode.describe(result.exit_code)
        if result.timed_out:
            record.exit_name = "TIMEOUT"
        if result.oom_killed:
            record.exit_name = "OUT_OF_MEMORY"
        detail = result.detail
        if result.exit_code == 0:
            try:
                if not (output_dir / DATA_JSON).is_file() and not (output_dir / DATA_JSON).is_symlink():
                    # UP42: "at the very least, a block should output data.json" -- never an ok, cached step.
                    raise NoOutputError(f"it wrote no {DATA_JSON}")
                fc = load_data_json(output_dir, required=False)
                if step.propagate:
                    if upstream_dirs:  # mounted fan-in: the files are still in each upstream's folder
                        forwarded = forward_fan_in(upstream_dirs, fc.features, output_dir)
                    else:
                        inputs = load_data_json(input_dir, required=False).features
                        forwarded = forward_all(inputs, fc.features, input_dir, output_dir)
                    fc.features.extend(forwarded)
                    write_data_json(output_dir, fc)
            except BlockkitError as err:
                record.exit_code, record.exit_name = int(ExitCode.NO_OUTPUT_ERROR), "NO_OUTPUT_ERROR"
                detail = f"the step exited 0 but its output is invalid: {err.message}"
        if record.exit_code != 0:
            record.status = "failed"
            record.detail = detail or self._last_error_line(step.name)
            self._save("failed")
            self._emit("failed", step.name, exit_code=record.exit_code, exit_name=record.exit_name, detail=record.detail)
            message = f"step {step.name!r} failed with exit code {record.exit_code} ({record.exit_name})"
            if record.detail:
                message += f": {record.detail}"
            raise RunFailed(message, step=step.name, step_exit=record.exit_code or 1, run_dir=self.folder.path)
        record.status = "ok"
        self._finish_outputs(step, record, output_dir)
        # Stored even with --no-cache: a forced run refreshes the cache for the next one.
        self.cache.store(record.cache_key or "", output_dir, self.root)
        self._save("running")
        self._emit("done", step.name, seconds=record.ended - record.started, features=record.features_out)

    def _finish_outputs(self, step: PlannedStep, record: StepRecord, output_dir: Path) -> None:
        record.outputs = self.hashes.tree(output_dir)
        record.features_out = len(load_data_json(output_dir, required=False, check_files=False))

    @contextlib.contextmanager
    def _gateway(self, step: PlannedStep, spec: StepSpec, image: str | None) -> Iterator[None]:
        """Start the S3 gateway beside the step when its manifest asks (`blockkit.s3`)."""
        if not step.manifest.s3_gateway:
            yield
            return
        from blockkit.runner.sidecar import docker_gateway, process_gateway

        if self.options.engine.name == "docker" and image:
            context = docker_gateway(spec, step.upstream, image, self.options.engine.client)
        else:
            context = process_gateway(spec, step.upstream)
        with context as env:
            spec.env = {**env, **spec.env}
            yield

    # --- inputs -----------------------------------------------------------------------------

    def _prepare_input(self, step: PlannedStep) -> tuple[Path, dict[str, Path]]:
        """The step's input folder, and the upstream folders to mount under it (fan-in)."""
        if not step.upstream:
            if self.options.input_dir is not None:
                return self.options.input_dir, {}
            folder = self.folder.input_dir(step.name)
            folder.mkdir(parents=True, exist_ok=True)
            return folder, {}
        if len(step.upstream) == 1:
            return self.folder.output_dir(step.upstream[0]), {}
        folder = self.folder.input_dir(step.name)
        self._reset_dir(folder)
        merged = FeatureCollection()
        mounts: dict[str, Path] = {}
        mounts_upstreams = getattr(self.options.engine, "mounts_upstreams", False)
        for up in step.upstream:
            up_dir = self.folder.output_dir(up)
            merged.features.extend(fan_in_feature(up, f) for f in load_data_json(up_dir, required=False))
            if mounts_upstreams:
                (folder / up).mkdir()
                mounts[up] = up_dir
            else:
                link_tree(up_dir, folder / up)  # hard links: no bytes copied
        write_data_json(folder, merged)
        return folder, mounts

    def _input_hashes(self, step: PlannedStep, input_dir: Path) -> dict[str, str]:
        if len(step.upstream) > 1:
            hashes: dict[str, str] = {}
            for up in step.upstream:
                hashes.update(self.hashes.tree(self.folder.output_dir(up), prefix=f"{up}/"))
            return hashes
        return self.hashes.tree(input_dir)

    def _block_identity(self, step: PlannedStep) -> tuple[dict[str, Any], str | None, str | None]:
        info: dict[str, Any] = {"name": step.manifest.name, "version": step.manifest.version or None}
        image = image_id = None
        if step.block_dir is not None:
            info["path"] = str(step.block_dir)
            info["source_sha256"] = source_hash(step.block_dir, self.hashes)
        if self.options.image_for_step is not None:
            image, image_id = self.options.image_for_step(step)
        elif step.image:
            image = step.image
        return info, image, image_id

    # --- bookkeeping ------------------------------------------------------------------------

    def _log_sink(self, step: str) -> Callable[[str, str], None] | None:
        sink, redact = self.options.on_log_line, self.options.redact
        if sink is None or redact is None:
            return sink
        return lambda name, line: sink(name, redact(line))

    def _redact_log(self, step: str) -> None:
        """Rewrite a step's logs without secret values (a block may print what it was given)."""
        if self.options.redact is None:
            return
        for path in self.folder.log_path(step).parent.glob(f"{step}*.log"):
            text = path.read_text(errors="replace")
            clean = self.options.redact(text)
            if clean != text:
                write_atomic(path, clean)

    def _last_error_line(self, step: str) -> str:
        try:
            lines = self.folder.log_path(step).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            if line.startswith("[") and ("_ERROR]" in line or line.startswith("[OUT_OF_MEMORY]")):
                return line.strip()
        return lines[-1].strip() if lines else ""

    @staticmethod
    def _reset_dir(path: Path) -> None:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)

    def _save(self, status: str) -> None:
        workflow = self.plan.workflow
        steps = {name: asdict(rec) for name, rec in self.records.items()}
        run = {
            "run_id": self.folder.run_id,
            "workflow": workflow.name,
            "workflow_path": str(workflow.path.resolve()) if workflow.path else None,
            "engine": self.options.engine.name,
            "status": status,
            "started": self.started,
            "updated": time.time(),
            "steps": steps,
        }
        self.folder.write_json(RUN_FILE, run)
        provenance = {
            "run_id": self.folder.run_id,
            "blockkit_version": blockkit.__version__,
            "workflow": {
                "name": workflow.name,
                "path": run["workflow_path"],
                "sha256": self.hashes.file_sha256(workflow.path) if workflow.path else None,
                "input": workflow.input,
                "output": workflow.output,
            },
            "engine": self.options.engine.name,
            "status": status,
            "started": self.started,
            "ended": time.time() if status != "running" else None,
            "steps": [steps[s.name] for s in self.plan.steps],
        }
        text = json.dumps(provenance, indent=2, default=str)
        if self.options.redact:
            text = self.options.redact(text)
        write_atomic(self.folder.path / PROVENANCE_FILE, text)
