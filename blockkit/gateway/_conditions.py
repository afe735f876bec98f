"""HTTP semantics of GET/HEAD/PUT/COPY: conditional headers and byte ranges."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Mapping

from blockkit.gateway._errors import S3Error


def _http_time(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _etag_in(header: str, etag: str) -> bool:
    wanted = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in wanted or etag in wanted


def precondition_failed() -> S3Error:
    """412 PreconditionFailed."""
    return S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")


def evaluate(headers: Mapping[str, str], etag: str, mtime: float, read: bool, prefix: str = "if-") -> int | None:
    """The status a conditional request short-circuits to (304 or 412), or None to proceed.

    Follows S3: If-Match beats If-Unmodified-Since, If-None-Match beats If-Modified-Since.

    Args:
        headers: the request headers (lower-case names).
        etag: the object's current ETag (no quotes).
        mtime: the object's modification time (seconds).
        read: True for GET/HEAD (a failed If-None-Match is 304); False for writes and copies (412).
        prefix: "if-", or "x-amz-copy-source-if-" for the copy-source conditions.
    """
    modified = int(mtime)
    if_match = headers.get(prefix + "match")
    if_none = headers.get(prefix + "none-match")
    if_unmod = headers.get(prefix + "unmodified-since")
    if_mod = headers.get(prefix + "modified-since")
    if if_match is not None:
        if not _etag_in(if_match, etag):
            return 412
    elif if_unmod is not None:
        t = _http_time(if_unmod)
        if t is not None and modified > t:
            return 412
    if if_none is not None:
        if _etag_in(if_none, etag):
            return 304 if read else 412
    elif if_mod is not None:
        t = _http_time(if_mod)
        if t is not None and modified <= t:
            return 304 if read else 412
    return None


def invalid_range(size: int) -> S3Error:
    """416 InvalidRange with the Content-Range S3 sends."""
    err = S3Error(416, "InvalidRange", "The requested range is not satisfiable", ActualObjectSize=str(size))
    err.headers["Content-Range"] = f"bytes */{size}"
    return err


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single `bytes=` range; None means the whole object."""
    if not value:
        return None
    value = value.strip()
    if not value.startswith("bytes="):
        return None
    spec = value[len("bytes="):].strip()
    if "," in spec:
        return None  # multiple ranges: S3 does not support them and serves the whole object
    first_s, sep, last_s = spec.partition("-")
    if not sep:
        return None
    try:
        if first_s.strip() == "":
            suffix = int(last_s)
            if suffix <= 0 or size == 0:
                raise invalid_range(size)
            return max(0, size - suffix), size - 1
        first = int(first_s)
        last = int(last_s) if last_s.strip() else None
    except ValueError:
        return None
    if first < 0 or (last is not None and last < first):
        return None  # syntactically invalid: ignored, like S3
    if last is None:
        last = size - 1
    if first >= size:
        raise invalid_range(size)
    return first, min(last, size - 1)
