"""ndvi: the vegetation index of every input raster, computed window by window with bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

import blockkit
from blockkit import BlockContext, FeatureCollection, WrongInputError
from blockkit.runtime.raster import map_windows, write_quicklook


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


@blockkit.processing_block
def ndvi_block(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
    """One NDVI raster per input raster, with the input's metadata."""
    red, nir = int(ctx.params["red_band"]), int(ctx.params["nir_band"])
    processes = int(ctx.params["processes"])
    out, taken = [], set()
    for feature in fc:
        fid = str(feature.get("id") or Path(feature["properties"]["up42.data_path"]).stem)
        src = ctx.input_path(feature)
        count = band_count(src, fid)
        if max(red, nir) > count:
            raise WrongInputError(
                f"feature {fid!r}: {src.name} has {count} band(s); red_band={red} and nir_band={nir} need {max(red, nir)}"
            )
        rel = unique_name(fid, taken)
        dst = map_windows(
            src, ctx.output_path(rel), ndvi, bands=(red, nir), dtype="float32", nodata=float("nan"), processes=processes
        )
        write_quicklook(dst, ctx.quicklook_path(Path(rel).stem), percentiles=(1.0, 99.0))
        ctx.logger.info("feature %s: NDVI of bands %d/%d -> %s", fid, red, nir, rel)
        out.append(
            ctx.derive_feature(
                feature, data_path=rel, id=Path(rel).stem, properties={"bands": ["ndvi"], "ndvi:red_band": red, "ndvi:nir_band": nir}
            )
        )
    return FeatureCollection(out)


if __name__ == "__main__":
    ndvi_block.run()
