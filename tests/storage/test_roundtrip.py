"""Whatever stage-out prints, stage-in accepts: byte-identical round trips on a folder, SeaweedFS and WsgiDAV;
a second stage-out to the same target is refused unless --overwrite; artifact URLs are SigV4."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from typer.testing import CliRunner

from blockkit.contract.errors import ExitCode, WrongInputError
from blockkit.storage._errors import StorageError, TargetNotEmpty
from blockkit.storage._keystore import Keystore, S3KeyConfig, WebDavKeyConfig
from blockkit.storage._stagein import stage_in
from blockkit.storage._stageout import stage_out
from tests.storage.outputs import write_outputs


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return write_outputs(tmp_path / "output")


def _digests(root: Path, names: list[str]) -> dict[str, str]:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


ORIGINALS = ["ndvi_a.tif", "scene_b/B04.tif", "scene_b/qa/mask.txt"]
STAGED = ["ndvi_a/ndvi_a.tif", "scene_b/B04.tif", "scene_b/qa/mask.txt"]


def _check_roundtrip(outputs: Path, staged: Path, fc: object) -> None:
    before = _digests(outputs, ORIGINALS)
    after = _digests(staged, STAGED)
    assert list(before.values()) == list(after.values())
    by_id = {f["id"]: f for f in fc}  # type: ignore[attr-defined]
    # the one data_path rule: a file, and every asset reachable from the feature
    assert by_id["ndvi_a"]["properties"]["up42.data_path"] == "ndvi_a/ndvi_a.tif"
    assert by_id["scene_b"]["properties"]["up42.data_path"] == "scene_b/B04.tif"
    assert {a["href"] for a in by_id["scene_b"]["assets"].values()} == {"scene_b/B04.tif", "scene_b/qa/mask.txt"}
    assert by_id["ndvi_a"]["properties"]["datetime"] == "2024-06-01T10:00:00Z"


def test_local_roundtrip_and_no_overwrite(outputs: Path, tmp_path: Path) -> None:
    printed = stage_out(outputs, str(tmp_path / "pub"), progress=False)
    fc = stage_in(printed, tmp_path / "back", progress=False)
    _check_roundtrip(outputs, tmp_path / "back", fc)
    # the folder form works too
    fc2 = stage_in(str(tmp_path / "pub"), tmp_path / "back2", progress=False)
    assert sorted(f["properties"]["up42.data_path"] for f in fc2) == ["ndvi_a/ndvi_a.tif", "scene_b/B04.tif"]
    from blockkit.storage import check_target

    check_target(str(tmp_path / "new"))  # a runner checks before running: a new folder is fine
    with pytest.raises(TargetNotEmpty):
        check_target(str(tmp_path / "pub"))
    with pytest.raises(TargetNotEmpty) as err:
        stage_out(outputs, str(tmp_path / "pub"), progress=False)
    assert err.value.exit_code == ExitCode.WRONG_INPUT_ERROR and "--overwrite" in err.value.headline()
    assert stage_out(outputs, str(tmp_path / "pub"), progress=False, overwrite=True) == printed


@pytest.mark.slow
def test_s3_roundtrip_and_no_overwrite(outputs: Path, s3_keystore: Keystore, seaweed, tmp_path: Path) -> None:
    seaweed.make_bucket("rtrip")
    printed = stage_out(outputs, "s3://rtrip/results/run-1/", keystore=s3_keystore, key="s3", progress=False)
    assert printed == "s3://rtrip/results/run-1/catalog.json"
    fc = stage_in(printed, tmp_path / "back", keystore=s3_keystore, key="s3", progress=False)
    _check_roundtrip(outputs, tmp_path / "back", fc)
    client = seaweed.client()
    client.put_object(Bucket="rtrip", Key="results/run-1/ndvi_a/ndvi_a.tif", Body=b"")  # mark: must stay
    (outputs / "ndvi_a.tif").write_bytes(b"second version")
    from blockkit.storage import check_target

    with pytest.raises(TargetNotEmpty):
        check_target("s3://rtrip/results/run-1/", keystore=s3_keystore, key="s3")
    check_target("s3://rtrip/results/run-2/", keystore=s3_keystore, key="s3")
    with pytest.raises(TargetNotEmpty, match="s3://rtrip/results/run-1/"):
        stage_out(outputs, "s3://rtrip/results/run-1", keystore=s3_keystore, key="s3", progress=False)
    assert client.get_object(Bucket="rtrip", Key="results/run-1/ndvi_a/ndvi_a.tif")["Body"].read() == b""
    stage_out(outputs, "s3://rtrip/results/run-1", keystore=s3_keystore, key="s3", progress=False, overwrite=True)
    assert client.get_object(Bucket="rtrip", Key="results/run-1/ndvi_a/ndvi_a.tif")["Body"].read() == b"second version"
    # stac+s3:// is accepted too
    fc3 = stage_in("stac+" + printed, tmp_path / "back3", keystore=s3_keystore, key="s3", progress=False)
    assert len(fc3) == 2


@pytest.mark.slow
def test_webdav_roundtrip_and_no_overwrite(outputs: Path, keystore: Keystore, dav_server, tmp_path: Path) -> None:
    keystore.add("dav", WebDavKeyConfig(dav_server.endpoint, dav_server.username, dav_server.password))
    target = f"webdav://127.0.0.1:{dav_server.port}/dav/rt-run/"
    printed = stage_out(outputs, target, keystore=keystore, key="dav", progress=False)
    assert printed.endswith("/rt-run/catalog.json")
    fc = stage_in(printed, tmp_path / "back", keystore=keystore, key="dav", progress=False)
    _check_roundtrip(outputs, tmp_path / "back", fc)
    from blockkit.storage import check_target

    with pytest.raises(TargetNotEmpty):
        check_target(target, keystore=keystore, key="dav")
    check_target(target.replace("rt-run", "rt-new"), keystore=keystore, key="dav")
    with pytest.raises(TargetNotEmpty):
        stage_out(outputs, target, keystore=keystore, key="dav", progress=False)
    stage_out(outputs, target, keystore=keystore, key="dav", progress=False, overwrite=True)


def test_s3_prefix_with_invalid_data_json_leaves_nothing(s3_keystore: Keystore, seaweed, tmp_path: Path) -> None:
    seaweed.make_bucket("baddj")
    client = seaweed.client()
    client.put_object(Bucket="baddj", Key="p/data.json", Body=b"{not json")
    client.put_object(Bucket="baddj", Key="p/x.txt", Body=b"x")
    with pytest.raises(WrongInputError) as err:  # the contract's data.json error
        stage_in("s3://baddj/p/", tmp_path / "in", keystore=s3_keystore, key="s3", progress=False)
    assert err.value.exit_code == ExitCode.WRONG_INPUT_ERROR
    assert not (tmp_path / "in").exists()


def test_artifact_urls_are_sigv4(s3_keystore: Keystore, tmp_path: Path) -> None:
    from blockkit.storage._artifacts import upload_artifact

    admin = s3_keystore.get("s3").config
    assert isinstance(admin, S3KeyConfig)
    # us-east-1 on a custom endpoint: botocore's default there was SigV2 (query `Signature=`)
    s3_keystore.add("east", S3KeyConfig(admin.access_key, admin.secret_key, endpoint=admin.endpoint,
                                        region="us-east-1", bucket="artifacts"))
    f = tmp_path / "a.txt"
    f.write_text("a")
    for key in ("s3", "east"):
        art = upload_artifact(f, key=key, keystore=s3_keystore, expires=60)
        query = parse_qs(urlsplit(art.url).query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "Signature" not in query, art.url
        assert requests.get(art.url, timeout=10).content == b"a"


def test_cli_stage_out_prints_what_stage_in_takes(outputs: Path, tmp_path: Path) -> None:
    from blockkit.cli.main import app

    r = CliRunner().invoke(app, ["stage-out", str(outputs), str(tmp_path / "pub"), "-q"])
    assert r.exit_code == 0, r.output
    printed = r.output.strip().splitlines()[-1]
    r = CliRunner().invoke(app, ["stage-in", printed, str(tmp_path / "back"), "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["stage-out", str(outputs), str(tmp_path / "pub"), "-q"])
    assert r.exit_code == 4 and "--overwrite" in r.output
    r = CliRunner().invoke(app, ["stage-out", str(outputs), str(tmp_path / "pub"), "-q", "--overwrite"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["stage-in", printed, str(tmp_path / "x"), "-q", "--max-file-size", "100"])
    assert r.exit_code == 4 and "max_file_bytes" in r.output and not (tmp_path / "x").exists()
    assert json.loads((tmp_path / "back" / "data.json").read_text())["features"]


def test_local_catalog_json_may_not_reach_outside_its_folder(outputs: Path, tmp_path: Path) -> None:
    printed = stage_out(outputs, str(tmp_path / "pub"), progress=False)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    item_path = tmp_path / "pub" / "ndvi_a" / "ndvi_a.json"
    for href in (str(secret), "../../secret.txt", secret.as_uri()):
        item = json.loads(item_path.read_text())
        item["assets"]["ndvi_a.tif"]["href"] = href
        item_path.write_text(json.dumps(item))
        with pytest.raises(StorageError) as err:
            stage_in(printed, tmp_path / "x", progress=False)
        assert "outside" in err.value.headline() and "\n" not in err.value.headline()
        assert not (tmp_path / "x").exists()
