"""Propagation: metadata inheritance and data forwarding by hard link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blockkit.contract.errors import WrongInputError
from blockkit.runtime._propagation import derive_feature, forward_feature, inheritable, link_tree

POINT = {"type": "Point", "coordinates": [1.0, 2.0]}
FEATURE = {
    "type": "Feature", "id": 7, "geometry": POINT,
    "properties": {"up42.data_path": "a.tif", "up42.usage": 1, "custom.x": 2, "sensor": "s2", "up42": "kept", "customer": "c"},
}


def test_inheritable_drops_only_reserved_prefixes() -> None:
    assert inheritable(FEATURE["properties"]) == {"sensor": "s2", "up42": "kept", "customer": "c"}
    assert inheritable(None) == {}


def test_derive_feature_keeps_geometry_and_id_and_copies_deeply() -> None:
    out = derive_feature(FEATURE, data_path="b.tif", properties={"ndvi": True, "sensor": "override"})
    assert out["id"] == "7" and out["geometry"] == POINT and out["geometry"] is not POINT
    assert out["properties"] == {"sensor": "override", "up42": "kept", "customer": "c", "ndvi": True, "up42.data_path": "b.tif"}
    out["geometry"]["coordinates"][0] = 99
    assert POINT["coordinates"][0] == 1.0
    assert FEATURE["properties"]["up42.data_path"] == "a.tif"


def test_derive_feature_new_geometry_and_id() -> None:
    out = derive_feature(FEATURE, geometry=None, id="new")
    assert out["geometry"] is None and out["id"] == "new" and "up42.data_path" not in out["properties"]
    assert derive_feature({"type": "Feature", "geometry": None, "properties": None})["id"]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "a.tif").write_text("a")
    (src / "dir" / "sub" / "b.tif").write_text("b")
    dst.mkdir()
    return src, dst


def test_forward_file_and_folder_by_hard_link(folders: tuple[Path, Path]) -> None:
    src, dst = folders
    out = forward_feature(FEATURE, src, dst)
    assert out["properties"] == FEATURE["properties"]  # forwarded as is
    assert os.stat(dst / "a.tif").st_ino == os.stat(src / "a.tif").st_ino
    out = forward_feature({"id": "d", "properties": {"up42.data_path": "dir"}}, src, dst, prefix="up/")
    assert out["properties"]["up42.data_path"] == "up/dir"
    assert os.stat(dst / "up" / "dir" / "sub" / "b.tif").st_ino == os.stat(src / "dir" / "sub" / "b.tif").st_ino


def test_forward_refuses_unsafe_paths_symlinks_and_collisions(folders: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = folders
    for value in ("../x", "/etc/passwd", "missing.tif"):
        with pytest.raises(WrongInputError):
            forward_feature({"id": "x", "properties": {"up42.data_path": value}}, src, dst)
    (tmp_path / "secret").write_text("s")
    (src / "dir" / "evil").symlink_to(tmp_path / "secret")
    with pytest.raises(WrongInputError, match="symlink"):
        forward_feature({"id": "x", "properties": {"up42.data_path": "dir"}}, src, dst)
    assert not (dst / "dir" / "evil").exists()


def test_a_file_name_the_output_already_has_is_forwarded_under_input(folders: tuple[Path, Path]) -> None:
    """UP42 blocks (sharpening) write their result under the input's name: forwarding must not fail on it."""
    src, dst = folders
    (dst / "a.tif").write_text("mine")
    out = forward_feature(FEATURE, src, dst)
    assert out["properties"]["up42.data_path"] == "input/a.tif"
    assert (dst / "a.tif").read_text() == "mine" and (dst / "input/a.tif").stat().st_ino == (src / "a.tif").stat().st_ino
    assert forward_feature(FEATURE, src, dst)["properties"]["up42.data_path"] == "input/a.tif"  # that file already
    (dst / "input" / "c.tif").write_text("mine too")
    (dst / "c.tif").write_text("mine")
    (src / "c.tif").write_text("c")
    assert forward_feature({"id": "c", "properties": {"up42.data_path": "c.tif"}}, src, dst)["properties"][
        "up42.data_path"] == "input-2/c.tif"
    feature = {"id": "f", "properties": {"up42.data_path": "dir"}, "assets": {"b": {"href": "dir/sub/b.tif"}}}
    (dst / "dir").mkdir()
    (dst / "dir" / "own.txt").write_text("the block's folder of that name")
    moved = forward_feature(feature, src, dst)  # a folder, and an asset inside it: moved together
    assert moved["properties"]["up42.data_path"] == "input/dir" and moved["assets"]["b"]["href"] == "input/dir/sub/b.tif"
    assert (dst / "input/dir/sub/b.tif").read_text() == "b" and sorted(p.name for p in (dst / "dir").iterdir()) == ["own.txt"]


