"""S3 locations (`s3://bucket/key`, access-point ARNs as the bucket) and boto3 clients from keystore keys."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blockkit.storage._errors import AccessDenied, SourceNotFound, TransferFailed, UnsupportedURI
from blockkit.storage._keystore import Key, S3KeyConfig

if TYPE_CHECKING:
    from blockkit.storage._transfer import Document, Upload

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_ACCOUNT = re.compile(r"^\d{12}$")
_AP_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]{1,48}[a-z0-9]$")
_PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
MAX_OBJECTS = 100_000  # objects of one stage-in listing (as WebDAV's MAX_ENTRIES)
MAX_PAGE_BYTES = 16 << 20  # one listing page's XML (1000 keys take about 300 KB)
PAGES_PER_OBJECTS = 100  # a listing may take max_objects / 100 pages (a full page holds 1000 keys): a hostile
# store may send empty truncated pages forever
LIST_DEADLINE = 600.0  # seconds for one whole listing (HEAD and every page, all attempts together)


@dataclass(frozen=True)
class S3Location:
    """A bucket (name or access-point ARN) and a key or prefix."""

    bucket: str
    key: str = ""
    region: str | None = None  # from an access-point ARN; it decides where requests go

    @property
    def is_access_point(self) -> bool:
        """True when the bucket is an access-point ARN."""
        return self.bucket.startswith("arn:")

    @property
    def uri(self) -> str:
        """The `s3://` URI."""
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> "S3Location":
        """The location of `name` under this prefix."""
        prefix = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Location(self.bucket, prefix + name.lstrip("/"), self.region)


def parse_s3_uri(uri: str) -> S3Location:
    """Parse `s3://bucket/key` or `s3://arn:<partition>:s3:<region>:<account>:accesspoint/<name>/key`."""
    if not uri.startswith("s3://"):
        raise UnsupportedURI(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://"):]
    if rest.startswith("arn:"):
        return _parse_access_point(uri, rest)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UnsupportedURI(f"{uri!r} names no bucket; use s3://<bucket>/<key or prefix>")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UnsupportedURI(
            f"{uri!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')"
        )
    return S3Location(bucket, key)


def _parse_access_point(uri: str, rest: str) -> S3Location:
    # arn:partition:service:region:account:resource -- the resource keeps its '/'s,
    # so split on ':' at most 5 times, then split the resource on '/'.
    parts = rest.split(":", 5)
    hint = "expected s3://arn:aws:s3:<region>:<account-id>:accesspoint/<name>/<key>"
    if len(parts) != 6:
        raise UnsupportedURI(f"{uri!r}: malformed access-point ARN; {hint}")
    _, partition, service, region, account, resource = parts
    if partition not in _PARTITIONS or service != "s3":
        raise UnsupportedURI(f"{uri!r}: ARN partition/service {partition}:{service} is not an S3 access point; {hint}")
    if not _REGION.match(region):
        raise UnsupportedURI(f"{uri!r}: {region!r} is not a region; {hint}")
    if not _ACCOUNT.match(account):
        raise UnsupportedURI(f"{uri!r}: account {account!r} must be 12 digits; {hint}")
    kind, _, tail = resource.partition("/")
    name, _, key = tail.partition("/")
    if kind != "accesspoint" or not _AP_NAME.match(name):
        raise UnsupportedURI(f"{uri!r}: resource must be accesspoint/<name>; {hint}")
    arn = f"arn:{partition}:s3:{region}:{account}:accesspoint/{name}"
    return S3Location(arn, key, region)


def s3_client(
    key: Key | None = None, *, region: str | None = None, max_pool: int = 16, endpoint: str | None = None,
    retries: bool = True, watched: bool = False,
) -> Any:
    """A boto3 S3 client for a keystore key, or an anonymous (unsigned) one when key is None.

    Without a key no ambient AWS credentials are used: a missing key never silently becomes someone else's.
    Signatures are always SigV4.

    Args:
        key: the keystore key (an s3 key: access key, secret, endpoint, region), or None for anonymous.
        region: the region requests go to (an access point's); default: the key's, else us-east-1.
        max_pool: connections kept open, at least the number of parallel transfers.
        endpoint: the endpoint of an anonymous client (a key brings its own).
        retries: False turns botocore's own retries off, for callers that retry themselves (stage-in
            retries in transfer.with_retries: one place, so a failing GET is tried `RetryPolicy.attempts`
            times, not attempts x 4).
        watched: True makes the client's connections obey this thread's `http.Watchdog` (stage-in's
            deadlines: a store that trickles headers or body is cut off when the deadline passes).
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    kwargs: dict[str, Any] = {}
    cfg: dict[str, Any] = {
        "max_pool_connections": max_pool,
        "retries": {"total_max_attempts": 4 if retries else 1, "mode": "standard"},
        "signature_version": "s3v4",
    }
    if key is None:
        cfg["signature_version"] = UNSIGNED
        region = region or "us-east-1"
        if endpoint:
            kwargs["endpoint_url"] = endpoint
            cfg["s3"] = {"addressing_style": "path"}
    else:
        conf = key.config
        if not isinstance(conf, S3KeyConfig):
            from blockkit.storage._errors import WrongKeyType

            raise WrongKeyType(f"key {key.name!r} is a {key.type} key; an s3 key is needed here")
        kwargs.update(aws_access_key_id=conf.access_key, aws_secret_access_key=conf.secret_key)
        if conf.endpoint:
            kwargs["endpoint_url"] = conf.endpoint
            # custom endpoints (SeaweedFS, MinIO, Ceph...) rarely have wildcard DNS
            cfg["s3"] = {"addressing_style": "path"}
        region = region or conf.region or "us-east-1"
    session = boto3.session.Session()
    client = session.client("s3", region_name=region, config=Config(**cfg), **kwargs)
    if watched:
        watch_sockets(client)
    return client


