"""Stage-out to a folder, S3 and WebDAV: the catalog opens with pystac and every href resolves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pystac
import pytest
import requests

from blockkit.contract._datajson import write_data_json
from blockkit.contract.errors import ExitCode
from blockkit.storage._errors import AccessDenied, NoOutputError, TargetNotEmpty, UnsafePath, UnsupportedURI
from blockkit.storage._keystore import Keystore, WebDavKeyConfig
from blockkit.storage._stagein import stage_in
from blockkit.storage._stageout import stage_out
from blockkit.storage._transfer import Document, RetryPolicy, Upload
from tests.storage.outputs import write_outputs

FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    # an id that is not a safe path and a feature without geometry: stage-out must cope with both
    return write_outputs(tmp_path / "output", ndvi_properties={"ndvi:mean": 0.41}, scene_id="scene b/../x",
                         scene_geometry=None)


def _check_catalog(cat: pystac.Catalog, exists: Any) -> list[pystac.Item]:
    items = sorted(cat.get_items(recursive=True), key=lambda i: i.id)
    assert [i.id for i in items] == ["ndvi_a", "scene_b_.._x"]
    assert items[0].properties["ndvi:mean"] == 0.41 and "up42.data_path" not in items[0].properties
    assert items[0].bbox == [13.5, 52.2, 13.6, 52.3]
    assert {"B04.tif", "qa/mask.txt"} <= set(items[1].assets)
    for item in items:
        for asset in item.assets.values():
            assert exists(asset.get_absolute_href()), asset.get_absolute_href()
    return items


def test_stage_out_local(outputs: Path, tmp_path: Path) -> None:
    uri = stage_out(outputs, str(tmp_path / "pub"), progress=False)
    assert uri == str(tmp_path / "pub/catalog.json")
    cat = pystac.Catalog.from_file(uri)
    assert cat.id == "catalog"
    _check_catalog(cat, lambda href: Path(href).is_file())
    for item in cat.get_items(recursive=True):
        assert pystac.Item.from_dict(item.to_dict()).id == item.id  # round-trips through pystac
    # round trip: staging the published catalog in again gives the same items
    fc = stage_in(str(tmp_path / "pub"), tmp_path / "again", progress=False)
    assert sorted(f["id"] for f in fc.features) == ["ndvi_a", "scene_b_.._x"]


def test_empty_output_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    write_data_json(empty, {"type": "FeatureCollection", "features": []})
    with pytest.raises(NoOutputError, match="has no features") as info:
        stage_out(empty, str(tmp_path / "pub"), progress=False)
    assert info.value.exit_code == ExitCode.NO_OUTPUT_ERROR
    nofiles = tmp_path / "nofiles"
    write_data_json(nofiles, {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": None, "properties": {"a": 1}}]})
    with pytest.raises(NoOutputError, match="links a file"):
        stage_out(nofiles, str(tmp_path / "pub"), progress=False)
    assert not (tmp_path / "pub").exists()


class _S3StacIO(pystac.StacIO):
    """pystac reading s3:// through boto3 (what a user of the published catalog would plug in)."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        bucket, _, key = str(source)[len("s3://"):].partition("/")
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError


def test_stage_out_s3_multipart(outputs: Path, s3_keystore: Keystore, seaweed) -> None:
    seaweed.make_bucket("results")
    big = outputs / "scene_b" / "big.bin"
    big.write_bytes(b"\x01" * (6 * 1024 * 1024))
    uri = stage_out(outputs, "s3://results/run-1/", keystore=s3_keystore, key="s3", progress=False,
                    multipart_threshold=5 * 1024 * 1024)
    assert uri == "s3://results/run-1/catalog.json"
    client = seaweed.client()
    head = client.head_object(Bucket="results", Key="run-1/scene_b_.._x/big.bin")
    assert "-" in head["ETag"] and head["ContentLength"] == big.stat().st_size
    cat_head = client.head_object(Bucket="results", Key="run-1/scene_b_.._x/scene_b_.._x.json")
    assert cat_head["ContentType"] == "application/geo+json"

    def exists(href: str) -> bool:
        bucket, _, key = href[len("s3://"):].partition("/")
        return client.head_object(Bucket=bucket, Key=key)["ContentLength"] >= 0

    cat = pystac.Catalog.from_file(uri, stac_io=_S3StacIO(client))
    items = _check_catalog(cat, exists)
    assert items[1].assets["big.bin"].extra_fields["file:size"] == big.stat().st_size


