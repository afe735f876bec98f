"""Running a planned workflow: run folders, data passing, provenance, caching and resume."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import blockkit
from blockkit.contract.datajson import DATA_JSON, FeatureCollection, dumps, load_data_json
from blockkit.contract.errors import (
    TIMEOUT_EXIT_CODE,
    BlockkitError,
    ExitCode,
    RunFailed,
    RunInterrupted,
    WorkflowError,
    WrongInputError,
)
from blockkit.contract.parameters import redact_parameters
from blockkit.runner.engine import Engine, Resources, StepResult, StepSpec
from blockkit.runner.hashing import HashCache, digest_of, source_hash
from blockkit.runner.lock import FileLock, RunLock, replace_atomic, runner_identity
from blockkit.runner.plan import Plan, PlannedStep
from blockkit.runner.schedule import Budget, Scheduler, Task
from blockkit.runner.seal import SealError, SealTimeout, lock_tree, output_limit, remove_tree, seal_tree, verify_tree
from blockkit.runtime.propagation import fan_in_feature, forward_all, forward_fan_in, link_tree

RUN_FILE = "run.json"
#: Room kept at the end of run.json for writing the final state when the disk is full.
RESERVE_BYTES = 4096
PROVENANCE_FILE = "provenance.json"
Event = Callable[[str, str, dict[str, Any]], None]  # (kind, step, info)


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
    produced_by: dict[str, Any] | None = None  # a cached step: the run, step, engine and image that made it
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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepRecord:
        """A record read back from run.json (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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

    def log_path(self, step: str) -> Path:
        """A step's log file."""
        return self.path / "logs" / f"{step}.log"

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
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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


class CacheIndex:
    """Maps a step's cache key to the run folder output that has that result.

    Many runners share `cache-index.json`: every change is a read-merge-write under a lock
    (`cache-index.lock`) through a unique temp file, so concurrent runs keep every entry.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "cache-index.json"

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    @property
    def entries(self) -> dict[str, str]:
        """The current entries (cache key -> output folder relative to the runs folder)."""
        return self._read()

    def lookup(self, key: str) -> str | None:
        """The output folder (relative to the runs folder) recorded for this key, or None."""
        return self._read().get(key)

    def update(self, change: Callable[[dict[str, str]], None]) -> None:
        """Change the entries under the index lock (read, change in place, write)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / "cache-index.lock"):
            entries = self._read()
            change(entries)
            replace_atomic(self.path, json.dumps(entries, indent=1))

    def store(self, key: str, output_dir: Path) -> None:
        """Remember that this output folder is the result for this key."""
        rel = output_dir.relative_to(self.root).as_posix()
        self.update(lambda entries: entries.__setitem__(key, rel))

    def evict(self, key: str, rel: str) -> None:
        """Forget this key's entry if it still names `rel`."""
        def drop(entries: dict[str, str]) -> None:
            if entries.get(key) == rel:
                del entries[key]

        self.update(drop)


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
    #: Steps at once and their CPUs/memory (`--jobs`, `--max-cpus`, `--max-memory`); None or
    #: jobs=1: one step after another in the calling thread, as before the scheduler.
    budget: Budget | None = None
    fail_fast: bool = False  # a failing step stops the running ones (parallel runs)


class _Cancelled(Exception):
    """A running step was stopped by the runner (Ctrl-C/SIGTERM, or --fail-fast)."""


