"""ndvi run for real as a process on a small 4-band GeoTIFF with known values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from blockkit.testing import run_block

BLOCK = Path(__file__).resolve().parents[1]


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    """A 300x260 scene: red 1000, NIR 3000 (NDVI 0.5), a no-data corner and a zero-sum pixel row."""
    folder = tmp_path / "input"
    folder.mkdir()
    data = np.full((4, 260, 300), 500, dtype="uint16")
    data[2], data[3] = 1000, 3000
    data[:, :20, :20] = 0  # no data in every band
    data[3, 100, :] = 0  # NIR missing on one row: no data too
    profile = dict(
        driver="GTiff", width=300, height=260, count=4, dtype="uint16", crs="EPSG:32633", nodata=0,
        transform=from_origin(390000, 5820000, 10, 10), tiled=True, blockxsize=128, blockysize=128,
    )
    with rasterio.open(folder / "scene.tif", "w", **profile) as dst:
        dst.write(data)
    feature = {
        "type": "Feature", "id": "scene",
        "geometry": {"type": "Polygon", "coordinates": [[[13.4, 52.5], [13.45, 52.5], [13.45, 52.53], [13.4, 52.53], [13.4, 52.5]]]},
        "properties": {"up42.data_path": "scene.tif", "sensor": "demo", "custom.note": "not inherited"},
    }
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return folder


def test_ndvi_values_nodata_and_metadata(scene: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, scene, tmp_path / "out", {})
    assert result.returncode == 0, result.stderr
    [feature] = json.loads((tmp_path / "out" / "data.json").read_text())["features"]
    assert feature["id"] == "scene_ndvi"
    assert feature["properties"]["sensor"] == "demo" and "custom.note" not in feature["properties"]
    assert feature["properties"]["bands"] == ["ndvi"]
    with rasterio.open(tmp_path / "out" / feature["properties"]["up42.data_path"]) as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        assert src.crs.to_epsg() == 32633
        ndvi = src.read(1)
    assert np.isnan(ndvi[:20, :20]).all() and np.isnan(ndvi[100]).all()
    valid = ~np.isnan(ndvi)
    assert valid.sum() == 260 * 300 - 400 - 300
    assert np.allclose(ndvi[valid], 0.5)
    assert (result.quicklook_dir / "scene_ndvi.png").is_file()


def test_band_parameters_and_two_processes(scene: Path, tmp_path: Path) -> None:
    # Swapping the bands gives -0.5 everywhere it is defined.
    result = run_block(BLOCK, scene, tmp_path / "out", {"red_band": 4, "nir_band": 3, "processes": 2})
    assert result.returncode == 0, result.stderr
    with rasterio.open(tmp_path / "out" / "scene_ndvi.tif") as src:
        ndvi = src.read(1)
    assert np.allclose(ndvi[~np.isnan(ndvi)], -0.5)


def test_bad_parameter_exits_2(scene: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, scene, tmp_path / "out", {"red_band": 0})
    assert result.returncode == 2
    assert result.stderr.startswith("[INPUT_PARAMETERS_ERROR]") and "red_band" in result.stderr.splitlines()[0]
    assert not (tmp_path / "out" / "data.json").exists()


def test_band_beyond_the_raster_is_wrong_input(scene: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, scene, tmp_path / "out", {"nir_band": 7})
    assert result.returncode == 4, result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("["))
    assert line.startswith("[WRONG_INPUT_ERROR]") and "'scene'" in line and "4 band" in line
    assert not (tmp_path / "out" / "data.json").exists()


def test_per_band_item_by_common_name(tmp_path: Path) -> None:
    """A staged per-band item (B04/B08 files at 10 m, B11 at 20 m) with eo:bands: red/nir found by name."""
    folder = tmp_path / "input"
    (folder / "item").mkdir(parents=True)
    assets = {}
    for name, common, res, value in (("B04", "red", 10, 1000), ("B08", "nir", 10, 3000), ("B11", "swir16", 20, 7)):
        px = 600 // res
        with rasterio.open(
            folder / "item" / f"{name}.tif", "w", driver="GTiff", width=px, height=px, count=1, dtype="uint16", crs="EPSG:32633", nodata=0,
            transform=from_origin(390000, 5820000, res, res),
        ) as dst:
            dst.write(np.full((1, px, px), value, dtype="uint16"))
        assets[name] = {"href": f"item/{name}.tif", "roles": ["data"], "eo:bands": [{"name": name, "common_name": common}]}
    feature = {"type": "Feature", "id": "s2", "geometry": None,
               "properties": {"up42.data_path": "item/B04.tif", "eo:bands": [{"name": "B04"}]}, "assets": assets}
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    result = run_block(BLOCK, folder, tmp_path / "out", {"red_band": 9})
    assert result.returncode == 0, result.stderr
    assert "red_band=9 / nir_band=4 not used: the input names its red and nir bands" in result.stderr
    [out] = json.loads((tmp_path / "out" / "data.json").read_text())["features"]
    assert out["properties"]["ndvi:bands"] == ["red", "nir"] and "ndvi:red_band" not in out["properties"]
    assert out["properties"]["eo:bands"] == [{"name": "ndvi"}]
    with rasterio.open(tmp_path / "out" / out["properties"]["up42.data_path"]) as src:
        assert np.allclose(src.read(1), 0.5)
