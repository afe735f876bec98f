"""Provenance: what run.json and provenance.json say about a run, and the redacted workflow copy.

Pure functions from the run's state to the two JSON documents (the runner writes them,
see `blockkit.runner._run_folder.RunFolder.write_json`): run.json is the runner's own
state (read back by `--resume` and `blockkit runs`), provenance.json the record for
people and tools (blockkit version, the workflow file's sha256, each step's block,
parameters with secrets redacted, input and output hashes, and for a scattered step which
features ran and which were reused). See docs/runner.md, "Run folders".
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping, Sequence

from blockkit.runner._plan import Plan
from blockkit.runner._run_folder import StepRecord
from blockkit.runner._workflow import Workflow


def run_document(*, run_id: str, workflow: Workflow, engine: str, status: str, started: float,
                 runner: Mapping[str, object], records: Mapping[str, StepRecord], now: float,
                 resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """run.json: the run's state and every step's record (in the order the records were made).

    Args:
        run_id: the run folder's name.
        workflow: the workflow that runs (its name and file path are kept).
        engine: the engine's name.
        status: `running`, `ok`, `failed` or `interrupted`.
        started: when the run started (epoch seconds).
        runner: who runs it (`blockkit.runner._lock.runner_identity`).
        records: the steps' records by name.
        now: the time of this state (`updated`).
        resources: the run's resource options (`WorkflowRun.resource_options`: strict_cpu, cpu_capped, budget).
    """
    return {
        "run_id": run_id,
        "workflow": workflow.name,
        "workflow_path": str(workflow.path.resolve()) if workflow.path else None,
        "engine": engine,
        "status": status,
        "started": started,
        "updated": now,
        "runner": runner,
        "resources": dict(resources or {}),
        "steps": {name: asdict(rec) for name, rec in records.items()},
    }


def provenance_document(run: Mapping[str, Any], *, workflow: Workflow, workflow_sha256: str | None,
                        blockkit_version: str, step_order: Sequence[str], now: float) -> dict[str, Any]:
    """provenance.json from a run.json document: the workflow's identity, the steps in plan order.

    Args:
        run: the run.json document (`run_document`).
        workflow: the workflow (its `input` and `output` are kept, URLs without `user:password@` and query).
        workflow_sha256: the workflow file's sha256 (None without a file).
        blockkit_version: the runner's version.
        step_order: the steps' names in plan order.
        now: the time of this state (`ended` once the run is no longer running).
    """
    from blockkit.storage import public_url

    status = run["status"]
    return {
        "run_id": run["run_id"],
        "blockkit_version": blockkit_version,
        "workflow": {
            "name": workflow.name,
            "path": run["workflow_path"],
            "sha256": workflow_sha256,
            "input": public_url(workflow.input) if workflow.input else workflow.input,
            "output": public_url(workflow.output) if workflow.output else workflow.output,
        },
        "engine": run["engine"],
        "resources": run.get("resources", {}),
        "status": status,
        "started": run["started"],
        "ended": now if status != "running" else None,
        "steps": [run["steps"][name] for name in step_order],
    }


def redact_workflow_text(text: str, plan: Plan) -> str:
    """The workflow file's text with the value of every secret parameter replaced by '***', and the
    `input:` and `output:` URLs without `user:password@` and query (`blockkit.storage.public_url`).

    The values are found by their position in the YAML (so comments and layout stay), also
    when they come through an anchor; a file that does not parse is kept out entirely.
    """
    import json

    import yaml

    from blockkit.storage import public_url

    secret = {step.name: step.manifest.secret_parameters for step in plan.steps if step.manifest}
    if not any(secret.values()) and "://" not in text:
        return text
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return "# (the workflow file could not be re-read to redact its secrets)\n"
    spans: dict[tuple[int, int], str] = {}
    for step_name, step_node in _mapping_items(_mapping_get(root, "steps")):
        names = secret.get(step_name) or set()
        for param, value_node in _mapping_items(_mapping_get(step_node, "params")):
            if param in names:
                spans[(value_node.start_mark.index, value_node.end_mark.index)] = "'***'"
    for field in ("input", "output"):
        node = _mapping_get(root, field)
        shown = public_url(str(node.value)) if isinstance(node, yaml.ScalarNode) else None
        if shown is not None and shown != node.value:
            spans[(node.start_mark.index, node.end_mark.index)] = json.dumps(shown, ensure_ascii=False)
    for (start, end), value in sorted(spans.items(), reverse=True):
        text = text[:start] + value + text[end:]
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
