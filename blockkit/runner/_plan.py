"""Planning: check a whole workflow before anything runs and put its steps in order."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from blockkit.contract._capabilities import Capabilities, match_problems, resolve_output
from blockkit.contract.errors import BlockkitError, EntryPointError, InputParametersError, Problem, WorkflowError
from blockkit.contract._manifest import MANIFEST_FILE, Manifest, load_manifest, parse_manifest
from blockkit.contract._parameters import resolve_parameters
from blockkit.runner._secret_params import resolve_secret_refs
from blockkit.runner._workflow import StepDef, Workflow

if TYPE_CHECKING:
    from blockkit.runner._engine import Engine

ImageManifestLoader = Callable[[str], dict[str, Any]]


@dataclass
class PlannedStep:
    """A checked step: its block, manifest, resolved parameters and upstream steps."""

    name: str
    definition: StepDef
    manifest: Manifest
    params: dict[str, Any]
    upstream: list[str]
    block_dir: Path | None = None
    image: str | None = None
    output_capabilities: Capabilities = field(default_factory=dict)
    #: The entry command as the block's image runs it (`python /block/src/run.py`), from the
    #: manifest's blockkit.command, the block's Dockerfile CMD/ENTRYPOINT or its layout.
    entry: list[str] | None = None
    #: The block reads and writes the UP42 paths (/tmp/input, /tmp/output, /block) itself.
    fixed_paths: bool = False
    #: The command the engine runs (None: the image's own CMD); set by `prepare_for_engine`.
    command: list[str] | None = None
    #: The block venv the process engine runs any entry of the step in (its bin first on PATH,
    #: VIRTUAL_ENV set): UP42-style blocks get one, whether the entry is `python ...` or a script.
    venv: Path | None = None
    #: (CPUs, memory MB) the step may use: its machine type, capped to the engine's host.
    resources: tuple[float, int] = (0.5, 2048)

    @property
    def propagate(self) -> bool:
        """Whether this step forwards its input features and files to its output."""
        return self.definition.propagate or self.manifest.propagate


@dataclass
class Plan:
    """A workflow whose steps are checked and in a runnable order."""

    workflow: Workflow
    steps: list[PlannedStep]
    #: Accepted but worth saying (a required parameter with a default, a capped machine type...).
    warnings: list[str] = field(default_factory=list)

    def step(self, name: str) -> PlannedStep:
        """The planned step with this name."""
        return next(s for s in self.steps if s.name == name)

    def downstream_of(self, name: str) -> list[str]:
        """Names of the steps that read this step's output."""
        return [s.name for s in self.steps if name in s.upstream]


def resolve_block_dir(block: str, base_dir: Path) -> Path | None:
    """Find a block folder relative to the workflow file's folder or one of its parents."""
    candidate = Path(block)
    if candidate.is_absolute():
        return candidate if (candidate / MANIFEST_FILE).is_file() else None
    for root in [base_dir.resolve(), *base_dir.resolve().parents, Path.cwd()]:
        if (root / candidate / MANIFEST_FILE).is_file():
            return (root / candidate).resolve()
    return None


def _order(steps: list[StepDef], upstream: dict[str, list[str]], problems: list[Problem]) -> list[str]:
    """Topological order (stable: file order among ready steps); cycles are reported."""
    names = [s.name for s in steps]
    done: list[str] = []
    remaining = list(names)
    while remaining:
        ready = [n for n in remaining if all(u in done for u in upstream.get(n, []))]
        if not ready:
            problems.append(Problem("workflow", f"steps form a cycle: {' -> '.join(remaining)}"))
            return done + remaining
        done.append(ready[0])
        remaining.remove(ready[0])
    return done


