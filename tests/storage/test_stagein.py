"""Stage-in from every source against real loopback servers, and every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pystac
import pytest
import rasterio

from blockkit.contract._datajson import load_data_json
from blockkit.contract.errors import ExitCode
from blockkit.storage._errors import AccessDenied, SourceNotFound, StorageError, TransferFailed, UnsafePath, UnsupportedURI
from blockkit.storage._keystore import Keystore, S3KeyConfig, WebDavKeyConfig
from blockkit.storage._stagein import stage_in
from blockkit.storage._transfer import RetryPolicy
from tests.servers import write_geotiff

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _as_it_was(target: Path) -> bool:
    """A failed stage-in into a new folder leaves no folder; into an empty one, an empty one."""
    return not target.exists() or not any(target.iterdir())


# --- STAC over HTTP ----------------------------------------------------------------------------


def test_stac_item_layout(stac_server, tmp_path: Path) -> None:
    server, site = stac_server
    out = tmp_path / "in"
    fc = stage_in(f"stac+{site.item_url}", out, progress=False, retry=FAST)
    item_id = site.item_ids[0]
    assert len(fc.features) == 1
    feat = fc.features[0]
    # the one data_path rule: the primary data asset (the first data raster), every asset under `assets`
    assert feat["id"] == item_id and feat["properties"]["up42.data_path"] == f"{item_id}/B02.tif"
    assert {k: a["href"] for k, a in feat["assets"].items()} == {
        "B02": f"{item_id}/B02.tif", "B03": f"{item_id}/B03.tif", "B04": f"{item_id}/B04.tif",
        "B08": f"{item_id}/B08.tif", "visual": f"{item_id}/TCI.tif", "granule_metadata": f"{item_id}/metadata.xml",
    }
    assert feat["geometry"]["type"] == "Polygon" and feat["properties"]["platform"] == "sentinel-2b"
    assert _files(out) == {"catalog.json", "data.json", f"{item_id}/{item_id}.json"} | {
        f"{item_id}/{n}" for n in ("B02.tif", "B03.tif", "B04.tif", "B08.tif", "TCI.tif", "metadata.xml")
    }
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert cat.id == "catalog"
    items = list(cat.get_items(recursive=True))
    assert [i.id for i in items] == [item_id]
    for asset in items[0].assets.values():
        href = Path(asset.get_absolute_href())
        assert href.is_file() and out in href.parents
    with rasterio.open(items[0].assets["B04"].get_absolute_href()) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.count == 1
    load_data_json(out)  # valid for a block
    assert not list(out.rglob("*.part"))


def test_stac_detected_from_json_type_and_catalog(stac_server, tmp_path: Path) -> None:
    server, site = stac_server
    fc = stage_in(site.catalog_url, tmp_path / "cat", progress=False, retry=FAST)
    assert sorted(f["id"] for f in fc.features) == sorted(site.item_ids)
    cat = pystac.Catalog.from_file(str(tmp_path / "cat" / "catalog.json"))
    assert sorted(i.id for i in cat.get_items(recursive=True)) == sorted(site.item_ids)
    for f in fc.features:
        assert (tmp_path / "cat" / f["properties"]["up42.data_path"]).parent.joinpath("TCI.tif").is_file()


def test_stac_checksum_mismatch_is_refused(stac_server, tmp_path: Path) -> None:
    server, site = stac_server
    item = json.loads((Path(server.root) / "stac/items" / f"{site.item_ids[1]}.json").read_text())
    item["assets"]["B03"]["file:checksum"] = "1220" + "00" * 32
    item["id"] = "bad-checksum"
    (Path(server.root) / "stac/items/bad-checksum.json").write_text(json.dumps(item))
    with pytest.raises(TransferFailed, match="sha256 checksum mismatch"):
        stage_in(f"{server.url}/stac/items/bad-checksum.json", tmp_path / "x", progress=False, retry=FAST)
    assert _as_it_was(tmp_path / "x")


def test_stac_bad_items(stac_server, tmp_path: Path) -> None:
    server, site = stac_server
    with pytest.raises(StorageError, match="has no assets"):
        stage_in(site.no_assets_url, tmp_path / "a", progress=False, retry=FAST)
    with pytest.raises(SourceNotFound, match="404") as info:
        stage_in(site.broken_url, tmp_path / "b", progress=False, retry=FAST)
    assert info.value.exit_code == ExitCode.WRONG_INPUT_ERROR
    assert not (tmp_path / "b" / "data.json").exists() and not list((tmp_path / "b").rglob("*.part"))
    with pytest.raises(UnsafePath, match="outside"):
        stage_in(site.escape_url, tmp_path / "c", progress=False, retry=FAST)
    with pytest.raises(UnsafePath, match="item id"):
        stage_in(site.bad_id_url, tmp_path / "d", progress=False, retry=FAST)
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()


def test_remote_stac_may_not_read_local_files(stac_server, tmp_path: Path) -> None:
    server, site = stac_server
    item = json.loads((Path(server.root) / "stac/items" / f"{site.item_ids[0]}.json").read_text())
    item["id"] = "local-href"
    item["assets"]["B02"]["href"] = "file:///etc/passwd"
    (Path(server.root) / "stac/items/local-href.json").write_text(json.dumps(item))
    with pytest.raises(UnsafePath, match="local href"):
        stage_in(f"{server.url}/stac/items/local-href.json", tmp_path / "x", progress=False)


# --- plain HTTP --------------------------------------------------------------------------------


def test_http_file_with_footprint(stac_server, tmp_path: Path) -> None:
    server, site = stac_server
    fc = stage_in(f"{server.url}/data/{site.item_ids[0]}/B02.tif", tmp_path / "h", progress=False)
    (feat,) = fc.features
    assert feat["id"] == "B02" and feat["properties"]["up42.data_path"] == "B02.tif"
    assert feat["geometry"]["type"] == "Polygon" and 13 < feat["bbox"][0] < 14
    assert (tmp_path / "h/B02.tif").read_bytes() == (Path(server.root) / f"data/{site.item_ids[0]}/B02.tif").read_bytes()


def test_http_retries_then_succeeds(stac_server, tmp_path: Path) -> None:
    server, site = stac_server
    url = f"{server.url}/_fail/flaky/2/data/{site.item_ids[0]}/metadata.xml"
    stage_in(url, tmp_path / "f", progress=False, retry=FAST)
    assert (tmp_path / "f/metadata.xml").is_file()


def test_http_errors(stac_server, tmp_path: Path) -> None:
    server, site = stac_server
    with pytest.raises(AccessDenied, match="HTTP 403"):
        stage_in(f"{server.url}/_fail/403/x.tif", tmp_path / "a", progress=False, retry=FAST)
    with pytest.raises(SourceNotFound, match="HTTP 404 not found; check the URL"):
        stage_in(f"{server.url}/nope.tif", tmp_path / "b", progress=False, retry=FAST)
    before = len(server.requests)
    with pytest.raises(TransferFailed, match=r"failed after 3 attempts: HTTP 500") as info:
        stage_in(f"{server.url}/_fail/500/x.tif", tmp_path / "c", progress=False, retry=FAST)
    assert [r for r in server.requests[before:] if r.startswith("GET ")] == ["GET /_fail/500/x.tif 500"] * 3
    assert "\n" not in info.value.headline()
    with pytest.raises(TransferFailed, match="truncated|broke") as info:
        stage_in(f"{server.url}/_fail/truncated/data/{site.item_ids[0]}/B08.tif", tmp_path / "d", progress=False,
                 retry=FAST)
    assert info.value.exit_code == 5
    assert _as_it_was(tmp_path / "d")


def test_unreachable_host_bounded(tmp_path: Path) -> None:
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/x.tif"
    start = time.monotonic()
    with pytest.raises(TransferFailed) as info:
        stage_in(url, tmp_path / "u", progress=False, retry=FAST)
    assert time.monotonic() - start < 5
    assert info.value.headline().startswith(f"[API_CONNECTION_ERROR] {url}: failed after 3 attempts")


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("ftp://example.org/x", "unknown scheme 'ftp'"),
        ("gs://bucket/x", "unknown scheme 'gs'"),
        ("http:///nohost", "no host"),
        ("s3://", "names no bucket"),
        ("s3://arn:aws:s3:eu-west-2:12:accesspoint/x/y", "12 digits"),
        ("webdav:///x", "no host"),
        ("", "empty URI"),
        ("c:stuff", "unknown scheme"),
    ],
)
def test_malformed_uris(uri: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedURI, match=fragment):
        stage_in(uri, tmp_path / "x", progress=False)


def test_missing_key_and_nonempty_target(tmp_path: Path, keystore: Keystore) -> None:
    from blockkit.storage._errors import KeyNotFound

    with pytest.raises(KeyNotFound, match="no key named 'prod'; see `blockkit keys list`"):
        stage_in("s3://bucket/x", tmp_path / "x", keystore=keystore, key="prod", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full/f").write_text("x")
    with pytest.raises(StorageError, match="not an empty folder"):
        stage_in("/etc/hostname", tmp_path / "full", progress=False)


# --- local and workspace paths ------------------------------------------------------------------


def test_workspace_folder_with_data_json_taken_as_is(tmp_path: Path) -> None:
    ws = tmp_path / "workspace/pv-alice-workspace/results/run1"
    write_geotiff(ws / "scene.tif")
    (ws / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "scene", "geometry": None, "properties": {"up42.data_path": "scene.tif", "k": 1}}]}))
    fc = stage_in(str(ws), tmp_path / "in", progress=False)
    assert fc.features[0]["properties"]["k"] == 1
    assert (tmp_path / "in/scene.tif").stat().st_ino == (ws / "scene.tif").stat().st_ino  # hard link, no copy


def test_local_folder_generated_features_and_catalog(tmp_path: Path, stac_server) -> None:
    src = tmp_path / "plain"
    write_geotiff(src / "a.tif")
    (src / "notes.txt").write_text("hi")
    (src / "sub").mkdir()
    (src / "sub/b.txt").write_text("b")
    fc = stage_in(f"file://{src}", tmp_path / "in", progress=False)
    paths = {f["properties"]["up42.data_path"]: f for f in fc.features}
    assert set(paths) == {"a.tif", "notes.txt", "sub"}
    assert paths["a.tif"]["geometry"] is not None and paths["notes.txt"]["geometry"] is None
    # a staged STAC layout, staged again as a local folder, gives the same features
    server, site = stac_server
    stage_in(site.catalog_url, tmp_path / "stac", progress=False)
    (tmp_path / "stac/data.json").unlink()
    fc2 = stage_in(str(tmp_path / "stac"), tmp_path / "again", progress=False)
    assert sorted(f["properties"]["up42.data_path"] for f in fc2.features) == sorted(f"{i}/B02.tif" for i in site.item_ids)


def test_local_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        stage_in(str(tmp_path / "missing"), tmp_path / "x", progress=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "evil").symlink_to("/etc")
    with pytest.raises(UnsafePath, match="symlink"):
        stage_in(str(src), tmp_path / "y", progress=False)


# --- S3 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_data(seaweed, tmp_path_factory) -> dict[str, bytes]:
    client = seaweed.client()
    seaweed.make_bucket("scenes")
    tif = write_geotiff(tmp_path_factory.mktemp("s3src") / "B04.tif")
    objects = {
        "s2/scene1/B04.tif": tif.read_bytes(),
        "s2/scene1/meta.json": b'{"a": 1}',
        "s2/scene2/B04.tif": tif.read_bytes(),
        "single.tif": tif.read_bytes(),
    }
    for k, v in objects.items():
        client.put_object(Bucket="scenes", Key=k, Body=v)
        client.put_object(Bucket=seaweed.public_bucket, Key=k, Body=v)
    return objects


def test_s3_prefix_with_key(s3_keystore: Keystore, s3_data, tmp_path: Path) -> None:
    fc = stage_in("s3://scenes/s2/", tmp_path / "s", keystore=s3_keystore, key="s3", progress=False)
    assert _files(tmp_path / "s") == {"data.json", "scene1/B04.tif", "scene1/meta.json", "scene2/B04.tif"}
    assert sorted(f["properties"]["up42.data_path"] for f in fc.features) == ["scene1", "scene2"]
    assert (tmp_path / "s/scene1/meta.json").read_bytes() == s3_data["s2/scene1/meta.json"]
    # without trailing slash, the same prefix
    fc = stage_in("s3://scenes/s2", tmp_path / "s2", keystore=s3_keystore, key="s3", progress=False)
    assert len(fc.features) == 2


def test_s3_single_object_md5_verified(s3_keystore: Keystore, s3_data, tmp_path: Path) -> None:
    fc = stage_in("s3://scenes/single.tif", tmp_path / "o", keystore=s3_keystore, key="s3", progress=False)
    assert fc.features[0]["properties"]["up42.data_path"] == "single.tif"
    assert hashlib.md5((tmp_path / "o/single.tif").read_bytes()).hexdigest() == hashlib.md5(s3_data["single.tif"]).hexdigest()


def test_s3_wrong_key_refused_and_missing(s3_keystore: Keystore, s3_data, tmp_path: Path, seaweed) -> None:
    with pytest.raises(AccessDenied, match="refused the credentials"):
        stage_in("s3://scenes/s2/", tmp_path / "w", keystore=s3_keystore, key="s3-bad", progress=False)
    with pytest.raises(SourceNotFound, match="no object"):
        stage_in("s3://scenes/none/", tmp_path / "n", keystore=s3_keystore, key="s3", progress=False)
    with pytest.raises(SourceNotFound):
        stage_in("s3://no-such-bucket/x", tmp_path / "nb", keystore=s3_keystore, key="s3", progress=False)


def test_s3_anonymous_public_bucket(s3_data, tmp_path: Path, seaweed) -> None:
    fc = stage_in(f"s3://{seaweed.public_bucket}/s2/scene1/", tmp_path / "p", endpoint=seaweed.endpoint, progress=False)
    assert sorted(f["properties"]["up42.data_path"] for f in fc.features) == ["B04.tif", "meta.json"]
    with pytest.raises(AccessDenied, match="access denied"):
        stage_in("s3://scenes/s2/", tmp_path / "priv", endpoint=seaweed.endpoint, progress=False)


def test_s3_keys_escaping_target_refused(s3_keystore: Keystore, seaweed, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.exceptions

    from blockkit.storage import _s3 as s3

    seaweed.make_bucket("evil")
    # SeaweedFS itself refuses such keys; other stores (AWS) accept them, so fake only the listing
    with pytest.raises(botocore.exceptions.ClientError):
        seaweed.client().put_object(Bucket="evil", Key="p/../../outside.txt", Body=b"x")
    monkeypatch.setattr(s3, "list_objects", lambda client, loc, policy=None: [s3.S3Object("p/../../outside.txt", 1, "")])
    with pytest.raises(UnsafePath, match="would write outside"):
        stage_in("s3://evil/p/", tmp_path / "deep/e", keystore=s3_keystore, key="s3", progress=False)
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "deep/outside.txt").exists()


def test_safe_join_unit(tmp_path: Path) -> None:
    from blockkit.storage._transfer import safe_join

    assert safe_join(tmp_path, "a/b.tif") == tmp_path / "a/b.tif"
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\\..\\x", "", ".", "./.", "a/.."):
        with pytest.raises(UnsafePath):
            safe_join(tmp_path, bad)


# --- WebDAV ----------------------------------------------------------------------------------------


def test_webdav_folder(dav_server, keystore: Keystore, tmp_path: Path) -> None:
    folder = dav_server.root / "project" / "scene x"
    write_geotiff(folder / "B02.tif")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "note.txt").write_text("n")
    keystore.add("dav", WebDavKeyConfig(dav_server.endpoint, dav_server.username, dav_server.password))
    uri = dav_server.endpoint.replace("http://", "webdav://") + "/project/scene%20x/"
    fc = stage_in(uri, tmp_path / "d", keystore=keystore, key="dav", progress=False)
    assert _files(tmp_path / "d") == {"data.json", "B02.tif", "sub/note.txt"}
    assert {f["properties"]["up42.data_path"] for f in fc.features} == {"B02.tif", "sub"}
    # a single file
    stage_in(uri + "B02.tif", tmp_path / "one", keystore=keystore, key="dav", progress=False)
    assert _files(tmp_path / "one") == {"data.json", "B02.tif"}


def test_webdav_wrong_password_and_type(dav_server, keystore: Keystore, tmp_path: Path, seaweed) -> None:
    keystore.add("dav-bad", WebDavKeyConfig(dav_server.endpoint, dav_server.username, "wrong"))
    uri = dav_server.endpoint.replace("http://", "webdav://") + "/"
    with pytest.raises(AccessDenied, match="HTTP 401"):
        stage_in(uri, tmp_path / "x", keystore=keystore, key="dav-bad", progress=False)
    keystore.add("s3k", S3KeyConfig("a", "b"))
    from blockkit.storage._errors import WrongKeyType

    with pytest.raises(WrongKeyType):
        stage_in(uri, tmp_path / "y", keystore=keystore, key="s3k", progress=False)


# --- secrets never logged -----------------------------------------------------------------------------


def test_no_secret_in_logs(caplog: pytest.LogCaptureFixture, s3_keystore: Keystore, s3_data, dav_server,
                           tmp_path: Path, seaweed) -> None:
    s3_keystore.add("dav", WebDavKeyConfig(dav_server.endpoint, dav_server.username, dav_server.password))
    write_geotiff(dav_server.root / "logs" / "a.tif")
    with caplog.at_level(logging.DEBUG):
        stage_in("s3://scenes/s2/", tmp_path / "a", keystore=s3_keystore, key="s3", progress=False)
        stage_in(dav_server.endpoint.replace("http://", "webdav://") + "/logs/", tmp_path / "b",
                 keystore=s3_keystore, key="dav", progress=False)
        with pytest.raises(Exception) as info:
            stage_in("s3://scenes/s2/", tmp_path / "c", keystore=s3_keystore, key="s3-bad", progress=False)
    text = caplog.text + str(info.value)
    assert caplog.records  # boto/urllib3 debug logs were captured
    for secret in (seaweed.secret_key, dav_server.password, *s3_keystore.get("dav").secrets()):
        assert secret not in text


@pytest.mark.parametrize("loop", ["sub/loop -> ..", "a/to-b -> ../b, b/to-a -> ../a"])
def test_local_source_with_a_symlink_loop_is_refused(tmp_path: Path, loop: str) -> None:
    import os

    src = tmp_path / "src"
    for link in loop.split(", "):
        name, _, points_to = link.partition(" -> ")
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).parent.joinpath("f.txt").write_text("f")
        os.symlink(points_to, src / name)
    with pytest.raises(UnsafePath) as err:
        stage_in(str(src), tmp_path / "in", progress=False)
    line = err.value.headline()
    assert "\n" not in line and line.startswith("[WRONG_INPUT_ERROR]") and "loop" in line and len(line) < 400
    assert not (tmp_path / "in").exists()


def test_local_source_links_that_loop_fan_out_or_dangle_are_one_line_errors(tmp_path: Path) -> None:
    import os
    import time

    def refused(src: Path, said: str) -> None:
        started = time.monotonic()
        with pytest.raises(UnsafePath) as err:
            stage_in(str(src), tmp_path / f"in-{src.name}", progress=False)
        line = err.value.headline()
        assert "\n" not in line and line.startswith("[WRONG_INPUT_ERROR]") and said in line, line
        assert time.monotonic() - started < 10 and not (tmp_path / f"in-{src.name}").exists()

    selfish = tmp_path / "selfish"
    selfish.mkdir()
    (selfish / "f.txt").write_text("f")
    os.symlink("x", selfish / "x")  # was: RuntimeError from Path.resolve, exit 1
    refused(selfish, "loops or leads nowhere")
    fan = tmp_path / "fan"  # each level links the next twice: 2^14 copies of the deepest folder
    for i in range(15):
        (fan / f"d{i}").mkdir(parents=True)
    for i in range(14):
        for name in ("x", "y"):
            os.symlink(f"../d{i + 1}", fan / f"d{i}" / name)
    (fan / "d14" / "f.txt").write_text("f")
    refused(fan, "more than 8 times through symlinks")
    latest = tmp_path / "latest"  # one extra way into a folder is still copied, as before
    (latest / "v2").mkdir(parents=True)
    (latest / "v2" / "f.txt").write_text("f")
    os.symlink("v2", latest / "current")
    stage_in(str(latest), tmp_path / "in-latest", progress=False)
    assert (tmp_path / "in-latest" / "current" / "f.txt").read_text() == "f"


def test_a_name_that_is_not_valid_unicode_is_refused_in_one_line() -> None:
    from blockkit.storage._transfer import check_component

    with pytest.raises(UnsafePath) as err:
        check_component("item\ud800.tif", "STAC item id")  # was: UnicodeEncodeError, exit 1
    assert "not valid Unicode text" in err.value.headline()
