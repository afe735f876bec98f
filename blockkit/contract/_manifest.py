"""UP42Manifest.json (UP42 spec v2 plus a `blockkit` object): load and validate offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from blockkit.contract._datajson import load_schema
from blockkit.contract.errors import ManifestError, Problem

MANIFEST_FILE = "UP42Manifest.json"
MAX_MANIFEST_BYTES = 1 << 20

# machine.type -> (CPUs, memory in MB) as documented by UP42.
MACHINE_TYPES: dict[str, tuple[float, int]] = {
    "small": (0.5, 2048),
    "medium": (1, 5120),
    "large": (2, 10240),
    "xlarge": (4, 20480),
    "xxlarge": (8, 40960),
    "xxxlarge": (16, 81920),
    "gpu_nvidia_tesla_k80": (4, 20480),
    "gpu_p100_xxl": (8, 40960),
    "gpu_v100": (8, 40960),
    "gpu_a100": (8, 40960),
    "gpu_t4": (4, 20480),
}


@dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter of a block."""

    name: str
    type: str
    default: Any = None
    has_default: bool = False
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: list[Any] | None = None
    description: str = ""
    secret: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A validated block manifest."""

    name: str
    type: str
    parameters: dict[str, ParameterSpec]
    input_capabilities: dict[str, Any]
    output_capabilities: dict[str, Any]
    machine_type: str = "small"
    display_name: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    version: str = ""
    quicklook_supported: bool = False
    dry_run_supported: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # the `blockkit` object
    raw: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: Accepted but questionable things (e.g. a required parameter with a default), one line each.
    warnings: tuple[str, ...] = ()

    @property
    def is_data_block(self) -> bool:
        """True for data blocks (they fetch; they have no input)."""
        return self.type == "data"

    @property
    def resources(self) -> tuple[float, int]:
        """(CPUs, memory MB) for this block's machine type."""
        return MACHINE_TYPES[self.machine_type]

    @property
    def network(self) -> bool:
        """Whether the block may use the network (only when its manifest asks: `blockkit.network`)."""
        return bool(self.options.get("network", False))

    @property
    def s3_gateway(self) -> bool:
        """Whether the block wants the S3 gateway sidecar."""
        return bool(self.options.get("s3", False))

    @property
    def propagate(self) -> bool:
        """Whether the block forwards its input features and files to its output."""
        return bool(self.options.get("propagate", False))

    @property
    def command(self) -> list[str] | None:
        """The block's entry command, when it is not `python src/run.py`."""
        cmd = self.options.get("command")
        return list(cmd) if cmd else None

    @property
    def privileges(self) -> list[str]:
        """What the block asks for beyond the default sandbox (`blockkit` object), in words."""
        asked = []
        if self.network:
            asked.append("network")
        if self.options.get("writable_root"):
            asked.append("writable root filesystem")
        if self.options.get("pids"):
            asked.append(f"{self.options['pids']} processes")
        return asked

    @property
    def secret_parameters(self) -> set[str]:
        """Names of parameters whose values must be redacted."""
        return {name for name, spec in self.parameters.items() if spec.secret}


#: How to upgrade a spec v1 manifest (UP42 itself only accepted v2 since 2020).
SPEC_V1_MESSAGE = (
    "UP42 specification v1 is not supported: upgrade the manifest to v2 by setting "
    '"_up42_specification_version": 2 and checking that input/output capabilities use '
    '"up42.data_path"-style keys (v1 blocks linked files with up42.data.aoiclipped); see docs/up42.md'
)


def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(load_schema("UP42Manifest.schema.json"))


@lru_cache(maxsize=None)
def _fast_validator() -> Callable[[Any], Any]:
    """The same schema as fastjsonschema code: a valid manifest is passed without importing jsonschema.

    Every block checks its manifest when it starts (once per feature of a scattered step);
    jsonschema's import alone took 0.12 s of that start, compiling the fast check 0.02 s
    (now generated ahead of time, see `_schema_checks`). A manifest the fast check rejects is
    checked again by jsonschema, whose errors name every problem.
    """
    from blockkit.contract._schema_checks import schema_check

    return schema_check("manifest", load_schema("UP42Manifest.schema.json"))


def _schema_problems(data: dict[str, Any]) -> list[Problem]:
    import fastjsonschema

    try:
        _fast_validator()(data)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    return [
        Problem(_location(err), _message(err))
        for err in sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    ]


def _location(err: Any) -> str:
    path = "/".join(str(p) for p in err.absolute_path)
    return path or "manifest"


def _message(err: Any) -> str:
    if err.validator == "additionalProperties":
        return str(err.message).replace("Additional properties are not allowed", "unknown key(s)")
    if err.validator == "const" and list(err.absolute_path) == ["_up42_specification_version"]:
        if err.instance == 1:
            return SPEC_V1_MESSAGE
        return f"must be 2 (UP42 specification v2), not {err.instance!r}"
    if err.validator == "pattern" and list(err.absolute_path) == ["name"]:
        return f"{err.instance!r} must be 2-63 lowercase letters, digits, '-' or '_'"
    return str(err.message)


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "array": (list,),
}


