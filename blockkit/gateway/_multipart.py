"""Multipart uploads: parts staged inside the output folder, assembled and renamed on completion."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from blockkit.gateway._body import CHECKSUM_PREFIX, crc_combine, new_checksum
from blockkit.gateway._buckets import STAGING_DIR, Bucket
from blockkit.gateway._errors import S3Error, invalid_argument
from blockkit.gateway._etags import multipart_etag
from blockkit.gateway._metadata import ObjectMeta
from blockkit.gateway._writes import COMMIT_LOCK, AtomicFile, copy_range, prepare_target

MAX_PARTS = 10_000
# S3's minimum size of every part but the last (EntityTooSmall on completion).
MIN_PART_SIZE = 5 * 1024 * 1024
# Completed uploads remembered so a repeated CompleteMultipartUpload answers 200 again.
REMEMBER_COMPLETED = 1000


@dataclass
class Part:
    """One uploaded part: where its bytes are and their MD5."""

    number: int
    md5: bytes
    size: int
    in_slot: bool  # True: bytes live in the assembly file at (number - 1) * slot_size
    last_modified: float
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def etag(self) -> str:
        return self.md5.hex()


@dataclass
class Upload:
    """An in-progress multipart upload of one key."""

    upload_id: str
    bucket: str
    key: str
    folder: Path
    created: float
    slot_size: int | None = None
    parts: dict[int, Part] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    meta: ObjectMeta = field(default_factory=ObjectMeta)
    checksum_algorithm: str | None = None  # x-amz-checksum-algorithm given at creation (lower case)
    checksum_type: str = "COMPOSITE"  # or FULL_OBJECT (CRCs only)
    writing: set[int] = field(default_factory=set)  # part numbers being written into their slot

    @property
    def assembly(self) -> Path:
        return self.folder / "assembly"

    def part_path(self, number: int) -> Path:
        return self.folder / f"part-{number:05d}"


def no_such_upload(upload_id: str) -> S3Error:
    """404 NoSuchUpload."""
    return S3Error(
        404,
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        UploadId=upload_id,
    )


class PartWriter:
    """Where the bytes of one part go: a slot of the assembly file, or a part file of its own."""

    def __init__(self, upload: Upload, number: int, declared_size: int | None) -> None:
        self.upload = upload
        self.number = number
        with upload.lock:
            if upload.slot_size is None and declared_size:
                # Clients upload equal parts (the last one smaller), so the first part's size is the
                # slot size; parts then land at their final offset and completion is a rename.
                upload.slot_size = declared_size
            slot = upload.slot_size
            # Two uploads of one part number at once: only one may use the slot, the other gets a file.
            self.in_slot = bool(slot and declared_size is not None and declared_size <= slot and number not in upload.writing)
            if self.in_slot:
                upload.writing.add(number)
            upload.parts.pop(number, None)  # a re-upload replaces; a failed one leaves nothing
        if self.in_slot:
            assert slot is not None
            self.fd = os.open(upload.assembly, os.O_WRONLY | os.O_CREAT, 0o644)
            self.offset = (number - 1) * slot
            self.limit: int | None = slot
            self.tmp: Path | None = None
        else:
            self.tmp = upload.folder / f"tmp-{number:05d}-{secrets.token_hex(4)}"
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self.offset = 0
            self.limit = None
        self.size = 0

    def write(self, data: memoryview) -> None:
        """Write the next piece of the part."""
        if self.limit is not None and self.size + len(data) > self.limit:
            raise S3Error(400, "IncompleteBody", "part is larger than its declared length")
        while data:
            n = os.pwrite(self.fd, data, self.offset + self.size)
            data = data[n:]
            self.size += n

    def commit(self, md5: bytes, checksums: dict[str, str] | None = None) -> Part:
        """Record the part as uploaded: the upload of a part number that finishes last wins."""
        os.close(self.fd)
        part = Part(self.number, md5, self.size, self.in_slot, time.time(), dict(checksums or {}))
        with self.upload.lock:
            if self.tmp is not None:
                os.replace(self.tmp, self.upload.part_path(self.number))
            self.upload.parts[self.number] = part
            if self.in_slot:
                self.upload.writing.discard(self.number)
        return part

    def abort(self) -> None:
        """Forget a part whose upload failed."""
        try:
            os.close(self.fd)
        except OSError:
            pass
        if self.in_slot:
            with self.upload.lock:
                self.upload.writing.discard(self.number)
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


class MultipartStore:
    """All in-progress uploads of one writable bucket."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.staging = bucket.root / STAGING_DIR / "uploads"
        self._uploads: dict[str, Upload] = {}
        self._completed: OrderedDict[str, tuple[str, str, frozenset[tuple[int, str]], dict[str, str]]] = OrderedDict()
        self._lock = threading.Lock()
        self.min_part_size = MIN_PART_SIZE

    def create(
        self, key: str, meta: ObjectMeta | None = None, checksum_algorithm: str | None = None, checksum_type: str = "COMPOSITE"
    ) -> Upload:
        """Start an upload of key (with the metadata the object will get).

        Args:
            key: the object's key.
            meta: the metadata given at creation (content type, user metadata).
            checksum_algorithm: x-amz-checksum-algorithm given at creation (lower case), or None.
            checksum_type: "COMPOSITE" or "FULL_OBJECT" (CRCs only), how the object's checksum is made.
        """
        self.bucket.path_for(key)  # refuse bad keys before anything is staged
        upload_id = secrets.token_urlsafe(24)
        folder = self.staging / upload_id
        upload = Upload(upload_id, self.bucket.name, key, folder, time.time())
        upload.meta = meta or ObjectMeta()
        upload.checksum_algorithm = checksum_algorithm
        upload.checksum_type = checksum_type
        with self._lock:
            folder.mkdir(parents=True)
            self._uploads[upload_id] = upload
        return upload

    def get(self, key: str, upload_id: str) -> Upload:
        """The upload with this id for this key, or NoSuchUpload."""
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise no_such_upload(upload_id)
        return upload

    def completed(self, key: str, upload_id: str, listed: list[tuple[int, str]]) -> tuple[str, dict[str, str]] | None:
        """ETag and checksum headers of an upload already completed with these parts (a repeated Complete)."""
        with self._lock:
            done = self._completed.get(upload_id)
        if done is None or done[0] != key or frozenset(listed) != done[2]:
            return None
        return done[1], dict(done[3])

    def uploads(self) -> list[Upload]:
        """Every in-progress upload, by key then start time."""
        with self._lock:
            return sorted(self._uploads.values(), key=lambda u: (u.key, u.created))

    def part_writer(self, upload: Upload, number: int, declared_size: int | None) -> PartWriter:
        """A writer for part `number` (1..10000)."""
        if not 1 <= number <= MAX_PARTS:
            raise invalid_argument("Part number must be an integer between 1 and 10000, inclusive")
        return PartWriter(upload, number, declared_size)

    def abort(self, upload: Upload) -> None:
        """Drop an upload and its staged bytes."""
        self._forget(upload)

    def complete(
        self,
        upload: Upload,
        listed: list[tuple[int, str]],
        precheck: Callable[[], None] | None = None,
        part_checksums: dict[int, dict[str, str]] | None = None,
        expected: dict[str, str] | None = None,
    ) -> tuple[Path, str, os.stat_result, list[Part]]:
        """Assemble the listed parts into the object; returns its path, multipart ETag, stat and parts.

        A part number listed twice (a part re-sent while the first upload was still running)
        is one part: the upload of it that finished last, if any listed ETag names it.

        Args:
            upload: the upload to complete.
            listed: (part number, ETag) pairs of the CompleteMultipartUpload body, in order.
            precheck: the conditions of the write (If-Match...), run right before the rename; may raise.
            part_checksums: per part number, the checksums the body gives; each must match the part's.
            expected: checksum headers naming the whole object; they must match the computed checksum.
        """
        numbers = [n for n, _ in listed]
        if any(b < a for a, b in zip(numbers, numbers[1:])):
            raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending order. The parts list must be specified in order by part number.")
        wanted: dict[int, set[str]] = {}
        for number, etag in listed:
            wanted.setdefault(number, set()).add(etag.lower().strip('"'))
        with upload.lock:
            chosen = []
            for number, etags in wanted.items():
                part = upload.parts.get(number)
                if part is None or part.etag not in etags:
                    raise S3Error(
                        400,
                        "InvalidPart",
                        "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not have matched the part's entity tag.",
                        PartNumber=str(number),
                        ETag=sorted(etags)[0],
                    )
                for name, value in (part_checksums or {}).get(number, {}).items():
                    if part.checksums.get(name, value) != value:
                        raise S3Error(
                            400,
                            "InvalidPart",
                            f"The {name[len(CHECKSUM_PREFIX):].upper()} given for part {number} does not match the part's checksum.",
                            PartNumber=str(number),
                        )
                chosen.append(part)
            slot = upload.slot_size
        for part in chosen[:-1]:
            if part.size < self.min_part_size:
                raise S3Error(
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                    ProposedSize=str(part.size),
                    MinSizeAllowed=str(self.min_part_size),
                    PartNumber=str(part.number),
                )
        target = prepare_target(self.bucket, upload.key)
        if precheck is not None:
            precheck()  # fail before assembling; checked again right before the rename
        total = sum(p.size for p in chosen)
        etag = multipart_etag([p.md5 for p in chosen])
        meta = upload.meta
        meta.etag = etag
        meta.parts = [p.size for p in chosen]
        meta.checksums = {}
        meta.part_checksums = None
        algorithm = upload.checksum_algorithm
        name = CHECKSUM_PREFIX + algorithm if algorithm else ""
        if algorithm and all(name in p.checksums for p in chosen):
            raw = [base64.b64decode(p.checksums[name]) for p in chosen]
            meta.part_checksums = [p.checksums[name] for p in chosen]
            if upload.checksum_type == "FULL_OBJECT":
                # The CRC of the whole object, combined from the parts' CRCs and sizes.
                whole = raw[0]
                for crc, p in zip(raw[1:], chosen[1:]):
                    whole = crc_combine(algorithm, whole, crc, p.size)
                meta.checksums = {name: base64.b64encode(whole).decode(), "x-amz-checksum-type": "FULL_OBJECT"}
            else:
                # S3's composite checksum: the checksum of the parts' binary checksums, then "-N".
                digest = new_checksum(algorithm)
                for r in raw:
                    digest.update(r)
                meta.checksums = {name: f"{base64.b64encode(digest.digest()).decode()}-{len(chosen)}", "x-amz-checksum-type": "COMPOSITE"}
        for name, value in (expected or {}).items():
            # A checksum header on Complete names the whole object: with or without the "-N".
            mine = meta.checksums.get(name)
            if mine is None or value.strip() not in (mine, mine.rsplit("-", 1)[0]):
                raise S3Error(400, "BadDigest", f"The {name[len(CHECKSUM_PREFIX):].upper()} you specified did not match the calculated checksum.")
        in_place = (
            slot is not None
            and [p.number for p in chosen] == list(range(1, len(chosen) + 1))
            and all(p.in_slot for p in chosen)
            and all(p.size == slot for p in chosen[:-1])
        )
        st: os.stat_result | None = None
        if in_place:
            # Under the lock for conditional completes: a failed condition leaves the assembly
            # untruncated, so a later Complete with more parts still finds their bytes.
            with COMMIT_LOCK if precheck is not None else contextlib.nullcontext():
                if precheck is not None:
                    precheck()
                os.truncate(upload.assembly, total)
                sidecar = not self.bucket.meta.attach_path(upload.assembly, meta)
                try:
                    os.replace(upload.assembly, target)
                except OSError:
                    in_place = False  # e.g. the target folder is another filesystem: copy instead
            if in_place:
                if sidecar:
                    self.bucket.meta.write_sidecar(upload.key, meta)
                st = target.stat()
        if not in_place:
            st = self._concatenate(upload, chosen, slot, target, meta, precheck)
        assert st is not None
        with self._lock:
            self._completed[upload.upload_id] = (upload.key, etag, frozenset(listed), dict(meta.checksums))
            while len(self._completed) > REMEMBER_COMPLETED:
                self._completed.popitem(last=False)
        self._forget(upload)
        return target, etag, st, chosen

    def _forget(self, upload: Upload) -> None:
        # The staging folder is visible in the output folder: keep it only while uploads run.
        with self._lock:
            self._uploads.pop(upload.upload_id, None)
            shutil.rmtree(upload.folder, ignore_errors=True)
            if not self._uploads:
                for folder in (self.staging, self.staging.parent):
                    try:
                        folder.rmdir()
                    except OSError:
                        break

    def _concatenate(
        self, upload: Upload, parts: list[Part], slot: int | None, target: Path, meta: ObjectMeta, precheck: Callable[[], None] | None
    ) -> os.stat_result:
        with AtomicFile(target) as out:
            assembly_fd = os.open(upload.assembly, os.O_RDONLY) if upload.assembly.exists() else -1
            try:
                for part in parts:
                    if part.in_slot:
                        assert slot is not None
                        copy_range(assembly_fd, out.fd, (part.number - 1) * slot, part.size, None)
                    else:
                        fd = os.open(upload.part_path(part.number), os.O_RDONLY)
                        try:
                            copy_range(fd, out.fd, 0, part.size, None)
                        finally:
                            os.close(fd)
            finally:
                if assembly_fd >= 0:
                    os.close(assembly_fd)
            return out.commit(self.bucket, upload.key, meta, precheck)

    def close(self) -> None:
        """Abort every upload and remove the staging folder."""
        with self._lock:
            self._uploads.clear()
        shutil.rmtree(self.bucket.root / STAGING_DIR, ignore_errors=True)
