"""Geometry helpers: UTM zones of known places, bounding boxes, AOI clip, area and size checks."""

from __future__ import annotations

import math

import pytest

from blockkit.contract.errors import ExitCode, InputParametersError
from blockkit.runtime.geometry import (
    aoi_area_km2,
    bbox_of,
    bbox_to_polygon,
    check_aoi_size,
    clip_to_aoi,
    utm_epsg,
    utm_zone,
)


@pytest.mark.parametrize(
    ("place", "lon", "lat", "zone", "epsg"),
    [
        ("Berlin", 13.405, 52.52, 33, 32633),
        ("Greenwich", 0.0, 51.48, 31, 32631),
        ("just west of Greenwich", -0.1, 51.5, 30, 32630),
        ("Bergen (32V exception)", 5.32, 60.39, 32, 32632),
        ("Stavanger (32V exception)", 5.73, 58.97, 32, 32632),
        ("Shetland, west of 32V", 2.9, 60.3, 31, 32631),
        ("Longyearbyen (33X)", 15.63, 78.22, 33, 32633),
        ("Ny-Alesund (33X widened west)", 11.93, 78.92, 33, 32633),
        ("Svalbard east (35X)", 25.0, 79.0, 35, 32635),
        ("Franz Josef Land edge (37X)", 40.0, 80.0, 37, 32637),
        ("Sydney", 151.21, -33.87, 56, 32756),
        ("Rio de Janeiro", -43.2, -22.9, 23, 32723),
        ("Cape Town", 18.42, -33.92, 34, 32734),
        ("date line west", -180.0, 10.0, 1, 32601),
        ("date line east", 180.0, -10.0, 60, 32760),
        ("equator is north", 9.0, 0.0, 32, 32632),
    ],
)
def test_utm_zone_of_known_places(place: str, lon: float, lat: float, zone: int, epsg: int) -> None:
    assert utm_zone(lon, lat) == zone, place
    assert utm_epsg(lon, lat) == epsg, place


def test_utm_zone_rejects_impossible_coordinates() -> None:
    with pytest.raises(ValueError, match="out of range"):
        utm_zone(200.0, 10.0)
    with pytest.raises(ValueError, match="out of range"):
        utm_epsg(10.0, float("nan"))


def test_bbox_of_geometry_feature_and_collection() -> None:
    polygon = {"type": "Polygon", "coordinates": [[[1, 2], [5, 2], [5, 8], [1, 8], [1, 2]]]}
    point = {"type": "Point", "coordinates": [-3.5, 10.0]}
    assert bbox_of(polygon) == (1, 2, 5, 8)
    assert bbox_of({"type": "Feature", "geometry": point, "properties": {}}) == (-3.5, 10.0, -3.5, 10.0)
    collection = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": polygon, "properties": {}},
            {"type": "Feature", "geometry": None, "properties": {}},
            {"type": "Feature", "geometry": point, "properties": {}},
        ],
    }
    assert bbox_of(collection) == (-3.5, 2, 5, 10.0)
    with pytest.raises(ValueError, match="no coordinates"):
        bbox_of({"type": "FeatureCollection", "features": []})


def test_bbox_to_polygon_is_a_closed_counter_clockwise_ring() -> None:
    ring = bbox_to_polygon((10, 20, 11, 21))["coordinates"][0]
    assert ring[0] == ring[-1]
    signed = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:]))
    assert signed > 0  # counter-clockwise exterior, as RFC 7946 asks
    with pytest.raises(ValueError):
        bbox_to_polygon((11, 20, 10, 21))


def test_clip_to_aoi_keeps_only_the_overlap() -> None:
    scene = bbox_to_polygon((0, 0, 2, 2))
    clipped = clip_to_aoi(scene, (1, 1, 3, 3))
    assert clipped is not None
    assert bbox_of(clipped) == (1, 1, 2, 2)
    assert clip_to_aoi(scene, (5, 5, 6, 6)) is None


def test_clip_to_aoi_repairs_a_self_intersecting_aoi() -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}
    clipped = clip_to_aoi({"type": "Feature", "geometry": bbox_to_polygon((0, 0, 2, 1)), "properties": {}}, bowtie)
    assert clipped is not None
    assert clipped["type"] in {"Polygon", "MultiPolygon"}


def test_aoi_area_matches_the_spherical_formula_and_utm_projection() -> None:
    # A 1 x 1 degree cell at the equator: R^2 * dlon * sin(1 deg) on the authalic sphere.
    expected = 6_371_007.2**2 * math.radians(1) * math.sin(math.radians(1)) / 1e6
    assert aoi_area_km2((0, 0, 1, 1)) == pytest.approx(expected, rel=1e-9)
    # A small box near Berlin measured in its UTM zone by rasterio/PROJ agrees within 0.5%.
    from rasterio.warp import transform_geom
    from shapely.geometry import shape

    box = bbox_to_polygon((13.3, 52.4, 13.5, 52.6))
    projected = shape(transform_geom("EPSG:4326", f"EPSG:{utm_epsg(13.4, 52.5)}", box)).area / 1e6
    assert aoi_area_km2(box) == pytest.approx(projected, rel=5e-3)


def test_aoi_area_subtracts_holes_and_ignores_points() -> None:
    outer = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]
    hole = [[0.25, 0.25], [0.25, 0.75], [0.75, 0.75], [0.75, 0.25], [0.25, 0.25]]
    full = aoi_area_km2({"type": "Polygon", "coordinates": [outer]})
    holed = aoi_area_km2({"type": "Polygon", "coordinates": [outer, hole]})
    assert holed == pytest.approx(full * 0.75, rel=1e-3)
    assert aoi_area_km2({"type": "Point", "coordinates": [0, 0]}) == 0.0
    multi = {"type": "MultiPolygon", "coordinates": [[outer], [[[2, 0], [3, 0], [3, 1], [2, 1], [2, 0]]]]}
    assert aoi_area_km2(multi) == pytest.approx(2 * full, rel=1e-9)


def test_check_aoi_size_raises_a_one_line_parameter_error() -> None:
    small = bbox_to_polygon((13.3, 52.4, 13.31, 52.41))
    assert check_aoi_size(small, max_km2=10) < 10
    with pytest.raises(InputParametersError) as raised:
        check_aoi_size((0, 0, 1, 1), max_km2=100)
    error = raised.value
    assert error.exit_code == ExitCode.INPUT_PARAMETERS_ERROR
    assert "\n" not in error.headline()
    assert "12,363.7 km²" in error.message and "100.0 km²" in error.message