def test_two_features_of_one_file_forward_it_once(folders: tuple[Path, Path]) -> None:
    src, dst = folders
    first = forward_feature(FEATURE, src, dst)
    second = forward_feature({**FEATURE, "id": 8}, src, dst)  # was: 'a.tif' already exists in the output
    assert first["properties"]["up42.data_path"] == second["properties"]["up42.data_path"] == "a.tif"


def test_forward_without_data_path_is_a_copy_of_the_feature(folders: tuple[Path, Path]) -> None:
    src, dst = folders
    feature = {"type": "Feature", "geometry": None, "properties": {"k": [1]}}
    out = forward_feature(feature, src, dst)
    assert out == feature and out["properties"] is not feature["properties"]


def test_link_tree_refuses_a_symlink(folders: tuple[Path, Path]) -> None:
    src, dst = folders
    (src / "link").symlink_to(src / "a.tif")
    with pytest.raises(WrongInputError):
        link_tree(src / "link", dst / "link")


def _upstream(folder: Path, ids: list[str]) -> Path:
    from blockkit.contract._datajson import FeatureCollection, write_data_json

    folder.mkdir(parents=True)
    features = []
    for fid in ids:
        (folder / f"{fid}.txt").write_text(fid)
        features.append({"type": "Feature", "id": fid, "geometry": None, "properties": {"up42.data_path": f"{fid}.txt"}})
    write_data_json(folder, FeatureCollection(features))
    return folder


@pytest.mark.parametrize("clash", [False, True], ids=["plain", "block-wrote-b/x.txt"])
def test_forward_fan_in_from_upstream_folders_equals_forwarding_the_merged_input(tmp_path: Path, clash: bool) -> None:
    from blockkit.contract._datajson import FeatureCollection, load_data_json, write_data_json
    from blockkit.runtime._propagation import fan_in_feature, forward_all, forward_fan_in

    ups = {"a": _upstream(tmp_path / "a", ["x", "y"]), "b": _upstream(tmp_path / "b", ["x"])}
    existing = [{"type": "Feature", "id": "b:x", "geometry": None, "properties": {}}]
    if clash:  # the block's own result has the name an upstream file is forwarded under
        for out in ("out1", "out2"):
            (tmp_path / out / "b").mkdir(parents=True)
            (tmp_path / out / "b" / "x.txt").write_text("mine")

    # The merged input as a linked folder (what the process engine gets).
    merged = tmp_path / "merged"
    merged.mkdir()
    features = []
    for name, folder in ups.items():
        link_tree(folder, merged / name)
        features += [fan_in_feature(name, f) for f in load_data_json(folder)]
    write_data_json(merged, FeatureCollection(features))
    via_merged = forward_all(load_data_json(merged).features, existing, merged, tmp_path / "out1")

    via_mounts = forward_fan_in(ups, existing, tmp_path / "out2")

    assert via_mounts == via_merged
    assert [f["id"] for f in via_mounts] == ["a:x", "a:y", "b:x-input"]
    rel = "input/b/x.txt" if clash else "b/x.txt"
    assert via_mounts[2]["properties"]["up42.data_path"] == rel and via_mounts[0]["properties"]["up42.data_path"] == "a/x.txt"
    for out in ("out1", "out2"):
        assert os.stat(tmp_path / out / rel).st_ino == os.stat(ups["b"] / "x.txt").st_ino
        assert not clash or (tmp_path / out / "b" / "x.txt").read_text() == "mine"


