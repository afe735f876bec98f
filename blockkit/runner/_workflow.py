"""workflow.yaml: named steps, each a block folder or an image, chained by `after`."""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockkit.contract.errors import Problem, WorkflowError

MAX_WORKFLOW_BYTES = 1 << 20
#: Values a workflow may hold once YAML aliases are expanded (an "anchor bomb" stays small on disk).
MAX_WORKFLOW_VALUES = 100_000
STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_STEP_KEYS = {"block", "image", "params", "after", "propagate", "timeout", "keys", "mode", "max_output", "scatter"}
#: Values of a step's `scatter:` field: `features` runs the block once per input feature.
SCATTER_VALUES = ("features",)
#: Python refuses to read integers longer than this (sys.int_info.default_max_str_digits).
MAX_INT_DIGITS = 4300
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_TOP_KEYS = {"name", "input", "output", "steps", "keys", "description"}


@dataclass
class StepDef:
    """One step as written in the workflow file."""

    name: str
    block: str | None = None
    image: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    after: list[str] | None = None  # None: the previous step
    propagate: bool = False
    timeout: float | None = None
    max_output: int | None = None  # bytes; None: the machine type's default
    keys: list[str] = field(default_factory=list)
    mode: str = "DEFAULT"
    scatter: str | None = None  # "features": one block run per input feature, outputs merged
    line: int | None = None


@dataclass
class Workflow:
    """A parsed workflow file."""

    name: str
    steps: list[StepDef]
    input: str | None = None
    output: str | None = None
    keys: dict[str, str] = field(default_factory=dict)  # "input"/"output" -> keystore key name
    path: Path | None = None
    base_dir: Path = Path(".")
    problems: list[Problem] = field(default_factory=list)  # found while parsing; planning adds more


class _UniqueKeyLoader:
    """A YAML loader that records duplicate keys with their lines instead of silently keeping the last."""

    @staticmethod
    def load(text: str) -> tuple[Any, list[Problem], dict[str, int]]:
        import yaml

        problems: list[Problem] = []
        lines: dict[str, int] = {}

        class Loader(yaml.SafeLoader):
            pass

        def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    raise yaml.constructor.ConstructorError(
                        None, None, f"a {type(key).__name__} cannot be a key; keys are names", key_node.start_mark)
                if key in seen:
                    problems.append(Problem(f"line {key_node.start_mark.line + 1}", f"duplicate key {key!r}"))
                seen.add(key)
            return loader.construct_mapping(node, deep=deep)

        def construct_int(loader: Any, node: Any) -> Any:
            digits = sum(c.isdigit() for c in str(node.value))
            if digits > MAX_INT_DIGITS:
                raise yaml.constructor.ConstructorError(
                    None, None, f"an integer of {digits} digits is too long (at most {MAX_INT_DIGITS})", node.start_mark)
            return yaml.SafeLoader.construct_yaml_int(loader, node)

        Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
        Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
        root = yaml.compose(text, Loader=Loader)
        if root is not None:
            _check_expanded_size(root)
        if root is not None and isinstance(root, yaml.MappingNode):
            for key_node, value_node in root.value:
                if key_node.value == "steps" and isinstance(value_node, yaml.MappingNode):
                    for step_key, _ in value_node.value:
                        lines[str(step_key.value)] = step_key.start_mark.line + 1  # the last, whose value YAML keeps
        data = yaml.load(text, Loader=Loader)  # noqa: S506 - SafeLoader subclass
        return data, problems, lines


