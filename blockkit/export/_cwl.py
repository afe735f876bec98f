"""Export a planned workflow as one packed CWL v1.2 document (an OGC EO Application Package).

Mapping (see docs/cwl.md):
  * workflow -> a `Workflow` with id `#main`; each step -> a `CommandLineTool`
    `#<step>-tool` run by a workflow step `<step>`;
  * block image -> `DockerRequirement.dockerPull` (a local tag: cwltool does not
    pull what `docker image inspect` finds);
  * upstream output -> a `Directory` input `input`; fan-in -> one `Directory`
    input `input_<step>` per upstream, staged at `_input/<step>/` where
    `python -m blockkit.export.step` writes the merged data.json;
  * step output -> a `Directory` output `output` (data.json + a STAC catalog.json);
  * manifest parameters -> typed inputs (manifest defaults on the tool, the
    workflow file's values as defaults of the workflow inputs `<step>__<param>`),
    joined into `UP42_TASK_PARAMETERS` by a JavaScript expression;
  * secret parameters and step keys -> string inputs without defaults, listed
    in `cwltool:Secrets`, passed by environment and never written here;
  * `machine.type` -> `ResourceRequirement`; `blockkit.network` -> `NetworkAccess`;
    a timeout -> `ToolTimeLimit` (the entrypoint also enforces it, exit 124);
  * `scatter: features` -> three workflow steps: `<step>__split` (one folder per feature,
    `python -m blockkit.runtime.scatter split` in the block image), `<step>__each` (the
    block's tool, CWL `scatter` over the parts: ScatterFeatureRequirement) and `<step>`
    (`... scatter merge`: one output folder, so downstream steps read `<step>/output`);
  * the workflow's `output:` and `keys:` have no CWL equivalent: the export refuses them
    with one line unless told to leave them to the platform (see `io_problems`);
  * a block whose image has no blockkit (its own Dockerfile, UP42 style; see `direct_run`)
    -> `<step>__run`, its image's own command with `/tmp/input` staged by an absolute
    `entryname` and `/tmp/output` the tool's output folder (`dockerOutputDirectory`), then
    `<step>`: `python -m blockkit.export.finish` in the helper image (images[HELPER]) checks
    the raw output (no symlinks, data paths inside) and writes the step's output folder;
    a fan-in before it (`<step>__fan_in`) and the split of a scatter run there too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from blockkit.contract.errors import ExitCode, ExportError, Problem, WorkflowError
from blockkit.contract._manifest import ParameterSpec
from blockkit.export.finish import RAW_QUICKLOOKS
from blockkit.export.step import DEFAULT_COMMAND
from blockkit.runner._plan import Plan, PlannedStep

CWL_VERSION = "v1.2"
CWLTOOL_NAMESPACE = "http://commonwl.org/cwltool#"
WORKFLOW_ID = "main"
ENTRYPOINT = ["python", "-m", "blockkit.export.step"]
#: Manifest parameter type -> CWL type. Geometries and arrays are JSON text (`JSON_TYPES`): a
#: CWL engine does not pass an `Any` value as data (it stages `{class: File}` from the host,
#: resolves `$include`, rewrites `name`, `id`, `path`, `format`, ... into URIs), but a string it
#: leaves alone; the tool's expression parses it back for UP42_TASK_PARAMETERS.
CWL_TYPES: dict[str, str] = {
    "string": "string",
    "dateRange": "string",
    "number": "double",
    "integer": "int",
    "boolean": "boolean",
    "array": "string",
    "geometry": "string",
}
JSON_TYPES = frozenset({"array", "geometry"})
FAN_IN_DIR = "_input"  # step names start with a letter: these never clash with a step's output folder
QUICKLOOK_DIR = "_quicklooks"
SCATTER_ENTRYPOINT = ["python", "-m", "blockkit.runtime.scatter"]
PARTS_DIR = "_parts"
#: Resources of the split and merge tools (they only link or copy files).
SCATTER_HELPER_RESOURCES = {"coresMin": 1, "ramMin": 512}
#: `images` key of the helper image (blockkit installed; runs split/merge/finish for blocks without it).
HELPER = "_blockkit_helper"
#: The helper image's name when it is not built (`--no-build` without a daemon).
DEFAULT_HELPER_IMAGE = "blockkit/blockkit-cwl-helper:latest"
HELPER_BLOCK = "blockkit-cwl-helper"
FINISH_ENTRYPOINT = ["python", "-m", "blockkit.export.finish"]
#: A block without blockkit runs its own command under this wrapper (sh is in every UP42-style
#: image): /tmp/quicklooks becomes a link into the tool's output folder (the only folder a CWL
#: engine keeps), HOME is /tmp as under `blockkit run` (cwltool sets it to the output folder),
#: and the command starts in the image's WORKDIR (cwltool starts it in the output folder).
DIRECT_INPUT = "/tmp/input"
FAN_IN_DATA = "fan_in_data"  # the tool input of a fan-in step without blockkit that carries the merged data.json
DIRECT_OUTPUT = "/tmp/output"
DIRECT_WRAPPER = (
    'mkdir -p /tmp/input /tmp/output/{ql} && ln -s /tmp/output/{ql} /tmp/quicklooks '
    '&& HOME=/tmp && export HOME && cd "$0" && exec "$@"'
).format(ql=RAW_QUICKLOOKS)
# Exit codes that will not change on a retry; API_CONNECTION_ERROR (5) may.
_PERMANENT_FAIL_CODES = [int(c) for c in ExitCode if c not in (ExitCode.OK, ExitCode.API_CONNECTION_ERROR)] + [124]
_TEMPORARY_FAIL_CODES = [int(ExitCode.API_CONNECTION_ERROR)]
_ID = re.compile(r"[^A-Za-z0-9_]")


def cwl_id(name: str) -> str:
    """A name as a CWL identifier that is also a plain JavaScript property name."""
    ident = _ID.sub("_", name)
    return ident if ident[:1].isalpha() or ident[:1] == "_" else f"_{ident}"


def tool_id(step: str) -> str:
    """The id of a step's CommandLineTool in the packed document."""
    return f"{step}-tool"


def workflow_input_id(step: str, name: str) -> str:
    """The id of the workflow input that feeds a step's tool input."""
    return f"{cwl_id(step)}__{name}"


