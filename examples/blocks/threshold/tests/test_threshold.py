"""threshold run for real as a process on a small float GeoTIFF with known values."""

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
def ndvi(tmp_path: Path) -> Path:
    """A 200x180 float32 gradient from -1 to 1 across the columns, with a NaN (no data) block."""
    folder = tmp_path / "input"
    folder.mkdir()
    values = np.tile(np.linspace(-1, 1, 200, dtype="float32"), (180, 1))
    values[:30, :30] = np.nan
    profile = dict(
        driver="GTiff", width=200, height=180, count=1, dtype="float32", crs="EPSG:32633", nodata=float("nan"),
        transform=from_origin(390000, 5820000, 10, 10),
    )
    with rasterio.open(folder / "ndvi.tif", "w", **profile) as dst:
        dst.write(values[np.newaxis])
    feature = {"type": "Feature", "id": "ndvi", "geometry": None,
               "properties": {"up42.data_path": "ndvi.tif", "sensor": "demo"}}
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return folder


@pytest.mark.parametrize("threshold", [0.3, -0.5])
def test_mask_is_one_above_the_threshold_and_255_on_no_data(ndvi: Path, tmp_path: Path, threshold: float) -> None:
    result = run_block(BLOCK, ndvi, tmp_path / "out", {"threshold": threshold})
    assert result.returncode == 0, result.stderr
    [feature] = json.loads((tmp_path / "out" / "data.json").read_text())["features"]
    assert feature["properties"]["sensor"] == "demo"
    assert feature["properties"]["threshold:value"] == threshold
    with rasterio.open(ndvi / "ndvi.tif") as src:
        values = src.read(1)
    with rasterio.open(tmp_path / "out" / feature["properties"]["up42.data_path"]) as src:
        assert (src.dtypes[0], src.nodata) == ("uint8", 255)
        mask = src.read(1)
    assert (mask[:30, :30] == 255).all()
    valid = ~np.isnan(values)
    assert np.array_equal(mask[valid], (values[valid] > threshold).astype("uint8"))
    expected = float((values[valid] > threshold).mean())
    assert feature["properties"]["threshold:fraction"] == pytest.approx(expected, abs=1e-6)


def test_bad_parameters_exit_2(ndvi: Path, tmp_path: Path) -> None:
    for params in ({"threshold": "high"}, {"threshold": 1e9}, {"band": 0}):
        result = run_block(BLOCK, ndvi, tmp_path / "out", params)
        assert result.returncode == 2, (params, result.stderr)
        assert result.stderr.startswith("[INPUT_PARAMETERS_ERROR]")
        assert not (tmp_path / "out" / "data.json").exists()


def test_missing_band_is_wrong_input(ndvi: Path, tmp_path: Path) -> None:
    result = run_block(BLOCK, ndvi, tmp_path / "out", {"band": 2})
    assert result.returncode == 4
    assert "band=2" in result.stderr