def _check_expanded_size(root: Any) -> None:
    """Refuse a YAML graph whose aliases expand to too many values, or that refers to itself."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise WorkflowError("the workflow refers to itself through a YAML alias")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        open_nodes.discard(key)
        if total > MAX_WORKFLOW_VALUES:
            raise WorkflowError(
                f"the workflow expands to more than {MAX_WORKFLOW_VALUES} values through YAML aliases"
            )
        sizes[key] = total
        return total

    size(root)


def parse_workflow(text: str, path: Path | None = None) -> Workflow:
    """Parse workflow YAML text; structural problems are collected, not raised one by one."""
    import yaml

    where = str(path) if path else "workflow"
    try:
        data, problems, lines = _UniqueKeyLoader.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark else where
        raise WorkflowError(f"{where} is not valid YAML ({line}): {getattr(exc, 'problem', exc)}",
                            problems=[Problem(line, str(getattr(exc, 'problem', exc)))]) from None
    except RecursionError:
        # The YAML reader (and the alias check) recurse per level: thousands of nested brackets.
        raise WorkflowError(f"{where} is nested too deeply to be a workflow") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{where} must be a mapping with 'name' and 'steps'")
    # `x-...` keys are free for the user (e.g. YAML anchors of shared parameters), as in compose files.
    for key in sorted((k for k in set(data) - _TOP_KEYS if not str(k).startswith("x-")), key=str):
        problems.append(Problem(where, f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})"))
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(Problem(where, "'name' must be a non-empty string"))
        name = path.stem if path else "workflow"
    steps_data = data.get("steps")
    steps: list[StepDef] = []
    if not isinstance(steps_data, dict) or not steps_data:
        problems.append(Problem(where, "'steps' must be a mapping of step names to steps, with at least one step"))
        steps_data = {}
    for step_name, body in steps_data.items():
        steps.append(_parse_step(str(step_name), body, lines.get(str(step_name)), problems))
    keys = data.get("keys") or {}
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        problems.append(Problem(where, "'keys' must map 'input'/'output' to keystore key names"))
        keys = {}
    for field_name in ("input", "output"):
        if data.get(field_name) is not None and not isinstance(data.get(field_name), str):
            problems.append(Problem(where, f"'{field_name}' must be a path or URI string"))
    base_dir = path.parent if path else Path(".")
    return Workflow(
        name=str(name),
        steps=steps,
        input=data.get("input") if isinstance(data.get("input"), str) else None,
        output=data.get("output") if isinstance(data.get("output"), str) else None,
        keys={str(k): v for k, v in keys.items()},
        path=path,
        base_dir=base_dir,
        problems=problems,
    )


def _parse_step(name: str, body: Any, line: int | None, problems: list[Problem]) -> StepDef:
    where = f"step {name!r}" + (f" (line {line})" if line else "")
    step = StepDef(name=name, line=line)
    if not STEP_NAME.match(name):
        problems.append(Problem(where, "step names start with a letter and use letters, digits, '-' or '_'"))
    if isinstance(body, str):
        body = {"block": body}
    if not isinstance(body, dict):
        problems.append(Problem(where, "must be a mapping with 'block' or 'image'"))
        return step
    for key in sorted(set(body) - _STEP_KEYS, key=str):
        problems.append(Problem(where, f"unknown key {key!r} (known: {', '.join(sorted(_STEP_KEYS))})"))
    step.block = body.get("block") if isinstance(body.get("block"), str) else None
    step.image = body.get("image") if isinstance(body.get("image"), str) else None
    if (step.block is None) == (step.image is None):
        problems.append(Problem(where, "give exactly one of 'block' (a folder) or 'image'"))
    params = body.get("params", {}) or {}
    if not isinstance(params, dict):
        problems.append(Problem(where, "'params' must be a mapping"))
        params = {}
    step.params = params
    after = body.get("after")
    if after is not None:
        if isinstance(after, str):
            after = [after]
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            problems.append(Problem(where, "'after' must be a step name or a list of step names"))
            after = None
    step.after = after
    step.propagate = bool(body.get("propagate", False))
    timeout = body.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                or not math.isfinite(timeout) or timeout <= 0):
        problems.append(Problem(where, f"'timeout' must be a positive number of seconds, and finite (not {timeout!r})"))
        timeout = None
    step.timeout = timeout
    if body.get("max_output") is not None:
        step.max_output = parse_size(body["max_output"])
        if step.max_output is None:
            problems.append(Problem(where, "'max_output' must be a positive size: bytes, or a number with a unit "
                                           f"(500MB, 2GiB), not {body['max_output']!r}"))
    keys = body.get("keys", []) or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        problems.append(Problem(where, "'keys' must be a list of keystore key names"))
        keys = []
    step.keys = keys
    mode = str(body.get("mode", "DEFAULT")).upper()
    if mode not in ("DEFAULT", "DRY_RUN"):
        problems.append(Problem(where, f"'mode' must be DEFAULT or DRY_RUN, not {mode!r}"))
    step.mode = mode
    scatter = body.get("scatter")
    if scatter is not None and scatter not in SCATTER_VALUES:
        problems.append(Problem(where, f"'scatter' must be {' or '.join(SCATTER_VALUES)}, not {scatter!r}"))
        scatter = None
    step.scatter = scatter
    return step


def parse_size(value: Any) -> int | None:
    """A positive size in bytes from an int or '500MB' / '2 GiB' / '10G', or None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    match = _SIZE.match(value)
    if not match:
        return None
    unit = match.group(2).upper()
    factor = _UNITS.get(unit)
    if factor is None:
        return None
    size = int(float(match.group(1)) * factor)
    return size if size > 0 else None


def load_workflow(path: Path) -> Workflow:
    """Read and parse a workflow file (problems are reported by planning, all at once)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise WorkflowError(f"workflow file not found: {path}") from None
    if size > MAX_WORKFLOW_BYTES:
        raise WorkflowError(f"{path} is {size} bytes; a workflow file is limited to {MAX_WORKFLOW_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise WorkflowError(f"{path} is not UTF-8 text") from None
    return parse_workflow(text, path)


def single_block_workflow(block_dir: Path, params: dict[str, Any], input_dir: str | None) -> Workflow:
    """A one-step workflow around a block folder (so `blockkit run BLOCK_DIR` plans like a workflow)."""
    name = Path(block_dir).resolve().name
    step_name = name if STEP_NAME.match(name) else "block"
    return Workflow(
        name=name,
        steps=[StepDef(name=step_name, block=str(Path(block_dir).resolve()), params=params)],
        input=input_dir,
    )
