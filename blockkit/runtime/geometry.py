"""Geometry helpers for block authors: UTM zones, bounding boxes, AOI clipping and size checks.

GeoJSON geometries are plain dicts in WGS84 longitude/latitude (RFC 7946).
shapely is imported inside the functions that need it, so importing this
module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from blockkit.contract.errors import GeometryError, InputParametersError

__all__ = [
    "utm_zone",
    "utm_epsg",
    "bbox_of",
    "bbox_to_polygon",
    "with_bbox",
    "clip_to_aoi",
    "aoi_area_km2",
    "check_aoi_size",
]

BBox = tuple[float, float, float, float]

# Authalic (equal-area) radius of the WGS84 ellipsoid: a sphere with the
# ellipsoid's surface area, so spherical areas stay within ~0.5% of geodesic ones.
_AUTHALIC_RADIUS_M = 6_371_007.2


def _check_lon_lat(lon: float, lat: float) -> None:
    if not (math.isfinite(lon) and math.isfinite(lat)) or not -180.0 <= lon <= 180.0 or not -90.0 <= lat <= 90.0:
        raise GeometryError(f"longitude/latitude out of range: ({lon}, {lat})")


def utm_zone(lon: float, lat: float) -> int:
    """The UTM zone number (1-60) of a WGS84 point, with the Norway and Svalbard exceptions."""
    _check_lon_lat(lon, lat)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        return 32  # zone 32V is widened west to cover all of south-western Norway
    if 72.0 <= lat <= 84.0 and 0.0 <= lon < 42.0:
        # Svalbard: zones 31X, 33X, 35X, 37X are widened; 32X, 34X, 36X do not exist.
        if lon < 9.0:
            return 31
        if lon < 21.0:
            return 33
        if lon < 33.0:
            return 35
        return 37
    return min(int((lon + 180.0) // 6.0) + 1, 60)


def utm_epsg(lon: float, lat: float) -> int:
    """The EPSG code of the WGS84 / UTM zone of a point: 326xx north of the equator, 327xx south."""
    zone = utm_zone(lon, lat)
    return (32600 if lat >= 0.0 else 32700) + zone


def _positions(coords: Any) -> Iterator[Sequence[float]]:
    """Every position in a (nested) GeoJSON coordinates array."""
    if isinstance(coords, Sequence) and coords and isinstance(coords[0], (int, float)):
        yield coords
        return
    for part in coords or ():
        yield from _positions(part)


def _geometries(obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The geometries inside a geometry, Feature, FeatureCollection or GeometryCollection."""
    kind = obj.get("type")
    if kind == "FeatureCollection":
        for feature in obj.get("features") or ():
            yield from _geometries(feature)
    elif kind == "Feature":
        if obj.get("geometry"):
            yield from _geometries(obj["geometry"])
    elif kind == "GeometryCollection":
        for geometry in obj.get("geometries") or ():
            yield from _geometries(geometry)
    elif kind is not None:
        yield obj


def bbox_of(geojson: Mapping[str, Any]) -> BBox:
    """The (west, south, east, north) bounds of a GeoJSON geometry, Feature or FeatureCollection."""
    west = south = math.inf
    east = north = -math.inf
    for geometry in _geometries(geojson):
        for position in _positions(geometry.get("coordinates")):
            lon, lat = float(position[0]), float(position[1])
            west, east = min(west, lon), max(east, lon)
            south, north = min(south, lat), max(north, lat)
    if west == math.inf:
        raise GeometryError("bbox_of: the GeoJSON object has no coordinates")
    return west, south, east, north


def with_bbox(feature: dict[str, Any], keep: Sequence[float] | None = None) -> dict[str, Any]:
    """The feature with a `bbox` (UP42 features carry one; blocks like Sharpening read it).

    `keep` (an input feature's bbox, when the geometry is the input's) wins; otherwise a bbox
    the feature already has stays, else it is computed from the geometry. A feature without
    geometry gets none.
    """
    from blockkit.contract._datajson import geometry_bounds

    if keep is not None:
        feature["bbox"] = list(keep)
    elif "bbox" not in feature:
        bounds = geometry_bounds(feature.get("geometry"))
        if bounds is not None:
            feature["bbox"] = bounds
    return feature