def test_stage_out_s3_public_http_and_stage_in_again(outputs: Path, s3_keystore: Keystore, seaweed,
                                                     tmp_path: Path) -> None:
    uri = stage_out(outputs, f"s3://{seaweed.public_bucket}/pub-run", keystore=s3_keystore, key="s3", progress=False)
    http_url = f"{seaweed.endpoint}/{seaweed.public_bucket}/pub-run/catalog.json"
    cat = pystac.Catalog.from_file(http_url)  # plain pystac over anonymous HTTP
    _check_catalog(cat, lambda href: requests.head(href, timeout=10).status_code == 200)
    # and our own stage-in reads it back through the STAC path, verifying file:checksum
    fc = stage_in(f"stac+{http_url}", tmp_path / "back", progress=False)
    assert (tmp_path / "back/ndvi_a/ndvi_a.tif").read_bytes() == (outputs / "ndvi_a.tif").read_bytes()
    assert len(fc.features) == 2 and uri.endswith("/pub-run/catalog.json")


def test_stage_out_s3_refused(outputs: Path, s3_keystore: Keystore, seaweed) -> None:
    seaweed.make_bucket("results")
    with pytest.raises(AccessDenied):
        stage_out(outputs, "s3://results/ro/", keystore=s3_keystore, key="s3-ro", progress=False)
    with pytest.raises(AccessDenied):
        stage_out(outputs, "s3://results/bad/", keystore=s3_keystore, key="s3-bad", progress=False)
    with pytest.raises(UnsupportedURI):
        stage_out(outputs, "ftp://x/y", progress=False)
    with pytest.raises(UnsupportedURI):
        stage_out(outputs, "https://example.org/x", progress=False)


def test_stage_out_webdav(outputs: Path, keystore: Keystore, dav_server, caplog: pytest.LogCaptureFixture) -> None:
    keystore.add("dav", WebDavKeyConfig(dav_server.endpoint, dav_server.username, dav_server.password))
    target = dav_server.endpoint.replace("http://", "webdav://") + "/results/run 1"
    with caplog.at_level(logging.DEBUG):
        uri = stage_out(outputs, target.replace(" ", "%20"), keystore=keystore, key="dav", progress=False,
                        retry=FAST)
    assert uri.endswith("/dav/results/run%201/catalog.json") and uri.startswith("webdav://")
    on_disk = dav_server.root / "results" / "run 1"
    assert (on_disk / "scene_b_.._x" / "qa" / "mask.txt").read_text() == "ok"
    cat_dict = json.loads((on_disk / "catalog.json").read_text())
    assert cat_dict["id"] == "catalog"
    cat = pystac.Catalog.from_file(str(on_disk / "catalog.json"))
    _check_catalog(cat, lambda href: Path(href).is_file())
    # over HTTP, with auth, hrefs resolve too
    http_cat = uri.replace("webdav://", "http://")
    auth = (dav_server.username, dav_server.password)
    item_href = urljoin(http_cat, cat_dict["links"][1]["href"])
    item = requests.get(item_href, auth=auth, timeout=10).json()
    for asset in item["assets"].values():
        assert requests.head(urljoin(item_href, asset["href"]), auth=auth, timeout=10).status_code == 200
    for secret in keystore.get("dav").secrets():
        assert secret not in caplog.text


# --- the uploads beside their stage-in twins (s3.upload, webdav.upload) ---------------------------


def _files(tmp_path: Path) -> list[Upload]:
    data = tmp_path / "f.bin"
    data.write_bytes(b"data")
    return [Upload(data, "item/f.bin", 4, "application/octet-stream")]


@pytest.mark.parametrize("bad", ["../escape.bin", "/abs.bin", "item/../../x", "item//x", "./x", "a\x00b"])
def test_s3_upload_refuses_paths_leaving_the_prefix_before_sending(tmp_path: Path, s3_keystore: Keystore, seaweed,
                                                                   bad: str) -> None:
    from blockkit.storage import _s3 as s3

    seaweed.make_bucket("hostile-up")
    uploads = _files(tmp_path) + [Upload(tmp_path / "f.bin", bad, 4, "application/octet-stream")]
    with pytest.raises(UnsafePath):
        s3.upload(s3_keystore.get("s3"), s3.parse_s3_uri("s3://hostile-up/run"), uploads, [], progress=False)
    assert seaweed.client().list_objects_v2(Bucket="hostile-up").get("KeyCount", 0) == 0


def test_s3_upload_writes_files_then_documents_and_refuses_a_full_prefix(tmp_path: Path, s3_keystore: Keystore,
                                                                         seaweed) -> None:
    from blockkit.storage import _s3 as s3

    seaweed.make_bucket("twin-up")
    loc = s3.parse_s3_uri("s3://twin-up/run")
    docs = [Document("catalog.json", b"{}", "application/json")]
    assert s3.upload(s3_keystore.get("s3"), loc, _files(tmp_path), docs, progress=False) == "s3://twin-up/run/catalog.json"
    client = seaweed.client()
    assert client.get_object(Bucket="twin-up", Key="run/item/f.bin")["Body"].read() == b"data"
    assert client.head_object(Bucket="twin-up", Key="run/catalog.json")["ContentType"] == "application/json"
    with pytest.raises(TargetNotEmpty):
        s3.upload(s3_keystore.get("s3"), loc, _files(tmp_path), docs, progress=False)


