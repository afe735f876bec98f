"""The workflow runner: workflows, planning, engines, runs and block images.

For a program embedding the runner: `run_request(RunRequest(target=...))` does what `blockkit run`
does; `load_workflow` / `plan_workflow` check a workflow without running it. For an extender: a new
engine subclasses `Engine` (one module) and registers a factory with `register_engine` (one line);
`select_engine` is what the runner calls. Errors are in `blockkit.contract.errors`. Every module of this
package is internal: import from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blockkit._lazy import lazy_exports

if TYPE_CHECKING:
    from blockkit.runner._session import RunRequest, run_request
    from blockkit.runner._workflow import (
        StepDef,
        Workflow,
        load_workflow,
        parse_workflow,
        single_block_workflow,
    )
    from blockkit.runner._plan import Plan, PlannedStep, plan_workflow
    from blockkit.runner._engine import (
        Engine,
        LogSink,
        Resources,
        StepResult,
        StepSpec,
        register_engine,
        registered_engines,
    )
    from blockkit.runner._engines import ENGINE_NAMES, select_engine
    from blockkit.runner._process_engine import ProcessEngine
    from blockkit.runner._docker_engine import DockerEngine
    from blockkit.runner._run import RunOptions, WorkflowRun
    from blockkit.runner._build import BuiltImage, build_block_image

# Each public name and the module that defines it (imported on first access).
_EXPORTS = {
    "RunRequest": "blockkit.runner._session",
    "run_request": "blockkit.runner._session",
    "StepDef": "blockkit.runner._workflow",
    "Workflow": "blockkit.runner._workflow",
    "load_workflow": "blockkit.runner._workflow",
    "parse_workflow": "blockkit.runner._workflow",
    "single_block_workflow": "blockkit.runner._workflow",
    "Plan": "blockkit.runner._plan",
    "PlannedStep": "blockkit.runner._plan",
    "plan_workflow": "blockkit.runner._plan",
    "Engine": "blockkit.runner._engine",
    "LogSink": "blockkit.runner._engine",
    "Resources": "blockkit.runner._engine",
    "StepResult": "blockkit.runner._engine",
    "StepSpec": "blockkit.runner._engine",
    "register_engine": "blockkit.runner._engine",
    "registered_engines": "blockkit.runner._engine",
    "ENGINE_NAMES": "blockkit.runner._engines",
    "select_engine": "blockkit.runner._engines",
    "ProcessEngine": "blockkit.runner._process_engine",
    "DockerEngine": "blockkit.runner._docker_engine",
    "RunOptions": "blockkit.runner._run",
    "WorkflowRun": "blockkit.runner._run",
    "BuiltImage": "blockkit.runner._build",
    "build_block_image": "blockkit.runner._build",
}

__all__ = [
    "ENGINE_NAMES",
    "BuiltImage",
    "DockerEngine",
    "Engine",
    "LogSink",
    "Plan",
    "PlannedStep",
    "ProcessEngine",
    "Resources",
    "RunOptions",
    "RunRequest",
    "StepDef",
    "StepResult",
    "StepSpec",
    "Workflow",
    "WorkflowRun",
    "build_block_image",
    "load_workflow",
    "parse_workflow",
    "plan_workflow",
    "register_engine",
    "registered_engines",
    "run_request",
    "select_engine",
    "single_block_workflow",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