def output_ids(plan: Plan) -> dict[str, str]:
    """Workflow output id per final step (steps no other step reads): `results` when there is one."""
    finals = [s.name for s in plan.steps if not plan.downstream_of(s.name)]
    if len(finals) == 1:
        return {finals[0]: "results"}
    return {name: f"results_{cwl_id(name)}" for name in finals}


@dataclass
class _ToolInputs:
    """How a step's tool inputs are named: directories, parameters, secrets and keys."""

    directories: dict[str, str] = field(default_factory=dict)  # tool input id -> upstream step ("" = workflow input)
    params: dict[str, str] = field(default_factory=dict)  # parameter name -> tool input id
    secret_params: dict[str, str] = field(default_factory=dict)  # secret parameter name -> tool input id
    keys: dict[str, str] = field(default_factory=dict)  # keystore key name -> tool input id


@dataclass(frozen=True)
class DirectRun:
    """How a block whose image has no blockkit starts: its own command, in its image's WORKDIR."""

    command: list[str]
    workdir: str
    #: The image has an ENTRYPOINT: a CWL engine runs `docker run IMAGE ARGS` and cannot replace it.
    entrypoint: bool = False


_FROM = re.compile(r"^\s*FROM\s", re.IGNORECASE)
_WORKDIR = re.compile(r"^\s*WORKDIR\s+(\S+)\s*$", re.IGNORECASE)


def _dockerfile_workdir(text: str) -> str:
    """The WORKDIR the final stage of a Dockerfile ends with (`/` when it sets none)."""
    workdir = "/"
    for line in text.splitlines():
        if _FROM.match(line):
            workdir = "/"
        match = _WORKDIR.match(line)
        if match:
            value = match.group(1).strip("\"'")
            workdir = value if value.startswith("/") else f"{workdir.rstrip('/')}/{value}"
    return workdir


def _image_config(ref: str) -> dict[str, Any] | None:
    """The image's config (Cmd, Entrypoint, WorkingDir, Env), or None when no daemon has it."""
    try:
        import docker

        client = docker.from_env(timeout=30)
        try:
            config = client.api.inspect_image(ref).get("Config") or {}
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no SDK, no daemon, no such image: cannot tell
        return None
    return config if isinstance(config, dict) else None


def direct_run(step: PlannedStep) -> DirectRun | None:
    """How to run a step whose image has no blockkit, or None for images `blockkit build` made from Dockerfile.base.

    A block folder with its own Dockerfile (UP42 style) is built from it without blockkit.
    A step naming an `image:` is looked at when a daemon has it: images from Dockerfile.base
    carry `BLOCKKIT_INPUT_DIR` in their environment; any other image is run as it is.
    """
    if step.block_dir is not None:
        from blockkit.runner._build import dockerfile_command, own_dockerfile

        dockerfile = own_dockerfile(step.block_dir)
        if dockerfile is None:
            return None
        text = dockerfile.read_text(encoding="utf-8", errors="replace")
        entry, cmd = dockerfile_command(text)
        command = list(step.manifest.command or step.entry or [*(entry or []), *(cmd or [])])
        return DirectRun(command, _dockerfile_workdir(text), bool(entry))
    if step.image:
        config = _image_config(step.image)
        if config is None or any(str(e).startswith("BLOCKKIT_INPUT_DIR=") for e in config.get("Env") or []):
            return None
        entry = [str(w) for w in config.get("Entrypoint") or []]
        cmd = [str(w) for w in config.get("Cmd") or []]
        return DirectRun(list(step.manifest.command or [*entry, *cmd]), str(config.get("WorkingDir") or "/"), bool(entry))
    return None


def direct_runs(plan: Plan) -> dict[str, DirectRun]:
    """Step name -> how it runs, for every step whose image has no blockkit."""
    runs = {}
    for step in plan.steps:
        run = direct_run(step)
        if run is not None:
            runs[step.name] = run
    return runs


def _direct_problems(plan: Plan, runs: Mapping[str, DirectRun], names: Mapping[str, _ToolInputs]) -> list[Problem]:
    problems: list[Problem] = []
    taken = {s.name for s in plan.steps} | {h for s in plan.steps if s.definition.scatter
                                            for h in (split_step_id(s.name), each_step_id(s.name))}
    for step in plan.steps:
        run = runs.get(step.name)
        if run is None:
            continue
        where = f"step {step.name!r}"
        what = f"block {step.manifest.name!r} has no blockkit in its image"
        if run.entrypoint:
            problems.append(Problem(where, f"{what} and its image has an ENTRYPOINT, which a CWL engine cannot "
                                           "replace to stage its folders; use CMD in its Dockerfile"))
        if not run.command:
            problems.append(Problem(where, f"{what} and no command (no CMD in its image)"))
        if len(names[step.name].directories) > 1 and step.propagate and not step.definition.scatter:
            problems.append(Problem(where, f"{what}; a fan-in step (after: {step.upstream}) of such a block cannot "
                                           "propagate its inputs in CWL: drop 'propagate' or add a step that forwards them"))
        if names[step.name].secret_params:
            problems.append(Problem(where, f"{what}, so its secret parameter(s) "
                                           f"{', '.join(sorted(names[step.name].secret_params))} cannot be joined "
                                           "into UP42_TASK_PARAMETERS inside the container without passing them "
                                           "through the CWL document; give them as plain parameters in a private job file"))
        for helper in (run_step_id(step.name), fan_in_step_id(step.name)):
            if helper in taken:
                problems.append(Problem(where, f"its helper step {helper!r} has the name of another step"))
            taken.add(helper)
    return problems


def _tool_inputs(step: PlannedStep, workflow_input: bool, problems: list[Problem]) -> _ToolInputs:
    names = _ToolInputs()
    where = f"step {step.name!r}"
    if len(step.upstream) > 1:
        names.directories = {f"input_{cwl_id(up)}": up for up in step.upstream}
        if len(names.directories) != len(step.upstream):
            problems.append(Problem(where, f"upstream steps {step.upstream} give clashing CWL input names"))
    elif step.upstream:
        names.directories = {"input": step.upstream[0]}
    elif workflow_input and not step.manifest.is_data_block:
        names.directories = {"input": ""}
    # Otherwise (a first step and no workflow input) the entrypoint gives an empty folder, as the runner does.
    taken: dict[str, str] = {ident: "an input folder" for ident in names.directories}

    def claim(ident: str, what: str) -> str:
        if ident in taken:
            problems.append(Problem(where, f"{what} becomes CWL input {ident!r}, which {taken[ident]} already uses"))
        taken[ident] = what
        return ident

    for name, spec in step.manifest.parameters.items():
        ident = claim(cwl_id(name), f"parameter {name!r}")
        (names.secret_params if spec.secret else names.params)[name] = ident
    for key in step.definition.keys:
        names.keys[key] = claim(f"key_{cwl_id(key)}", f"key {key!r}")
    return names


