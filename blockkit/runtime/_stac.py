"""STAC folders inside a block: an App Package stage-in catalog read as features; a catalog of the outputs.

Both come from `blockkit.stac`, the one STAC model shared with stage-in and stage-out.
"""

from __future__ import annotations

from blockkit.stac._reader import CATALOG_JSON, features_from_catalog
from blockkit.stac._writer import write_catalog

__all__ = ["CATALOG_JSON", "features_from_catalog", "write_catalog"]
