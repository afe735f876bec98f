"""Hostile and mistaken requests get the right S3 error and change nothing outside the output folder."""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.gateway.conftest import KEYS, Served, client, raw, snapshot

MB = 1024 * 1024


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


@pytest.fixture
def guard(served: Served):
    """Fails the test if anything outside the output folder changed."""
    before = snapshot(served.root, exclude=served.output)
    yield
    after = snapshot(served.root, exclude=served.output)
    after = {k: v for k, v in after.items() if not k.startswith("logs")}
    before = {k: v for k, v in before.items() if not k.startswith("logs")}
    assert after == before


def test_every_write_to_an_input_is_access_denied(s3, served: Served, guard: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    attempts = [
        lambda: s3.put_object(Bucket="input", Key="new.txt", Body=b"x"),
        lambda: s3.put_object(Bucket="input", Key="data.json", Body=b"overwrite"),
        lambda: s3.delete_object(Bucket="input", Key="data.json"),
        lambda: s3.delete_objects(Bucket="input", Delete={"Objects": [{"Key": "data.json"}]}),
        lambda: s3.create_multipart_upload(Bucket="input", Key="mp.bin"),
        lambda: s3.copy_object(Bucket="input", Key="copy.json", CopySource={"Bucket": "input", "Key": "data.json"}),
        lambda: s3.upload_part(Bucket="input", Key="mp.bin", UploadId="x", PartNumber=1, Body=b"x"),
    ]
    for attempt in attempts:
        with pytest.raises(ClientError) as exc:
            attempt()
        assert code(exc) == "AccessDenied"
    big = tmp_path_factory.mktemp("src") / "big.bin"
    big.write_bytes(os.urandom(6 * MB))
    with pytest.raises(Exception) as exc2:
        s3.upload_file(str(big), "input", "big.bin", Config=TransferConfig(multipart_threshold=5 * MB))
    assert "AccessDenied" in str(exc2.value)


@pytest.mark.parametrize(
    "key",
    ["../outside.txt", "../../etc/passwd", "a/../../outside.txt", "/etc/passwd", "%2e%2e/outside.txt"],
)
def test_traversal_keys_are_refused(served: Served, guard: None, key: str) -> None:
    for method, bucket in (("GET", "input"), ("PUT", "out"), ("DELETE", "out"), ("GET", "out")):
        status, _, body = raw(served, method, f"/{bucket}/{key}", body=b"evil" if method == "PUT" else b"")
        assert status == 403, (method, key, body)
        assert b"<Code>AccessDenied</Code>" in body
    assert (served.root / "outside.txt").read_text() == "must never change"
    assert list(served.output.iterdir()) == []


def test_symlink_out_of_the_folder_is_refused(s3, served: Served, guard: None) -> None:
    (served.output / "escape").symlink_to(served.root)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="out", Key="escape/outside.txt")
    assert code(exc) == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="out", Key="escape/outside.txt", Body=b"overwritten")
    assert code(exc) == "AccessDenied"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="out").get("Contents", [])]
    assert keys == []


def test_unknown_bucket_and_key(s3, guard: None) -> None:
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket="nope")
    assert code(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="nope", Key="x", Body=b"x")
    assert code(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="input", Key="missing.txt")
    assert code(exc) == "NoSuchKey"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="input", Key="scenes")  # a folder is not an object
    assert code(exc) == "NoSuchKey"


def test_unsupported_operations_are_not_implemented(s3, served: Served, guard: None) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_acl(Bucket="input")
    assert code(exc) == "NotImplemented"
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket="out")
    assert code(exc) == "NotImplemented"


def test_malformed_xml_for_delete_and_complete(served: Served, s3, guard: None) -> None:
    status, _, body = raw(served, "POST", "/out?delete", body=b"<Delete><Object><Key>a</Key></Object")
    assert status == 400 and b"MalformedXML" in body
    bomb = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><Delete><Object><Key>&a;</Key></Object></Delete>'
    status, _, body = raw(served, "POST", "/out?delete", body=bomb)
    assert status == 400 and b"MalformedXML" in body
    up = s3.create_multipart_upload(Bucket="out", Key="x.bin")["UploadId"]
    status, _, body = raw(served, "POST", f"/out/x.bin?uploadId={up}", body=b"<CompleteMultipartUpload><Part>")
    assert status == 400 and b"MalformedXML" in body
    status, _, body = raw(served, "POST", f"/out/x.bin?uploadId={up}", body=b"<CompleteMultipartUpload></CompleteMultipartUpload>")
    assert status == 400 and b"MalformedXML" in body
    s3.abort_multipart_upload(Bucket="out", Key="x.bin", UploadId=up)


