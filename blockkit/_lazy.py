"""Lazy re-exports for the subpackages' `__init__`s (PEP 562).

A subpackage lists each public name with the module that defines it; the module is imported
the first time the name is used, so `import blockkit.runner` stays light. Internal: no
compatibility promise (see docs/api.md).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str], public: list[str],
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of a package whose public names load on first use.

    Args:
        package: the package's `__name__` (its namespace caches each name once loaded).
        exports: each public name and the module that defines it.
        public: the package's `__all__` (what `dir()` lists besides the loaded names).
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
