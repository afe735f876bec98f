"""The STAC rules every part of blockkit shares: media types, bbox, datetime, folder names, primary asset."""

from __future__ import annotations

import datetime as dt
import mimetypes
import posixpath
import re
from typing import Any

from blockkit.contract._datajson import DATA_PATH

# One table: what an asset's file suffix says about its media type.
MEDIA_TYPES: dict[str, str] = {
    ".tif": "image/tiff; application=geotiff",
    ".tiff": "image/tiff; application=geotiff",
    ".json": "application/json",
    ".geojson": "application/geo+json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jp2": "image/jp2",
    ".vrt": "application/xml",
    ".nc": "application/netcdf",
    ".xml": "application/xml",
    ".txt": "text/plain",
}
RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-hdf", "application/netcdf")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def media_type(path: str) -> str:
    """The media type of a file by its suffix (the table above, then the system's, then octet-stream)."""
    suffix = posixpath.splitext(path.lower())[1]
    return MEDIA_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def bbox_of(geometry: Any) -> list[float] | None:
    """[west, south, east, north] of a GeoJSON geometry, or None for null/empty geometries."""
    xs: list[float] = []
    ys: list[float] = []

    def walk(coords: Any) -> None:
        if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
            xs.append(float(coords[0]))
            ys.append(float(coords[1]))
        elif isinstance(coords, (list, tuple)):
            for c in coords:
                walk(c)

    if isinstance(geometry, dict):
        if geometry.get("type") == "GeometryCollection":
            for g in geometry.get("geometries") or ():
                if isinstance(g, dict):
                    walk(g.get("coordinates"))
        else:
            walk(geometry.get("coordinates"))
    return [min(xs), min(ys), max(xs), max(ys)] if xs else None


def item_datetime(properties: dict[str, Any], now: dt.datetime | None = None) -> dict[str, Any]:
    """Properties with a STAC-valid time: `datetime` kept; else a start/end pair kept with `datetime: null`;
    else the time the item is written (UTC, seconds). One rule for stage-out and output catalogs."""
    props = dict(properties)
    if props.get("datetime"):
        return props
    if props.get("start_datetime") and props.get("end_datetime"):
        props["datetime"] = None
        return props
    props["datetime"] = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return props


def folder_name(item_id: Any, index: int, taken: set[str]) -> str:
    """The folder (and file stem) of an item: letters, digits, '.', '_', '-' only, unique among `taken`.

    Fan-in ids hold ':' (refused by Windows and some object stores); a space or '#' would need escaping.
    """
    base = _UNSAFE.sub("_", str(item_id) if item_id not in (None, "") else "").strip("._")[:100] or f"item-{index}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def is_stac(doc: Any) -> bool:
    """True for a STAC Item, Catalog, Collection or ItemCollection document."""
    if not isinstance(doc, dict):
        return False
    kind = doc.get("type")
    if kind in ("Catalog", "Collection"):
        return "stac_version" in doc or "links" in doc
    if kind == "Feature":
        return "stac_version" in doc and isinstance(doc.get("assets"), dict)
    if kind == "FeatureCollection":
        feats = doc.get("features")
        return isinstance(feats, list) and bool(feats) and all(is_stac(f) for f in feats)
    return False


def _is_raster(asset: dict[str, Any]) -> bool:
    kind = str(asset.get("type", "")).lower()
    href = str(asset.get("href", "")).lower()
    return any(t in kind for t in RASTER_TYPES) or href.endswith((".tif", ".tiff", ".jp2", ".vrt"))


def primary_asset(assets: dict[str, Any]) -> str | None:
    """The key of an item's primary data asset: `data`; else the first raster with role data; else the first
    asset with role data; else the first raster; else the first asset (thumbnails and metadata last)."""
    usable = {k: a for k, a in assets.items() if isinstance(a, dict) and isinstance(a.get("href"), str)}
    if "data" in usable:
        return "data"

    def roles(a: dict[str, Any]) -> set[str]:
        r = a.get("roles")
        return set(r) if isinstance(r, list) else set()

    ranked = (
        [k for k, a in usable.items() if "data" in roles(a) and _is_raster(a)],
        [k for k, a in usable.items() if "data" in roles(a)],
        [k for k, a in usable.items() if _is_raster(a) and not roles(a) & {"thumbnail", "overview"}],
        [k for k, a in usable.items() if not roles(a) & {"thumbnail", "overview", "metadata"}],
        list(usable),
    )
    for keys in ranked:
        if keys:
            return keys[0]
    return None


def item_feature(item: dict[str, Any], item_dir: str, *, source: str | None = None) -> dict[str, Any]:
    """The data.json feature of a local STAC item whose JSON sits in `item_dir` (relative to data.json's folder).

    `up42.data_path` is the primary asset's file; `assets` keeps every asset with its href made relative to
    data.json's folder; assets that are not local files (absolute URLs) keep their href. Without any local
    asset, data_path is the item folder. Hrefs are not checked here: the readers check them.
    """
    assets: dict[str, Any] = {}
    for key, asset in (item.get("assets") or {}).items():
        if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
            continue
        href = asset["href"]
        local = "://" not in href and not href.startswith("/")
        assets[key] = {**asset, "href": _join(item_dir, href) if local else href}
    props = dict(item.get("properties") or {})
    primary = primary_asset({k: a for k, a in assets.items() if "://" not in a["href"] and not a["href"].startswith("/")})
    data_path = assets[primary]["href"] if primary else (item_dir if item_dir not in ("", ".") else None)
    if data_path:
        props[DATA_PATH] = data_path
    if source:
        props["up42.stac_item"] = source
    feature: dict[str, Any] = {"type": "Feature", "id": item.get("id"), "geometry": item.get("geometry"),
                               "properties": props}
    bbox = item.get("bbox") or bbox_of(item.get("geometry"))
    if bbox and item.get("geometry") is not None:
        feature["bbox"] = bbox
    if assets:
        feature["assets"] = assets
    return feature


def _join(folder: str, href: str) -> str:
    from urllib.parse import unquote

    joined = posixpath.normpath(posixpath.join(folder, unquote(href)))
    return joined[2:] if joined.startswith("./") else joined
