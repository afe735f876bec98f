"""WebDAV: `webdav(s)://host/path` over plain HTTP with Basic auth: listing and GET for stage-in, MKCOL and PUT for stage-out."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit
from xml.etree import ElementTree

from blockkit.storage import _http as http
from blockkit.storage._errors import (
    SourceNotFound,
    StorageError,
    TransferFailed,
    UnsafePath,
    UnsupportedURI,
    WrongKeyType,
)
from blockkit.storage._http import check_status
from blockkit.storage._keystore import Key, WebDavKeyConfig
from blockkit.storage._transfer import (
    Document,
    Progress,
    RetryPolicy,
    TransientError,
    Upload,
    check_relatives,
    public_url,
    target_not_empty,
    upload_all,
    with_retries,
)

_DAV = "{DAV:}"
_PROPFIND = (
    '<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop>'
    "<d:resourcetype/><d:getcontentlength/></d:prop></d:propfind>"
)
MAX_ENTRIES = 100_000  # files and folders of one walk
MAX_DEPTH = 10  # nested folders below the staged one (as for STAC catalogs)
MAX_PROPFIND_BYTES = 32 * 1024 * 1024


def http_url(uri: str) -> str:
    """`webdav://` -> `http://`, `webdavs://` -> `https://` (http(s) URLs pass through)."""
    parts = urlsplit(uri)
    scheme = {"webdav": "http", "webdavs": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise UnsupportedURI(f"{uri!r}: expected webdav://host/path or webdavs://host/path")
    return urlunsplit((scheme, parts.netloc, parts.path or "/", "", ""))


@dataclass(frozen=True)
class DavEntry:
    """A file found by PROPFIND: its path relative to the listed folder, size and URL."""

    relative: str
    size: int | None
    url: str


def _request(sess: Any, method: str, url: str, **kwargs: Any) -> Any:
    return http.request(sess, method, url, timeout=(10, 120), **kwargs)


def _propfind(sess: Any, url: str, policy: RetryPolicy) -> list[tuple[str, bool, int | None]]:
    def once() -> list[tuple[str, bool, int | None]]:
        watch = http.Watchdog(http.JSON_DEADLINE).start()
        try:
            resp = _request(sess, "PROPFIND", url, data=_PROPFIND, stream=True,
                            headers={"Depth": "1", "Content-Type": "application/xml"})
            if resp.status_code != 207:
                resp.close()
                raise StorageError(f"{public_url(url)}: PROPFIND answered {resp.status_code}, not 207; is this WebDAV?")
            http.check_encoding(resp, url)
            body = http.read_limited(resp, url, MAX_PROPFIND_BYTES)
        except TransientError as exc:
            if watch.fired:
                raise TransferFailed(f"{public_url(url)}: no PROPFIND answer within {http.JSON_DEADLINE:g} s") from exc
            raise
        finally:
            watch.stop()
        if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
            raise StorageError(f"{public_url(url)}: PROPFIND answer declares a DTD or entities; refusing it")
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            raise StorageError(f"{public_url(url)}: unreadable PROPFIND answer ({exc})") from exc
        out = []
        for r in root.iter(f"{_DAV}response"):
            href = r.findtext(f"{_DAV}href") or ""
            is_dir = r.find(f".//{_DAV}resourcetype/{_DAV}collection") is not None
            length = r.findtext(f".//{_DAV}getcontentlength")
            out.append((href, is_dir, int(length) if length and length.strip().isdigit() else None))
        return out

    return with_retries(once, policy, public_url(url))


def walk(sess: Any, url: str, policy: RetryPolicy) -> list[DavEntry]:
    """Every file under url (a file URL gives itself); paths that leave the folder are refused."""
    base_path = unquote(urlsplit(url).path)
    entries = _propfind(sess, url, policy)
    own = [e for e in entries if unquote(urlsplit(e[0]).path).rstrip("/") == base_path.rstrip("/")]
    if own and not own[0][1]:
        name = posixpath.basename(base_path.rstrip("/"))
        return [DavEntry(name, own[0][2], url)]
    files: list[DavEntry] = []
    folder = base_path if base_path.endswith("/") else base_path + "/"
    pending = [(url if url.endswith("/") else url + "/", entries, 0)]
    seen: set[str] = set()
    while pending:
        dir_url, listing, depth = pending.pop()
        for href, is_dir, size in listing:
            path = unquote(urlsplit(href).path)
            if path.rstrip("/") == unquote(urlsplit(dir_url).path).rstrip("/"):
                continue  # the folder itself
            norm = posixpath.normpath(path)
            if not (norm + ("/" if is_dir else "")).startswith(folder) or ".." in path.split("/"):
                raise UnsafePath(f"{public_url(url)}: the server listed {href!r} outside the folder; refusing it")
            rel = norm[len(folder):]
            entry_url = urljoin(dir_url, quote(path))
            if is_dir:
                if entry_url not in seen:
                    if depth + 1 > MAX_DEPTH:
                        raise StorageError(
                            f"{public_url(url)}: folders nested deeper than {MAX_DEPTH} levels ({rel}); "
                            f"stage in a sub-folder"
                        )
                    seen.add(entry_url)
                    pending.append((entry_url.rstrip("/") + "/", _propfind(sess, entry_url, policy), depth + 1))
            else:
                files.append(DavEntry(rel, size, entry_url))
            if len(files) + len(seen) > MAX_ENTRIES:
                raise StorageError(f"{public_url(url)}: more than {MAX_ENTRIES} files and folders")
    return files


def members(sess: Any, url: str, policy: RetryPolicy) -> int:
    """How many entries a collection holds (a file counts as 1); SourceNotFound when url does not exist."""
    base_path = unquote(urlsplit(url).path).rstrip("/")
    listing = _propfind(sess, url, policy)
    own = [e for e in listing if unquote(urlsplit(e[0]).path).rstrip("/") == base_path]
    if own and not own[0][1]:
        return 1
    return len(listing) - len(own)


def mkcol_tree(sess: Any, base_url: str, relative_dir: str, policy: RetryPolicy, made: set[str], *,
               encoded: bool = False) -> None:
    """Create base_url/relative_dir and its parents (MKCOL), skipping ones made before.

    Args:
        sess: the requests session (`session_for`).
        base_url: the collection the folders go under (it must exist).
        relative_dir: '/'-separated folders to create below it, parents first: folder names, quoted here
            the way `upload` quotes the PUT paths (a folder named `%2e%2e` stays that name, never `..`).
        policy: retries of transient failures, per MKCOL.
        made: URLs created so far by this upload; updated, so each folder is made once.
        encoded: relative_dir is already a URL path (the target's own), used as given, as PUT uses it.
    """
    url = base_url.rstrip("/")
    for part in [p for p in relative_dir.split("/") if p]:
        url = f"{url}/{part if encoded else quote(part)}"
        if url in made:
            continue

        def once(u: str = url) -> None:
            import requests

            try:
                resp = sess.request("MKCOL", u + "/", timeout=(10, 60), allow_redirects=False)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(type(exc).__name__) from exc
            resp.close()
            if resp.status_code in (405, 301):  # exists already
                return
            check_status(resp, u)

        with_retries(once, policy, public_url(url))
        made.add(url)


def put_file(sess: Any, url: str, path: Path, policy: RetryPolicy) -> None:
    """PUT a local file (streamed) to url.

    Args:
        sess: the requests session (`session_for`).
        url: the file's URL (its collection must exist).
        path: the local file.
        policy: retries of transient failures (a retry sends the file again).
    """

    def once() -> None:
        with open(path, "rb") as fh:
            _request(sess, "PUT", url, data=fh, headers={"Content-Length": str(path.stat().st_size)})

    with_retries(once, policy, public_url(url))


def put_bytes(sess: Any, url: str, data: bytes, policy: RetryPolicy, content_type: str) -> None:
    """PUT a small document to url.

    Args:
        sess: the requests session (`session_for`).
        url: the document's URL.
        data: its bytes.
        policy: retries of transient failures.
        content_type: its media type.
    """
    with_retries(lambda: _request(sess, "PUT", url, data=data, headers={"Content-Type": content_type}) and None,
                 policy, public_url(url))


def ensure_safe(rel: str) -> str:
    """Refuse relative paths with `..` or absolute parts."""
    if rel.startswith("/") or ".." in rel.split("/"):
        raise UnsafePath(f"path {rel!r} leaves the target; refusing it")
    return rel


# --- stage-out: uploads ----------------------------------------------------------------------------


def session_for(key: Key | None, workers: int) -> Any:
    """A requests session for a WebDAV server: Basic auth scoped to the key's endpoint, a pool for `workers`."""
    auth = None
    if key is not None:
        conf = key.config
        if not isinstance(conf, WebDavKeyConfig):
            raise WrongKeyType(f"key {key.name!r} is a {key.type} key; a webdav key is needed here")
        auth = http.ScopedBasicAuth(conf.username, conf.password, conf.endpoint, key.name)
    return http.session(auth, pool=max(workers, 4))


def check_empty(sess: Any, base: str, policy: RetryPolicy) -> None:
    """Raise TargetNotEmpty when the collection `base` exists and holds members (a missing one is fine)."""
    try:
        count = members(sess, base + "/", policy)
    except SourceNotFound:
        return
    if count:
        raise target_not_empty(public_url(base + "/"))


def upload(
    key: Key | None,
    uri: str,
    uploads: list[Upload],
    documents: list[Document],
    *,
    workers: int = 8,
    progress: bool = True,
    policy: RetryPolicy | None = None,
    overwrite: bool = False,
) -> str:
    """Create the collections, PUT files, then documents, under `uri`; return the URI of the last document.

    Args:
        key: the keystore key (webdav) for Basic auth, or None for a server without auth.
        uri: the target collection, `webdav(s)://host/path` (or http(s)://).
        uploads: local files, PUT `workers` at a time into their collections (MKCOL first, parents
            before children, as MKCOL is not recursive).
        documents: small generated files PUT after all uploads, in order (the catalog last).
        workers: files uploaded at once.
        progress: show a progress bar over the bytes on stderr.
        policy: retries of each request (transient failures only).
        overwrite: False refuses a collection that already holds members (TargetNotEmpty), before any upload.
    """
    check_relatives(uploads, documents)
    policy = policy or RetryPolicy()
    base = http_url(uri).rstrip("/")
    sess = session_for(key, workers)
    if not overwrite:
        check_empty(sess, base, policy)
    made: set[str] = set()
    base_path = urlsplit(base).path
    scheme_host = base[: len(base) - len(base_path)] if base_path else base
    relatives = [u.relative for u in uploads] + [d.relative for d in documents]
    webdav_dirs = sorted({posixpath.dirname(rel) for rel in relatives} - {""})
    mkcol_tree(sess, scheme_host, base_path, policy, made, encoded=True)  # the target collection itself
    for folder in webdav_dirs:
        mkcol_tree(sess, base, folder, policy, made)
    with Progress(progress, sum(u.size for u in uploads), f"uploading to {public_url(base)}") as bar:
        def put(job: Upload) -> None:
            put_file(sess, f"{base}/{quote(ensure_safe(job.relative))}", job.path, policy)
            bar.advance(job.size)

        upload_all(put, uploads, workers)
    last = ""
    for doc in documents:
        last = doc.relative
        put_bytes(sess, f"{base}/{quote(ensure_safe(last))}", doc.data, policy, doc.content_type)
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{base_path}/{last}"
