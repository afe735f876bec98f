"""Secret parameters taken from the environment or the keystore instead of the workflow file,
and the set of values to mask in every log of a run.

In a workflow (or `--params`), a parameter the block's manifest declares `"secret": true`
may be given as a reference instead of a value:

    params:
      token: {from_env: MY_TOKEN}              # the runner's environment variable MY_TOKEN
      password: {from_key: prod.secret_key}    # field `secret_key` of keystore key `prod`

The planner resolves references (`resolve_secret_refs`) before checking parameter types; the
value never appears in the workflow file, run.json, provenance.json, the logs or the console.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from blockkit.contract.errors import Problem

if TYPE_CHECKING:
    from blockkit.contract._manifest import Manifest
    from blockkit.runner._plan import Plan
    from blockkit.storage import Keystore

REF_KINDS = ("from_env", "from_key")
#: Runner variables whose values are masked in logs if a block ever prints them.
RUNNER_SECRET_ENV = ("BLOCKKIT_KEYSTORE_PASSPHRASE",)


def secret_ref(value: Any) -> tuple[str, str] | None:
    """(kind, target) when a parameter value is a reference (`{from_env: NAME}`), else None."""
    if isinstance(value, Mapping) and len(value) == 1:
        kind, target = next(iter(value.items()))
        if kind in REF_KINDS:
            return str(kind), target if isinstance(target, str) else ""
    return None


def resolve_secret_refs(
    params: Mapping[str, Any],
    manifest: "Manifest",
    *,
    environ: Mapping[str, str] | None = None,
    keystore: "Callable[[], Keystore] | None" = None,
) -> tuple[dict[str, Any], list[Problem]]:
    """Parameters with every reference replaced by its value, and the problems found.

    A reference is allowed only for a parameter the manifest declares secret (so the value
    is redacted wherever parameters are recorded). `keystore` opens the keystore when a
    `from_key` reference needs it (by default `Keystore.from_env()`).
    """
    env = os.environ if environ is None else environ
    resolved: dict[str, Any] = dict(params)
    problems: list[Problem] = []
    store: "Keystore | None" = None
    for name, value in params.items():
        ref = secret_ref(value)
        if ref is None:
            continue
        kind, target = ref
        where = f"parameter {name!r}"
        spec = manifest.parameters.get(name)
        if spec is None:
            continue  # unknown parameter: resolve_parameters reports it
        if not spec.secret:
            problems.append(Problem(where, f"{kind} is only for parameters the block declares secret; "
                                           "write the value itself"))
            continue
        if not target:
            problems.append(Problem(where, f"{kind} needs a name, e.g. {{{kind}: NAME}}"))
            continue
        if kind == "from_env":
            if not env.get(target):
                problems.append(Problem(where, f"environment variable {target} is not set (from_env)"))
                continue
            resolved[name] = env[target]
            continue
        key_name, _, field = target.partition(".")
        if not key_name or not field:
            problems.append(Problem(where, f"from_key needs KEY.FIELD, e.g. {{from_key: prod.secret_key}}; got {target!r}"))
            continue
        try:
            if store is None:
                store = keystore() if keystore is not None else _default_keystore()
            key = store.get(key_name)
        except Exception as exc:  # noqa: BLE001 - any keystore failure is a problem of this parameter
            problems.append(Problem(where, f"cannot read key {key_name!r}: {getattr(exc, 'message', exc)}"))
            continue
        field_value = getattr(key.config, field, None)
        if not isinstance(field_value, str) or not field_value:
            problems.append(Problem(where, f"key {key_name!r} has no field {field!r}"))
            continue
        resolved[name] = field_value
    return resolved, problems


def _default_keystore() -> "Keystore":
    from blockkit.storage import Keystore

    return Keystore.from_env()


def secret_values(plan: "Plan", environ: Mapping[str, str] | None = None) -> list[str]:
    """Every value to mask in a run's logs: secret parameters of each step and the keystore passphrase."""
    env = os.environ if environ is None else environ
    values: list[str] = []
    for step in plan.steps:
        for name in step.manifest.secret_parameters:
            values.extend(_strings(step.params.get(name)))
    values.extend(env[name] for name in RUNNER_SECRET_ENV if env.get(name))
    return [v for v in values if len(v) >= 3]  # masking "a" or "" would wreck every line


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def run_redact(plan: "Plan", *others: "Callable[[str], str] | None") -> "Callable[[str], str] | None":
    """One function masking every secret of a run (secret parameters, passphrase, and `others`, e.g. keys)."""
    from blockkit.storage import Redactor

    mine = Redactor(secret_values(plan))
    chain = [f for f in others if f is not None]
    if mine:
        chain.insert(0, mine.redact)
    if not chain:
        return None
    if len(chain) == 1:
        return chain[0]

    def redact(text: str) -> str:
        for one in chain:
            text = one(text)
        return text

    return redact
