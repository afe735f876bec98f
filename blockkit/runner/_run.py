"""Running a planned workflow: the orchestration of steps, data passing, caching and resume.

The run folder format is `blockkit.runner._run_folder`, run.json/provenance.json are built by
`blockkit.runner._provenance`, cache keys and the cache index are `blockkit.runner._cache`;
their names are imported here too, as before the split.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import blockkit
from blockkit.contract._datajson import DATA_JSON, FeatureCollection, dumps, load_data_json
from blockkit.contract.errors import (
    TIMEOUT_EXIT_CODE,
    BlockkitError,
    ExitCode,
    RunError,
    RunFailed,
    RunInterrupted,
    WorkflowError,
    WrongInputError,
)
from blockkit.contract._parameters import redact_parameters
from blockkit.runner._engine import Engine, Resources, StepResult, StepSpec
from blockkit.runner._cache import (
    CacheIndex,
    part_key,
    part_producer,
    producer_record,
    step_identity,
    step_key,
    verify_part,
)
from blockkit.runner._hashing import HashCache, source_hash
from blockkit.runner._lock import RunLock, replace_atomic, runner_identity
from blockkit.runner._logfilter import ErrorLineTracker
from blockkit.runner._plan import Plan, PlannedStep
from blockkit.runner._provenance import provenance_document, redact_workflow_text, run_document
from blockkit.runner._output_json import load_output
from blockkit.runner._run_folder import (
    PROVENANCE_FILE,
    RESERVE_BYTES,
    RUN_FILE,
    RunFolder,
    StepRecord,
    default_runs_dir,
    find_run,
    gateway_log_path,
)
from blockkit.runner._schedule import Budget, Scheduler, Task
from blockkit.runner._seal import SealError, SealTimeout, lock_tree, output_limit, remove_tree, seal_tree, verify_tree
from blockkit.runtime._propagation import fan_in_features, forward_all, forward_fan_in, link_tree

Event = Callable[[str, str, dict[str, Any]], None]  # (kind, step, info)




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
    #: A failing step (or feature of a scattered step) does not stop the others: every step
    #: that does not depend on a failed one runs to completion (`make -k`), then the run fails.
    keep_going: bool = False
    #: Cap every step at its machine type's CPUs (docker), as UP42 does; by default they are
    #: its share when CPUs are contended and what the scheduler reserves.
    strict_cpu: bool = False


#: --jobs not given: no limit on the number of steps, only on their CPUs and memory.
UNLIMITED_JOBS = 1 << 16

#: A scattered step's feature records reach run.json at most this long (s) after they change:
#: features that end together (reused ones by the hundred) share one write of run.json,
#: instead of one each, which made a step of N features write O(N²) bytes.
PART_SAVE_INTERVAL = 0.25

#: What a scattered part's record keeps when its feature runs (again); every other field told
#: of an earlier outcome (a resumed attempt's outputs, exit, detail, where it was reused from).
PART_IDENTITY = frozenset({"name", "feature", "cache_key"})


class _Cancelled(Exception):
    """A running step was stopped by the runner (Ctrl-C/SIGTERM, or --fail-fast)."""


class WorkflowRun:
    """Runs the steps of a plan in a run folder it holds the lock of.

    With a budget of more than one job, steps whose upstreams are done run at once in worker
    threads (see `blockkit.runner._schedule`); run.json, provenance, events and the caches are
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
        #: When run.json was last written (monotonic), whether part records changed since, and
        #: the timer that writes them (see PART_SAVE_INTERVAL).
        self._saved_at = 0.0
        self._unsaved_parts = False
        self._save_timer: threading.Timer | None = None
        #: Cache entries whose records are not on disk yet: written to the index right after
        #: the next run.json, so the index never names a result its run.json does not record.
        self._pending_stores: list[tuple[str, Path]] = []

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

    def execute(self, deliver: Callable[[], list[str]] | None = None, redeliver: str = "") -> RunFolder:
        """Run every step; raise RunFailed at the first failing step (earlier outputs stay).

        `deliver` (stage-out) runs after the last step, still under the run's lock and before
        run.json says ok; what it returns is `delivered`. If it fails, the run fails (resumable:
        a resume delivers again), with the run folder named and `redeliver`, the command that
        delivers, as a hint.
        """
        self._pending_warnings: dict[str, list[str]] = {}
        #: Per scattered step: features a resumed attempt had finished, kept in this one without running.
        self._kept_parts: dict[str, int] = {}
        #: Where `deliver` put the results.
        self.delivered: list[str] = []
        succeeded = False
        try:
            self._start()
            budget = self.options.budget
            if budget is None or budget.jobs <= 1:
                failures: list[RunFailed] = []
                stopped: set[str] = set()  # failed, or waiting for a failed step (--keep-going)
                for step in self.plan.steps:
                    blocker = next((up for up in step.upstream if up in stopped), None)
                    if blocker is not None:
                        self._not_run(step, blocker)
                        stopped.add(step.name)
                        continue
                    try:
                        self._run_step(step)
                    except RunFailed as exc:
                        if not self.options.keep_going:
                            raise
                        failures.append(exc)
                        stopped.add(step.name)
                    except KeyboardInterrupt:
                        raise
                    except (OSError, BlockkitError) as exc:
                        # The runner's own work failed (a full disk, a vanished folder, a refused input):
                        # the step is named, the run is marked failed and can be resumed.
                        failure = self._runner_failure(step, exc)
                        if not self.options.keep_going:
                            raise failure from exc
                        failures.append(failure)
                        stopped.add(step.name)
                if failures:
                    raise self._all_failures(failures)
            else:
                self._execute_parallel(budget)
            if deliver is not None:
                self.delivered = self._deliver(deliver, redeliver)
        except RunFailed:
            self._save_quietly("failed")
            raise
        except KeyboardInterrupt:
            for record in self.records.values():
                if record.status == "running":
                    record.status, record.ended = "interrupted", time.time()
            with _signals_held():  # a second Ctrl-C must not leave run.json saying running
                self._save_quietly("interrupted")
            raise
        except Exception as exc:
            # Anything else: the run folder must not say "running".
            for record in self.records.values():
                if record.status == "running":
                    record.status, record.detail = "failed", f"{type(exc).__name__}: {exc}"[:500]
            self._save_quietly("failed")
            raise
        else:
            succeeded = True
        finally:
            self._stop_save_timer()
            try:
                if succeeded:
                    try:
                        self._save("ok")  # still under the lock: a --resume waiting for it reads the final state
                    except OSError as exc:
                        raise RunFailed(f"every step finished, but the run's final state could not be written: "
                                        f"{_describe(exc)}", step="", step_exit=1, run_dir=self.folder.path) from exc
                try:
                    self.hashes.save()
                except OSError:
                    pass  # the hash cache only saves re-reading files
            finally:
                self.lock.release()
        return self.folder

    def _start(self) -> None:
        """The run folder's first writes (a new run's folder goes again when they fail), and its leftovers' sweep."""
        try:
            if not (self.folder.path / "workflow.yaml").exists():
                self._copy_workflow()
            self._save("running")
        except OSError as exc:
            if not self.options.resume:  # nothing in it yet: no folder that housekeeping cannot see
                with contextlib.suppress(OSError):
                    remove_tree(self.folder.path)
                raise RunError(f"cannot start a run in {self.root}: {_describe(exc)}") from exc
            raise RunError(f"cannot resume run {self.folder.run_id}: {_describe(exc)}") from exc
        sweep_leftovers(self.folder.path)  # of a runner killed in this folder (we hold its lock)

    def _deliver(self, deliver: Callable[[], list[str]], redeliver: str) -> list[str]:
        """Stage the results out; a failure is the run's (RunFailed, run folder named, resumable)."""
        try:
            return deliver()
        except (OSError, BlockkitError) as exc:
            code = int(exc.exit_code) if isinstance(exc, BlockkitError) else 1
            detail = exc.message if isinstance(exc, BlockkitError) else _describe(exc)
            failure = RunFailed(f"every step finished, but the results were not delivered: {detail}",
                                step="", step_exit=code, run_dir=self.folder.path)
            if redeliver:
                failure.hints.append(f"deliver them with: {redeliver}")
            raise failure from exc

    def _execute_parallel(self, budget: Budget) -> None:
        """Run steps in worker threads as the scheduler hands them out; raise the first failure.

        After a failure no step starts; running ones finish (or, with fail_fast, are stopped).
        Ctrl-C/SIGTERM arrive in this (main) thread: every running step is cancelled through
        its `StepSpec.cancel` event and waited for before KeyboardInterrupt goes on.
        """
        sched = Scheduler([Task(s.name, tuple(s.upstream), float(s.resources[0]), int(s.resources[1]))
                           for s in self.plan.steps], budget, keep_going=self.options.keep_going)
        finished: queue.Queue[tuple[str, BaseException | None]] = queue.Queue()
        workers: dict[str, threading.Thread] = {}
        first: BaseException | None = None
        failures: list[RunFailed] = []

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
                if isinstance(outcome, RunFailed):
                    failures.append(outcome)
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
        for blocked in sched.blocked:
            waiting = self.plan.step(blocked)
            self._not_run(waiting, next(up for up in waiting.upstream if up in sched.failed or up in sched.blocked))
        if isinstance(first, RunFailed) and len(failures) > 1:
            raise self._all_failures(failures)  # --keep-going: every failed step is named
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

    def _not_run(self, step: PlannedStep, blocker: str) -> None:
        """--keep-going: a step left out because a step it waits for failed (pending: --resume runs it)."""
        record = self.records[step.name]
        record.status, record.detail = "pending", f"not run: step {blocker!r} it waits for did not finish"
        self._save("running")
        self._emit("blocked", step.name, detail=record.detail)

    def _all_failures(self, failures: list[RunFailed]) -> RunFailed:
        """One RunFailed for several failed steps (--keep-going): the first one's step and exit code, all named."""
        first = failures[0]
        if len(failures) == 1:
            return first
        names = ", ".join(repr(f.step) for f in failures)
        message = f"{len(failures)} steps failed ({names}); first: {first.message}"
        return RunFailed(message, step=first.step, step_exit=first.step_exit, run_dir=first.run_dir)

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
        identity = step_identity(block=block_info.get("source_sha256") or image_id, params=step.params,
                                 mode=step.definition.mode, blockkit_version=blockkit.__version__,
                                 engine=engine.name, image_id=image_id, scatter=step.definition.scatter)
        key = step_key(identity, inputs, step.propagate)
        output_dir = self.folder.output_dir(step.name)
        record.block, record.image, record.image_id = block_info, image, image_id
        record.engine = engine.name
        record.params = redact_parameters(step.manifest, step.params)
        record.upstream = list(step.upstream)
        record.inputs = inputs
        if self.options.resume and record.status in ("ok", "cached") and record.cache_key == key and output_dir.is_dir():
            problem = verify_tree(output_dir, record.outputs, self.hashes)
            if problem is None:
                problem = verify_tree(self.folder.quicklook_dir(step.name), record.quicklooks, self.hashes)
                problem = problem and f"quicklooks: {problem}"
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
        gateway_log_path(log_path).unlink(missing_ok=True)  # an earlier attempt's (--resume)
        cpus, memory = step.resources  # the machine type, capped to the host (plan.cap_resources)
        resources = Resources(cpus=cpus, memory_mb=memory, strict_cpu=self.options.strict_cpu)
        spec = StepSpec(
            name=step.name,
            block_dir=step.block_dir,
            image=image,
            image_id=image_id,
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
            resources=resources,
            timeout_s=step.definition.timeout or step.manifest.options.get("timeout"),
            command=step.command,  # the entry resolved for this engine (plan.prepare_for_engine)
            venv=step.venv,
        )
        record.status, record.started, record.cache_key = "running", time.time(), key
        record.resources = step_resources(resources, engine)
        record.exit_code = record.ended = None
        record.cached_from = record.produced_by = None
        record.detail = ""
        spec.cancel = self._cancel_events.get(step.name)
        self._save("running")
        self._stop_if_cancelled(step, record)
        self._emit("started", step.name)
        try:
            if step.definition.scatter == "features":
                result = self._run_scattered(step, spec, image, identity)
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

    def _run_scattered(self, step: PlannedStep, spec: StepSpec, image: str | None,
                       identity: Mapping[str, Any]) -> StepResult:
        """`scatter: features`: the block once per input feature, the outputs merged into `spec.output_dir`.

        Each run sees a data.json with its one feature and only that feature's files (hard
        links), as the exported CWL's split step gives it; parts run at once within the
        budget; the merge follows `blockkit.runtime.scatter.merge`, so both agree.

        The datum cache: every part has its own cache key (the step's identity and the hashes
        of the part's one-feature input) and its own sealed folder,
        `steps/<step>/parts/<name>/{output,quicklooks}`, kept after the merge (the merged output
        hard-links the same files). A part whose key this run already finished (--resume) or
        the cache index knows is reused after its files are checked against the recorded
        hashes; only the other features run. A changed reused part is evicted and run again.
        """
        from concurrent.futures import ThreadPoolExecutor

        from blockkit.runtime.scatter import merge, split

        engine = self.options.engine
        record = self.records[step.name]
        started = time.time()
        base = self.folder.parts_dir(step.name)
        split_dir = self.folder.split_dir(step.name)
        remove_tree(split_dir)
        try:
            parts = split(spec.input_dir, split_dir)
        except BlockkitError as err:
            remove_tree(split_dir)
            return StepResult(int(err.exit_code), started, time.time(), detail=f"scatter: {err.message}")
        names = [name for name, _ in parts]
        base.mkdir(parents=True, exist_ok=True)
        for old in base.iterdir():
            if old.name not in names:
                remove_tree(old)  # a feature no longer in the input (a resumed run's changed input)
        earlier = {str(p.get("name")): p for p in record.parts if isinstance(p, dict)} if self.options.resume else {}
        # The cache index and the producers' run.json are read once for the whole step, not per feature.
        known = self.cache.entries if self.options.use_cache else {}
        producers: dict[str, Any] = {}
        entries: list[dict[str, Any]] = []
        finished: list[Mapping[str, Any] | None] = []  # per feature: its record if a resumed attempt finished it
        for name, folder in parts:
            feature = load_data_json(folder, required=False, check_files=False).features[0]
            try:
                inputs = seal_tree(folder, self.hashes, what="input", read_only=False).files
            except SealError as err:
                remove_tree(split_dir)
                return StepResult(int(ExitCode.WRONG_INPUT_ERROR), started, time.time(),
                                  detail=f"feature {name!r}: {err.message.replace('output may', 'input may')}")
            key = part_key(identity, inputs)
            done = earlier.get(name)
            if done is not None and done.get("cache_key") == key and done.get("status") in ("ran", "reused"):
                # A resumed run's finished feature stays recorded as finished until it is checked
                # again: the cache index may name it, and another runner reads this run.json.
                finished.append(done)
                entries.append({**done, "feature": feature.get("id")})
            else:
                finished.append(None)
                entries.append({"name": name, "feature": feature.get("id"), "status": "pending", "cache_key": key})
        with self._state:
            record.parts = entries
        sink = self._log_sink(step.name)
        failed = threading.Event()
        keep_going = self.options.keep_going
        kept: list[str] = []  # finished by the resumed attempt and still as it left them

        def one(index: int) -> StepResult | None:
            entry = entries[index]
            name, folder = parts[index]
            if self._reuse_part(step, entry, finished[index], known, producers):
                if finished[index] is not None and entry.get("status") == "ran":
                    kept.append(name)
                return StepResult(0, time.time(), time.time())
            if (failed.is_set() and not keep_going) or (spec.cancel is not None and spec.cancel.is_set()):
                return None  # a feature failed, or the step is being stopped: no new one starts
            part_dir = base / name
            remove_tree(part_dir)
            part_dir.mkdir()
            os.rename(folder, part_dir / "input")
            part = StepSpec(**{**spec.__dict__, "input_dir": part_dir / "input", "upstream_dirs": {},
                               "output_dir": part_dir / "work", "quicklook_dir": part_dir / "quicklooks"})
            with spec.log_path.open("a", encoding="utf-8") as log:
                log.write(f"[blockkit] feature {name}\n")
            with self._state:
                for stale in [field for field in entry if field not in PART_IDENTITY]:
                    del entry[stale]  # a resumed feature whose output changed runs afresh
                self._set_part(entry, status="running")
            with self._gateway(step, part, image):
                result = engine.run_step(part, sink)
            if result.exit_code == 0:
                try:
                    self._seal_part(step, entry, part_dir)
                except BlockkitError as err:
                    result = StepResult(int(ExitCode.NO_OUTPUT_ERROR), result.started, time.time(),
                                        image_id=result.image_id, detail=f"its output is invalid: {err.message}")
            if result.exit_code != 0:
                failed.set()
                cancelled = spec.cancel is not None and spec.cancel.is_set()
                self._set_part(entry, status="interrupted" if cancelled else "failed", exit_code=result.exit_code,
                               exit_name="TIMEOUT" if result.timed_out else ExitCode.describe(result.exit_code),
                               detail=result.detail)
            return result

        workers = self._part_workers(step, len(parts))
        # Features neither a resumed attempt finished nor the cache knows start first: they are
        # expected to run, and the checks of the others then go on beside them.
        order = sorted(range(len(parts)), key=lambda i: finished[i] is not None or entries[i]["cache_key"] in known)
        results: list[StepResult | None] = [None] * len(parts)
        try:
            if workers == 1:
                # In the calling thread: with --jobs 1 that is the main one, where Ctrl-C stops the block.
                for index in order:
                    results[index] = one(index)
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"part-{step.name}") as pool:
                    for index, result in zip(order, pool.map(one, order)):
                        results[index] = result
        except BaseException:
            with contextlib.suppress(OSError):  # the first error is the one to see
                self._flush_parts()
            raise
        self._flush_parts()
        remove_tree(split_dir)
        image_id = next((r.image_id for r in results if r is not None and r.image_id), None)
        failures = [(name, result) for name, result in zip(names, results) if result is not None and result.exit_code != 0]
        if failures:
            name, first = failures[0]
            words = own_words(first.detail, ExitCode.describe(first.exit_code), first.exit_code)
            detail = f"feature {name!r}: {words}" if words else f"feature {name!r} failed"
            if len(failures) > 1:
                listed = ", ".join(repr(n) for n, _ in failures)
                detail = f"{len(failures)} features failed ({listed}); {detail}"
            return StepResult(first.exit_code, started, time.time(), image_id=image_id,
                              oom_killed=first.oom_killed, timed_out=first.timed_out, detail=detail)
        if any(result is None for result in results):  # stopped before every feature ran
            return StepResult(int(ExitCode.UNEXPECTED_ERROR), started, time.time(), image_id=image_id,
                              detail="stopped before every feature ran")
        try:
            merge([(name, base / name / "output", base / name / "quicklooks") for name in names],
                  spec.output_dir, spec.quicklook_dir, on_link=self.hashes.moved)
        except BlockkitError as err:
            return StepResult(int(err.exit_code), started, time.time(), image_id=image_id,
                              detail=f"scatter merge: {err.message}")
        ran = [e["name"] for e in entries if e["status"] == "ran" and e["name"] not in kept]
        self._kept_parts[step.name] = len(kept)
        summary = f"{len(entries)} feature(s): {len(ran)} ran"
        if ran and len(ran) < len(entries):
            summary += f" ({', '.join(ran[:5])}{', ...' if len(ran) > 5 else ''})"
        if kept:
            summary += f", {len(kept)} finished before the resume"
        summary += f", {len(entries) - len(ran) - len(kept)} reused"
        return StepResult(0, started, time.time(), image_id=image_id, detail=summary)

    def _part_warning(self, step: str, message: str) -> None:
        """A warning while a scattered step runs: shown, and kept in the step's log (already started)."""
        self._emit("warning", step, message=message)
        with self._state, self.folder.log_path(step).open("a", encoding="utf-8") as log:
            log.write(f"[blockkit] warning: {message}\n")

    def _set_part(self, entry: dict[str, Any], **change: Any) -> None:
        """Update a part's entry (under the state lock: parts end in worker threads) for run.json.

        run.json is written now, or, if it was written less than PART_SAVE_INTERVAL ago, by a
        timer at the end of that interval, with every change made meanwhile.
        """
        with self._state:
            entry.update(change)
            wait = self._saved_at + PART_SAVE_INTERVAL - time.monotonic()
            if wait <= 0:
                self._save_locked("running")
                return
            self._unsaved_parts = True
            if self._save_timer is None:
                self._arm_save_timer(wait)

    def _arm_save_timer(self, wait: float) -> None:
        self._save_timer = threading.Timer(wait, self._timed_save)
        self._save_timer.daemon = True
        self._save_timer.start()

    def _timed_save(self) -> None:
        """The timer's write of part records that changed since run.json was last written.

        A write that fails (a full disk) is tried again after another interval, so a long
        feature running on does not keep the records of those that ended off the disk; the
        step's end writes once more and reports the error.
        """
        with self._state:
            self._save_timer = None
            if not self._unsaved_parts:
                return
            try:
                self._save_locked("running")
            except Exception:  # noqa: BLE001 - this thread has no one to tell; the step's end does
                self._arm_save_timer(PART_SAVE_INTERVAL)

    def _flush_parts(self) -> None:
        """Write part records and pending cache entries now (a scattered step's features are done)."""
        with self._state:
            if self._unsaved_parts or self._pending_stores:
                self._save_locked("running")

    def _stop_save_timer(self) -> None:
        with self._state:
            if self._save_timer is not None:
                self._save_timer.cancel()
                self._save_timer = None

    def _seal_part(self, step: PlannedStep, entry: dict[str, Any], part_dir: Path) -> None:
        """Take a part's output over like a step's (renamed, checked, hashed, read-only) and cache it."""
        limit = output_limit(step.manifest.machine_type, step.definition.max_output)
        output = part_dir / "output"
        os.rename(part_dir / "work", output)
        try:
            sealed = seal_tree(output, self.hashes, limit=limit)
            quicklooks = seal_tree(part_dir / "quicklooks", self.hashes, what="quicklooks", limit=limit)
            # Checked as a step's output is, before it is recorded or cached: a feature must
            # never drop out of the merge, nor a broken result be reused.
            if DATA_JSON not in sealed.files:
                raise SealError("it wrote no data.json (an empty result is a data.json with no features)")
            load_output(output, step.resources[1])  # within the step's memory
        except BaseException:
            with contextlib.suppress(OSError):  # only accepted results live in parts/<name>/output
                self._put_back(output, part_dir / "work")
            raise
        sealed.lock()
        quicklooks.lock()
        remove_tree(part_dir / "input")
        with self._state:
            # Stored even with --no-cache (as steps are): a forced run refreshes the cache;
            # in the index once run.json records the part.
            self._pending_stores.append((entry["cache_key"], part_dir))
            self._set_part(entry, status="ran", exit_code=0, exit_name="OK", outputs=sealed.files,
                           quicklooks=quicklooks.files)

    def _reuse_part(self, step: PlannedStep, entry: dict[str, Any], finished: Mapping[str, Any] | None,
                    known: Mapping[str, str], producers: dict[str, Any]) -> bool:
        """Serve a part from this run's earlier attempt (--resume) or from the cache, when its files check out.

        `finished` is the feature's record when a resumed attempt finished it with this key (the
        entry starts as its copy); `known` is the cache index as the step began; `producers`
        keeps the run.json documents read (see `part_producer`).
        """
        name, key = entry["name"], entry["cache_key"]
        part_dir = self.folder.part_dir(step.name, name)
        rel_here = part_dir.relative_to(self.root).as_posix()
        if finished is not None:
            problem = verify_part(part_dir, finished, self.hashes)
            if problem is None:
                if finished.get("status") == "ran":  # made by this run: its cache entry may not have been written
                    with self._state:
                        self._pending_stores.append((key, part_dir))  # written with the next run.json
                return True
            self._part_warning(step.name, f"the output of feature {name!r} changed since it finished ({problem}); "
                                          "running the feature again")
        if not self.options.use_cache:
            return False
        rel = known.get(key)
        if not rel or rel == rel_here:
            return False
        producer = part_producer(self.root, rel, key, producers)
        if producer is None:
            self.cache.evict(key, rel)
            return False
        problem = verify_part(self.root / rel, producer, self.hashes)
        if problem is not None:
            # Never reuse a changed result silently: drop it from the cache and run the feature.
            self.cache.evict(key, rel)
            self._part_warning(step.name, f"the cached output {rel} of feature {name!r} changed since it was made "
                                          f"({problem}); evicted from the cache, running the feature again")
            return False
        remove_tree(part_dir)
        part_dir.mkdir(parents=True)
        for sub in ("output", "quicklooks"):
            link_tree(self.root / rel / sub, part_dir / sub, on_link=self.hashes.moved)
            lock_tree(part_dir / sub)
        self._set_part(entry, status="reused", exit_code=0, exit_name="OK", outputs=producer["outputs"],
                       quicklooks=producer["quicklooks"], **{"from": rel})
        return True

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
        producer = producer_record(self.root, rel, key)
        if producer is None:
            self.cache.evict(key, rel)
            return False
        cached_quicklooks = cached.parent / "quicklooks"
        recorded_quicklooks = producer.get("quicklooks")
        if not isinstance(recorded_quicklooks, dict):
            return False  # made before quicklooks were recorded: run the step, which records them
        problem = verify_tree(cached, producer["outputs"], self.hashes)
        if problem is None and (recorded_quicklooks or cached_quicklooks.is_dir()):
            problem = verify_tree(cached_quicklooks, recorded_quicklooks, self.hashes)
            problem = problem and f"quicklooks: {problem}"
        if problem is not None:
            # Never reuse a changed result silently: drop it from the cache and run the step.
            self.cache.evict(key, rel)
            self._warn(step.name, f"the cached output {rel} changed since it was made ({problem}); "
                                  "evicted from the cache, running the step again")
            return False
        remove_tree(output_dir)
        remove_tree(self.folder.work_dir(step.name))
        # An interrupted scattered attempt's scratch (its parts' sealed outputs may be cache entries: kept).
        remove_tree(self.folder.split_dir(step.name))
        for scratch in [*self.folder.parts_dir(step.name).glob("*/input"), *self.folder.parts_dir(step.name).glob("*/work")]:
            remove_tree(scratch)
        link_tree(cached, output_dir, on_link=self.hashes.moved)
        lock_tree(output_dir)
        quicklook_dir = self.folder.quicklook_dir(step.name)
        remove_tree(quicklook_dir)
        if recorded_quicklooks:  # the block's quicklooks come with its result, as from a run
            link_tree(cached_quicklooks, quicklook_dir, on_link=self.hashes.moved)
        else:
            quicklook_dir.mkdir(parents=True)
        lock_tree(quicklook_dir)
        record.quicklooks = dict(recorded_quicklooks)
        record.status, record.cached_from = "cached", rel
        record.parts = []  # the whole step came from the cache; its producer's record lists its features
        record.resources = {}  # nothing ran here: its producer's record says what it ran with
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
            except BaseException:
                with contextlib.suppress(OSError):  # the first error is the one to see
                    self._put_back(output_dir, spec.output_dir)
                raise
            if record.exit_code != 0:
                self._put_back(output_dir, spec.output_dir)
                detail = detail.replace(str(output_dir), str(spec.output_dir))  # where the rejected output is now
        if record.exit_code != 0:
            record.status = "failed"
            record.detail = detail or self._last_error_line(step.name)
            record.ended = time.time()
            self._save("failed")
            self._emit("failed", step.name, exit_code=record.exit_code, exit_name=record.exit_name, detail=record.detail)
            message = failure_line(step.name, record.exit_code, record.exit_name, record.detail)
            raise RunFailed(message, step=step.name, step_exit=record.exit_code or 1, run_dir=self.folder.path)
        record.status = "ok"
        record.ended = time.time()
        extra: dict[str, Any] = {}
        if step.definition.scatter:
            record.detail = detail  # which features ran, how many were reused
            kept = self._kept_parts.get(step.name, 0)  # ran in the attempt this one resumes, not now
            extra = {"features_ran": sum(p.get("status") == "ran" for p in record.parts) - kept,
                     "features_reused": sum(p.get("status") == "reused" for p in record.parts)}
            if kept:
                extra["features_kept"] = kept
        with self._state:
            # Stored even with --no-cache: a forced run refreshes the cache for the next one;
            # in the index once run.json records the step.
            self._pending_stores.append((record.cache_key or "", output_dir))
            if self.options.resume or any(other.status not in ("ok", "cached") for other in self.records.values()):
                self._save_locked("running")
            # else every step of this run is done (a resumed run's records may say ok before their
            # steps are checked again): the run's final save follows at once and writes this too.
        self._emit("done", step.name, seconds=record.ended - record.started, features=record.features_out, **extra)

    @staticmethod
    def _put_back(output_dir: Path, work_dir: Path) -> None:
        """Move a rejected output back where the block wrote it: only accepted results live in steps/<step>/output."""
        if output_dir.exists():
            remove_tree(work_dir)
            os.rename(output_dir, work_dir)

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
        quicklooks = seal_tree(spec.quicklook_dir, self.hashes, what="quicklooks", limit=limit, deadline=deadline)
        quicklooks.lock()
        record.quicklooks = quicklooks.files  # a cache hit checks and links them with the output
        if DATA_JSON not in sealed.files:
            raise SealError("it wrote no data.json (an empty result is a data.json with no features)")
        # Within the step's memory; a scattered step's merged output within its features' together.
        fc = load_output(output_dir, step.resources[1] * max(1, len(record.parts)), deadline)
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
        upstream_features = []
        mounts: dict[str, Path] = {}
        mounts_upstreams = self.options.engine.mounts_upstreams
        for up in step.upstream:
            up_dir = self.folder.output_dir(up)
            upstream_features.append((up, load_data_json(up_dir, required=False).features))
            if mounts_upstreams and step.definition.scatter is None:
                (folder / up).mkdir()
                mounts[up] = up_dir
            else:
                link_tree(up_dir, folder / up, on_link=self.hashes.moved)  # hard links: no bytes copied
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            replace_atomic(folder / DATA_JSON, dumps(FeatureCollection(fan_in_features(upstream_features))), dir_fd=fd)
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
        # Its own files only: a glob on the name would take `scene2.log`, still being written,
        # for a log of `scene`.
        for path in self.folder.log_paths(step):
            if not path.is_file():
                continue
            text = path.read_text(errors="replace")
            clean = self.options.redact(text)
            if clean != text:
                replace_atomic(path, clean)

    def _last_error_line(self, step: str) -> str:
        try:
            lines = self.folder.log_path(step).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = ErrorLineTracker()  # the block's lines, as the engines judge them
        for line in lines:
            errors.see(line)
        return errors.line or ""

    @staticmethod
    def _reset_dir(path: Path) -> None:
        remove_tree(path)
        path.mkdir(parents=True)

    def resource_options(self) -> dict[str, Any]:
        """run.json's `resources`: the options that bound what steps use (this session's; see `step_resources`).

        `strict_cpu` is what was asked (`--strict-cpu`), `cpu_capped` whether the engine enforces
        it (the process engine cannot); `budget` is what running steps may use at once (`jobs`
        null: as many as their CPUs and memory fit; null budget: one step after another). None of
        it is in a cache key: a cap or a budget changes no output.
        """
        budget = self.options.budget
        return {
            "strict_cpu": self.options.strict_cpu,
            "cpu_capped": self.options.strict_cpu and self.options.engine.caps_cpu,
            "budget": None if budget is None else {
                "jobs": budget.jobs if budget.jobs < UNLIMITED_JOBS else None,
                "cpus": budget.cpus,
                "memory_mb": budget.memory_mb,
            },
        }

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
        now = time.time()
        run = run_document(run_id=self.folder.run_id, workflow=workflow, engine=self.options.engine.name,
                           status=status, started=self.started, runner=self.runner, records=self.records, now=now,
                           resources=self.resource_options())
        self.folder.write_json(RUN_FILE, run)
        provenance = provenance_document(
            run, workflow=workflow, blockkit_version=blockkit.__version__, now=now,
            workflow_sha256=self.hashes.file_sha256(workflow.path.resolve()) if workflow.path else None,
            step_order=[s.name for s in self.plan.steps])
        text = json.dumps(provenance, indent=2, default=str)
        if self.options.redact:
            text = self.options.redact(text)
        self.folder.write_text(PROVENANCE_FILE, text + "\n" + " " * RESERVE_BYTES)  # room, as run.json has
        self._saved_at, self._unsaved_parts = time.monotonic(), False
        if self._pending_stores:
            stores, self._pending_stores = self._pending_stores, []
            self.cache.store_many(stores)