class _PageTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _page_bound(response_dict: dict[str, Any], **_: Any) -> None:
    """botocore's before-parse hook: refuse a listing page larger than MAX_PAGE_BYTES before it is parsed."""
    body = response_dict.get("body")
    if isinstance(body, (bytes, bytearray)) and len(body) > MAX_PAGE_BYTES:
        raise _PageTooLarge(len(body))


def watch_sockets(client: Any) -> None:
    """Make a boto3 client's connections report their socket to this thread's `http.Watchdog`.

    botocore has no public hook for its connection classes, so the pool classes of the client's own
    urllib3 session are replaced by watched subclasses of botocore's (an AttributeError here means a
    botocore release moved them: the stage-in tests of slow S3 servers fail loudly then).
    """
    from botocore.awsrequest import AWSHTTPConnectionPool, AWSHTTPSConnectionPool

    from blockkit.storage._http import watched

    class WatchedPool(AWSHTTPConnectionPool):
        ConnectionCls = watched(AWSHTTPConnectionPool.ConnectionCls)

    class WatchedHTTPSPool(AWSHTTPSConnectionPool):
        ConnectionCls = watched(AWSHTTPSConnectionPool.ConnectionCls)

    classes = {"http": WatchedPool, "https": WatchedHTTPSPool}
    http_session = client._endpoint.http_session
    http_session._pool_classes_by_scheme = classes  # proxy managers made later
    http_session._manager.pool_classes_by_scheme = classes


