"""Artifacts against a real SeaweedFS: upload, presigned URLs fetched with requests, expiry, errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from blockkit.contract.errors import BlockkitError
from blockkit.storage._artifacts import ArtifactStore, presigned_url, upload_artifact
from blockkit.storage._errors import (
    ExpiryOutOfRange,
    NoProviderConfigured,
    UnsupportedKeyType,
    UploadFailed,
)
from blockkit.storage._keystore import Keystore, S3KeyConfig, WebDavKeyConfig


def test_upload_and_presigned_get(s3_keystore: Keystore, tmp_path: Path) -> None:
    f = tmp_path / "report.html"
    f.write_bytes(b"<h1>NDVI</h1>" * 100)
    art = upload_artifact(f, key="s3", keystore=s3_keystore, expires=600)
    assert art.uri.startswith("s3://artifacts/artifacts/") and art.uri.endswith("-report.html")
    assert art.size == f.stat().st_size
    r = requests.get(art.url, timeout=10)
    assert r.status_code == 200 and r.content == f.read_bytes()
    # a URL signed again later for the same object works too
    again = presigned_url(art.uri, "s3", 60, keystore=s3_keystore)
    assert requests.get(again, timeout=10).content == f.read_bytes()


@pytest.mark.slow
def test_expired_url_refused_by_store(s3_keystore: Keystore, tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    art = upload_artifact(f, key="s3", keystore=s3_keystore, expires=1)
    assert requests.get(art.url, timeout=10).status_code == 200
    time.sleep(2.2)
    r = requests.get(art.url, timeout=10)
    assert r.status_code == 403 and b"expired" in r.content.lower()


def test_multipart_upload(s3_keystore: Keystore, tmp_path: Path, seaweed) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(bytes(range(256)) * (12 * 1024 * 4))  # 12 MiB
    store = ArtifactStore(s3_keystore.get("s3"), multipart_threshold=5 * 1024 * 1024)
    art = store.upload(f, "mp/big.bin")
    head = seaweed.client().head_object(Bucket="artifacts", Key="mp/big.bin")
    assert "-" in head["ETag"]  # a multipart ETag
    assert requests.get(art.url, timeout=30).content == f.read_bytes()


@pytest.mark.parametrize("expires", [0, -5, 7 * 24 * 3600 + 1])
def test_expiry_out_of_range(s3_keystore: Keystore, tmp_path: Path, expires: int) -> None:
    with pytest.raises(ExpiryOutOfRange, match="1..604800"):
        presigned_url("s3://artifacts/x", "s3", expires, keystore=s3_keystore)


def test_errors_say_what_to_do(s3_keystore: Keystore, tmp_path: Path, seaweed) -> None:
    f = tmp_path / "a.txt"
    f.write_text("a")
    with pytest.raises(NoProviderConfigured, match="keys add nope"):
        upload_artifact(f, key="nope", keystore=s3_keystore)
    with pytest.raises(NoProviderConfigured, match="--key NAME"):
        ArtifactStore.from_keystore(s3_keystore, None)
    s3_keystore.add("dav", WebDavKeyConfig("http://127.0.0.1:1/dav", "u", "p"))
    with pytest.raises(UnsupportedKeyType, match="webdav key"):
        upload_artifact(f, key="dav", keystore=s3_keystore)
    s3_keystore.add("nobucket", S3KeyConfig(seaweed.access_key, seaweed.secret_key, seaweed.endpoint))
    with pytest.raises(NoProviderConfigured, match="names no bucket"):
        upload_artifact(f, key="nobucket", keystore=s3_keystore)
    with pytest.raises(UploadFailed, match="SignatureDoesNotMatch") as info:
        upload_artifact(f, key="s3-bad", keystore=s3_keystore)
    assert seaweed.secret_key not in str(info.value)
    with pytest.raises(UploadFailed, match="AccessDenied"):
        upload_artifact(f, key="s3-ro", keystore=s3_keystore)
    assert issubclass(UploadFailed, BlockkitError) and UploadFailed.exit_code == 5


def test_presigned_with_wrong_secret_is_refused(s3_keystore: Keystore, tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("a")
    art = upload_artifact(f, key="s3", keystore=s3_keystore)
    bad = presigned_url(art.uri, "s3-bad", 60, keystore=s3_keystore)
    assert requests.get(bad, timeout=10).status_code == 403
