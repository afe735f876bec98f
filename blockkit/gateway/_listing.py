"""Listing pages as pure functions: ListObjects (v1, v2), ListParts and ListMultipartUploads.

The handler parses the query into a request value, hands over the keys in S3 order, and
renders the page this module computes. Nothing here touches files or sockets: a bucket's
`KeyWalk` and `SortedKeys` over an in-memory list both feed `list_page`, so the paging rules
(markers, continuation tokens, delimiter and common prefixes, max-keys 0, encoding-type=url)
are tested without a server.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import quote

from blockkit.gateway import _s3xml as s3xml
from blockkit.gateway._errors import invalid_argument
from blockkit.gateway._s3xml import el

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
MAX_KEYS = 1000
OWNER = "<Owner><ID>blockkit</ID><DisplayName>blockkit</DisplayName></Owner>"


class Walk(Protocol[T_co]):
    """Keys in S3 (code point) order with a value each; `skip(prefix)` drops the rest under a prefix."""

    def __iter__(self) -> Iterator[tuple[str, T_co]]: ...

    def skip(self, prefix: str) -> None: ...


class SortedKeys(Generic[T]):
    """A Walk over keys already in memory: those starting with `prefix` and greater than `after`."""

    def __init__(self, entries: Iterable[tuple[str, T]], prefix: str = "", after: str = "") -> None:
        self._entries = sorted(
            ((k, v) for k, v in entries if k.startswith(prefix) and (not after or k > after)),
            key=lambda kv: kv[0],
        )
        self._skip: str | None = None

    @classmethod
    def of(cls, keys: Iterable[str], prefix: str = "", after: str = "") -> "SortedKeys[None]":
        """A walk over bare keys (the value of each is None)."""
        return SortedKeys(((k, None) for k in keys), prefix, after)

    def skip(self, prefix: str) -> None:
        """Yield no more keys starting with prefix."""
        self._skip = prefix

    def __iter__(self) -> Iterator[tuple[str, T]]:
        for key, value in self._entries:
            if self._skip is not None and key.startswith(self._skip):
                continue
            yield key, value


# --- ListObjects / ListObjectsV2 ---------------------------------------------------------------


@dataclass(frozen=True)
class ListRequest:
    """A ListObjects(V2) request's paging parameters, checked."""

    v2: bool
    prefix: str = ""
    delimiter: str = ""
    max_keys: int = MAX_KEYS
    after: str = ""  # list keys greater than this (marker, start-after, or the decoded token)
    resumes: bool = False  # `after` ended the previous page (marker, token): its common prefix was listed then
    url: bool = False  # encoding-type=url
    token: str | None = None  # continuation-token as sent
    start_after: str | None = None
    marker: str = ""
    fetch_owner: bool = False


def parse_list_request(query: dict[str, str], v2: bool) -> ListRequest:
    """The paging parameters of a ListObjects (v2=False) or ListObjectsV2 query; InvalidArgument when wrong."""
    encoding = query.get("encoding-type")
    if encoding not in (None, "url"):
        raise invalid_argument("Invalid Encoding Method specified in Request")
    try:
        max_keys = min(int(query.get("max-keys", str(MAX_KEYS))), MAX_KEYS)
    except ValueError:
        raise invalid_argument("Provided max-keys not an integer or within integer range") from None
    if max_keys < 0:
        raise invalid_argument("max-keys must not be negative")
    token = query.get("continuation-token") if v2 else None
    if token is not None:
        after, resumes = decode_token(token), True
    elif v2:
        after, resumes = query.get("start-after", ""), False
    else:
        after, resumes = query.get("marker", ""), True
    return ListRequest(
        v2=v2, prefix=query.get("prefix", ""), delimiter=query.get("delimiter", ""), max_keys=max_keys,
        after=after, resumes=resumes, url=encoding == "url", token=token, start_after=query.get("start-after"),
        marker=query.get("marker", ""), fetch_owner=query.get("fetch-owner") == "true",
    )


def encode_token(last: str) -> str:
    """The NextContinuationToken of a page that ended on `last` (a key or a common prefix)."""
    return base64.urlsafe_b64encode(last.encode("utf-8")).decode()


def decode_token(token: str) -> str:
    """The key or common prefix a continuation token names; InvalidArgument for a token we did not make."""
    try:
        last = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise invalid_argument("The continuation token provided is incorrect") from None
    if not last or encode_token(last) != token:
        raise invalid_argument("The continuation token provided is incorrect")
    return last


@dataclass(frozen=True)
class ListPage(Generic[T]):
    """One page: objects (key and value), common prefixes, whether more follow, and what ended it."""

    contents: list[tuple[str, T]]
    prefixes: list[str]
    truncated: bool
    last: str  # the last key or common prefix of the page: the next page starts after it

    @property
    def key_count(self) -> int:
        """Objects plus common prefixes, as KeyCount counts them."""
        return len(self.contents) + len(self.prefixes)


def list_page(walk: Walk[T], request: ListRequest) -> ListPage[T]:
    """The page a request gets from keys in S3 order (already limited to `prefix` and > `after`).

    With a delimiter, the keys sharing `prefix + ... + delimiter` roll up into one common prefix
    that counts as one entry. A page resuming after a common prefix (marker or token ending in
    the delimiter) skips the rest of that prefix. max-keys 0 is an empty, untruncated page.
    """
    prefix, delimiter, after, limit = request.prefix, request.delimiter, request.after, request.max_keys
    if (request.resumes and delimiter and after.startswith(prefix) and after.endswith(delimiter)
            and delimiter in after[len(prefix):]):
        walk.skip(after)  # the previous page ended on this common prefix
    contents: list[tuple[str, T]] = []
    prefixes: list[str] = []
    truncated = False
    last = ""
    for key, value in walk if limit else ():
        common = ""
        if delimiter:
            i = key.find(delimiter, len(prefix))
            if i >= 0:
                common = key[: i + len(delimiter)]
        if len(contents) + len(prefixes) >= limit:
            truncated = True
            break
        if common:
            prefixes.append(common)
            last = common
            walk.skip(common)
        else:
            contents.append((key, value))
            last = key
    return ListPage(contents, prefixes, truncated, last)