def test_forward_fan_in_refuses_an_unsafe_upstream_path(tmp_path: Path) -> None:
    import json

    from blockkit.contract.errors import BlockkitError
    from blockkit.runtime._propagation import forward_fan_in

    up = _upstream(tmp_path / "a", ["x"])
    data = json.loads((up / "data.json").read_text())
    data["features"][0]["properties"]["up42.data_path"] = "../../etc/passwd"
    (up / "data.json").write_text(json.dumps(data))
    with pytest.raises(BlockkitError, match="data_path"):
        forward_fan_in({"a": up}, [], tmp_path / "out")
    assert not (tmp_path / "out" / "a").exists()


def test_forwarding_takes_every_local_asset_along(tmp_path: Path) -> None:
    """A staged STAC item links its primary asset; its other bands must not dangle downstream."""
    src, dst = tmp_path / "in", tmp_path / "out"
    (src / "item").mkdir(parents=True)
    dst.mkdir()
    for band in ("B04.tif", "B08.tif"):
        (src / "item" / band).write_bytes(band.encode())
    feature = {
        "type": "Feature", "id": "s2", "geometry": None,
        "properties": {"up42.data_path": "item/B04.tif"},
        "assets": {"red": {"href": "item/B04.tif"}, "nir": {"href": "item/B08.tif"},
                   "remote": {"href": "https://example.invalid/B01.tif"}},
    }
    out = forward_feature(feature, src, dst, prefix="up")
    assert out["properties"]["up42.data_path"] == "up/item/B04.tif"
    assert out["assets"]["nir"]["href"] == "up/item/B08.tif"
    assert out["assets"]["remote"]["href"] == "https://example.invalid/B01.tif"
    assert (dst / "up/item/B08.tif").read_bytes() == b"B08.tif"
    assert os.path.samefile(dst / "up/item/B08.tif", src / "item/B08.tif")  # a hard link, no copy


def test_forwarding_refuses_an_asset_leaving_its_folder(tmp_path: Path) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    (tmp_path / "secret").write_text("x")
    feature = {"type": "Feature", "id": "a", "geometry": None, "properties": {},
               "assets": {"evil": {"href": "../secret"}}}
    with pytest.raises(WrongInputError, match="leaves its folder"):
        forward_feature(feature, src, dst)
    assert list(dst.iterdir()) == []


def test_ids_that_read_alike_stay_unique_through_every_fan_in_path(tmp_path: Path) -> None:
    """`1` and `"1"` both read `a:1` as fan-in ids: the merged input (runner, CWL) and mounted forwarding agree."""
    from blockkit.contract._datajson import FeatureCollection, load_data_json, write_data_json
    from blockkit.runtime._propagation import forward_fan_in, merge_upstreams

    ups = {"a": tmp_path / "in" / "a", "b": _upstream(tmp_path / "in" / "b", ["1"])}
    ups["a"].mkdir(parents=True)
    write_data_json(ups["a"], FeatureCollection([{"type": "Feature", "id": 1, "geometry": None, "properties": {}},
                                                 {"type": "Feature", "id": "1", "geometry": None, "properties": {}}]))
    merged = merge_upstreams(tmp_path / "in", ["a", "b"])
    assert [f["id"] for f in merged] == ["a:1", "a:1-2", "b:1"]
    assert [f["id"] for f in load_data_json(tmp_path / "in")] == ["a:1", "a:1-2", "b:1"]  # a valid data.json
    forwarded = forward_fan_in(ups, [], tmp_path / "out")
    assert [f["id"] for f in forwarded] == ["a:1", "a:1-2", "b:1"]
    assert load_data_json(ups["a"]).features[0]["id"] == 1  # the upstream's own features are left alone
