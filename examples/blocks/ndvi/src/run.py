"""ndvi: the vegetation index of every input raster, computed window by window with bounded memory.

Bands are found by common name (`red`, `nir`) when the input says which they are: a staged STAC item with
`eo:bands` (one multi-band file, or one file per band like Sentinel-2 L2A), or band descriptions in the
raster. Otherwise the `red_band` / `nir_band` parameters pick bands of the data_path raster by number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

import blockkit
from blockkit import BlockContext, FeatureCollection, WrongInputError
from blockkit.runtime.bands import band_stack, has_bands
from blockkit.runtime.raster import map_windows, write_quicklook

NAMES = ("red", "nir")


def ndvi(window: np.ndarray) -> np.ndarray:
    """NDVI of a (2, rows, cols) red/NIR window; where NIR + red is 0 the result is NaN."""
    red = window[0].astype("float32")
    nir = window[1].astype("float32")
    total = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total != 0, (nir - red) / total, np.float32("nan"))


def band_count(path: Path, feature_id: str) -> int:
    """How many bands the input raster has, or a WRONG_INPUT_ERROR naming the feature."""
    try:
        with rasterio.open(path) as src:
            return src.count
    except RasterioIOError as exc:
        raise WrongInputError(f"feature {feature_id!r}: {path.name} is not a readable raster ({exc})") from None


def unique_name(stem: str, taken: set[str]) -> str:
    """``<stem>_ndvi.tif``, numbered when two inputs share an id (fan-in of two steps)."""
    name, n = f"{stem}_ndvi.tif", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}_ndvi.tif"
    taken.add(name)
    return name


DEFAULT_BANDS = (3, 4)  # the manifest's red_band / nir_band defaults


@blockkit.processing_block
def ndvi_block(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
    """One NDVI raster per input raster, with the input's metadata."""
    red, nir = int(ctx.params["red_band"]), int(ctx.params["nir_band"])
    processes = int(ctx.params["processes"])
    out, taken = [], set()
    for feature in fc:
        fid = str(feature.get("id") or Path(feature["properties"]["up42.data_path"]).stem)
        rel = unique_name(fid, taken)
        if has_bands(feature, ctx.input_dir, NAMES):
            # named bands: one multi-band file or one file per band, stacked as a VRT (no copy)
            with band_stack(feature, ctx.input_dir, NAMES) as stack:
                dst = map_windows(stack, ctx.output_path(rel), ndvi, bands=(1, 2), dtype="float32",
                                  nodata=float("nan"), processes=processes)
            used: dict[str, object] = {"ndvi:bands": list(NAMES), "eo:bands": [{"name": "ndvi"}]}
            ctx.logger.info("feature %s: NDVI of bands red/nir by name -> %s", fid, rel)
            if (red, nir) != DEFAULT_BANDS:  # asked for, so say that it is not what was used
                ctx.logger.warning("feature %s: red_band=%d / nir_band=%d not used: the input names its red and "
                                   "nir bands", fid, red, nir)
        else:
            src = ctx.input_path(feature)
            count = band_count(src, fid)
            if max(red, nir) > count:
                raise WrongInputError(
                    f"feature {fid!r}: {src.name} has {count} band(s); red_band={red} and nir_band={nir} need {max(red, nir)}"
                )
            dst = map_windows(
                src, ctx.output_path(rel), ndvi, bands=(red, nir), dtype="float32", nodata=float("nan"),
                processes=processes,
            )
            used = {"ndvi:red_band": red, "ndvi:nir_band": nir, "eo:bands": [{"name": "ndvi"}]}
            ctx.logger.info("feature %s: NDVI of bands %d/%d -> %s", fid, red, nir, rel)
        write_quicklook(dst, ctx.quicklook_path(Path(rel).stem), percentiles=(1.0, 99.0))
        out.append(ctx.derive_feature(feature, data_path=rel, id=Path(rel).stem, properties={"bands": ["ndvi"], **used}))
    return FeatureCollection(out)


if __name__ == "__main__":
    ndvi_block.run()