def s3_error(exc: Exception, what: str) -> Exception:
    """Map a botocore exception to a blockkit error with one line a person can act on."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket", "NoSuchKey", "404", "NotFound") or status == 404:
            return SourceNotFound(f"{what}: not found ({code or status}); check the bucket and key")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return AccessDenied(f"{what}: the store refused the credentials ({code}); check the key's access/secret key")
        if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
            return AccessDenied(
                f"{what}: access denied; give a keystore key with read access (--key NAME) or check the bucket policy"
            )
        return TransferFailed(f"{what}: {code or status}: {err.get('Message', '')}".rstrip(": "))
    return TransferFailed(f"{what}: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class S3Object:
    """A listed object: key, size and ETag (quotes stripped)."""

    key: str
    size: int
    etag: str

    def md5(self) -> str | None:
        """The MD5 the ETag gives for a single-part upload (multipart ETags have a '-')."""
        etag = self.etag.strip('"')
        if len(etag) == 32 and "-" not in etag and all(c in "0123456789abcdef" for c in etag.lower()):
            return etag.lower()
        return None


def _transient_or_final(exc: Exception, what: str) -> Exception:
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError, ReadTimeoutError

    from blockkit.storage._transfer import TransientError

    if isinstance(exc, (BotoConnectionError, HTTPClientError, ReadTimeoutError)):
        return TransientError(type(exc).__name__)
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if status >= 500 or status == 429 or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
            return TransientError(f"{code or status}")
    return s3_error(exc, what)


def list_objects(
    client: Any, loc: S3Location, policy: Any = None, *, max_objects: int = MAX_OBJECTS,
    deadline: float = LIST_DEADLINE,
) -> list[S3Object]:
    """The object `loc.key` if it exists, else every object under the prefix `loc.key/` (retried per `policy`).

    Args:
        client: a boto3 S3 client (`s3_client`, `watched=True` for the deadline to cut a trickling store off).
        loc: the bucket and key or prefix.
        policy: the RetryPolicy for transient failures.
        max_objects: more objects, or more than max_objects / 100 pages, is a StorageError: a store that
            lists forever is refused, not held in memory.
        deadline: seconds for the whole listing, all attempts together; then TransferFailed.
    """
    from blockkit.storage._http import Watchdog

    what = f"s3://{loc.bucket}/{loc.key}"
    watch = Watchdog(deadline).start()
    try:
        return _list_objects(client, loc, policy, max_objects)
    except Exception as exc:
        if watch.fired:
            raise TransferFailed(
                f"{what}: listing not finished within {deadline:g} s; the server sends too slowly"
            ) from exc
        raise
    finally:
        watch.stop()


def _list_objects(client: Any, loc: S3Location, policy: Any, max_objects: int) -> list[S3Object]:
    from botocore.exceptions import BotoCoreError, ClientError

    from blockkit.storage._errors import StorageError
    from blockkit.storage._transfer import RetryPolicy, with_retries

    policy = policy or RetryPolicy()
    what = f"s3://{loc.bucket}/{loc.key}"
    if loc.key and not loc.key.endswith("/"):

        def head_once() -> S3Object | None:
            try:
                head = client.head_object(Bucket=loc.bucket, Key=loc.key)
                return S3Object(loc.key, int(head["ContentLength"]), str(head.get("ETag", "")))
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (404, 403):  # 403: HEAD on a missing key without ListBucket
                    return None
                raise _transient_or_final(exc, what) from exc
            except BotoCoreError as exc:
                raise _transient_or_final(exc, what) from exc

        found = with_retries(head_once, policy, what)
        if found is not None:
            return [found]
    prefix = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"

    # Checked before botocore parses a page into objects: a server's page has no size of its own.
    client.meta.events.register("before-parse.s3.ListObjectsV2", _page_bound, unique_id="blockkit-page-bound")

    def list_once() -> list[S3Object]:
        out: list[S3Object] = []
        listed, max_pages = 0, max(1, max_objects // PAGES_PER_OBJECTS)
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
            for number, page in enumerate(pages, 1):
                contents = page.get("Contents", []) or []
                listed += len(contents)
                if listed > max_objects or number > max_pages:
                    raise StorageError(
                        f"{what}: more than {max_objects} objects (or {max_pages} listing pages) under the prefix; "
                        f"stage in a smaller prefix"
                    )
                for obj in contents:
                    if not obj["Key"].endswith("/"):  # folder markers
                        out.append(S3Object(obj["Key"], int(obj["Size"]), str(obj.get("ETag", ""))))
        except _PageTooLarge as exc:
            raise StorageError(f"{what}: a listing page of {exc.size} bytes (a page of 1000 keys is well under "
                               f"{MAX_PAGE_BYTES >> 20} MiB); stage in a smaller prefix") from None
        except (ClientError, BotoCoreError) as exc:
            raise _transient_or_final(exc, what) from exc
        return out

    out = with_retries(list_once, policy, what)
    if not out:
        raise SourceNotFound(f"{what}: no object and no objects under that prefix; check the bucket and key")
    return out


class _Body:
    """The body of a GET, CHUNK bytes at a time; the watchdog of its file stops with it."""

    def __init__(self, body: Any, watch: Any, what: str) -> None:
        self._body, self._watch, self._what = body, watch, what

    def __iter__(self) -> "_Body":
        return self

    def __next__(self) -> bytes:
        from botocore.exceptions import BotoCoreError

        from blockkit.storage._http import too_slow
        from blockkit.storage._transfer import CHUNK, TransientError

        try:
            data = self._body.read(CHUNK)
        except (BotoCoreError, OSError) as exc:
            self.close()
            if self._fired():
                raise too_slow(self._what, None) from exc
            raise TransientError(f"connection broke mid-body ({type(exc).__name__})") from exc
        if not data:
            self.close()
            if self._fired():  # a shut socket may read as the end of the body
                raise too_slow(self._what, None)
            raise StopIteration
        return bytes(data)

    def _fired(self) -> bool:
        return self._watch is not None and bool(self._watch.fired)

    def close(self) -> None:
        """Stop the watchdog and close the connection's body."""
        if self._watch is not None:
            self._watch.stop()
        self._body.close()


