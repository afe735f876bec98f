"""The four example blocks chained by hand: scene -> ndvi -> threshold -> vectorize, each a process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import shape

from blockkit.runtime.geometry import aoi_area_km2
from blockkit.testing import run_block

BLOCKS = Path(__file__).resolve().parent
BBOX = [13.35, 52.50, 13.40, 52.53]


def step(block: str, input_dir: Path, output_dir: Path, params: dict[str, Any]) -> list[dict[str, Any]]:
    result = run_block(BLOCKS / block, input_dir, output_dir, params)
    assert result.returncode == 0, f"{block} exited {result.returncode}:\n{result.stderr}"
    return result.features



@pytest.mark.slow
def test_scene_ndvi_threshold_vectorize(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    step("synthetic-scene", tmp_path / "empty", tmp_path / "scene", {"bbox": BBOX, "size": 384, "seed": 3})
    step("ndvi", tmp_path / "scene", tmp_path / "ndvi", {})
    [mask] = step("threshold", tmp_path / "ndvi", tmp_path / "mask", {"threshold": 0.3})
    [polygons] = step("vectorize", tmp_path / "mask", tmp_path / "polygons", {"min_area_m2": 500})

    # Metadata flowed through every step; every step left its quicklook.
    assert polygons["properties"]["constellation"] == "synthetic"
    assert polygons["properties"]["threshold:value"] == 0.3
    assert [len(list((tmp_path / f"{name}-quicklooks").glob("*.png"))) for name in ("scene", "ndvi", "mask")] == [1, 1, 1]

    # The polygons lie in the scene and cover what the mask says is vegetation.
    covered = aoi_area_km2(polygons["geometry"])
    scene = aoi_area_km2(BBOX)
    fraction = covered / scene
    assert 0.1 < fraction < 0.9, fraction
    assert abs(fraction - mask["properties"]["threshold:fraction"]) < 0.1
    merged = shape(polygons["geometry"])
    assert merged.is_valid
    west, south, east, north = merged.bounds
    assert BBOX[0] - 1e-3 <= west and east <= BBOX[2] + 1e-3 and BBOX[1] - 1e-3 <= south and north <= BBOX[3] + 1e-3
    collection = json.loads((tmp_path / "polygons" / polygons["properties"]["up42.data_path"]).read_text())
    assert len(collection["features"]) == polygons["properties"]["vectorize:polygons"] > 0
