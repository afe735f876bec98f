"""data.json: valid collections load; hostile and malformed ones fail with one line naming the feature."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from blockkit.contract import _datajson as datajson
from blockkit.contract._datajson import (
    DATA_PATH,
    FeatureCollection,
    check_data_path,
    load_data_json,
    write_data_json,
)
from blockkit.contract.errors import ExitCode, NoInputError, WrongInputError

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
GEOMETRIES: dict[str, dict[str, Any]] = {
    "Point": {"type": "Point", "coordinates": [13.4, 52.5]},
    "Point3D": {"type": "Point", "coordinates": [13.4, 52.5, 34.0]},
    "MultiPoint": {"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]},
    "LineString": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
    "MultiLineString": {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
    "Polygon": SQUARE,
    "PolygonWithHole": {
        "type": "Polygon",
        "coordinates": [
            [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]],
            [[2, 2], [2, 3], [3, 3], [3, 2], [2, 2]],
        ],
    },
    "MultiPolygon": {"type": "MultiPolygon", "coordinates": [SQUARE["coordinates"]]},
    "GeometryCollection": {
        "type": "GeometryCollection",
        "geometries": [{"type": "Point", "coordinates": [0, 0]}, SQUARE],
    },
}


def feature(
    data_path: Any = None, *, geometry: Any = SQUARE, fid: Any = None, properties: Any = ...
) -> dict[str, Any]:
    """A GeoJSON feature, linking data_path when given."""
    props: Any = {} if properties is ... else properties
    if data_path is not None:
        props = dict(props or {}, **{DATA_PATH: data_path})
    out: dict[str, Any] = {"type": "Feature", "geometry": geometry, "properties": props}
    if fid is not None:
        out["id"] = fid
    return out


def write_fc(folder: Path, features: list[Any], **extra: Any) -> Path:
    """Write a data.json holding the features into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.json"
    path.write_text(json.dumps({"type": "FeatureCollection", **extra, "features": features}))
    return path


def load_error(folder: Path) -> WrongInputError:
    """Load folder's data.json, expecting WrongInputError, and check the headline is one line."""
    with pytest.raises(WrongInputError) as info:
        load_data_json(folder)
    err = info.value
    assert err.exit_code == ExitCode.WRONG_INPUT_ERROR == 4
    assert "\n" not in err.headline()
    assert err.headline().startswith("[WRONG_INPUT_ERROR] ")
    return err


@pytest.fixture
def indir(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "scene.tif").write_bytes(b"II*\x00")
    (folder / "sub").mkdir()
    (folder / "sub" / "band.tif").write_bytes(b"II*\x00")
    return folder


# --- valid ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_every_geometry_type_loads(indir: Path, name: str) -> None:
    write_fc(indir, [feature("scene.tif", geometry=GEOMETRIES[name], fid="a")])
    fc = load_data_json(indir)
    assert fc[0]["geometry"] == GEOMETRIES[name]


def test_null_geometry_null_properties_and_foreign_members_load(indir: Path) -> None:
    write_fc(
        indir,
        [feature(geometry=None, properties=None, fid=1), feature("sub", fid="folder")],
        bbox=[0, 0, 1, 1],
        custom_member={"a": 1},
    )
    fc = load_data_json(indir)
    assert len(fc) == 2 and fc[0]["properties"] is None
    assert fc.to_dict()["bbox"] == [0, 0, 1, 1] and fc.extra["custom_member"] == {"a": 1}


def test_zero_features_is_no_input_when_required_and_fine_otherwise(indir: Path) -> None:
    write_fc(indir, [])
    assert len(load_data_json(indir, required=False)) == 0
    with pytest.raises(NoInputError) as info:
        load_data_json(indir)
    assert info.value.exit_code == 3


def test_missing_data_json_is_no_input(tmp_path: Path) -> None:
    with pytest.raises(NoInputError) as info:
        load_data_json(tmp_path)
    assert info.value.exit_code == ExitCode.NO_INPUT_ERROR
    assert "does not exist" in info.value.headline()
    assert len(load_data_json(tmp_path, required=False)) == 0


