"""STAC for staging: find the items behind a URL, plan their asset downloads, write the self-contained layout.

The rules (media types, primary asset, data_path, features) are `blockkit.stac`'s; this module only walks
remote documents (http(s), s3, and local files for a local catalog.json) and plans downloads.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from blockkit.stac import is_stac, item_feature
from blockkit.storage._errors import StorageError, TransferFailed, UnsafePath
from blockkit.storage._transfer import check_component, public_url

__all__ = ["collect_items", "is_stac", "parse_multihash", "plan_item", "resolve_href", "write_layout"]

CATALOG_ID = "catalog"
STRUCTURAL_RELS = {"self", "root", "parent", "child", "item", "collection", "items"}
LAYOUT_FILES = ("catalog.json", "data.json")  # beside the item folders: no item may be named so
MAX_ITEMS = 10_000
MAX_DEPTH = 10
MAX_DOCUMENTS = 2 * MAX_ITEMS  # documents fetched by one walk: a tree of catalogs without items is bounded too
WALK_DEADLINE = 3600.0  # seconds for one walk (each document also has its own http.JSON_DEADLINE)

# multihash codes (https://github.com/multiformats/multicodec) -> hashlib names
_MULTIHASH = {0x11: "sha1", 0x12: "sha256", 0x13: "sha512", 0x16: "sha3_256", 0x14: "sha3_512", 0xD5: "md5"}


def parse_multihash(value: str) -> tuple[str, str] | None:
    """(hashlib name, hex digest) of a STAC `file:checksum` multihash, or None if unsupported."""
    try:
        raw = bytes.fromhex(value)
    except (ValueError, TypeError):
        return None
    pos, code, shift = 0, 0, 0
    while pos < len(raw):  # unsigned varint
        b = raw[pos]
        code |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            break
    if code not in _MULTIHASH or pos >= len(raw):
        return None
    length = raw[pos]
    digest = raw[pos + 1:]
    if len(digest) != length:
        return None
    return _MULTIHASH[code], digest.hex()


def resolve_href(base: str, href: str) -> str:
    """An href made absolute against the document it comes from (http(s), file and s3:// bases)."""
    if urlsplit(href).scheme:
        return href
    if base.startswith("s3://"):
        from blockkit.storage._s3 import parse_s3_uri

        loc = parse_s3_uri(base)
        if href.startswith("/"):
            key = href.lstrip("/")
        else:
            key = posixpath.normpath(posixpath.join(posixpath.dirname(loc.key), unquote(href)))
        if key.startswith("../") or key == "..":
            raise UnsafePath(f"{public_url(base)}: href {href!r} leaves the bucket")
        return f"s3://{loc.bucket}/{key}"
    return urljoin(base, href)


def _check_link_scheme(base: str, target: str, what: str) -> None:
    remote = urlsplit(base).scheme in ("http", "https", "s3")
    scheme = urlsplit(target).scheme
    if remote and scheme not in ("http", "https", "s3"):
        raise UnsafePath(f"{public_url(base)}: {what} {public_url(target)!r} is not http(s) or s3; refusing it")
    if not remote and scheme not in ("file", "http", "https", "s3"):
        raise UnsafePath(f"{public_url(base)}: {what} {target!r} has an unsupported scheme {scheme!r}")


@dataclass
class RemoteItem:
    """A STAC item as fetched, with the URL its relative hrefs resolve against."""

    data: dict[str, Any]
    base: str


def collect_items(
    doc: Any, url: str, fetch_json: Callable[[str], Any], *, max_items: int = MAX_ITEMS,
    max_documents: int = MAX_DOCUMENTS, deadline: float = WALK_DEADLINE,
) -> list[RemoteItem]:
    """Every item reachable from an Item, ItemCollection, Catalog or Collection (child links followed).

    Args:
        doc: the document at `url`, parsed.
        url: where it came from (relative links resolve against it).
        fetch_json: fetches and parses a linked document.
        max_items: more items is a StorageError.
        max_documents: more linked documents to fetch is a StorageError (a hostile tree of catalogs).
        deadline: seconds for the whole walk; then TransferFailed.
    """
    items: list[RemoteItem] = []
    seen: set[str] = set()
    end = time.monotonic() + deadline

    def visit(node: Any, base: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise StorageError(f"{public_url(base)}: catalog nesting deeper than {MAX_DEPTH} levels")
        if not isinstance(node, dict):
            raise StorageError(f"{public_url(base)}: not a STAC document")
        kind = node.get("type")
        if kind == "Feature":
            items.append(RemoteItem(node, base))
        elif kind == "FeatureCollection":
            for f in node.get("features") or []:
                items.append(RemoteItem(f, base))
        elif kind in ("Catalog", "Collection"):
            for link in node.get("links") or []:
                if not isinstance(link, dict) or link.get("rel") not in ("item", "child") or not link.get("href"):
                    continue
                target = resolve_href(base, str(link["href"]))
                _check_link_scheme(base, target, f"{link.get('rel')} link")
                if target in seen:
                    continue
                seen.add(target)
                if len(seen) > max_documents + 1:  # + 1: the document at `url`
                    raise StorageError(
                        f"{public_url(url)}: links more than {max_documents} STAC documents; stage in a smaller catalog"
                    )
                if time.monotonic() > end:
                    raise TransferFailed(f"{public_url(url)}: reading the catalog's documents took more than "
                                         f"{deadline:g} s; stage in a smaller catalog")
                visit(fetch_json(target), target, depth + 1)
        else:
            raise StorageError(f"{public_url(base)}: STAC type {kind!r} is not an Item, Catalog or Collection")
        if len(items) > max_items:
            raise StorageError(f"{public_url(url)}: more than {max_items} items; stage in a smaller catalog")

    seen.add(url)
    visit(doc, url, 0)
    if not items:
        raise StorageError(f"{public_url(url)}: the catalog has no items; nothing to stage in")
    return items


@dataclass
class AssetFetch:
    """One asset to download into the layout."""

    item_id: str
    key: str
    href: str  # absolute
    dest: Path
    size: int | None = None
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass
class PlannedItem:
    """An item rewritten for the local layout, and the downloads it needs."""

    item: dict[str, Any]
    folder: Path
    fetches: list[AssetFetch]


def _sub_path(raw_href: str) -> str | None:
    """`qa/mask.txt` for an href inside the item's own folder (`./qa/mask.txt`), else None."""
    if urlsplit(raw_href).scheme or raw_href.startswith("/") or "\\" in raw_href:
        return None
    norm = posixpath.normpath(unquote(urlsplit(raw_href).path))
    parts = norm.split("/")
    if norm in (".", "") or ".." in parts or len(parts) < 2 or any(p in ("", ".") for p in parts):
        return None
    return norm


def _local_name(href: str, taken: set[str], asset_key: str, item_id: str, raw_href: str = "") -> str:
    sub = _sub_path(raw_href)
    if sub is not None:
        # a sub-folder of the item's own folder is kept (what stage-out wrote comes back the same)
        for part in sub.split("/"):
            check_component(part, f"item {item_id!r} asset {asset_key!r}: path part")
        if sub not in taken:
            taken.add(sub)
            return sub
    path = urlsplit(href).path
    name = unquote(posixpath.basename(path.rstrip("/"))) if path else ""
    what = f"item {item_id!r} asset {asset_key!r}: file name"
    if "/" in name or "\\" in name or name in (".", ".."):
        raise UnsafePath(f"{what} {name!r} would write outside the item folder; refusing it")
    if not name:
        name = check_component(asset_key, f"item {item_id!r} asset key")
    check_component(name, what)
    if name in taken or name == f"{item_id}.json":
        name = check_component(f"{check_component(asset_key.replace('/', '_'), 'asset key')}-{name}", what)
        if name in taken or name == f"{item_id}.json":
            raise UnsafePath(f"{what} {name!r} is the item's own document or another asset's file; refusing it")
    taken.add(name)
    return name


def plan_item(remote: RemoteItem, target: Path, *, remote_source: bool) -> PlannedItem:
    """Check an item and plan its assets under target/<item id>/; refuses unsafe ids and hrefs."""
    data = json.loads(json.dumps(remote.data))  # a deep copy we may rewrite
    item_id = data.get("id")
    if not isinstance(item_id, str):
        raise StorageError(f"{public_url(remote.base)}: STAC item without a string id")
    check_component(item_id, "STAC item id")
    if item_id in LAYOUT_FILES:
        raise UnsafePath(f"STAC item id {item_id!r} is a file of the stage-in layout; refusing it")
    assets = data.get("assets")
    if not isinstance(assets, dict) or not assets:
        raise StorageError(f"STAC item {item_id!r} has no assets; nothing to stage in")
    folder = target / item_id
    fetches: list[AssetFetch] = []
    taken: set[str] = set()
    for key, asset in assets.items():
        if not isinstance(asset, dict) or not isinstance(asset.get("href"), str) or not asset["href"]:
            raise StorageError(f"STAC item {item_id!r} asset {key!r} has no href")
        href = resolve_href(remote.base, asset["href"])
        scheme = urlsplit(href).scheme
        if remote_source and scheme in ("", "file"):
            # a remote catalog must not make us read local files
            raise UnsafePath(f"STAC item {item_id!r} asset {key!r}: local href {asset['href']!r} in a remote catalog")
        if scheme not in ("http", "https", "s3", "", "file"):
            raise StorageError(f"STAC item {item_id!r} asset {key!r}: unsupported href scheme {scheme!r}")
        name = _local_name(href, taken, key, item_id, asset["href"])
        checksums: dict[str, str] = {}
        parsed = parse_multihash(str(asset.get("file:checksum", "")))
        if parsed:
            checksums[parsed[0]] = parsed[1]
        size = asset.get("file:size")
        fetches.append(AssetFetch(item_id, key, href, folder / name,
                                  size if isinstance(size, int) and size >= 0 else None, checksums))
        asset["href"] = f"./{quote(name)}"
    kept = [
        link for link in data.get("links") or []
        if isinstance(link, dict) and link.get("rel") not in STRUCTURAL_RELS
        and urlsplit(str(link.get("href", ""))).scheme in ("http", "https")
    ]
    data["links"] = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        *kept,
    ]
    return PlannedItem(data, folder, fetches)


def check_unique_ids(planned: list[PlannedItem]) -> None:
    """Refuse two items with one id (they would share a folder): checked before anything is downloaded."""
    seen: set[str] = set()
    for p in planned:
        if p.item["id"] in seen:
            raise StorageError(f"two STAC items share the id {p.item['id']!r}; item ids must be unique")
        seen.add(p.item["id"])


def write_layout(target: Path, planned: list[PlannedItem], *, description: str) -> list[dict[str, Any]]:
    """Write `<id>/<id>.json` per item and `catalog.json`; return one data.json feature per item."""
    from blockkit.stac._writer import catalog_dict

    check_unique_ids(planned)
    hrefs: list[str] = []
    features = []
    for p in planned:
        item_id = p.item["id"]
        p.folder.mkdir(parents=True, exist_ok=True)
        (p.folder / f"{item_id}.json").write_text(json.dumps(p.item, indent=2))
        hrefs.append(f"./{item_id}/{item_id}.json")
        # the one data_path rule: the primary data asset (a file), every asset under `assets`
        features.append(item_feature(p.item, item_id))
    (target / "catalog.json").write_text(json.dumps(catalog_dict(hrefs, description, CATALOG_ID), indent=2))
    return features
