"""Planning: check a whole workflow before anything runs and put its steps in order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from blockkit.contract.capabilities import Capabilities, match_problems, resolve_output
from blockkit.contract.errors import BlockkitError, InputParametersError, Problem, WorkflowError
from blockkit.contract.manifest import MANIFEST_FILE, Manifest, load_manifest, parse_manifest
from blockkit.contract.parameters import resolve_parameters
from blockkit.runner.secret_params import resolve_secret_refs
from blockkit.runner.workflow import StepDef, Workflow

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

    @property
    def propagate(self) -> bool:
        """Whether this step forwards its input features and files to its output."""
        return self.definition.propagate or self.manifest.propagate


@dataclass
class Plan:
    """A workflow whose steps are checked and in a runnable order."""

    workflow: Workflow
    steps: list[PlannedStep]

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


def docker_image_manifest(image: str) -> dict[str, Any]:
    """The manifest stored in an image's `up42_manifest` label."""
    import docker

    client = docker.from_env(timeout=30)
    try:
        labels = client.images.get(image).labels or {}
    finally:
        client.close()
    if "up42_manifest" not in labels:
        raise ValueError(f"image {image} has no up42_manifest label")
    return json.loads(labels["up42_manifest"])


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
        )
        planned[name] = step_planned
    if problems:
        if len(problems) == param_problems:
            # Only parameters are wrong: the UP42 exit code for that, as a block run would give.
            raise InputParametersError.from_problems(f"workflow {workflow.name!r} cannot run", problems)
        raise WorkflowError.from_problems(f"workflow {workflow.name!r} cannot run", problems)
    return Plan(workflow=workflow, steps=[planned[n] for n in order])


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
            data = (image_manifest or docker_image_manifest)(step.image)
            return parse_manifest(data, None), None
        except BlockkitError as err:
            problems.extend(Problem(f"{where} manifest {p.where}", p.message) for p in err.problems)
        except Exception as exc:  # noqa: BLE001 - docker raises many types; all mean "cannot read it"
            problems.append(Problem(where, f"cannot read the manifest of image {step.image!r}: {exc}"))
    return None, None
