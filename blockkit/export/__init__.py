"""Export a workflow to other engines: CWL documents and job orders, block images pushed to a registry.

`blockkit.export.step` is the `python -m` entry point a CWL tool runs inside a block image; every other
module of this package is internal: import from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockkit.export.cwl import CWL_VERSION, check_exportable, dump_cwl, dump_job, export_cwl, job_order
    from blockkit.export.push import Pushed, images_to_push, push_images

# Each public name and the module that defines it (imported on first access).
_EXPORTS = {
    "CWL_VERSION": "blockkit.export.cwl",
    "check_exportable": "blockkit.export.cwl",
    "dump_cwl": "blockkit.export.cwl",
    "dump_job": "blockkit.export.cwl",
    "export_cwl": "blockkit.export.cwl",
    "job_order": "blockkit.export.cwl",
    "Pushed": "blockkit.export.push",
    "images_to_push": "blockkit.export.push",
    "push_images": "blockkit.export.push",
}

__all__ = [
    "CWL_VERSION",
    "Pushed",
    "check_exportable",
    "dump_cwl",
    "dump_job",
    "export_cwl",
    "images_to_push",
    "job_order",
    "push_images",
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