def test_symlink_staying_inside_is_allowed(indir: Path) -> None:
    (indir / "link.tif").symlink_to("scene.tif")
    (indir / "linkdir").symlink_to("sub", target_is_directory=True)
    write_fc(indir, [feature("link.tif", fid="a"), feature("linkdir/band.tif", fid="b"), feature("linkdir", fid="c")])
    assert len(load_data_json(indir)) == 3


def test_data_path_forms_that_stay_inside(indir: Path) -> None:
    write_fc(indir, [feature("./scene.tif", fid="a"), feature("sub/", fid="b"), feature("sub//band.tif", fid="c")])
    assert len(load_data_json(indir)) == 3


# --- not JSON / not a collection --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"type": "FeatureCollection", "features": [' + b"\xff\xfe" + b"]}", "not UTF-8"),
        (b'{"type": "FeatureCollection", "features": [], "bbox": [NaN, 0, 1, 1]}', "NaN"),
        (b'{"type": "FeatureCollection", "features": [], "x": Infinity}', "Infinity"),
        (b'{"type": "FeatureCollection", "features": [], "x": -Infinity}', "Infinity"),
        (b"[]", "must be a JSON object"),
        (b'"FeatureCollection"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"type": "Feature", "geometry": null, "properties": {}}', "'type' must be 'FeatureCollection'"),
        (b'{"features": []}', "'type' must be 'FeatureCollection'"),
        (b'{"type": "FeatureCollection"}', "'features' must be a list"),
        (b'{"type": "FeatureCollection", "features": {}}', "'features' must be a list"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"type": "FeatureCollection", "features": [], "x": 1e400}', "number 1e400 is out of range"),
        (b'{"type": "FeatureCollection", "features": [], "x": -2.5E+999}', "number -2.5E+999 is out of range"),
        (b'{"type": "FeatureCollection", "features": [], "x": 1' + b"0" * 400 + b'.5}', "is out of range"),
        (b'{"type": "FeatureCollection", "features": [], "bbox": [0, 0, 1' + b"0" * 400 + b', 1]}', "is out of range"),
        (b'{"type": "FeatureCollection", "features": [], "x": ' + b'{"a": ' * 64 + b"1" + b"}" * 64 + b"}",
         "data.json: nested deeper than 64 levels"),
    ],
    ids=[
        "garbage", "empty", "non-utf8", "nan", "infinity", "minus-infinity", "list", "string", "null",
        "a-feature", "no-type", "no-features", "features-object", "deep-nesting", "huge-exponent",
        "huge-negative-exponent", "huge-digits", "huge-integer", "deep-foreign-member",
    ],
)
def test_not_a_feature_collection(indir: Path, raw: bytes, expected: str) -> None:
    (indir / "data.json").write_bytes(raw)
    err = load_error(indir)
    assert expected in err.headline()


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("not a feature", "feature 1"),
        ({"type": "Feature", "properties": {}}, "'geometry' is a required property"),
        ({"type": "Feature", "geometry": None}, "'properties' is a required property"),
        ({"type": "Featur", "geometry": None, "properties": {}}, "'Feature' was expected"),
        ({"type": "Feature", "geometry": None, "properties": []}, "properties"),
        ({"type": "Feature", "geometry": None, "properties": {}, "id": [1]}, "id"),
        ({"type": "Feature", "geometry": None, "properties": {}, "id": True}, "id"),
        ({"type": "Feature", "geometry": "POINT (1 2)", "properties": {}}, "geometry"),
        ({"type": "Feature", "geometry": {"type": "Circle", "coordinates": [0, 0]}, "properties": {}}, "Circle"),
    ],
    ids=["string", "no-geometry", "no-properties", "bad-type", "properties-list", "id-list", "id-bool", "wkt", "circle"],
)
def test_wrong_types_in_a_feature_are_named(indir: Path, bad: Any, expected: str) -> None:
    write_fc(indir, [feature(fid="ok"), bad])
    err = load_error(indir)
    assert "feature 1" in err.headline()
    assert expected in err.headline()


