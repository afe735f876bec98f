"""Hostile sources against stage-in and stage-out: one real loopback server misbehaving per defect.

Each test asserts the user-visible outcome: one clear line with the contract's exit code, the URL named,
no credentials where they do not belong, and the target left as it was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockkit.contract.errors import ExitCode
from blockkit.storage import _http as http, _s3 as s3, _stac as stac
from blockkit.storage._errors import InsecureCredentials, StorageError, TooLarge, TransferFailed, UnsafePath
from blockkit.storage._keystore import Keystore, WebDavKeyConfig
from blockkit.storage._stagein import stage_in
from blockkit.storage._transfer import RetryPolicy, TransferLimits
from tests.storage.hostile import (
    HostileServer,
    body,
    endless,
    endless_webdav,
    gzip_bomb,
    redirect,
    s3_endless_listing,
    s3_failing_get,
    s3_listing,
    slow_headers,
    slow_loris,
    stac_catalog_tree,
    status,
)

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
PASSWORD = "Sup3rWebdavPass"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()


def _item(item_id: str, assets: dict[str, str]) -> bytes:
    return json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "geometry": {"type": "Point", "coordinates": [13.4, 52.5]}, "bbox": [13.4, 52.5, 13.4, 52.5],
        "properties": {"datetime": "2024-06-01T10:00:00Z"}, "links": [],
        "assets": {k: {"href": v, "roles": ["data"]} for k, v in assets.items()},
    }).encode()


def _as_it_was(target: Path) -> bool:
    return not target.exists() or not any(target.iterdir())


def _one_line(err: pytest.ExceptionInfo, code: ExitCode, *needles: str) -> str:
    line = err.value.headline()
    assert "\n" not in line and line.startswith(f"[{code.name}]"), line
    assert err.value.exit_code == code
    for n in needles:
        assert n in line, line
    return line


# --- credentials go only to the key's origin -------------------------------------------------------


def test_webdav_credentials_only_to_the_keys_origin(hostile: HostileServer, tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "ks")
    ks.add("dav", WebDavKeyConfig(hostile.url(), "alice", PASSWORD))
    # the same server under two loopback names: 127.0.0.1 is the key's origin, localhost is "another host"
    hostile.routes.update({
        "/stac/item.json": body(_item("it", {
            "own": hostile.url("/own.bin"),
            "other": hostile.url("/other.bin", host="localhost"),
            "hop": hostile.url("/hop"),
        }), "application/geo+json"),
        "/own.bin": body(b"own"),
        "/other.bin": body(b"other"),
        "/hop": redirect(hostile.url("/hopped.bin", host="localhost")),
        "/hopped.bin": body(b"hopped"),
    })
    fc = stage_in(hostile.url("/stac/item.json"), tmp_path / "in", keystore=ks, key="dav", progress=False)
    assert len(fc) == 1
    by_path = {s.path: s for s in hostile.seen if s.method == "GET"}
    assert by_path["/stac/item.json"].auth and by_path["/own.bin"].auth  # the key's origin: credentials
    assert by_path["/other.bin"].host.startswith("localhost") and by_path["/other.bin"].auth is None
    assert by_path["/hopped.bin"].auth is None  # a redirect off the origin drops them too
    assert (tmp_path / "in/it/other.bin").read_bytes() == b"other"


def test_key_for_another_origin_is_named_when_access_is_refused(hostile: HostileServer, tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "ks")
    ks.add("dav", WebDavKeyConfig(hostile.url(), "alice", PASSWORD))
    hostile.routes["/private.bin"] = status(401)
    with pytest.raises(StorageError) as err:
        stage_in(hostile.url("/private.bin", host="localhost"), tmp_path / "in", keystore=ks, key="dav", progress=False)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "HTTP 401", "key 'dav' is for http://127.0.0.1", "not sent to localhost")
    assert all(s.auth is None for s in hostile.seen)


def test_credentials_never_over_plain_http_to_other_hosts(tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "ks")
    ks.add("dav", WebDavKeyConfig("http://dav.example.org/remote", "alice", PASSWORD))
    with pytest.raises(InsecureCredentials) as err:
        stage_in("webdav://dav.example.org/remote/x/", tmp_path / "in", keystore=ks, key="dav", progress=False)
    line = _one_line(err, ExitCode.WRONG_INPUT_ERROR, "plain http", "https", "loopback")
    assert PASSWORD not in line and not (tmp_path / "in").exists()
    from blockkit.contract._datajson import write_data_json
    from blockkit.storage._stageout import stage_out

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r.txt").write_text("r")
    write_data_json(tmp_path / "out", {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "r", "geometry": None, "properties": {"up42.data_path": "r.txt"}}]})
    with pytest.raises(InsecureCredentials):
        stage_out(tmp_path / "out", "webdav://dav.example.org/remote/res/", keystore=ks, key="dav", progress=False)
    assert http.ScopedBasicAuth("a", "b", "https://dav.example.org").origin == ("https", "dav.example.org", 443)
    assert http.ScopedBasicAuth("a", "b", "webdav://[::1]:8080/x").origin == ("http", "::1", 8080)


# --- bounded transfers -----------------------------------------------------------------------------


def test_gzip_body_is_refused_not_inflated(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/bomb.bin"] = gzip_bomb(50 * 1024 * 1024)
    with pytest.raises(TooLarge) as err:
        stage_in(hostile.url("/bomb.bin"), tmp_path / "in", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "Content-Encoding: gzip", "/bomb.bin")
    assert not (tmp_path / "in").exists()
    assert len(hostile.gets("/bomb.bin")) == 1  # refused, not retried


def test_gzip_stac_document_is_refused(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/item.json"] = gzip_bomb(1024)
    with pytest.raises(TooLarge):
        stage_in("stac+" + hostile.url("/item.json"), tmp_path / "in", progress=False, retry=FAST)


def test_endless_body_stops_at_the_file_limit(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/endless.bin"] = endless()
    start = time.monotonic()
    with pytest.raises(TooLarge) as err:
        stage_in(hostile.url("/endless.bin"), tmp_path / "in", progress=False, retry=FAST,
                 limits=TransferLimits(max_file_bytes=2 * 1024 * 1024))
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "/endless.bin", "max_file_bytes")
    assert time.monotonic() - start < 10 and not (tmp_path / "in").exists()


def test_declared_size_over_the_limit_is_refused_before_reading(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/big.bin"] = body(b"y" * 300_000)
    with pytest.raises(TooLarge, match="max_file_bytes"):
        stage_in(hostile.url("/big.bin"), tmp_path / "in", progress=False, limits=TransferLimits(max_file_bytes=1000))


def test_stage_in_total_limit(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/item.json"] = body(_item("it", {f"a{i}": hostile.url(f"/f{i}.bin") for i in range(4)}))
    for i in range(4):
        hostile.routes[f"/f{i}.bin"] = body(bytes([i]) * 100_000)
    with pytest.raises(TooLarge) as err:
        stage_in(hostile.url("/item.json"), tmp_path / "in", progress=False, workers=1,
                 limits=TransferLimits(max_total_bytes=250_000))
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "max_total_bytes")
    assert not (tmp_path / "in").exists()
    fc = stage_in(hostile.url("/item.json"), tmp_path / "ok", progress=False,
                  limits=TransferLimits(max_total_bytes=400_000))
    assert len(fc) == 1


def test_slow_loris_hits_the_file_deadline(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/slow.bin"] = slow_loris(length=1000, every=0.1)
    start = time.monotonic()
    with pytest.raises(TransferFailed) as err:
        stage_in(hostile.url("/slow.bin"), tmp_path / "in", progress=False, retry=FAST,
                 limits=TransferLimits(file_deadline=1.5))
    _one_line(err, ExitCode.API_CONNECTION_ERROR, "/slow.bin", "file_deadline")
    assert time.monotonic() - start < 6
    assert not (tmp_path / "in").exists()


def test_slow_headers_hit_the_file_deadline(hostile: HostileServer, tmp_path: Path) -> None:
    # the status line and headers trickle in: the 60 s per-read timeout never triggers, the deadline does
    hostile.routes["/trickle.bin"] = slow_headers(every=0.1)
    start = time.monotonic()
    with pytest.raises(TransferFailed) as err:
        stage_in(hostile.url("/trickle.bin"), tmp_path / "in", progress=False, retry=FAST,
                 limits=TransferLimits(file_deadline=1.5))
    _one_line(err, ExitCode.API_CONNECTION_ERROR, "/trickle.bin", "file_deadline")
    assert time.monotonic() - start < 6 and not (tmp_path / "in").exists()


def test_webdav_walk_depth_is_bounded(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/deep*"] = endless_webdav()
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        stage_in(f"webdav://127.0.0.1:{hostile.port}/deep/", tmp_path / "in", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "deeper than 10")
    assert time.monotonic() - start < 10
    assert len([s for s in hostile.seen if s.method == "PROPFIND"]) <= 12


def test_s3_get_retried_in_one_place(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/bkt/obj.bin"] = s3_failing_get("bkt", "obj.bin")
    with pytest.raises(TransferFailed) as err:
        stage_in("s3://bkt/obj.bin", tmp_path / "in", progress=False, retry=FAST, endpoint=hostile.url())
    _one_line(err, ExitCode.API_CONNECTION_ERROR, "s3://bkt/obj.bin", "3 attempts")
    # blockkit's 3 attempts, not 3 x botocore's 4
    assert len(hostile.gets("/bkt/obj.bin")) == 3


# --- every error a contract code, the target as it was ----------------------------------------------


def test_redirect_loop_and_redirect_to_file(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/loop"] = redirect("/loop")
    hostile.routes["/to-file"] = redirect("file:///etc/passwd")
    with pytest.raises(StorageError) as err:
        stage_in(hostile.url("/loop"), tmp_path / "a", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "/loop", "redirect")
    with pytest.raises(UnsafePath) as err:
        stage_in(hostile.url("/to-file"), tmp_path / "b", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "/to-file", "not http(s)")
    assert _as_it_was(tmp_path / "a") and _as_it_was(tmp_path / "b")


def test_stac_child_link_to_a_local_file(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/catalog.json"] = body(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "c", "description": "d",
        "links": [{"rel": "child", "href": "file:///etc/passwd"}],
    }).encode())
    with pytest.raises(UnsafePath) as err:
        stage_in(hostile.url("/catalog.json"), tmp_path / "in", progress=False)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "/catalog.json", "not http(s) or s3")


def test_item_collection_with_duplicate_ids_downloads_nothing(hostile: HostileServer, tmp_path: Path) -> None:
    features = [json.loads(_item("m0", {"a": hostile.url("/a.bin")})), json.loads(_item("m0", {"b": hostile.url("/b.bin")}))]
    hostile.routes["/items.json"] = body(json.dumps({"type": "FeatureCollection", "features": features}).encode())
    hostile.routes["/a.bin"] = body(b"a")
    hostile.routes["/b.bin"] = body(b"b")
    target = tmp_path / "in"
    target.mkdir()
    with pytest.raises(StorageError) as err:
        stage_in(hostile.url("/items.json"), target, progress=False)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "'m0'", "unique")
    assert target.is_dir() and not any(target.iterdir())  # an empty folder given stays, empty
    assert not hostile.gets("/a.bin") and not hostile.gets("/b.bin")


def test_s3_keys_a_and_a_slash_b(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/bkt*"] = s3_listing({"p/a": b"file", "p/a/b": b"inside"}, "bkt")
    with pytest.raises(UnsafePath) as err:
        stage_in("s3://bkt/p/", tmp_path / "in", progress=False, retry=FAST, endpoint=hostile.url())
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "s3://bkt/p/a", "folder")
    assert not (tmp_path / "in").exists()


def test_http_404_asset_leaves_nothing(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/item.json"] = body(_item("it", {"ok": hostile.url("/ok.bin"), "gone": hostile.url("/gone.bin")}))
    hostile.routes["/ok.bin"] = body(b"ok" * 1000)
    hostile.routes["/gone.bin"] = status(404)
    with pytest.raises(StorageError, match="gone.bin"):
        stage_in(hostile.url("/item.json"), tmp_path / "in", progress=False, retry=FAST, workers=1)
    assert not (tmp_path / "in").exists()


# --- S3: bounded listings, deadlines that hold -------------------------------------------------------


def test_s3_endless_listing_is_refused(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/bkt*"] = s3_endless_listing("bkt")
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        stage_in("s3://bkt/p/", tmp_path / "in", progress=False, retry=FAST, endpoint=hostile.url())
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "s3://bkt/p/", f"more than {s3.MAX_OBJECTS} objects")
    assert time.monotonic() - start < 30 and not (tmp_path / "in").exists()
    assert len([s for s in hostile.seen if "list-type" in s.path]) <= s3.MAX_OBJECTS // 1000 + 1
    assert not [s for s in hostile.seen if s.method == "GET" and "list-type" not in s.path]


def test_s3_endless_empty_pages_are_refused(hostile: HostileServer) -> None:
    # stage-in's listing allows MAX_OBJECTS / 100 = 1000 pages (45 s on loopback): the same code, a smaller cap
    hostile.routes["/bkt*"] = s3_endless_listing("bkt", per_page=0)
    client = s3.s3_client(None, endpoint=hostile.url(), retries=False, watched=True)
    with pytest.raises(StorageError) as err:
        s3.list_objects(client, s3.S3Location("bkt", "p/"), FAST, max_objects=2000)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "more than 2000 objects (or 20 listing pages)")
    assert len([s for s in hostile.seen if "list-type" in s.path]) == 21


def test_s3_listed_sizes_over_the_total_limit_download_nothing(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/bkt*"] = s3_listing({f"p/f{i}": bytes([i]) * 600 for i in range(3)}, "bkt")
    with pytest.raises(TooLarge) as err:
        stage_in("s3://bkt/p/", tmp_path / "in", progress=False, retry=FAST, endpoint=hostile.url(),
                 limits=TransferLimits(max_total_bytes=1000))
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "1800 bytes", "max_total_bytes")
    assert not hostile.gets("/bkt/p/f0") and not (tmp_path / "in").exists()


@pytest.mark.parametrize("name, route", [
    # one GET reads up to 1 MiB: without a watchdog it waits for all 60 bytes (12 s), per attempt
    ("slow.bin", lambda: slow_loris(length=60, every=0.2)),
    ("trickle.bin", lambda: slow_headers(every=0.1)),
], ids=["slow-body", "slow-headers"])
def test_s3_slow_senders_hit_the_file_deadline(hostile: HostileServer, tmp_path: Path, name: str, route) -> None:
    hostile.routes[f"/bkt/{name}"] = route()
    start = time.monotonic()
    with pytest.raises(TransferFailed) as err:
        stage_in(f"s3://bkt/{name}", tmp_path / "in", progress=False, retry=FAST, endpoint=hostile.url(),
                 limits=TransferLimits(file_deadline=1.5))
    _one_line(err, ExitCode.API_CONNECTION_ERROR, f"s3://bkt/{name}", "file_deadline")
    assert time.monotonic() - start < 6 and not (tmp_path / "in").exists()


def test_s3_slow_listing_and_document_hit_their_deadline(hostile: HostileServer) -> None:
    hostile.routes["/bkt"] = slow_headers(every=0.1)
    hostile.routes["/bkt/doc.json"] = slow_loris(length=60, every=0.2)
    client = s3.s3_client(None, endpoint=hostile.url(), retries=False, watched=True)
    start = time.monotonic()
    with pytest.raises(TransferFailed) as err:
        s3.list_objects(client, s3.S3Location("bkt", "p/"), FAST, deadline=1.5)
    _one_line(err, ExitCode.API_CONNECTION_ERROR, "s3://bkt/p/", "listing not finished within 1.5 s")
    assert time.monotonic() - start < 6
    start = time.monotonic()
    with pytest.raises(TransferFailed) as err:
        s3.get_small(client, s3.S3Location("bkt", "doc.json"), 1000, FAST, deadline=1.5)
    _one_line(err, ExitCode.API_CONNECTION_ERROR, "s3://bkt/doc.json", "not received within 1.5 s")
    assert time.monotonic() - start < 6


@pytest.mark.parametrize("key", ["p/.", "p/./."])
def test_s3_key_naming_the_target_itself_touches_nothing_beside_it(hostile: HostileServer, tmp_path: Path,
                                                                  key: str) -> None:
    hostile.routes["/bkt*"] = s3_listing({key: b"server bytes"}, "bkt")
    mine = tmp_path / "in.part"  # a file of the user's own, where `<target>.part` would be written
    mine.write_text("mine")
    with pytest.raises(UnsafePath) as err:
        stage_in("s3://bkt/p/", tmp_path / "in", progress=False, retry=FAST, endpoint=hostile.url())
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, repr(key), "target folder itself")
    assert mine.read_text() == "mine" and not (tmp_path / "in").exists()
    assert not [s for s in hostile.seen if s.method == "GET" and "list-type" not in s.path]


def test_remote_item_under_a_local_catalog_may_not_read_local_files(hostile: HostileServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "private-notes.txt").write_text("PRIVATE")
    (home / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "mine", "description": "d",
        "links": [{"rel": "child", "href": hostile.url("/remote-catalog.json")}]}))
    hostile.routes["/remote-catalog.json"] = body(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "r", "description": "d",
        "links": [{"rel": "item", "href": hostile.url("/item.json")}]}).encode())
    hostile.routes["/item.json"] = body(_item("grab", {"data": (home / "private-notes.txt").as_uri()}))
    with pytest.raises(UnsafePath) as err:
        stage_in(str(home / "catalog.json"), tmp_path / "in", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "'grab'", "local href", "remote catalog")
    assert not (tmp_path / "in").exists()


# --- STAC: a walk of catalogs is bounded ------------------------------------------------------------


def test_stac_tree_of_catalogs_without_items_is_bounded(hostile: HostileServer) -> None:
    # 50 ** 5 catalogs and no item; stage-in allows MAX_DOCUMENTS (20000): the same walk, a smaller cap
    hostile.routes["/c*"] = stac_catalog_tree(children=50, levels=5)
    url, sess = hostile.url("/c.json"), http.session()
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        stac.collect_items(http.get_json(sess, url, FAST), url, lambda u: http.get_json(sess, u, FAST),
                           max_documents=60)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "/c.json", "more than 60 STAC documents")
    assert len(hostile.gets("/c.json")) == 1 and len(hostile.seen) == 61
    assert time.monotonic() - start < 20


def test_stac_walk_has_a_deadline(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.routes["/c*"] = stac_catalog_tree(children=50, levels=5, delay=0.1)
    url, sess = hostile.url("/c.json"), http.session()
    with pytest.raises(TransferFailed) as err:
        stac.collect_items(http.get_json(sess, url, FAST), url, lambda u: http.get_json(sess, u, FAST), deadline=1)
    _one_line(err, ExitCode.API_CONNECTION_ERROR, "/c.json", "more than 1 s")
    assert len(hostile.seen) < 20


# --- names the layout or the filesystem cannot take ----------------------------------------------------


@pytest.mark.parametrize("item_id", ["catalog.json", "data.json"])
def test_stac_item_id_naming_a_layout_file_is_refused(hostile: HostileServer, tmp_path: Path, item_id: str) -> None:
    hostile.routes["/item.json"] = body(_item(item_id, {"data": hostile.url("/a.bin")}))
    hostile.routes["/a.bin"] = body(b"a")
    with pytest.raises(UnsafePath) as err:
        stage_in(hostile.url("/item.json"), tmp_path / "in", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, repr(item_id), "layout")
    assert not (tmp_path / "in").exists() and not hostile.gets("/a.bin")


def test_asset_renamed_onto_the_item_document_is_refused(hostile: HostileServer, tmp_path: Path) -> None:
    # `a` -> other/b.json clashes with `k`'s b.json; prefixed with its key it would be a-b.json, the item itself
    hostile.routes["/item.json"] = body(_item("a-b", {"k": hostile.url("/b.json"), "a": hostile.url("/other/b.json")}))
    hostile.routes["/b.json"] = body(b"{}")
    hostile.routes["/other/b.json"] = body(b"{}")
    with pytest.raises(UnsafePath) as err:
        stage_in(hostile.url("/item.json"), tmp_path / "in", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "'a-b.json'", "item's own document")
    assert not (tmp_path / "in").exists() and not hostile.gets("/b.json")


def test_file_names_too_long_for_the_filesystem_are_refused(hostile: HostileServer, tmp_path: Path) -> None:
    long = "n" * 300
    hostile.routes[f"/{long}"] = body(b"x")
    with pytest.raises(UnsafePath) as err:
        stage_in(hostile.url(f"/{long}"), tmp_path / "a", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "longer than 250 bytes")
    hostile.routes["/bkt*"] = s3_listing({f"p/{'m' * 248}": b"x"}, "bkt")  # 248 + ".part" = 253: fits
    stage_in("s3://bkt/p/", tmp_path / "b", progress=False, retry=FAST, endpoint=hostile.url())
    hostile.routes["/bkt*"] = s3_listing({f"p/sub/{'m' * 251}": b"x"}, "bkt")
    with pytest.raises(UnsafePath) as err:
        stage_in("s3://bkt/p/", tmp_path / "c", progress=False, retry=FAST, endpoint=hostile.url())
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "s3 key", "longer than 250 bytes")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    assert not hostile.gets(f"/{long}") and not hostile.gets(f"/bkt/p/sub/{'m' * 251}")


def test_s3_one_huge_listing_page_is_refused_before_it_is_parsed(hostile: HostileServer, monkeypatch) -> None:
    """A page has no size of its own: 20,000 keys in one page (the cap lowered to 1 MiB to keep it small)."""
    monkeypatch.setattr(s3, "MAX_PAGE_BYTES", 1 << 20)
    hostile.routes["/bkt*"] = s3_endless_listing("bkt", per_page=20_000)
    client = s3.s3_client(None, endpoint=hostile.url(), retries=False, watched=True)
    with pytest.raises(StorageError) as err:
        s3.list_objects(client, s3.S3Location("bkt", "p/"), FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "a listing page of", "stage in a smaller prefix")
    assert len([s for s in hostile.seen if "list-type" in s.path]) == 1


def test_stac_documents_that_add_up_to_too_many_bytes_are_refused(hostile: HostileServer, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Each item document is under its own cap, but they stay parsed until the walk ends (cap lowered to 1 MiB)."""
    from blockkit.storage import _stagein

    monkeypatch.setattr(_stagein, "MAX_DOCUMENT_BYTES", 1 << 20)
    padding = "x" * 300_000

    def route(h) -> None:
        name = h.path.split("?")[0].rsplit("/", 1)[-1]
        if name == "cat.json":
            doc = {"type": "Catalog", "stac_version": "1.0.0", "id": "c", "description": "d",
                   "links": [{"rel": "item", "href": f"item{i}.json"} for i in range(20)]}
        else:
            doc = {"type": "Feature", "stac_version": "1.0.0", "id": name.removesuffix(".json"), "geometry": None,
                   "properties": {"datetime": "2026-01-01T00:00:00Z", "padding": padding},
                   "assets": {"data": {"href": "data.tif"}}, "links": []}
        h.send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    hostile.routes["/stac/*"] = route
    with pytest.raises(TooLarge) as err:
        stage_in(hostile.url("/stac/cat.json"), tmp_path / "in", progress=False, retry=FAST)
    _one_line(err, ExitCode.WRONG_INPUT_ERROR, "add up to more than 1 MiB")
    assert len([s for s in hostile.seen if "item" in s.path]) <= 4 and not (tmp_path / "in").exists()