def test_wrong_part_order_and_etag(s3, served: Served, guard: None) -> None:
    up = s3.create_multipart_upload(Bucket="out", Key="p.bin")["UploadId"]
    e1 = s3.upload_part(Bucket="out", Key="p.bin", UploadId=up, PartNumber=1, Body=b"1" * 10)["ETag"]
    e2 = s3.upload_part(Bucket="out", Key="p.bin", UploadId=up, PartNumber=2, Body=b"2" * 10)["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket="out", Key="p.bin", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    assert code(exc) == "InvalidPartOrder"
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket="out", Key="p.bin", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"deadbeef"'}]})
    assert code(exc) == "InvalidPart"
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket="out", Key="p.bin", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 3, "ETag": e1}]})
    assert code(exc) == "InvalidPart"
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket="out", Key="p.bin", UploadId="bogus", MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]})
    assert code(exc) == "NoSuchUpload"
    assert not (served.output / "p.bin").exists()
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket="out", Key="p.bin", UploadId=up, PartNumber=10001, Body=b"x")
    assert code(exc) == "InvalidArgument"


def test_failed_upload_leaves_nothing(served: Served, guard: None) -> None:
    host, port = served.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.putrequest("PUT", "/out/partial.bin")
    conn.putheader("Content-Length", str(10 * MB))
    conn.endheaders()
    conn.send(b"x" * MB)
    conn.close()  # hang up after 1 of 10 MB
    time.sleep(0.3)
    assert [p.name for p in served.output.rglob("*")] == []


def test_bad_content_md5_is_rejected_and_nothing_written(s3, served: Served, guard: None) -> None:
    import base64
    import hashlib

    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="out", Key="md5.txt", Body=b"data", ContentMD5=wrong)
    assert code(exc) == "BadDigest"
    assert list(served.output.iterdir()) == []


# -- auth on -----------------------------------------------------------------------


def test_auth_accepts_the_right_keys_and_refuses_others(served_auth: Served) -> None:
    good = client(served_auth.endpoint, KEYS)
    good.put_object(Bucket="out", Key="ok.txt", Body=b"signed")
    assert good.get_object(Bucket="out", Key="ok.txt")["Body"].read() == b"signed"
    from blockkit.gateway import Credentials

    with pytest.raises(ClientError) as exc:
        client(served_auth.endpoint, Credentials(KEYS.access_key, "wrong-secret")).list_objects_v2(Bucket="input")
    assert code(exc) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as exc:
        client(served_auth.endpoint, Credentials("someone-else", KEYS.secret_key)).put_object(Bucket="out", Key="x", Body=b"x")
    assert code(exc) == "InvalidAccessKeyId"
    status, _, body = raw(served_auth, "GET", "/input/data.json")
    assert status == 403 and b"AccessDenied" in body
    assert sorted(p.name for p in served_auth.output.iterdir()) == ["ok.txt"]


def test_presigned_urls_work_until_they_expire(served_auth: Served) -> None:
    s3 = client(served_auth.endpoint, KEYS, signature_version="s3v4")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "input", "Key": "data.json"}, ExpiresIn=1)
    with urllib.request.urlopen(url) as resp:
        assert b"FeatureCollection" in resp.read()
    tampered = url.replace("data.json", "big.bin")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(tampered)
    assert exc.value.code == 403 and b"SignatureDoesNotMatch" in exc.value.read()
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url)
    body = exc.value.read()
    assert exc.value.code == 403 and b"AccessDenied" in body and b"expired" in body


def test_presigned_put_with_requests(served_auth: Served) -> None:
    import requests

    s3 = client(served_auth.endpoint, KEYS, signature_version="s3v4")
    url = s3.generate_presigned_url("put_object", Params={"Bucket": "out", "Key": "via-url.txt"}, ExpiresIn=60)
    resp = requests.put(url, data=b"uploaded with a URL", timeout=10)
    assert resp.status_code == 200, resp.text
    assert (served_auth.output / "via-url.txt").read_bytes() == b"uploaded with a URL"


def test_sigv2_presigned_urls_are_refused_when_auth_is_on(served_auth: Served) -> None:
    s3 = client(served_auth.endpoint, KEYS, signature_version="s3")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "input", "Key": "data.json"}, ExpiresIn=60)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url)
    assert exc.value.code == 403 and b"Signature Version 4" in exc.value.read()
