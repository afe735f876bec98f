"""Wire-level details: aws-chunked bodies (signed and unsigned-trailer), the subprocess sidecar, the CLI."""

from __future__ import annotations

import base64
import hashlib
import http.client
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from blockkit.gateway import Credentials, GatewayConfigError, GatewayStartError, start_gateway_subprocess
from blockkit.gateway._sigv4 import SignatureContext, chunk_signature, signing_key
from tests.gateway.conftest import Served, client


def _put(served: Served, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = served.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("PUT", path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_chunk_signature_matches_the_aws_documentation_example() -> None:
    # "Example: PUT Object" of AWS's "Signature Calculations for the Authorization Header: Transferring Payload in Multiple Chunks"
    key = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "us-east-1", "s3")
    ctx = SignatureContext(key, "20130524T000000Z", "20130524/us-east-1/s3/aws4_request",
                           "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9")
    first = chunk_signature(ctx, ctx.seed_signature, hashlib.sha256(b"a" * 65536).hexdigest())
    assert first == "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    second = chunk_signature(ctx, first, hashlib.sha256(b"a" * 1024).hexdigest())
    assert second == "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    final = chunk_signature(ctx, second, hashlib.sha256(b"").hexdigest())
    assert final == "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"


def test_unsigned_trailer_aws_chunked_put_like_current_boto3(served: Served) -> None:
    data = b"x" * 70000 + b"tail"
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % (
        65536, data[:65536], len(data) - 65536, data[65536:], crc.encode())
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32",
        "Content-Length": str(len(body)),
    }
    status, resp = _put(served, "/out/chunked.bin", body, headers)
    assert status == 200, resp
    assert (served.output / "chunked.bin").read_bytes() == data
    bad = body.replace(crc.encode(), base64.b64encode(b"\0\0\0\0"))
    status, resp = _put(served, "/out/bad.bin", bad, headers)
    assert status == 400 and b"BadDigest" in resp
    assert not (served.output / "bad.bin").exists()


def test_http_chunked_transfer_with_aws_chunked_inside(served: Served) -> None:
    data = b"hello chunked world"
    inner = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    host, port = served.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("PUT", "/out/te.bin", body=iter([inner[:7], inner[7:]]), encode_chunked=True, headers={
        "Content-Encoding": "aws-chunked", "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-decoded-content-length": str(len(data)), "Transfer-Encoding": "chunked"})
    assert conn.getresponse().status == 200
    assert (served.output / "te.bin").read_bytes() == data


def test_signed_streaming_put_with_auth(served_auth: Served) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    from tests.gateway.conftest import KEYS

    data = [b"a" * 8192, b"b" * 100]
    decoded = sum(map(len, data))
    url = f"{served_auth.endpoint}/out/signed-stream.bin"
    req = AWSRequest("PUT", url, headers={
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(decoded),
    })
    SigV4Auth(BotoCredentials(KEYS.access_key, KEYS.secret_key), "s3", "us-east-1").add_auth(req)
    seed = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    amz_date = req.headers["X-Amz-Date"]
    ctx = SignatureContext(signing_key(KEYS.secret_key, amz_date[:8], "us-east-1", "s3"), amz_date,
                           f"{amz_date[:8]}/us-east-1/s3/aws4_request", seed)
    body, prev = b"", seed
    for chunk in [*data, b""]:
        prev = chunk_signature(ctx, prev, hashlib.sha256(chunk).hexdigest())
        body += b"%x;chunk-signature=%s\r\n%s\r\n" % (len(chunk), prev.encode(), chunk)
    headers = {k: v for k, v in req.headers.items()}
    headers["Content-Length"] = str(len(body))
    status, resp = _put(served_auth, "/out/signed-stream.bin", body, headers)
    assert status == 200, resp
    assert (served_auth.output / "signed-stream.bin").read_bytes() == b"".join(data)
    tampered = body.replace(b"b" * 100, b"c" * 100)
    status, resp = _put(served_auth, "/out/tampered.bin", tampered, {**headers})
    assert status == 403 and b"SignatureDoesNotMatch" in resp
    assert not (served_auth.output / "tampered.bin").exists()


