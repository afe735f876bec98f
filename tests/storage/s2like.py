"""Sentinel-2-L2A-like STAC content written by the tests: per-band COGs at 10/20/60 m with `eo:bands`,
`proj:*`, a thumbnail and a collection; and a multi-band item (one 4-band file) for comparison.

Pixel values are chosen so NDVI is known: red (B04) 1000 and NIR (B08) 3000 give 0.5, except the
left quarter where NIR is 1000 (NDVI 0) and a 4x4 no-data corner (0 in every band).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# band, common name, resolution (m), centre wavelength (um)
S2_L2A_BANDS = (
    ("B01", "coastal", 60, 0.443), ("B02", "blue", 10, 0.490), ("B03", "green", 10, 0.560),
    ("B04", "red", 10, 0.665), ("B05", "rededge", 20, 0.704), ("B06", "rededge", 20, 0.740),
    ("B07", "rededge", 20, 0.783), ("B08", "nir", 10, 0.842), ("B8A", "nir08", 20, 0.865),
    ("B09", "nir09", 60, 0.945), ("B11", "swir16", 20, 1.610), ("B12", "swir22", 20, 2.190),
    ("B10", "cirrus", 60, 1.375),
)
WEST, NORTH, EPSG = 399960.0, 5800020.0, 32633


def band_values(name: str, size: int, noise: int = 0) -> Any:
    """The uint16 pixels of a band at 10 m size `size` (coarser bands are subsampled); `noise` adds
    deterministic random values below it (benchmarks: realistic compressed sizes)."""
    import numpy as np

    base = {"B04": 1000, "B08": 3000}.get(name, 500 + 37 * (sum(map(ord, name)) % 50))
    data = np.full((size, size), base, dtype="uint16")
    if noise:
        rng = np.random.default_rng(sum(map(ord, name)))
        data += rng.integers(0, noise, size=(size, size), dtype="uint16")
    if name == "B08":
        data[:, : size // 4] = 1000  # NDVI 0 in the left quarter
    data[:4, :4] = 0  # no data
    return data


def write_cog(path: Path, data: Any, resolution: float, *, nodata: int = 0, descriptions: list[str] | None = None) -> Path:
    """A cloud-optimised GeoTIFF (GDAL's COG driver) of a 2-D or 3-D uint16 array in UTM 33N."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy
    from rasterio.transform import from_origin

    arr = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=str(arr.dtype),
                   crs=f"EPSG:{EPSG}", transform=from_origin(WEST, NORTH, resolution, resolution), nodata=nodata)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(arr)
            for i, d in enumerate(descriptions or [], start=1):
                dst.set_band_description(i, d)
        with mem.open() as src:
            rio_copy(src, str(path), driver="COG", compress="deflate", blocksize=256)
    with rasterio.open(path) as check:
        assert check.count == arr.shape[0]
    return path


def _multihash(path: Path) -> str:
    return "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def _geometry() -> tuple[list[float], dict[str, Any]]:
    w, s, e, n = 14.99, 52.2, 15.01, 52.21
    return [w, s, e, n], {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def s2_l2a_item(root: Path, base_url: str, item_id: str, *, size: int = 60, bands: int = 13,
                noise: int = 0) -> dict[str, Any]:
    """Write a per-band item under root/data/<id>/ (absolute asset hrefs) and return its JSON."""
    folder = root / "data" / item_id
    assets: dict[str, Any] = {}
    for name, common, res, wavelength in S2_L2A_BANDS[:bands]:
        px = size * 10 // res
        data = band_values(name, size, noise)[:: res // 10, :: res // 10][:px, :px]
        path = write_cog(folder / f"{name}.tif", data, float(res))
        assets[name] = {
            "href": f"{base_url}/data/{item_id}/{name}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": f"Band {name} ({common}) - {res}m",
            "roles": ["data"],
            "gsd": res,
            "eo:bands": [{"name": name, "common_name": common, "center_wavelength": wavelength}],
            "proj:shape": [px, px],
            "proj:transform": [float(res), 0.0, WEST, 0.0, -float(res), NORTH],
            "file:size": path.stat().st_size,
            "file:checksum": _multihash(path),
        }
    thumb = folder / "thumbnail.png"
    thumb.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assets["thumbnail"] = {"href": f"{base_url}/data/{item_id}/thumbnail.png", "type": "image/png",
                           "roles": ["thumbnail"]}
    meta = folder / "granule_metadata.xml"
    meta.write_text(f"<Level-2A_Tile_ID><id>{item_id}</id></Level-2A_Tile_ID>\n")
    assets["granule_metadata"] = {"href": f"{base_url}/data/{item_id}/granule_metadata.xml",
                                  "type": "application/xml", "roles": ["metadata"]}
    bbox, geometry = _geometry()
    return {
        "type": "Feature", "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/file/v2.1.0/schema.json"],
        "id": item_id, "bbox": bbox, "geometry": geometry, "collection": "sentinel-2-l2a",
        "properties": {"datetime": "2024-06-01T10:05:59Z", "platform": "sentinel-2b", "constellation": "sentinel-2",
                       "instruments": ["msi"], "eo:cloud_cover": 3.2, "proj:epsg": EPSG, "s2:mgrs_tile": "33UUP"},
        "links": [{"rel": "collection", "href": f"{base_url}/stac/collection.json", "type": "application/json"}],
        "assets": assets,
    }


def multiband_item(root: Path, base_url: str, item_id: str, *, size: int = 60) -> dict[str, Any]:
    """One 4-band COG (blue, green, red, nir) with `eo:bands` on its asset."""
    import numpy as np

    folder = root / "data" / item_id
    data = np.stack([band_values(b, size) for b in ("B02", "B03", "B04", "B08")])
    path = write_cog(folder / "scene.tif", data, 10.0)
    bbox, geometry = _geometry()
    return {
        "type": "Feature", "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "id": item_id, "bbox": bbox, "geometry": geometry,
        "properties": {"datetime": "2024-06-01T10:05:59Z", "platform": "demo"},
        "links": [],
        "assets": {"data": {"href": f"{base_url}/data/{item_id}/scene.tif", "type": "image/tiff; application=geotiff",
                            "roles": ["data"],
                            "eo:bands": [{"name": n, "common_name": c} for n, c in
                                         (("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir"))],
                            "file:size": path.stat().st_size, "file:checksum": _multihash(path)}},
    }


def write_site(root: Path, base_url: str, *, size: int = 60, bands: int = 13) -> dict[str, str]:
    """A collection with a per-band item and a multi-band item; returns their URLs."""
    s2 = s2_l2a_item(root, base_url, "S2B_MSIL2A_20240601_T33UUP", size=size, bands=bands)
    mb = multiband_item(root, base_url, "multiband-scene", size=size)
    stac = root / "stac"
    stac.mkdir(parents=True, exist_ok=True)
    for item in (s2, mb):
        (stac / f"{item['id']}.json").write_text(json.dumps(item, indent=1))
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": "sentinel-2-l2a", "description": "S2 L2A-like",
        "license": "proprietary", "extent": {"spatial": {"bbox": [s2["bbox"]]},
                                             "temporal": {"interval": [["2024-06-01T00:00:00Z", None]]}},
        "links": [{"rel": "item", "href": f"./{s2['id']}.json", "type": "application/geo+json"}],
    }
    (stac / "collection.json").write_text(json.dumps(collection, indent=1))
    return {"s2": f"{base_url}/stac/{s2['id']}.json", "multiband": f"{base_url}/stac/{mb['id']}.json",
            "collection": f"{base_url}/stac/collection.json", "s2_id": s2["id"], "mb_id": mb["id"]}