def cwl_value(spec: ParameterSpec, value: Any) -> Any:
    """A parameter value as the CWL document and job order carry it: arrays and geometries as JSON text."""
    if spec.type in JSON_TYPES and not spec.secret and value is not None:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def _param_js(spec: ParameterSpec, ident: str) -> str:
    """The JavaScript expression giving a parameter's value for UP42_TASK_PARAMETERS (JSON text parsed back)."""
    if spec.type in JSON_TYPES and not spec.secret:
        return f"(inputs.{ident} === null ? null : JSON.parse(inputs.{ident}))"
    return f"inputs.{ident}"


def _param_type(spec: ParameterSpec, *, optional: bool) -> str:
    base = "string" if spec.secret else CWL_TYPES.get(spec.type, "Any")
    return f"{base}?" if optional else base


def _param_doc(spec: ParameterSpec) -> str:
    facts = [f"UP42 parameter {spec.name!r}, {spec.type}"]
    if spec.enum is not None:
        facts.append(f"one of {spec.enum}")
    if spec.minimum is not None or spec.maximum is not None:
        low = "" if spec.minimum is None else spec.minimum
        high = "" if spec.maximum is None else spec.maximum
        facts.append(f"range [{low}, {high}]")
    if spec.secret:
        facts.append("secret: give it in the job order; it is never written to the CWL document")
    elif spec.type in JSON_TYPES:
        facts.append("given as JSON text, e.g. '[1, 2]'; parsed back for the block")
    text = spec.description.strip().rstrip(".")
    return f"{text} ({'; '.join(facts)})" if text else "; ".join(facts)


def _js_key(name: str) -> str:
    # JSON string syntax is valid JavaScript string syntax.
    return json.dumps(name)


def _tool(step: PlannedStep, image: str, names: _ToolInputs, *, scattered: bool = False) -> dict[str, Any]:
    """The block's CommandLineTool; `scattered`: run once per part (no STAC, merged later)."""
    manifest = step.manifest
    cpus, memory_mb = manifest.resources
    inputs = _tool_input_list(step, names, scattered=scattered)
    public = ", ".join(f"{_js_key(name)}: {_param_js(manifest.parameters[name], ident)}"
                       for name, ident in names.params.items())
    env: dict[str, str] = {
        "UP42_TASK_PARAMETERS": f"$(JSON.stringify({{{public}}}))",
        "UP42_JOB_MODE": step.definition.mode,
    }
    arguments: list[Any] = ["--step", step.name, "--output", f"$(runtime.outdir)/{step.name}",
                            "--quicklooks", f"$(runtime.outdir)/{QUICKLOOK_DIR}"]
    requirements: dict[str, Any] = {"DockerRequirement": {"dockerPull": image}, "InlineJavascriptRequirement": {}}
    arguments += _input_arguments(names, requirements)
    for index, (name, ident) in enumerate(names.secret_params.items()):
        variable = f"BLOCKKIT_SECRET_PARAMETER_{index}"
        # cwltool swaps the secret in for its placeholder only when the container starts.
        env[variable] = f"$(inputs.{ident} === null ? '' : inputs.{ident})"
        arguments += ["--secret-param", f"{name}={variable}:{manifest.parameters[name].type}"]
    for key, ident in names.keys.items():
        env[key_variable(key)] = f"$(inputs.{ident})"
    if step.propagate:
        arguments.append("--propagate")
    if not scattered:
        arguments.append("--stac")  # a scattered step's catalog is written by the merge
    timeout = step.definition.timeout or manifest.options.get("timeout")
    if timeout:
        arguments += ["--timeout", str(float(timeout))]
    arguments += ["--", *(manifest.command or DEFAULT_COMMAND)]

    requirements["EnvVarRequirement"] = {"envDef": env}
    requirements["ResourceRequirement"] = {"coresMin": cpus, "ramMin": memory_mb}
    if manifest.network:
        requirements["NetworkAccess"] = {"networkAccess": True}
    if timeout:
        # A backstop for engines that kill the whole container; the entrypoint reports 124 first.
        requirements["ToolTimeLimit"] = {"timelimit": int(timeout) + 60}

    tool: dict[str, Any] = {
        "class": "CommandLineTool",
        "id": tool_id(step.name),
        "label": manifest.display_name or manifest.name,
        "doc": (manifest.description or f"blockkit block {manifest.name!r}") + f" (workflow step {step.name!r})",
        "requirements": requirements,
    }
    secret_ids = [*names.secret_params.values(), *names.keys.values()]
    if secret_ids:
        tool["hints"] = {"cwltool:Secrets": {"secrets": secret_ids}}
    tool.update({
        "baseCommand": list(ENTRYPOINT),
        "arguments": arguments,
        "inputs": inputs,
        "outputs": [
            {"id": "output", "type": "Directory", "doc": "data.json, the files it names and a STAC catalog.json",
             "outputBinding": {"glob": step.name}},
            # The entrypoint always makes the folder; a scattered step gathers them for the merge.
            {"id": "quicklooks", "type": "Directory" if scattered else "Directory?",
             "outputBinding": {"glob": QUICKLOOK_DIR}},
        ],
        "successCodes": [0],
        "temporaryFailCodes": _TEMPORARY_FAIL_CODES,
        "permanentFailCodes": _PERMANENT_FAIL_CODES,
    })
    return tool


