"""The hardened reader of a local STAC catalog folder (block inputs, stage-in of local folders).

Links are followed inside the folder only (no URLs, no absolute paths, no symlinks that leave), cycles end,
the number of files is bounded, and every asset href is checked like a data_path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from blockkit.contract._datajson import (
    DATA_PATH,
    FeatureCollection,
    check_data_path,
    parse_data_json,
    validate_feature_collection,
)
from blockkit.contract.errors import WrongInputError
from blockkit.stac._model import item_feature

CATALOG_JSON = "catalog.json"
MAX_STAC_FILES = 100_000


def _inside(root: Path, target: Path) -> bool:
    real = target.resolve()
    return real == root or root in real.parents


def features_from_catalog(directory: Path, catalog: str = CATALOG_JSON) -> FeatureCollection:
    """Features for every item of `<directory>/catalog.json` (links followed inside the folder only)."""
    root = Path(directory).resolve()
    catalog_path = root / catalog
    features: list[dict[str, Any]] = []
    seen: set[Path] = set()
    pending = [catalog_path]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        if len(seen) > MAX_STAC_FILES:
            raise WrongInputError(f"{catalog_path} links more than {MAX_STAC_FILES} files")
        if not _inside(root, path):
            raise WrongInputError(f"STAC link {path} leaves the input directory")
        if not path.is_file():
            raise WrongInputError(f"STAC link {path.relative_to(root) if path.is_relative_to(root) else path} does not exist")
        doc = parse_data_json(path.read_bytes(), str(path))
        if not isinstance(doc, dict):
            raise WrongInputError(f"{path} is not a STAC object")
        if doc.get("type") == "Feature":
            features.append(_checked_feature(doc, path, root))
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


def _checked_feature(item: dict[str, Any], path: Path, root: Path) -> dict[str, Any]:
    item_dir = path.parent.relative_to(root).as_posix()
    feature = item_feature(item, item_dir, source=path.relative_to(root).as_posix())
    label = f"STAC item {item.get('id')!r}"
    data_path = feature["properties"].get(DATA_PATH)
    if data_path:
        problem = check_data_path(data_path, root)
        if problem:
            raise WrongInputError(f"{label}: {problem}")
    for key, asset in (feature.get("assets") or {}).items():
        href = asset["href"]
        if "://" in href:
            continue
        problem = check_data_path(href, root, must_exist=False)
        if problem:
            raise WrongInputError(f"{label} asset {key!r}: {problem.replace('up42.data_path', 'href')}")
    return feature
