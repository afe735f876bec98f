"""boto3 against the gateway: listing, ranged reads, uploads, copies, deletes, presigned URLs."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.gateway.conftest import Served, client

MB = 1024 * 1024
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB, max_concurrency=4)


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def test_list_buckets_and_location(s3) -> None:
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert names == ["input", "out"]
    s3.head_bucket(Bucket="input")
    assert s3.get_bucket_location(Bucket="input")["LocationConstraint"] is None


def _all_keys(served: Served) -> list[str]:
    keys = [str(p.relative_to(served.input)) for p in served.input.rglob("*") if p.is_file()]
    return sorted(keys)


@pytest.mark.parametrize("version", ["list_objects", "list_objects_v2"])
def test_paginated_listing_returns_every_key_once_in_order(s3, served: Served, version: str) -> None:
    pages = s3.get_paginator(version).paginate(Bucket="input", PaginationConfig={"PageSize": 4})
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys == _all_keys(served)
    assert "with space+plus ü.txt" in keys


@pytest.mark.parametrize("version", ["list_objects", "list_objects_v2"])
def test_delimiter_listing_pages_through_common_prefixes(s3, version: str) -> None:
    pages = list(s3.get_paginator(version).paginate(Bucket="input", Delimiter="/", PaginationConfig={"PageSize": 2}))
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
    assert prefixes == ["many/", "scenes/"]
    assert keys == ["big.bin", "data.json", "scenes-list.txt", "with space+plus ü.txt"]
    assert len(pages) == 3


def test_prefix_start_after_and_etags(s3, served: Served) -> None:
    resp = s3.list_objects_v2(Bucket="input", Prefix="scenes/", Delimiter="/")
    assert [o["Key"] for o in resp["Contents"]] == ["scenes/meta.json"]
    assert [c["Prefix"] for c in resp["CommonPrefixes"]] == ["scenes/2024/"]
    resp = s3.list_objects_v2(Bucket="input", Prefix="many/", StartAfter="many/f020.txt")
    assert [o["Key"] for o in resp["Contents"]] == [f"many/f{i:03d}.txt" for i in range(21, 25)]
    big = s3.list_objects_v2(Bucket="input", Prefix="big")["Contents"][0]
    assert big["ETag"].strip('"') == hashlib.md5((served.input / "big.bin").read_bytes()).hexdigest()
    assert big["Size"] == 3 * MB


def test_get_with_ranges_and_conditions(s3, served: Served) -> None:
    data = (served.input / "big.bin").read_bytes()
    resp = s3.get_object(Bucket="input", Key="big.bin", Range="bytes=100-199")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert resp["ContentRange"] == f"bytes 100-199/{len(data)}"
    assert resp["Body"].read() == data[100:200]
    assert s3.get_object(Bucket="input", Key="big.bin", Range="bytes=-10")["Body"].read() == data[-10:]
    assert s3.get_object(Bucket="input", Key="big.bin", Range=f"bytes={len(data) - 5}-")["Body"].read() == data[-5:]
    etag = s3.head_object(Bucket="input", Key="big.bin")["ETag"]
    assert s3.get_object(Bucket="input", Key="big.bin", IfMatch=etag)["Body"].read() == data
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="input", Key="big.bin", IfMatch='"0000"')
    assert code(exc) == "PreconditionFailed"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="input", Key="big.bin", IfNoneMatch=etag)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    head = s3.head_object(Bucket="input", Key="big.bin")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket="input", Key="big.bin", IfModifiedSince=head["LastModified"])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


def test_range_beyond_end_is_invalid_range(s3) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="input", Key="big.bin", Range=f"bytes={10 * MB}-")
    assert code(exc) == "InvalidRange"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_put_get_head_and_read_back_out(s3, served: Served) -> None:
    resp = s3.put_object(Bucket="out", Key="result/part 1.txt", Body=b"hello out")
    assert resp["ETag"] == f'"{hashlib.md5(b"hello out").hexdigest()}"'
    assert (served.output / "result" / "part 1.txt").read_bytes() == b"hello out"
    assert s3.get_object(Bucket="out", Key="result/part 1.txt")["Body"].read() == b"hello out"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="out")["Contents"]] == ["result/part 1.txt"]
    # files the block writes directly into its output folder are visible too
    (served.output / "direct.txt").write_text("direct")
    assert s3.head_object(Bucket="out", Key="direct.txt")["ContentLength"] == 6


def test_conditional_put_if_none_match(s3) -> None:
    s3.put_object(Bucket="out", Key="once.txt", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="out", Key="once.txt", Body=b"2", IfNoneMatch="*")
    assert code(exc) == "PreconditionFailed"


def test_upload_file_multipart_and_download(s3, served: Served, tmp_path: Path) -> None:
    src = tmp_path / "upload.bin"
    src.write_bytes(os.urandom(12 * MB + 123))
    s3.upload_file(str(src), "out", "deep/upload.bin", Config=SMALL_PARTS)
    assert (served.output / "deep" / "upload.bin").read_bytes() == src.read_bytes()
    etag = s3.head_object(Bucket="out", Key="deep/upload.bin")["ETag"].strip('"')
    parts = [src.read_bytes()[i : i + 5 * MB] for i in range(0, src.stat().st_size, 5 * MB)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert etag == expected
    back = tmp_path / "back.bin"
    s3.download_file("out", "deep/upload.bin", str(back), Config=SMALL_PARTS)
    assert back.read_bytes() == src.read_bytes()
    assert not list(served.output.glob(".blockkit*")), "staging folder left behind"


def test_multipart_low_level_list_abort(served_small_parts: Served) -> None:
    served = served_small_parts
    s3 = client(served.endpoint)
    up = s3.create_multipart_upload(Bucket="out", Key="m.bin")["UploadId"]
    e1 = s3.upload_part(Bucket="out", Key="m.bin", UploadId=up, PartNumber=1, Body=b"a" * 100)["ETag"]
    e2 = s3.upload_part(Bucket="out", Key="m.bin", UploadId=up, PartNumber=2, Body=b"b" * 50)["ETag"]
    parts = s3.list_parts(Bucket="out", Key="m.bin", UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 100), (2, 50)]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket="out")["Uploads"]] == ["m.bin"]
    s3.complete_multipart_upload(
        Bucket="out", Key="m.bin", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    assert (served.output / "m.bin").read_bytes() == b"a" * 100 + b"b" * 50
    up = s3.create_multipart_upload(Bucket="out", Key="gone.bin")["UploadId"]
    s3.upload_part(Bucket="out", Key="gone.bin", UploadId=up, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket="out", Key="gone.bin", UploadId=up)
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket="out", Key="gone.bin", UploadId=up)
    assert code(exc) == "NoSuchUpload"
    assert sorted(p.name for p in served.output.iterdir()) == ["m.bin"]


def test_boto3_paginators_page_through_uploads_and_parts(served: Served) -> None:
    s3 = client(served.endpoint)
    ids = {key: s3.create_multipart_upload(Bucket="out", Key=key)["UploadId"] for key in ("c", "a", "b/x", "é")}
    for number in range(1, 6):
        s3.upload_part(Bucket="out", Key="a", UploadId=ids["a"], PartNumber=number, Body=b"p" * number)
    pages = list(s3.get_paginator("list_multipart_uploads").paginate(
        Bucket="out", PaginationConfig={"PageSize": 1}))
    assert [u["Key"] for page in pages for u in page.get("Uploads", [])] == ["a", "b/x", "c", "é"]
    assert len(pages) == 4
    under_b = s3.list_multipart_uploads(Bucket="out", Prefix="b/")["Uploads"]
    assert [u["UploadId"] for u in under_b] == [ids["b/x"]]
    parts = list(s3.get_paginator("list_parts").paginate(
        Bucket="out", Key="a", UploadId=ids["a"], PaginationConfig={"PageSize": 2}))
    assert [p["PartNumber"] for page in parts for p in page["Parts"]] == [1, 2, 3, 4, 5]
    assert len(parts) == 3
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket="out", Key="a", UploadId=ids["a"], MaxParts=-1)
    assert code(exc) == "InvalidArgument"


def test_multipart_subset_and_uneven_parts_are_assembled(served_small_parts: Served) -> None:
    served = served_small_parts
    s3 = client(served.endpoint)
    up = s3.create_multipart_upload(Bucket="out", Key="odd.bin")["UploadId"]
    bodies = {1: b"1" * 30, 2: b"2" * 40, 3: b"3" * 10, 4: b"4" * 30}  # part 2 larger than the first
    etags = {n: s3.upload_part(Bucket="out", Key="odd.bin", UploadId=up, PartNumber=n, Body=b)["ETag"] for n, b in bodies.items()}
    s3.complete_multipart_upload(
        Bucket="out", Key="odd.bin", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 4)]},
    )
    assert (served.output / "odd.bin").read_bytes() == bodies[1] + bodies[2] + bodies[4]


def test_copy_small_and_multipart(s3, served: Served) -> None:
    s3.copy_object(Bucket="out", Key="copied/data.json", CopySource={"Bucket": "input", "Key": "data.json"})
    assert (served.output / "copied" / "data.json").read_bytes() == (served.input / "data.json").read_bytes()
    s3.copy({"Bucket": "input", "Key": "big.bin"}, "out", "big-copy.bin", Config=TransferConfig(multipart_threshold=1 * MB, multipart_chunksize=5 * MB))
    assert (served.output / "big-copy.bin").read_bytes() == (served.input / "big.bin").read_bytes()
    s3.copy_object(Bucket="out", Key="odd copy ü.txt", CopySource={"Bucket": "input", "Key": "with space+plus ü.txt"})
    assert (served.output / "odd copy ü.txt").read_text() == "odd name"


def test_delete_and_delete_objects(s3, served: Served) -> None:
    for k in ("a/1.txt", "a/2.txt", "b.txt"):
        s3.put_object(Bucket="out", Key=k, Body=b"x")
    s3.delete_object(Bucket="out", Key="b.txt")
    s3.delete_object(Bucket="out", Key="never-existed.txt")  # S3: deleting a missing key succeeds
    resp = s3.delete_objects(Bucket="out", Delete={"Objects": [{"Key": "a/1.txt"}, {"Key": "a/2.txt"}, {"Key": "../outside.txt"}]})
    assert sorted(d["Key"] for d in resp["Deleted"]) == ["a/1.txt", "a/2.txt"]
    assert [(e["Key"], e["Code"]) for e in resp["Errors"]] == [("../outside.txt", "AccessDenied")]
    assert list(served.output.iterdir()) == []
    assert (served.root / "outside.txt").exists()


def test_presigned_get_with_urllib(s3) -> None:
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "input", "Key": "data.json"}, ExpiresIn=60)
    with urllib.request.urlopen(url) as resp:
        assert b"FeatureCollection" in resp.read()


def test_virtual_host_style_addressing(served: Served) -> None:
    import http.client

    port = served.gateway.endpoint.rsplit(":", 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", int(port))
    conn.request("GET", "/data.json", headers={"Host": f"input.localhost:{port}"})
    resp = conn.getresponse()
    assert resp.status == 200 and b"FeatureCollection" in resp.read()
    conn.request("GET", "/?list-type=2&prefix=scenes/", headers={"Host": f"input.s3.localhost:{port}"})
    resp = conn.getresponse()
    assert resp.status == 200 and b"<Key>scenes/meta.json</Key>" in resp.read()
    conn.close()


def test_access_log_records_requests(s3, served: Served) -> None:
    import json
    import time

    s3.get_object(Bucket="input", Key="data.json")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the line is written just after the response
        records = [json.loads(line) for line in served.access_log.read_text().splitlines()]
        if any(r["method"] == "GET" and r["path"] == "/input/data.json" and r["status"] == 200 for r in records):
            return
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for the GET: {served.access_log.read_text()}")