def _describe(exc: OSError) -> str:
    """An OSError as one line: its name, its words and the file it names."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{type(exc).__name__}: {exc.strerror or exc}{where}"


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a moment (delivered after it): the final state is written whole."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def sweep_leftovers(run_dir: Path) -> None:
    """Remove what a killed runner left in a run folder: temp files of atomic writes, docker hosts files."""
    for path in [*run_dir.glob("steps/*/.blockkit-hosts-*"), *run_dir.glob("steps/*/parts/*/.blockkit-hosts-*"),
                 *run_dir.glob(".*.tmp")]:  # never inside an output: those files are the block's
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def step_resources(resources: Resources, engine: Engine) -> dict[str, Any]:
    """A step record's `resources`: the CPUs and memory it ran with and whether its CPUs were capped."""
    return {"cpus": resources.cpus, "memory_mb": resources.memory_mb, "strict_cpu": resources.strict_cpu,
            "cpu_capped": resources.strict_cpu and engine.caps_cpu}


def failure_line(step: str, code: int, name: str, detail: str | None) -> str:
    """A failed step's message: `step 'x' failed with exit code 4: <the block's own words>`.

    The exit code's name is the headline's (`[WRONG_INPUT_ERROR] ...`): it is not said again, neither
    after the code nor as the block's own `[WRONG_INPUT_ERROR]` / `OUT_OF_MEMORY:` prefix of its last
    error line, and a detail that only restates the code (`WRONG_INPUT_ERROR (exit 4)`) is left out.
    """
    text = own_words(detail, name, code)
    message = f"step {step!r} failed with exit code {code}"
    return f"{message}: {text}" if text else message


def own_words(detail: str | None, name: str, code: int) -> str:
    """A failure's detail without what the headline says: the `[NAME]`/`NAME:` prefix, or only `NAME (exit N)`."""
    text = (detail or "").strip()
    for prefix in (f"[{name}]", f"{name}:"):
        if text.startswith(prefix):
            text = text[len(prefix):].lstrip()
            break
    return "" if text in (name, f"{name} (exit {code})") else text
