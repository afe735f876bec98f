"""The shipped schemas' fastjsonschema checks, generated ahead of time so that a block's start does not compile them.

Compiling the manifest and feature schemas took 35 ms of every block start (0.1 s in all),
and each feature of a scattered step is one block start. `scripts/schema-checks` writes one
module per schema here (`_manifest.py`, `_feature.py`) with the code `fastjsonschema.compile`
would have generated, and the canonical JSON of the schema it was made from. A module whose
schema is not the current one (the schema was edited, the module not regenerated) is not used: the
schema is compiled at run time as before, and tests/contract/test_schema_checks.py fails
until the modules are regenerated.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

#: The names of the generated modules (`_<name>.py`), one per schema.
CHECKS = ("manifest", "feature")


def schema_text(schema: dict[str, Any]) -> str:
    """A schema's canonical JSON: what a generated check was made from (kept whole in the module).

    Compared as text, not as a digest: `hashlib` (OpenSSL) was 3 ms of every block start.
    """
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def schema_check(name: str, schema: dict[str, Any]) -> Callable[[Any], Any]:
    """The check of `schema`: the generated module `_<name>` when made from this very schema, else compiled now."""
    try:
        module = importlib.import_module(f"{__name__}._{name}")
    except ImportError:
        module = None
    if module is not None and getattr(module, "SCHEMA", None) == schema_text(schema):
        check: Callable[[Any], Any] = module.check
        return check
    import fastjsonschema

    return fastjsonschema.compile(schema)