def _tool_input_list(step: PlannedStep, names: _ToolInputs, *, scattered: bool) -> list[dict[str, Any]]:
    """The tool inputs of a block step: folders, parameters (typed, with the manifest defaults), secrets, keys."""
    manifest = step.manifest
    inputs: list[dict[str, Any]] = []
    for ident, upstream in names.directories.items():
        doc = f"output of step {upstream!r}" if upstream else "the workflow input (a folder with data.json, or a STAC catalog)"
        if scattered:
            doc = "one input feature: data.json with that feature and its files (a part of the split)"
        inputs.append({"id": ident, "type": "Directory", "doc": doc})
    for name, ident in names.params.items():
        spec = manifest.parameters[name]
        entry: dict[str, Any] = {"id": ident, "doc": _param_doc(spec)}
        if spec.has_default and spec.default is not None:
            entry["type"] = _param_type(spec, optional=False)
            entry["default"] = cwl_value(spec, spec.default)
        else:
            entry["type"] = _param_type(spec, optional=not spec.required)
        inputs.append(entry)
    for name, ident in names.secret_params.items():
        spec = manifest.parameters[name]
        inputs.append({"id": ident, "type": _param_type(spec, optional=not spec.required), "doc": _param_doc(spec)})
    for key, ident in names.keys.items():
        inputs.append({"id": ident, "type": "string",
                       "doc": f"keystore key {key!r} as JSON (secret; exported to the block as {key_variable(key)})"})
    return inputs


def _direct_tool(step: PlannedStep, image: str, names: _ToolInputs, run: DirectRun, *, scattered: bool) -> dict[str, Any]:
    """The CommandLineTool of a block whose image has no blockkit: its own command at the UP42 paths.

    `/tmp/input` is the input folder, staged read-only (InitialWorkDirRequirement with an
    absolute entryname, CWL v1.2); `/tmp/output` is the tool's output folder
    (`dockerOutputDirectory`); the raw folder is finished by `<step>-finish-tool`.
    """
    manifest = step.manifest
    cpus, memory_mb = manifest.resources
    public = ", ".join(f"{_js_key(name)}: {_param_js(manifest.parameters[name], ident)}"
                       for name, ident in names.params.items())
    env: dict[str, str] = {
        "UP42_TASK_PARAMETERS": f"$(JSON.stringify({{{public}}}))",
        "UP42_JOB_MODE": step.definition.mode,
    }
    for key, ident in names.keys.items():
        env[key_variable(key)] = f"$(inputs.{ident})"
    requirements: dict[str, Any] = {
        "DockerRequirement": {"dockerPull": image, "dockerOutputDirectory": DIRECT_OUTPUT},
        "InlineJavascriptRequirement": {},
    }
    inputs = _tool_input_list(step, names, scattered=scattered)
    if len(names.directories) > 1:
        # Fan-in: the merged data.json (from `<step>-fan-in-tool`) beside each upstream output, as the runner mounts them.
        inputs.insert(0, {"id": FAN_IN_DATA, "type": "File", "doc": "the merged fan-in data.json"})
        requirements["InitialWorkDirRequirement"] = {"listing": [
            {"entry": f"$(inputs.{FAN_IN_DATA})", "entryname": f"{DIRECT_INPUT}/data.json", "writable": False},
            *({"entry": f"$(inputs.{ident})", "entryname": f"{DIRECT_INPUT}/{upstream}", "writable": False}
              for ident, upstream in names.directories.items()),
        ]}
    elif names.directories:
        (ident,) = names.directories
        requirements["InitialWorkDirRequirement"] = {"listing": [
            {"entry": f"$(inputs.{ident})", "entryname": DIRECT_INPUT, "writable": False}]}
    requirements["EnvVarRequirement"] = {"envDef": env}
    requirements["ResourceRequirement"] = {"coresMin": cpus, "ramMin": memory_mb}
    if manifest.network:
        requirements["NetworkAccess"] = {"networkAccess": True}
    timeout = step.definition.timeout or manifest.options.get("timeout")
    if timeout:
        requirements["ToolTimeLimit"] = {"timelimit": max(1, int(timeout))}
    tool: dict[str, Any] = {
        "class": "CommandLineTool",
        "id": tool_id(step.name),
        "label": manifest.display_name or manifest.name,
        "doc": (manifest.description or f"block {manifest.name!r}") + f" (workflow step {step.name!r}; "
               "its image has no blockkit: it runs its own command at /tmp/input -> /tmp/output)",
        "requirements": requirements,
    }
    if names.keys:
        tool["hints"] = {"cwltool:Secrets": {"secrets": list(names.keys.values())}}
    tool.update({
        "baseCommand": ["/bin/sh", "-c", DIRECT_WRAPPER, run.workdir, *run.command],
        "inputs": inputs,
        "outputs": [{"id": "raw", "type": "Directory", "outputBinding": {"glob": "."},
                     "doc": "the block's /tmp/output as it left it (quicklooks in .blockkit-quicklooks/)"}],
        "successCodes": [0],
        "temporaryFailCodes": _TEMPORARY_FAIL_CODES,
        "permanentFailCodes": _PERMANENT_FAIL_CODES,
    })
    return tool


def _fan_in_tool(step: PlannedStep, helper: str, names: _ToolInputs) -> dict[str, Any]:
    """`<step>-fan-in-tool`: the merged data.json of a fan-in step without blockkit (the runner's rewriting)."""
    requirements: dict[str, Any] = {"DockerRequirement": {"dockerPull": helper}}
    arguments = ["--step", step.name, *_input_arguments(names, requirements)]
    requirements["ResourceRequirement"] = dict(SCATTER_HELPER_RESOURCES)
    return {
        "class": "CommandLineTool",
        "id": fan_in_tool_id(step.name),
        "label": f"merge the inputs of step {step.name!r} into one data.json",
        "doc": "Feature ids become <step>:<id>, data paths get the <step>/ prefix (blockkit.export.finish --fan-in).",
        "requirements": requirements,
        "baseCommand": list(FINISH_ENTRYPOINT),
        "arguments": arguments,
        "inputs": [{"id": ident, "type": "Directory", "doc": f"output of step {up!r}"}
                   for ident, up in names.directories.items()],
        "outputs": [{"id": "data", "type": "File", "outputBinding": {"glob": f"{FAN_IN_DIR}/data.json"}}],
        "successCodes": [0],
        "permanentFailCodes": _PERMANENT_FAIL_CODES,
    }


def _repeated(prefix: str, items: str, position: int) -> dict[str, Any]:
    return {"type": {"type": "array", "items": items, "inputBinding": {"prefix": prefix}},
            "inputBinding": {"position": position}}