def plan_workflow(workflow: Workflow, image_manifest: ImageManifestLoader | None = None) -> Plan:
    """Check everything (manifests, params, names, cycles, capabilities) and report all problems at once."""
    problems = list(workflow.problems)
    names = [s.name for s in workflow.steps]
    upstream: dict[str, list[str]] = {}
    for index, step in enumerate(workflow.steps):
        where = _where(step)
        if step.after is None:
            upstream[step.name] = [names[index - 1]] if index > 0 else []
        else:
            upstream[step.name] = []
            for other in step.after:
                if other == step.name:
                    problems.append(Problem(where, "cannot come after itself"))
                elif other not in names:
                    problems.append(Problem(where, f"'after' names unknown step {other!r}"))
                elif other in upstream[step.name]:
                    problems.append(Problem(where, f"'after' names {other!r} twice"))
                else:
                    upstream[step.name].append(other)
    order = _order(workflow.steps, upstream, problems)
    warnings: list[str] = []
    by_name = {s.name: s for s in workflow.steps}
    planned: dict[str, PlannedStep] = {}
    param_problems = 0
    for name in order:
        step = by_name[name]
        where = _where(step)
        manifest, block_dir = _manifest_of(step, workflow, where, problems, image_manifest)
        if manifest is None:
            continue
        raw_params, ref_problems = resolve_secret_refs(step.params, manifest)  # {from_env: ...} / {from_key: ...}
        problems.extend(Problem(f"{where} {p.where}", p.message) for p in ref_problems)
        param_problems += len(ref_problems)
        try:
            params = resolve_parameters(manifest, raw_params)
        except BlockkitError as err:
            problems.extend(Problem(f"{where} {p.where}", p.message) for p in err.problems)
            param_problems += len(err.problems)
            params = {}
        ups = upstream.get(name, [])
        if not ups and manifest.input_capabilities and not workflow.input and not manifest.is_data_block:
            problems.append(Problem(where, f"block {manifest.name!r} needs input but nothing comes before it and the workflow has no 'input'"))
        upstream_caps = {u: planned[u].output_capabilities for u in ups if u in planned}
        for message in match_problems(manifest.input_capabilities, upstream_caps, params):
            problems.append(Problem(where, message))
        step_planned = PlannedStep(
            name=name, definition=step, manifest=manifest, params=params, upstream=ups,
            block_dir=block_dir, image=step.image,
            output_capabilities=resolve_output(manifest.output_capabilities, list(upstream_caps.values()), params),
            command=manifest.command, resources=manifest.resources,
        )
        if block_dir is not None:
            try:
                step_planned.entry = resolve_entry(block_dir, manifest.command)
            except EntryPointError as err:
                problems.append(Problem(where, err.message))
            step_planned.fixed_paths = needs_fixed_paths(block_dir)
        warnings.extend(f"{where}: {line}" for line in manifest.warnings)
        planned[name] = step_planned
    if problems:
        if len(problems) == param_problems:
            # Only parameters are wrong: the UP42 exit code for that, as a block run would give.
            raise InputParametersError.from_problems(f"workflow {workflow.name!r} cannot run", problems)
        raise WorkflowError.from_problems(f"workflow {workflow.name!r} cannot run", problems)
    return Plan(workflow=workflow, steps=[planned[n] for n in order], warnings=warnings)


def _where(step: StepDef) -> str:
    return f"step {step.name!r}" + (f" (line {step.line})" if step.line else "")


def _manifest_of(
    step: StepDef, workflow: Workflow, where: str, problems: list[Problem],
    image_manifest: ImageManifestLoader | None,
) -> tuple[Manifest | None, Path | None]:
    if step.block is not None:
        block_dir = resolve_block_dir(step.block, workflow.base_dir)
        if block_dir is None:
            problems.append(Problem(where, f"block folder {step.block!r} not found (no {MANIFEST_FILE} there)"))
            return None, None
        try:
            return load_manifest(block_dir), block_dir
        except BlockkitError as err:
            problems.extend(Problem(f"{where} manifest {p.where}", p.message) for p in err.problems)
            if not err.problems:
                problems.append(Problem(where, err.message))
            return None, block_dir
    if step.image is not None:
        try:
            from blockkit.runner._docker_client import image_manifest as from_label

            data = (image_manifest or from_label)(step.image)
            return parse_manifest(data, None), None
        except BlockkitError as err:
            problems.extend(Problem(f"{where} manifest {p.where}", p.message) for p in err.problems)
            if not err.problems:
                problems.append(Problem(where, err.message))
        except Exception as exc:  # noqa: BLE001 - docker raises many types; all mean "cannot read it"
            problems.append(Problem(where, f"cannot read the manifest of image {step.image!r}: {exc}"))
    return None, None


