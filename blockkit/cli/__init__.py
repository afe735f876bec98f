"""The `blockkit` command (typer): thin commands that parse their options and call the layers.

`blockkit.cli.main` holds the command line; the console script (`blockkit = blockkit.cli._entry:main`)
runs it, or says in one line to install `blockkit-eo[runner]` where only the SDK is installed; the
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
