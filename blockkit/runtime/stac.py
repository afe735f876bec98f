"""STAC folders: read an OGC App Package stage-in catalog as features; write a catalog of outputs."""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from blockkit.contract.datajson import (
    DATA_PATH,
    FeatureCollection,
    check_data_path,
    data_path_of,
    parse_data_json,
    validate_feature_collection,
    write_atomic,
)
from blockkit.contract.errors import WrongInputError

CATALOG_JSON = "catalog.json"
_MAX_STAC_FILES = 100_000
_DATA_ROLES = ("data",)


def _read_json(path: Path) -> Any:
    return parse_data_json(path.read_bytes(), str(path))


def _inside(root: Path, target: Path) -> bool:
    real = target.resolve()
    return real == root or root in real.parents


def _primary_asset(item: dict[str, Any]) -> str | None:
    assets = item.get("assets") or {}
    for key, asset in assets.items():
        if set(asset.get("roles") or ()) & set(_DATA_ROLES) or key == "data":
            return asset.get("href")
    for asset in assets.values():
        if "tiff" in str(asset.get("type", "")).lower() or str(asset.get("href", "")).lower().endswith((".tif", ".tiff")):
            return asset.get("href")
    return next((a.get("href") for a in assets.values()), None)


def features_from_catalog(directory: Path) -> FeatureCollection:
    """Features for every item of `<directory>/catalog.json` (links followed inside the folder only)."""
    root = Path(directory).resolve()
    catalog_path = root / CATALOG_JSON
    features: list[dict[str, Any]] = []
    seen: set[Path] = set()
    pending = [catalog_path]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        if len(seen) > _MAX_STAC_FILES:
            raise WrongInputError(f"{catalog_path} links more than {_MAX_STAC_FILES} files")
        if not _inside(root, path):
            raise WrongInputError(f"STAC link {path} leaves the input directory")
        if not path.is_file():
            raise WrongInputError(f"STAC link {path.relative_to(root) if path.is_relative_to(root) else path} does not exist")
        doc = _read_json(path)
        if not isinstance(doc, dict):
            raise WrongInputError(f"{path} is not a STAC object")
        if doc.get("type") == "Feature":
            features.append(_item_feature(doc, path, root))
            continue
        for link in doc.get("links") or []:
            if not isinstance(link, dict) or link.get("rel") not in ("child", "item"):
                continue
            href = str(link.get("href", ""))
            if "://" in href or href.startswith("/"):
                raise WrongInputError(f"{path.name}: link {href!r} is not relative to the catalog folder")
            # Normalised so that `sub/../catalog.json` is the same file as `catalog.json`: cycles end.
            pending.append(Path(os.path.normpath(path.parent / href)))
    # The items become the block's input features: the same rules as data.json (schema,
    # geometry, unique ids, data paths), every problem at once.
    data = {"type": "FeatureCollection", "features": features}
    problems = validate_feature_collection(data, root)
    if problems:
        raise WrongInputError.from_problems(f"invalid STAC catalog {catalog_path}", problems)
    return FeatureCollection.from_dict(data)


def _item_feature(item: dict[str, Any], path: Path, root: Path) -> dict[str, Any]:
    props = dict(item.get("properties") or {})
    href = _primary_asset(item)
    item_dir_rel = path.parent.relative_to(root).as_posix()
    if href and "://" not in href and not href.startswith("/"):
        rel = posixpath.normpath(posixpath.join(item_dir_rel, href))
    else:
        rel = item_dir_rel if item_dir_rel != "." else None
    if rel:
        problem = check_data_path(rel, root)
        if problem:
            raise WrongInputError(f"STAC item {item.get('id')!r}: {problem}")
        props[DATA_PATH] = rel
    props["up42.stac_item"] = path.relative_to(root).as_posix()
    return {"type": "Feature", "id": item.get("id"), "geometry": item.get("geometry"), "properties": props}


def write_catalog(directory: Path, fc: FeatureCollection, *, catalog_id: str = "catalog") -> Path:
    """Write a self-contained STAC catalog of the features beside data.json; returns catalog.json."""
    directory = Path(directory)
    links: list[dict[str, Any]] = [{"rel": "root", "href": f"./{CATALOG_JSON}", "type": "application/json"}]
    folders: set[str] = set()
    for index, feature in enumerate(fc):
        item_id = str(feature.get("id") or f"item-{index}")
        safe_id = _folder_name(item_id, index, folders)
        assets: dict[str, Any] = {}
        data_path = data_path_of(feature)
        if data_path:
            assets["data"] = {
                "href": f"../{data_path}",
                "roles": ["data"],
                "type": _media_type(data_path),
            }
        geometry = feature.get("geometry")
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": item_id,
            "geometry": geometry,
            "bbox": _bbox(geometry) if geometry else None,
            "properties": {
                **{k: v for k, v in (feature.get("properties") or {}).items() if k != DATA_PATH},
                "datetime": (feature.get("properties") or {}).get("datetime") or "1970-01-01T00:00:00Z",
            },
            "links": [
                {"rel": "root", "href": f"../{CATALOG_JSON}", "type": "application/json"},
                {"rel": "parent", "href": f"../{CATALOG_JSON}", "type": "application/json"},
            ],
            "assets": assets,
        }
        if item["bbox"] is None:
            del item["bbox"]
        item_rel = f"{safe_id}/{safe_id}.json"
        # Items live one folder down, next to nothing else: hrefs climb one level to the data.
        (directory / safe_id).mkdir(parents=True, exist_ok=True)
        write_atomic(directory / item_rel, json.dumps(item, indent=1))
        links.append({"rel": "item", "href": f"./{item_rel}", "type": "application/geo+json"})
    catalog = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": catalog_id,
        "description": "Outputs written by blockkit",
        "links": links,
    }
    return write_atomic(directory / CATALOG_JSON, json.dumps(catalog, indent=1))


def _folder_name(item_id: str, index: int, taken: set[str]) -> str:
    """A folder name for an item: inside the output folder, portable, URL-safe and unique.

    Only letters, digits, '.', '_' and '-' are kept (fan-in ids hold ':', which Windows and
    some object stores refuse, and a space or '#' would need escaping in an href).
    """
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._")[:100] or f"item-{index}"
    name, suffix = base, index
    while name in taken:
        name, suffix = f"{base}-{suffix}", suffix + 1
    taken.add(name)
    return name


def _media_type(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".tif", ".tiff")):
        return "image/tiff; application=geotiff"
    if lower.endswith((".json", ".geojson")):
        return "application/geo+json"
    if lower.endswith(".png"):
        return "image/png"
    return "application/octet-stream"


def _bbox(geometry: dict[str, Any]) -> list[float] | None:
    xs: list[float] = []
    ys: list[float] = []

    def walk(coords: Any) -> None:
        if coords and isinstance(coords[0], (int, float)):
            xs.append(coords[0])
            ys.append(coords[1])
        else:
            for c in coords or ():
                walk(c)

    if geometry.get("type") == "GeometryCollection":
        for g in geometry.get("geometries") or ():
            walk(g.get("coordinates"))
    else:
        walk(geometry.get("coordinates"))
    return [min(xs), min(ys), max(xs), max(ys)] if xs else None
