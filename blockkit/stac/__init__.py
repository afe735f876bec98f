"""One STAC model for all of blockkit: media types, bbox, datetime, folder names, the data_path rule.

Layer: between `contract` and `runtime` (contract → stac → runtime → storage). It imports only
`blockkit.contract` and the standard library (pystac only inside the writer), so block runtimes,
stage-in, stage-out and output catalogs all read and write STAC the same way:

- `model`: the rules (`media_type`, `bbox_of`, `item_datetime`, `folder_name`, `primary_asset`,
  `item_feature`: the data.json feature of a staged item);
- `reader`: the hardened reader of a local catalog folder (`features_from_catalog`), used for block
  inputs and stage-in of local folders;
- `writer`: items and catalogs written with pystac (`output_item`, `write_catalog`, `catalog_dict`).

The data_path rule (docs/storage.md, docs/contract.md): a STAC item becomes one feature whose
`up42.data_path` is the item's **primary data asset** (a file), and whose `assets` member lists every
asset of the item with an href relative to the folder holding data.json (`eo:bands` kept), so a block
reaches all bands (see `blockkit.runtime.bands`).
"""

from __future__ import annotations

from blockkit.stac._model import (
    MEDIA_TYPES,
    bbox_of,
    folder_name,
    is_stac,
    item_datetime,
    item_feature,
    media_type,
    primary_asset,
)
from blockkit.stac._reader import CATALOG_JSON, features_from_catalog
from blockkit.stac._writer import STAC_VERSION, catalog_dict, output_item, write_catalog

__all__ = [
    "CATALOG_JSON",
    "MEDIA_TYPES",
    "STAC_VERSION",
    "bbox_of",
    "catalog_dict",
    "features_from_catalog",
    "folder_name",
    "is_stac",
    "item_datetime",
    "item_feature",
    "media_type",
    "output_item",
    "primary_asset",
    "write_catalog",
]
