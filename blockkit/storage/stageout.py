"""Stage-out: publish a folder's data.json outputs as a STAC catalog on a local folder, S3 or WebDAV.

A target that already holds files (a folder with entries, an S3 prefix with objects, a WebDAV collection
with members) is refused with TargetNotEmpty unless `overwrite=True`: results are never replaced silently.
Items are written with `blockkit.stac` (pystac), the same model as output catalogs and stage-in.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
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
from blockkit.stac import folder_name, media_type
from blockkit.stac.writer import FILE_EXTENSION, catalog_dict, output_item
from blockkit.storage import s3, webdav
from blockkit.storage.errors import (
    NoOutputError,
    StorageError,
    TargetNotEmpty,
    UnsafePath,
    UnsupportedURI,
    WrongKeyType,
)
from blockkit.storage.keystore import Key, Keystore
from blockkit.storage.transfer import Progress, RetryPolicy, public_url

log = logging.getLogger("blockkit.storage")
MULTIPART_THRESHOLD = 64 * 1024 * 1024
CATALOG_ID = "catalog"


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
    overwrite: bool = False,
) -> str:
    """Upload every file data.json links to `<uri>/<item id>/<file>`, write items and catalog.json; return its URI.

    A target that already holds files is refused (TargetNotEmpty) unless overwrite: then files of the same
    name are replaced and other files stay.
    """
    source = Path(source_dir)
    items = collect_outputs(source)
    cred = (keystore or Keystore.from_env()).get(key) if key else None
    desc = description or f"outputs staged out from {source.name or source}"
    scheme = _target_scheme(uri, cred)
    log.info("stage-out %s -> %s (%d items, %d files)", source, public_url(uri), len(items),
             sum(len(i.files) for i in items))
    if scheme == "file":
        return _to_local(items, _local_target(uri), desc, overwrite)
    if scheme == "s3":
        return _to_s3(items, uri, cred, desc, workers, progress, multipart_threshold, overwrite)
    return _to_webdav(items, uri, cred, desc, workers, progress, retry or RetryPolicy(), overwrite)


def _not_empty(where: str) -> TargetNotEmpty:
    return TargetNotEmpty(
        f"{where} already holds files; stage out to a new folder or prefix, or pass --overwrite to replace them"
    )


def check_target(uri: str, *, keystore: Keystore | None = None, key: str | None = None,
                 retry: RetryPolicy | None = None) -> None:
    """Raise TargetNotEmpty when a stage-out to `uri` would need --overwrite (a runner checks before running)."""
    cred = (keystore or Keystore.from_env()).get(key) if key else None
    scheme = _target_scheme(uri, cred)
    if scheme == "file":
        _check_local_empty(_local_target(uri))
    elif scheme == "s3":
        loc = s3.parse_s3_uri(uri)
        if cred is None:
            raise StorageError(f"stage-out to {uri} needs a keystore key with write access: --key NAME")
        _check_s3_empty(s3.s3_client(cred, region=loc.region), loc)
    else:
        _check_webdav_empty(_webdav_session(cred, 1), webdav.http_url(uri).rstrip("/"), retry or RetryPolicy())


def _check_local_empty(target: Path) -> None:
    if target.is_dir() and any(target.iterdir()):
        raise _not_empty(str(target))


def _check_s3_empty(client: Any, loc: s3.S3Location) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = loc.key.strip("/")
    try:
        listed = client.list_objects_v2(Bucket=loc.bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except (ClientError, BotoCoreError) as exc:
        raise s3.s3_error(exc, f"s3://{loc.bucket}/{prefix}") from exc
    if listed.get("KeyCount") or listed.get("Contents"):
        raise _not_empty(f"s3://{loc.bucket}/{prefix + '/' if prefix else ''}")


def _webdav_session(cred: Key | None, workers: int) -> Any:
    from blockkit.storage import http

    auth = None
    if cred is not None:
        conf = cred.config
        auth = http.ScopedBasicAuth(conf.username, conf.password, conf.endpoint, cred.name)  # type: ignore[union-attr, arg-type]
    return http.session(auth, pool=max(workers, 4))


def _check_webdav_empty(sess: Any, base: str, retry: RetryPolicy) -> None:
    from blockkit.storage.errors import SourceNotFound

    try:
        members = webdav.members(sess, base + "/", retry)
    except SourceNotFound:
        return
    if members:
        raise _not_empty(public_url(base + "/"))


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
    base = str(raw) if raw not in (None, "") else (Path(data_path).stem if data_path else "")
    return folder_name(base, index, used)  # the one id -> folder rule (blockkit.stac)


def _output_file(path: Path, relative: str, root: Path) -> OutputFile:
    real = path.resolve()
    if root not in real.parents:
        raise UnsafePath(f"{path} resolves outside the output folder; refusing to publish it")
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return OutputFile(real, relative, real.stat().st_size, h.hexdigest())


def stac_item(item: OutputItem, now: dt.datetime | None = None) -> dict[str, Any]:
    """The STAC item (JSON) of an output: feature geometry and properties, assets with relative hrefs."""
    assets: dict[str, Any] = {}
    for f in item.files:
        key = f.relative if f.relative not in assets else f"{f.relative}-{len(assets)}"
        assets[key] = {
            "href": "./" + quote(f.relative),
            "type": media_type(f.relative),
            "roles": ["data"],
            "file:size": f.size,
            "file:checksum": "1220" + f.sha256,
        }
    return output_item(item.id, item.feature, assets, extensions=[FILE_EXTENSION], now=now)


def stac_catalog(items: list[OutputItem], description: str) -> dict[str, Any]:
    """The catalog.json linking every item by a relative href."""
    return catalog_dict([f"./{i.id}/{i.id}.json" for i in items], description, CATALOG_ID)


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


def _to_local(items: list[OutputItem], target: Path, description: str, overwrite: bool) -> str:
    if target.exists() and not target.is_dir():
        raise StorageError(f"{target} is a file; stage out to a folder")
    if not overwrite:
        _check_local_empty(target)
    target.mkdir(parents=True, exist_ok=True)
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
           threshold: int, overwrite: bool) -> str:
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

    if not overwrite:
        _check_s3_empty(client, loc)

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
            extra = {"ContentType": media_type(rel)}
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
               retry: RetryPolicy, overwrite: bool) -> str:
    base = webdav.http_url(uri).rstrip("/")
    sess = _webdav_session(cred, workers)
    if not overwrite:
        _check_webdav_empty(sess, base, retry)
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