def test_subprocess_sidecar_env_works_for_boto3(tmp_path: Path) -> None:
    import boto3

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "hello.txt").write_text("hi")
    handle = start_gateway_subprocess({"input": inp}, out, tmp_path / "logs" / "gateway.log")
    try:
        env = handle.env()
        assert env["S3_ENDPOINT"] == handle.endpoint and handle.endpoint.startswith("http://127.0.0.1:")
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_S3_ENDPOINT", "AWS_VIRTUAL_HOSTING"} <= env.keys()
        s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
        body = s3.get_object(Bucket="input", Key="hello.txt")["Body"].read()
        s3.put_object(Bucket="out", Key="echo.txt", Body=body)
    finally:
        assert handle.stop() == 0
    assert (out / "echo.txt").read_text() == "hi"
    assert '"path":"/input/hello.txt"' in (tmp_path / "logs" / "gateway.log").read_text()


def test_subprocess_with_credentials_requires_them(tmp_path: Path) -> None:
    from botocore.exceptions import ClientError

    keys = Credentials("sidecar", "sidecar-secret")
    with start_gateway_subprocess({}, tmp_path / "out", tmp_path / "gw.log", credentials=keys) as handle:
        assert handle.env()["AWS_ACCESS_KEY_ID"] == "sidecar"
        client(handle.endpoint, keys).put_object(Bucket="out", Key="a", Body=b"1")
        with pytest.raises(ClientError):
            client(handle.endpoint).put_object(Bucket="out", Key="b", Body=b"1")


def test_setup_errors_are_one_line(tmp_path: Path) -> None:
    from blockkit.gateway import Gateway

    with pytest.raises(GatewayConfigError, match="not a folder"):
        Gateway({"input": tmp_path / "missing"}, None)
    with pytest.raises(GatewayConfigError, match="reserved"):
        Gateway({"out": tmp_path}, None)
    with Gateway({}, tmp_path / "o") as first:
        port = int(first.endpoint.rsplit(":", 1)[1])
        with pytest.raises(GatewayStartError, match="in use"):
            Gateway({}, tmp_path / "o2", port=port).start()
    with pytest.raises(GatewayStartError, match="did not start"):
        start_gateway_subprocess({"input": tmp_path / "missing"}, None, tmp_path / "bad.log")
    proc = subprocess.run([sys.executable, "-m", "blockkit.gateway", "--input", "x=/does/not/exist"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "not a folder" in proc.stderr


def test_cli_command_reports_errors_on_one_line(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from blockkit.cli._gateway_cmd import register

    app = typer.Typer()
    register(app)
    app.command("version")(lambda: None)  # a second command keeps `gateway` a subcommand
    result = CliRunner().invoke(app, ["gateway", "--input", f"in={tmp_path / 'nope'}"])
    assert result.exit_code != 0
    assert "not a folder" in result.output


@pytest.mark.parametrize("auth", [False, True], ids=["open", "sigv4"])
def test_the_command_prints_client_settings_and_never_the_secret(tmp_path: Path, auth: bool) -> None:
    import os
    import shlex
    import signal

    (tmp_path / "in").mkdir()
    args = ["--access-key", "AKEXAMPLE", "--secret-key", "s3cr3t-never-printed"] if auth else []
    proc = subprocess.Popen([str(Path(sys.executable).with_name("blockkit")), "gateway", "--input", f"in={tmp_path / 'in'}",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("BLOCKKIT_GATEWAY")})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        endpoint = proc.stdout.readline().strip()
        lines = [proc.stderr.readline().rstrip("\n") for _ in range(2)]
        settings = {}
        while len(settings) < 13:
            name, _, value = proc.stderr.readline().strip().removeprefix("export ").partition("=")
            settings[name] = shlex.split(value)[0]
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=20)
    assert lines[0] == "buckets: in (read-only)"
    assert lines[1] == ("auth: SigV4 required (access key AKEXAMPLE); client settings:" if auth
                        else "auth: off (any credentials accepted); client settings:")
    assert settings["S3_ENDPOINT"] == endpoint and settings["AWS_ACCESS_KEY_ID"] == ("AKEXAMPLE" if auth else "blockkit")
    assert settings["AWS_SECRET_ACCESS_KEY"] == ("<your secret key>" if auth else "blockkit-secret")
    assert "s3cr3t" not in "".join(rest) + str(settings)
