"""Stage-out: publish a folder's data.json outputs as a STAC catalog on a local folder, S3 or WebDAV.

This module reads the outputs, builds the STAC documents and picks the target; the uploads live
beside their stage-in twins (`s3.upload`, `webdav.upload`), the local copy here.

A target that already holds files (a folder with entries, an S3 prefix with objects, a WebDAV collection
with members) is refused with TargetNotEmpty unless `overwrite=True`: results are never replaced silently.
Items are written with `blockkit.stac` (pystac), the same model as output catalogs and stage-in.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from blockkit.contract._datajson import DATA_PATH, load_data_json
from blockkit.stac import folder_name, media_type
from blockkit.stac._writer import FILE_EXTENSION, catalog_dict, output_item
from blockkit.storage import _s3 as s3, _webdav as webdav
from blockkit.storage._errors import NoOutputError, StorageError, UnsafePath, UnsupportedURI, WrongKeyType
from blockkit.storage._keystore import Key, Keystore
from blockkit.storage._transfer import Document, RetryPolicy, Upload, public_url, target_not_empty

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

    Args:
        source_dir: the folder with data.json and the files its features link (`up42.data_path`).
        uri: the target: a folder (or file:// URI), `s3://bucket/prefix` or `webdav(s)://host/path`.
        keystore: where `key` is looked up (default: the keystore of the environment).
        key: the name of the keystore key with write access (needed for S3; WebDAV without auth needs none).
        progress: show a progress bar over the bytes on stderr.
        workers: files uploaded at once.
        retry: retries of each WebDAV request (S3 retries in botocore).
        multipart_threshold: file size in bytes from which S3 uploads go in parts.
        description: the catalog's description (default: names the source folder).
        overwrite: replace files of the same name in a target that already holds files.
    """
    source = Path(source_dir)
    items = collect_outputs(source)
    cred = (keystore or Keystore.from_env()).get(key) if key else None
    desc = description or f"outputs staged out from {source.name or source}"
    scheme = _target_scheme(uri, cred)
    log.info("stage-out %s -> %s (%d items, %d files)", source, public_url(uri), len(items),
             sum(len(i.files) for i in items))
    uploads, documents = _uploads(items), _documents(items, desc)
    if scheme == "file":
        return _to_local(uploads, documents, _local_target(uri), overwrite)
    if scheme == "s3":
        return s3.upload(_write_key(cred, uri), s3.parse_s3_uri(uri), uploads, documents, workers=workers,
                         progress=progress, multipart_threshold=multipart_threshold, overwrite=overwrite)
    return webdav.upload(cred, uri, uploads, documents, workers=workers, progress=progress,
                         policy=retry or RetryPolicy(), overwrite=overwrite)


def check_target(uri: str, *, keystore: Keystore | None = None, key: str | None = None,
                 retry: RetryPolicy | None = None) -> None:
    """Raise TargetNotEmpty when a stage-out to `uri` would need --overwrite (a runner checks before running).

    Args:
        uri: the stage-out target, as for `stage_out`.
        keystore: where `key` is looked up (default: the keystore of the environment).
        key: the keystore key that lists the target (needed for S3).
        retry: retries of the WebDAV listing.
    """
    cred = (keystore or Keystore.from_env()).get(key) if key else None
    scheme = _target_scheme(uri, cred)
    if scheme == "file":
        _check_local_empty(_local_target(uri))
    elif scheme == "s3":
        loc = s3.parse_s3_uri(uri)
        s3.check_empty(s3.s3_client(_write_key(cred, uri), region=loc.region), loc)
    else:
        webdav.check_empty(webdav.session_for(cred, 1), webdav.http_url(uri).rstrip("/"), retry or RetryPolicy())


def _write_key(cred: Key | None, uri: str) -> Key:
    if cred is None:
        raise StorageError(f"stage-out to {uri} needs a keystore key with write access: --key NAME")
    return cred


def _check_local_empty(target: Path) -> None:
    if target.is_dir() and any(target.iterdir()):
        raise target_not_empty(str(target))


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


def _documents(items: list[OutputItem], description: str) -> list[Document]:
    # Items first, catalog.json last: once the catalog is there, everything it links is there too.
    docs = [Document(f"{i.id}/{i.id}.json", json.dumps(stac_item(i), indent=2).encode(), "application/geo+json")
            for i in items]
    docs.append(Document("catalog.json", json.dumps(stac_catalog(items, description), indent=2).encode(),
                         "application/json"))
    return docs


def _uploads(items: list[OutputItem]) -> list[Upload]:
    return [Upload(f.path, f"{i.id}/{f.relative}", f.size, media_type(f.relative)) for i in items for f in i.files]


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


def _to_local(uploads: list[Upload], documents: list[Document], target: Path, overwrite: bool) -> str:
    if target.exists() and not target.is_dir():
        raise StorageError(f"{target} is a file; stage out to a folder")
    if not overwrite:
        _check_local_empty(target)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    for job in uploads:
        dest = _local_dest(target, job.relative)
        if root not in dest.resolve().parents:
            raise UnsafePath(f"{job.relative!r} would write outside {target}")
        _replace(dest, functools.partial(shutil.copyfile, job.path))
    for doc in documents:
        _replace(_local_dest(target, doc.relative), functools.partial(_write_bytes, doc.data))
    return str((target / "catalog.json").absolute())


def _local_dest(target: Path, relative: str) -> Path:
    """target/relative, its folders made; refuses a path through or onto a symlink (a target reused with
    --overwrite may hold links planted to lead outside it)."""
    path = target
    for part in relative.split("/"):
        path = path / part
        if path.is_symlink():
            raise UnsafePath(f"{path} is a symlink; refusing to write through it (stage out to a new folder)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_bytes(data: bytes, path: Path) -> None:
    path.write_bytes(data)


def _replace(dest: Path, write: Callable[[Path], object]) -> None:
    """Write dest through a new temporary file beside it (made with O_EXCL: never a planted one), then rename.

    Made 0666 so the umask gives it the mode any new file gets (as `write_atomic`'s temporary file).
    """
    tmp = dest.with_name(f".{dest.name}.{os.urandom(8).hex()}.part")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