def opener(client: Any, bucket: str, key: str) -> Any:
    """An opener for transfer.Download: GET the object and stream its body, watched until the file's deadline.

    The client must be made with `watched=True`: the watchdog then shuts the socket of a store that
    trickles its headers or body (botocore's 60 s read timeout restarts with every byte).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from blockkit.storage._http import Watchdog, too_slow
    from blockkit.storage._transfer import current_deadline

    what = f"s3://{bucket}/{key}"

    def open_() -> tuple[int | None, Any]:
        deadline = current_deadline()
        watch = Watchdog(deadline - time.monotonic()).start() if deadline is not None else None
        try:
            resp = client.get_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if watch is not None:
                watch.stop()
                if watch.fired:
                    raise too_slow(what, None) from exc
            raise _transient_or_final(exc, what) from exc
        except BaseException:
            if watch is not None:
                watch.stop()
            raise
        body = _Body(resp["Body"], watch, what)
        if watch is not None and watch.fired:  # cut off in the headers, which may then look complete
            body.close()
            raise too_slow(what, None)
        length = resp.get("ContentLength")
        return (int(length) if isinstance(length, int) else None), body

    return open_


def get_small(client: Any, loc: S3Location, limit: int, policy: Any, deadline: float | None = None) -> bytes:
    """The bytes of a small object (a STAC document), at most limit + 1 of them, retried per `policy`.

    Args:
        client: a boto3 S3 client (`s3_client`, `watched=True` for the deadline to cut a trickling store off).
        loc: the object's bucket and key.
        limit: the most bytes wanted; one more is read so that the caller sees the document is too big.
        policy: the RetryPolicy for transient failures.
        deadline: seconds for one attempt (default `http.JSON_DEADLINE`); then TransferFailed.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from blockkit.storage._http import JSON_DEADLINE, Watchdog
    from blockkit.storage._transfer import TransientError, with_retries

    what = f"s3://{loc.bucket}/{loc.key}"
    seconds = JSON_DEADLINE if deadline is None else deadline

    def once() -> bytes:
        watch = Watchdog(seconds).start()
        try:
            try:
                resp = client.get_object(Bucket=loc.bucket, Key=loc.key)
            except (ClientError, BotoCoreError) as exc:
                raise _transient_or_final(exc, what) from exc
            body = resp["Body"]
            try:
                data = bytes(body.read(limit + 1))
            except (BotoCoreError, OSError) as exc:
                raise TransientError(f"connection broke mid-body ({type(exc).__name__})") from exc
            finally:
                body.close()
            if watch.fired:
                raise TransientError("cut off")
            return data
        except Exception as exc:
            if watch.fired:
                raise TransferFailed(f"{what}: not received within {seconds:g} s; the server sends too slowly") from exc
            raise
        finally:
            watch.stop()

    return bytes(with_retries(once, policy, what))


