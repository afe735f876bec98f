"""Tests for {{name}}: run the block for real on a small GeoTIFF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from blockkit.testing import run_block

BLOCK = Path(__file__).resolve().parents[1]


def _input(tmp_path: Path, bands: int = 1) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    profile = dict(driver="GTiff", width=64, height=64, count=bands, dtype="uint16", crs="EPSG:4326",
                   transform=from_origin(13.0, 52.0, 0.001, 0.001))
    with rasterio.open(folder / "scene.tif", "w", **profile) as dst:
        dst.write(np.full((bands, 64, 64), 10, dtype="uint16"))
    feature = {"type": "Feature", "id": "scene", "properties": {"up42.data_path": "scene.tif", "sensor": "demo"},
               "geometry": {"type": "Polygon", "coordinates": [[[13.0, 51.936], [13.064, 51.936], [13.064, 52.0], [13.0, 52.0], [13.0, 51.936]]]}}
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return folder


def test_scales_the_raster(tmp_path: Path) -> None:
    result = run_block(BLOCK, _input(tmp_path), tmp_path / "output", {"factor": 2.5})
    assert result.returncode == 0, result.stderr
    fc = json.loads((tmp_path / "output" / "data.json").read_text())
    feature = fc["features"][0]
    assert feature["properties"]["sensor"] == "demo"  # metadata propagated
    with rasterio.open(tmp_path / "output" / feature["properties"]["up42.data_path"]) as src:
        assert float(src.read(1).mean()) == 25.0


def test_scales_every_band(tmp_path: Path) -> None:
    result = run_block(BLOCK, _input(tmp_path, bands=4), tmp_path / "output", {"factor": 2})
    assert result.returncode == 0, result.stderr
    fc = json.loads((tmp_path / "output" / "data.json").read_text())
    with rasterio.open(tmp_path / "output" / fc["features"][0]["properties"]["up42.data_path"]) as src:
        assert src.count == 4 and float(src.read().mean()) == 20.0


def test_bad_parameter_exits_2(tmp_path: Path) -> None:
    result = run_block(BLOCK, _input(tmp_path), tmp_path / "output", {"factor": -1})
    assert result.returncode == 2
    assert "[INPUT_PARAMETERS_ERROR]" in result.stderr and "factor" in result.stderr
    assert not (tmp_path / "output" / "data.json").exists()
