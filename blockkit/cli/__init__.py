"""The `blockkit` command (typer): thin commands that parse their options and call the layers.

`blockkit.cli.main` is the console-script entry point (`blockkit = blockkit.cli.main:main`); the
`*_cmd` modules are internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blockkit._lazy import lazy_exports

if TYPE_CHECKING:
    from blockkit.cli.main import app

# Each public name and the module that defines it (imported on first access).
_EXPORTS = {
    "app": "blockkit.cli.main",
}

__all__ = [
    "app",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
