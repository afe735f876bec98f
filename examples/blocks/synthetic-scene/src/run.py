"""synthetic-scene: a deterministic 4-band (blue, green, red, NIR) scene for any area, with no network."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.features import geometry_mask
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window

import blockkit
from blockkit import BlockContext, FeatureCollection, Query
from blockkit.runtime.geometry import bbox_of, bbox_to_polygon, check_aoi_size, utm_epsg
from blockkit.runtime.raster import write_quicklook

BANDS = ("blue", "green", "red", "nir")
DEFAULT_BBOX = (13.35, 52.50, 13.40, 52.53)  # Berlin Tiergarten and around: 3.4 x 3.3 km
DEFAULT_DATETIME = "2024-06-15T10:30:00Z"
MAX_AREA_KM2 = 2500.0
TILE = 256

# Surface reflectance x 10000 (the Sentinel-2 L2A scale) of bare soil, dense
# vegetation and clear water: NIR is high only over vegetation, so NDVI is
# about 0.17 on soil, 0.84 on vegetation and below 0 on water.
SOIL = np.array([1100, 1350, 1650, 2300], dtype="float32")[:, None, None]
VEGETATION = np.array([350, 650, 380, 4300], dtype="float32")[:, None, None]
WATER = np.array([700, 650, 420, 180], dtype="float32")[:, None, None]


class ValueNoise:
    """Seeded value noise that can be sampled at any pixel, so the scene is written strip by strip."""

    def __init__(self, rng: np.random.Generator, rows: int, cols: int, cell: float) -> None:
        self.cell = max(cell, 2.0)
        # 0.6 * cell rows for the parcels' narrow side; +3 for the interpolation's far neighbour.
        self.grid = rng.random((int(rows / (0.6 * self.cell)) + 3, int(cols / self.cell) + 3), dtype="float32")

    def smooth(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Bilinear interpolation with a smoothstep: rolling fields, lakes, forests."""
        gy, gx = ys / self.cell, xs / self.cell
        y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
        fy, fx = gy - y0, gx - x0
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
        g = self.grid
        top = g[y0, x0] * (1 - fx) + g[y0, x0 + 1] * fx
        bottom = g[y0 + 1, x0] * (1 - fx) + g[y0 + 1, x0 + 1] * fx
        return (top * (1 - fy) + bottom * fy).astype("float32")

    def parcels(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Piecewise-constant cells, long and narrow, every row of cells shifted: agricultural parcels."""
        row = np.floor(ys / (self.cell * 0.6)).astype(int)
        row = np.minimum(row, self.grid.shape[0] - 1)
        shift = (self.grid[row, 0] * self.cell).astype("float32")
        col = np.floor((xs + shift) / self.cell).astype(int)
        return self.grid[row, np.minimum(col, self.grid.shape[1] - 1)]


def render(rows: int, cols: int, seed: int, row_off: int, strip_rows: int) -> np.ndarray:
    """Rows ``row_off .. row_off + strip_rows`` of the scene as (4, strip_rows, cols) uint16."""
    rng = np.random.default_rng(seed)
    size = max(rows, cols)
    terrain = [ValueNoise(rng, rows, cols, size / d) for d in (3, 7, 17)]
    lakes = ValueNoise(rng, rows, cols, size / 4)
    fields = ValueNoise(rng, rows, cols, size / 11)
    texture = ValueNoise(rng, rows, cols, size / 60)
    ys = np.arange(row_off, row_off + strip_rows, dtype="float32")[:, None]
    xs = np.arange(cols, dtype="float32")[None, :]

    relief = 0.55 * terrain[0].smooth(ys, xs) + 0.3 * terrain[1].smooth(ys, xs) + 0.15 * terrain[2].smooth(ys, xs)
    vigor = fields.parcels(ys, xs)
    crops = np.clip((vigor - 0.4) / 0.45, 0, 1)  # some parcels bare, the others growing
    forest = np.clip((relief - 0.58) / 0.06, 0, 1)  # the hills are wooded
    vegetation = np.clip(np.maximum(crops, forest) + 0.25 * (texture.smooth(ys, xs) - 0.5), 0, 1)
    water = np.clip((0.3 - lakes.smooth(ys, xs)) / 0.03, 0, 1) * (relief < 0.55)

    scene = SOIL * (1 - vegetation) + VEGETATION * vegetation
    scene = scene * (1 - water) + WATER * water
    scene *= 0.92 + 0.16 * relief  # illumination follows the relief
    # Sensor noise from a generator of its own per strip: any strip can be made alone.
    noise = np.random.default_rng([seed, row_off]).normal(0, 25, size=scene.shape).astype("float32")
    return np.clip(scene + noise, 1, 10000).astype("uint16")  # 0 is nodata


def scene_id(seed: int, bbox: tuple[float, float, float, float], size: int) -> str:
    """A stable id: the same request always names the same scene, different requests never collide."""
    digest = hashlib.sha1(json.dumps([round(v, 9) for v in bbox] + [size, seed]).encode()).hexdigest()[:10]
    return f"synthetic-{seed}-{digest}"


def grid_for(bbox: tuple[float, float, float, float], size: int) -> tuple[int, Any, int, int]:
    """The scene's UTM EPSG code, transform and (rows, cols): square pixels, ``size`` on the long side."""
    west, south, east, north = bbox
    epsg = utm_epsg((west + east) / 2, (south + north) / 2)
    left, bottom, right, top = transform_bounds("EPSG:4326", f"EPSG:{epsg}", west, south, east, north, densify_pts=21)
    resolution = max(right - left, top - bottom) / size
    cols = max(1, round((right - left) / resolution))
    rows = max(1, round((top - bottom) / resolution))
    return epsg, from_origin(left, top, resolution, resolution), rows, cols


def footprint_in(bbox: tuple[float, float, float, float], crs: str) -> dict[str, Any]:
    """The bbox as a polygon in ``crs``, its edges densified so they bend as they should."""
    west, south, east, north = bbox
    steps = [i / 32 for i in range(32)]
    ring = (
        [(west + (east - west) * t, south) for t in steps]
        + [(east, south + (north - south) * t) for t in steps]
        + [(east - (east - west) * t, north) for t in steps]
        + [(west, north - (north - south) * t) for t in steps]
    )
    ring.append(ring[0])
    return transform_geom("EPSG:4326", crs, {"type": "Polygon", "coordinates": [ring]})


def write_scene(path: Path, bbox: tuple[float, float, float, float], size: int, seed: int) -> dict[str, Any]:
    """Write the scene GeoTIFF strip by strip (bounded memory at any size) and return its metadata."""
    epsg, transform, rows, cols = grid_for(bbox, size)
    # The UTM grid is a little larger than the lon/lat box (the box is rotated
    # in UTM): pixels outside it are no data, like a scene clipped to its AOI,
    # so the feature's geometry (the bbox) tells the truth about the pixels.
    footprint = footprint_in(bbox, f"EPSG:{epsg}")
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 4,
        "dtype": "uint16",
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, rows, TILE):
            height = min(TILE, rows - row)
            window = Window(0, row, cols, height)
            pixels = render(rows, cols, seed, row, height)
            outside = geometry_mask([footprint], out_shape=(height, cols), transform=rasterio.windows.transform(window, transform))
            pixels[:, outside] = 0
            dst.write(pixels, window=window)
        for index, name in enumerate(BANDS, start=1):
            dst.set_band_description(index, name)
    return {"proj:epsg": epsg, "gsd": round(transform.a, 3), "width": cols, "height": rows}


