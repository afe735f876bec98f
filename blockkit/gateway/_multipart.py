"""Multipart uploads: parts staged inside the output folder (`.blockkit-gateway/uploads/<id>/`), assembled and renamed on completion."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from blockkit.gateway._beneath import DIR_FLAGS, FILE_FLAGS, NEW_FILE_FLAGS, own_folder
from blockkit.gateway._body import CHECKSUM_PREFIX, crc_combine, new_checksum
from blockkit.gateway._buckets import STAGING_DIR, Bucket
from blockkit.gateway._errors import S3Error, invalid_argument
from blockkit.gateway._etags import multipart_etag
from blockkit.gateway._metadata import ObjectMeta
from blockkit.gateway._writes import COMMIT_LOCK, AtomicFile, Target, copy_range, names_a_folder

MAX_PARTS = 10_000
# S3's minimum size of every part but the last (EntityTooSmall on completion).
MIN_PART_SIZE = 5 * 1024 * 1024
# Completed uploads remembered so a repeated CompleteMultipartUpload answers 200 again.
REMEMBER_COMPLETED = 1000
# Parts of at most S3's largest part size share one assembly file with a slot each, as long as the
# file stays far below what file systems allow (ext4: 16 TiB); other parts get a file of their own.
MAX_SLOT = 5 * 1024**3
MAX_ASSEMBLY = 2 * 1024**4


@dataclass
class Part:
    """One uploaded part: where its bytes are and their MD5."""

    number: int
    md5: bytes
    size: int
    in_slot: bool  # True: bytes live in the assembly file at (number - 1) * slot_size
    last_modified: float
    checksums: dict[str, str] = field(default_factory=dict)
    ident: tuple[int, int] = (0, 0)  # (device, inode) of a part file of its own

    @property
    def etag(self) -> str:
        return self.md5.hex()


@dataclass
class Upload:
    """An in-progress multipart upload of one key.

    Its staged files are in the block's output folder, so they are reached by name only beneath
    the bucket folder without following links, and checked to be the very folder and assembly file
    the gateway made (by device and inode): nothing the block puts in their place is used.
    """

    upload_id: str
    bucket: str
    key: str
    created: float
    folder_ident: tuple[int, int] = (0, 0)
    assembly_ident: tuple[int, int] = (0, 0)
    slot_size: int | None = None
    parts: dict[int, Part] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # One CompleteMultipartUpload at a time; a later one then finds the upload done.
    completion: threading.Lock = field(default_factory=threading.Lock)
    meta: ObjectMeta = field(default_factory=ObjectMeta)
    checksum_algorithm: str | None = None  # x-amz-checksum-algorithm given at creation (lower case)
    checksum_type: str = "COMPOSITE"  # or FULL_OBJECT (CRCs only)
    writing: set[int] = field(default_factory=set)  # part numbers being written into their slot
    completing: bool = False  # a Complete is assembling: new parts get a file of their own
    done: bool = False  # completed or aborted: no further byte reaches it


def part_name(number: int) -> str:
    """The file name of a part kept in a file of its own."""
    return f"part-{number:05d}"


def _ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


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

    def __init__(self, store: "MultipartStore", upload: Upload, number: int, declared_size: int | None) -> None:
        self.store = store
        self.upload = upload
        self.number = number
        self.tmp: str | None = None
        self.fd = -1
        with upload.lock:
            if upload.done:
                raise no_such_upload(upload.upload_id)
            if upload.slot_size is None and declared_size and declared_size <= MAX_SLOT and not upload.completing:
                # Clients upload equal parts (the last one smaller), so the first part's size is the
                # slot size; parts then land at their final offset and completion is a rename.
                # (Taken back if that part fails before any part used the slot.)
                upload.slot_size = declared_size
            slot = upload.slot_size
            # Two uploads of one part number at once: only one may use the slot, the other gets a file;
            # so does a part arriving while a Complete assembles, and one whose slot lies too far out.
            self.in_slot = bool(
                slot
                and declared_size is not None
                and declared_size <= slot
                and number not in upload.writing
                and not upload.completing
                and number * slot <= MAX_ASSEMBLY
            )
            if self.in_slot:
                upload.writing.add(number)
            upload.parts.pop(number, None)  # a re-upload replaces; a failed one leaves nothing
        try:
            folder = store.open_folder(upload)
            try:
                if self.in_slot:
                    assert slot is not None
                    self.fd = store.open_assembly(upload, folder, os.O_WRONLY)
                    self.offset = (number - 1) * slot
                    self.limit: int | None = slot
                else:
                    self.tmp = f"tmp-{number:05d}-{secrets.token_hex(4)}"
                    self.fd = os.open(self.tmp, NEW_FILE_FLAGS, 0o644, dir_fd=folder)
                    self.offset = 0
                    self.limit = None
            finally:
                os.close(folder)
        except BaseException:
            self.abort()
            raise
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
        """Record the part as uploaded: the upload of a part number that finishes last wins.

        A part that finishes after its upload was completed or aborted is NoSuchUpload.
        """
        ident = _ident(os.fstat(self.fd))
        os.close(self.fd)
        self.fd = -1
        part = Part(self.number, md5, self.size, self.in_slot, time.time(), dict(checksums or {}), ident)
        upload = self.upload
        with upload.lock:
            if self.in_slot:
                upload.writing.discard(self.number)
            if upload.done:
                raise no_such_upload(upload.upload_id)
            if self.tmp is not None:
                folder = self.store.open_folder(upload)
                try:
                    os.replace(self.tmp, part_name(self.number), src_dir_fd=folder, dst_dir_fd=folder)
                finally:
                    os.close(folder)
                self.tmp = None
            upload.parts[self.number] = part
        return part

    def abort(self) -> None:
        """Forget a part whose upload failed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        upload = self.upload
        with upload.lock:
            if self.in_slot:
                upload.writing.discard(self.number)
                self.in_slot = False
            if not upload.writing and not any(p.in_slot for p in upload.parts.values()):
                upload.slot_size = None  # a failed first part does not fix the slot size
            if self.tmp is not None and not upload.done:
                with contextlib.suppress(OSError, S3Error):
                    folder = self.store.open_folder(upload)
                    try:
                        os.unlink(self.tmp, dir_fd=folder)
                    finally:
                        os.close(folder)
            self.tmp = None


