"""A block that changes its own output folder (or its upstream's) while the gateway serves it.

Each test plants what a hostile block can plant (symlinks swapped mid-request, links under the
gateway's own names, FIFOs, link cycles) or races the gateway's own requests, against a real
in-process gateway. The swaps happen at a fixed point inside a request (a gateway function is
wrapped to do them), so each test is deterministic.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from blockkit.gateway import _etags, _multipart, _object_ops
from tests.gateway.conftest import KEYS, Served, _serve, client, raw

SECRET = b"TOP-SECRET-OUTSIDE-ROOT\n"


def _swap_link(link: Path, target: Path | str) -> None:
    """Replace a symlink atomically, as a block would."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _sock(served: Served, timeout: float = 5.0) -> socket.socket:
    host, port = served.endpoint.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                break
    return data


def _wait_until_writing(served: Served, key: str, upload: str, done: bool = False) -> None:
    """Until the gateway is writing a part of the upload (a request is inside its body), or with `done`
    until it no longer is; at most 5 s."""
    store = served.gateway.state.multipart
    assert store is not None
    deadline = time.monotonic() + 5
    while bool(store.get(key, upload).writing) == done and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def outside(served: Served) -> Path:
    """A folder beside the bucket folders holding a file the block must never reach."""
    folder = served.root / "outside"
    folder.mkdir()
    (folder / "f.bin").write_bytes(SECRET)
    return folder


# -- 1. a symlink swapped between the key check and the use ------------------------------------


