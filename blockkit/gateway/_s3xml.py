"""S3 XML documents: rendering responses and parsing the two request bodies we accept."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable
from xml.sax.saxutils import escape

from blockkit.gateway._errors import S3Error, malformed_xml

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'


def iso8601(ts: float) -> str:
    """A timestamp as S3 writes it in XML (millisecond precision, Z)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def el(name: str, value: object) -> str:
    """One escaped XML element."""
    return f"<{name}>{escape(str(value))}</{name}>"


def document(root: str, children: Iterable[str], namespaced: bool = True) -> bytes:
    """A whole response document with the S3 namespace."""
    ns = f' xmlns="{NS}"' if namespaced else ""
    return (DECL + f"<{root}{ns}>" + "".join(children) + f"</{root}>").encode("utf-8")


def error_document(err: S3Error, resource: str, request_id: str) -> bytes:
    """The body of an S3 error response."""
    parts = [el("Code", err.code), el("Message", err.message)]
    parts += [el(k, v) for k, v in err.extra.items()]
    parts += [el("Resource", resource), el("RequestId", request_id)]
    return (DECL + "<Error>" + "".join(parts) + "</Error>").encode("utf-8")


def _parse(body: bytes) -> ET.Element:
    # No DTDs at all: they are never needed by S3 and are the door to entity-expansion attacks.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise malformed_xml()
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise malformed_xml() from None
    return root


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in node if _local(c.tag) == name]


def _text(node: ET.Element, name: str) -> str | None:
    found = _children(node, name)
    return (found[0].text or "") if found else None


@dataclass(frozen=True)
class DeleteObject:
    """One `<Object>` of a DeleteObjects body, with its optional conditions."""

    key: str
    etag: str | None = None
    last_modified: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class DeleteRequest:
    """A parsed DeleteObjects body."""

    objects: list[DeleteObject]
    quiet: bool

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.objects]


def parse_delete(body: bytes) -> DeleteRequest:
    """Parse `<Delete><Object><Key>…</Key>[<ETag>|<LastModifiedTime>|<Size>]</Object>…<Quiet>…</Quiet></Delete>`."""
    root = _parse(body)
    if _local(root.tag) != "Delete":
        raise malformed_xml()
    objects = []
    for obj in _children(root, "Object"):
        key = _text(obj, "Key")
        if key is None:
            raise malformed_xml()
        objects.append(DeleteObject(key, _text(obj, "ETag"), _text(obj, "LastModifiedTime"), _text(obj, "Size")))
    if not objects or len(objects) > 1000:
        raise malformed_xml("a multi-object delete names between 1 and 1000 keys")
    quiet = (_text(root, "Quiet") or "false").strip().lower() == "true"
    return DeleteRequest(objects, quiet)


def parse_complete(body: bytes, checksums: dict[int, dict[str, str]] | None = None) -> list[tuple[int, str]]:
    """Parse a CompleteMultipartUpload body into (part number, ETag) pairs.

    Part checksums (`<ChecksumSHA256>` ...) are put into `checksums` as {part: {header name: value}}.
    """
    root = _parse(body)
    if _local(root.tag) != "CompleteMultipartUpload":
        raise malformed_xml()
    parts = []
    for part in _children(root, "Part"):
        number, etag = _text(part, "PartNumber"), _text(part, "ETag")
        if number is None or etag is None:
            raise malformed_xml()
        try:
            parts.append((int(number.strip()), etag.strip().strip('"')))
        except ValueError:
            raise malformed_xml() from None
        if checksums is not None:
            for child in part:
                name = _local(child.tag)
                if name.startswith("Checksum") and name != "ChecksumType" and child.text:
                    checksums.setdefault(parts[-1][0], {})["x-amz-checksum-" + name[len("Checksum"):].lower()] = child.text.strip()
    if not parts:
        raise malformed_xml("You must specify at least one part")
    return parts