class MultipartStore:
    """All in-progress uploads of one writable bucket."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self._uploads: dict[str, Upload] = {}
        self._completed: OrderedDict[str, tuple[str, str, frozenset[tuple[int, str]], dict[str, str]]] = OrderedDict()
        self._lock = threading.Lock()
        self.min_part_size = MIN_PART_SIZE

    def _staging(self, create: bool) -> int | None:
        """The folder holding the uploads' folders (`out/.blockkit-gateway/uploads`), never reached through a link."""
        root = os.open(self.bucket.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            gateway = own_folder(root, STAGING_DIR, create)
        finally:
            os.close(root)
        if gateway is None:
            return None
        try:
            return own_folder(gateway, "uploads", create)
        finally:
            os.close(gateway)

    def open_folder(self, upload: Upload) -> int:
        """The upload's own folder, opened by descriptor and checked to be the one made for it (else NoSuchUpload)."""
        staging = self._staging(create=False)
        if staging is None:
            raise no_such_upload(upload.upload_id)
        try:
            fd = os.open(upload.upload_id, DIR_FLAGS, dir_fd=staging)
        except OSError:
            raise no_such_upload(upload.upload_id) from None
        finally:
            os.close(staging)
        if _ident(os.fstat(fd)) != upload.folder_ident:
            os.close(fd)
            raise no_such_upload(upload.upload_id)
        return fd

    def open_assembly(self, upload: Upload, folder: int, flags: int) -> int:
        """The upload's assembly file, checked to be the one made for it (else NoSuchUpload)."""
        try:
            # O_NONBLOCK: a FIFO planted in its place must not hold the request (the check below refuses it).
            fd = os.open("assembly", flags | FILE_FLAGS, dir_fd=folder)
        except OSError:
            raise no_such_upload(upload.upload_id) from None
        if _ident(os.fstat(fd)) != upload.assembly_ident:
            os.close(fd)
            raise no_such_upload(upload.upload_id)
        return fd

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
        self.bucket.check_key(key)  # refuse bad keys before anything is staged
        upload_id = secrets.token_urlsafe(24)
        upload = Upload(upload_id, self.bucket.name, key, time.time())
        upload.meta = meta or ObjectMeta()
        upload.checksum_algorithm = checksum_algorithm
        upload.checksum_type = checksum_type
        with self._lock:
            staging = self._staging(create=True)
            assert staging is not None
            try:
                os.mkdir(upload_id, 0o755, dir_fd=staging)
                folder = os.open(upload_id, DIR_FLAGS, dir_fd=staging)
            finally:
                os.close(staging)
            try:
                upload.folder_ident = _ident(os.fstat(folder))
                fd = os.open("assembly", NEW_FILE_FLAGS, 0o644, dir_fd=folder)
                upload.assembly_ident = _ident(os.fstat(fd))
                os.close(fd)
            finally:
                os.close(folder)
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
        return PartWriter(self, upload, number, declared_size)

    def abort(self, upload: Upload) -> None:
        """Drop an upload and its staged bytes."""
        self._forget(upload)

    def complete(
        self,
        upload: Upload,
        listed: list[tuple[int, str]],
        target: Target,
        precheck: Callable[[], None] | None = None,
        part_checksums: dict[int, dict[str, str]] | None = None,
        expected: dict[str, str] | None = None,
    ) -> tuple[str, os.stat_result, list[Part]]:
        """Assemble the listed parts into the object at target; returns its multipart ETag, stat and parts.

        A part number listed twice (a part re-sent while the first upload was still running)
        is one part: the upload of it that finished last, if any listed ETag names it. The caller
        holds `upload.completion`. Parts still arriving are never part of the object: while a
        Complete runs, new parts go to files of their own, and a part still writing into its
        assembly slot makes the Complete copy the listed parts instead of renaming the assembly.

        Args:
            upload: the upload to complete.
            listed: (part number, ETag) pairs of the CompleteMultipartUpload body, in order.
            target: where the object goes (its folder open beneath the bucket folder).
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
            if upload.done:
                raise no_such_upload(upload.upload_id)
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
            upload.completing = True
            writers_in_slots = bool(upload.writing)
        try:
            st, etag = self._assemble(upload, chosen, slot, writers_in_slots, target, precheck, expected)
        except BaseException:
            with upload.lock:
                upload.completing = False
            raise
        with self._lock:
            self._completed[upload.upload_id] = (upload.key, etag, frozenset(listed), dict(upload.meta.checksums))
            while len(self._completed) > REMEMBER_COMPLETED:
                self._completed.popitem(last=False)
        self._forget(upload)
        return etag, st, chosen

    def _assemble(
        self,
        upload: Upload,
        chosen: list[Part],
        slot: int | None,
        writers_in_slots: bool,
        target: Target,
        precheck: Callable[[], None] | None,
        expected: dict[str, str] | None,
    ) -> tuple[os.stat_result, str]:
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
            and not writers_in_slots  # a part still writing into the assembly would write into the object
            and [p.number for p in chosen] == list(range(1, len(chosen) + 1))
            and all(p.in_slot for p in chosen)
            and all(p.size == slot for p in chosen[:-1])
        )
        folder = self.open_folder(upload)
        try:
            if in_place:
                st = self._rename_assembly(upload, folder, total, target, meta, precheck)
                if st is not None:
                    return st, etag
            return self._concatenate(upload, folder, chosen, slot, target, meta, precheck), etag
        finally:
            os.close(folder)

    def _rename_assembly(
        self, upload: Upload, folder: int, total: int, target: Target, meta: ObjectMeta, precheck: Callable[[], None] | None
    ) -> os.stat_result | None:
        """Cut the assembly to the object's size and rename it into place; None: copy instead."""
        fd = self.open_assembly(upload, folder, os.O_RDWR)
        try:
            # Under the lock for conditional completes: a failed condition leaves the assembly
            # untruncated, so a later Complete with more parts still finds their bytes.
            with COMMIT_LOCK if precheck is not None else contextlib.nullcontext():
                if precheck is not None:
                    precheck()
                os.ftruncate(fd, total)
                sidecar = not self.bucket.meta.attach(fd, meta)
                st = os.fstat(fd)
                try:
                    if _ident(os.stat("assembly", dir_fd=folder, follow_symlinks=False)) != upload.assembly_ident:
                        return None
                    os.replace("assembly", target.name, src_dir_fd=folder, dst_dir_fd=target.folder)
                except IsADirectoryError:
                    raise names_a_folder(upload.key) from None
                except OSError:
                    return None  # e.g. the target folder is another filesystem: copy instead
        finally:
            os.close(fd)
        if sidecar:
            self.bucket.meta.write_sidecar(upload.key, meta)
        return st

    def _forget(self, upload: Upload) -> None:
        # The staging folder is visible in the output folder: keep it only while uploads run.
        with upload.lock:
            upload.done = True
        with self._lock:
            self._uploads.pop(upload.upload_id, None)
            with contextlib.suppress(OSError, S3Error):
                folder = self.open_folder(upload)
                try:
                    _empty(folder)
                finally:
                    os.close(folder)
            staging = self._staging(create=False)
            if staging is None:
                return
            try:
                with contextlib.suppress(OSError):
                    os.rmdir(upload.upload_id, dir_fd=staging)
            finally:
                os.close(staging)
            if not self._uploads:
                self._remove_staging()

    def _remove_staging(self) -> None:
        root = os.open(self.bucket.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            gateway = own_folder(root, STAGING_DIR, create=False)
            if gateway is None:
                return
            try:
                os.rmdir("uploads", dir_fd=gateway)
            except OSError:
                return
            finally:
                os.close(gateway)
            with contextlib.suppress(OSError):
                os.rmdir(STAGING_DIR, dir_fd=root)
        finally:
            os.close(root)

    def _concatenate(
        self,
        upload: Upload,
        folder: int,
        parts: list[Part],
        slot: int | None,
        target: Target,
        meta: ObjectMeta,
        precheck: Callable[[], None] | None,
    ) -> os.stat_result:
        with AtomicFile(target) as out:
            assembly = self.open_assembly(upload, folder, os.O_RDONLY)
            try:
                for part in parts:
                    if part.in_slot:
                        assert slot is not None
                        copy_range(assembly, out.fd, (part.number - 1) * slot, part.size, None)
                    else:
                        fd = os.open(part_name(part.number), FILE_FLAGS, dir_fd=folder)
                        try:
                            if _ident(os.fstat(fd)) != part.ident:
                                raise S3Error(400, "InvalidPart", "a part's staged file was replaced", PartNumber=str(part.number))
                            copy_range(fd, out.fd, 0, part.size, None)
                        finally:
                            os.close(fd)
            finally:
                os.close(assembly)
            return out.commit(self.bucket, upload.key, meta, precheck)

    def close(self) -> None:
        """Abort every upload and remove the staging folder."""
        with self._lock:
            self._uploads.clear()
        with contextlib.suppress(OSError):
            root = os.open(self.bucket.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _remove_tree(root, STAGING_DIR)
            finally:
                os.close(root)


def _empty(folder: int, depth: int = 0) -> None:
    """Remove everything in an open folder, never following a link (what lies deeper than 32 stays)."""
    with os.scandir(folder) as it:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in names:
        with contextlib.suppress(OSError):
            if is_dir and depth < 32:
                _remove_tree(folder, name, depth + 1)
            elif not is_dir:
                os.unlink(name, dir_fd=folder)


def _remove_tree(parent: int, name: str, depth: int = 0) -> None:
    """Remove the folder `name` of `parent` with everything in it; a link under that name is left alone."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    try:
        _empty(fd, depth)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)
