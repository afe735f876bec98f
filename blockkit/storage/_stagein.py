"""Stage-in: turn a URI (local, workspace, http, STAC, s3, webdav) into a folder with data.json."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from blockkit.contract._datajson import DATA_JSON, DATA_PATH, FeatureCollection, load_data_json, write_data_json
from blockkit.stac import features_from_catalog, is_stac
from blockkit.storage import _http as http, _s3 as s3, _stac as stac, _webdav as webdav
from blockkit.storage._errors import AccessDenied, StorageError, TooLarge, UnsafePath, UnsupportedURI, WrongKeyType
from blockkit.storage._keystore import Key, Keystore
from blockkit.storage._transfer import (
    Download,
    RetryPolicy,
    TransferLimits,
    check_component,
    download_all,
    iter_file,
    public_url,
    safe_join,
)

log = logging.getLogger("blockkit.storage")
SCHEMES = ("file", "http", "https", "stac+http", "stac+https", "s3", "stac+s3", "webdav", "webdavs")
RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt", ".img", ".nc", ".hdf", ".h5"}
#: Every JSON document one stage-in reads (a STAC tree), added up: they stay parsed until the walk ends.
MAX_DOCUMENT_BYTES = 256 << 20
#: How many times copying a local source may reach one folder (through symlinks to it).
MAX_FOLDER_COPIES = 8


@dataclass
class StageOptions:
    """How to transfer: parallelism, retries, progress bar, anonymous S3 endpoint, size and time limits."""

    workers: int = 8
    retry: RetryPolicy = RetryPolicy()
    progress: bool = True
    endpoint: str | None = None  # S3 endpoint for anonymous access to a non-AWS store
    limits: TransferLimits = TransferLimits()


def stage_in(
    uri: str,
    target_dir: Path | str,
    *,
    keystore: Keystore | None = None,
    key: str | None = None,
    progress: bool = True,
    workers: int = 8,
    retry: RetryPolicy | None = None,
    endpoint: str | None = None,
    limits: TransferLimits | None = None,
) -> FeatureCollection:
    """Fetch `uri` into target_dir (an empty or new folder) and write its data.json; return the features.

    On any failure the target is left as it was: emptied, and removed when stage-in created it.

    Args:
        uri: the source: a local folder or file, http(s)://, `stac+` URLs, s3:// or webdav(s)://.
        target_dir: an empty or new folder that receives the files and data.json.
        keystore: where `key` is looked up (default: the keystore of the environment).
        key: the name of the keystore key to read the source with (None: anonymous).
        progress: show a progress bar over the bytes on stderr.
        workers: files downloaded at once.
        retry: how often and how long transient failures are retried, per file.
        endpoint: the S3 endpoint for anonymous access to a store other than AWS.
        limits: bounds on the bytes per file, per stage-in, and the time per file.
    """
    opts = StageOptions(workers, retry or RetryPolicy(), progress, endpoint, limits or TransferLimits())
    target = Path(target_dir)
    scheme = _scheme(uri)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StorageError(f"stage-in target {target} is not an empty folder; give a new or empty one")
    cred = _load_key(keystore, key)
    existed = target.exists()
    target.mkdir(parents=True, exist_ok=True)
    log.info("stage-in %s -> %s", public_url(uri), target)
    try:
        return _dispatch(uri, scheme, target, cred, opts)
    except AccessDenied as err:
        _undo(target, existed)
        hint = _key_hint(uri, cred)
        if hint:
            raise AccessDenied(f"{err.message}; {hint}") from err
        raise
    except BaseException:
        _undo(target, existed)
        raise


def _undo(target: Path, existed: bool) -> None:
    """Leave the target as it was: emptied, and removed when stage-in created it."""
    _empty(target)
    if not existed:
        shutil.rmtree(target, ignore_errors=True)


def _key_hint(uri: str, cred: Key | None) -> str:
    """Why a webdav key's credentials were not sent to a host that refused access, if that is why."""
    if cred is None or cred.type != "webdav":
        return ""
    endpoint = str(cred.config.endpoint)  # type: ignore[union-attr]
    if http.origin(uri.removeprefix("stac+")) == http.origin(endpoint):
        return ""
    return (f"key {cred.name!r} is for {public_url(endpoint)}, so its credentials were not sent to "
            f"{urlsplit(uri.removeprefix('stac+')).hostname} (they go only to the key's scheme, host and port)")


