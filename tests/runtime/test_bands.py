"""Bands by common name: one multi-band file, one file per band (mixed resolutions), descriptions, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.storage.s2like import band_values, write_cog  # noqa: E402

from blockkit.contract.errors import WrongInputError  # noqa: E402
from blockkit.runtime.bands import band_index, band_stack, has_bands, locate_bands  # noqa: E402
from blockkit.runtime.raster import map_windows  # noqa: E402


def _per_band(root: Path) -> dict:
    assets = {}
    for name, common, res in (("B04", "red", 10), ("B08", "nir", 10), ("B11", "swir16", 20)):
        data = band_values(name, 60)[:: res // 10, :: res // 10]
        write_cog(root / "item" / f"{name}.tif", data, float(res))
        assets[name] = {"href": f"item/{name}.tif", "roles": ["data"],
                        "eo:bands": [{"name": name, "common_name": common}]}
    assets["thumbnail"] = {"href": "item/thumb.png", "roles": ["thumbnail"]}
    return {"type": "Feature", "id": "s2", "geometry": None,
            "properties": {"up42.data_path": "item/B04.tif"}, "assets": assets}


def test_per_band_files_by_common_name_and_band_name(tmp_path: Path) -> None:
    feature = _per_band(tmp_path)
    refs = locate_bands(feature, tmp_path, ["nir", "red"])
    assert [(r.path.name, r.band) for r in refs] == [("B08.tif", 1), ("B04.tif", 1)]
    assert locate_bands(feature, tmp_path, ["B11"])[0].path.name == "B11.tif"
    with band_stack(feature, tmp_path, ["red", "nir", "swir16"]) as vrt:
        with rasterio.open(vrt) as src:
            assert src.count == 3 and (src.width, src.height) == (60, 60)  # finest grid: 10 m
            red, nir, swir = src.read()
    assert (red[10:, 10:] == 1000).all() and (nir[10:, 20:] == 3000).all()
    # the 20 m band is resampled onto the 10 m grid: each 20 m pixel covers 2x2 output pixels
    assert swir.shape == (60, 60) and (swir[::2, ::2] == swir[1::2, 1::2]).all()
    assert not vrt.exists()  # the stack is removed afterwards


def test_multiband_file_with_eo_bands_and_ndvi(tmp_path: Path) -> None:
    data = np.stack([band_values(b, 60) for b in ("B02", "B03", "B04", "B08")])
    write_cog(tmp_path / "scene.tif", data, 10.0)
    feature = {"type": "Feature", "id": "mb", "geometry": None,
               "properties": {"up42.data_path": "scene.tif",
                              "eo:bands": [{"name": "B02", "common_name": "blue"}, {"name": "B03", "common_name": "green"},
                                           {"name": "B04", "common_name": "red"}, {"name": "B08", "common_name": "nir"}]}}
    assert [(r.band) for r in locate_bands(feature, tmp_path, ["red", "nir"])] == [3, 4]

    def ndvi(w: np.ndarray) -> np.ndarray:
        red, nir = w[0].astype("float32"), w[1].astype("float32")
        return (nir - red) / np.where(nir + red == 0, np.nan, nir + red)

    with band_stack(feature, tmp_path, ["red", "nir"]) as vrt:
        out = map_windows(vrt, tmp_path / "ndvi.tif", ndvi, bands=(1, 2), dtype="float32", nodata=float("nan"))
    with rasterio.open(out) as src:
        result = src.read(1)
    assert np.allclose(result[10:, 20:], 0.5) and np.allclose(result[10:, 5:14], 0.0)


def test_band_descriptions_in_the_raster(tmp_path: Path) -> None:
    data = np.stack([band_values(b, 20) for b in ("B04", "B08")])
    write_cog(tmp_path / "x.tif", data, 10.0, descriptions=["Red", "NIR"])
    feature = {"type": "Feature", "id": "x", "geometry": None, "properties": {"up42.data_path": "x.tif"}}
    assert [r.band for r in locate_bands(feature, tmp_path, ["nir", "red"])] == [2, 1]


def test_missing_names_say_what_there_is(tmp_path: Path) -> None:
    feature = _per_band(tmp_path)
    assert not has_bands(feature, tmp_path, ["red", "swir22"])
    with pytest.raises(WrongInputError) as err:
        locate_bands(feature, tmp_path, ["red", "swir22"])
    line = err.value.headline()
    assert "'swir22'" in line and "nir" in line and "\n" not in line
    plain = {"type": "Feature", "id": "p", "geometry": None, "properties": {"up42.data_path": "item/B04.tif"}}
    assert band_index(plain, tmp_path) == {}


def test_hrefs_that_leave_the_input_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.tif"
    write_cog(outside, band_values("B04", 20), 10.0)
    root = tmp_path / "in"
    root.mkdir()
    (root / "link.tif").symlink_to(outside)
    for href in ("../secret.tif", "link.tif", "/etc/passwd"):
        feature = {"type": "Feature", "id": "evil", "geometry": None, "properties": {},
                   "assets": {"B04": {"href": href, "eo:bands": [{"common_name": "red"}]}}}
        with pytest.raises(WrongInputError) as err:
            locate_bands(feature, root, ["red"])
        assert "'evil'" in err.value.headline()


def test_bands_of_other_extent_or_crs_are_refused(tmp_path: Path) -> None:
    feature = _per_band(tmp_path)
    from rasterio.transform import from_origin

    with rasterio.open(tmp_path / "item" / "B08.tif", "w", driver="GTiff", width=60, height=60, count=1,
                       dtype="uint16", crs="EPSG:32633", transform=from_origin(500000.0, 5800020.0, 10, 10)) as dst:
        dst.write(band_values("B08", 60)[None])
    with pytest.raises(WrongInputError, match="another extent"):
        with band_stack(feature, tmp_path, ["red", "nir"]):
            pass


def test_only_the_bands_asked_for_must_be_there(tmp_path: Path) -> None:
    feature = _per_band(tmp_path)
    (tmp_path / "item" / "B11.tif").unlink()  # e.g. a band not forwarded by an upstream step
    assert has_bands(feature, tmp_path, ["red", "nir"])
    with pytest.raises(WrongInputError, match="does not exist"):
        locate_bands(feature, tmp_path, ["swir16"])
