"""Artifacts: put a file in a keystore-backed S3 store and hand out a presigned GET URL with an expiry."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockkit.storage._errors import (
    ArtifactsError,
    ExpiryOutOfRange,
    KeyNotFound,
    NoProviderConfigured,
    UnsupportedKeyType,
    UploadFailed,
    WrongKeyType,
)
from blockkit.storage._keystore import Key, Keystore, S3KeyConfig
from blockkit.storage._s3 import parse_s3_uri, s3_client

MIN_EXPIRY = 1
MAX_EXPIRY = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer
DEFAULT_EXPIRY = 3600  # short: a presigned URL is a bearer credential
MULTIPART_THRESHOLD = 50 * 1024 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Artifact:
    """An uploaded file: where it lives and a URL anyone can GET until `expires_at`."""

    uri: str
    url: str
    expires_at: dt.datetime
    size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"uri": self.uri, "url": self.url, "expires_at": self.expires_at.isoformat(), "size": self.size}


def check_expiry(expires: int) -> int:
    """Return expires if it is 1 s .. 7 days, else raise ExpiryOutOfRange."""
    if not isinstance(expires, int) or isinstance(expires, bool) or not MIN_EXPIRY <= expires <= MAX_EXPIRY:
        raise ExpiryOutOfRange(
            f"expiry {expires!r} s is out of range: use {MIN_EXPIRY}..{MAX_EXPIRY} seconds (7 days is the S3 maximum)"
        )
    return expires


@dataclass
class ArtifactStore:
    """The S3 bucket of one keystore key, used for artifacts under `prefix`."""

    key: Key
    prefix: str = "artifacts"
    multipart_threshold: int = MULTIPART_THRESHOLD

    @classmethod
    def from_keystore(cls, keystore: Keystore, key_name: str | None, **kwargs: Any) -> "ArtifactStore":
        """The artifact store of a named key; explains what to do when there is none."""
        if not key_name:
            raise NoProviderConfigured(
                "no artifact store configured: pass --key NAME of an s3 key with a bucket (`blockkit keys add NAME --type s3 --bucket ...`)"
            )
        try:
            key = keystore.get(key_name)
        except KeyNotFound as exc:
            raise NoProviderConfigured(
                f"no key named {key_name!r} to store artifacts; add one with `blockkit keys add {key_name} --type s3 --bucket ...`"
            ) from exc
        return cls(key, **kwargs)

    def __post_init__(self) -> None:
        if not isinstance(self.key.config, S3KeyConfig):
            raise UnsupportedKeyType(
                f"key {self.key.name!r} is a {self.key.type} key; artifacts need an s3 key with a bucket"
            )

    @property
    def bucket(self) -> str:
        """The bucket artifacts go to."""
        assert isinstance(self.key.config, S3KeyConfig)
        if not self.key.config.bucket:
            raise NoProviderConfigured(
                f"key {self.key.name!r} names no bucket; re-add it with `blockkit keys add {self.key.name} --type s3 --bucket NAME --force`"
            )
        return self.key.config.bucket

    def _client(self) -> Any:
        return s3_client(self.key)

    def object_name_for(self, path: Path, now: dt.datetime | None = None) -> str:
        """`<prefix>/YYYY/MM/DD/<short uuid>-<file name>`: unique, sortable, readable."""
        now = now or dt.datetime.now(dt.timezone.utc)
        safe = _SAFE_NAME.sub("_", path.name) or "file"
        return f"{self.prefix.strip('/')}/{now:%Y/%m/%d}/{uuid.uuid4().hex[:12]}-{safe}".lstrip("/")

    def upload(self, path: Path | str, object_name: str | None = None, *, expires: int = DEFAULT_EXPIRY) -> Artifact:
        """Upload a file (multipart above the threshold) and return its URI and a presigned URL."""
        from boto3.s3.transfer import TransferConfig
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        check_expiry(expires)
        path = Path(path)
        if not path.is_file():
            raise ArtifactsError(f"cannot upload {path}: not a file")
        bucket = self.bucket
        name = object_name or self.object_name_for(path)
        uri = f"s3://{bucket}/{name}"
        config = TransferConfig(multipart_threshold=self.multipart_threshold,
                                multipart_chunksize=max(8 * 1024 * 1024, self.multipart_threshold // 4))
        try:
            self._client().upload_file(str(path), bucket, name, Config=config)
        except (ClientError, BotoCoreError, S3UploadFailedError, OSError) as exc:
            raise UploadFailed(f"upload of {path.name} to {uri} failed: {_reason(exc)}") from exc
        return Artifact(uri, self.presigned_url(uri, expires), _expiry_time(expires), path.stat().st_size)

    def presigned_url(self, uri: str, expires: int = DEFAULT_EXPIRY) -> str:
        """A GET URL for `uri` that the store refuses after `expires` seconds."""
        check_expiry(expires)
        loc = parse_s3_uri(uri)
        if not loc.key or loc.key.endswith("/"):
            raise ArtifactsError(f"{uri!r} names no object; give s3://bucket/key of a file")
        client = s3_client(self.key, region=loc.region)
        return str(
            client.generate_presigned_url("get_object", Params={"Bucket": loc.bucket, "Key": loc.key}, ExpiresIn=expires)
        )


def _expiry_time(expires: int) -> dt.datetime:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=expires)).replace(microsecond=0)


def _reason(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    code = None
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
    else:
        # boto3's transfer manager wraps the ClientError in a message: "An error occurred (Code) ..."
        found = re.search(r"An error occurred \((\w+)\)", str(exc))
        code = found.group(1) if found else None
    if code:
        hint = {
            "AccessDenied": "the key may not write to this bucket",
            "InvalidAccessKeyId": "the key's access key is unknown to the store",
            "SignatureDoesNotMatch": "the key's secret key is wrong",
            "NoSuchBucket": "the bucket does not exist; create it or fix the key's --bucket",
        }.get(code, "see the store's logs")
        return f"{code} ({hint})"
    return f"{type(exc).__name__}: {exc}"


def upload_artifact(
    path: Path | str, *, key: str, keystore: Keystore | None = None, expires: int = DEFAULT_EXPIRY,
    object_name: str | None = None,
) -> Artifact:
    """Upload a file to the bucket of keystore key `key`; return its URI and a presigned URL.

    Args:
        path: the local file to upload (a folder or missing file raises ArtifactsError).
        key: the name of the s3 keystore key whose bucket (and prefix) receives the file.
        keystore: where `key` is looked up (default: the keystore of the environment).
        expires: seconds the presigned URL stays valid, 1 s to 7 days (else ExpiryOutOfRange).
        object_name: the object's name in the bucket (None: `<prefix>/YYYY/MM/DD/<short uuid>-<file name>`).
    """
    store = ArtifactStore.from_keystore(keystore or Keystore.from_env(), key)
    return store.upload(path, object_name, expires=expires)


def presigned_url(uri: str, key: str, expires: int = DEFAULT_EXPIRY, *, keystore: Keystore | None = None) -> str:
    """A presigned GET URL for `uri`, signed with keystore key `key`, valid `expires` seconds."""
    check_expiry(expires)
    ks = keystore or Keystore.from_env()
    try:
        k = ks.get(key)
    except KeyNotFound as exc:
        raise NoProviderConfigured(f"no key named {key!r} to sign URLs; see `blockkit keys list`") from exc
    except WrongKeyType as exc:  # pragma: no cover - get() without a type never raises it
        raise UnsupportedKeyType(exc.message) from exc
    if not isinstance(k.config, S3KeyConfig):
        raise UnsupportedKeyType(f"key {key!r} is a {k.type} key; presigned URLs need an s3 key")
    # presigning needs no bucket in the key: the URI names it
    return ArtifactStore(k).presigned_url(uri, expires)