def requested_bbox(query: Query) -> tuple[float, float, float, float]:
    """The query's area as a bbox: bbox, or the bounds of intersects/contains, or the default."""
    if query.bbox:
        return tuple(float(v) for v in query.bbox)  # type: ignore[return-value]
    geometry = query.intersects or query.contains
    if geometry:
        return bbox_of(geometry)
    return DEFAULT_BBOX


def acquisition_datetime(query: Query) -> str:
    """The scene's date: the start of the requested time range (or its end when open-ended)."""
    if not query.time_range:
        return DEFAULT_DATETIME
    start, end = query.time_range
    moment = start or end
    if moment is None:
        return DEFAULT_DATETIME
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@blockkit.data_block
def synthetic_scene(query: Query, ctx: BlockContext) -> FeatureCollection:
    """One synthetic scene per requested seed, covering the query's area."""
    bbox = requested_bbox(query)
    check_aoi_size(bbox_to_polygon(bbox), MAX_AREA_KM2)
    size, seed = int(ctx.params["size"]), int(ctx.params["seed"])
    count = query.limit or int(ctx.params.get("limit") or 1)
    moment = acquisition_datetime(query)
    features = []
    for n in range(count):
        fid = scene_id(seed + n, bbox, size)
        properties: dict[str, Any] = {
            "datetime": moment,
            "constellation": "synthetic",
            "bands": list(BANDS),
            "synthetic:seed": seed + n,
            "synthetic:size": size,
        }
        data_path = None
        if not ctx.dry_run:
            data_path = f"{fid}.tif"
            properties.update(write_scene(ctx.output_path(data_path), bbox, size, seed + n))
            write_quicklook(ctx.output_dir / data_path, ctx.quicklook_path(fid), bands=(3, 2, 1))
            ctx.logger.info("wrote %s (%dx%d px)", data_path, properties["width"], properties["height"])
        features.append(ctx.new_feature(geometry=bbox_to_polygon(bbox), data_path=data_path, properties=properties, id=fid))
    return FeatureCollection(features)


if __name__ == "__main__":
    synthetic_scene.run()
