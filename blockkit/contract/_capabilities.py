"""Capability matching between blocks (the rule is written down in docs/capabilities.md)."""

from __future__ import annotations

from typing import Any, Mapping

PASS_THROUGH = ">"
UNKNOWN = object()  # a value nobody declared: it matches anything, and says so

Capabilities = dict[str, dict[str, dict[str, Any]]]  # group -> standard|custom -> key -> value


def _substitute(value: Any, params: Mapping[str, Any]) -> Any:
    """Replace "${param}" by the parameter's value (recursively in lists and or-lists)."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        name = value[2:-1]
        return params[name] if name in params and params[name] is not None else UNKNOWN
    if isinstance(value, list):
        return [_substitute(v, params) for v in value]
    if isinstance(value, dict) and set(value) == {"or"}:
        return {"or": [_substitute(v, params) for v in value["or"]]}
    return value


def _upstream_value(upstreams: list[Capabilities], group: str, section: str, key: str) -> Any:
    for caps in upstreams:
        if key in caps.get(group, {}).get(section, {}):
            return caps[group][section][key]
    return UNKNOWN


def resolve_output(
    output_caps: Capabilities, upstreams: list[Capabilities], params: Mapping[str, Any]
) -> Capabilities:
    """The concrete output capabilities of a block given what it receives and its parameters."""
    resolved: Capabilities = {}
    for group, sections in output_caps.items():
        resolved[group] = {}
        for section, keys in (sections or {}).items():
            resolved[group][section] = {}
            for key, value in (keys or {}).items():
                if value == PASS_THROUGH:
                    value = _upstream_value(upstreams, group, section, key)
                resolved[group][section][key] = _substitute(value, params)
    return resolved


def _alternatives(value: Any) -> list[Any]:
    if isinstance(value, dict) and set(value) == {"or"}:
        return list(value["or"])
    return [value]


def _value_matches(required: Any, offered: Any) -> bool:
    if required is UNKNOWN or offered is UNKNOWN or required == PASS_THROUGH:
        return True
    for want in _alternatives(required):
        for have in _alternatives(offered):
            if want is UNKNOWN or have is UNKNOWN:
                return True
            # A list is a set of values that must all be offered; a single value is a one-item list.
            # (Before, a required list accepted any single offered item: ["red", "nir"] matched "red".)
            wanted = want if isinstance(want, list) else [want]
            had = have if isinstance(have, list) else [have]
            if all(w in had for w in wanted):
                return True
    return False


def _show(value: Any) -> str:
    if value is UNKNOWN:
        return "undeclared"
    return repr(value)


def match_problems(
    input_caps: Capabilities, upstream_outputs: Mapping[str, Capabilities], params: Mapping[str, Any]
) -> list[str]:
    """Why a block cannot read what its upstream steps produce (empty list: it can)."""
    problems: list[str] = []
    if not upstream_outputs:
        return problems
    if not input_caps:
        return ["takes no input (empty input_capabilities), so it must be the first step"]
    required = resolve_output(input_caps, [], params)  # only "${param}" substitution applies here
    for step, offered in upstream_outputs.items():
        if not offered:
            problems.append(f"step {step!r} produces no output (empty output_capabilities), so it must be last")
            continue
        if not set(offered) & set(required):
            problems.append(
                f"step {step!r} produces {sorted(offered)} but this block reads {sorted(required)}"
            )
    for group, sections in required.items():
        offering = {s: caps for s, caps in upstream_outputs.items() if group in caps}
        if not offering:
            continue  # reported above as a group mismatch when nothing overlaps
        for section, keys in sections.items():
            for key, want in keys.items():
                offered_values = {
                    s: caps[group].get(section, {}).get(key, UNKNOWN) for s, caps in offering.items()
                }
                if not any(_value_matches(want, have) for have in offered_values.values()):
                    shown = ", ".join(f"{s}: {_show(v)}" for s, v in offered_values.items())
                    problems.append(f"needs {group}.{section}.{key} = {_show(want)} but upstream offers {shown}")
    return problems
