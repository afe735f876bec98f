"""Propagation: metadata inheritance and data forwarding by hard link."""

from __future__ import annotations

import copy
import errno
import os
import posixpath
import stat
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from blockkit.contract._datajson import DATA_PATH, RESERVED_PREFIXES, FeatureCollection, check_data_path, data_path_of
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
    """A GeoJSON feature with an id (a new UUID unless given) and an optional data link.

    Parameters:
        geometry: the GeoJSON geometry (None for a feature without geometry).
        data_path: the output file or folder, relative to the output folder (`up42.data_path`).
        properties: the feature's properties.
        feature_id: the feature id (default: a new UUID).
    """
    if feature_id is None:
        import uuid  # only here: every block imports this module, and most features keep their id

        feature_id = str(uuid.uuid4())
    props = dict(properties or {})
    if data_path is not None:
        props[DATA_PATH] = data_path
    return {
        "type": "Feature",
        "id": feature_id,
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
    """A new feature derived from an input feature (metadata propagation, SPEC §2).

    The input's inheritable properties are kept (not its data link), then ``properties`` is
    applied on top.

    Parameters:
        feature: the input feature.
        data_path: the new feature's output file or folder, relative to the output folder.
        properties: properties that add to or replace the inherited ones.
        geometry: the new geometry (default: a copy of the input's; None removes it).
        id: the new feature's id (default: the input's id, else a new UUID).
    """
    props = inheritable(feature.get("properties"))
    props.update(properties or {})
    return make_feature(
        geometry=copy.deepcopy(feature.get("geometry")) if geometry is _KEEP else geometry,
        data_path=data_path,
        properties=props,
        feature_id=id if id is not None else (str(feature["id"]) if feature.get("id") is not None else None),
    )


LinkHook = Callable[[os.stat_result, os.stat_result], None]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def link_tree(src: Path, dst: Path, *, base: Path | None = None, on_link: LinkHook | None = None) -> None:
    """Hard-link a file or folder tree to dst (copy only across filesystems); never follows a symlink.

    On the source side a symlink, device, fifo or socket is refused; on the destination side
    every component below `base` (default: dst's parent, which the caller trusts) is opened
    with O_NOFOLLOW and files are created with O_EXCL, so a link planted in the destination
    is never written through. `on_link(before, after)` sees each linked source file's stat
    before and after the link (a link moves the inode's ctime).
    """
    src, dst = Path(src), Path(dst)
    base = Path(base) if base is not None else dst.parent
    parts = dst.relative_to(base).parts
    if not parts:
        raise WrongInputError(f"cannot link {src} onto {base} itself")
    base.mkdir(parents=True, exist_ok=True)
    src_parent = os.open(src.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.stat(src.name, dir_fd=src_parent, follow_symlinks=False)
        dst_parent = _open_dirs(base, parts[:-1])
        try:
            _link_entry(src_parent, src.name, st, dst_parent, parts[-1], src, on_link)
        finally:
            os.close(dst_parent)
    finally:
        os.close(src_parent)


def _open_dirs(base: Path, parts: tuple[str, ...]) -> int:
    """Open (creating) base/parts... with O_NOFOLLOW below base."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in parts:
        try:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise WrongInputError(f"refusing to write through {part!r} below {base}: not a plain folder") from None
            raise
        os.close(fd)
        fd = child
    return fd


def _link_entry(src_dir: int, name: str, st: os.stat_result, dst_dir: int, dst_name: str, where: Path,
                on_link: LinkHook | None) -> None:
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFLNK:
        raise WrongInputError(f"refusing to forward symlink {where}")
    if kind == stat.S_IFDIR:
        try:
            os.mkdir(dst_name, 0o755, dir_fd=dst_dir)
        except FileExistsError:
            pass
        try:
            dst_fd = os.open(dst_name, _DIR_FLAGS, dir_fd=dst_dir)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise WrongInputError(f"cannot forward {where}: {dst_name!r} in the target is not a plain folder") from None
            raise
        try:
            src_fd = os.open(name, _DIR_FLAGS, dir_fd=src_dir)
            try:
                with os.scandir(src_fd) as entries:
                    children = sorted((e.name, e.stat(follow_symlinks=False)) for e in entries)
                for child, child_st in children:
                    _link_entry(src_fd, child, child_st, dst_fd, child, where / child, on_link)
            finally:
                os.close(src_fd)
        finally:
            os.close(dst_fd)
        return
    if kind != stat.S_IFREG:
        raise WrongInputError(f"refusing to forward {where}: not a regular file or folder")
    try:
        os.link(name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    except FileExistsError:
        raise WrongInputError(f"cannot forward {where}: {dst_name!r} already exists in the target") from None
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        _copy_entry(src_dir, name, dst_dir, dst_name, where)
        return
    if on_link is not None:
        on_link(st, os.stat(name, dir_fd=src_dir, follow_symlinks=False))


def _copy_entry(src_dir: int, name: str, dst_dir: int, dst_name: str, where: Path) -> None:
    """Copy one regular file into a new file (O_EXCL, O_NOFOLLOW): across filesystems only."""
    src_fd = os.open(name, _FILE_FLAGS, dir_fd=src_dir)
    try:
        st = os.fstat(src_fd)
        if not stat.S_ISREG(st.st_mode):
            raise WrongInputError(f"refusing to forward {where}: not a regular file")
        try:
            out = os.open(dst_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o644, dir_fd=dst_dir)
        except FileExistsError:
            raise WrongInputError(f"cannot forward {where}: {dst_name!r} already exists in the target") from None
        import shutil

        try:
            with os.fdopen(src_fd, "rb", closefd=False) as reader, os.fdopen(out, "wb", closefd=False) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)
    finally:
        os.close(src_fd)


def forward_feature(
    feature: Mapping[str, Any], input_dir: Path, output_dir: Path, *, prefix: str = "",
    on_link: LinkHook | None = None,
) -> dict[str, Any]:
    """Copy a feature to the output, hard-linking its data under `prefix/` (data forwarding).

    Parameters:
        feature: the input feature; its data_path and local assets are forwarded.
        input_dir: the folder the feature's relative paths start from.
        output_dir: the output folder the data is linked (or copied) into.
        prefix: a subfolder of the output for the forwarded data (default: the same relative path).
        on_link: ``on_link(before, after)`` sees each linked source file's stat before and after
            the link (see `link_tree`).
    """
    out = copy.deepcopy(dict(feature))
    value = data_path_of(out)
    if value is not None:
        problem = check_data_path(value, input_dir)
        if problem:
            raise WrongInputError(f"cannot forward feature {feature.get('id', '?')!r}: {problem}")
    files = ([value] if value is not None else []) + [asset["href"] for asset in local_assets(out)]
    prefix = _free_prefix(files, input_dir, output_dir, prefix.strip("/"))
    if value is not None:
        new_path = f"{prefix}/{value}" if prefix else value
        source, target = input_dir / posixpath.normpath(value), output_dir / posixpath.normpath(new_path)
        if not _same_file(source, target):  # else forwarded already, with an earlier feature
            link_tree(source, target, base=output_dir, on_link=on_link)
        out.setdefault("properties", {})[DATA_PATH] = new_path
    _forward_assets(out, input_dir, output_dir, prefix, on_link)
    return out


#: How many `input/`, `input-2/`, ... folders forwarding tries before it gives up.
MAX_RELOCATIONS = 100


def _free_prefix(files: list[str], input_dir: Path, output_dir: Path, prefix: str) -> str:
    """Where a feature's files are forwarded: under `prefix`, or when the output already has one of
    their names there (the block wrote `x.tif` for input `x.tif`), under the first free
    `input/<prefix>`, `input-2/<prefix>`, ... (so the mounted and the linked fan-in agree)."""
    def occupied(rel: str, under: str) -> bool:  # by another file than this one
        target = output_dir / posixpath.normpath(f"{under}/{rel}" if under else rel)
        return os.path.lexists(target) and not _same_file(input_dir / posixpath.normpath(rel), target)

    for n in range(MAX_RELOCATIONS + 1):
        moved = "input" if n == 1 else f"input-{n}"
        candidate = prefix if n == 0 else posixpath.join(moved, prefix).rstrip("/")
        if not any(occupied(rel, candidate) for rel in files):
            return candidate
    raise WrongInputError(f"cannot forward {files[0]!r}: the output holds that name in {MAX_RELOCATIONS} places")


def _same_file(source: Path, target: Path) -> bool:
    """Whether `target` is already `source` (a file linked by an earlier feature's forwarding)."""
    try:
        there, here = os.lstat(target), os.lstat(source)
    except OSError:
        return False
    return not stat.S_ISDIR(there.st_mode) and os.path.samestat(here, there)


def local_assets(feature: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The feature's STAC `assets` whose href is a file beside data.json (not a URL, not absolute)."""
    assets = feature.get("assets")
    if not isinstance(assets, dict):
        return []
    return [a for a in assets.values()
            if isinstance(a, dict) and isinstance(a.get("href"), str) and "://" not in a["href"]
            and not a["href"].startswith("/")]


def prefix_local_assets(out: dict[str, Any], prefix: str) -> None:
    """Put `prefix/` before every local asset href of `out`, on copies of its assets (the input's are kept)."""
    if isinstance(out.get("assets"), dict):
        out["assets"] = {key: dict(asset) if isinstance(asset, dict) else asset for key, asset in out["assets"].items()}
    for asset in local_assets(out):
        asset["href"] = f"{prefix}/{asset['href']}"


def _forward_assets(out: dict[str, Any], input_dir: Path, output_dir: Path, prefix: str,
                    on_link: LinkHook | None) -> None:
    """Forward every local asset file of a feature too, so no forwarded href dangles."""
    for asset in local_assets(out):
        href = asset["href"]
        problem = check_data_path(href, input_dir)
        if problem:
            raise WrongInputError(f"cannot forward feature {out.get('id', '?')!r}: asset {problem.removeprefix('up42.data_path ')}")
        new_href = f"{prefix.strip('/')}/{href}" if prefix else href
        source, target = input_dir / posixpath.normpath(href), output_dir / posixpath.normpath(new_href)
        if os.path.lexists(target):
            # Usually the data_path file itself, or a file inside a forwarded data_path folder.
            if not target.is_dir() and not _same_file(source, target):
                raise WrongInputError(f"cannot forward asset {href!r}: {new_href!r} already exists in the output")
        else:
            link_tree(source, target, base=output_dir, on_link=on_link)
        asset["href"] = new_href


def forward_all(
    features: list[dict[str, Any]], existing: list[dict[str, Any]], input_dir: Path, output_dir: Path,
    *, on_link: LinkHook | None = None,
) -> list[dict[str, Any]]:
    """Forward input features next to existing output ones; a clashing id gets an `-input` suffix.

    Parameters:
        features: the input features to forward (see `forward_feature`).
        existing: the output features already written, whose ids take precedence.
        input_dir: the folder the input features' relative paths start from.
        output_dir: the output folder the data is linked into.
        on_link: ``on_link(before, after)`` for each linked source file (see `forward_feature`).
    """
    return _unclash([forward_feature(feature, input_dir, output_dir, on_link=on_link) for feature in features],
                    existing)


def forward_fan_in(
    upstreams: Mapping[str, Path], existing: list[dict[str, Any]], output_dir: Path,
    *, on_link: LinkHook | None = None,
) -> list[dict[str, Any]]:
    """Forward the features of several upstream outputs as a fan-in step saw them.

    The same result as `forward_all` over the merged fan-in input (ids `<step>:<id>`, files
    under `<step>/`), read from each upstream's own folder: used when the upstream outputs
    were mounted into the step's input rather than linked there.
    """
    from blockkit.contract._datajson import load_data_json

    seen, forwarded = [], []
    for step, folder in upstreams.items():
        features = load_data_json(folder, required=False).features
        # Links <folder>/x to <output>/<step>/x (to input/<step>/x when the block wrote that name).
        forwarded += [forward_feature(feature, folder, output_dir, prefix=step, on_link=on_link) for feature in features]
        seen.append((step, features))
    fanned = fan_in_features(seen)
    for out, moved in zip(fanned, forwarded):  # the ids of the fan-in, the places forwarding chose
        if DATA_PATH in (moved.get("properties") or {}):
            out["properties"][DATA_PATH] = moved["properties"][DATA_PATH]
        if "assets" in moved:
            out["assets"] = moved["assets"]
    return _unclash(fanned, existing)


def _unclash(forwarded: list[dict[str, Any]], existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give a forwarded feature whose id an output feature already has an `-input` suffix."""
    taken = {f.get("id") for f in existing}
    for out in forwarded:
        if out.get("id") is not None and out["id"] in taken:
            out["id"] = f"{out['id']}-input"
        taken.add(out.get("id"))
    return forwarded


def merge_upstreams(folder: Path, upstreams: Sequence[str]) -> FeatureCollection:
    """Write the fan-in data.json into `folder`, whose `<step>/` subfolders hold each upstream output.

    The runner's own rewriting (`fan_in_feature`), for engines that run a fan-in step
    elsewhere (the CWL step entrypoint, the scatter split).
    """
    from blockkit.contract._datajson import load_data_json, write_data_json

    merged = FeatureCollection(fan_in_features([(up, load_data_json(folder / up, required=False).features)
                                                for up in upstreams]))
    write_data_json(folder, merged)
    return merged


def fan_in_features(upstreams: Iterable[tuple[str, Iterable[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """Every upstream's features (step, features), in order, as the fan-in step sees them (`fan_in_feature`).

    Ids stay unique: two upstream ids that read the same as text (`1` and `"1"`) would both
    become `<step>:1`; the later one is `<step>:1-2` (then `-3`, ...).
    """
    merged: list[dict[str, Any]] = []
    taken: set[Any] = set()
    for step, features in upstreams:
        for feature in features:
            out = fan_in_feature(step, feature)
            ident = out.get("id")
            if ident is not None:
                candidate, n = ident, 2
                while candidate in taken:
                    candidate, n = f"{ident}-{n}", n + 1
                out["id"] = candidate
                taken.add(candidate)
            merged.append(out)
    return merged


def fan_in_feature(step: str, feature: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream feature as a fan-in step sees it: data path under `<step>/`, id `<step>:<id>`."""
    out = dict(feature)  # copies of what changes only: the rest is shared, never modified
    props = dict(out.get("properties") or {})
    if DATA_PATH in props:
        props[DATA_PATH] = f"{step}/{props[DATA_PATH]}"
    prefix_local_assets(out, step)
    props.setdefault("blockkit.step", step)
    out["properties"] = props
    if out.get("id") is not None:
        out["id"] = f"{step}:{out['id']}"
    return out