def _finish_tool(step: PlannedStep, helper: str, *, scattered: bool, with_input: bool) -> dict[str, Any]:
    """`<step>-finish-tool`: the raw output(s) of a block without blockkit, checked and taken over (export.finish)."""
    arguments: list[Any] = ["--step", step.name, "--output", f"$(runtime.outdir)/{step.name}",
                            "--quicklooks", f"$(runtime.outdir)/{QUICKLOOK_DIR}", "--stac"]
    if step.propagate:
        arguments.append("--propagate")
    inputs: list[dict[str, Any]]
    if scattered:
        arguments += ["--work", f"$(runtime.outdir)/{PARTS_DIR}"]
        inputs = [{"id": "names", **_repeated("--name", "string", 1)},
                  {"id": "raws", **_repeated("--raw", "Directory", 2)}]
        if with_input:
            inputs.append({"id": "inputs", **_repeated("--input", "Directory", 3)})
    else:
        inputs = [{"id": "raw", "type": "Directory", "inputBinding": {"prefix": "--raw", "position": 1}}]
        if with_input:
            inputs.append({"id": "input", "type": "Directory", "inputBinding": {"prefix": "--input", "position": 2}})
    return {
        "class": "CommandLineTool",
        "id": finish_tool_id(step.name),
        "label": f"check and take over the output of step {step.name!r}",
        "doc": ("Only regular files are taken (a symlink fails the step), data.json must be valid with data paths "
                "inside the folder, quicklooks go to their own folder, a STAC catalog is added (blockkit.export.finish)."),
        "requirements": {"DockerRequirement": {"dockerPull": helper},
                         "ResourceRequirement": dict(SCATTER_HELPER_RESOURCES)},
        "baseCommand": list(FINISH_ENTRYPOINT),
        "arguments": arguments,
        "inputs": inputs,
        "outputs": [
            {"id": "output", "type": "Directory", "doc": "data.json, the files it names and a STAC catalog.json",
             "outputBinding": {"glob": step.name}},
            {"id": "quicklooks", "type": "Directory?", "outputBinding": {"glob": QUICKLOOK_DIR}},
        ],
        "successCodes": [0],
        "permanentFailCodes": _PERMANENT_FAIL_CODES,
    }


def _input_arguments(names: _ToolInputs, requirements: dict[str, Any]) -> list[str]:
    """Command-line arguments (and fan-in staging) for a tool's input folders."""
    if len(names.directories) > 1:
        arguments = ["--fan-in", f"$(runtime.outdir)/{FAN_IN_DIR}"]
        for ident, upstream in names.directories.items():
            arguments += ["--upstream", upstream]
        requirements["InitialWorkDirRequirement"] = {"listing": [
            {"entry": f"$(inputs.{ident})", "entryname": f"{FAN_IN_DIR}/{upstream}", "writable": False}
            for ident, upstream in names.directories.items()
        ]}
        return arguments
    if names.directories:
        return ["--input", "$(inputs.input.path)"]
    return []


def _split_tool(step: PlannedStep, image: str, names: _ToolInputs) -> dict[str, Any]:
    """`<step>-split-tool`: one folder per input feature, listed in input order with their names."""
    requirements: dict[str, Any] = {"DockerRequirement": {"dockerPull": image}}
    arguments = ["split", "--step", step.name, "--parts", f"$(runtime.outdir)/{PARTS_DIR}",
                 "--cwl-output", "$(runtime.outdir)/cwl.output.json", *_input_arguments(names, requirements)]
    requirements["ResourceRequirement"] = dict(SCATTER_HELPER_RESOURCES)
    inputs = [{"id": ident, "type": "Directory", "doc": f"output of step {up!r}" if up else "the workflow input"}
              for ident, up in names.directories.items()]
    return {
        "class": "CommandLineTool",
        "id": split_tool_id(step.name),
        "label": f"split the input of step {step.name!r} into one folder per feature",
        "doc": "Each part holds a data.json with one feature and only that feature's files (blockkit.runtime.scatter).",
        "requirements": requirements,
        "baseCommand": list(SCATTER_ENTRYPOINT),
        "arguments": arguments,
        "inputs": inputs,
        "outputs": [
            # Written by the tool into cwl.output.json, in input order.
            {"id": "parts", "type": {"type": "array", "items": "Directory"}},
            {"id": "names", "type": {"type": "array", "items": "string"}},
        ],
        "successCodes": [0],
        "permanentFailCodes": _PERMANENT_FAIL_CODES,
    }


def _merge_tool(step: PlannedStep, image: str) -> dict[str, Any]:
    """`<step>-merge-tool`: the per-feature outputs as one output folder (and one quicklook folder)."""
    def repeated(prefix: str, items: str) -> dict[str, Any]:
        return {"type": "array", "items": items, "inputBinding": {"prefix": prefix}}

    return {
        "class": "CommandLineTool",
        "id": merge_tool_id(step.name),
        "label": f"merge the per-feature outputs of step {step.name!r}",
        "doc": ("One data.json (ids unique, data paths prefixed <part>/), every part's files under <part>/, "
                "quicklooks under <part>/, and a STAC catalog (blockkit.runtime.scatter)."),
        "requirements": {"DockerRequirement": {"dockerPull": image},
                         "ResourceRequirement": dict(SCATTER_HELPER_RESOURCES)},
        "baseCommand": list(SCATTER_ENTRYPOINT),
        "arguments": ["merge", "--step", step.name, "--output", f"$(runtime.outdir)/{step.name}",
                      "--quicklooks", f"$(runtime.outdir)/{QUICKLOOK_DIR}", "--stac"],
        "inputs": [
            {"id": "names", "type": repeated("--name", "string"), "inputBinding": {"position": 1}},
            {"id": "parts", "type": repeated("--part", "Directory"), "inputBinding": {"position": 2}},
            {"id": "part_quicklooks", "type": repeated("--part-quicklooks", "Directory"), "inputBinding": {"position": 3}},
        ],
        "outputs": [
            {"id": "output", "type": "Directory", "doc": "data.json, the files it names and a STAC catalog.json",
             "outputBinding": {"glob": step.name}},
            {"id": "quicklooks", "type": "Directory?", "outputBinding": {"glob": QUICKLOOK_DIR}},
        ],
        "successCodes": [0],
        "permanentFailCodes": _PERMANENT_FAIL_CODES,
    }


def split_tool_id(step: str) -> str:
    """The id of a scattered step's split tool."""
    return f"{step}-split-tool"


def merge_tool_id(step: str) -> str:
    """The id of a scattered step's merge tool."""
    return f"{step}-merge-tool"


