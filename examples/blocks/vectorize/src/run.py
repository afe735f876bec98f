"""vectorize: the pixels of a mask become WGS84 polygons (a GeoJSON file per input, their union, a PNG quicklook)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioIOError
from rasterio.features import shapes
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient
from shapely.ops import unary_union
from shapely.validation import make_valid

import blockkit
from blockkit import BlockContext, FeatureCollection, WrongInputError
from blockkit.runtime.geometry import aoi_area_km2
from blockkit.runtime.raster import write_vector_quicklook


def polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """Only the polygon parts of a geometry, valid and counter-clockwise outside (RFC 7946)."""
    if not geometry.is_valid:
        geometry = make_valid(geometry)
    if geometry.geom_type == "GeometryCollection":
        geometry = unary_union([g for g in geometry.geoms if g.geom_type in ("Polygon", "MultiPolygon")])
    if geometry.geom_type == "Polygon":
        return orient(geometry, 1.0)
    if geometry.geom_type == "MultiPolygon":
        return type(geometry)([orient(p, 1.0) for p in geometry.geoms])
    return geometry.__class__()  # lines or points left after repair: nothing with an area


def polygons_of(path: Path, fid: str, params: dict[str, Any]) -> list[tuple[BaseGeometry, float]]:
    """The mask's polygons in WGS84 with their areas in m², simplified and filtered by size."""
    try:
        raster = rasterio.open(path)
    except RasterioIOError as exc:
        raise WrongInputError(f"feature {fid!r}: {path.name} is not a readable raster ({exc})") from None
    with raster:
        band = int(params["band"])
        if band > raster.count:
            raise WrongInputError(f"feature {fid!r}: {path.name} has {raster.count} band(s); band={band} does not exist")
        if raster.crs is None:
            raise WrongInputError(f"feature {fid!r}: {path.name} has no CRS, so its polygons cannot be placed on Earth")
        # rasterio's shapes() needs the whole band: one byte per pixel for a mask.
        values = raster.read(band)
        crs, transform = raster.crs, raster.transform
    selected = values == int(params["value"])
    tolerance = float(params["simplify_pixels"]) * abs(transform.a)
    found: list[tuple[BaseGeometry, float]] = []
    for geometry, _ in shapes(values, mask=selected, transform=transform, connectivity=int(params["connectivity"])):
        polygon = shape(geometry)
        if tolerance:
            polygon = polygon.simplify(tolerance, preserve_topology=True)
        if polygon.is_empty:
            continue
        wgs84 = polygonal(shape(transform_geom(crs, "EPSG:4326", mapping(polygon))))
        if wgs84.is_empty:
            continue
        area = aoi_area_km2(mapping(wgs84)) * 1e6
        if area >= float(params["min_area_m2"]):
            found.append((wgs84, area))
    return found


def write_geojson(path: Path, fid: str, polygons: list[tuple[BaseGeometry, float]], value: int) -> None:
    """A FeatureCollection of the polygons, written atomically."""
    collection = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": f"{fid}-{i}",
                "geometry": mapping(polygon),
                "properties": {"value": value, "area_m2": round(area, 2)},
            }
            for i, (polygon, area) in enumerate(polygons)
        ],
    }
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(collection), encoding="utf-8")
    os.replace(partial, path)


@blockkit.processing_block
def vectorize_block(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
    """One polygon file and one merged-geometry feature per input mask."""
    out, taken = [], set()
    for feature in fc:
        fid = str(feature.get("id") or Path(feature["properties"]["up42.data_path"]).stem)
        polygons = polygons_of(ctx.input_path(feature), fid, ctx.params)
        rel, n = f"{fid}_polygons.geojson", 1
        while rel in taken:
            n += 1
            rel = f"{fid}_{n}_polygons.geojson"
        taken.add(rel)
        write_geojson(ctx.output_path(rel), fid, polygons, int(ctx.params["value"]))
        merged = polygonal(unary_union([p for p, _ in polygons])) if polygons else None
        if polygons:
            # Covers exactly the merged geometry's bounds: a viewer places it at the feature's bbox.
            write_vector_quicklook([mapping(p) for p, _ in polygons], ctx.quicklook_path(Path(rel).stem))
        total = sum(area for _, area in polygons)
        ctx.logger.info("feature %s: %d polygon(s), %.0f m² -> %s", fid, len(polygons), total, rel)
        out.append(
            ctx.derive_feature(
                feature,
                data_path=rel,
                id=Path(rel).stem,
                geometry=dict(mapping(merged)) if merged is not None and not merged.is_empty else None,
                properties={"vectorize:polygons": len(polygons), "vectorize:area_m2": round(total, 2)},
            )
        )
    return FeatureCollection(out)


if __name__ == "__main__":
    vectorize_block.run()