@dataclass(frozen=True)
class ListedObject:
    """What a listing shows of one object."""

    key: str
    last_modified: float
    size: int
    etag: str


def list_objects_xml(bucket: str, request: ListRequest, page: ListPage[T], objects: Sequence[ListedObject]) -> bytes:
    """The ListBucketResult document of a page.

    Args:
        bucket: the bucket's name.
        request: the parsed request (v1 or v2, prefix, delimiter, encoding, markers).
        page: the page `list_page` computed.
        objects: the page's contents with their modification times, sizes and ETags, in order.
    """
    enc = (lambda s: quote(s, safe="/")) if request.url else (lambda s: s)
    owner = OWNER if (not request.v2 or request.fetch_owner) else ""
    items = [
        "<Contents>" + el("Key", enc(o.key)) + el("LastModified", s3xml.iso8601(o.last_modified))
        + el("ETag", f'"{o.etag}"') + el("Size", o.size) + el("StorageClass", "STANDARD") + owner + "</Contents>"
        for o in objects
    ]
    common = [f"<CommonPrefixes>{el('Prefix', enc(p))}</CommonPrefixes>" for p in page.prefixes]
    head = [el("Name", bucket), el("Prefix", enc(request.prefix))]
    if request.delimiter:
        head.append(el("Delimiter", enc(request.delimiter)))
    head += [el("MaxKeys", request.max_keys), el("IsTruncated", "true" if page.truncated else "false")]
    if request.url:
        head.append(el("EncodingType", "url"))
    if request.v2:
        head.append(el("KeyCount", page.key_count))
        if request.token is not None:
            head.append(el("ContinuationToken", request.token))
        if request.start_after is not None:
            head.append(el("StartAfter", enc(request.start_after)))
        if page.truncated:
            head.append(el("NextContinuationToken", encode_token(page.last)))
    else:
        head.append(el("Marker", enc(request.marker)))
        if page.truncated:
            head.append(el("NextMarker", enc(page.last)))
    return s3xml.document("ListBucketResult", head + items + common)


# --- ListParts ---------------------------------------------------------------------------------


class _Numbered(Protocol):
    @property
    def number(self) -> int: ...


N = TypeVar("N", bound=_Numbered)


@dataclass(frozen=True)
class PartsRequest:
    """ListParts paging: parts after `marker`, at most `max_parts` of them."""

    marker: int = 0
    max_parts: int = MAX_KEYS


def parse_parts_request(query: dict[str, str]) -> PartsRequest:
    """part-number-marker and max-parts of a ListParts query; InvalidArgument when not integers ≥ 0."""
    try:
        marker = int(query.get("part-number-marker", "0") or 0)
        max_parts = min(int(query.get("max-parts", str(MAX_KEYS))), MAX_KEYS)
    except ValueError:
        raise invalid_argument("part-number-marker and max-parts must be integers") from None
    if marker < 0 or max_parts < 0:
        raise invalid_argument("part-number-marker and max-parts must not be negative")
    return PartsRequest(marker, max_parts)


def parts_page(parts: Iterable[N], request: PartsRequest) -> tuple[list[N], bool, int]:
    """(the page's parts by number, whether more follow, NextPartNumberMarker)."""
    later = sorted((p for p in parts if p.number > request.marker), key=lambda p: p.number)
    page = later[: request.max_parts]
    return page, len(later) > len(page), page[-1].number if page else request.marker


# --- ListMultipartUploads -------------------------------------------------------------------------


class _Started(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def upload_id(self) -> str: ...

    @property
    def created(self) -> float: ...


U = TypeVar("U", bound=_Started)


@dataclass(frozen=True)
class UploadsRequest:
    """ListMultipartUploads paging: uploads under `prefix` after (key-marker, upload-id-marker)."""

    prefix: str = ""
    key_marker: str = ""
    upload_id_marker: str = ""
    max_uploads: int = MAX_KEYS


def parse_uploads_request(query: dict[str, str]) -> UploadsRequest:
    """prefix, key-marker, upload-id-marker and max-uploads of a ListMultipartUploads query."""
    try:
        max_uploads = min(int(query.get("max-uploads", str(MAX_KEYS))), MAX_KEYS)
    except ValueError:
        raise invalid_argument("max-uploads must be an integer") from None
    if max_uploads < 0:
        raise invalid_argument("max-uploads must not be negative")
    return UploadsRequest(query.get("prefix", ""), query.get("key-marker", ""), query.get("upload-id-marker", ""),
                          max_uploads)


def uploads_page(uploads: Iterable[U], request: UploadsRequest) -> tuple[list[U], bool]:
    """(the page's uploads by key then start time, whether more follow).

    After a key-marker alone, every upload of that key is skipped; with an upload-id-marker,
    the uploads of that key up to and including that upload are.
    """
    ordered = sorted((u for u in uploads if u.key.startswith(request.prefix)), key=lambda u: (u.key, u.created))
    if request.key_marker:
        ids = [u.upload_id for u in ordered if u.key == request.key_marker]
        seen = ids.index(request.upload_id_marker) + 1 if request.upload_id_marker in ids else len(ids)
        same_key = [u for u in ordered if u.key == request.key_marker][seen:]
        ordered = same_key + [u for u in ordered if u.key > request.key_marker]
    page = ordered[: request.max_uploads]
    return page, len(ordered) > len(page)
