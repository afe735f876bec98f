"""Features carry `bbox` like UP42's: computed when missing, kept when the geometry is kept, validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockkit.contract._datajson import validate_feature_collection
from blockkit.runtime._context import BlockContext

SQUARE = {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.5, 52.0], [13.5, 52.4], [13.0, 52.4], [13.0, 52.0]]]}


def _ctx(tmp_path: Path) -> BlockContext:
    return BlockContext.from_env({}, input_dir=tmp_path / "in", output_dir=tmp_path / "out")


def test_new_feature_gets_bbox_from_its_geometry(tmp_path: Path) -> None:
    feature = _ctx(tmp_path).new_feature(geometry=SQUARE, id="a")
    assert feature["bbox"] == [13.0, 52.0, 13.5, 52.4]
    assert "bbox" not in _ctx(tmp_path).new_feature(geometry=None, id="b")


def test_derive_feature_keeps_the_input_bbox_or_recomputes_it(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    given = {"type": "Feature", "id": "x", "geometry": SQUARE, "bbox": [12.9, 51.9, 13.6, 52.5], "properties": {}}
    assert ctx.derive_feature(given, properties={"k": 1})["bbox"] == [12.9, 51.9, 13.6, 52.5]
    point = {"type": "Point", "coordinates": [10.0, 50.0]}
    assert ctx.derive_feature(given, geometry=point)["bbox"] == [10.0, 50.0, 10.0, 50.0]
    no_bbox = {k: v for k, v in given.items() if k != "bbox"}
    assert ctx.derive_feature(no_bbox)["bbox"] == [13.0, 52.0, 13.5, 52.4]


def test_bbox_from_shapely_mapping_tuples(tmp_path: Path) -> None:
    from shapely.geometry import box, mapping

    feature = _ctx(tmp_path).new_feature(geometry=dict(mapping(box(1.0, 2.0, 3.0, 4.0))), id="t")
    assert feature["bbox"] == [1.0, 2.0, 3.0, 4.0]


def test_forward_keeps_bbox(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tif").write_bytes(b"x")
    given = {"type": "Feature", "id": "x", "geometry": SQUARE, "bbox": [13.0, 52.0, 13.5, 52.4],
             "properties": {"up42.data_path": "a.tif"}}
    assert ctx.forward(given)["bbox"] == [13.0, 52.0, 13.5, 52.4]


def _problems(feature: dict) -> list[str]:
    return [p.message for p in validate_feature_collection({"type": "FeatureCollection", "features": [feature]})]


@pytest.mark.parametrize(
    ("bbox", "problem"),
    [
        ([13.0, 52.0, 13.5, 52.4], None),
        ([13.0, 52.0, 0, 13.5, 52.4, 100], None),  # with heights
        ([12.0, 51.0, 14.0, 53.0], None),  # larger is allowed (RFC 7946: it contains the geometry)
        ([13.0, 52.0, 13.5, 52.399999], None),  # rounding
        ([170.0, 52.0, 13.6, 52.4], None),  # across the antimeridian: latitudes checked only
        ([13.0, 52.0, 13.5], "too short"),  # the schema's words
        ([13.0, 52.0, 13.5, 52.4, 1], "must be 4 numbers"),
        ([13.0, "52", 13.5, 52.4], "is not of type 'number'"),
        ([13.0, 52.4, 13.5, 52.0], "south 52.4 is greater than north 52.0"),
        ([0.0, 0.0, 1.0, 1.0], "does not contain the geometry"),
        ([13.1, 52.0, 13.5, 52.4], "does not contain the geometry"),
        ([13.0, 52.0, 5, 13.5, 52.4, 1], "lowest height 5 is greater"),
    ],
)
def test_bbox_validated_when_present(bbox: list, problem: str | None) -> None:
    found = _problems({"type": "Feature", "geometry": SQUARE, "bbox": bbox, "properties": {}})
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0], found


def test_nan_bbox_is_a_problem() -> None:
    assert _problems({"type": "Feature", "geometry": SQUARE, "bbox": [float("nan"), 52, 13.5, 52.4], "properties": {}})


def test_null_geometry_bbox_checks_shape_only() -> None:
    assert _problems({"type": "Feature", "geometry": None, "bbox": [1, 2, 3, 4], "properties": {}}) == []


@pytest.mark.slow
@pytest.mark.parametrize("block", ["synthetic-scene", "threshold"])
def test_example_blocks_write_bbox(tmp_path: Path, block: str) -> None:
    from blockkit.testing import run_block

    examples = Path(__file__).resolve().parents[2] / "examples" / "blocks"
    scene = run_block(examples / "synthetic-scene", tmp_path / "none", tmp_path / "scene", {"limit": 1, "size": 64})
    assert scene.returncode == 0, scene.stderr
    result = scene
    if block == "threshold":
        result = run_block(examples / "threshold", tmp_path / "scene", tmp_path / "thr", {})
        assert result.returncode == 0, result.stderr
    features = json.loads((result.output_dir / "data.json").read_text())["features"]
    assert features and all(len(f["bbox"]) == 4 for f in features)
    assert validate_feature_collection({"type": "FeatureCollection", "features": features}, result.output_dir) == []