class WorkflowRun:
    """Runs the steps of a plan in a run folder it holds the lock of.

    With a budget of more than one job, steps whose upstreams are done run at once in worker
    threads (see `blockkit.runner.schedule`); run.json, provenance, events and the caches are
    written under one lock, so the folder is the same as a sequential run's.
    """

    def __init__(self, plan: Plan, options: RunOptions) -> None:
        self.plan = plan
        self.options = options
        self.root = options.runs_dir
        self.hashes = HashCache(self.root / "hash-cache.json")
        self.cache = CacheIndex(self.root)
        if options.resume:
            self.folder = find_run(self.root, options.resume)
            self.lock = RunLock(self.folder.path)
            self.lock.acquire()  # before reading run.json: a second runner on this run is refused
            previous = self.folder.read_json(RUN_FILE)
            self.records = {name: StepRecord.from_json(rec) for name, rec in previous.get("steps", {}).items()}
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self.folder = RunFolder.create(self.root, plan.workflow.name)
            self.lock = RunLock(self.folder.path)
            self.lock.acquire()
            self.records = {}
        for step in plan.steps:
            self.records.setdefault(step.name, StepRecord(name=step.name))
        self.runner = runner_identity()
        self.started = time.time()
        #: Guards records, run.json/provenance writes and events when steps run in threads.
        self._state = threading.RLock()
        #: Steps the runner stopped, and why (the record says "interrupted" with this detail).
        self._cancelled: dict[str, str] = {}
        self._cancel_events: dict[str, threading.Event] = {}

    # --- events ---------------------------------------------------------------------------

    def _emit(self, kind: str, step: str, **info: Any) -> None:
        if self.options.on_event:
            with self._state:
                self.options.on_event(kind, step, info)

    def _warn(self, step: str, message: str) -> None:
        """A warning the user sees (the CLI prints `warning` events) and the step's log keeps."""
        self._emit("warning", step, message=message)
        self._pending_warnings.setdefault(step, []).append(message)

    # --- the run ----------------------------------------------------------------------------

    def execute(self) -> RunFolder:
        """Run every step; raise RunFailed at the first failing step (earlier outputs stay)."""
        self._pending_warnings: dict[str, list[str]] = {}
        try:
            if not (self.folder.path / "workflow.yaml").exists():
                self._copy_workflow()
            self._save("running")
            budget = self.options.budget
            if budget is None or budget.jobs <= 1:
                for step in self.plan.steps:
                    try:
                        self._run_step(step)
                    except (RunFailed, KeyboardInterrupt):
                        raise
                    except (OSError, BlockkitError) as exc:
                        # The runner's own work failed (a full disk, a vanished folder, a refused input):
                        # the step is named, the run is marked failed and can be resumed.
                        raise self._runner_failure(step, exc) from exc
            else:
                self._execute_parallel(budget)
        except RunFailed:
            self._save_quietly("failed")
            raise
        except KeyboardInterrupt:
            for record in self.records.values():
                if record.status == "running":
                    record.status, record.ended = "interrupted", time.time()
            self._save_quietly("interrupted")
            raise
        except Exception as exc:
            # Anything else: the run folder must not say "running".
            for record in self.records.values():
                if record.status == "running":
                    record.status, record.detail = "failed", f"{type(exc).__name__}: {exc}"[:500]
            self._save_quietly("failed")
            raise
        finally:
            try:
                self.hashes.save()
            except OSError:
                pass  # the hash cache only saves re-reading files
            self.lock.release()
        self._save("ok")
        return self.folder

    def _execute_parallel(self, budget: Budget) -> None:
        """Run steps in worker threads as the scheduler hands them out; raise the first failure.

        After a failure no step starts; running ones finish (or, with fail_fast, are stopped).
        Ctrl-C/SIGTERM arrive in this (main) thread: every running step is cancelled through
        its `StepSpec.cancel` event and waited for before KeyboardInterrupt goes on.
        """
        sched = Scheduler([Task(s.name, tuple(s.upstream), float(s.resources[0]), int(s.resources[1]))
                           for s in self.plan.steps], budget)
        finished: queue.Queue[tuple[str, BaseException | None]] = queue.Queue()
        workers: dict[str, threading.Thread] = {}
        first: BaseException | None = None

        def work(step: PlannedStep) -> None:
            outcome: BaseException | None = None
            try:
                self._run_step(step)
            except (RunFailed, _Cancelled) as exc:
                outcome = exc
            except (OSError, BlockkitError) as exc:
                try:
                    outcome = self._runner_failure(step, exc)
                except BaseException as again:  # noqa: BLE001 - reported to the main thread
                    outcome = again
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                outcome = exc
            finished.put((step.name, outcome))

        try:
            while not sched.done:
                for task in sched.ready():
                    self._cancel_events[task.name] = threading.Event()
                    worker = threading.Thread(target=work, args=(self.plan.step(task.name),),
                                              name=f"step-{task.name}", daemon=True)
                    workers[task.name] = worker
                    worker.start()
                if not sched.running:
                    break
                name, outcome = self._next_finished(finished)
                workers.pop(name).join()
                sched.finish(name, outcome is None)
                if outcome is not None and first is None:
                    first = outcome
                    if self.options.fail_fast:
                        for other in list(sched.running):
                            self._cancel(other, f"stopped because step {name!r} failed (--fail-fast)")
        except BaseException:
            # Ctrl-C, SIGTERM/SIGHUP (KeyboardInterrupt from run_cmd) or a runner bug: stop every
            # running step and wait for it, so no process or container outlives the run.
            for other in list(workers):
                self._cancel(other, "interrupted")
            self._wait_for(workers)
            raise
        if first is not None:
            raise first

    @staticmethod
    def _next_finished(finished: queue.Queue[tuple[str, BaseException | None]]) -> tuple[str, BaseException | None]:
        while True:  # short waits: signals are handled between them
            try:
                return finished.get(timeout=0.2)
            except queue.Empty:
                continue

    def _cancel(self, step: str, reason: str) -> None:
        with self._state:
            self._cancelled.setdefault(step, reason)
            event = self._cancel_events.get(step)
        if event is not None:
            event.set()

    @staticmethod
    def _wait_for(workers: dict[str, threading.Thread]) -> None:
        """Join the workers; a second Ctrl-C does not cut the wait short (steps are being stopped)."""
        for worker in workers.values():
            while worker.is_alive():
                try:
                    worker.join(timeout=0.2)
                except KeyboardInterrupt:
                    continue

    def _stop_if_cancelled(self, step: PlannedStep, record: StepRecord) -> None:
        """Mark a step the runner stopped as interrupted (resumable) and leave its worker."""
        reason = self._cancelled.get(step.name)
        if reason is None:
            return
        record.status, record.ended, record.detail = "interrupted", time.time(), reason
        self._save("running")
        self._emit("interrupted", step.name, detail=reason)
        raise _Cancelled(step.name)

    def _runner_failure(self, step: PlannedStep, exc: BaseException) -> RunFailed:
        record = self.records[step.name]
        if isinstance(exc, BlockkitError):
            code, text = int(exc.exit_code), exc.message
        else:
            code, text = int(ExitCode.UNEXPECTED_ERROR), f"{type(exc).__name__}: {exc}"
        record.status, record.exit_code, record.exit_name = "failed", code, ExitCode.describe(code)
        record.detail = f"the runner failed at this step: {text}"[:500]
        record.ended = time.time()
        self._save_quietly("failed")
        self._emit("failed", step.name, exit_code=code, exit_name=record.exit_name, detail=record.detail)
        return RunFailed(f"step {step.name!r} failed: {record.detail}", step=step.name, step_exit=code,
                         run_dir=self.folder.path)

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
            # A result is reused only from the same engine (and image): the two run a block in
            # different environments (host Python vs the image), so their outputs may differ.
            "engine": engine.name,
            "image_id": image_id,
            # Only scattered steps carry the field: the keys of other steps stay as they were.
            **({"scatter": step.definition.scatter} if step.definition.scatter else {}),
        })
        output_dir = self.folder.output_dir(step.name)
        record.block, record.image, record.image_id = block_info, image, image_id
        record.engine = engine.name
        record.params = redact_parameters(step.manifest, step.params)
        record.upstream = list(step.upstream)
        record.inputs = inputs
        if self.options.resume and record.status in ("ok", "cached") and record.cache_key == key and output_dir.is_dir():
            problem = verify_tree(output_dir, record.outputs, self.hashes)
            if problem is None:
                self._emit("skipped", step.name, reason="done in the resumed run", features=record.features_out)
                return
            self._warn(step.name, f"the output of step {step.name!r} changed since it finished ({problem}); "
                                  "running the step again")
        if self.options.use_cache and self._reuse(step, record, key, output_dir):
            return
        remove_tree(output_dir)
        work_dir = self.folder.work_dir(step.name)
        self._reset_dir(work_dir)
        self._reset_dir(self.folder.quicklook_dir(step.name))
        log_path = self.folder.log_path(step.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(f"[blockkit] warning: {w}\n" for w in self._pending_warnings.pop(step.name, [])))
        cpus, memory = step.resources  # the machine type, capped to the host (plan.prepare_for_engine)
        spec = StepSpec(
            name=step.name,
            block_dir=step.block_dir,
            image=image,
            input_dir=input_dir,
            output_dir=work_dir,
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
        record.cached_from = record.produced_by = None
        record.detail = ""
        spec.cancel = self._cancel_events.get(step.name)
        self._save("running")
        self._stop_if_cancelled(step, record)
        self._emit("started", step.name)
        try:
            if step.definition.scatter == "features":
                result = self._run_scattered(step, spec, image)
            else:
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
        self._stop_if_cancelled(step, record)
        self._after_step(step, record, result, input_dir, output_dir, upstream_dirs, spec)

    def _run_scattered(self, step: PlannedStep, spec: StepSpec, image: str | None) -> StepResult:
        """`scatter: features`: the block once per input feature, the outputs merged into `spec.output_dir`.

        Each run sees a data.json with its one feature and only that feature's files (hard
        links), as the exported CWL's split step gives it; parts run at once within the
        budget; the merge follows `blockkit.runtime.scatter.merge`, so both agree.
        """
        from concurrent.futures import ThreadPoolExecutor

        from blockkit.runtime.scatter import merge, split

        engine = self.options.engine
        started = time.time()
        base = self.folder.path / "steps" / step.name / "parts"
        remove_tree(base)
        try:
            parts = split(spec.input_dir, base / "input")
        except BlockkitError as err:
            return StepResult(int(err.exit_code), started, time.time(), detail=f"scatter: {err.message}")
        sink = self._log_sink(step.name)
        failed = threading.Event()

        def one(name: str, folder: Path) -> StepResult | None:
            if failed.is_set() or (spec.cancel is not None and spec.cancel.is_set()):
                return None  # a feature failed, or the step is being stopped: no new one starts
            part = StepSpec(**{**spec.__dict__, "input_dir": folder, "upstream_dirs": {},
                               "output_dir": base / "output" / name, "quicklook_dir": base / "quicklooks" / name})
            with spec.log_path.open("a", encoding="utf-8") as log:
                log.write(f"[blockkit] feature {name}\n")
            with self._gateway(step, part, image):
                result = engine.run_step(part, sink)
            if result.exit_code != 0:
                failed.set()
            return result

        workers = self._part_workers(step, len(parts))
        if workers == 1:
            # In the calling thread: with --jobs 1 that is the main one, where Ctrl-C stops the block.
            results = [one(name, folder) for name, folder in parts]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"part-{step.name}") as pool:
                results = list(pool.map(lambda named: one(*named), parts))
        image_id = next((r.image_id for r in results if r is not None and r.image_id), None)
        for (name, _), result in zip(parts, results):
            if result is not None and result.exit_code != 0:
                detail = f"feature {name!r}: {result.detail or ExitCode.describe(result.exit_code)}"
                return StepResult(result.exit_code, started, time.time(), image_id=image_id,
                                  oom_killed=result.oom_killed, timed_out=result.timed_out, detail=detail)
        if any(result is None for result in results):  # stopped before every feature ran
            return StepResult(int(ExitCode.UNEXPECTED_ERROR), started, time.time(), image_id=image_id,
                              detail="stopped before every feature ran")
        try:
            merge([(name, base / "output" / name, base / "quicklooks" / name) for name, _ in parts],
                  spec.output_dir, spec.quicklook_dir)
        except BlockkitError as err:
            return StepResult(int(err.exit_code), started, time.time(), image_id=image_id,
                              detail=f"scatter merge: {err.message}")
        remove_tree(base)  # the merged output holds the only links to the parts' files
        return StepResult(0, started, time.time(), image_id=image_id)

    def _part_workers(self, step: PlannedStep, parts: int) -> int:
        """How many features of a scattered step run at once: the budget divided by the step's size."""
        budget = self.options.budget
        if budget is None or budget.jobs <= 1 or parts <= 1:
            return 1
        cpus, memory = step.resources
        fit = min(budget.jobs, int(budget.cpus // max(cpus, 0.01)), budget.memory_mb // max(int(memory), 1))
        return max(1, min(parts, fit))

    def _reuse(self, step: PlannedStep, record: StepRecord, key: str, output_dir: Path) -> bool:
        """Serve the step from the cache when an earlier output with this key still matches its hashes."""
        rel = self.cache.lookup(key)
        if not rel:
            return False
        cached = self.root / rel
        if cached == output_dir:
            return False
        producer = self._producer(rel, key)
        if producer is None:
            self.cache.evict(key, rel)
            return False
        problem = verify_tree(cached, producer["outputs"], self.hashes)
        if problem is not None:
            # Never reuse a changed result silently: drop it from the cache and run the step.
            self.cache.evict(key, rel)
            self._warn(step.name, f"the cached output {rel} changed since it was made ({problem}); "
                                  "evicted from the cache, running the step again")
            return False
        remove_tree(output_dir)
        remove_tree(self.folder.work_dir(step.name))
        link_tree(cached, output_dir, on_link=self.hashes.moved)
        lock_tree(output_dir)
        record.status, record.cached_from = "cached", rel
        record.produced_by = producer.get("produced_by") or {
            "run_id": rel.split("/")[0], "step": producer.get("name"), "engine": producer.get("engine"),
            "image": producer.get("image"), "image_id": producer.get("image_id")}
        record.exit_code, record.exit_name, record.cache_key = 0, "OK", key
        record.started = record.ended = time.time()
        record.detail = ""
        record.outputs = dict(producer["outputs"])
        record.features_out = len(load_data_json(output_dir, required=False, check_files=False))
        self._emit("cached", step.name, source=record.cached_from, features=record.features_out)
        self._save("running")
        return True

    def _producer(self, rel: str, key: str) -> dict[str, Any] | None:
        """The run.json record of the step that made a cached output (None if gone or not that key)."""
        parts = rel.split("/")
        if len(parts) != 4 or parts[1] != "steps" or parts[3] != "output":
            return None
        try:
            run = json.loads((self.root / parts[0] / RUN_FILE).read_text())
            rec = run["steps"][parts[2]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(rec, dict) or rec.get("cache_key") != key or rec.get("status") not in ("ok", "cached"):
            return None
        if not isinstance(rec.get("outputs"), dict) or DATA_JSON not in rec["outputs"]:
            return None
        return rec

    def _after_step(self, step: PlannedStep, record: StepRecord, result: StepResult,
                    input_dir: Path, output_dir: Path, upstream_dirs: Mapping[str, Path], spec: StepSpec) -> None:
        record.started, record.ended = result.started, result.ended
        record.exit_code, record.exit_name = result.exit_code, ExitCode.describe(result.exit_code)
        if result.timed_out:
            record.exit_name = "TIMEOUT"
        if result.oom_killed:
            record.exit_name = "OUT_OF_MEMORY"
        detail = result.detail
        if result.exit_code == 0:
            try:
                self._seal_output(step, record, result, spec, input_dir, output_dir, upstream_dirs)
            except SealTimeout as err:
                record.exit_code, record.exit_name = TIMEOUT_EXIT_CODE, "TIMEOUT"
                detail = f"{err.message} ({spec.timeout_s:g} s)"
            except BlockkitError as err:
                record.exit_code, record.exit_name = int(ExitCode.NO_OUTPUT_ERROR), "NO_OUTPUT_ERROR"
                detail = f"the step exited 0 but its output is invalid: {err.message}"
            if record.exit_code != 0 and output_dir.exists():
                # Only sealed, accepted results live in steps/<step>/output.
                remove_tree(spec.output_dir)
                os.rename(output_dir, spec.output_dir)
        if record.exit_code != 0:
            record.status = "failed"
            record.detail = detail or self._last_error_line(step.name)
            record.ended = time.time()
            self._save("failed")
            self._emit("failed", step.name, exit_code=record.exit_code, exit_name=record.exit_name, detail=record.detail)
            message = f"step {step.name!r} failed with exit code {record.exit_code} ({record.exit_name})"
            if record.detail:
                message += f": {record.detail}"
            raise RunFailed(message, step=step.name, step_exit=record.exit_code or 1, run_dir=self.folder.path)
        record.status = "ok"
        record.ended = time.time()
        # Stored even with --no-cache: a forced run refreshes the cache for the next one.
        self.cache.store(record.cache_key or "", output_dir)
        self._save("running")
        self._emit("done", step.name, seconds=record.ended - record.started, features=record.features_out)

    def _seal_output(self, step: PlannedStep, record: StepRecord, result: StepResult, spec: StepSpec,
                     input_dir: Path, output_dir: Path, upstream_dirs: Mapping[str, Path]) -> None:
        """Take the step's output over: rename it to the sealed place, check, hash, forward, lock."""
        deadline = None
        if spec.timeout_s:
            # The step's timeout covers taking over and hashing what it wrote.
            deadline = time.monotonic() + max(0.0, spec.timeout_s - (time.time() - result.started))
        limit = output_limit(step.manifest.machine_type, step.definition.max_output)
        os.rename(spec.output_dir, output_dir)  # same folder, atomic, no byte copied
        sealed = seal_tree(output_dir, self.hashes, limit=limit, deadline=deadline)
        seal_tree(spec.quicklook_dir, self.hashes, what="quicklooks", limit=limit, deadline=deadline,
                  hash_files=False).lock()
        if DATA_JSON not in sealed.files:
            raise SealError("it wrote no data.json (an empty result is a data.json with no features)")
        fc = load_data_json(output_dir, required=False)
        files = sealed.files
        if step.propagate:
            if upstream_dirs:  # mounted fan-in: the files are still in each upstream's folder
                forwarded = forward_fan_in(upstream_dirs, fc.features, output_dir, on_link=self.hashes.moved)
            else:
                inputs = load_data_json(input_dir, required=False).features
                forwarded = forward_all(inputs, fc.features, input_dir, output_dir, on_link=self.hashes.moved)
            fc.features.extend(forwarded)
            fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                replace_atomic(output_dir / DATA_JSON, dumps(fc), dir_fd=fd)
            finally:
                os.close(fd)
            files = seal_tree(output_dir, self.hashes, limit=limit, deadline=deadline).files
        sealed.lock()
        record.outputs = files
        record.features_out = len(fc.features)

    @contextlib.contextmanager
    def _gateway(self, step: PlannedStep, spec: StepSpec, image: str | None) -> Iterator[None]:
        """Start the S3 gateway beside the step when its manifest asks (`blockkit.s3`)."""
        if not step.manifest.s3_gateway:
            yield
            return
        with self.options.engine.gateway(spec, step.upstream, image) as env:
            spec.env = {**env, **spec.env}
            yield

    # --- inputs -----------------------------------------------------------------------------

    def _prepare_input(self, step: PlannedStep) -> tuple[Path, dict[str, Path]]:
        """The step's input folder, and the upstream folders to mount under it (fan-in)."""
        if not step.upstream:
            if self.options.input_dir is not None:
                return self.options.input_dir, {}
            folder = self.folder.input_dir(step.name)
            if not folder.is_dir():
                folder.mkdir(parents=True)
                lock_tree(folder)
            return folder, {}
        if len(step.upstream) == 1:
            return self.folder.output_dir(step.upstream[0]), {}
        folder = self.folder.input_dir(step.name)
        self._reset_dir(folder)
        merged = FeatureCollection()
        mounts: dict[str, Path] = {}
        mounts_upstreams = self.options.engine.mounts_upstreams
        for up in step.upstream:
            up_dir = self.folder.output_dir(up)
            merged.features.extend(fan_in_feature(up, f) for f in load_data_json(up_dir, required=False))
            if mounts_upstreams and step.definition.scatter is None:
                (folder / up).mkdir()
                mounts[up] = up_dir
            else:
                link_tree(up_dir, folder / up, on_link=self.hashes.moved)  # hard links: no bytes copied
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            replace_atomic(folder / DATA_JSON, dumps(merged), dir_fd=fd)
        finally:
            os.close(fd)
        seal_tree(folder, self.hashes, what="fan-in input", hash_files=False).lock()
        return folder, mounts

    def _input_hashes(self, step: PlannedStep, input_dir: Path) -> dict[str, str]:
        if step.upstream:
            # Sealed upstream outputs: their hashes were recorded when they were taken over.
            prefix = len(step.upstream) > 1
            hashes: dict[str, str] = {}
            for up in step.upstream:
                outputs = self.records[up].outputs
                hashes.update({(f"{up}/{rel}" if prefix else rel): sha for rel, sha in outputs.items()})
            return hashes
        try:
            return seal_tree(input_dir, self.hashes, what="input", read_only=False).files
        except SealError as err:
            raise WrongInputError(f"{err.message.replace('output may', 'input may')} ({input_dir})") from None

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

    def _copy_workflow(self) -> None:
        """Keep a copy of the workflow file in the run folder, secret parameter values redacted."""
        path = self.plan.workflow.path
        if not path:
            return
        text = redact_workflow_text(path.read_text(encoding="utf-8"), self.plan)
        if self.options.redact:
            text = self.options.redact(text)
        self.folder.write_text("workflow.yaml", text)

    def _log_sink(self, step: str) -> Callable[[str, str], None] | None:
        sink, redact = self.options.on_log_line, self.options.redact
        if sink is None:
            return None
        state = self._state

        def show(name: str, line: str) -> None:
            line = redact(line) if redact is not None else line
            with state:  # one whole line at a time, whichever step's thread it comes from
                sink(name, line)

        return show

    def _redact_log(self, step: str) -> None:
        """Rewrite a step's logs without secret values (a block may print what it was given)."""
        if self.options.redact is None:
            return
        for path in self.folder.log_path(step).parent.glob(f"{step}*.log"):
            text = path.read_text(errors="replace")
            clean = self.options.redact(text)
            if clean != text:
                replace_atomic(path, clean)

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
        remove_tree(path)
        path.mkdir(parents=True)

    def _save_quietly(self, status: str) -> None:
        """Record the final state if the disk lets us (a failure must not hide the first error)."""
        try:
            self._save(status)
        except OSError:
            pass

    def _save(self, status: str) -> None:
        with self._state:
            self._save_locked(status)

    def _save_locked(self, status: str) -> None:
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
            "runner": self.runner,
            "steps": steps,
        }
        self.folder.write_json(RUN_FILE, run)
        provenance = {
            "run_id": self.folder.run_id,
            "blockkit_version": blockkit.__version__,
            "workflow": {
                "name": workflow.name,
                "path": run["workflow_path"],
                "sha256": self.hashes.file_sha256(workflow.path.resolve()) if workflow.path else None,
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
        self.folder.write_text(PROVENANCE_FILE, text)


def redact_workflow_text(text: str, plan: Plan) -> str:
    """The workflow file's text with the value of every secret parameter replaced by '***'.

    The values are found by their position in the YAML (so comments and layout stay), also
    when they come through an anchor; a file that does not parse is kept out entirely.
    """
    import yaml

    secret = {step.name: step.manifest.secret_parameters for step in plan.steps if step.manifest}
    if not any(secret.values()):
        return text
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return "# (the workflow file could not be re-read to redact its secrets)\n"
    spans: set[tuple[int, int]] = set()
    for step_name, step_node in _mapping_items(_mapping_get(root, "steps")):
        names = secret.get(step_name) or set()
        for param, value_node in _mapping_items(_mapping_get(step_node, "params")):
            if param in names:
                spans.add((value_node.start_mark.index, value_node.end_mark.index))
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + "'***'" + text[end:]
    return text


def _mapping_get(node: Any, key: str) -> Any:
    for k, v in _mapping_items(node):
        if k == key:
            return v
    return None


def _mapping_items(node: Any) -> list[tuple[str, Any]]:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return []
    return [(str(k.value), v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
