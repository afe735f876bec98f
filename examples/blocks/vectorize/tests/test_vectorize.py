"""vectorize run for real as a process on a small UTM mask with known shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import shape

from blockkit.testing import run_block

BLOCK = Path(__file__).resolve().parents[1]


def write_mask(folder: Path, crs: str | None = "EPSG:32633") -> None:
    """100x100 pixels of 10 m near Berlin: a 40x40 square, a 20x10 one, a 2x2 speck, a no-data strip."""
    folder.mkdir()
    mask = np.zeros((100, 100), dtype="uint8")
    mask[10:50, 10:50] = 1  # 160,000 m²
    mask[60:80, 60:70] = 1  # 20,000 m²
    mask[90:92, 5:7] = 1  # 400 m²
    mask[:, 98:] = 255
    profile = dict(driver="GTiff", width=100, height=100, count=1, dtype="uint8", nodata=255,
                   transform=from_origin(390000, 5820000, 10, 10))
    if crs:
        profile["crs"] = crs
    with rasterio.open(folder / "mask.tif", "w", **profile) as dst:
        dst.write(mask[np.newaxis])
    feature = {"type": "Feature", "id": "mask", "geometry": None,
               "properties": {"up42.data_path": "mask.tif", "sensor": "demo"}}
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))


@pytest.fixture()
def mask(tmp_path: Path) -> Path:
    write_mask(tmp_path / "input")
    return tmp_path / "input"


def test_polygons_in_wgs84_with_areas_and_a_merged_feature(mask: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, mask, tmp_path / "out", {"min_area_m2": 1000})
    assert result.returncode == 0, result.stderr
    [feature] = json.loads((tmp_path / "out" / "data.json").read_text())["features"]
    assert feature["properties"]["sensor"] == "demo"
    assert feature["properties"]["vectorize:polygons"] == 2  # the 400 m² speck is dropped
    merged = shape(feature["geometry"])
    assert merged.geom_type == "MultiPolygon" and merged.is_valid
    west, south, east, north = merged.bounds
    assert 13.3 < west < east < 13.5 and 52.4 < south < north < 52.6  # placed in Berlin, lon/lat order
    collection = json.loads((tmp_path / "out" / feature["properties"]["up42.data_path"]).read_text())
    areas = sorted(f["properties"]["area_m2"] for f in collection["features"])
    assert areas == [pytest.approx(20_000, rel=0.02), pytest.approx(160_000, rel=0.02)]
    for polygon in collection["features"]:
        ring = polygon["geometry"]["coordinates"][0]
        signed = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:]))
        assert signed > 0  # RFC 7946: exterior rings counter-clockwise


def test_no_polygons_gives_a_feature_without_geometry(mask: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, mask, tmp_path / "out", {"value": 7})
    assert result.returncode == 0, result.stderr
    [feature] = json.loads((tmp_path / "out" / "data.json").read_text())["features"]
    assert feature["geometry"] is None and feature["properties"]["vectorize:polygons"] == 0
    collection = json.loads((tmp_path / "out" / feature["properties"]["up42.data_path"]).read_text())
    assert collection == {"type": "FeatureCollection", "features": []}


def test_bad_parameter_exits_2(mask: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, mask, tmp_path / "out", {"connectivity": 5})
    assert result.returncode == 2
    assert result.stderr.startswith("[INPUT_PARAMETERS_ERROR]") and "connectivity" in result.stderr.splitlines()[0]


def test_mask_without_crs_is_wrong_input(tmp_path: Path) -> None:
    write_mask(tmp_path / "input", crs=None)
    result = run_block(BLOCK, tmp_path / "input", tmp_path / "out", {})
    assert result.returncode == 4
    assert "no CRS" in result.stderr


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_quicklook_of_the_polygons_covers_the_feature_bounds(mask: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, mask, tmp_path / "out", {"min_area_m2": 1000})
    assert result.returncode == 0, result.stderr
    [feature] = json.loads((tmp_path / "out" / "data.json").read_text())["features"]
    png = tmp_path / "out-quicklooks" / f"{feature['id']}.png"
    with rasterio.open(png) as ql:
        assert ql.count == 4 and max(ql.width, ql.height) == 512
        alpha = ql.read(4)
    west, south, east, north = shape(feature["geometry"]).bounds
    # Square ground pixels: the aspect ratio is the bounds' ground aspect (longitude scaled by cos(lat)).
    ground = (east - west) * np.cos(np.radians((south + north) / 2)) / (north - south)
    assert ql.width / ql.height == pytest.approx(ground, rel=0.02)
    # The 40x40 square fills the top-left of the bounds; transparent outside the polygons.
    assert alpha[alpha.shape[0] // 4, alpha.shape[1] // 4] > 0
    assert alpha[-1, 0] == 0
    assert 0.3 < (alpha > 0).mean() < 0.9


def test_no_polygons_no_quicklook(mask: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, mask, tmp_path / "out", {"value": 7})
    assert result.returncode == 0, result.stderr
    assert not list((tmp_path / "out-quicklooks").glob("*.png"))
