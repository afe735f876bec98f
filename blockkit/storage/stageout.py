"""Stage-out: publish a folder's data.json outputs as a STAC catalog on a local folder, S3 or WebDAV."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import mimetypes
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from blockkit.contract.datajson import DATA_PATH, load_data_json
from blockkit.storage import s3, webdav
from blockkit.storage.errors import NoOutputError, StorageError, UnsafePath, UnsupportedURI, WrongKeyType
from blockkit.storage.keystore import Key, Keystore
from blockkit.storage.transfer import Progress, RetryPolicy, public_url

log = logging.getLogger("blockkit.storage")
MULTIPART_THRESHOLD = 64 * 1024 * 1024
CATALOG_ID = "catalog"
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
_MEDIA = {
    ".tif": "image/tiff; application=geotiff",
    ".tiff": "image/tiff; application=geotiff",
    ".json": "application/json",
    ".geojson": "application/geo+json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jp2": "image/jp2",
    ".nc": "application/netcdf",
    ".xml": "application/xml",
}


@dataclass
class OutputFile:
    """A file to publish: local path and its path under the item folder."""

    path: Path
    relative: str
    size: int
    sha256: str = ""


@dataclass
class OutputItem:
    """One feature of data.json as a STAC item with its files."""

    id: str
    feature: dict[str, Any]
    files: list[OutputFile] = field(default_factory=list)


def stage_out(
    source_dir: Path | str,
    uri: str,
    *,
    keystore: Keystore | None = None,
    key: str | None = None,
    progress: bool = True,
    workers: int = 8,
    retry: RetryPolicy | None = None,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    description: str | None = None,
) -> str:
    """Upload every file data.json links to `<uri>/<item id>/<file>`, write items and catalog.json; return its URI."""
    source = Path(source_dir)
    items = collect_outputs(source)
    cred = (keystore or Keystore.from_env()).get(key) if key else None
    desc = description or f"outputs staged out from {source.name or source}"
    scheme = _target_scheme(uri, cred)
    log.info("stage-out %s -> %s (%d items, %d files)", source, public_url(uri), len(items),
             sum(len(i.files) for i in items))
    if scheme == "file":
        return _to_local(items, _local_target(uri), desc)
    if scheme == "s3":
        return _to_s3(items, uri, cred, desc, workers, progress, multipart_threshold)
    return _to_webdav(items, uri, cred, desc, workers, progress, retry or RetryPolicy())


# --- reading the outputs ---------------------------------------------------------------------


def collect_outputs(source: Path) -> list[OutputItem]:
    """The items to publish; an output without features or files is a NoOutputError."""
    fc = load_data_json(source, required=False)
    if not fc.features:
        raise NoOutputError(f"no output: {source / 'data.json'} has no features; nothing to stage out")
    items: list[OutputItem] = []
    used: set[str] = set()
    root = source.resolve()
    for index, feature in enumerate(fc.features):
        data_path = (feature.get("properties") or {}).get(DATA_PATH)
        item_id = _item_id(feature, data_path, index, used)
        item = OutputItem(item_id, feature)
        if data_path:
            target = (source / data_path)
            if target.is_dir():
                for dirpath, _dirs, files in os.walk(target):
                    for name in sorted(files):
                        p = Path(dirpath) / name
                        item.files.append(_output_file(p, p.relative_to(target).as_posix(), root))
            else:
                item.files.append(_output_file(target, target.name, root))
        items.append(item)
    if not any(i.files for i in items):
        raise NoOutputError(f"no output: no feature of {source / 'data.json'} links a file (up42.data_path)")
    return items


def _item_id(feature: dict[str, Any], data_path: str | None, index: int, used: set[str]) -> str:
    raw = feature.get("id")
    base = str(raw) if raw not in (None, "") else (Path(data_path).stem if data_path else f"feature-{index}")
    item_id = _UNSAFE_ID.sub("_", base).strip("._") or f"feature-{index}"
    candidate, n = item_id, 1
    while candidate in used:
        n += 1
        candidate = f"{item_id}-{n}"
    used.add(candidate)
    return candidate


def _output_file(path: Path, relative: str, root: Path) -> OutputFile:
    real = path.resolve()
    if root not in real.parents:
        raise UnsafePath(f"{path} resolves outside the output folder; refusing to publish it")
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return OutputFile(real, relative, real.stat().st_size, h.hexdigest())


def _bbox(geometry: Any) -> list[float] | None:
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: Any) -> None:
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        elif isinstance(c, (list, tuple)):
            for x in c:
                walk(x)

    if isinstance(geometry, dict):
        if geometry.get("type") == "GeometryCollection":
            for g in geometry.get("geometries") or []:
                walk(g.get("coordinates"))
        else:
            walk(geometry.get("coordinates"))
    return [min(xs), min(ys), max(xs), max(ys)] if xs else None


def stac_item(item: OutputItem, now: dt.datetime | None = None) -> dict[str, Any]:
    """The STAC item (JSON) of an output: feature geometry and properties, assets with relative hrefs."""
    props = {k: v for k, v in (item.feature.get("properties") or {}).items() if k != DATA_PATH}
    if not props.get("datetime") and not (props.get("start_datetime") and props.get("end_datetime")):
        props["datetime"] = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assets: dict[str, Any] = {}
    for f in item.files:
        key = f.relative if f.relative not in assets else f"{f.relative}-{len(assets)}"
        suffix = Path(f.relative).suffix.lower()
        assets[key] = {
            "href": "./" + quote(f.relative),
            "type": _MEDIA.get(suffix) or mimetypes.guess_type(f.relative)[0] or "application/octet-stream",
            "roles": ["data"],
            "file:size": f.size,
            "file:checksum": "1220" + f.sha256,
        }
    geometry = item.feature.get("geometry")
    out: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/file/v2.1.0/schema.json"],
        "id": item.id,
        "geometry": geometry,
        "properties": props,
        "links": [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
        ],
        "assets": assets,
    }
    bbox = item.feature.get("bbox") or _bbox(geometry)
    if geometry is not None and bbox:
        out["bbox"] = bbox
    return out


def stac_catalog(items: list[OutputItem], description: str) -> dict[str, Any]:
    """The catalog.json linking every item by a relative href."""
    return {
        "type": "Catalog",
        "id": CATALOG_ID,
        "stac_version": "1.0.0",
        "description": description,
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
        + [{"rel": "item", "href": f"./{i.id}/{i.id}.json", "type": "application/geo+json"} for i in items],
    }


def _documents(items: list[OutputItem], description: str) -> list[tuple[str, bytes, str]]:
    # Items first, catalog.json last: once the catalog is there, everything it links is there too.
    docs = [(f"{i.id}/{i.id}.json", json.dumps(stac_item(i), indent=2).encode(), "application/geo+json")
            for i in items]
    docs.append(("catalog.json", json.dumps(stac_catalog(items, description), indent=2).encode(), "application/json"))
    return docs


def _uploads(items: list[OutputItem]) -> list[tuple[OutputFile, str]]:
    return [(f, f"{i.id}/{f.relative}") for i in items for f in i.files]


# --- targets ------------------------------------------------------------------------------------


def _target_scheme(uri: str, cred: Key | None) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise UnsupportedURI("empty stage-out target; give a folder, s3:// or webdav(s):// URI")
    if "://" not in uri:
        if ":" in uri.split("/", 1)[0]:
            raise UnsupportedURI(f"{uri!r}: unknown scheme; use a folder, file://, s3:// or webdav(s)://")
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        return "file"
    if scheme == "s3":
        if cred is not None and cred.type != "s3":
            raise WrongKeyType(f"key {cred.name!r} is a {cred.type} key; an s3 key is needed for {uri}")
        return "s3"
    if scheme in ("webdav", "webdavs") or (scheme in ("http", "https") and cred is not None and cred.type == "webdav"):
        if cred is not None and cred.type != "webdav":
            raise WrongKeyType(f"key {cred.name!r} is a {cred.type} key; a webdav key is needed for {public_url(uri)}")
        if not urlsplit(uri).hostname:
            raise UnsupportedURI(f"{public_url(uri)!r}: no host in the URI")
        return "webdav"
    raise UnsupportedURI(
        f"{public_url(uri)!r}: cannot stage out to {scheme}://; use a folder, s3:// or webdav(s):// (http(s) with a webdav key)"
    )


def _local_target(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(unquote(urlsplit(uri).path))
    return Path(uri).expanduser()


def _to_local(items: list[OutputItem], target: Path, description: str) -> str:
    if (target / "catalog.json").exists():
        raise StorageError(f"{target} already holds a catalog.json; stage out to a new folder")
    root = target.resolve()
    for f, rel in _uploads(items):
        dest = target / rel
        if root not in dest.resolve().parents:
            raise UnsafePath(f"{rel!r} would write outside {target}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(f.path, tmp)
        os.replace(tmp, dest)
    for rel, data, _ in _documents(items, description):
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        tmp = target / (rel + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, target / rel)
    return str((target / "catalog.json").absolute())


def _parallel(fn: Callable[[Any], Any], jobs: list[Any], workers: int) -> None:
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            fn(j)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blockkit-ul") as pool:
        for _ in pool.map(fn, jobs):
            pass


def _to_s3(items: list[OutputItem], uri: str, cred: Key | None, description: str, workers: int, progress: bool,
           threshold: int) -> str:
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    loc = s3.parse_s3_uri(uri)
    if cred is None:
        raise StorageError(f"stage-out to {uri} needs a keystore key with write access: --key NAME")
    client = s3.s3_client(cred, region=loc.region, max_pool=max(workers * 2, 10))
    config = TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(8 * 1024 * 1024, threshold // 8),
                            max_concurrency=4)
    prefix = loc.key.strip("/")

    def key_of(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    def _raise(exc: Exception, what: str) -> None:
        if isinstance(exc, S3UploadFailedError):
            found = re.search(r"An error occurred \((\w+)\)", str(exc))
            code = found.group(1) if found else ""
            from blockkit.storage.errors import AccessDenied, TransferFailed

            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise AccessDenied(f"{what}: {code}; the key needs write access to this bucket") from exc
            if code == "NoSuchBucket":
                raise StorageError(f"{what}: the bucket does not exist; create it first") from exc
            raise TransferFailed(f"{what}: {code or type(exc).__name__}") from exc
        raise s3.s3_error(exc, what) from exc

    total = sum(f.size for f, _ in _uploads(items))
    with Progress(progress, total, f"uploading to s3://{loc.bucket}") as bar:
        def upload(job: tuple[OutputFile, str]) -> None:
            f, rel = job
            k = key_of(rel)
            extra = {"ContentType": _MEDIA.get(Path(rel).suffix.lower(), "application/octet-stream")}
            try:
                client.upload_file(str(f.path), loc.bucket, k, ExtraArgs=extra, Config=config,
                                   Callback=bar.advance)
            except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
                _raise(exc, f"s3://{loc.bucket}/{k}")

        _parallel(upload, _uploads(items), workers)
    for rel, data, ctype in _documents(items, description):
        k = key_of(rel)
        try:
            client.put_object(Bucket=loc.bucket, Key=k, Body=data, ContentType=ctype)
        except (ClientError, BotoCoreError) as exc:
            _raise(exc, f"s3://{loc.bucket}/{k}")
    return f"s3://{loc.bucket}/{key_of('catalog.json')}"


def _to_webdav(items: list[OutputItem], uri: str, cred: Key | None, description: str, workers: int, progress: bool,
               retry: RetryPolicy) -> str:
    from blockkit.storage import http

    base = webdav.http_url(uri).rstrip("/")
    auth = (cred.config.username, cred.config.password) if cred is not None else None  # type: ignore[union-attr]
    sess = http.session(auth, pool=max(workers, 4))
    made: set[str] = set()
    base_path = urlsplit(base).path
    # the target folder itself, then every item folder (MKCOL is not recursive)
    scheme_host = base[: len(base) - len(base_path)] if base_path else base
    webdav.mkcol_tree(sess, scheme_host, base_path, retry, made)
    dirs = sorted({str(Path(rel).parent) for _, rel in _uploads(items)} | {i.id for i in items})
    for d in dirs:
        webdav.mkcol_tree(sess, base, d, retry, made)
    total = sum(f.size for f, _ in _uploads(items))
    with Progress(progress, total, f"uploading to {public_url(base)}") as bar:
        def put(job: tuple[OutputFile, str]) -> None:
            f, rel = job
            webdav.put_file(sess, f"{base}/{quote(webdav.ensure_safe(rel))}", f.path, retry)
            bar.advance(f.size)

        _parallel(put, _uploads(items), workers)
    for rel, data, ctype in _documents(items, description):
        webdav.put_bytes(sess, f"{base}/{quote(rel)}", data, retry, ctype)
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{base_path}/catalog.json"
