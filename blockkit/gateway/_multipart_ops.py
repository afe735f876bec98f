"""Multipart operations of the gateway: create, upload part (copy), complete, abort, ListParts, ListMultipartUploads."""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import quote

from blockkit.gateway import _conditions as conditions, _listing as listing, _s3xml as s3xml
from blockkit.gateway._body import (
    CHECKSUM_ALGORITHMS,
    CHECKSUM_PREFIX,
    CRC_PARAMS,
    check_content_md5,
    new_checksum,
)
from blockkit.gateway._buckets import Bucket
from blockkit.gateway._errors import S3Error, access_denied, invalid_argument
from blockkit.gateway._etags import identity
from blockkit.gateway._multipart import MultipartStore, Upload, no_such_upload
from blockkit.gateway._object_ops import ObjectOps
from blockkit.gateway._s3xml import el
from blockkit.gateway._sigv4 import SignatureContext
from blockkit.gateway._writes import CHUNK, prepare_target, pump


class MultipartOps(ObjectOps):
    """Multipart uploads: create, parts (and part copies), complete, abort, list parts and uploads.

    Built on ObjectOps: a completed upload is an object write with the same conditions and metadata.
    """

    def _store(self) -> MultipartStore:
        store = self.state.multipart
        if store is None:
            raise access_denied("no writable bucket")
        return store

    def _create_upload(self, bucket: Bucket, key: str) -> None:
        if key.endswith("/"):
            raise invalid_argument("a key ending in '/' is a folder here and cannot hold data")
        algorithm = self._headers.get("x-amz-checksum-algorithm")
        headers: dict[str, str] = {}
        kind = self._headers.get("x-amz-checksum-type", "COMPOSITE").strip().upper()
        if kind not in ("COMPOSITE", "FULL_OBJECT"):
            raise S3Error(400, "InvalidRequest", "Value for x-amz-checksum-type header is invalid.")
        if algorithm is not None:
            algorithm = algorithm.strip().lower()
            new_checksum(algorithm)  # InvalidRequest for an unknown algorithm
            if kind == "FULL_OBJECT" and algorithm not in CRC_PARAMS:
                raise S3Error(400, "InvalidRequest", f"The FULL_OBJECT checksum type cannot be used with the {algorithm.upper()} algorithm.")
            headers["x-amz-checksum-algorithm"] = algorithm.upper()
            headers["x-amz-checksum-type"] = kind
        upload = self._store().create(key, self._request_meta(), algorithm, kind)
        self._send_xml(
            s3xml.document(
                "InitiateMultipartUploadResult", [el("Bucket", bucket.name), el("Key", key), el("UploadId", upload.upload_id)]
            ),
            headers=headers,
        )

    def _upload(self, key: str, q: dict[str, str]) -> Upload:
        return self._store().get(key, q.get("uploadId", ""))

    def _upload_part(self, bucket: Bucket, key: str, q: dict[str, str], ctx: SignatureContext | None) -> None:
        upload = self._upload(key, q)
        number = self._part_number(q)
        store = self._store()
        if "x-amz-copy-source" in self._headers:
            return self._upload_part_copy(store, upload, number)
        check_content_md5(self._headers.get("content-md5"))
        body, declared = self._body(ctx)
        checks = self._checksums()
        writer = store.part_writer(upload, number, declared)
        try:
            total = pump(body, writer.write, checks.update)
            self._bytes_in += total
            if declared is not None and total != declared:
                raise S3Error(400, "IncompleteBody", "The body is shorter than its declared length")
            verified = checks.verify(self._headers.get("content-md5"), getattr(body, "trailers", {}))
            part = writer.commit(checks.md5.digest(), verified)
        except BaseException:
            writer.abort()
            raise
        self._send(200, {"ETag": f'"{part.etag}"', **verified})

    def _copy_source_range(self, size: int) -> tuple[int, int]:
        """First byte and length of x-amz-copy-source-range: `bytes=first-last`, inside the source."""
        value = self._headers.get("x-amz-copy-source-range")
        if value is None:
            return 0, size
        m = re.fullmatch(r"bytes=([0-9]{1,19})-([0-9]{1,19})", value.strip())
        if not m or int(m.group(2)) < int(m.group(1)):
            raise invalid_argument("The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy")
        first, last = int(m.group(1)), int(m.group(2))
        if last >= size:
            raise S3Error(
                416, "InvalidRange", "The requested range is not satisfiable: it goes past the end of the source object.", ActualObjectSize=str(size)
            )
        return first, last - first + 1

    def _upload_part_copy(self, store: MultipartStore, upload: Upload, number: int) -> None:
        _, src, _, _ = self._copy_source()
        with src:
            first, count = self._copy_source_range(src.st.st_size)
            md5 = hashlib.md5()
            writer = store.part_writer(upload, number, count)
            try:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                pos, left = first, count
                while left:
                    n = os.preadv(src.fd, [view[: min(CHUNK, left)]], pos)
                    if not n:
                        raise S3Error(500, "InternalError", "source changed while copying")
                    md5.update(view[:n])
                    writer.write(view[:n])
                    pos += n
                    left -= n
                part = writer.commit(md5.digest())
            except BaseException:
                writer.abort()
                raise
        self._finish_unread_body()
        self._send_xml(
            s3xml.document("CopyPartResult", [el("LastModified", s3xml.iso8601(part.last_modified)), el("ETag", f'"{part.etag}"')])
        )

    def _complete_upload(self, bucket: Bucket, key: str, q: dict[str, str], ctx: SignatureContext | None) -> None:
        store = self._store()
        upload_id = q.get("uploadId", "")
        part_checksums: dict[int, dict[str, str]] = {}
        expected = {k: v for k, v in self._headers.items() if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS}
        try:
            upload = self._upload(key, q)
        except S3Error:
            # A repeated Complete of an upload that already finished answers 200 again, as S3 does.
            listed = s3xml.parse_complete(self._read_small_body(ctx, object_checksums=True))
            return self._complete_again(store, bucket, key, upload_id, listed)
        listed = s3xml.parse_complete(self._read_small_body(ctx, object_checksums=True), part_checksums)
        with upload.completion:
            if upload.done:
                # Another Complete of this upload ran while this one waited for it.
                return self._complete_again(store, bucket, key, upload_id, listed)
            with prepare_target(bucket, key) as target:
                precheck = self._write_conditions(bucket, key)
                etag, st, _ = store.complete(upload, listed, target, precheck, part_checksums, expected)
        self.state.etags.put(identity(st), etag)
        self._send_complete(bucket, key, etag, dict(upload.meta.checksums))

    def _complete_again(self, store: MultipartStore, bucket: Bucket, key: str, upload_id: str, listed: list[tuple[int, str]]) -> None:
        done = store.completed(key, upload_id, listed)
        if done is None:
            raise no_such_upload(upload_id)
        self._send_complete(bucket, key, done[0], done[1])

    def _send_complete(self, bucket: Bucket, key: str, etag: str, headers: dict[str, str]) -> None:
        host = self._headers.get("host", "localhost")
        self._send_xml(
            s3xml.document(
                "CompleteMultipartUploadResult",
                [
                    el("Location", f"http://{host}/{bucket.name}/{quote(key)}"),
                    el("Bucket", bucket.name),
                    el("Key", key),
                    el("ETag", f'"{etag}"'),
                    *(
                        el("Checksum" + k[len(CHECKSUM_PREFIX):].upper(), v)
                        for k, v in headers.items()
                        if k[len(CHECKSUM_PREFIX):] in CHECKSUM_ALGORITHMS
                    ),
                    *(el("ChecksumType", headers["x-amz-checksum-type"]) for _ in [0] if "x-amz-checksum-type" in headers),
                ],
            ),
            headers=headers,
        )

    def _abort_upload(self, bucket: Bucket, key: str, q: dict[str, str]) -> None:
        upload = self._upload(key, q)
        self._store().abort(upload)
        self._send(204)

    def _list_parts(self, bucket: Bucket, key: str, q: dict[str, str]) -> None:
        upload = self._upload(key, q)
        request = listing.parse_parts_request(q)
        with upload.lock:
            parts = list(upload.parts.values())
        page, truncated, next_marker = listing.parts_page(parts, request)
        items = [
            "<Part>"
            + el("PartNumber", p.number)
            + el("LastModified", s3xml.iso8601(p.last_modified))
            + el("ETag", f'"{p.etag}"')
            + el("Size", p.size)
            + "</Part>"
            for p in page
        ]
        head = [
            el("Bucket", bucket.name),
            el("Key", key),
            el("UploadId", upload.upload_id),
            el("StorageClass", "STANDARD"),
            el("PartNumberMarker", request.marker),
            el("NextPartNumberMarker", next_marker),
            el("MaxParts", request.max_parts),
            el("IsTruncated", "true" if truncated else "false"),
        ]
        self._send_xml(s3xml.document("ListPartsResult", head + items))

    def _list_uploads(self, bucket: Bucket, q: dict[str, str]) -> None:
        store = self.state.multipart if bucket.writable else None
        request = listing.parse_uploads_request(q)
        page, truncated = listing.uploads_page(store.uploads() if store else [], request)
        items = [
            "<Upload>"
            + el("Key", u.key)
            + el("UploadId", u.upload_id)
            + el("StorageClass", "STANDARD")
            + el("Initiated", s3xml.iso8601(u.created))
            + "</Upload>"
            for u in page
        ]
        head = [el("Bucket", bucket.name), el("KeyMarker", request.key_marker),
                el("UploadIdMarker", request.upload_id_marker), el("Prefix", request.prefix)]
        if truncated:
            head += [el("NextKeyMarker", page[-1].key), el("NextUploadIdMarker", page[-1].upload_id)]
        head += [el("MaxUploads", request.max_uploads), el("IsTruncated", "true" if truncated else "false")]
        self._send_xml(s3xml.document("ListMultipartUploadsResult", head + items))
