"""Block parameters: parse `UP42_TASK_PARAMETERS`, check them against the manifest, apply defaults."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Mapping

from blockkit.contract.errors import InputParametersError, Problem
from blockkit.contract._manifest import Manifest, ParameterSpec

if TYPE_CHECKING:  # imported when a date is parsed: most blocks never do
    from datetime import datetime

MAX_PARAMETERS_BYTES = 10 << 20
REDACTED = "***"


def parse_parameters_text(text: str | None, where: str = "UP42_TASK_PARAMETERS") -> dict[str, Any]:
    """Parse the parameters JSON object; unset or blank means {}."""
    if text is None or not text.strip():
        return {}
    if len(text) > MAX_PARAMETERS_BYTES:
        raise InputParametersError(f"{where} is {len(text)} bytes; the limit is {MAX_PARAMETERS_BYTES}")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InputParametersError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputParametersError(f"{where} is not valid JSON: nested too deeply") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputParametersError(f"{where} must be a JSON object, not {type(value).__name__}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_datetime(text: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 instant (a trailing Z is accepted)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    from datetime import datetime

    return datetime.fromisoformat(value)


def parse_date_range(value: str) -> tuple[datetime | None, datetime | None]:
    """Parse `start/end` (either side may be `..` or empty) or a single instant."""
    parts = value.split("/")
    if len(parts) > 2:
        raise ValueError("a date range has at most one '/'")
    if len(parts) == 1:
        instant = parse_datetime(parts[0])
        return instant, instant
    ends = [None if p.strip() in ("", "..") else parse_datetime(p) for p in parts]
    start, end = ends
    if start is None and end is None:
        raise ValueError("a date range needs at least one end")
    if start is not None and end is not None:
        if (start.tzinfo is None) != (end.tzinfo is None):
            raise ValueError("both ends must have a time zone, or neither")
        if start > end:
            raise ValueError("start is after end")
    return start, end


def geometry_problem(value: Any) -> str | None:
    """Why a value is not a valid GeoJSON geometry (checked with shapely), or None."""
    if not isinstance(value, dict) or "type" not in value:
        return "must be a GeoJSON geometry object with a 'type'"
    if value["type"] == "Feature":
        value = value.get("geometry")
        if not isinstance(value, dict):
            return "the Feature has no geometry"
    from shapely.geometry import shape
    from shapely.validation import explain_validity

    try:
        geom = shape(value)
    except Exception as exc:  # noqa: BLE001 - shapely raises several types for bad GeoJSON
        return f"is not valid GeoJSON: {exc}"
    if geom.is_empty:
        return "is an empty geometry"
    if not geom.is_valid:
        return f"is not a valid geometry: {explain_validity(geom)}"
    return None


def _value_problem(spec: ParameterSpec, value: Any) -> str | None:
    kind = spec.type
    if kind == "string":
        if not isinstance(value, str):
            return f"must be a string, not {_type_name(value)}"
    elif kind == "boolean":
        if not isinstance(value, bool):
            return f"must be true or false, not {_type_name(value)}"
    elif kind == "integer":
        if isinstance(value, float) and value.is_integer():
            pass  # 3.0 is accepted as 3 (JSON has one number type)
        elif not isinstance(value, int) or isinstance(value, bool):
            return f"must be an integer, not {_type_name(value)}"
    elif kind == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"must be a number, not {_type_name(value)}"
        if not math.isfinite(value):
            return "must be a finite number"
    elif kind == "array":
        if not isinstance(value, list):
            return f"must be an array, not {_type_name(value)}"
        min_items, max_items = spec.raw.get("minItems"), spec.raw.get("maxItems")
        if min_items is not None and len(value) < min_items:
            return f"must have at least {min_items} items, not {len(value)}"
        if max_items is not None and len(value) > max_items:
            return f"must have at most {max_items} items, not {len(value)}"
        items = spec.raw.get("items")
        if items:
            import jsonschema

            item_validator = jsonschema.Draft7Validator(items)
            for i, item in enumerate(value):
                errors = list(item_validator.iter_errors(item))
                if errors:
                    return f"item {i}: {errors[0].message}"
    elif kind == "geometry":
        return geometry_problem(value)
    elif kind == "dateRange":
        if not isinstance(value, str):
            return f"must be a date range string like '2024-01-01T00:00:00Z/2024-02-01T00:00:00Z', not {_type_name(value)}"
        try:
            parse_date_range(value)
        except ValueError as exc:
            return f"{value!r} is not a valid date range: {exc}"
    if kind in ("number", "integer"):
        if spec.minimum is not None and value < spec.minimum:
            return f"{value} is below the minimum {spec.minimum}"
        if spec.maximum is not None and value > spec.maximum:
            return f"{value} is above the maximum {spec.maximum}"
    if spec.enum is not None and value not in spec.enum:
        return f"{value!r} is not one of {spec.enum}"
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}" if not isinstance(value, (int, float)) else "a number"
    )


def resolve_parameters(manifest: Manifest, given: Mapping[str, Any]) -> dict[str, Any]:
    """Check given parameters against the manifest and fill defaults; raise with every problem."""
    problems: list[Problem] = []
    for name in given:
        if name not in manifest.parameters:
            known = ", ".join(sorted(manifest.parameters)) or "none"
            problems.append(Problem(f"parameter {name!r}", f"is not declared by block {manifest.name!r} (known: {known})"))
    resolved: dict[str, Any] = {}
    for name, spec in manifest.parameters.items():
        value = given.get(name)
        if value is None:
            if spec.required:
                problems.append(Problem(f"parameter {name!r}", "is required"))
                continue
            resolved[name] = spec.default
            continue
        problem = _value_problem(spec, value)
        if problem:
            if spec.secret:
                problem = _without_value(problem, value)
            problems.append(Problem(f"parameter {name!r}", problem))
            continue
        if spec.type == "integer" and isinstance(value, float):
            value = int(value)
        resolved[name] = value
    if problems:
        raise InputParametersError.from_problems("invalid parameters", problems)
    return resolved


def _without_value(message: str, value: Any) -> str:
    """A problem message with a secret value replaced by '***' (errors are logged and printed)."""
    for shown in (repr(value), str(value)):
        if shown:
            message = message.replace(shown, REDACTED)
    return message


def redact_parameters(manifest: Manifest | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of params with secret parameters replaced by '***'."""
    secret = manifest.secret_parameters if manifest else set()
    return {k: (REDACTED if k in secret and v is not None else v) for k, v in params.items()}
