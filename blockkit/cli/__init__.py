"""The `blockkit` command (typer): thin commands that parse their options and call the layers.

`blockkit.cli.main` is the console-script entry point (`blockkit = blockkit.cli.main:main`); the
`*_cmd` modules are internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockkit.cli.main import app

# Each public name and the module that defines it (imported on first access).
_EXPORTS = {
    "app": "blockkit.cli.main",
}

__all__ = [
    "app",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (keeps `import blockkit` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
