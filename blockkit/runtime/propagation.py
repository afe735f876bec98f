"""Propagation: metadata inheritance and data forwarding by hard link."""

from __future__ import annotations

import copy
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

from blockkit.contract.datajson import DATA_PATH, RESERVED_PREFIXES, check_data_path, data_path_of
from blockkit.contract.errors import WrongInputError

_KEEP = object()


def inheritable(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    """The properties an output feature inherits: all but `up42.*` and `custom.*`."""
    return {k: v for k, v in (properties or {}).items() if not k.startswith(RESERVED_PREFIXES)}


def make_feature(
    *,
    geometry: dict[str, Any] | None,
    data_path: str | None = None,
    properties: Mapping[str, Any] | None = None,
    feature_id: str | None = None,
) -> dict[str, Any]:
    """A GeoJSON feature with an id (a new UUID unless given) and an optional data link."""
    props = dict(properties or {})
    if data_path is not None:
        props[DATA_PATH] = data_path
    return {
        "type": "Feature",
        "id": feature_id if feature_id is not None else str(uuid.uuid4()),
        "geometry": geometry,
        "properties": props,
    }


def derive_feature(
    feature: Mapping[str, Any],
    *,
    data_path: str | None = None,
    properties: Mapping[str, Any] | None = None,
    geometry: Any = _KEEP,
    id: str | None = None,  # noqa: A002 - GeoJSON's own name
) -> dict[str, Any]:
    """A new feature derived from an input feature (metadata propagation, SPEC §2)."""
    props = inheritable(feature.get("properties"))
    props.update(properties or {})
    return make_feature(
        geometry=copy.deepcopy(feature.get("geometry")) if geometry is _KEEP else geometry,
        data_path=data_path,
        properties=props,
        feature_id=id if id is not None else (str(feature["id"]) if feature.get("id") is not None else None),
    )


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link a file or folder tree to dst (copy only across filesystems); never follows symlinks out."""
    if src.is_symlink():
        raise WrongInputError(f"refusing to forward symlink {src}")
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            link_tree(child, dst / child.name)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)


def forward_feature(
    feature: Mapping[str, Any], input_dir: Path, output_dir: Path, *, prefix: str = ""
) -> dict[str, Any]:
    """Copy a feature to the output, hard-linking its data under `prefix/` (data forwarding)."""
    out = copy.deepcopy(dict(feature))
    value = data_path_of(out)
    if value is None:
        return out
    problem = check_data_path(value, input_dir)
    if problem:
        raise WrongInputError(f"cannot forward feature {feature.get('id', '?')!r}: {problem}")
    new_path = f"{prefix.strip('/')}/{value}" if prefix else value
    target = output_dir / new_path
    if target.exists():
        raise WrongInputError(f"cannot forward {value!r}: {new_path!r} already exists in the output")
    link_tree(input_dir / value, target)
    out.setdefault("properties", {})[DATA_PATH] = new_path
    return out


def forward_all(
    features: list[dict[str, Any]], existing: list[dict[str, Any]], input_dir: Path, output_dir: Path
) -> list[dict[str, Any]]:
    """Forward input features next to existing output ones; a clashing id gets an `-input` suffix."""
    return _unclash([forward_feature(feature, input_dir, output_dir) for feature in features], existing)


def forward_fan_in(
    upstreams: Mapping[str, Path], existing: list[dict[str, Any]], output_dir: Path
) -> list[dict[str, Any]]:
    """Forward the features of several upstream outputs as a fan-in step saw them.

    The same result as `forward_all` over the merged fan-in input (ids `<step>:<id>`, files
    under `<step>/`), read from each upstream's own folder: used when the upstream outputs
    were mounted into the step's input rather than linked there.
    """
    from blockkit.contract.datajson import load_data_json

    forwarded = []
    for step, folder in upstreams.items():
        for feature in load_data_json(folder, required=False).features:
            forward_feature(feature, folder, output_dir, prefix=step)  # links <folder>/x to <output>/<step>/x
            forwarded.append(fan_in_feature(step, feature))
    return _unclash(forwarded, existing)


def _unclash(forwarded: list[dict[str, Any]], existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give a forwarded feature whose id an output feature already has an `-input` suffix."""
    taken = {f.get("id") for f in existing}
    for out in forwarded:
        if out.get("id") is not None and out["id"] in taken:
            out["id"] = f"{out['id']}-input"
        taken.add(out.get("id"))
    return forwarded


def fan_in_feature(step: str, feature: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream feature as a fan-in step sees it: data path under `<step>/`, id `<step>:<id>`."""
    out = copy.deepcopy(dict(feature))
    props = out.get("properties") or {}
    if DATA_PATH in props:
        props[DATA_PATH] = f"{step}/{props[DATA_PATH]}"
    props.setdefault("blockkit.step", step)
    out["properties"] = props
    if out.get("id") is not None:
        out["id"] = f"{step}:{out['id']}"
    return out