def _parameter_problems(params: dict[str, Any]) -> list[Problem]:
    """Checks between fields of a parameter that the schema cannot state."""
    problems: list[Problem] = []
    for name, spec in params.items():
        if not isinstance(spec, dict):
            continue
        where = f"parameters/{name}"
        ptype = spec.get("type")
        lo, hi = spec.get("minimum"), spec.get("maximum")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
            problems.append(Problem(where, f"minimum {lo} is greater than maximum {hi}"))
        if ("minimum" in spec or "maximum" in spec) and ptype not in ("number", "integer"):
            problems.append(Problem(where, f"minimum/maximum only apply to number or integer, not {ptype}"))
        if "default" in spec and spec["default"] is not None and ptype in _PY_TYPES:
            default = spec["default"]
            ok = isinstance(default, _PY_TYPES[ptype]) and not (ptype != "boolean" and isinstance(default, bool))
            if not ok:
                problems.append(Problem(where, f"default {default!r} is not of type {ptype}"))
            elif ptype in ("number", "integer"):
                if isinstance(lo, (int, float)) and default < lo:
                    problems.append(Problem(where, f"default {default} is below minimum {lo}"))
                if isinstance(hi, (int, float)) and default > hi:
                    problems.append(Problem(where, f"default {default} is above maximum {hi}"))
            if ok and isinstance(spec.get("enum"), list) and default not in spec["enum"]:
                problems.append(Problem(where, f"default {default!r} is not one of {spec['enum']}"))
    return problems


def _parameter_warnings(params: dict[str, Any]) -> list[str]:
    """Accepted oddities of parameters, worded for a warning line."""
    warnings = []
    for name, spec in params.items():
        if isinstance(spec, dict) and spec.get("required") and spec.get("default") is not None:
            # UP42's own manifests do this (raster tiling's tile_width): the default fills a missing value.
            warnings.append(
                f"parameters/{name}: required with a default ({spec['default']!r}); "
                "the default is used when the value is missing"
            )
    return warnings


def validate_manifest(data: Any) -> list[Problem]:
    """Every problem of a parsed manifest (schema and cross-field rules)."""
    if not isinstance(data, dict):
        return [Problem("manifest", f"must be a JSON object, not {type(data).__name__}")]
    problems = _schema_problems(data)
    if isinstance(data.get("parameters"), dict):
        problems.extend(_parameter_problems(data["parameters"]))
    if data.get("type") == "data" and data.get("input_capabilities"):
        problems.append(Problem("input_capabilities", "a data block has no input: leave input_capabilities empty"))
    return problems


def parse_manifest(data: dict[str, Any], path: Path | None = None) -> Manifest:
    """Build a Manifest from a dict, raising ManifestError listing every problem."""
    problems = validate_manifest(data)
    if problems:
        raise ManifestError.from_problems(f"invalid manifest {path or ''}".rstrip(), problems)
    params = {
        name: ParameterSpec(
            name=name,
            type=spec["type"],
            default=spec.get("default"),
            has_default="default" in spec,
            # A default fills a missing value, so `required` only binds parameters without one.
            required=bool(spec.get("required", False)) and spec.get("default") is None,
            minimum=spec.get("minimum"),
            maximum=spec.get("maximum"),
            enum=spec.get("enum"),
            description=spec.get("description", ""),
            secret=bool(spec.get("secret", False)),
            raw=spec,
        )
        for name, spec in (data.get("parameters") or {}).items()
    }
    features = data.get("optional_features") or {}
    return Manifest(
        name=data["name"],
        type=data["type"],
        parameters=params,
        input_capabilities=data.get("input_capabilities") or {},
        output_capabilities=data.get("output_capabilities") or {},
        machine_type=(data.get("machine") or {}).get("type", "small"),
        display_name=data.get("display_name", ""),
        description=data.get("description", ""),
        tags=tuple(data.get("tags") or ()),
        version=str(data.get("version", "")),
        quicklook_supported=bool(features.get("quicklook_supported", False)),
        dry_run_supported=bool(features.get("dry_run_supported", False)),
        options=data.get("blockkit") or {},
        raw=data,
        path=path,
        warnings=tuple(_parameter_warnings(data.get("parameters") or {})),
    )


def read_json_file(path: Path, what: str, limit: int = MAX_MANIFEST_BYTES) -> Any:
    """Read a small JSON file strictly, raising ManifestError with one clear line."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ManifestError(f"{what} not found: {path}") from None
    if path.is_dir():
        raise ManifestError(f"{what} {path} is a directory")
    if size > limit:
        raise ManifestError(f"{what} {path} is {size} bytes; the limit is {limit}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ManifestError(f"{what} {path} is not UTF-8 text") from None
    except RecursionError:
        raise ManifestError(f"{what} {path} is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and NaN/Infinity which JSON does not have
        raise ManifestError(f"{what} {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise ManifestError(f"{what} {path} cannot be read: {exc.strerror}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def manifest_path(path: Path) -> Path:
    """The manifest file for a block folder or a manifest path."""
    path = Path(path)
    return path / MANIFEST_FILE if path.is_dir() else path


def load_manifest(path: Path) -> Manifest:
    """Load and validate a manifest from a block folder or a file."""
    file = manifest_path(path)
    return parse_manifest(read_json_file(file, "manifest"), file)
