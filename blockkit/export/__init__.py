"""Export a workflow to other engines: CWL documents and job orders, block images pushed to a registry.

`blockkit.export.step` is the `python -m` entry point a CWL tool runs inside a block image; every other
module of this package is internal: import from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blockkit._lazy import lazy_exports

if TYPE_CHECKING:
    from blockkit.export._cwl import CWL_VERSION, check_exportable, dump_cwl, dump_job, export_cwl, job_order
    from blockkit.export._push import Pushed, images_to_push, push_images

# Each public name and the module that defines it (imported on first access).
_EXPORTS = {
    "CWL_VERSION": "blockkit.export._cwl",
    "check_exportable": "blockkit.export._cwl",
    "dump_cwl": "blockkit.export._cwl",
    "dump_job": "blockkit.export._cwl",
    "export_cwl": "blockkit.export._cwl",
    "job_order": "blockkit.export._cwl",
    "Pushed": "blockkit.export._push",
    "images_to_push": "blockkit.export._push",
    "push_images": "blockkit.export._push",
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
