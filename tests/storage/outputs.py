"""A block's output folder as stage-out finds it: two features, one a file, one a folder of files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blockkit.contract._datajson import write_data_json
from tests.servers import write_geotiff

POLYGON = {"type": "Polygon", "coordinates": [[[13.5, 52.2], [13.6, 52.2], [13.6, 52.3], [13.5, 52.3], [13.5, 52.2]]]}


def write_outputs(out: Path, *, ndvi_properties: dict[str, Any] | None = None, scene_id: str = "scene_b",
                  scene_geometry: dict[str, Any] | None = POLYGON) -> Path:
    """Write `out`: feature `ndvi_a` (data_path `ndvi_a.tif`, a GeoTIFF) and feature `scene_id` (data_path
    the folder `scene_b` with `B04.tif` and `qa/mask.txt`), both with `POLYGON` unless `scene_geometry`
    says otherwise; `ndvi_properties` are added to `ndvi_a`'s properties. Returns `out`."""
    write_geotiff(out / "ndvi_a.tif", seed=1)
    write_geotiff(out / "scene_b" / "B04.tif", seed=2)
    (out / "scene_b" / "qa").mkdir()
    (out / "scene_b" / "qa" / "mask.txt").write_text("ok")
    write_data_json(out, {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "ndvi_a", "geometry": POLYGON,
         "properties": {"up42.data_path": "ndvi_a.tif", "datetime": "2024-06-01T10:00:00Z",
                        **(ndvi_properties or {})}},
        {"type": "Feature", "id": scene_id, "geometry": scene_geometry, "properties": {"up42.data_path": "scene_b"}},
    ]})
    return out