def bbox_to_polygon(bbox: Sequence[float]) -> dict[str, Any]:
    """A GeoJSON Polygon (counter-clockwise, RFC 7946) for a (west, south, east, north) box."""
    west, south, east, north = (float(v) for v in bbox)
    if west > east or south > north:
        raise GeometryError(f"bbox_to_polygon: expected (west, south, east, north), got {tuple(bbox)}")
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def _as_geometry(value: Mapping[str, Any] | Sequence[float]) -> Mapping[str, Any]:
    """A GeoJSON geometry from a geometry, a Feature, or a bbox sequence."""
    if isinstance(value, Mapping):
        if value.get("type") == "Feature":
            geometry = value.get("geometry")
            if not geometry:
                raise GeometryError("the feature has no geometry")
            return cast("Mapping[str, Any]", geometry)
        return value
    return bbox_to_polygon(value)


def clip_to_aoi(
    geometry: Mapping[str, Any] | Sequence[float],
    aoi: Mapping[str, Any] | Sequence[float],
) -> dict[str, Any] | None:
    """The part of ``geometry`` inside ``aoi`` (geometries, Features or bboxes), or None when they do not meet."""
    from shapely.geometry import mapping, shape
    from shapely.validation import make_valid

    a = shape(_as_geometry(geometry))
    b = shape(_as_geometry(aoi))
    # Hand-drawn AOIs are often self-intersecting; repair rather than fail.
    a = a if a.is_valid else make_valid(a)
    b = b if b.is_valid else make_valid(b)
    clipped = a.intersection(b)
    if clipped.is_empty:
        return None
    return dict(mapping(clipped))


def _ring_area_m2(ring: Sequence[Sequence[float]]) -> float:
    """Signed area of a lon/lat ring on the authalic sphere (Chamberlain & Duquette, 2007)."""
    total = 0.0
    n = len(ring)
    if n < 4:
        return 0.0
    for i in range(n - 1):
        lon1, lat1 = ring[i][0], ring[i][1]
        lon2, lat2 = ring[i + 1][0], ring[i + 1][1]
        total += math.radians(lon2 - lon1) * (2.0 + math.sin(math.radians(lat1)) + math.sin(math.radians(lat2)))
    return total * _AUTHALIC_RADIUS_M**2 / 2.0


def _polygon_area_m2(rings: Sequence[Sequence[Sequence[float]]]) -> float:
    if not rings:
        return 0.0
    outer = abs(_ring_area_m2(rings[0]))
    holes = sum(abs(_ring_area_m2(r)) for r in rings[1:])
    return max(outer - holes, 0.0)


def aoi_area_km2(geojson: Mapping[str, Any] | Sequence[float]) -> float:
    """Area in km² of a (Multi)Polygon geometry, Feature, FeatureCollection or bbox, on the equal-area sphere."""
    obj = bbox_to_polygon(geojson) if not isinstance(geojson, Mapping) else geojson
    total = 0.0
    for geometry in _geometries(obj):
        kind = geometry.get("type")
        coords = geometry.get("coordinates") or []
        if kind == "Polygon":
            total += _polygon_area_m2(coords)
        elif kind == "MultiPolygon":
            total += sum(_polygon_area_m2(polygon) for polygon in coords)
        # Points and lines have no area.
    return total / 1e6


def check_aoi_size(geojson: Mapping[str, Any] | Sequence[float], max_km2: float) -> float:
    """Return the AOI's area in km², or raise InputParametersError when it exceeds ``max_km2``."""
    area = aoi_area_km2(geojson)
    if area > max_km2:
        raise InputParametersError(
            f"the area of interest is {area:,.1f} km², larger than this block's maximum of {max_km2:,.1f} km²; "
            "use a smaller bbox or intersects geometry"
        )
    return area