def finish_tool_id(step: str) -> str:
    """The id of the tool that finishes the raw output of a step whose image has no blockkit."""
    return f"{step}-finish-tool"


def fan_in_step_id(step: str) -> str:
    """The workflow step that writes the merged data.json before a fan-in step without blockkit."""
    return f"{step}__fan_in"


def fan_in_tool_id(step: str) -> str:
    """The id of the tool that writes the merged data.json of a fan-in step without blockkit."""
    return f"{step}-fan-in-tool"


def run_step_id(step: str) -> str:
    """The workflow step that runs a block without blockkit (its raw output is finished by `<step>`)."""
    return f"{step}__run"


def split_step_id(step: str) -> str:
    """The workflow step that splits a scattered step's input."""
    return f"{step}__split"


def each_step_id(step: str) -> str:
    """The workflow step that runs the block once per part (CWL `scatter`)."""
    return f"{step}__each"


def _scatter_problems(plan: Plan, names: Mapping[str, _ToolInputs]) -> list[Problem]:
    problems: list[Problem] = []
    taken = {s.name for s in plan.steps}
    for step in plan.steps:
        if step.definition.scatter is None:
            continue
        where = f"step {step.name!r}"
        if step.manifest.is_data_block or not names[step.name].directories:
            problems.append(Problem(where, "'scatter: features' needs input features (an upstream step or the "
                                           "workflow input) and a processing block"))
        for helper in (split_step_id(step.name), each_step_id(step.name)):
            if helper in taken:
                problems.append(Problem(where, f"its scatter step {helper!r} has the name of another step"))
            taken.add(helper)
    return problems


def io_problems(workflow: Any, *, leave_output: bool = False) -> list[Problem]:
    """Workflow fields a CWL document cannot carry: `output:` and the workflow's `keys:`.

    A CWL workflow ends with its output Directory; where it goes is the engine's
    `--outdir` or the platform's stage-out. A keystore key cannot travel either. Rather
    than drop them silently, the export refuses, and says what to do instead.
    """
    from blockkit.storage._transfer import public_url  # URLs as printed: no password, no signed query

    problems: list[Problem] = []
    if workflow.output and not leave_output:
        output = public_url(workflow.output)
        problems.append(Problem("output", (
            f"the workflow publishes its result to {output!r}; CWL has no stage-out: export with "
            "--leave-output and stage the result out after the run (blockkit stage-out RESULTS_DIR "
            f"{output}{' --key ' + workflow.keys['output'] if workflow.keys.get('output') else ''}) "
            "or let the platform do it")))
    input_key = workflow.keys.get("input")
    if input_key and workflow.input and "://" in workflow.input:
        problems.append(Problem("keys", (
            f"the workflow reads {public_url(workflow.input)!r} with keystore key {input_key!r}, which a CWL engine cannot "
            f"use: stage it in first (blockkit stage-in {workflow.input} DIR --key {input_key}) and export "
            "with --input DIR")))
    return problems


def key_variable(key: str) -> str:
    """The environment variable that carries a keystore key (as JSON) into a step."""
    return "BLOCKKIT_KEY_" + cwl_id(key).upper()


def check_exportable(
    plan: Plan, *, leave_output: bool = False, input_given: bool = False, images: Mapping[str, str] | None = None,
) -> None:
    """Raise ExportError with every reason the plan cannot become CWL (before images are built).

    Args:
        plan: the planned workflow to check.
        leave_output: allow a workflow with `output:` (its result stays in the CWL engine's output folder).
        input_given: the workflow input is given another way (`--input`), so its input key is not needed.
        images: step name -> image, when known: a step without an image is one more problem
            (None: images are not checked yet).
    """
    problems: list[Problem] = []
    names = {step.name: _tool_inputs(step, bool(plan.workflow.input), problems) for step in plan.steps}
    problems += _scatter_problems(plan, names)
    problems += _direct_problems(plan, direct_runs(plan), names)
    io = io_problems(plan.workflow, leave_output=leave_output)
    problems += [p for p in io if not (input_given and p.where == "keys")]
    if images is not None:
        missing = [s.name for s in plan.steps if not images.get(s.name)]
        problems += [Problem(f"step {name!r}", "no image to run it (build it or give --image)") for name in missing]
    if problems:
        raise ExportError.from_problems(f"workflow {plan.workflow.name!r} cannot be exported to CWL", problems)