def _dispatch(uri: str, scheme: str, target: Path, cred: Key | None, opts: StageOptions) -> FeatureCollection:
    if scheme == "file":
        return _stage_local(_local_path(uri), target, cred, opts)
    if scheme in ("stac+http", "stac+https"):
        return _stage_stac_url(uri[len("stac+"):], target, cred, opts, force=True)
    if scheme in ("http", "https"):
        return _stage_stac_url(uri, target, cred, opts, force=False)
    if scheme in ("s3", "stac+s3"):
        return _stage_s3(uri.removeprefix("stac+"), target, cred, opts)
    return _stage_webdav(uri, target, cred, opts)


def _scheme(uri: str) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise UnsupportedURI("empty URI; give a path, http(s)://, stac+http(s)://, s3:// or webdav(s):// URI")
    if uri.startswith("/") or uri.startswith("./") or uri.startswith("../") or "://" not in uri:
        if ":" in uri.split("/", 1)[0] and not uri.startswith("/"):
            raise UnsupportedURI(f"{uri!r}: unknown scheme; use one of {', '.join(SCHEMES)}")
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise UnsupportedURI(f"{public_url(uri)!r}: unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if scheme not in ("file", "s3", "stac+s3") and not urlsplit(uri.replace("stac+", "", 1)).hostname:
        raise UnsupportedURI(f"{public_url(uri)!r}: no host in the URI")
    return scheme


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedURI(f"{uri!r}: file URIs must be local (file:///path)")
        return Path(unquote(parts.path))
    return Path(uri).expanduser()


def _load_key(keystore: Keystore | None, key: str | None) -> Key | None:
    if not key:
        return None
    return (keystore or Keystore.from_env()).get(key)


# --- local and workspace paths --------------------------------------------------------------


def _link_or_copy(src: str, dst: str) -> str:
    # Hard links cost no bytes; across filesystems fall back to a copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _stage_local(src: Path, target: Path, cred: Key | None, opts: StageOptions) -> FeatureCollection:
    if not src.exists():
        raise StorageError(f"{src} does not exist; check the path (workspace paths look like /workspace/pv-<ws>-workspace/...)")
    root = src.resolve()
    if root == target.resolve() or root in target.resolve().parents:
        raise StorageError(f"cannot stage {src} into its own subfolder {target}")
    if src.is_file() and src.suffix.lower() in (".json", ".geojson") and src.stat().st_size <= http.MAX_JSON_BYTES:
        doc = _parse_json(src.read_bytes())
        if is_stac(doc):
            # a catalog.json (e.g. what stage-out printed): only what it links, from inside its folder
            return _stage_stac(doc, root.as_uri(), target, _Sources(cred, opts, local_root=root.parent), opts)
    if src.is_file():
        dest = target / check_component(src.name, "file name")
        _link_or_copy(str(src), str(dest))
        return _finish(target)
    _check_symlinks(root)
    for child in src.iterdir():
        dest = target / child.name
        if child.is_dir():
            shutil.copytree(child, dest, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(child), str(dest))
    return _finish(target)


def _check_symlinks(root: Path) -> None:
    """Refuse symlinks that leave root, and folder symlinks that lead back into a folder holding them (the
    copy, which follows links, would never end); walked as the copy walks, links followed."""

    # How often the copy would enter each folder: links may lead to one twice (`latest -> v2`), but links
    # that fan out, level after level, would copy the deepest ones 2^levels times.
    reached: dict[Path, int] = {}

    def walk(folder: Path, above: frozenset[Path]) -> None:
        for p in sorted(folder.iterdir()):
            link = p.is_symlink()
            if not link and not p.is_dir():
                continue  # a plain file: nothing to follow
            try:
                real = p.resolve(strict=link)
            except (OSError, RuntimeError):  # a link to itself or a chain of links that loops; a dangling one
                raise UnsafePath(f"{p} is a symlink that loops or leads nowhere; refusing to follow it") from None
            if link and real != root and root not in real.parents:
                raise UnsafePath(f"{p} is a symlink to {real}, outside {root}; refusing to follow it")
            if p.is_dir():
                if real in above:
                    raise UnsafePath(f"{p} is a symlink to {real}, a folder that holds it (a loop); refusing it")
                reached[real] = reached.get(real, 0) + 1
                if reached[real] > MAX_FOLDER_COPIES:
                    raise UnsafePath(f"{p} leads to {real}, a folder the copy would reach more than "
                                     f"{MAX_FOLDER_COPIES} times through symlinks; refusing it")
                walk(p, above | {real})

    walk(root, frozenset({root}))


# --- describing a staged folder --------------------------------------------------------------


def _finish(target: Path) -> FeatureCollection:
    """data.json as is, else features from catalog.json, else generated features; written atomically."""
    if (target / DATA_JSON).is_file():
        return load_data_json(target, required=False)
    if (target / "catalog.json").is_file():
        fc = features_from_catalog(target)
    else:
        fc = FeatureCollection([_file_feature(target, p) for p in sorted(target.iterdir()) if not p.name.startswith(".")])
    if not fc.features:
        raise StorageError(f"nothing was staged into {target}: the source is empty")
    write_data_json(target, fc)
    return fc


def _file_feature(root: Path, path: Path) -> dict[str, Any]:
    rel = path.relative_to(root).as_posix()
    feature: dict[str, Any] = {"type": "Feature", "id": path.stem if path.is_file() else path.name,
                               "geometry": None, "properties": {DATA_PATH: rel}}
    footprint = _raster_footprint(path) if path.is_file() and path.suffix.lower() in RASTER_SUFFIXES else None
    if footprint:
        feature["geometry"], feature["bbox"] = footprint
    return feature


def _raster_footprint(path: Path) -> tuple[dict[str, Any], list[float]] | None:
    try:
        import rasterio
        from rasterio.warp import transform_bounds

        with rasterio.open(path) as ds:
            if ds.crs is None:
                return None
            w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    except Exception:  # noqa: BLE001 - not a raster GDAL can read: no footprint, still a feature
        return None
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    return {"type": "Polygon", "coordinates": [ring]}, [w, s, e, n]


# --- HTTP and STAC ---------------------------------------------------------------------------


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


class _Sources:
    """Where the documents and assets of one stage-in come from: an http session (a webdav key's credentials
    scoped to its endpoint), S3 clients (botocore retries off: transfer.with_retries is the one place), and
    local files inside `local_root` for a local catalog."""

    def __init__(self, cred: Key | None, opts: StageOptions, local_root: Path | None = None) -> None:
        self.cred, self.opts, self.local_root = cred, opts, local_root
        self._session: Any = None
        self._s3: dict[str | None, Any] = {}
        self.json_bytes = 0  # of every JSON document read: they stay parsed until the walk ends

    @property
    def session(self) -> Any:
        """The http session (made on first use)."""
        if self._session is None:
            dav_key = self.cred if self.cred is not None and self.cred.type == "webdav" else None
            self._session = webdav.session_for(dav_key, self.opts.workers)
        return self._session

    def s3_client(self, region: str | None) -> Any:
        """An S3 client for a region: the s3 key's, else anonymous (at --endpoint when given)."""
        if region not in self._s3:
            key = self.cred if self.cred is not None and self.cred.type == "s3" else None
            self._s3[region] = s3.s3_client(key, region=region, max_pool=max(self.opts.workers, 4),
                                            endpoint=self.opts.endpoint, retries=False, watched=True)
        return self._s3[region]

    def _local(self, url: str) -> Path:
        path = Path(unquote(urlsplit(url).path))
        root = self.local_root
        if root is None:
            raise UnsafePath(f"{url!r}: a remote catalog may not point at local files")
        real = path.resolve()
        if real != root and root not in real.parents:
            raise UnsafePath(f"{path} is outside the catalog's folder {root}; refusing to read it")
        return path

    def get_json(self, url: str) -> Any:
        """A (small) JSON document by URL."""
        scheme = urlsplit(url).scheme
        if scheme in ("http", "https"):
            body, _ = http.get_bytes(self.session, url, self.opts.retry)
        elif scheme == "s3":
            loc = s3.parse_s3_uri(url)
            body = s3.get_small(self.s3_client(loc.region), loc, http.MAX_JSON_BYTES, self.opts.retry)
        elif scheme == "file":
            path = self._local(url)
            if not path.is_file():
                raise StorageError(f"{path} does not exist; the catalog links a missing file")
            body = path.read_bytes()[: http.MAX_JSON_BYTES + 1]
        else:
            raise UnsafePath(f"{public_url(url)}: not an http(s), s3 or local document; refusing it")
        if len(body) > http.MAX_JSON_BYTES:
            raise TooLarge(f"{public_url(url)}: more than {http.MAX_JSON_BYTES} bytes; not a STAC document")
        self.json_bytes += len(body)
        if self.json_bytes > MAX_DOCUMENT_BYTES:
            raise TooLarge(f"{public_url(url)}: the STAC documents read add up to more than "
                           f"{MAX_DOCUMENT_BYTES >> 20} MiB; stage in a smaller catalog")
        doc = _parse_json(body)
        if doc is None:
            raise StorageError(f"{public_url(url)}: not JSON")
        return doc

    def opener(self, url: str) -> Any:
        """An opener for transfer.Download by the URL's scheme."""
        scheme = urlsplit(url).scheme
        if scheme in ("http", "https"):
            return http.opener(self.session, url)
        if scheme == "s3":
            loc = s3.parse_s3_uri(url)
            return s3.opener(self.s3_client(loc.region), loc.bucket, loc.key)
        path = self._local(url)

        def open_local() -> tuple[int | None, Any]:
            if not path.is_file():
                raise StorageError(f"{path} does not exist; the catalog links a missing file")
            return path.stat().st_size, iter_file(path)

        return open_local


def _looks_like_json(url: str, content_type: str) -> bool:
    path = urlsplit(url).path.lower()
    return path.endswith(".json") or path.endswith(".geojson") or "json" in content_type.lower()


def _stage_stac_url(url: str, target: Path, cred: Key | None, opts: StageOptions, *, force: bool) -> FeatureCollection:
    sources = _Sources(cred, opts)
    sess = sources.session
    doc: Any = None
    path = urlsplit(url).path.lower()
    if force or path.endswith((".json", ".geojson")) or "json" in http.content_type(sess, url):
        try:
            body, ctype = http.get_bytes(sess, url, opts.retry)
        except TooLarge:
            if force:
                raise
            body, ctype = b"", ""  # a big .json file: fetched below as a plain file, within the file limits
        if body and _looks_like_json(url, ctype) or force:
            doc = _parse_json(body)
            if doc is None and force:
                raise StorageError(f"{public_url(url)}: not a STAC JSON document")
        if force and not is_stac(doc):
            raise StorageError(f"{public_url(url)}: not a STAC Item, Catalog, Collection or ItemCollection")
    if doc is not None and is_stac(doc):
        return _stage_stac(doc, url, target, sources, opts)
    return _stage_http_file(url, target, sess, opts)


def _stage_http_file(url: str, target: Path, sess: Any, opts: StageOptions) -> FeatureCollection:
    name = unquote(posixpath.basename(urlsplit(url).path.rstrip("/"))) or "download"
    dest = target / check_component(name, "file name from the URL")
    download_all([Download(public_url(url), dest, http.opener(sess, url))], workers=1, policy=opts.retry,
                 progress=opts.progress, limits=opts.limits)
    return _finish(target)


def _stage_stac(doc: Any, url: str, target: Path, sources: _Sources, opts: StageOptions) -> FeatureCollection:
    items = stac.collect_items(doc, url, sources.get_json)
    # remote-ness per item: a remote document under a local catalog may not point at local files either
    planned = [stac.plan_item(it, target, remote_source=urlsplit(it.base).scheme != "file") for it in items]
    stac.check_unique_ids(planned)  # before a single byte is downloaded
    tasks = []
    for p in planned:
        for f in p.fetches:
            safe_join(target, f.dest.relative_to(target).as_posix(), "asset path")
            label = f"item {f.item_id!r} asset {f.key!r} ({public_url(f.href)})"
            tasks.append(Download(label, f.dest, sources.opener(f.href), f.size, f.checksums))
    download_all(tasks, workers=opts.workers, policy=opts.retry, progress=opts.progress,
                 description="STAC assets:", limits=opts.limits)
    title = doc.get("description") or doc.get("title") or f"staged from {public_url(url)}"
    features = stac.write_layout(target, planned, description=str(title))
    fc = FeatureCollection(features)
    write_data_json(target, fc)
    return fc


def _empty(target: Path) -> None:
    if not target.is_dir():
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# --- S3 ----------------------------------------------------------------------------------------


def _stage_s3(uri: str, target: Path, cred: Key | None, opts: StageOptions) -> FeatureCollection:
    loc = s3.parse_s3_uri(uri)
    if cred is not None and cred.type != "s3":
        raise WrongKeyType(f"key {cred.name!r} is a {cred.type} key; an s3 key is needed for {uri}")
    sources = _Sources(cred, opts)
    client = sources.s3_client(loc.region)
    objects = s3.list_objects(client, loc, opts.retry)
    single = len(objects) == 1 and objects[0].key == loc.key
    if single and loc.key.lower().endswith((".json", ".geojson")) and objects[0].size <= http.MAX_JSON_BYTES:
        doc = _parse_json(s3.get_small(client, loc, http.MAX_JSON_BYTES, opts.retry))
        if is_stac(doc):  # e.g. the catalog.json stage-out printed: stage what it links
            return _stage_stac(doc, f"s3://{loc.bucket}/{loc.key}", target, sources, opts)
    if single:
        rels = [posixpath.basename(loc.key)]
    else:
        prefix = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"
        rels = [o.key[len(prefix):] for o in objects]
    tasks = []
    for obj, rel in zip(objects, rels):
        dest = safe_join(target, rel, f"s3 key {obj.key!r}")
        md5 = obj.md5()
        tasks.append(Download(f"s3://{loc.bucket}/{obj.key}", dest, s3.opener(client, loc.bucket, obj.key),
                              obj.size, {"md5": md5} if md5 else {}))
    download_all(tasks, workers=opts.workers, policy=opts.retry, progress=opts.progress, description="s3:",
                 limits=opts.limits)
    return _finish(target)


# --- WebDAV ------------------------------------------------------------------------------------


def _stage_webdav(uri: str, target: Path, cred: Key | None, opts: StageOptions) -> FeatureCollection:
    url = webdav.http_url(uri)
    if cred is not None and cred.type != "webdav":
        raise WrongKeyType(f"key {cred.name!r} is a {cred.type} key; a webdav key is needed for {public_url(url)}")
    sources = _Sources(cred, opts)
    sess = sources.session
    entries = webdav.walk(sess, url, opts.retry)
    if not entries:
        raise StorageError(f"{public_url(url)}: the folder is empty; nothing to stage in")
    if len(entries) == 1 and entries[0].url == url and url.lower().endswith((".json", ".geojson")):
        body, _ = http.get_bytes(sess, url, opts.retry)
        doc = _parse_json(body)
        if is_stac(doc):  # e.g. the catalog.json stage-out printed: stage what it links
            return _stage_stac(doc, url, target, sources, opts)
    tasks = [Download(public_url(e.url), safe_join(target, e.relative, "WebDAV path"), http.opener(sess, e.url), e.size)
             for e in entries]
    download_all(tasks, workers=opts.workers, policy=opts.retry, progress=opts.progress, description="webdav:",
                 limits=opts.limits)
    return _finish(target)


__all__ = ["StageOptions", "stage_in"]
