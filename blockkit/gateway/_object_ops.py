"""Object operations of the gateway: GetObject, HeadObject, GetObjectAttributes, PutObject, CopyObject, DeleteObject(s)."""

from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
import re
import stat
import time
from email.utils import formatdate, parsedate_to_datetime
from typing import Callable

from blockkit.gateway import _conditions as conditions, _s3xml as s3xml
from blockkit.gateway._body import CHECKSUM_ALGORITHMS, CHECKSUM_PREFIX, check_content_md5
from blockkit.gateway._buckets import Bucket, ObjectFile, decode_key
from blockkit.gateway._errors import S3Error, invalid_argument, no_such_key
from blockkit.gateway._etags import EMPTY_MD5, identity
from blockkit.gateway._exchange import DIGITS, Exchange
from blockkit.gateway._metadata import ObjectMeta
from blockkit.gateway._s3xml import el
from blockkit.gateway._sigv4 import SignatureContext
from blockkit.gateway._beneath import open_folder
from blockkit.gateway._writes import AtomicFile, Target, copy_range, prepare_target, pump


RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _parse_time(value: str) -> float | None:
    """An HTTP date or an ISO 8601 timestamp (as in DeleteObjects' LastModifiedTime), in seconds."""
    from datetime import datetime

    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        pass
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _wire(value: str) -> str:
    """A stored header value back into the latin-1 text send_header encodes: the original bytes."""
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