def export_cwl(
    plan: Plan, *, images: Mapping[str, str], leave_output: bool = False, input_given: bool = False,
) -> dict[str, Any]:
    """The packed CWL v1.2 document (`$graph`: Workflow `#main` + one CommandLineTool per step).

    Raises ExportError (as `check_exportable`) when the plan cannot become CWL.

    Args:
        plan: the planned workflow to export.
        images: step name -> the image its tool runs in (plus the helper image under its
            reserved name, when a step's image has no blockkit).
        leave_output: export a workflow with `output:` anyway (its result stays in the CWL
            engine's output folder).
        input_given: the workflow input is given another way (`--input`), so the workflow's
            input key is not needed.
    """
    check_exportable(plan, leave_output=leave_output, input_given=input_given, images=images)
    problems: list[Problem] = []
    names = {step.name: _tool_inputs(step, bool(plan.workflow.input), problems) for step in plan.steps}

    wf_inputs: list[dict[str, Any]] = []
    wf_secrets: list[str] = []
    wf_steps: list[dict[str, Any]] = []
    if any(up == "" for n in names.values() for up in n.directories.values()):
        wf_inputs.append({
            "id": "input", "type": "Directory",
            "doc": "The workflow input: a folder with data.json, or a STAC catalog.json (OGC App Package stage-in)",
        })
    graph_tools: list[dict[str, Any]] = []
    runs = direct_runs(plan)
    helper = images.get(HELPER) or DEFAULT_HELPER_IMAGE
    for step in plan.steps:
        step_names = names[step.name]
        run = runs.get(step.name)
        step_in: list[dict[str, Any]] = []
        sources = [{"id": ident, "source": f"{upstream}/output" if upstream else "input"}
                   for ident, upstream in step_names.directories.items()]
        scattered = step.definition.scatter == "features"
        if scattered:
            # split (the step's own inputs) -> the block once per part -> merge, named like the step.
            wf_steps.append({"id": split_step_id(step.name), "run": f"#{split_tool_id(step.name)}",
                             "in": sources, "out": ["parts", "names"]})
            # A block without blockkit cannot split: the helper image does it.
            graph_tools.append(_split_tool(step, helper if run else images[step.name], step_names))
            step_names = _ToolInputs(directories={"input": split_step_id(step.name)}, params=step_names.params,
                                     secret_params=step_names.secret_params, keys=step_names.keys)
            step_in.append({"id": "input", "source": f"{split_step_id(step.name)}/parts"})
        else:
            step_in += sources
            if run is not None and len(step_names.directories) > 1:
                wf_steps.append({"id": fan_in_step_id(step.name), "run": f"#{fan_in_tool_id(step.name)}",
                                 "in": sources, "out": ["data"]})
                graph_tools.append(_fan_in_tool(step, helper, step_names))
                step_in.append({"id": FAN_IN_DATA, "source": f"{fan_in_step_id(step.name)}/data"})
        if run is None:
            graph_tools.append(_tool(step, images[step.name], step_names, scattered=scattered))
        else:
            graph_tools.append(_direct_tool(step, images[step.name], step_names, run, scattered=scattered))
        for name, ident in step_names.params.items():
            spec = step.manifest.parameters[name]
            value = step.params.get(name)
            wf_id = workflow_input_id(step.name, ident)
            entry: dict[str, Any] = {"id": wf_id, "doc": f"step {step.name!r}: {_param_doc(spec)}"}
            entry["type"] = _param_type(spec, optional=value is None)
            if value is not None:
                entry["default"] = cwl_value(spec, value)
            wf_inputs.append(entry)
            step_in.append({"id": ident, "source": wf_id})
        for name, ident in step_names.secret_params.items():
            spec = step.manifest.parameters[name]
            wf_id = workflow_input_id(step.name, ident)
            wf_inputs.append({"id": wf_id, "type": _param_type(spec, optional=not spec.required),
                              "doc": f"step {step.name!r}: {_param_doc(spec)}"})
            wf_secrets.append(wf_id)
            step_in.append({"id": ident, "source": wf_id})
        for key, ident in step_names.keys.items():
            wf_id = workflow_input_id(step.name, ident)
            wf_inputs.append({"id": wf_id, "type": "string",
                              "doc": f"step {step.name!r}: keystore key {key!r} as JSON (secret)"})
            wf_secrets.append(wf_id)
            step_in.append({"id": ident, "source": wf_id})
        block_out = ["output", "quicklooks"] if run is None else ["raw"]
        with_input = run is not None and step.propagate and bool(sources)
        if not scattered:
            if run is None:
                wf_steps.append({"id": step.name, "run": f"#{tool_id(step.name)}", "in": step_in, "out": block_out})
                continue
            wf_steps.append({"id": run_step_id(step.name), "run": f"#{tool_id(step.name)}", "in": step_in,
                             "out": block_out})
            finish_in = [{"id": "raw", "source": f"{run_step_id(step.name)}/raw"}]
            if with_input:
                finish_in.append({"id": "input", "source": sources[0]["source"]})
            wf_steps.append({"id": step.name, "run": f"#{finish_tool_id(step.name)}", "in": finish_in,
                             "out": ["output", "quicklooks"]})
            graph_tools.append(_finish_tool(step, helper, scattered=False, with_input=with_input))
            continue
        each = each_step_id(step.name)
        wf_steps.append({"id": each, "run": f"#{tool_id(step.name)}", "scatter": "input", "in": step_in,
                         "out": block_out})
        if run is None:
            wf_steps.append({"id": step.name, "run": f"#{merge_tool_id(step.name)}", "in": [
                {"id": "names", "source": f"{split_step_id(step.name)}/names"},
                {"id": "parts", "source": f"{each}/output"},
                {"id": "part_quicklooks", "source": f"{each}/quicklooks"},
            ], "out": ["output", "quicklooks"]})
            graph_tools.append(_merge_tool(step, images[step.name]))
            continue
        merge_in = [{"id": "names", "source": f"{split_step_id(step.name)}/names"},
                    {"id": "raws", "source": f"{each}/raw"}]
        if with_input:
            merge_in.append({"id": "inputs", "source": f"{split_step_id(step.name)}/parts"})
        wf_steps.append({"id": step.name, "run": f"#{finish_tool_id(step.name)}", "in": merge_in,
                         "out": ["output", "quicklooks"]})
        graph_tools.append(_finish_tool(step, helper, scattered=True, with_input=with_input))

    outputs = [
        {"id": out_id, "type": "Directory", "outputSource": f"{name}/output",
         "doc": f"the output of step {name!r}: data.json, its files and a STAC catalog.json"}
        for name, out_id in output_ids(plan).items()
    ]
    workflow: dict[str, Any] = {
        "class": "Workflow",
        "id": WORKFLOW_ID,
        "label": plan.workflow.name,
        "doc": f"blockkit workflow {plan.workflow.name!r}: " + " -> ".join(s.name for s in plan.steps),
        "inputs": wf_inputs,
        "outputs": outputs,
        "steps": wf_steps,
    }
    if any(s.definition.scatter for s in plan.steps):
        workflow["requirements"] = {"ScatterFeatureRequirement": {}}
    if wf_secrets:
        workflow["hints"] = {"cwltool:Secrets": {"secrets": wf_secrets}}
    graph = [workflow, *graph_tools]
    return {"cwlVersion": CWL_VERSION, "$namespaces": {"cwltool": CWLTOOL_NAMESPACE}, "$graph": graph}


def job_order(plan: Plan, *, input_location: str | None = None) -> dict[str, Any]:
    """A job order for the exported workflow: the workflow input and every non-secret parameter."""
    job: dict[str, Any] = {}
    problems: list[Problem] = []
    names = {step.name: _tool_inputs(step, bool(plan.workflow.input), problems) for step in plan.steps}
    if any(up == "" for n in names.values() for up in n.directories.values()) and input_location:
        if "://" in input_location:
            job["input"] = {"class": "Directory", "location": input_location.removeprefix("stac+")}
        else:
            job["input"] = {"class": "Directory", "path": input_location}
    for step in plan.steps:
        for name, ident in names[step.name].params.items():
            value = step.params.get(name)
            if value is not None:
                job[workflow_input_id(step.name, ident)] = cwl_value(step.manifest.parameters[name], value)
    return job