# --- entry points ---------------------------------------------------------------------------------

#: Where a block's code is looked for when neither its manifest nor its Dockerfile says.
COMMON_ENTRIES: tuple[tuple[str, ...], ...] = (("src", "run.py"), ("run.py",), ("src", "__main__.py"))
_PYTHON = re.compile(r"^(?:/usr(?:/local)?/bin/)?python(?:3(?:\.\d+)?)?$")
_SHELL = re.compile(r"^(?:/usr)?(?:/bin/)?(?:ba|da)?sh$")
_WORKDIR = re.compile(r"^\s*WORKDIR\s+(\S+)\s*$", re.IGNORECASE)


def resolve_entry(block_dir: Path, override: list[str] | None = None) -> list[str]:
    """The block's entry command as its image runs it; checked against the block folder.

    Order: the manifest's `blockkit.command`; the block's own Dockerfile's ENTRYPOINT + CMD;
    then `src/run.py`, `run.py`, `src/__main__.py` (run as `python /block/...`).
    """
    if override:
        return list(override)
    from blockkit.runner._build import dockerfile_command, own_dockerfile

    dockerfile = own_dockerfile(block_dir)
    if dockerfile is not None:
        text = dockerfile.read_text(encoding="utf-8", errors="replace")
        entry, cmd = dockerfile_command(text)
        command = (entry or []) + (cmd or [])
        if command:
            _check_entry(block_dir, command, _workdir(text), f"{dockerfile.name} CMD/ENTRYPOINT")
            return command
    for parts in COMMON_ENTRIES:
        if block_dir.joinpath(*parts).is_file():
            return ["python", "/block/" + "/".join(parts)]
    raise EntryPointError(
        f"block {block_dir.name!r} has no entry point: it has no src/run.py, run.py nor src/__main__.py, "
        "no CMD/ENTRYPOINT in its own Dockerfile and no blockkit.command in its manifest"
    )


def _workdir(text: str) -> str:
    workdir = "/"
    for line in text.splitlines():
        match = _WORKDIR.match(line)
        if match:
            value = match.group(1)
            workdir = value if value.startswith("/") else f"{workdir.rstrip('/')}/{value}"
    return workdir


def _host_path(block_dir: Path, path: str, workdir: str) -> Path | None:
    """Where an image path of the block is on the host: /block/... is the block folder."""
    absolute = path if path.startswith("/") else f"{workdir.rstrip('/')}/{path}"
    parts = [p for p in absolute.split("/") if p not in ("", ".")]
    if not parts or parts[0] != "block" or ".." in parts:
        return None
    return block_dir.joinpath(*parts[1:])


def _check_entry(block_dir: Path, command: list[str], workdir: str, source: str) -> None:
    """The script a Dockerfile's command starts must be in the block folder (or a program on PATH)."""
    if command[:2] == ["/bin/sh", "-c"] or command[:2] == ["sh", "-c"]:
        return  # a shell-form command: its words are the shell's business
    program, args = command[0], command[1:]
    if _PYTHON.match(program):
        script = next((a for a in args if not a.startswith("-")), None)
        if script is None or "-m" in args[: args.index(script) if script in args else 0] or "-c" in args:
            return
        host = _host_path(block_dir, script, workdir)
        if host is None:
            raise EntryPointError(f"{source} runs {script}, which is not under /block: the block folder does not have it")
        if not (host.is_file() or (host / "__main__.py").is_file()):
            raise EntryPointError(f"{source} runs {script}, but {host} does not exist")
        return
    if _SHELL.match(program) and args and not args[0].startswith("-"):
        # `sh run.sh`: the script is the block's, like python's.
        script_host = _host_path(block_dir, args[0], workdir)
        if script_host is not None and not script_host.is_file():
            raise EntryPointError(f"{source} runs {args[0]}, but {script_host} does not exist")
    # A bare name in an exec-form command is looked up on PATH, never in WORKDIR.
    host = _host_path(block_dir, program, workdir) if "/" in program else None
    if host is not None:
        if not host.is_file():
            raise EntryPointError(f"{source} runs {program}, but {host} does not exist")
        return
    if "/" not in program and shutil.which(program) is None:
        raise EntryPointError(f"{source} runs {program!r}, which is neither in the block folder nor a program here")


