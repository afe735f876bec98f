"""STAC writing, built on pystac: output items, catalogs, and the catalog of a block's outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blockkit.contract._datajson import DATA_PATH, FeatureCollection, data_path_of, write_atomic
from blockkit.stac._model import bbox_of, folder_name, item_datetime, media_type
from blockkit.stac._reader import CATALOG_JSON

STAC_VERSION = "1.0.0"
FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
ITEM_LINKS = [
    {"rel": "root", "href": f"../{CATALOG_JSON}", "type": "application/json"},
    {"rel": "parent", "href": f"../{CATALOG_JSON}", "type": "application/json"},
]
_BLOCKKIT_PROPS = (DATA_PATH, "up42.stac_item")


def output_item(
    item_id: str, feature: dict[str, Any], assets: dict[str, dict[str, Any]], *,
    extensions: list[str] | None = None, now: Any = None,
) -> dict[str, Any]:
    """A STAC item (JSON dict) for an output feature: its geometry, bbox, properties and the given assets.

    The item lives in `<folder>/<folder>.json` one level below catalog.json (root/parent links `../`).

    Parameters:
        item_id: the STAC item id.
        feature: the data.json feature (its blockkit-only properties are dropped).
        assets: asset key to asset dict (`href`, optional `type`, `roles`, `title`, extra fields);
            a missing `type` is derived from the href.
        extensions: the item's `stac_extensions` URLs.
        now: the time used when the feature has no datetime (default: the time of writing, UTC).
    """
    import pystac
    from pystac.utils import str_to_datetime

    raw = {k: v for k, v in (feature.get("properties") or {}).items() if k not in _BLOCKKIT_PROPS}
    props = item_datetime(raw, now)
    when = props.pop("datetime")
    try:
        moment = str_to_datetime(when) if when else None
    except (ValueError, TypeError, OverflowError):
        props = item_datetime({k: v for k, v in raw.items() if k != "datetime"}, now)
        when = props.pop("datetime")
        moment = str_to_datetime(when) if when else None
    geometry = feature.get("geometry")
    bbox = (feature.get("bbox") or bbox_of(geometry)) if geometry is not None else None
    item = pystac.Item(id=item_id, geometry=geometry, bbox=bbox, datetime=moment, properties=props,
                       stac_extensions=list(extensions or []))
    for key, asset in assets.items():
        extra = {k: v for k, v in asset.items() if k not in ("href", "type", "roles", "title")}
        item.add_asset(key, pystac.Asset(href=asset["href"], media_type=asset.get("type") or media_type(asset["href"]),
                                         roles=asset.get("roles"), title=asset.get("title"), extra_fields=extra))
    out = item.to_dict(include_self_link=False, transform_hrefs=False)
    if bbox is None:
        out.pop("bbox", None)
    out["links"] = [dict(link) for link in ITEM_LINKS]
    return out


def catalog_dict(item_hrefs: list[str], description: str, catalog_id: str = "catalog") -> dict[str, Any]:
    """A catalog.json linking items by relative href (`./<folder>/<folder>.json`)."""
    import pystac

    catalog = pystac.Catalog(id=catalog_id, description=description)
    out = catalog.to_dict(include_self_link=False, transform_hrefs=False)
    out["links"] = [{"rel": "root", "href": f"./{CATALOG_JSON}", "type": "application/json"}] + [
        {"rel": "item", "href": href, "type": "application/geo+json"} for href in item_hrefs
    ]
    return out


def write_catalog(directory: Path, fc: FeatureCollection, *, catalog_id: str = "catalog",
                  description: str = "Outputs written by blockkit") -> Path:
    """Write a self-contained STAC catalog of the features beside data.json; returns catalog.json.

    Parameters:
        directory: the folder holding data.json; catalog.json and one folder per item go there.
        fc: the features; each becomes an item whose `data` asset is the feature's data_path.
        catalog_id: the catalog's id.
        description: the catalog's description.
    """
    directory = Path(directory)
    hrefs: list[str] = []
    taken: set[str] = set()
    for index, feature in enumerate(fc):
        item_id = str(feature.get("id") or f"item-{index}")
        folder = folder_name(item_id, index, taken)
        data_path = data_path_of(feature)
        assets: dict[str, Any] = {}
        if data_path:
            # Items live one folder down, next to nothing else: hrefs climb one level to the data.
            assets["data"] = {"href": f"../{data_path}", "roles": ["data"], "type": media_type(data_path)}
        item = output_item(item_id, feature, assets)
        rel = f"{folder}/{folder}.json"
        (directory / folder).mkdir(parents=True, exist_ok=True)
        write_atomic(directory / rel, json.dumps(item, indent=1))
        hrefs.append(f"./{rel}")
    return write_atomic(directory / CATALOG_JSON, json.dumps(catalog_dict(hrefs, description, catalog_id), indent=1))