def secret_inputs(plan: Plan) -> list[str]:
    """Workflow input ids that carry secrets (the user supplies them at run time)."""
    problems: list[Problem] = []
    ids = []
    for step in plan.steps:
        names = _tool_inputs(step, bool(plan.workflow.input), problems)
        ids += [workflow_input_id(step.name, i) for i in (*names.secret_params.values(), *names.keys.values())]
    return ids


def dump_cwl(document: Mapping[str, Any], *, source: str | None = None) -> str:
    """The document as YAML text, with a header saying where it came from."""
    import yaml

    header = ["#!/usr/bin/env cwl-runner"]
    if source and not source.isprintable():
        source = repr(source)  # a line break (or NEL, U+2028) in a file name would end the comment
    header.append(f"# Exported by `blockkit export cwl{' ' + source if source else ''}`; re-export instead of editing.")
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # a CWL file reads better without &id001 anchors
            return True

    body = yaml.dump(dict(document), Dumper=Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body


def dump_job(job: Mapping[str, Any], *, secrets: list[str]) -> str:
    """A job order file as YAML; secret inputs are listed in a comment, never filled in."""
    import yaml

    lines = ["# Job order for the exported CWL workflow (cwltool app.cwl job.yml)."]
    if secrets:
        lines.append("# Secret inputs (add them here or in a separate job file kept out of version control):")
        lines += [f"#   {name}: ..." for name in secrets]
    body = yaml.safe_dump(dict(job), sort_keys=False, default_flow_style=False, allow_unicode=True) if job else "{}\n"
    return "\n".join(lines) + "\n" + body


def default_image(step: PlannedStep) -> str:
    """The image name used without building: the step's image, else `blockkit/<block>:latest`."""
    if step.image:
        return step.image
    from blockkit.runner._image_names import repo_name  # the naming rule of `blockkit build`

    return f"blockkit/{repo_name(step.manifest.name)}:latest"


_HELPER_MANIFEST = {
    "_up42_specification_version": 2,
    "name": HELPER_BLOCK,
    "type": "processing",
    "display_name": "blockkit CWL helper",
    "description": ("blockkit in an image, for the CWL tools that blocks without blockkit cannot run "
                    "themselves: split and merge of a scattered step, and taking over a raw output "
                    "(python -m blockkit.export.finish)."),
    "parameters": {},
    "machine": {"type": "small"},
    "input_capabilities": {},
    "output_capabilities": {},
}
_HELPER_RUN = (
    '"""The CWL helper image runs `python -m blockkit.export.finish` or `python -m blockkit.runtime.scatter`."""\n'
    "import sys\n\n"
    'sys.exit("this image runs blockkit\'s CWL helper tools; it is not a block")\n'
)


def helper_block_dir() -> Path:
    """The folder `blockkit build` makes the helper image from (written under the user's cache folder).

    It holds only a manifest and a stub: the image is blockkit on the base image, so its tag
    (the content hash) changes with blockkit and the base image, as every block's does.
    """
    from blockkit.runner._blockenv import cache_root

    folder = cache_root() / HELPER_BLOCK
    files = {folder / "UP42Manifest.json": json.dumps(_HELPER_MANIFEST, indent=2) + "\n",
             folder / "src" / "run.py": _HELPER_RUN}
    for path, text in files.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    return folder


def needs_helper(plan: Plan) -> bool:
    """Whether the export uses the helper image (a step whose image has no blockkit)."""
    return bool(direct_runs(plan))


def _base_for(step: PlannedStep, base_image: str) -> str | None:
    """The base image for a step's build: a block with its own Dockerfile keeps its own FROM (as `blockkit run`)."""
    from blockkit.runner._build import own_dockerfile

    if step.block_dir is not None and own_dockerfile(step.block_dir) is not None:
        return None
    return base_image


def expected_images(plan: Plan, *, base_image: str) -> dict[str, str]:
    """The tags `blockkit build` gives each step's block, computed without building (needs a daemon).

    The helper image, when the export needs it, is under the key `HELPER`.
    """
    from blockkit.runner._build import build_block_image
    from blockkit.runner._docker_engine import docker_client

    client = docker_client(timeout=30)
    images: dict[str, str] = {}
    try:
        for step in plan.steps:
            if step.block_dir is None:
                images[step.name] = default_image(step)
                continue
            # The tag covers the wheels too: `build=False` resolves them (from the wheelhouse) and builds nothing.
            images[step.name] = build_block_image(step.block_dir, base_image=_base_for(step, base_image),
                                                  client=client, build=False).tag
        if needs_helper(plan):
            images[HELPER] = build_block_image(helper_block_dir(), base_image=base_image, client=client,
                                               build=False).tag
    finally:
        client.close()
    return images


def build_images(
    plan: Plan,
    *,
    base_image: str,
    wheelhouse: Path | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> dict[str, str]:
    """Build (or reuse) every block step's image with `blockkit build`; step name -> image tag.

    Blocks with their own Dockerfile keep their own base (`--base-image` is for Dockerfile.base
    blocks), as under `blockkit run`. When a step's image has no blockkit, the helper image is
    built too, under the key `HELPER`.
    """
    from blockkit.runner._build import build_block_image

    images: dict[str, str] = {}
    built_dirs: dict[Path, str] = {}
    for step in plan.steps:
        if step.block_dir is None:
            images[step.name] = default_image(step)
            continue
        if step.block_dir not in built_dirs:
            built = build_block_image(step.block_dir, base_image=_base_for(step, base_image), wheelhouse=wheelhouse)
            say(f"image {built.tag} ({'built' if built.rebuilt else 'up to date'}) for step {step.name!r}")
            built_dirs[step.block_dir] = built.tag
        images[step.name] = built_dirs[step.block_dir]
    if needs_helper(plan):
        built = build_block_image(helper_block_dir(), base_image=base_image, wheelhouse=wheelhouse)
        say(f"image {built.tag} ({'built' if built.rebuilt else 'up to date'}) for the CWL helper tools")
        images[HELPER] = built.tag
    return images


def with_registry(images: Mapping[str, str], registry: str | None) -> dict[str, str]:
    """Image names under a registry prefix (for engines that pull, e.g. Calrissian)."""
    if not registry:
        return dict(images)
    prefix = registry.rstrip("/")
    return {step: f"{prefix}/{ref}" for step, ref in images.items()}