@pytest.mark.parametrize("bad", ["../escape.bin", "/abs.bin", "item/../../x"])
def test_webdav_upload_refuses_paths_leaving_the_collection_before_sending(tmp_path: Path, keystore: Keystore,
                                                                          dav_server, bad: str) -> None:
    from blockkit.storage import _webdav as webdav

    keystore.add("dav-up", WebDavKeyConfig(dav_server.endpoint, dav_server.username, dav_server.password))
    before = sorted(p.relative_to(dav_server.root) for p in dav_server.root.rglob("*"))
    uploads = _files(tmp_path) + [Upload(tmp_path / "f.bin", bad, 4, "application/octet-stream")]
    target = dav_server.endpoint.replace("http://", "webdav://") + "/hostile/run"
    with pytest.raises(UnsafePath):
        webdav.upload(keystore.get("dav-up"), target, uploads, [], progress=False, policy=FAST)
    assert sorted(p.relative_to(dav_server.root) for p in dav_server.root.rglob("*")) == before


def test_webdav_folder_names_with_percent_stay_inside_the_target_and_come_back(tmp_path: Path, keystore: Keystore,
                                                                             dav_server) -> None:
    # MKCOL and PUT quote a folder name the same way: `%2e%2e` is a name, never `..`; `my%20dir` is not `my dir`
    keystore.add("dav-pct", WebDavKeyConfig(dav_server.endpoint, dav_server.username, dav_server.password))
    out = tmp_path / "out"
    for sub in ("my%20dir", "%2e%2e/%2e%2e/%2e%2e/ESCAPED"):
        (out / "res" / sub).mkdir(parents=True)
        (out / "res" / sub / "f.txt").write_text(sub)
    write_data_json(out, {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "r", "geometry": None, "properties": {"up42.data_path": "res"}}]})
    (dav_server.root / "pct" / "tenant").mkdir(parents=True)
    before = {p for p in dav_server.root.rglob("*") if "pct/tenant/run" not in p.as_posix()}
    target = dav_server.endpoint.replace("http://", "webdav://") + "/pct/tenant/run"
    uri = stage_out(out, target, keystore=keystore, key="dav-pct", progress=False, retry=FAST)
    after = {p for p in dav_server.root.rglob("*") if "pct/tenant/run" not in p.as_posix()}
    assert after == before  # nothing made outside the target
    on_disk = dav_server.root / "pct" / "tenant" / "run" / "r"
    assert (on_disk / "my%20dir" / "f.txt").read_text() == "my%20dir"
    assert (on_disk / "%2e%2e" / "%2e%2e" / "%2e%2e" / "ESCAPED" / "f.txt").is_file()
    assert not (on_disk / "my dir").exists()
    staged = tmp_path / "in"
    stage_in(uri, staged, keystore=keystore, key="dav-pct", progress=False)
    assert (staged / "r" / "my%20dir" / "f.txt").read_text() == "my%20dir"
    assert (staged / "r" / "%2e%2e" / "%2e%2e" / "%2e%2e" / "ESCAPED" / "f.txt").read_text().endswith("ESCAPED")


def _one_result(out: Path, fid: str, text: str) -> Path:
    """A step output holding one feature `fid` whose data is r.txt with `text`."""
    out.mkdir()
    (out / "r.txt").write_text(text)
    write_data_json(out, {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": fid, "geometry": None, "properties": {"up42.data_path": "r.txt"}}]})
    return out


def test_local_overwrite_never_writes_through_symlinks_in_the_target(tmp_path: Path) -> None:
    import os

    out = _one_result(tmp_path / "out", "r", "new result")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("VICTIM")
    target = tmp_path / "target"
    (target / "r").mkdir(parents=True)
    os.symlink(outside / "victim.txt", target / "r" / "r.txt.part")  # a planted `.part` file
    stage_out(out, str(target), progress=False, overwrite=True)
    assert (outside / "victim.txt").read_text() == "VICTIM"
    assert (target / "r" / "r.txt").read_text() == "new result" and not (target / "r" / "r.txt").is_symlink()
    os.symlink(outside, target / "r2")  # an item folder that leads outside
    out2 = _one_result(tmp_path / "out2", "r2", "second")
    with pytest.raises(UnsafePath) as err:
        stage_out(out2, str(target), progress=False, overwrite=True)
    assert err.value.exit_code == ExitCode.WRONG_INPUT_ERROR and "symlink" in err.value.headline()
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


def test_local_stage_out_files_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """Written through a private temporary file (0600), published with the umask's mode, as before."""
    import os
    import stat

    out = _one_result(tmp_path / "out", "r", "result")
    old = os.umask(0o022)
    try:
        stage_out(out, str(tmp_path / "target"), progress=False)
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "target").rglob("*") if p.is_file()]
    assert written and {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}, written
