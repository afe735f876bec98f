"""One `blockkit run`: load, plan, pick the engine, stage in, run, stage out, summarise."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from blockkit.contract.errors import WorkflowError
from blockkit.contract._manifest import MANIFEST_FILE
from blockkit.contract._progress import parse_progress
from blockkit.runner._engine import Engine
from blockkit.runner._engines import select_engine
from blockkit.runner._plan import Plan, PlannedStep, cap_resources, plan_workflow, prepare_for_engine
from blockkit.runner._run import UNLIMITED_JOBS, RunInterrupted, RunOptions, WorkflowRun
from blockkit.runner._run_folder import RUN_FILE, default_runs_dir, find_run, resume_command
from blockkit.runner._schedule import Budget
from blockkit.runner._workflow import Workflow, load_workflow, single_block_workflow
from blockkit.runtime._progress import ENV_PROGRESS


@dataclass
class RunRequest:
    """What the user asked `blockkit run` to do."""

    target: Path | None
    engine: str = "auto"
    input: str | None = None
    output: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    runs_dir: Path | None = None
    use_cache: bool = True
    resume: str | None = None
    on_event: Callable[[str, str, dict[str, Any]], None] | None = None
    on_log_line: Callable[[str, str], None] | None = None
    on_message: Callable[[str], None] | None = None
    step_env: Callable[[PlannedStep], Mapping[str, str]] | None = None
    max_cpus: float | None = None  # cap of every step's machine type (--max-cpus)
    max_memory_mb: int | None = None  # (--max-memory)
    jobs: int | None = None  # steps at once (--jobs); None: as many as the host's CPUs
    fail_fast: bool = False  # a failing step kills the running ones (--fail-fast)
    keep_going: bool = False  # a failing step or feature does not stop the others (--keep-going)
    #: Cap each step at its machine type's CPUs (--strict-cpu, docker). None: a resumed run keeps
    #: what run.json records (`resources`: the session it resumes), a new run is not capped.
    strict_cpu: bool | None = None
    console: Any = None  # a rich Console on a terminal: running steps get a live bar and elapsed time


def is_uri(value: str) -> bool:
    """True for `scheme://...` references (stage-in/out), False for local paths."""
    return "://" in value


def load_target(request: RunRequest, runs_dir: Path) -> Workflow:
    """The workflow to run: a workflow file, a block folder, or the workflow of a resumed run."""
    target = request.target
    if target is None:
        folder = find_run(runs_dir, request.resume or "")
        path = folder.read_json(RUN_FILE).get("workflow_path")
        if not path:
            raise WorkflowError(f"run {folder.run_id} was not made from a workflow file; give the target again")
        target = Path(path)
    if target.is_dir():
        if not (target / MANIFEST_FILE).is_file():
            raise WorkflowError(f"{target} is a folder without {MANIFEST_FILE}: not a block")
        workflow = single_block_workflow(target, request.params, None)
    else:
        if request.params:
            raise WorkflowError("--params applies to a block folder; put workflow parameters in the workflow file")
        workflow = load_workflow(target)
    # A URI given on the command line keeps the workflow's key for it; a local folder needs none.
    if request.input is not None:
        workflow.input = request.input
        if not is_uri(request.input):
            workflow.keys.pop("input", None)
    if request.output is not None:
        workflow.output = request.output
        if not is_uri(request.output):
            workflow.keys.pop("output", None)
    return workflow


def _resolve_local(value: str, workflow: Workflow) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and workflow.path is not None and not path.exists():
        path = workflow.base_dir / path
    return path.resolve()


def run_request(request: RunRequest) -> dict[str, Any]:
    """Run what was asked and return a summary (raises RunFailed / BlockkitError)."""
    say = request.on_message or (lambda text: None)
    runs_dir = (request.runs_dir or default_runs_dir()).resolve()
    if request.fail_fast and request.keep_going:
        raise WorkflowError("--fail-fast and --keep-going contradict each other; give one")
    from blockkit.runner._logfilter import max_log_bytes

    max_log_bytes()  # a wrong $BLOCKKIT_MAX_LOG_MB fails the run now, not each step
    workflow = load_target(request, runs_dir)
    plan = plan_workflow(workflow)
    engine, why = select_engine(resumed_engine(request, runs_dir, say))
    say(f"engine: {why}")
    # The machine-type caps come after the images are checked (`cap_resources` below): the
    # docker engine asks its daemon's size meanwhile.
    for line in prepare_for_engine(plan, engine, say, cap=False):
        say(f"warning: {line}")
    strict_cpu = resumed_strict_cpu(request, runs_dir, say)
    if strict_cpu and not engine.caps_cpu:
        say(f"warning: --strict-cpu: the {engine.name} engine cannot cap a step's CPUs; "
            "steps use what they get (use --engine docker to cap them)")
    removed = engine.remove_orphans()
    if removed:
        say(f"removed {len(removed)} container(s) left by a blockkit run that was killed: {', '.join(removed)}")
    if workflow.output and is_uri(workflow.output) and not request.resume:
        # Stage-out never overwrites: a full target fails now, not after every step has run.
        from blockkit.runner._staging import check_output_targets

        check_output_targets(final_steps(plan), workflow.output, workflow)
    if workflow.output and not is_uri(workflow.output):
        from blockkit.runner._staging import PARTIAL

        dest = _resolve_local(workflow.output, workflow)
        # A delivery's partial folder is no result (a killed run's goes when this run delivers).
        if dest.is_dir() and any(not entry.name.startswith(PARTIAL) for entry in dest.iterdir()):
            raise WorkflowError(f"output folder {dest} is not empty; choose an empty or new folder")
    with contextlib.ExitStack() as cleanup:  # a staged-in input lives as long as this session
        input_dir = None
        if workflow.input:
            if is_uri(workflow.input):
                input_dir = stage_in_for_run(workflow, runs_dir, say, cleanup)
            else:
                input_dir = _resolve_local(workflow.input, workflow)
                if not input_dir.is_dir():
                    given = "--input" if request.input is not None else "workflow input"
                    raise WorkflowError(f"{given} {workflow.input!r} is not a folder ({input_dir}): an input is a "
                                        "folder holding a data.json (a data block needs none)")
        from blockkit.runner._staging import StepKeys

        keys = StepKeys(plan)
        extra_env = request.step_env
        from blockkit.runner._secret_params import run_redact

        # Secret parameters, key secrets and the passphrase: masked by the engine in every log line.
        redact = run_redact(plan, keys.redact if keys.redactor else None)
        engine.redact = redact

        live = LiveSteps.for_console(request.console)

        def env_for_step(step: PlannedStep) -> dict[str, str]:
            return {ENV_PROGRESS: "1", **(dict(extra_env(step)) if extra_env else {}), **keys.env_for(step)}

        image_for_step = engine.prepare_images(plan, say)  # after the cheap checks: a build can take minutes
        for line in cap_resources(plan, engine, max_cpus=request.max_cpus, max_memory_mb=request.max_memory_mb):
            say(f"warning: {line}")
        options = RunOptions(
            engine=engine,
            runs_dir=runs_dir,
            use_cache=request.use_cache,
            resume=request.resume,
            on_event=live.wrap_events(request.on_event),
            on_log_line=live.wrap_log(request.on_log_line),
            env_for_step=env_for_step,
            redact=redact,
            image_for_step=image_for_step,
            input_dir=input_dir,
            budget=run_budget(engine, request),
            fail_fast=request.fail_fast,
            strict_cpu=strict_cpu,
            keep_going=request.keep_going,
        )
        run = WorkflowRun(plan, options)
        say(f"run {run.folder.run_id} in {run.folder.path}")
        # The results are delivered while the run still holds its lock, before it says ok.
        target = workflow.output
        deliver = (lambda: stage_out_for_run(plan, run, target, workflow, say)) if target else None
        try:
            with live:
                folder = run.execute(deliver, delivery_command(request, plan, run.folder.path, target or ""))
        except KeyboardInterrupt:
            # The step's process or container is already gone and run.json says "interrupted".
            raise RunInterrupted(run.folder.path) from None
        outputs = run.delivered
        return {
            "run_id": folder.run_id,
            "run_dir": str(folder.path),
            "status": "ok",
            "engine": engine.name,
            "outputs": outputs,
            "steps": {
                name: {
                    "status": rec.status,
                    "exit_code": rec.exit_code,
                    "features_out": rec.features_out,
                    "output_dir": str(folder.output_dir(name)),
                    "seconds": (rec.ended - rec.started) if rec.ended and rec.started else None,
                }
                for name, rec in run.records.items()
            },
        }


def delivery_command(request: RunRequest, plan: Plan, run_dir: Path, target: str) -> str:
    """The command that resumes a run to deliver its results to `target` (a block run names its block)."""
    import json
    import shlex

    block = request.target if request.target is not None and request.target.is_dir() else None
    words = [resume_command(run_dir, block)]
    if block is not None and request.params:  # the same parameters, or the step runs again
        secret = any(spec.secret for step in plan.steps for spec in step.manifest.parameters.values())
        words += ["--params", "PARAMS" if secret else shlex.quote(json.dumps(request.params, separators=(",", ":")))]
    return " ".join([*words, "--output", shlex.quote(target)])


def resumed_engine(request: RunRequest, runs_dir: Path, say: Callable[[str], None]) -> str:
    """The engine to ask for: a resume without `--engine` keeps the run's (docker may answer now, not then).

    The engine is part of every cache key, so another engine runs the finished steps again:
    a warning says so when `--engine` names another one.
    """
    if not request.resume:
        return request.engine
    recorded = find_run(runs_dir, request.resume).read_json(RUN_FILE).get("engine")
    if not isinstance(recorded, str) or not recorded:
        return request.engine
    if request.engine == "auto":
        return recorded
    if request.engine != recorded:
        say(f"warning: run {request.resume} ran on the {recorded} engine so far; on the {request.engine} engine "
            "its finished steps run again (the engine is part of their cache keys)")
    return request.engine


def resumed_strict_cpu(request: RunRequest, runs_dir: Path, say: Callable[[str], None]) -> bool:
    """Whether steps are capped at their machine type's CPUs: as asked, else as run.json records.

    A resume continues a run under the CPU cap of the session it resumes (run.json
    `resources.strict_cpu`, written by every session) unless the request says otherwise; then
    the steps still to run follow the request, a warning
    says so, and each step's record keeps what it ran with (`resources`). A cap changes no output,
    so cache keys do not cover it and a resume never re-runs a finished step for it.
    """
    if not request.resume:
        return bool(request.strict_cpu)
    resources = find_run(runs_dir, request.resume).read_json(RUN_FILE).get("resources")
    recorded = resources.get("strict_cpu") if isinstance(resources, dict) else None
    if request.strict_cpu is None:
        return recorded is True
    if isinstance(recorded, bool) and recorded != request.strict_cpu:
        say(f"warning: run {request.resume} ran {'with' if recorded else 'without'} --strict-cpu so far; the "
            f"steps still to run are {'capped' if request.strict_cpu else 'not capped'} (run.json records each "
            "step's resources)")
    return request.strict_cpu


def run_budget(engine: Engine, request: RunRequest) -> Budget:
    """What running steps may use at once: the engine's machine, narrowed by --jobs/--max-cpus/--max-memory."""
    import os

    from blockkit.runner._plan import engine_capacity, parse_cpus, parse_memory

    cpus, memory = engine_capacity(engine)
    # The same limits as the machine types' caps (`cap_resources`): options, else the environment.
    max_cpus = request.max_cpus if request.max_cpus is not None else parse_cpus(os.environ.get("BLOCKKIT_MAX_CPUS"))
    max_memory = request.max_memory_mb if request.max_memory_mb is not None else parse_memory(
        os.environ.get("BLOCKKIT_MAX_MEMORY"))
    if max_cpus is not None:
        cpus = min(cpus, max_cpus)
    if max_memory is not None:
        memory = min(memory, max_memory)
    if request.jobs is not None and request.jobs < 1:
        raise WorkflowError(f"--jobs must be at least 1 (got {request.jobs})")
    # Without --jobs the CPUs and memory of the steps' machine types decide how many run at once.
    jobs = request.jobs if request.jobs is not None else UNLIMITED_JOBS
    return Budget(jobs=jobs, cpus=cpus, memory_mb=memory)