class ObjectOps(Exchange):
    """Reads (GET, HEAD, attributes), writes (PUT, copy) and deletes of single objects, with their conditions."""

    def _meta_and_etag(self, bucket: Bucket, obj: ObjectFile) -> tuple[ObjectMeta | None, str]:
        """The stored metadata of an object (if current) and its ETag: cached, stored, or hashed."""
        meta = bucket.meta.read(obj.key, obj.fd, obj.st)
        cache = self.state.etags
        etag = cache.get(identity(obj.st))
        if etag is None and meta is not None and meta.etag:
            etag = meta.etag
            cache.put(identity(obj.st), etag)
        if etag is None:
            etag = cache.etag_of(obj.fd, obj.st)
        return meta, etag

    def _object_headers(self, obj: ObjectFile, etag: str, meta: ObjectMeta | None) -> dict[str, str]:
        stored = meta.response_headers() if meta is not None else {}
        headers = {
            "Content-Type": stored.get("Content-Type") or mimetypes.guess_type(obj.key)[0] or "application/octet-stream",
            "ETag": f'"{etag}"',
            "Last-Modified": _http_date(obj.st.st_mtime),
            "Accept-Ranges": "bytes",
        }
        if meta is not None:
            headers.update(stored)
        return headers

    def _checksum_headers(self, meta: ObjectMeta | None, q: dict[str, str]) -> dict[str, str]:
        """Stored checksums for x-amz-checksum-mode: ENABLED: the object's, or the part's for ?partNumber.

        Never on a Range response (the client would check them against a slice)."""
        if meta is None or self._headers.get("x-amz-checksum-mode", "").upper() != "ENABLED" or "range" in self._headers:
            return {}
        if "partNumber" not in q:
            return dict(meta.checksums)
        number = int(q["partNumber"])
        if meta.parts and meta.part_checksums and len(meta.part_checksums) == len(meta.parts) and 1 <= number <= len(meta.parts):
            name = next((k for k in meta.checksums if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS), None)
            if name is not None:
                return {name: meta.part_checksums[number - 1], "x-amz-checksum-type": meta.checksums.get("x-amz-checksum-type", "COMPOSITE")}
        return {} if meta.parts else dict(meta.checksums)

    def _get_object(self, bucket: Bucket, key: str, q: dict[str, str], head: bool) -> None:
        with bucket.open_object(key) as obj:
            self._send_object(bucket, obj, q, head)

    def _send_object(self, bucket: Bucket, obj: ObjectFile, q: dict[str, str], head: bool) -> None:
        meta, etag = self._meta_and_etag(bucket, obj)
        headers = self._object_headers(obj, etag, meta)
        verdict = conditions.evaluate(self._headers, etag, obj.st.st_mtime, read=True)
        if verdict == 304:
            return self._send(304, {"ETag": headers["ETag"], "Last-Modified": headers["Last-Modified"]})
        if verdict == 412:
            raise conditions.precondition_failed()
        for param, header in RESPONSE_OVERRIDES.items():
            if param in q:
                if any(c in q[param] for c in "\r\n\x00"):
                    raise invalid_argument(f"{param} must not contain line breaks or NUL")
                headers[header] = _wire(q[param])
        size = obj.st.st_size
        if "partNumber" in q:
            first, count, status = self._part_range(q, meta, size, headers)
        else:
            rng = conditions.parse_range(self._headers.get("range"), size)
            if rng is None:
                first, count, status = 0, size, 200
            else:
                first, count, status = rng[0], rng[1] - rng[0] + 1, 206
                headers["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{size}"
        headers.update(self._checksum_headers(meta, q))
        if head:
            return self._send(status, headers, length=count)
        with open(obj.fd, "rb", buffering=0, closefd=False) as fh:
            self._send(status, headers, length=count)
            sent = self.connection.sendfile(fh, first, count) if count else 0
            self._bytes_out += sent
            if sent != count:
                self.close_connection = True  # the file shrank under us: the client sees a short body

    def _get_object_attributes(self, bucket: Bucket, key: str) -> None:
        """GetObjectAttributes: ETag, Checksum, ObjectParts, StorageClass, ObjectSize as asked."""
        wanted = {a.strip() for a in self._headers.get("x-amz-object-attributes", "").split(",") if a.strip()}
        known = {"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"}
        if not wanted or not wanted <= known:
            raise invalid_argument("x-amz-object-attributes must name some of: " + ", ".join(sorted(known)))
        with bucket.open_object(key) as obj:
            self._send_attributes(bucket, obj, wanted)

    def _send_attributes(self, bucket: Bucket, obj: ObjectFile, wanted: set[str]) -> None:
        meta, etag = self._meta_and_etag(bucket, obj)
        verdict = conditions.evaluate(self._headers, etag, obj.st.st_mtime, read=True)
        if verdict == 304:
            return self._send(304, {"ETag": f'"{etag}"'})
        if verdict == 412:
            raise conditions.precondition_failed()
        items: list[str] = []
        if "ETag" in wanted:
            items.append(el("ETag", etag))
        checksums = dict(meta.checksums) if meta is not None else {}
        algo = next((k for k in checksums if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS), None)
        if "Checksum" in wanted and algo is not None:
            items.append(
                "<Checksum>"
                + el("Checksum" + algo[len(CHECKSUM_PREFIX):].upper(), checksums[algo])
                + el("ChecksumType", checksums.get("x-amz-checksum-type", "FULL_OBJECT"))
                + "</Checksum>"
            )
        if "ObjectParts" in wanted and meta is not None and meta.parts:
            try:
                marker = int(self._headers.get("x-amz-part-number-marker", "0") or 0)
                max_parts = min(int(self._headers.get("x-amz-max-parts", "1000") or 1000), 1000)
            except ValueError:
                raise invalid_argument("x-amz-part-number-marker and x-amz-max-parts must be integers") from None
            numbers = [n for n in range(1, len(meta.parts) + 1) if n > marker]
            page = numbers[:max_parts]
            part_items = []
            for n in page:
                extra = ""
                if algo is not None and meta.part_checksums and len(meta.part_checksums) == len(meta.parts):
                    extra = el("Checksum" + algo[len(CHECKSUM_PREFIX):].upper(), meta.part_checksums[n - 1])
                part_items.append("<Part>" + el("PartNumber", n) + el("Size", meta.parts[n - 1]) + extra + "</Part>")
            items.append(
                "<ObjectParts>"
                + el("PartsCount", len(meta.parts))
                + el("PartNumberMarker", marker)
                + el("NextPartNumberMarker", page[-1] if page else marker)
                + el("MaxParts", max_parts)
                + el("IsTruncated", "true" if len(numbers) > len(page) else "false")
                + "".join(part_items)
                + "</ObjectParts>"
            )
        if "StorageClass" in wanted:
            items.append(el("StorageClass", "STANDARD"))
        if "ObjectSize" in wanted:
            items.append(el("ObjectSize", obj.st.st_size))
        self._send_xml(
            s3xml.document("GetObjectAttributesResponse", items), headers={"Last-Modified": _http_date(obj.st.st_mtime)}
        )

    def _part_range(self, q: dict[str, str], meta: ObjectMeta | None, size: int, headers: dict[str, str]) -> tuple[int, int, int]:
        """First byte, length and status of GET/HEAD ?partNumber=N (a plain object is one part)."""
        if "range" in self._headers:
            raise S3Error(400, "InvalidRequest", "Cannot specify both Range header and partNumber query parameter.")
        number = self._part_number(q)
        parts = meta.parts if meta is not None and meta.parts else [size]
        if not 1 <= number <= len(parts):
            raise S3Error(400, "InvalidPart", "The requested partnumber is not satisfiable", PartNumber=str(number))
        first = sum(parts[: number - 1])
        count = parts[number - 1]
        headers["x-amz-mp-parts-count"] = str(len(parts))
        if meta is None or not meta.parts:
            return 0, size, 200
        if count:
            headers["Content-Range"] = f"bytes {first}-{first + count - 1}/{size}"
        return first, count, 206

    def _request_meta(self) -> ObjectMeta:
        return ObjectMeta.from_request(self._headers)

    def _put_object(self, bucket: Bucket, key: str, ctx: SignatureContext | None) -> None:
        if key.endswith("/"):
            return self._put_folder_marker(bucket, key, ctx)
        check_content_md5(self._headers.get("content-md5"))
        with prepare_target(bucket, key) as target:
            self._put_body(bucket, key, ctx, target)

    def _put_body(self, bucket: Bucket, key: str, ctx: SignatureContext | None, target: Target) -> None:
        precheck = self._write_conditions(bucket, key)
        meta = self._request_meta()
        body, declared = self._body(ctx)
        checks = self._checksums()
        with AtomicFile(target) as out:
            total = pump(body, out.write, checks.update)
            self._bytes_in += total
            if declared is not None and total != declared:
                raise S3Error(400, "IncompleteBody", "The body is shorter than its declared length")
            verified = checks.verify(self._headers.get("content-md5"), getattr(body, "trailers", {}))
            meta.etag = checks.md5.hexdigest()
            meta.checksums = verified
            st = out.commit(bucket, key, meta, precheck)
        self.state.etags.put(identity(st), meta.etag)
        self._send(200, {"ETag": f'"{meta.etag}"', **verified})

    def _put_folder_marker(self, bucket: Bucket, key: str, ctx: SignatureContext | None) -> None:
        # "folder/" objects (made by consoles and some tools) become folders; they carry no bytes.
        # One with data is refused (400 InvalidArgument) before its body is read.
        if self._content_length and not self._headers.get("x-amz-decoded-content-length", "").strip() == "0":
            raise invalid_argument("a key ending in '/' is a folder here and cannot hold data")
        data = self._read_small_body(ctx)
        if data:
            raise invalid_argument("a key ending in '/' is a folder here and cannot hold data")
        try:
            os.close(open_folder(bucket.root, bucket.check_key(key), create=True))
        except (FileExistsError, NotADirectoryError):
            raise invalid_argument(f"{key!r} or a parent of it is an object; it cannot also be a folder") from None
        self._send(200, {"ETag": f'"{EMPTY_MD5}"'})

    def _current_etag(self, bucket: Bucket, key: str) -> str | None:
        try:
            obj = bucket.open_object(key)
        except S3Error as err:
            if err.code == "NoSuchKey":
                return None
            raise
        with obj:
            _, etag = self._meta_and_etag(bucket, obj)
        return etag

    def _write_conditions(self, bucket: Bucket, key: str) -> Callable[[], None] | None:
        """Check If-Match / If-None-Match of a write now; returns the re-check to run right before the rename."""
        if_none = self._headers.get("if-none-match")
        if_match = self._headers.get("if-match")
        if if_none is None and if_match is None:
            return None

        def check() -> None:
            etag = self._current_etag(bucket, key)
            if if_match is not None:
                if etag is None:
                    raise no_such_key(key)
                if conditions.evaluate({"if-match": if_match}, etag, 0, read=False) == 412:
                    raise conditions.precondition_failed()
            if if_none is not None and etag is not None:
                if conditions.evaluate({"if-none-match": if_none}, etag, 0, read=False) == 412:
                    raise conditions.precondition_failed()

        check()
        return check

    def _copy_source(self) -> tuple[Bucket, ObjectFile, str, ObjectMeta | None]:
        """The source of a copy, open (the caller closes it), checked against the x-amz-copy-source-if-* conditions."""
        raw = self._headers["x-amz-copy-source"]
        raw = raw.split("?versionId=", 1)[0]
        src = decode_key(raw).lstrip("/")
        name, _, key = src.partition("/")
        if not key:
            raise invalid_argument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey")
        bucket = self._bucket(name)
        obj = bucket.open_object(key)
        try:
            meta, etag = self._meta_and_etag(bucket, obj)
            verdict = conditions.evaluate(self._headers, etag, obj.st.st_mtime, read=False, prefix="x-amz-copy-source-if-")
            if verdict is not None:
                raise conditions.precondition_failed()
        except BaseException:
            obj.close()
            raise
        return bucket, obj, etag, meta

    def _copy_object(self, bucket: Bucket, key: str) -> None:
        directive = self._headers.get("x-amz-metadata-directive", "COPY").strip().upper()
        if directive not in ("COPY", "REPLACE"):
            raise invalid_argument("Unknown metadata directive: use COPY or REPLACE.")
        src_bucket, src, _, src_meta = self._copy_source()
        with src, prepare_target(bucket, key) as target:
            self._copy_into(bucket, key, directive, src_bucket, src, src_meta, target)

    def _copy_into(
        self, bucket: Bucket, key: str, directive: str, src_bucket: Bucket, src: ObjectFile, src_meta: ObjectMeta | None, target: Target
    ) -> None:
        if src_bucket is bucket and src.key == key and directive != "REPLACE":
            raise S3Error(
                400,
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without changing "
                "the object's metadata, storage class, website redirect location or encryption attributes.",
            )
        if directive == "REPLACE":
            meta = self._request_meta()
        else:
            meta = ObjectMeta()
            if src_meta is not None:
                meta.headers, meta.user = dict(src_meta.headers), dict(src_meta.user)
            meta.headers.setdefault("content-type", mimetypes.guess_type(src.key)[0] or "application/octet-stream")
        precheck = self._write_conditions(bucket, key)
        md5 = hashlib.md5()
        with AtomicFile(target) as out:
            copy_range(src.fd, out.fd, 0, src.st.st_size, md5.update)
            meta.etag = md5.hexdigest()
            st = out.commit(bucket, key, meta, precheck)
        self.state.etags.put(identity(st), meta.etag)
        self._finish_unread_body()
        self._send_xml(
            s3xml.document("CopyObjectResult", [el("LastModified", s3xml.iso8601(st.st_mtime)), el("ETag", f'"{meta.etag}"')])
        )

    def _delete_object(self, bucket: Bucket, key: str) -> None:
        h = self._headers
        self._remove(
            bucket,
            key,
            etag=h.get("if-match"),
            mtime=h.get("x-amz-if-match-last-modified-time"),
            size=h.get("x-amz-if-match-size"),
        )
        self._send(204)

    def _remove(self, bucket: Bucket, key: str, etag: str | None = None, mtime: str | None = None, size: str | None = None) -> None:
        """Delete a key (missing keys are fine, as in S3); the conditions apply only to an existing object."""
        *folders, name = bucket.check_key(key)
        try:
            folder = open_folder(bucket.root, folders)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            if key.endswith("/"):
                os.rmdir(name, dir_fd=folder)
            else:
                if stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                    return
                if etag is not None or mtime is not None or size is not None:
                    self._check_delete_conditions(bucket, key, etag, mtime, size)
                os.unlink(name, dir_fd=folder)
                bucket.meta.forget(key)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise
            return
        finally:
            os.close(folder)
        # Empty folders are invisible in S3; remove the ones this delete emptied.
        for depth in range(len(folders), 0, -1):
            try:
                parent = open_folder(bucket.root, folders[: depth - 1])
            except (OSError, S3Error):
                break
            try:
                os.rmdir(folders[depth - 1], dir_fd=parent)
            except OSError:
                break
            finally:
                os.close(parent)

    def _check_delete_conditions(self, bucket: Bucket, key: str, etag: str | None, mtime: str | None, size: str | None) -> None:
        with bucket.open_object(key) as obj:
            st = obj.st
            if etag is None:
                current = ""
            else:
                _, current = self._meta_and_etag(bucket, obj)
        if etag is not None:
            if conditions.evaluate({"if-match": etag}, current, 0, read=False) == 412:
                raise conditions.precondition_failed()
        if mtime is not None:
            wanted = _parse_time(mtime)
            if wanted is None:
                raise invalid_argument("x-amz-if-match-last-modified-time / LastModifiedTime is not a valid date")
            if int(wanted) != int(st.st_mtime):
                raise conditions.precondition_failed()
        if size is not None:
            if not DIGITS.fullmatch(size.strip()):
                raise invalid_argument("x-amz-if-match-size / Size must be a non-negative integer")
            if int(size) != st.st_size:
                raise conditions.precondition_failed()

    def _delete_objects(self, bucket: Bucket, ctx: SignatureContext | None) -> None:
        request = s3xml.parse_delete(self._read_small_body(ctx))
        out = []
        for obj in request.objects:
            try:
                self._remove(bucket, obj.key, etag=obj.etag, mtime=obj.last_modified, size=obj.size)
                if not request.quiet:
                    out.append(f"<Deleted>{el('Key', obj.key)}</Deleted>")
            except S3Error as err:
                out.append(f"<Error>{el('Key', obj.key)}{el('Code', err.code)}{el('Message', err.message)}</Error>")
        self._send_xml(s3xml.document("DeleteResult", out))

    def _part_number(self, q: dict[str, str]) -> int:
        value = q.get("partNumber", "")
        if not DIGITS.fullmatch(value) or not 1 <= int(value) <= 10_000:
            raise invalid_argument("Part number must be an integer between 1 and 10000, inclusive")
        return int(value)