def needs_fixed_paths(block_dir: Path) -> bool:
    """Whether a block reads and writes the UP42 paths itself (/tmp/input, /tmp/output, /block).

    True for blocks with their own Dockerfile, and for blocks whose code uses blockutils or
    names /tmp/input & co. without using blockkit or its BLOCKKIT_*_DIR variables: the engine
    must show them their step folders at those fixed paths.
    """
    from blockkit.runner._build import own_dockerfile

    if own_dockerfile(block_dir) is not None:
        return True
    sources = [p for p in block_dir.rglob("*.py") if "tests" not in p.relative_to(block_dir).parts][:200]
    fixed = False
    for path in sources:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if _USES_BLOCKKIT.search(text):
            return False  # blockkit's context (or its variables) gives the step's folders
        fixed = fixed or bool(_FIXED.search(text))
    return fixed


_USES_BLOCKKIT = re.compile(r"^\s*(?:from|import)\s+blockkit\b|BLOCKKIT_(?:INPUT|OUTPUT)_DIR", re.MULTILINE)
_FIXED = re.compile(r"/tmp/(?:input|output|quicklooks)\b|^\s*(?:from|import)\s+blockutils\b", re.MULTILINE)


# --- preparing a plan for an engine -------------------------------------------------------------

def engine_capacity(engine: Engine) -> tuple[float, int]:
    """(CPUs, memory MB) of the host the engine runs steps on (the Docker daemon's for docker)."""
    capacity = engine.capacity()
    if capacity is not None:
        return capacity
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
    except (ValueError, OSError):
        memory = 1 << 20
    return cpus, int(memory)