@pytest.mark.parametrize(
    ("geometry", "expected"),
    [
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, "not closed"),
        ({"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]], [[[5, 5], [6, 5], [6, 6], [5, 6]]]]}, "not closed"),
        ({"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 2]]]}]}, "not closed"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "too short"),
        ({"type": "Point", "coordinates": [1]}, "too short"),
        ({"type": "Point", "coordinates": []}, "too short"),
        ({"type": "Point", "coordinates": ["1", "2"]}, "not of type 'number'"),
        ({"type": "LineString", "coordinates": [[0, 0]]}, "too short"),
        ({"type": "Polygon", "coordinates": [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]}, "not of type 'array'"),
        ({"type": "Point", "coordinates": [[1, 2]]}, "not of type 'number'"),
        ({"type": "MultiPoint", "coordinates": [1, 2]}, "not of type 'array'"),
        ({"type": "Point"}, "'coordinates' is a required property"),
        ({"type": "GeometryCollection"}, "'geometries' is a required property"),
    ],
    ids=[
        "unclosed-ring", "unclosed-multipolygon", "unclosed-in-collection", "ring-3-positions",
        "position-1-number", "position-empty", "position-strings", "line-1-position",
        "polygon-one-level-short", "point-nested-too-deep", "multipoint-flat", "no-coordinates", "no-geometries",
    ],
)
def test_broken_geometry_is_named(indir: Path, geometry: dict[str, Any], expected: str) -> None:
    write_fc(indir, [feature(fid="a"), feature(fid="b"), feature(fid="c"), feature(geometry=geometry, fid="bad")])
    err = load_error(indir)
    assert "feature 3 (id 'bad')" in err.headline()
    assert expected in err.headline()


# --- data_path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("../x", "leaves its folder (through '..')"),
        ("../etc/passwd", "leaves its folder (through '..')"),
        ("a/../../x", "leaves its folder (through '..')"),
        ("sub/../scene.tif", "leaves its folder (through '..')"),
        ("..", "leaves its folder (through '..')"),
        ("/etc/passwd", "is absolute"),
        ("//server/share", "is absolute"),
        ("C:\\x", "POSIX path"),
        ("C:/x", "is absolute"),
        ("scene\\..\\..\\x", "POSIX path"),
        ("scene.tif\x00.png", "POSIX path"),
        ("", "non-empty"),
        ("missing.tif", "does not exist"),
        ("sub/missing.tif", "does not exist"),
        (".", "names the folder holding data.json or data.json itself"),
        ("./", "names the folder holding data.json or data.json itself"),
        ("data.json", "names the folder holding data.json or data.json itself"),
        ("./data.json", "names the folder holding data.json or data.json itself"),
    ],
)
def test_unsafe_or_dangling_data_path(indir: Path, value: str, expected: str) -> None:
    write_fc(indir, [feature("scene.tif", fid=i) for i in range(3)] + [feature(value)])
    err = load_error(indir)
    assert "feature 3" in err.headline()
    assert expected in err.headline()
    if value:
        assert repr(value) in err.headline()


def test_headline_format_names_feature_and_path(indir: Path) -> None:
    write_fc(indir, [feature("scene.tif") for _ in range(3)] + [feature("../etc/passwd")])
    err = load_error(indir)
    assert err.headline() == (
        f"[WRONG_INPUT_ERROR] invalid {indir / 'data.json'}: "
        "feature 3: up42.data_path '../etc/passwd' leaves its folder (through '..')"
    )


@pytest.mark.parametrize("value", [5, 1.5, None, True, ["scene.tif"], {"path": "scene.tif"}])
def test_data_path_of_wrong_type(indir: Path, value: Any) -> None:
    write_fc(indir, [{"type": "Feature", "geometry": None, "properties": {DATA_PATH: value}}])
    err = load_error(indir)
    assert "feature 0" in err.headline() and "up42.data_path" in err.headline()


def test_check_data_path_rejects_non_strings_directly() -> None:
    assert check_data_path(5, None) == "up42.data_path 5 must be a non-empty string"
    assert check_data_path("a/b.tif", None) is None


def test_symlinked_file_leaving_the_folder(tmp_path: Path, indir: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (indir / "evil.tif").symlink_to(secret)
    write_fc(indir, [feature("evil.tif", fid="e")])
    err = load_error(indir)
    assert "feature 0 (id 'e')" in err.headline() and "symlink that leaves" in err.headline()


def test_symlinked_folder_leaving_the_folder(tmp_path: Path, indir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.tif").write_text("x")
    (indir / "evil").symlink_to(outside, target_is_directory=True)
    write_fc(indir, [feature("evil")])
    assert "symlink that leaves" in load_error(indir).headline()


def test_symlinked_parent_folder_leaving_the_folder(tmp_path: Path, indir: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "deeper" / "x.tif").write_text("x")
    (indir / "sub" / "evil").symlink_to(outside, target_is_directory=True)
    write_fc(indir, [feature("sub/evil/deeper/x.tif")])
    assert "symlink that leaves" in load_error(indir).headline()


def test_symlink_to_absolute_root(indir: Path) -> None:
    (indir / "root").symlink_to("/", target_is_directory=True)
    write_fc(indir, [feature("root/etc/passwd")])
    assert "symlink that leaves" in load_error(indir).headline()


def test_dangling_symlink_inside(indir: Path) -> None:
    (indir / "gone.tif").symlink_to("nothing-here.tif")
    write_fc(indir, [feature("gone.tif")])
    assert "dangling symlink" in load_error(indir).headline()


def test_input_folder_reached_through_a_symlink_is_fine(tmp_path: Path, indir: Path) -> None:
    write_fc(indir, [feature("scene.tif")])
    alias = tmp_path / "alias"
    alias.symlink_to(indir, target_is_directory=True)
    (indir / "inner.tif").symlink_to("scene.tif")
    write_fc(indir, [feature("scene.tif"), feature("inner.tif")])
    assert len(load_data_json(alias)) == 2


def test_data_json_that_is_a_symlink_is_refused(tmp_path: Path, indir: Path) -> None:
    real = write_fc(tmp_path / "elsewhere", [feature(geometry=None)])
    (indir / "data.json").symlink_to(real)
    err = load_error(indir)
    assert "symlink" in err.headline() and "data.json" in err.headline()


def test_data_json_that_is_a_directory(indir: Path) -> None:
    (indir / "data.json").mkdir()
    assert "is not a regular file" in load_error(indir).headline()


def test_check_files_false_skips_existence_but_not_safety(indir: Path) -> None:
    write_fc(indir, [feature("missing.tif")])
    assert len(load_data_json(indir, check_files=False)) == 1
    write_fc(indir, [feature("../x")])
    with pytest.raises(WrongInputError):
        load_data_json(indir, check_files=False)


def test_duplicate_ids_are_named(indir: Path) -> None:
    write_fc(indir, [feature(fid="a"), feature(fid="b"), feature(fid="a")])
    err = load_error(indir)
    assert "feature 2 (id 'a')" in err.headline() and "duplicate id (also feature 0)" in err.headline()


def test_every_problem_is_listed_with_a_bound(indir: Path) -> None:
    write_fc(indir, [feature("../x"), feature("/abs"), feature("missing.tif"), feature(geometry={"type": "Point"})])
    err = load_error(indir)
    assert "(and 3 more)" in err.headline()
    details = err.details().splitlines()
    assert len(details) == 4
    assert [d.split(":")[0].strip(" -") for d in details] == ["feature 0", "feature 1", "feature 2", "feature 3"]

    write_fc(indir, [feature("../x") for _ in range(500)])
    err = load_error(indir)
    assert len(err.problems) <= datajson._MAX_PROBLEMS + 1
    assert "more problems not listed" in err.details()


def test_input_files_are_never_modified(indir: Path) -> None:
    write_fc(indir, [feature("scene.tif"), feature("../x")])
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in indir.rglob("*") if p.is_file()}
    load_error(indir)
    write_fc(indir, [feature("scene.tif")])  # rewrite, then reload valid
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in indir.rglob("*") if p.is_file()}
    load_data_json(indir)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in indir.rglob("*") if p.is_file()}
    assert before == after


