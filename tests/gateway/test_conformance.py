"""S3 behaviour as AWS documents it, through boto3 and raw HTTP: each test is one rule.

Covers what a conformance run against the ceph s3-tests suite found missing or different:
metadata, checksums, conditional writes and deletes, multipart edge cases, copy rules,
listing with max-keys=0, Content-MD5 validation, SigV4 with the Date header.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import time
import zlib
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from blockkit.gateway import Gateway
from blockkit.gateway._metadata import SIDECAR_DIR, XATTR
from tests.gateway.conftest import KEYS, Served, client, raw

MB = 1024 * 1024


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def status(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def s3s(served_small_parts: Served):
    """boto3 against a gateway without a minimum part size (tiny multipart uploads)."""
    return client(served_small_parts.endpoint)


# -- metadata --------------------------------------------------------------------------------------


def test_metadata_is_stored_and_returned_on_get_and_head(s3, served: Served) -> None:
    expires = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    s3.put_object(
        Bucket="out", Key="doc.bin", Body=b"data",
        ContentType="text/bla", ContentEncoding="gzip", CacheControl="public, max-age=14400",
        ContentDisposition='attachment; filename="x.txt"', ContentLanguage="de", Expires=expires,
        Metadata={"meta1": "mymeta", "empty": ""},
    )
    for resp in (s3.head_object(Bucket="out", Key="doc.bin"), s3.get_object(Bucket="out", Key="doc.bin")):
        assert resp["ContentType"] == "text/bla"
        assert resp["ContentEncoding"] == "gzip"
        assert resp["CacheControl"] == "public, max-age=14400"
        assert resp["ContentDisposition"] == 'attachment; filename="x.txt"'
        assert resp["ContentLanguage"] == "de"
        assert resp["ResponseMetadata"]["HTTPHeaders"]["expires"] == "Wed, 02 Jan 2030 03:04:05 GMT"
        assert resp["Metadata"] == {"meta1": "mymeta", "empty": ""}
    # the listing never shows where metadata lives
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="out")["Contents"]] == ["doc.bin"]
    # a PUT replaces all metadata (S3 has no merge)
    s3.put_object(Bucket="out", Key="doc.bin", Body=b"data2", Metadata={"other": "1"})
    resp = s3.head_object(Bucket="out", Key="doc.bin")
    assert resp["Metadata"] == {"other": "1"} and "CacheControl" not in resp and resp["ContentType"] == "application/octet-stream"


def test_aws_chunked_is_not_stored_as_content_encoding(served: Served) -> None:
    status_, _, _ = raw(
        served, "PUT", "/out/enc.txt", b"5\r\nhello\r\n0\r\n\r\n",
        {"Content-Encoding": "gzip, aws-chunked", "x-amz-decoded-content-length": "5", "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER"},
    )
    assert status_ == 200
    assert (served.output / "enc.txt").read_bytes() == b"hello"
    _, headers, _ = raw(served, "HEAD", "/out/enc.txt")
    assert headers["content-encoding"] == "gzip"
    raw(
        served, "PUT", "/out/enc2.txt", b"5\r\nhello\r\n0\r\n\r\n",
        {"Content-Encoding": "deflate, aws-chunked,gzip", "x-amz-decoded-content-length": "5", "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER"},
    )
    assert raw(served, "HEAD", "/out/enc2.txt")[1]["content-encoding"] == "deflate, gzip"


def test_user_metadata_over_2kb_is_metadata_too_large(s3) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="out", Key="m.bin", Body=b"x", Metadata={"big": "v" * 2100})
    assert code(exc) == "MetadataTooLarge"


def test_files_written_by_the_block_get_a_type_from_their_name(s3, served: Served) -> None:
    (served.output / "result.json").write_text("{}")
    (served.output / "scene.tif").write_bytes(b"II*\0")
    (served.output / "blob").write_bytes(b"?")
    assert s3.head_object(Bucket="out", Key="result.json")["ContentType"] == "application/json"
    assert s3.head_object(Bucket="out", Key="scene.tif")["ContentType"] == "image/tiff"
    assert s3.head_object(Bucket="out", Key="blob")["ContentType"] == "application/octet-stream"


def test_metadata_of_a_file_rewritten_by_the_block_is_not_served(s3, served: Served) -> None:
    s3.put_object(Bucket="out", Key="r.txt", Body=b"v1", ContentType="application/x-old", Metadata={"a": "1"})
    time.sleep(0.01)
    (served.output / "r.txt").write_bytes(b"version 2")  # the block rewrites it in place: xattr stays
    resp = s3.head_object(Bucket="out", Key="r.txt")
    assert resp["ContentType"] == "text/plain" and resp["Metadata"] == {}
    assert resp["ETag"] == f'"{hashlib.md5(b"version 2").hexdigest()}"'


def test_metadata_lives_in_an_xattr_with_the_file(s3, served: Served) -> None:
    s3.put_object(Bucket="out", Key="x.bin", Body=b"x", Metadata={"k": "v"})
    assert b'"u":{"k":"v"}' in os.getxattr(served.output / "x.bin", XATTR)
    assert not (served.output / SIDECAR_DIR).exists()


def test_sidecar_storage_when_the_filesystem_has_no_xattrs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    gw = Gateway({}, out)
    assert gw.state.output is not None
    gw.state.output.meta.xattrs = False  # what a filesystem without user xattrs gives
    gw.start()
    try:
        s3 = client(gw.endpoint)
        s3.put_object(Bucket="out", Key="a/b.txt", Body=b"x", ContentType="text/x-mine", Metadata={"k": "v"})
        resp = s3.head_object(Bucket="out", Key="a/b.txt")
        assert resp["ContentType"] == "text/x-mine" and resp["Metadata"] == {"k": "v"}
        assert XATTR not in os.listxattr(out / "a" / "b.txt")
        assert len(list((out / SIDECAR_DIR).iterdir())) == 1
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="out")["Contents"]] == ["a/b.txt"]
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket="out", Key=f"{SIDECAR_DIR}/x")
        assert code(exc) == "AccessDenied"
        s3.delete_object(Bucket="out", Key="a/b.txt")
        assert list((out / SIDECAR_DIR).iterdir()) == []
    finally:
        gw.stop()


def test_metadata_and_multipart_etag_survive_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Gateway({}, out, min_part_size=0) as gw:
        s3 = client(gw.endpoint)
        up = s3.create_multipart_upload(Bucket="out", Key="mp.bin", ContentType="image/png", Metadata={"m": "1"})["UploadId"]
        parts = [
            {"PartNumber": n, "ETag": s3.upload_part(Bucket="out", Key="mp.bin", UploadId=up, PartNumber=n, Body=bytes([n]) * 10)["ETag"]}
            for n in (1, 2)
        ]
        etag = s3.complete_multipart_upload(Bucket="out", Key="mp.bin", UploadId=up, MultipartUpload={"Parts": parts})["ETag"]
    assert etag.endswith('-2"')
    with Gateway({}, out) as gw:
        s3 = client(gw.endpoint)
        resp = s3.head_object(Bucket="out", Key="mp.bin")
        assert resp["ETag"] == etag and resp["ContentType"] == "image/png" and resp["Metadata"] == {"m": "1"}
        assert [o["ETag"] for o in s3.list_objects_v2(Bucket="out")["Contents"]] == [etag]  # listing agrees with HEAD


def test_copy_keeps_or_replaces_metadata(s3) -> None:
    s3.put_object(Bucket="out", Key="src.ogg", Body=b"ogg", ContentType="audio/ogg", Metadata={"a": "1"}, CacheControl="no-cache")
    s3.copy_object(Bucket="out", Key="kept", CopySource="out/src.ogg")
    resp = s3.head_object(Bucket="out", Key="kept")
    assert (resp["ContentType"], resp["Metadata"], resp["CacheControl"]) == ("audio/ogg", {"a": "1"}, "no-cache")
    s3.copy_object(
        Bucket="out", Key="replaced", CopySource="out/src.ogg", MetadataDirective="REPLACE", ContentType="audio/mpeg", Metadata={"b": "2"}
    )
    resp = s3.head_object(Bucket="out", Key="replaced")
    assert (resp["ContentType"], resp["Metadata"]) == ("audio/mpeg", {"b": "2"}) and "CacheControl" not in resp
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket="out", Key="bad", CopySource="out/src.ogg", MetadataDirective="MERGE")
    assert code(exc) == "InvalidArgument"


def test_copy_from_an_input_keeps_the_served_type(s3) -> None:
    s3.copy_object(Bucket="out", Key="copied.bin", CopySource="input/data.json")
    assert s3.head_object(Bucket="out", Key="copied.bin")["ContentType"] == "application/json"


def test_copy_onto_itself_needs_replace(s3) -> None:
    s3.put_object(Bucket="out", Key="foo123bar", Body=b"x", Metadata={"old": "1"})
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket="out", Key="foo123bar", CopySource="out/foo123bar")
    assert (status(exc), code(exc)) == (400, "InvalidRequest")
    s3.copy_object(Bucket="out", Key="foo123bar", CopySource="out/foo123bar", MetadataDirective="REPLACE", Metadata={"foo": "bar"})
    resp = s3.get_object(Bucket="out", Key="foo123bar")
    assert resp["Metadata"] == {"foo": "bar"} and resp["Body"].read() == b"x"


def test_multipart_carries_metadata(s3s) -> None:
    up = s3s.create_multipart_upload(Bucket="out", Key="mp", ContentType="text/bla", Metadata={"foo": "bar"})["UploadId"]
    e = s3s.upload_part(Bucket="out", Key="mp", UploadId=up, PartNumber=1, Body=b"abc")["ETag"]
    s3s.complete_multipart_upload(Bucket="out", Key="mp", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
    resp = s3s.get_object(Bucket="out", Key="mp")
    assert (resp["ContentType"], resp["Metadata"], resp["Body"].read()) == ("text/bla", {"foo": "bar"}, b"abc")


# -- checksums -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CHECK = b"123456789"  # the standard CRC check input
EXPECTED = {
    "CRC32": _b64(zlib.crc32(CHECK).to_bytes(4, "big")),
    "CRC32C": _b64(0xE3069283.to_bytes(4, "big")),
    "CRC64NVME": _b64(0xAE8B14860A799888.to_bytes(8, "big")),
    "SHA1": _b64(hashlib.sha1(CHECK).digest()),
    "SHA256": _b64(hashlib.sha256(CHECK).digest()),
}


@pytest.mark.parametrize("algorithm", sorted(EXPECTED))
def test_checksums_are_verified_echoed_and_returned_with_checksum_mode(s3, served: Served, algorithm: str) -> None:
    header = f"x-amz-checksum-{algorithm.lower()}"
    status_, headers, _ = raw(served, "PUT", "/out/c.bin", CHECK, {header: EXPECTED[algorithm]})
    assert status_ == 200 and headers[header] == EXPECTED[algorithm]
    resp = s3.head_object(Bucket="out", Key="c.bin", ChecksumMode="ENABLED")
    assert resp[f"Checksum{algorithm}"] == EXPECTED[algorithm]
    assert f"Checksum{algorithm}" not in s3.head_object(Bucket="out", Key="c.bin")
    status_, _, body = raw(served, "PUT", "/out/c2.bin", CHECK + b"!", {header: EXPECTED[algorithm]})
    assert status_ == 400 and b"<Code>BadDigest</Code>" in body
    assert not (served.output / "c2.bin").exists()


def test_boto3_checksum_round_trip(s3) -> None:
    resp = s3.put_object(Bucket="out", Key="b3.bin", Body=b"abc", ChecksumAlgorithm="SHA256")
    assert resp["ChecksumSHA256"] == _b64(hashlib.sha256(b"abc").digest())


def test_multipart_checksum_algorithm_is_echoed_and_composite_returned(s3s) -> None:
    resp = s3s.create_multipart_upload(Bucket="out", Key="cs", ChecksumAlgorithm="SHA256")
    assert resp["ChecksumAlgorithm"] == "SHA256"
    up = resp["UploadId"]
    parts = []
    for n, body in ((1, b"a" * 10), (2, b"b" * 5)):
        r = s3s.upload_part(Bucket="out", Key="cs", UploadId=up, PartNumber=n, Body=body, ChecksumAlgorithm="SHA256")
        assert r["ChecksumSHA256"] == _b64(hashlib.sha256(body).digest())
        parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]})
    done = s3s.complete_multipart_upload(Bucket="out", Key="cs", UploadId=up, MultipartUpload={"Parts": parts})
    composite = hashlib.sha256(hashlib.sha256(b"a" * 10).digest() + hashlib.sha256(b"b" * 5).digest()).digest()
    assert done["ChecksumSHA256"] == _b64(composite) + "-2"
    head = s3s.head_object(Bucket="out", Key="cs", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == _b64(composite) + "-2" and head["ChecksumType"] == "COMPOSITE"


def test_complete_checks_the_object_checksum_and_part_checksums(s3s) -> None:
    up = s3s.create_multipart_upload(Bucket="out", Key="ck", ChecksumAlgorithm="SHA256")["UploadId"]
    r = s3s.upload_part(Bucket="out", Key="ck", UploadId=up, PartNumber=1, Body=b"A" * 1024, ChecksumAlgorithm="SHA256")
    part = {"ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"], "PartNumber": 1}
    composite = _b64(hashlib.sha256(hashlib.sha256(b"A" * 1024).digest()).digest()) + "-1"
    with pytest.raises(ClientError) as exc:  # the header names the object's checksum, not the XML body's
        s3s.complete_multipart_upload(Bucket="out", Key="ck", UploadId=up, ChecksumSHA256="bad", MultipartUpload={"Parts": [part]})
    assert (status(exc), code(exc)) == (400, "BadDigest")
    with pytest.raises(ClientError) as exc:
        bad_part = {**part, "ChecksumSHA256": _b64(hashlib.sha256(b"other").digest())}
        s3s.complete_multipart_upload(Bucket="out", Key="ck", UploadId=up, MultipartUpload={"Parts": [bad_part]})
    assert (status(exc), code(exc)) == (400, "InvalidPart")
    done = s3s.complete_multipart_upload(Bucket="out", Key="ck", UploadId=up, ChecksumSHA256=composite, MultipartUpload={"Parts": [part]})
    again = s3s.complete_multipart_upload(Bucket="out", Key="ck", UploadId=up, ChecksumSHA256=composite, MultipartUpload={"Parts": [part]})
    assert done["ChecksumSHA256"] == again["ChecksumSHA256"] == composite and done["ETag"] == again["ETag"]


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME"])
def test_full_object_checksum_is_combined_from_the_parts(s3s, algorithm: str) -> None:
    from blockkit.gateway._body import new_checksum

    def crc(data: bytes) -> str:
        h = new_checksum(algorithm.lower())
        h.update(data)
        return _b64(h.digest())

    resp = s3s.create_multipart_upload(Bucket="out", Key="fo", ChecksumAlgorithm=algorithm, ChecksumType="FULL_OBJECT")
    assert (resp["ChecksumAlgorithm"], resp["ChecksumType"]) == (algorithm, "FULL_OBJECT")
    up, bodies, parts = resp["UploadId"], [b"a" * 1000, b"b" * 777, b"c" * 5], []
    for n, body in enumerate(bodies, 1):
        r = s3s.upload_part(Bucket="out", Key="fo", UploadId=up, PartNumber=n, Body=body, ChecksumAlgorithm=algorithm, **{f"Checksum{algorithm}": crc(body)})
        parts.append({"PartNumber": n, "ETag": r["ETag"], f"Checksum{algorithm}": r[f"Checksum{algorithm}"]})
    whole = crc(b"".join(bodies))
    done = s3s.complete_multipart_upload(
        Bucket="out", Key="fo", UploadId=up, MultipartUpload={"Parts": parts}, ChecksumType="FULL_OBJECT", **{f"Checksum{algorithm}": whole}
    )
    assert (done[f"Checksum{algorithm}"], done["ChecksumType"]) == (whole, "FULL_OBJECT")
    head = s3s.head_object(Bucket="out", Key="fo", ChecksumMode="ENABLED")
    assert (head[f"Checksum{algorithm}"], head["ChecksumType"]) == (whole, "FULL_OBJECT")
    part2 = s3s.get_object(Bucket="out", Key="fo", PartNumber=2, ChecksumMode="ENABLED")
    assert part2[f"Checksum{algorithm}"] == crc(bodies[1]) and part2["Body"].read() == bodies[1]


def test_full_object_type_needs_a_crc(s3s) -> None:
    with pytest.raises(ClientError) as exc:
        s3s.create_multipart_upload(Bucket="out", Key="fo", ChecksumAlgorithm="SHA256", ChecksumType="FULL_OBJECT")
    assert code(exc) == "InvalidRequest"


def test_ranged_get_carries_no_whole_object_checksum(s3) -> None:
    s3.put_object(Bucket="out", Key="r.bin", Body=b"0123456789", ChecksumAlgorithm="CRC32")
    resp = s3.get_object(Bucket="out", Key="r.bin", Range="bytes=2-4", ChecksumMode="ENABLED")
    assert resp["Body"].read() == b"234" and "ChecksumCRC32" not in resp
    assert s3.get_object(Bucket="out", Key="r.bin", ChecksumMode="ENABLED")["ChecksumCRC32"] == _b64(zlib.crc32(b"0123456789").to_bytes(4, "big"))


def test_boto3_aws_chunked_content_encoding_over_a_plain_body(s3) -> None:
    s3.put_object(Bucket="out", Key="enc", Body=b"plain", ContentEncoding="gzip, aws-chunked")
    resp = s3.get_object(Bucket="out", Key="enc")
    assert resp["ContentEncoding"] == "gzip" and resp["Body"].read() == b"plain"


# -- GET by part number, part sizes ----------------------------------------------------------------


def test_get_and_head_by_part_number(s3s) -> None:
    up = s3s.create_multipart_upload(Bucket="out", Key="parts")["UploadId"]
    bodies = [b"1" * 7, b"2" * 7, b"3" * 3]
    parts = [
        {"PartNumber": n, "ETag": s3s.upload_part(Bucket="out", Key="parts", UploadId=up, PartNumber=n, Body=b)["ETag"]}
        for n, b in enumerate(bodies, 1)
    ]
    with pytest.raises(ClientError) as exc:
        s3s.get_object(Bucket="out", Key="parts", PartNumber=1)  # not completed yet
    assert code(exc) == "NoSuchKey"
    etag = s3s.complete_multipart_upload(Bucket="out", Key="parts", UploadId=up, MultipartUpload={"Parts": parts})["ETag"]
    for n, body in enumerate(bodies, 1):
        head = s3s.head_object(Bucket="out", Key="parts", PartNumber=n)
        assert (head["PartsCount"], head["ETag"], head["ContentLength"]) == (3, etag, len(body))
        resp = s3s.get_object(Bucket="out", Key="parts", PartNumber=n)
        assert resp["Body"].read() == body and resp["PartsCount"] == 3
    with pytest.raises(ClientError) as exc:
        s3s.get_object(Bucket="out", Key="parts", PartNumber=4)
    assert (status(exc), code(exc)) == (400, "InvalidPart")


def test_part_number_of_a_plain_object(s3) -> None:
    etag = s3.put_object(Bucket="out", Key="single", Body=b"body")["ETag"]
    resp = s3.get_object(Bucket="out", Key="single", PartNumber=1)
    assert resp["Body"].read() == b"body" and resp["ETag"] == etag
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="out", Key="single", PartNumber=2)
    assert (status(exc), code(exc)) == (400, "InvalidPart")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="out", Key="single", PartNumber=1, Range="bytes=0-1")
    assert code(exc) == "InvalidRequest"


def test_parts_under_5_mib_are_entity_too_small_by_default(s3) -> None:
    up = s3.create_multipart_upload(Bucket="out", Key="small")["UploadId"]
    parts = [
        {"PartNumber": n, "ETag": s3.upload_part(Bucket="out", Key="small", UploadId=up, PartNumber=n, Body=b"x" * 10 * 1024)["ETag"]}
        for n in (1, 2)
    ]
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket="out", Key="small", UploadId=up, MultipartUpload={"Parts": parts})
    assert (status(exc), code(exc)) == (400, "EntityTooSmall")
    # only the last part may be small: one small part is a valid upload
    done = s3.complete_multipart_upload(Bucket="out", Key="small", UploadId=up, MultipartUpload={"Parts": parts[:1]})
    assert done["ETag"].endswith('-1"')


@pytest.mark.slow
def test_5_mib_parts_with_a_small_last_part_are_accepted(s3, served: Served) -> None:
    up = s3.create_multipart_upload(Bucket="out", Key="ok")["UploadId"]
    bodies = [os.urandom(5 * MB), b"tail"]
    parts = [
        {"PartNumber": n, "ETag": s3.upload_part(Bucket="out", Key="ok", UploadId=up, PartNumber=n, Body=b)["ETag"]}
        for n, b in enumerate(bodies, 1)
    ]
    s3.complete_multipart_upload(Bucket="out", Key="ok", UploadId=up, MultipartUpload={"Parts": parts})
    assert (served.output / "ok").read_bytes() == b"".join(bodies)


# -- multipart completion rules --------------------------------------------------------------------


def test_repeated_complete_answers_200_again(s3s, served_small_parts: Served) -> None:
    up = s3s.create_multipart_upload(Bucket="out", Key="rep")["UploadId"]
    parts = [{"PartNumber": 1, "ETag": s3s.upload_part(Bucket="out", Key="rep", UploadId=up, PartNumber=1, Body=b"abc")["ETag"]}]
    first = s3s.complete_multipart_upload(Bucket="out", Key="rep", UploadId=up, MultipartUpload={"Parts": parts})
    again = s3s.complete_multipart_upload(Bucket="out", Key="rep", UploadId=up, MultipartUpload={"Parts": parts})
    assert again["ETag"] == first["ETag"] and again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (served_small_parts.output / "rep").read_bytes() == b"abc"
    with pytest.raises(ClientError) as exc:  # other parts, or another key: the upload is gone
        s3s.complete_multipart_upload(Bucket="out", Key="rep", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": '"x"'}]})
    assert code(exc) == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3s.list_parts(Bucket="out", Key="rep", UploadId=up)
    assert code(exc) == "NoSuchUpload"


def test_part_listed_twice_the_last_upload_wins(s3s, served_small_parts: Served) -> None:
    up = s3s.create_multipart_upload(Bucket="out", Key="twice")["UploadId"]
    etag_b = s3s.upload_part(Bucket="out", Key="twice", UploadId=up, PartNumber=1, Body=b"B" * 8)["ETag"]
    etag_a = s3s.upload_part(Bucket="out", Key="twice", UploadId=up, PartNumber=1, Body=b"A" * 8)["ETag"]
    s3s.complete_multipart_upload(
        Bucket="out", Key="twice", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag_b}, {"PartNumber": 1, "ETag": etag_a}]},
    )
    assert (served_small_parts.output / "twice").read_bytes() == b"A" * 8


def test_concurrent_uploads_of_one_part_never_mix(served_small_parts: Served) -> None:
    import threading

    s3 = client(served_small_parts.endpoint)
    up = s3.create_multipart_upload(Bucket="out", Key="race")["UploadId"]
    s3.upload_part(Bucket="out", Key="race", UploadId=up, PartNumber=2, Body=b"z" * 1000)  # sets the slot size
    etags: dict[bytes, str] = {}

    def put(fill: bytes) -> None:
        c = client(served_small_parts.endpoint)
        etags[fill] = c.upload_part(Bucket="out", Key="race", UploadId=up, PartNumber=1, Body=fill * 1000)["ETag"]

    threads = [threading.Thread(target=put, args=(bytes([65 + i]),)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listed = s3.list_parts(Bucket="out", Key="race", UploadId=up)["Parts"][0]["ETag"]
    winner = next(fill for fill, e in etags.items() if e == listed)
    s3.complete_multipart_upload(
        Bucket="out", Key="race", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": listed}]}
    )
    assert (served_small_parts.output / "race").read_bytes() == winner * 1000


def test_failed_conditional_complete_keeps_every_part(s3s, served_small_parts: Served) -> None:
    s3s.put_object(Bucket="out", Key="cond", Body=b"old")
    up = s3s.create_multipart_upload(Bucket="out", Key="cond")["UploadId"]
    parts = [
        {"PartNumber": n, "ETag": s3s.upload_part(Bucket="out", Key="cond", UploadId=up, PartNumber=n, Body=bytes([48 + n]) * 100)["ETag"]}
        for n in (1, 2, 3)
    ]
    with pytest.raises(ClientError) as exc:
        s3s.complete_multipart_upload(Bucket="out", Key="cond", UploadId=up, MultipartUpload={"Parts": parts[:2]}, IfNoneMatch="*")
    assert code(exc) == "PreconditionFailed"
    assert (served_small_parts.output / "cond").read_bytes() == b"old"
    s3s.complete_multipart_upload(Bucket="out", Key="cond", UploadId=up, MultipartUpload={"Parts": parts})
    assert (served_small_parts.output / "cond").read_bytes() == b"1" * 100 + b"2" * 100 + b"3" * 100


def test_upload_part_copy_ranges(s3s) -> None:
    s3s.put_object(Bucket="out", Key="source", Body=b"12345")
    up = s3s.create_multipart_upload(Bucket="out", Key="dest")["UploadId"]
    for rng in ("bytes=0-21", "bytes=5-20", "bytes=3-5"):
        with pytest.raises(ClientError) as exc:
            s3s.upload_part_copy(Bucket="out", Key="dest", UploadId=up, PartNumber=1, CopySource="out/source", CopySourceRange=rng)
        assert (status(exc), code(exc)) == (416, "InvalidRange"), rng
    for rng in ("0-2", "bytes=0", "bytes=hello-world", "bytes=0-bar", "bytes=hello-", "bytes=0-2,3-5", "bytes=-2", "bytes=3-1"):
        with pytest.raises(ClientError) as exc:
            s3s.upload_part_copy(Bucket="out", Key="dest", UploadId=up, PartNumber=1, CopySource="out/source", CopySourceRange=rng)
        assert (status(exc), code(exc)) == (400, "InvalidArgument"), rng
    r = s3s.upload_part_copy(Bucket="out", Key="dest", UploadId=up, PartNumber=1, CopySource="out/source", CopySourceRange="bytes=1-4")
    s3s.complete_multipart_upload(
        Bucket="out", Key="dest", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["CopyPartResult"]["ETag"]}]}
    )
    assert s3s.get_object(Bucket="out", Key="dest")["Body"].read() == b"2345"


# -- conditional writes and deletes ----------------------------------------------------------------


def test_put_conditions_like_s3(s3, served: Served) -> None:
    etag = s3.put_object(Bucket="out", Key="obj", Body=b"bar", IfNoneMatch="*")["ETag"]
    for cond in ({"IfNoneMatch": "*"}, {"IfNoneMatch": etag}, {"IfMatch": "badetag"}):
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket="out", Key="obj", Body=b"zar", **cond)
        assert (status(exc), code(exc)) == (412, "PreconditionFailed"), cond
    assert (served.output / "obj").read_bytes() == b"bar"
    s3.put_object(Bucket="out", Key="obj", Body=b"new", IfNoneMatch="badetag")
    s3.put_object(Bucket="out", Key="obj", Body=b"newer", IfMatch=f'"{hashlib.md5(b"new").hexdigest()}"')
    s3.delete_object(Bucket="out", Key="obj")
    for cond in ({"IfMatch": "*"}, {"IfMatch": "badetag"}):
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket="out", Key="obj", Body=b"x", **cond)
        assert (status(exc), code(exc)) == (404, "NoSuchKey")
    s3.put_object(Bucket="out", Key="obj", Body=b"x", IfNoneMatch=etag)


def _multipart(s3, key: str, body: bytes, **cond: str) -> dict:
    up = s3.create_multipart_upload(Bucket="out", Key=key)["UploadId"]
    e = s3.upload_part(Bucket="out", Key=key, UploadId=up, PartNumber=1, Body=body)["ETag"]
    return s3.complete_multipart_upload(Bucket="out", Key=key, UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]}, **cond)


def test_complete_multipart_conditions(s3s, served_small_parts: Served) -> None:
    etag = _multipart(s3s, "obj", b"first", IfNoneMatch="*")["ETag"]
    for cond in ({"IfNoneMatch": "*"}, {"IfNoneMatch": etag}, {"IfMatch": "badetag"}):
        with pytest.raises(ClientError) as exc:
            _multipart(s3s, "obj", b"second", **cond)
        assert (status(exc), code(exc)) == (412, "PreconditionFailed"), cond
    assert (served_small_parts.output / "obj").read_bytes() == b"first"
    etag = _multipart(s3s, "obj", b"third", IfMatch=etag)["ETag"]
    s3s.delete_object(Bucket="out", Key="obj")
    for cond in ({"IfMatch": "*"}, {"IfMatch": "badetag"}):
        with pytest.raises(ClientError) as exc:
            _multipart(s3s, "obj", b"x", **cond)
        assert (status(exc), code(exc)) == (404, "NoSuchKey")
    _multipart(s3s, "obj", b"x", IfNoneMatch=etag)


def test_conditional_delete(s3, served: Served) -> None:
    etag = s3.put_object(Bucket="out", Key="obj", Body=b"")["ETag"]
    bad_time = dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc)
    for cond in ({"IfMatch": "badetag"}, {"IfMatchLastModifiedTime": bad_time}, {"IfMatchSize": 9999}):
        with pytest.raises(ClientError) as exc:
            s3.delete_object(Bucket="out", Key="obj", **cond)
        assert (status(exc), code(exc)) == (412, "PreconditionFailed"), cond
        assert (served.output / "obj").exists()
    for cond in ({"IfMatch": etag}, {"IfMatchLastModifiedTime": None}, {"IfMatchSize": 0}, {"IfMatch": "*"}):
        s3.put_object(Bucket="out", Key="obj", Body=b"")
        if "IfMatchLastModifiedTime" in cond:
            cond = {"IfMatchLastModifiedTime": s3.head_object(Bucket="out", Key="obj")["LastModified"]}
        s3.delete_object(Bucket="out", Key="obj", **cond)
        assert not (served.output / "obj").exists(), cond
    # a missing object: the delete succeeds whatever the condition (as S3 answers)
    for cond in ({"IfMatch": "badetag"}, {"IfMatchLastModifiedTime": bad_time}, {"IfMatchSize": 9999}):
        assert s3.delete_object(Bucket="out", Key="obj", **cond)["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_conditional_multi_object_delete(s3, served: Served) -> None:
    etag = s3.put_object(Bucket="out", Key="obj", Body=b"")["ETag"]
    bad_time = dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc)
    for cond in ({"ETag": "badetag"}, {"LastModifiedTime": bad_time}, {"Size": 9999}):
        resp = s3.delete_objects(Bucket="out", Delete={"Objects": [{"Key": "obj", **cond}]})
        assert [(e["Key"], e["Code"]) for e in resp["Errors"]] == [("obj", "PreconditionFailed")], cond
        assert (served.output / "obj").exists()
    for cond in ({"ETag": etag}, {"LastModifiedTime": None}, {"Size": 0}):
        s3.put_object(Bucket="out", Key="obj", Body=b"")
        if "LastModifiedTime" in cond:
            cond = {"LastModifiedTime": s3.head_object(Bucket="out", Key="obj")["LastModified"]}
        resp = s3.delete_objects(Bucket="out", Delete={"Objects": [{"Key": "obj", **cond}]})
        assert [d["Key"] for d in resp["Deleted"]] == ["obj"], cond
    resp = s3.delete_objects(Bucket="out", Delete={"Objects": [{"Key": "obj", "ETag": "badetag"}]})
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200 and "Errors" not in resp


# -- listing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_max_keys_zero_is_an_untruncated_empty_page(s3, version: str) -> None:
    resp = s3.list_objects(Bucket="input", MaxKeys=0) if version == "v1" else s3.list_objects_v2(Bucket="input", MaxKeys=0)
    assert resp["IsTruncated"] is False and "Contents" not in resp
    assert "NextMarker" not in resp and "NextContinuationToken" not in resp


def test_v1_prefix_is_url_encoded_with_encoding_type_url(served: Served) -> None:
    """AWS documents Prefix among the encoded elements of ListObjects v1 (botocore leaves it encoded)."""
    _, _, body = raw(served, "GET", "/input?prefix=%0A&encoding-type=url")
    assert b"<Prefix>%0A</Prefix>" in body
    _, _, body = raw(served, "GET", "/input?prefix=a%20b")
    assert b"<Prefix>a b</Prefix>" in body


# -- Content-MD5, keys and folders -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["YWJyYWNhZGFicmE=", "", "not-base64!!"])
def test_malformed_content_md5_is_invalid_digest(served: Served, value: str) -> None:
    status_, _, body = raw(served, "PUT", "/out/md5", b"bar", {"Content-MD5": value})
    assert status_ == 400 and b"<Code>InvalidDigest</Code>" in body
    assert not (served.output / "md5").exists()


def test_wrong_content_md5_is_bad_digest(served: Served) -> None:
    status_, _, body = raw(served, "PUT", "/out/md5", b"bar", {"Content-MD5": base64.b64encode(hashlib.md5(b"baz").digest()).decode()})
    assert status_ == 400 and b"<Code>BadDigest</Code>" in body


def test_key_and_folder_of_the_same_name_are_refused(s3, served: Served) -> None:
    s3.put_object(Bucket="out", Key="foo/bar", Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="out", Key="foo/bar/xyzzy", Body=b"y")
    assert (status(exc), code(exc)) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="out", Key="foo", Body=b"y")
    assert (status(exc), code(exc)) == (400, "InvalidArgument")
    assert (served.output / "foo" / "bar").read_bytes() == b"x"


def test_key_ending_in_slash_holds_no_data(s3, served: Served) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="out", Key="asdf/", Body=b"asdf/")
    assert (status(exc), code(exc)) == (400, "InvalidArgument")
    s3.put_object(Bucket="out", Key="empty/", Body=b"")
    assert (served.output / "empty").is_dir()


# -- SigV4 variants --------------------------------------------------------------------------------


def test_sigv4_signed_with_the_date_header(served_auth: Served) -> None:
    s3 = client(served_auth.endpoint, KEYS)

    def add_date(params: dict, **_: object) -> None:
        params["headers"]["Date"] = "Thu, 01 Jan 2015 00:00:00 GMT"  # botocore replaces it with now, and signs it

    s3.meta.events.register("before-call.s3.PutObject", add_date)
    s3.put_object(Bucket="out", Key="dated", Body=b"x")
    assert (served_auth.output / "dated").read_bytes() == b"x"


def test_boto3_unicode_metadata_with_auth(served_auth: Served) -> None:
    """botocore signs and sends a non-ASCII header value as UTF-8: accepted, and returned as the same bytes."""
    s3 = client(served_auth.endpoint, KEYS)

    def add_meta(params: dict, **_: object) -> None:
        params["headers"]["x-amz-meta-meta1"] = "Hello World\u00e9"

    s3.meta.events.register("before-call.s3.PutObject", add_meta)
    s3.put_object(Bucket="out", Key="u", Body=b"x")
    # HTTP clients read header bytes as latin-1: the UTF-8 bytes come back unchanged
    got = client(served_auth.endpoint, KEYS).head_object(Bucket="out", Key="u")["Metadata"]["meta1"]
    assert got.encode("latin-1").decode("utf-8") == "Hello World\u00e9"


# -- hostile metadata ------------------------------------------------------------------------------


def test_folded_header_values_cannot_inject_response_headers(served: Served) -> None:
    from tests.gateway.test_robustness import _exchange

    request = (
        b"PUT /out/fold.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"x-amz-meta-a: one\r\n Set-Cookie: evil=1\r\nContent-Type: text/plain\r\n\r\nhi"
    )
    status_, _, _, _ = _exchange(served, request, check_close=False)
    assert status_ == 200
    status_, headers, body, _ = _exchange(served, b"GET /out/fold.txt HTTP/1.1\r\nHost: x\r\n\r\n", check_close=False)
    assert status_ == 200 and body == b"hi" and "set-cookie" not in headers
    assert headers["x-amz-meta-a"] == "one Set-Cookie: evil=1"


def test_response_override_with_a_line_break_is_refused(s3, served: Served) -> None:
    s3.put_object(Bucket="out", Key="o.txt", Body=b"x")
    status_, headers, body = raw(served, "GET", "/out/o.txt?response-content-type=a%0d%0aSet-Cookie:%20evil")
    assert status_ == 400 and b"InvalidArgument" in body and "set-cookie" not in headers


def test_big_standard_headers_fall_back_to_a_sidecar_for_that_object(s3, served: Served) -> None:
    disposition = "attachment; filename=" + "x" * 6000  # more than an ext4 xattr block holds
    s3.put_object(Bucket="out", Key="big-meta.txt", Body=b"x", ContentDisposition=disposition)
    s3.put_object(Bucket="out", Key="small-meta.txt", Body=b"y", ContentType="text/x-small")
    assert s3.head_object(Bucket="out", Key="big-meta.txt")["ContentDisposition"] == disposition
    assert s3.head_object(Bucket="out", Key="small-meta.txt")["ContentType"] == "text/x-small"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="out")["Contents"]] == ["big-meta.txt", "small-meta.txt"]
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="out", Key="huge-meta.txt", Body=b"x", ContentDisposition="y" * 9000)
    assert code(exc) == "MetadataTooLarge"


def test_concurrent_conditional_puts_only_one_wins(served: Served) -> None:
    import threading

    results: list[int] = []

    def put(i: int) -> None:
        c = client(served.endpoint)
        try:
            c.put_object(Bucket="out", Key="once", Body=bytes([65 + i]) * 200_000, IfNoneMatch="*")
            results.append(200)
        except ClientError as err:
            results.append(err.response["ResponseMetadata"]["HTTPStatusCode"])

    for _ in range(3):
        (served.output / "once").unlink(missing_ok=True)
        results.clear()
        threads = [threading.Thread(target=put, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200, 412, 412, 412, 412, 412]
        data = (served.output / "once").read_bytes()
        assert len(data) == 200_000 and len(set(data)) == 1


def test_min_part_size_option_of_the_module(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "blockkit.gateway", "--output", str(tmp_path / "out"), "--min-part-size", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        s3 = client(proc.stdout.readline().strip())
        up = s3.create_multipart_upload(Bucket="out", Key="tiny")["UploadId"]
        parts = [
            {"PartNumber": n, "ETag": s3.upload_part(Bucket="out", Key="tiny", UploadId=up, PartNumber=n, Body=b"xy")["ETag"]}
            for n in (1, 2)
        ]
        s3.complete_multipart_upload(Bucket="out", Key="tiny", UploadId=up, MultipartUpload={"Parts": parts})
        assert (tmp_path / "out" / "tiny").read_bytes() == b"xyxy"
    finally:
        proc.terminate()
        proc.wait(10)


def test_get_object_attributes(s3s) -> None:
    up = s3s.create_multipart_upload(Bucket="out", Key="attrs", ChecksumAlgorithm="SHA256")["UploadId"]
    bodies = [b"a" * 10, b"b" * 10, b"c" * 3]
    parts = []
    for n, body in enumerate(bodies, 1):
        r = s3s.upload_part(Bucket="out", Key="attrs", UploadId=up, PartNumber=n, Body=body, ChecksumAlgorithm="SHA256")
        parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]})
    done = s3s.complete_multipart_upload(Bucket="out", Key="attrs", UploadId=up, MultipartUpload={"Parts": parts})
    resp = s3s.get_object_attributes(
        Bucket="out", Key="attrs", ObjectAttributes=["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"], MaxParts=2
    )
    assert resp["ETag"] == done["ETag"].strip('"') and resp["ObjectSize"] == 23 and resp["StorageClass"] == "STANDARD"
    assert resp["Checksum"] == {"ChecksumSHA256": done["ChecksumSHA256"], "ChecksumType": "COMPOSITE"}
    op = resp["ObjectParts"]
    assert (op["TotalPartsCount"], op["IsTruncated"], op["NextPartNumberMarker"]) == (3, True, 2)
    assert [(p["PartNumber"], p["Size"], p["ChecksumSHA256"]) for p in op["Parts"]] == [(1, 10, parts[0]["ChecksumSHA256"]), (2, 10, parts[1]["ChecksumSHA256"])]
    plain = s3s.get_object_attributes(Bucket="input", Key="data.json", ObjectAttributes=["ETag", "ObjectSize", "ObjectParts"])
    assert plain["ObjectSize"] == len('{"type": "FeatureCollection", "features": []}') and "ObjectParts" not in plain
    with pytest.raises(ClientError) as exc:
        s3s.get_object_attributes(Bucket="out", Key="missing", ObjectAttributes=["ETag"])
    assert code(exc) == "NoSuchKey"
