"""Raster helpers on real GeoTIFFs: windowed processing, COGs and quicklooks."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from blockkit.runtime.raster import iter_windows, map_windows, write_cog, write_quicklook


def ndvi(array: np.ndarray) -> np.ndarray:
    red, nir = array[0].astype("float32"), array[1].astype("float32")
    with np.errstate(divide="ignore", invalid="ignore"):
        return (nir - red) / (nir + red)


def scaled(array: np.ndarray, factor: int) -> np.ndarray:
    return array * factor


def wrong_shape(array: np.ndarray) -> np.ndarray:
    return array[:, :-1, :]


def write_scene(
    path: Path,
    *,
    size: tuple[int, int] = (300, 400),
    count: int = 4,
    tiled: bool = True,
    block: int = 128,
    nodata: float | None = None,
    dtype: str = "uint16",
) -> np.ndarray:
    rows, cols = size
    rng = np.random.default_rng(7)
    data = rng.integers(1, 5000, size=(count, rows, cols)).astype(dtype)
    profile = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": count,
        "dtype": dtype,
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5800000, 10, 10),
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_windows_cover_the_raster_exactly_once() -> None:
    seen = np.zeros((300, 400), dtype=int)
    for window in iter_windows(400, 300, (128, 128)):
        seen[window.toslices()] += 1
    assert (seen == 1).all()


def test_windowed_result_equals_the_whole_array_computation(tmp_path: Path) -> None:
    data = write_scene(tmp_path / "scene.tif")
    out = map_windows(tmp_path / "scene.tif", tmp_path / "ndvi.tif", ndvi, bands=(3, 4), dtype="float32")
    result = read(out)
    assert result.shape == (1, 300, 400)
    np.testing.assert_array_equal(result[0], ndvi(data[[2, 3]]))
    with rasterio.open(out) as dst, rasterio.open(tmp_path / "scene.tif") as src:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert dst.profile["tiled"] and dst.block_shapes[0] == (128, 128)  # windows follow the source tiles
        assert dst.compression is not None
    assert not list(tmp_path.glob(".*partial*"))


def test_multiband_output_and_odd_window_size(tmp_path: Path) -> None:
    data = write_scene(tmp_path / "scene.tif", tiled=False)
    out = map_windows(
        tmp_path / "scene.tif",
        tmp_path / "x2.tif",
        functools.partial(scaled, factor=2),
        dtype="uint32",
        count=4,
        window_size=(100, 70),
    )
    np.testing.assert_array_equal(read(out), data.astype("uint32") * 2)


def test_two_processes_give_the_same_raster_as_one(tmp_path: Path) -> None:
    write_scene(tmp_path / "scene.tif", size=(520, 530))
    one = map_windows(tmp_path / "scene.tif", tmp_path / "one.tif", ndvi, bands=(3, 4), dtype="float32")
    two = map_windows(
        tmp_path / "scene.tif", tmp_path / "two.tif", ndvi, bands=(3, 4), dtype="float32", processes=2
    )
    np.testing.assert_array_equal(read(one), read(two))


def test_forked_workers_accept_a_lambda(tmp_path: Path) -> None:
    data = write_scene(tmp_path / "scene.tif", size=(256, 300))
    offset = 3
    out = map_windows(
        tmp_path / "scene.tif", tmp_path / "o.tif", lambda a: a + offset, dtype="uint16", count=4, processes=2
    )
    np.testing.assert_array_equal(read(out), data + 3)


def test_spawned_workers_need_a_picklable_function(tmp_path: Path) -> None:
    write_scene(tmp_path / "scene.tif")
    with pytest.raises(TypeError, match="picklable"):
        map_windows(
            tmp_path / "scene.tif",
            tmp_path / "o.tif",
            lambda a: a,
            dtype="uint16",
            count=4,
            processes=2,
            start_method="spawn",
        )


def test_source_nodata_becomes_output_nodata(tmp_path: Path) -> None:
    data = write_scene(tmp_path / "scene.tif", nodata=0)
    data[:, :10, :] = 0  # a strip with no data
    data[3, 50:60, 50:60] = 0  # NIR missing only: the pixel is still invalid
    with rasterio.open(tmp_path / "scene.tif", "r+") as dst:
        dst.write(data)
    out = map_windows(tmp_path / "scene.tif", tmp_path / "ndvi.tif", ndvi, bands=(3, 4), dtype="float32", nodata=-9999)
    with rasterio.open(out) as dst:
        assert dst.nodata == -9999
        result = dst.read(1)
    assert (result[:10] == -9999).all()
    assert (result[50:60, 50:60] == -9999).all()
    valid = result[10:50]
    assert ((valid >= -1) & (valid <= 1)).all()


def test_wrong_shape_from_the_function_is_reported_and_leaves_no_file(tmp_path: Path) -> None:
    write_scene(tmp_path / "scene.tif")
    with pytest.raises(ValueError, match="expected"):
        map_windows(tmp_path / "scene.tif", tmp_path / "bad.tif", wrong_shape, dtype="uint16", count=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_unknown_band_is_rejected(tmp_path: Path) -> None:
    write_scene(tmp_path / "scene.tif", count=2)
    with pytest.raises(ValueError, match="band 4"):
        map_windows(tmp_path / "scene.tif", tmp_path / "o.tif", ndvi, bands=(1, 4), dtype="float32")


def test_write_cog_from_a_file_is_tiled_with_overviews(tmp_path: Path) -> None:
    data = write_scene(tmp_path / "scene.tif", size=(1024, 1024), tiled=False)
    cog = write_cog(tmp_path / "scene.tif", tmp_path / "scene_cog.tif")
    with rasterio.open(cog) as src:
        assert src.profile["tiled"]
        assert src.block_shapes[0] == (512, 512)
        assert src.overviews(1), "a COG has internal overviews"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(src.read(), data)


def test_write_cog_from_an_array(tmp_path: Path) -> None:
    array = np.arange(1024 * 1024, dtype="float32").reshape(1024, 1024)
    cog = write_cog(
        array, tmp_path / "a.tif", transform=from_origin(10, 50, 0.001, 0.001), crs="EPSG:4326", blocksize=256
    )
    with rasterio.open(cog) as src:
        assert src.count == 1 and src.crs.to_epsg() == 4326
        assert src.block_shapes[0] == (256, 256)
        assert src.overviews(1)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with pytest.raises(ValueError, match="transform"):
        write_cog(array, tmp_path / "b.tif")


def test_quicklook_is_512_on_its_long_side_and_keeps_the_aspect(tmp_path: Path) -> None:
    write_scene(tmp_path / "scene.tif", size=(600, 1200))
    png = write_quicklook(tmp_path / "scene.tif", tmp_path / "ql" / "scene.png")
    with rasterio.open(png) as ql:
        assert ql.driver == "PNG"
        assert (ql.width, ql.height) == (512, 256)
        assert ql.count == 3
        image = ql.read()
    assert image.min() == 0 and image.max() == 255  # the percentile stretch uses the full range
    assert sorted(p.name for p in (tmp_path / "ql").iterdir()) == ["scene.png"]


def test_a_quicklook_of_a_small_raster_is_never_larger_than_the_raster(tmp_path: Path) -> None:
    write_scene(tmp_path / "small.tif", size=(63, 64))
    with rasterio.open(write_quicklook(tmp_path / "small.tif", tmp_path / "small.png")) as ql:
        assert (ql.width, ql.height) == (64, 63)  # was: 512 x 504, the data's pixels 64 times over


def test_quicklook_of_one_band_with_nodata_has_alpha(tmp_path: Path) -> None:
    data = write_scene(tmp_path / "scene.tif", size=(256, 256), count=1, nodata=0, dtype="float32")
    data[0, :64] = 0
    with rasterio.open(tmp_path / "scene.tif", "r+") as dst:
        dst.write(data)
    png = write_quicklook(tmp_path / "scene.tif", tmp_path / "q.png", size=128)
    with rasterio.open(png) as ql:
        assert (ql.width, ql.height, ql.count) == (128, 128, 2)
        alpha = ql.read(2)
    assert (alpha[:32] == 0).all() and (alpha[32:] == 255).all()


def fails_on_the_second_row(array: np.ndarray) -> np.ndarray:
    if array.shape[1] < 128:
        raise RuntimeError("edge window")
    return array


def test_an_error_in_a_worker_reaches_the_caller_and_leaves_no_file(tmp_path: Path) -> None:
    write_scene(tmp_path / "scene.tif")  # 300 rows: the last window row is 44 rows high
    with pytest.raises(RuntimeError, match="edge window"):
        map_windows(
            tmp_path / "scene.tif", tmp_path / "o.tif", fails_on_the_second_row, dtype="uint16", count=4, processes=2
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_a_striped_source_is_processed_in_512_windows(tmp_path: Path) -> None:
    data = write_scene(tmp_path / "scene.tif", size=(600, 700), count=2, tiled=False)
    out = map_windows(tmp_path / "scene.tif", tmp_path / "o.tif", ndvi, dtype="float32")
    with rasterio.open(out) as dst:
        assert dst.block_shapes[0] == (512, 512)
        np.testing.assert_array_equal(dst.read(1), ndvi(data))