# --- size -------------------------------------------------------------------------------------


def _write_many(folder: Path, count: int, bad_index: int | None = None) -> Path:
    """A data.json of `count` features all linking one file, written as text in one go."""
    one = json.dumps(feature("scene.tif", geometry={"type": "Point", "coordinates": [1.5, 2.5]}))
    bad = json.dumps(feature("../../etc/passwd", geometry={"type": "Point", "coordinates": [1.5, 2.5]}))
    body = ",".join(bad if i == bad_index else one for i in range(count))
    path = folder / "data.json"
    path.write_text('{"type":"FeatureCollection","features":[' + body + "]}")
    return path


@pytest.mark.slow
def test_100k_features_load_quickly(indir: Path) -> None:
    _write_many(indir, 100_000)
    # A guard against quadratic validation, not a benchmark (bench_runtime.py measures it):
    # the process's own CPU time, which other jobs on the machine do not inflate.
    start = time.process_time()
    fc = load_data_json(indir)
    cpu = time.process_time() - start
    assert len(fc) == 100_000
    assert cpu < 20, f"loading 100k features took {cpu:.1f} s of CPU"


@pytest.mark.slow
def test_one_bad_feature_among_100k_is_named_by_index(indir: Path) -> None:
    _write_many(indir, 100_000, bad_index=73_421)
    err = load_error(indir)
    assert "feature 73421:" in err.headline() and "'../../etc/passwd' leaves its folder (through '..')" in err.headline()
    assert len(err.problems) == 1