def test_get_is_not_redirected_by_a_link_swapped_while_hashing(served: Served, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = served.output / "real"
    real.mkdir()
    (real / "f.bin").write_bytes(b"inside " * 1000)
    os.symlink("real", served.output / "d")  # a link inside the folder: served
    original = _etags.ETagCache.etag_of

    def etag_then_swap(self: _etags.ETagCache, *args: object, **kw: object) -> str:
        _swap_link(served.output / "d", outside)  # the block flips d while the gateway hashes
        return original(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_etags.ETagCache, "etag_of", etag_then_swap)
    status, _, body = raw(served, "GET", "/out/d/f.bin")
    assert status == 200
    assert body == b"inside " * 1000
    assert SECRET not in body


def test_put_is_not_redirected_by_a_link_swapped_after_the_check(served: Served, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = served.output / "real"
    real.mkdir()
    os.symlink("real", served.output / "d")
    original = _object_ops.prepare_target

    def prepare_then_swap(*args: object, **kw: object) -> object:
        target = original(*args, **kw)  # type: ignore[arg-type]
        _swap_link(served.output / "d", outside)
        return target

    monkeypatch.setattr(_object_ops, "prepare_target", prepare_then_swap)
    status, _, body = raw(served, "PUT", "/out/d/f.bin", body=b"WRITTEN-THROUGH-THE-GATEWAY\n")
    assert (outside / "f.bin").read_bytes() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == ["f.bin"]
    assert status == 200, body
    assert (real / "f.bin").read_bytes() == b"WRITTEN-THROUGH-THE-GATEWAY\n"


def test_in_root_links_are_still_served_and_links_out_refused(served: Served, outside: Path) -> None:
    (served.output / "real").mkdir()
    (served.output / "real" / "f.txt").write_bytes(b"x")
    os.symlink("real", served.output / "d")
    os.symlink(str(served.output / "real" / "f.txt"), served.output / "abs.txt")  # absolute, inside
    os.symlink("../outside/f.bin", served.output / "out.bin")
    assert raw(served, "GET", "/out/d/f.txt")[0] == 200
    assert raw(served, "GET", "/out/abs.txt")[0] == 200
    status, _, body = raw(served, "GET", "/out/out.bin")
    assert status == 403 and b"AccessDenied" in body


# -- 2. links planted under the gateway's own names ---------------------------------------------


def test_planted_meta_folder_link_is_never_followed(served: Served, outside: Path) -> None:
    victim = outside / "victim-dir"
    victim.mkdir()
    served.gateway.state.buckets["out"].meta.xattrs = False  # as on a file system without xattrs: sidecars
    os.symlink("../outside/victim-dir", served.output / ".blockkit-meta")
    status, _, body = raw(served, "PUT", "/out/a.txt", body=b"payload", headers={"Content-Type": "text/x-mine"})
    assert status == 200, body
    assert list(victim.iterdir()) == []
    assert (served.output / ".blockkit-meta").is_dir() and not (served.output / ".blockkit-meta").is_symlink()
    status, headers, _ = raw(served, "GET", "/out/a.txt")
    assert status == 200 and headers["content-type"] == "text/x-mine"
    (victim / (hashlib.sha256(b"a.txt").hexdigest() + ".json")).write_text("{}")
    os.rename(served.output / ".blockkit-meta", served.root / "moved-away")
    os.symlink("../outside/victim-dir", served.output / ".blockkit-meta")
    assert raw(served, "DELETE", "/out/a.txt")[0] == 204
    assert [p.name for p in victim.iterdir()] == [hashlib.sha256(b"a.txt").hexdigest() + ".json"]


def test_planted_staging_link_is_never_followed(served_small_parts: Served) -> None:
    served = served_small_parts
    victim = served.root / "victim-dir"
    victim.mkdir()
    os.symlink("../victim-dir", served.output / ".blockkit-gateway")
    s3 = client(served.endpoint)
    upload = s3.create_multipart_upload(Bucket="out", Key="mp.bin")["UploadId"]
    etag = s3.upload_part(Bucket="out", Key="mp.bin", UploadId=upload, PartNumber=1, Body=b"ATTACKER-BYTES " * 20)["ETag"]
    assert list(victim.iterdir()) == []
    s3.complete_multipart_upload(
        Bucket="out", Key="mp.bin", UploadId=upload, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    assert (served.output / "mp.bin").read_bytes() == b"ATTACKER-BYTES " * 20
    assert list(victim.iterdir()) == []
    assert not os.path.lexists(served.output / ".blockkit-gateway")


# -- 3. sidecars of an upstream block: FIFOs, links, huge files ---------------------------------


def test_hostile_sidecars_are_ignored(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    sidecars = upstream / ".blockkit-meta"
    sidecars.mkdir(parents=True)
    for name in ("fifo.txt", "link.txt", "huge.txt"):
        (upstream / name).write_bytes(b"data of " + name.encode())
    os.mkfifo(sidecars / (hashlib.sha256(b"fifo.txt").hexdigest() + ".json"))
    (tmp_path / "secret.json").write_text('{"s": 17, "m": 0, "h": {"content-type": "text/secret"}}')
    os.symlink(tmp_path / "secret.json", sidecars / (hashlib.sha256(b"link.txt").hexdigest() + ".json"))
    with open(sidecars / (hashlib.sha256(b"huge.txt").hexdigest() + ".json"), "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    from blockkit.gateway import Gateway

    gw = Gateway({"up": upstream})
    gw.start()
    served = Served(gw, tmp_path, upstream, upstream, tmp_path / "none.log")
    try:
        for name in ("fifo.txt", "link.txt", "huge.txt"):
            sock = _sock(served)
            sock.sendall(f"GET /up/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = _response(sock)
            sock.close()
            assert answer.startswith(b"HTTP/1.1 200"), (name, answer[:200])
            assert answer.endswith(b"data of " + name.encode())
            assert b"text/secret" not in answer
        sock = _sock(served)
        sock.sendall(b"GET /up?list-type=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200")
        sock.close()
    finally:
        with open(os.open(sidecars / (hashlib.sha256(b"fifo.txt").hexdigest() + ".json"), os.O_RDWR | os.O_NONBLOCK), "wb"):
            pass  # releases a gateway thread stuck opening the FIFO (without the fix)
        gw.stop()


# -- 4. a part still uploading when Complete runs -----------------------------------------------


def test_part_still_uploading_during_complete_never_reaches_the_object(served_small_parts: Served) -> None:
    served = served_small_parts
    s3 = client(served.endpoint)
    upload = s3.create_multipart_upload(Bucket="out", Key="mp.bin", ContentType="text/x-mine")["UploadId"]
    parts = [
        {"PartNumber": n, "ETag": s3.upload_part(Bucket="out", Key="mp.bin", UploadId=upload, PartNumber=n, Body=bytes([48 + n]) * 1024)["ETag"]}
        for n in (1, 2)
    ]
    late = _sock(served)
    late.sendall(f"PUT /out/mp.bin?partNumber=3&uploadId={upload} HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n".encode() + b"3" * 512)
    _wait_until_writing(served, "mp.bin", upload)
    done = s3.complete_multipart_upload(Bucket="out", Key="mp.bin", UploadId=upload, MultipartUpload={"Parts": parts})
    late.sendall(b"3" * 512)
    answer = _response(late)
    late.close()
    assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
    assert b"NoSuchUpload" in answer
    head = s3.head_object(Bucket="out", Key="mp.bin")
    assert head["ContentLength"] == 2048 and head["ContentType"] == "text/x-mine" and head["ETag"] == done["ETag"]
    assert (served.output / "mp.bin").read_bytes() == b"1" * 1024 + b"2" * 1024


# -- 5. symlink cycles in listings --------------------------------------------------------------


def test_symlink_cycles_do_not_break_listings(served: Served) -> None:
    (served.output / "a.txt").write_bytes(b"a")
    (served.output / "sub").mkdir()
    (served.output / "sub" / "b.txt").write_bytes(b"b")
    os.symlink(".", served.output / "latest")
    os.symlink("..", served.output / "sub" / "up")
    os.symlink("loop2", served.output / "loop1")
    os.symlink("loop1", served.output / "loop2")
    s3 = client(served.endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="out") for o in page.get("Contents", [])]
    assert keys == ["a.txt", "sub/b.txt"]
    resp = s3.list_objects_v2(Bucket="out", Delimiter="/")
    assert [o["Key"] for o in resp["Contents"]] == ["a.txt"]
    assert [p["Prefix"] for p in resp["CommonPrefixes"]] == ["sub/"]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="out", Key="loop1")
    assert exc.value.response["Error"]["Code"] in ("AccessDenied", "NoSuchKey")


# -- 6. concurrent Completes of one upload ------------------------------------------------------


def test_concurrent_completes_of_one_upload_both_answer_200(served_small_parts: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    served = served_small_parts
    s3 = client(served.endpoint)
    upload = s3.create_multipart_upload(Bucket="out", Key="mp.bin")["UploadId"]
    parts = [
        {"PartNumber": n, "ETag": s3.upload_part(Bucket="out", Key="mp.bin", UploadId=upload, PartNumber=n, Body=bytes([48 + n]) * 1024)["ETag"]}
        for n in (1, 2)
    ]
    both_in = threading.Barrier(2)
    original = _multipart.MultipartStore.complete
    calls: list[int] = []

    def complete_together(self: _multipart.MultipartStore, *args: object, **kw: object) -> object:
        calls.append(1)
        try:
            both_in.wait(timeout=1)  # without serialisation, both Completes get here together
        except threading.BrokenBarrierError:
            pass
        if len(calls) > 1:
            time.sleep(0.3)  # the second one runs after the first removed the staged parts
        return original(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_multipart.MultipartStore, "complete", complete_together)
    body = ("<CompleteMultipartUpload>" + "".join(
        f"<Part><PartNumber>{p['PartNumber']}</PartNumber><ETag>{p['ETag']}</ETag></Part>" for p in parts
    ) + "</CompleteMultipartUpload>").encode()
    results: list[tuple[int, bytes]] = []

    def complete() -> None:  # raw requests: an SDK would retry a 500 and hide it
        status, _, answer = raw(served, "POST", f"/out/mp.bin?uploadId={upload}", body=body)
        results.append((status, answer))

    threads = [threading.Thread(target=complete) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in results] == [200, 200], results
    etags = {answer.split(b"<ETag>")[1].split(b"</ETag>")[0] for _, answer in results}
    assert len(etags) == 1 and etags.pop().endswith(b'-2"'), results
    assert (served.output / "mp.bin").read_bytes() == b"1" * 1024 + b"2" * 1024


# -- 8. the slot size taken from a part that failed ---------------------------------------------


def test_a_failed_huge_first_part_does_not_fix_the_slot_size(served_small_parts: Served) -> None:
    served = served_small_parts
    s3 = client(served.endpoint)
    upload = s3.create_multipart_upload(Bucket="out", Key="mp.bin")["UploadId"]
    liar = _sock(served)
    liar.sendall(f"PUT /out/mp.bin?partNumber=1&uploadId={upload} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 40}\r\n\r\n".encode() + b"x" * 10)
    _wait_until_writing(served, "mp.bin", upload)
    liar.close()  # hang up: the part fails
    _wait_until_writing(served, "mp.bin", upload, done=True)
    parts = []
    for n in (1, 17, 10000):
        parts.append({"PartNumber": n, "ETag": s3.upload_part(Bucket="out", Key="mp.bin", UploadId=upload, PartNumber=n, Body=b"p" * 100)["ETag"]})
    s3.complete_multipart_upload(Bucket="out", Key="mp.bin", UploadId=upload, MultipartUpload={"Parts": parts})
    assert (served.output / "mp.bin").read_bytes() == b"p" * 300


# -- 9. a key/folder conflict that appears while the body arrives -------------------------------


def test_folder_appearing_during_the_body_is_invalid_argument(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    original = _object_ops.pump

    def pump_then_make_folder(*args: object, **kw: object) -> int:
        n = original(*args, **kw)  # type: ignore[arg-type]
        (served.output / "a").mkdir()
        (served.output / "a" / "b").write_bytes(b"b")
        return n

    monkeypatch.setattr(_object_ops, "pump", pump_then_make_folder)
    status, _, body = raw(served, "PUT", "/out/a", body=b"a")
    assert status == 400 and b"<Code>InvalidArgument</Code>" in body, body
    assert (served.output / "a" / "b").read_bytes() == b"b"
    assert [p.name for p in served.output.iterdir()] == ["a"]


# -- 7, 10, 11, 12: framing, timeouts, credential scope, continuation tokens --------------------


def test_trailer_section_is_bounded(served: Served) -> None:
    sock = _sock(served, timeout=10)
    body = b"3\r\nabc\r\n0\r\n" + b"".join(b"x-junk-%d:%s\r\n" % (i, b"v" * 100) for i in range(1000)) + b"\r\n"
    sock.sendall(
        b"PUT /out/t.txt HTTP/1.1\r\nHost: x\r\nContent-Encoding: aws-chunked\r\n"
        b"x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER\r\nx-amz-decoded-content-length: 3\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    answer = _response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"InvalidRequest" in answer, answer[:300]
    assert not (served.output / "t.txt").exists()


@pytest.mark.parametrize("size", [b"0x3", b"+3", b"0_3"])
def test_chunk_size_must_be_plain_hex(served: Served, size: bytes) -> None:
    sock = _sock(served)
    sock.sendall(b"PUT /out/c.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabc\r\n0\r\n\r\n")
    answer = _response(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert not (served.output / "c.txt").exists()


def test_garbage_continuation_token_is_invalid_argument(served: Served) -> None:
    for token in ("!!", "YQ", "%3D%3D"):
        status, _, body = raw(served, "GET", f"/input?list-type=2&continuation-token={token}")
        assert status == 400 and b"InvalidArgument" in body, (token, body)


def test_stalled_connection_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    served = _serve(tmp_path, None, idle_timeout=0.5)
    try:
        stalled = _sock(served, timeout=5)
        stalled.sendall(b"PUT /out/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        started = time.monotonic()
        answer = _response(stalled)
        assert time.monotonic() - started < 4
        assert answer.startswith(b"HTTP/1.1 400") and b"RequestTimeout" in answer, answer[:300]
        assert stalled.recv(10) == b""  # closed
        stalled.close()
        assert raw(served, "GET", "/input/data.json")[0] == 200
        assert not (served.output / "x").exists()
    finally:
        served.gateway.stop()


@pytest.mark.parametrize(("region", "service"), [("us-east-1", "s3"), ("eu-west-1", "s3"), ("us-east-1", "iam")])
def test_credential_scope_must_name_this_region_and_s3(served_auth: Served, region: str, service: str) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    url = f"{served_auth.endpoint}/input/data.json"
    request = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(BotoCredentials(KEYS.access_key, KEYS.secret_key), service, region).add_auth(request)
    status, _, body = raw(served_auth, "GET", "/input/data.json", headers=dict(request.headers.items()))
    if (region, service) == ("us-east-1", "s3"):
        assert status == 200, body
    else:
        assert status == 400 and b"<Code>AuthorizationHeaderMalformed</Code>" in body, body


# -- review of the fixes: links that never loop, a FIFO for the assembly file ------------------


def test_folder_links_that_never_loop_cannot_multiply_a_listing(served: Served) -> None:
    """Each folder links the next one twice: 2**12 keys for one file, with no cycle for the ancestor check."""
    levels = 12
    base = served.output / "dag"
    for i in range(levels + 1):
        (base / f"d{i}").mkdir(parents=True)
    for i in range(levels):
        for name in ("x", "y"):
            os.symlink(f"../d{i + 1}", base / f"d{i}" / name)
    (base / f"d{levels}" / "f.txt").write_bytes(b"f")
    s3 = client(served.endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="out", Prefix="dag/")
            for o in page.get("Contents", [])]
    # A key goes through at most one linked folder: the file itself and the two links to its folder.
    assert keys == [f"dag/d{levels - 1}/x/f.txt", f"dag/d{levels - 1}/y/f.txt", f"dag/d{levels}/f.txt"]
    # Not listed, still served: a GET follows links beneath the bucket folder (up to 40).
    assert s3.get_object(Bucket="out", Key=f"dag/d{levels - 2}/x/y/f.txt")["Body"].read() == b"f"


def test_a_fifo_in_place_of_the_assembly_file_never_holds_a_request(served_small_parts: Served) -> None:
    served = served_small_parts
    s3 = client(served.endpoint)
    upload = s3.create_multipart_upload(Bucket="out", Key="mp.bin")["UploadId"]
    s3.upload_part(Bucket="out", Key="mp.bin", UploadId=upload, PartNumber=1, Body=b"1" * 1024)
    [assembly] = list((served.output / ".blockkit-gateway" / "uploads").glob("*/assembly"))
    assembly.unlink()
    os.mkfifo(assembly)
    answer: list[object] = []

    def part_two() -> None:
        try:
            s3.upload_part(Bucket="out", Key="mp.bin", UploadId=upload, PartNumber=2, Body=b"2" * 1024)
            answer.append("200")
        except ClientError as exc:
            answer.append(exc.response["Error"]["Code"])

    worker = threading.Thread(target=part_two, daemon=True)
    worker.start()
    worker.join(timeout=15)
    try:
        assert answer == ["NoSuchUpload"]  # was: the request waited on the FIFO for ever
    finally:
        if worker.is_alive():  # release a gateway thread stuck on the FIFO (the code before the fix)
            fd = os.open(assembly, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
