"""synthetic-scene run for real as a process: files, determinism, DRY_RUN, bad parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from blockkit.testing import BlockResult, run_block

BLOCK = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, params: dict[str, Any], name: str = "out", mode: str = "DEFAULT") -> BlockResult:
    return run_block(BLOCK, tmp_path / "input", tmp_path / name, params, mode=mode)



def features(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "data.json").read_text())["features"]


def test_default_scene_is_a_4_band_utm_geotiff_with_meaningful_ndvi(tmp_path: Path) -> None:
    result = run(tmp_path, {"size": 256})
    assert result.returncode == 0, result.stderr
    [feature] = features(tmp_path / "out")
    path = tmp_path / "out" / feature["properties"]["up42.data_path"]
    assert feature["geometry"]["coordinates"][0][0] == [13.35, 52.5]
    with rasterio.open(path) as src:
        assert (src.count, src.dtypes[0], src.nodata) == (4, "uint16", 0)
        assert src.crs.to_epsg() == 32633  # Berlin is in UTM zone 33N
        assert max(src.width, src.height) == 256
        assert src.block_shapes[0] == (256, 256)  # internal tiles
        assert src.descriptions == ("blue", "green", "red", "nir")
        red, nir = src.read(3).astype(float), src.read(4).astype(float)
    inside = nir > 0  # the UTM grid is a little wider than the lon/lat box: outside is no data
    assert 0.9 < inside.mean() < 1.0
    ndvi = ((nir - red) / (nir + red))[inside]
    vegetated = float((ndvi > 0.3).mean())
    assert 0.1 < vegetated < 0.9, vegetated  # fields, forest and bare soil, not a flat image
    assert ndvi.max() > 0.7 and ndvi.min() < 0.25
    quicklook = tmp_path / "out-quicklooks" / f"{feature['id']}.png"
    with rasterio.open(quicklook) as ql:
        assert (ql.width, ql.height) == (256, 252)  # the scene's own size: a quicklook is at most 512 px, never upsampled


@pytest.mark.slow
def test_same_parameters_give_the_same_pixels_and_another_seed_does_not(tmp_path: Path) -> None:
    params = {"size": 128, "seed": 7, "bbox": [10.0, -1.0, 10.02, -0.98]}
    assert run(tmp_path, params, "a").returncode == 0
    assert run(tmp_path, params, "b").returncode == 0
    assert run(tmp_path, {**params, "seed": 8}, "c").returncode == 0
    pixels = {}
    for name in "abc":
        [feature] = features(tmp_path / name)
        with rasterio.open(tmp_path / name / feature["properties"]["up42.data_path"]) as src:
            pixels[name] = src.read()
            if name == "a":
                assert src.crs.to_epsg() == 32732  # south of the equator: 327xx
    assert np.array_equal(pixels["a"], pixels["b"])
    assert not np.array_equal(pixels["a"], pixels["c"])


def test_dry_run_reports_features_and_writes_no_file(tmp_path: Path) -> None:
    result = run(tmp_path, {"limit": 2}, mode="DRY_RUN")
    assert result.returncode == 0, result.stderr
    found = features(tmp_path / "out")
    assert len(found) == 2 and found[0]["id"] != found[1]["id"]
    assert all("up42.data_path" not in f["properties"] for f in found)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.json"]


def test_intersects_uses_the_geometry_bounds(tmp_path: Path) -> None:
    triangle = {"type": "Polygon", "coordinates": [[[5.3, 60.3], [5.35, 60.3], [5.32, 60.33], [5.3, 60.3]]]}
    result = run(tmp_path, {"intersects": triangle, "size": 64, "time": "2023-05-01T00:00:00Z/2023-06-01T00:00:00Z"})
    assert result.returncode == 0, result.stderr
    [feature] = features(tmp_path / "out")
    assert feature["properties"]["datetime"] == "2023-05-01T00:00:00Z"
    with rasterio.open(tmp_path / "out" / feature["properties"]["up42.data_path"]) as src:
        assert src.crs.to_epsg() == 32632  # Bergen: the 32V exception


@pytest.mark.slow
def test_bad_parameters_exit_2_with_one_line_naming_them(tmp_path: Path) -> None:
    for params, word in [
        ({"size": 99999}, "size"),
        ({"bbox": [13.0, 52.0, 13.1]}, "bbox"),
        ({"colour": "red"}, "colour"),
        ({"bbox": [0.0, 0.0, 5.0, 5.0]}, "km²"),  # ~309,000 km², over the block's limit
    ]:
        result = run(tmp_path, params)
        assert result.returncode == 2, (params, result.stderr)
        first = next(line for line in result.stderr.splitlines() if line.startswith("["))
        assert first.startswith("[INPUT_PARAMETERS_ERROR]") and word in first, first
        assert not (tmp_path / "out" / "data.json").exists()