def final_steps(plan: Plan) -> list[str]:
    """Steps whose output no other step reads (the workflow's results)."""
    return [s.name for s in plan.steps if not plan.downstream_of(s.name)]


def stage_in_for_run(workflow: Workflow, runs_dir: Path, say: Callable[[str], None],
                     cleanup: contextlib.ExitStack) -> Path:
    """Stage the workflow's input URI into a folder under the runs dir, removed when `cleanup` closes."""
    from blockkit.runner._staging import stage_in_input

    return stage_in_input(workflow, runs_dir, say, cleanup)


def stage_out_for_run(plan: Plan, run: WorkflowRun, target: str, workflow: Workflow, say: Callable[[str], None]) -> list[str]:
    """Copy (hard-link) or upload the final steps' outputs to the workflow's output."""
    from blockkit.runner._staging import deliver_local, stage_out_outputs

    finals = final_steps(plan)
    if is_uri(target):
        return stage_out_outputs(run, finals, target, workflow, say)
    return deliver_local(run, finals, _resolve_local(target, workflow))


# --- live progress ------------------------------------------------------------------------------


class LiveSteps:
    """A live line per running step on a terminal: a bar from its progress lines and the elapsed time.

    Blocks report progress with `BLOCKKIT_PROGRESS <done>/<total>` lines on stdout
    (`ctx.progress`, `map_windows`); those lines still go to the step's log file, but while
    the live display runs they are not echoed among the log lines. Without a console (not a
    terminal, `--json`) this does nothing and every line passes through.
    """

    def __init__(self, console: Any = None, clock: Callable[[], float] | None = None) -> None:
        import time

        self.console = console
        self.clock = clock or time.time
        self.running: dict[str, float] = {}
        self.progress: dict[str, tuple[int, int]] = {}
        self._live: Any = None

    @classmethod
    def for_console(cls, console: Any) -> LiveSteps:
        """A display on this console when it is a terminal; an inert one otherwise."""
        return cls(console if console is not None and getattr(console, "is_terminal", False) else None)

    @property
    def active(self) -> bool:
        """True while the live display is shown."""
        return self._live is not None

    def wrap_events(self, on_event: Callable[[str, str, dict[str, Any]], None] | None) -> Callable[[str, str, dict[str, Any]], None]:
        """The runner's event callback: track running steps, then pass the event on."""

        def handle(kind: str, step: str, info: dict[str, Any]) -> None:
            if kind == "started":
                self.running[step] = self.clock()
                self.progress.pop(step, None)
            elif kind in ("done", "failed", "cached", "skipped", "interrupted"):
                self.running.pop(step, None)
                self.progress.pop(step, None)
            if on_event is not None:
                on_event(kind, step, info)
            self.refresh()

        return handle

    def wrap_log(self, on_log_line: Callable[[str, str], None] | None) -> Callable[[str, str], None] | None:
        """The runner's log-line callback: progress lines update the bar, the others pass on."""
        if on_log_line is None and self.console is None:
            return None

        def handle(step: str, line: str) -> None:
            found = parse_progress(line)
            if found is not None:
                self.progress[step] = found
                self.refresh()
                if self.active:
                    return
            if on_log_line is not None:
                on_log_line(step, line)

        return handle

    def render(self) -> Any:
        """What the live area shows: one line per running step."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        now = self.clock()
        for step, started in list(self.running.items()):  # a copy: the refresh thread runs beside the run
            done, total = self.progress.get(step, (0, 0))
            bar = ProgressBar(total=float(total) if total else None, completed=float(done), width=30)
            count = Text(f"{done}/{total}" if total else "")
            grid.add_row(Text(f"▶ {step}", style="bold cyan"), bar, count, Text(_elapsed(now - started)))
        return grid

    def refresh(self) -> None:
        """Redraw now (the display also redraws itself a few times a second for the clock)."""
        if self._live is not None:
            self._live.update(self.render())

    def __enter__(self) -> LiveSteps:
        if self.console is not None:
            from rich.live import Live

            self._live = Live(get_renderable=self.render, console=self.console, transient=True,
                              refresh_per_second=4, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _elapsed(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