def parse_memory(value: str | int | None) -> int | None:
    """Memory as MB from `4096`, `4096m`, `4g` (None stays None)."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mg]?)b?", text)
    if not match:
        raise WorkflowError(f"memory {value!r} must be a number of MB, or like 4096m or 4g")
    number = float(match.group(1)) * (1024 if match.group(2) == "g" else 1)
    if number < 64:
        raise WorkflowError(f"memory {value!r} is below 64 MB")
    return int(number)


def parse_cpus(value: str | float | None) -> float | None:
    """A CPU count (fractions allowed) or None."""
    if value is None or value == "":
        return None
    try:
        cpus = float(value)
    except ValueError:
        raise WorkflowError(f"CPUs {value!r} must be a number") from None
    if not 0.01 <= cpus <= 4096:
        raise WorkflowError(f"CPUs {value!r} must be between 0.01 and 4096")
    return cpus


def prepare_for_engine(
    plan: Plan,
    engine: Engine,
    say: Callable[[str], None] | None = None,
    *,
    max_cpus: float | None = None,
    max_memory_mb: int | None = None,
    cap: bool = True,
) -> list[str]:
    """Make the plan runnable on this engine; return warning lines (raise WorkflowError when it cannot).

    * a block that needs the fixed UP42 paths is refused, in one line, on an engine that
      cannot show them to each step (the process engine without isolation);
    * on the process engine, the entry command is the one from the block's Dockerfile or
      layout, with the block's own Python environment (`blockenv`) for UP42-style blocks;
    * machine types are capped to what the engine's host has, or to `max_cpus`/`max_memory_mb`.

    Args:
        plan: the validated plan; its steps' resources and commands are set here.
        engine: the engine the steps will run on (its capacity, whether it runs images, isolates paths).
        say: where progress lines go (making a block's environment can take a while).
        max_cpus: `--max-cpus` (default: `$BLOCKKIT_MAX_CPUS`, else the engine's host).
        max_memory_mb: `--max-memory` in MB (default: `$BLOCKKIT_MAX_MEMORY`, else the engine's host).
        cap: False leaves the caps to a later `cap_resources` (a run asks the engine's size while
            it checks images, after the cheap checks).
    """
    say = say or (lambda text: None)
    warnings = list(plan.warnings)
    if cap:
        warnings += cap_resources(plan, engine, max_cpus=max_cpus, max_memory_mb=max_memory_mb)
    problems: list[Problem] = []
    process = not engine.runs_images  # the block's own command runs on this host
    for step in plan.steps:
        where = _where(step.definition)
        if not process or step.block_dir is None:
            continue
        if step.fixed_paths and not engine.isolates_paths:
            problems.append(Problem(
                where,
                f"block {step.manifest.name!r} reads and writes the fixed UP42 paths (/tmp/input, /tmp/output, /block) "
                f"and the {engine.name} engine cannot give each step its own there (no per-step path isolation); "
                "run it with --engine docker",
            ))
            continue
        if step.manifest.command is None and step.entry is not None:
            step.command = process_command(step, say, warnings, isolated=engine.isolates_paths)
    if problems:
        raise WorkflowError.from_problems(f"workflow {plan.workflow.name!r} cannot run on the {engine.name} engine", problems)
    return warnings


def cap_resources(plan: Plan, engine: Engine, *, max_cpus: float | None = None,
                  max_memory_mb: int | None = None) -> list[str]:
    """Cap each step's machine type to what the engine's host has, or to `max_cpus`/`max_memory_mb`; warning lines.

    Args:
        plan: the validated plan; its steps' resources are set here.
        engine: the engine the steps will run on (its `capacity()`, else this host's).
        max_cpus: `--max-cpus` (default: `$BLOCKKIT_MAX_CPUS`, else the engine's host).
        max_memory_mb: `--max-memory` in MB (default: `$BLOCKKIT_MAX_MEMORY`, else the engine's host).
    """
    warnings = []
    max_cpus = max_cpus if max_cpus is not None else parse_cpus(os.environ.get("BLOCKKIT_MAX_CPUS"))
    if max_memory_mb is None:
        max_memory_mb = parse_memory(os.environ.get("BLOCKKIT_MAX_MEMORY"))
    host_cpus, host_memory = engine_capacity(engine)
    cap_cpus = min(max_cpus, host_cpus) if max_cpus is not None else host_cpus
    cap_memory = min(max_memory_mb, host_memory) if max_memory_mb is not None else host_memory
    for step in plan.steps:
        cpus, memory = step.manifest.resources
        if cpus > cap_cpus or memory > cap_memory:
            step.resources = (min(cpus, cap_cpus), min(memory, cap_memory))
            why = "--max-cpus/--max-memory" if (max_cpus is not None or max_memory_mb is not None) else "this host"
            warnings.append(
                f"{_where(step.definition)}: machine type {step.manifest.machine_type!r} asks for {cpus:g} CPUs "
                f"and {memory} MB; capped to {step.resources[0]:g} CPUs and {step.resources[1]} MB ({why})"
            )
    return warnings


def process_command(step: PlannedStep, say: Callable[[str], None], warnings: list[str], *,
                    isolated: bool = False) -> list[str]:
    """The command of a step's entry on the process engine, with the block's own Python.

    Args:
        step: the planned step (its block folder and its entry from the Dockerfile or layout).
        say: where progress lines go (making the block's environment can take a while).
        warnings: list the block environment's warnings are appended to.
        isolated: the step sees the block folder at /block (so /block paths stay); otherwise they are
            mapped to the block folder on the host.
    """
    assert step.block_dir is not None and step.entry is not None
    entry = list(step.entry)
    python = "python"
    if step.fixed_paths:
        # Whatever the entry (`python run.py`, `/block/run.sh`, `sh run.sh` calling python), the
        # block runs in its own venv, as its image runs it with its requirements installed.
        from blockkit.runner._blockenv import ensure_block_env

        env = ensure_block_env(step.block_dir, say=say)
        warnings.extend(f"{_where(step.definition)}: {line}" for line in env.warnings)
        python = str(env.python)
        step.venv = env.path
    command = []
    for index, part in enumerate(entry):
        if index == 0 and _PYTHON.match(part):
            command.append(python)  # "python" is replaced by blockkit's interpreter by the engine
        elif not isolated and (part.startswith("/block/") or part == "/block"):
            command.append(str(step.block_dir / part[len("/block/"):]) if part != "/block" else str(step.block_dir))
        else:
            command.append(part)
    return command