# --- stage-out: uploads ----------------------------------------------------------------------------


def check_empty(client: Any, loc: S3Location) -> None:
    """Raise TargetNotEmpty when any object lies under the prefix `loc.key/` (a stage-out would mix with it)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from blockkit.storage._transfer import target_not_empty

    prefix = loc.key.strip("/")
    try:
        listed = client.list_objects_v2(Bucket=loc.bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, f"s3://{loc.bucket}/{prefix}") from exc
    if listed.get("KeyCount") or listed.get("Contents"):
        raise target_not_empty(f"s3://{loc.bucket}/{prefix + '/' if prefix else ''}")


def _upload_error(exc: Exception, what: str) -> Exception:
    """Map a failed upload (boto3 wraps a multipart failure in S3UploadFailedError) to a blockkit error."""
    from boto3.exceptions import S3UploadFailedError

    if not isinstance(exc, S3UploadFailedError):
        return s3_error(exc, what)
    found = re.search(r"An error occurred \((\w+)\)", str(exc))
    code = found.group(1) if found else ""
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return AccessDenied(f"{what}: {code}; the key needs write access to this bucket")
    if code == "NoSuchBucket":
        from blockkit.storage._errors import StorageError

        return StorageError(f"{what}: the bucket does not exist; create it first")
    return TransferFailed(f"{what}: {code or type(exc).__name__}")


def upload(
    key: Key,
    loc: S3Location,
    uploads: list[Upload],
    documents: list[Document],
    *,
    workers: int = 8,
    progress: bool = True,
    multipart_threshold: int = 64 * 1024 * 1024,
    overwrite: bool = False,
) -> str:
    """Upload files, then documents, under the prefix `loc.key`; return the URI of the last document.

    Args:
        key: the keystore key with write access to the bucket.
        loc: the bucket and prefix the files go under (`<prefix>/<relative>`).
        uploads: local files, uploaded `workers` at a time (multipart above `multipart_threshold` bytes).
        documents: small generated files written after all uploads, in order (the catalog last, so
            that a catalog present means everything it links is present).
        workers: files uploaded at once.
        progress: show a progress bar over the bytes on stderr.
        multipart_threshold: file size in bytes from which boto3 uploads in parts.
        overwrite: False refuses a prefix that already holds objects (TargetNotEmpty), before any upload.
    """
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    from blockkit.storage._transfer import Progress, check_relatives, upload_all

    check_relatives(uploads, documents)
    client = s3_client(key, region=loc.region, max_pool=max(workers * 2, 10))
    config = TransferConfig(multipart_threshold=multipart_threshold,
                            multipart_chunksize=max(8 * 1024 * 1024, multipart_threshold // 8), max_concurrency=4)
    prefix = loc.key.strip("/")

    def key_of(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    if not overwrite:
        check_empty(client, loc)
    with Progress(progress, sum(u.size for u in uploads), f"uploading to s3://{loc.bucket}") as bar:
        def put(job: Upload) -> None:
            k = key_of(job.relative)
            try:
                client.upload_file(str(job.path), loc.bucket, k, ExtraArgs={"ContentType": job.content_type},
                                   Config=config, Callback=bar.advance)
            except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
                raise _upload_error(exc, f"s3://{loc.bucket}/{k}") from exc

        upload_all(put, uploads, workers)
    last = ""
    for doc in documents:
        last = key_of(doc.relative)
        try:
            client.put_object(Bucket=loc.bucket, Key=last, Body=doc.data, ContentType=doc.content_type)
        except (ClientError, BotoCoreError) as exc:
            raise s3_error(exc, f"s3://{loc.bucket}/{last}") from exc
    return f"s3://{loc.bucket}/{last}"
