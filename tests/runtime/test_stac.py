"""STAC folders: an App Package stage-in catalog read as features; a catalog of the outputs written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from blockkit.contract._datajson import DATA_PATH, FeatureCollection
from blockkit.contract.errors import WrongInputError
from blockkit.runtime._stac import features_from_catalog, write_catalog

POINT = {"type": "Point", "coordinates": [13.4, 52.5]}


def item(item_id: str, assets: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": POINT,
            "properties": {"datetime": "2024-01-01T00:00:00Z"}, "links": [], "assets": assets}


def catalog(folder: Path, links: list[str], name: str = "catalog.json") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"type": "Catalog", "id": "c", "stac_version": "1.0.0", "description": "d",
           "links": [{"rel": "item" if h.endswith(".json") and "catalog" not in h else "child", "href": h} for h in links]}
    (folder / name).write_text(json.dumps(doc))


def write_item(folder: Path, item_id: str, files: dict[str, str], assets: dict[str, Any]) -> None:
    (folder / item_id).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / item_id / name).write_text(content)
    (folder / item_id / f"{item_id}.json").write_text(json.dumps(item(item_id, assets)))


def test_nested_catalog_items_become_features(tmp_path: Path) -> None:
    root = tmp_path / "in"
    catalog(root, ["./a/a.json", "./sub/catalog.json"])
    write_item(root, "a", {"a.tif": "A", "a.png": "q"}, {
        "thumbnail": {"href": "./a.png", "roles": ["thumbnail"]},
        "visual": {"href": "./a.tif", "roles": ["data"], "type": "image/tiff"},
    })
    catalog(root / "sub", ["./b/b.json"])
    write_item(root / "sub", "b", {"b.tif": "B"}, {"anything": {"href": "./b.tif", "type": "image/tiff"}})
    fc = features_from_catalog(root)
    by_id = {f["id"]: f for f in fc}
    assert by_id["a"]["properties"][DATA_PATH] == "a/a.tif"
    assert by_id["b"]["properties"][DATA_PATH] == "sub/b/b.tif"
    assert by_id["b"]["properties"]["up42.stac_item"] == "sub/b/b.json"
    assert by_id["a"]["geometry"] == POINT


def test_item_without_assets_links_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "in"
    catalog(root, ["./a/a.json"])
    write_item(root, "a", {"x.bin": "x"}, {})
    assert features_from_catalog(root)[0]["properties"][DATA_PATH] == "a"


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("../outside/x.json", "leaves the input directory"),
        ("/etc/passwd", "is not relative"),
        ("https://example.org/item.json", "is not relative"),
        ("./missing/missing.json", "does not exist"),
    ],
)
def test_catalog_links_that_leave_or_dangle(tmp_path: Path, href: str, expected: str) -> None:
    root = tmp_path / "in"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.json").write_text(json.dumps(item("x", {})))
    catalog(root, [href])
    with pytest.raises(WrongInputError) as info:
        features_from_catalog(root)
    assert expected in info.value.headline() and "\n" not in info.value.headline()


def test_asset_href_that_leaves_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "in"
    catalog(root, ["./a/a.json"])
    write_item(root, "a", {}, {"data": {"href": "../../secret.tif", "roles": ["data"]}})
    with pytest.raises(WrongInputError) as info:
        features_from_catalog(root)
    assert "STAC item 'a'" in info.value.headline() and "leaves its folder" in info.value.headline()


def test_asset_symlink_that_leaves_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (tmp_path / "secret.tif").write_text("s")
    catalog(root, ["./a/a.json"])
    write_item(root, "a", {}, {"data": {"href": "./a.tif", "roles": ["data"]}})
    (root / "a" / "a.tif").symlink_to(tmp_path / "secret.tif")
    with pytest.raises(WrongInputError) as info:
        features_from_catalog(root)
    assert "symlink that leaves" in info.value.headline()


def test_catalog_link_symlink_that_leaves(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.json").write_text(json.dumps(item("x", {})))
    (root).mkdir()
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    catalog(root, ["./link/x.json"])
    with pytest.raises(WrongInputError) as info:
        features_from_catalog(root)
    assert "leaves the input directory" in info.value.headline()


def test_catalog_cycles_are_followed_once(tmp_path: Path) -> None:
    root = tmp_path / "in"
    catalog(root, ["./a/a.json", "./catalog.json", "./sub/catalog.json"])
    catalog(root / "sub", ["../catalog.json"])
    write_item(root, "a", {"a.tif": "A"}, {"data": {"href": "./a.tif"}})
    assert [f["id"] for f in features_from_catalog(root)] == ["a"]


def test_catalog_not_json(tmp_path: Path) -> None:
    (tmp_path / "catalog.json").write_bytes(b"\xff not json")
    with pytest.raises(WrongInputError) as info:
        features_from_catalog(tmp_path)
    assert "catalog.json is not UTF-8" in info.value.headline()


def test_write_catalog_opens_in_pystac_and_hrefs_resolve(tmp_path: Path) -> None:
    pystac = pytest.importorskip("pystac")
    out = tmp_path / "out"
    (out / "res").mkdir(parents=True)
    (out / "res" / "x.tif").write_text("X")
    fc = FeatureCollection([
        {"type": "Feature", "id": "x", "geometry": POINT, "properties": {DATA_PATH: "res/x.tif", "k": 1}},
        {"type": "Feature", "id": "a/b", "geometry": None, "properties": {}},
    ])
    path = write_catalog(out, fc)
    cat = pystac.Catalog.from_file(str(path))
    items = {i.id: i for i in cat.get_items(recursive=True)}
    assert set(items) == {"x", "a/b"}
    href = Path(items["x"].assets["data"].get_absolute_href())
    assert href.resolve() == (out / "res" / "x.tif").resolve() and href.read_text() == "X"
    assert items["x"].bbox == [13.4, 52.5, 13.4, 52.5] and items["x"].properties["k"] == 1
    # written items read back as features through the same reader
    back = features_from_catalog(out)
    assert {f["id"] for f in back} == {"x", "a/b"}


@pytest.mark.parametrize("bad_id", ["..", ".", "", "../../escape"])
def test_write_catalog_never_writes_outside_the_folder(tmp_path: Path, bad_id: str) -> None:
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    fc = FeatureCollection([{"type": "Feature", "id": bad_id, "geometry": None, "properties": {}}])
    write_catalog(out, fc)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert outside == []
    assert len(features_from_catalog(out)) == 1


def test_write_catalog_folder_names_are_portable_and_unique(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ids = ["a:scene", "a_scene", "b:scene #1", "ünïcode", "x", "x-6", "x:"]
    fc = FeatureCollection([{"type": "Feature", "id": i, "geometry": None, "properties": {}} for i in ids])
    write_catalog(out, fc)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    # one id->folder rule for output catalogs and stage-out (blockkit.stac.folder_name): -2, -3, ... on clashes
    assert folders == ["a_scene", "a_scene-2", "b_scene_1", "n_code", "x", "x-2", "x-6"]
    assert {f["id"] for f in features_from_catalog(out)} == set(ids)  # ids themselves are kept


@pytest.mark.parametrize(
    ("geometry", "expected"),
    [
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0.5]]]}, "geometry"),
        ({"type": "Point", "coordinates": "here"}, "geometry"),
        ({"type": "Blob", "coordinates": [0, 0]}, "geometry"),
    ],
    ids=["open-ring", "not-coordinates", "unknown-type"],
)
def test_catalog_item_with_a_bad_geometry_is_refused(tmp_path: Path, geometry: dict, expected: str) -> None:
    root = tmp_path / "in"
    write_item(root, "a", {"a.tif": "A"}, {"data": {"href": "./a.tif", "roles": ["data"]}})
    doc = json.loads((root / "a" / "a.json").read_text())
    doc["geometry"] = geometry
    (root / "a" / "a.json").write_text(json.dumps(doc))
    catalog(root, ["./a/a.json"])
    with pytest.raises(WrongInputError) as info:
        features_from_catalog(root)
    assert "invalid STAC catalog" in info.value.headline() and expected in info.value.headline()


def test_catalog_items_with_the_same_id_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_item(root, "a", {"a.tif": "A"}, {"data": {"href": "./a.tif", "roles": ["data"]}})
    (root / "b").mkdir()
    (root / "b" / "b.json").write_text((root / "a" / "a.json").read_text().replace("./a.tif", "../a/a.tif"))
    catalog(root, ["./a/a.json", "./b/b.json"])
    with pytest.raises(WrongInputError, match="duplicate id"):
        features_from_catalog(root)