def test_oversized_data_json_is_refused_before_parsing(indir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fc(indir, [feature("scene.tif") for _ in range(50)])
    monkeypatch.setattr(datajson, "MAX_DATA_JSON_BYTES", 1000)
    err = load_error(indir)
    assert "limited to 1000 bytes" in err.headline()


# --- writing ----------------------------------------------------------------------------------


def test_write_round_trips(tmp_path: Path) -> None:
    fc = FeatureCollection([feature(geometry=GEOMETRIES["GeometryCollection"], fid="é"), feature(geometry=None)], {"bbox": [0, 0, 1, 1]})
    path = write_data_json(tmp_path / "out", fc)
    assert path == tmp_path / "out" / "data.json"
    again = load_data_json(tmp_path / "out")
    assert again.to_dict() == fc.to_dict()
    assert "é" in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.json"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()], ids=["nan", "inf", "object"])
def test_failed_write_keeps_previous_data_json_and_no_temp_file(tmp_path: Path, bad: Any) -> None:
    out = tmp_path / "out"
    write_data_json(out, FeatureCollection([feature(geometry=None, fid="old")]))
    previous = (out / "data.json").read_bytes()
    with pytest.raises(WrongInputError) as info:
        write_data_json(out, FeatureCollection([feature(geometry=None, properties={"v": bad})]))
    assert info.value.headline().startswith("[WRONG_INPUT_ERROR] cannot write data.json: ")
    assert (out / "data.json").read_bytes() == previous
    assert sorted(p.name for p in out.iterdir()) == ["data.json"]


_WRITE_NEW = """
import sys
from pathlib import Path
from blockkit.contract._datajson import FeatureCollection, write_data_json
try:
    write_data_json(Path(sys.argv[1]), FeatureCollection([{"type": "Feature", "id": "new", "geometry": None,
                                                          "properties": {}}]))
except OSError as exc:
    print(type(exc).__name__, exc.errno)
    sys.exit(0)
sys.exit("the write into a read-only folder succeeded")
"""


def test_failed_write_in_read_only_folder_keeps_previous(tmp_path: Path) -> None:
    """A folder the writer may not write to: a chmod for a user, a read-only bind mount for root.

    Root ignores folder permissions, so as root the write runs under bubblewrap with the
    folder mounted read-only (never skipped under CI=true: CI installs bubblewrap).
    """
    out = tmp_path / "out"
    write_data_json(out, FeatureCollection([feature(geometry=None, fid="old")]))
    previous = (out / "data.json").read_bytes()
    if os.geteuid() != 0:
        out.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            with pytest.raises(OSError):
                write_data_json(out, FeatureCollection([feature(geometry=None, fid="new")]))
        finally:
            out.chmod(stat.S_IRWXU)
    else:
        import shutil
        import subprocess
        import sys

        bwrap = shutil.which("bwrap")
        if bwrap is None:
            if os.environ.get("CI") == "true":
                pytest.fail("CI=true but bubblewrap (bwrap) is not installed")
            pytest.skip("root ignores folder permissions and bubblewrap (bwrap) is not installed")
        done = subprocess.run([bwrap, "--dev-bind", "/", "/", "--ro-bind", str(out), str(out),
                               sys.executable, "-c", _WRITE_NEW, str(out)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["OSError", str(errno.EROFS)]
    assert (out / "data.json").read_bytes() == previous
    assert sorted(p.name for p in out.iterdir()) == ["data.json"]


def test_write_over_a_data_json_symlink_replaces_the_link_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.json").symlink_to(target)
    write_data_json(out, FeatureCollection([]))
    assert target.read_text() == "keep me"
    assert not (out / "data.json").is_symlink()


@pytest.mark.parametrize(
    "value",
    [
        {"type": "FeatureCollection", "features": [feature(geometry=None)]},
        feature(geometry=None),
        [feature(geometry=None)],
        None,
    ],
    ids=["collection", "feature", "list", "none"],
)
def test_coerce_accepts_collection_like_values(value: Any) -> None:
    fc = FeatureCollection.coerce(value)
    assert isinstance(fc, FeatureCollection)
    assert len(fc) == (0 if value is None else 1)


@pytest.mark.parametrize(
    "value",
    [{"features": [feature(geometry=None)]}, {"type": "Polygon", "coordinates": []}, {"a": 1}, "data.json", b"{}", 5],
    ids=["untyped-dict", "geometry", "other-dict", "str", "bytes", "int"],
)
def test_coerce_refuses_values_that_are_not_collections(value: Any) -> None:
    with pytest.raises(TypeError):
        FeatureCollection.coerce(value)


# --- bounded nesting and asset hrefs -------------------------------------------------------------


def _deep_properties(levels: int) -> dict[str, Any]:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return {"type": "Feature", "geometry": None, "properties": {"k": value}}


def _collection_of_collections(levels: int) -> dict[str, Any]:
    geometry: dict[str, Any] = {"type": "Point", "coordinates": [0, 0]}
    for _ in range(levels):
        geometry = {"type": "GeometryCollection", "geometries": [geometry]}
    return {"type": "Feature", "geometry": geometry, "properties": {}}


@pytest.mark.parametrize(("feature", "ok"), [
    (_deep_properties(60), True),  # collection 1, features 2, feature 3, properties 4, then 60 more: 64
    (_deep_properties(61), False),
    (_deep_properties(900), False),
    (_collection_of_collections(30), True),
    (_collection_of_collections(40), False),
    (_collection_of_collections(400), False),  # was a RecursionError in the schema's error report
    ({"type": "Feature", "geometry": None, "properties": 5, "x": _deep_properties(100)}, False),  # invalid as well
], ids=["props-60", "props-61", "props-900", "collections-30", "collections-40", "collections-400", "invalid-and-deep"])
def test_nesting_is_bounded_without_recursion(feature: dict[str, Any], ok: bool) -> None:
    problems = datajson.validate_feature_collection({"type": "FeatureCollection", "features": [feature]})
    if ok:
        assert problems == []
    else:
        assert [str(p) for p in problems] == ["feature 0: nested deeper than 64 levels of objects and arrays"]


def test_coordinates_are_not_walked_as_nesting() -> None:
    ring = [[float(i % 7), float(i % 5)] for i in range(1000)]
    feature = {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": ring}, "properties": {}}
    assert datajson.validate_feature_collection({"type": "FeatureCollection", "features": [feature]}) == []


@pytest.mark.parametrize(("href", "expected"), [
    ("../../etc/hostname", "asset 'b': href '../../etc/hostname' leaves its folder (through '..')"),
    ("/etc/hostname", "asset 'b': href '/etc/hostname' is absolute"),
    ("a\\b.tif", "asset 'b': href 'a\\\\b.tif' must be a POSIX path"),
    ("sub/../../x", "leaves its folder"),
], ids=["dotdot", "absolute", "backslash", "dotdot-inside"])
def test_an_asset_href_that_leaves_the_folder_is_refused(indir: Path, href: str, expected: str) -> None:
    (indir / "a.tif").write_bytes(b"x")
    feature = {"type": "Feature", "geometry": None, "properties": {"up42.data_path": "a.tif"},
               "assets": {"a": {"href": "a.tif"}, "b": {"href": href}, "c": {"href": "https://example.invalid/c.tif"}}}
    (indir / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    assert expected in load_error(indir).headline() + " ".join(str(p) for p in load_error(indir).problems)


def test_long_integers_within_a_floats_range_are_kept_exactly() -> None:
    big = "9" * 300  # 1e300: long, but a float can hold it
    parsed = datajson.parse_data_json(('{"type": "FeatureCollection", "features": [], "n": ' + big + "}").encode())
    assert parsed["n"] == int(big)
