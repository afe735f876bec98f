"""threshold: one band of every input raster becomes a 0/1 mask (255 = no data), window by window."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

import blockkit
from blockkit import BlockContext, FeatureCollection, WrongInputError
from blockkit.runtime.raster import map_windows, write_quicklook

MASK_NODATA = 255


def above(window: np.ndarray, threshold: float, nodata: float | None) -> np.ndarray:
    """1 where the (1, rows, cols) window exceeds the threshold, 0 elsewhere, 255 on no data and NaN."""
    values = window[0]
    mask = (values > threshold).astype("uint8")
    invalid = np.isnan(values) if np.issubdtype(values.dtype, np.floating) else np.zeros(values.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        invalid |= values == nodata
    mask[invalid] = MASK_NODATA
    return mask


def unique_name(stem: str, taken: set[str]) -> str:
    """``<stem>_mask.tif``, numbered when two inputs share an id."""
    name, n = f"{stem}_mask.tif", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}_mask.tif"
    taken.add(name)
    return name


@blockkit.processing_block
def threshold_block(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
    """One mask per input raster, with the input's metadata."""
    threshold, band = float(ctx.params["threshold"]), int(ctx.params["band"])
    out, taken = [], set()
    for feature in fc:
        fid = str(feature.get("id") or Path(feature["properties"]["up42.data_path"]).stem)
        src = ctx.input_path(feature)
        try:
            with rasterio.open(src) as raster:
                count, nodata = raster.count, raster.nodata
        except RasterioIOError as exc:
            raise WrongInputError(f"feature {fid!r}: {src.name} is not a readable raster ({exc})") from None
        if band > count:
            raise WrongInputError(f"feature {fid!r}: {src.name} has {count} band(s); band={band} does not exist")
        rel = unique_name(fid, taken)
        dst = map_windows(
            src,
            ctx.output_path(rel),
            functools.partial(above, threshold=threshold, nodata=nodata),
            bands=(band,),
            dtype="uint8",
            nodata=MASK_NODATA,
        )
        with rasterio.open(dst) as mask:
            fraction = mask_fraction(mask)
        write_quicklook(dst, ctx.quicklook_path(Path(rel).stem), percentiles=(0.0, 100.0))
        ctx.logger.info("feature %s: %.1f%% of valid pixels above %g -> %s", fid, 100 * fraction, threshold, rel)
        out.append(
            ctx.derive_feature(
                feature,
                data_path=rel,
                id=Path(rel).stem,
                properties={"bands": ["mask"], "threshold:value": threshold, "threshold:fraction": round(fraction, 6)},
            )
        )
    return FeatureCollection(out)


def mask_fraction(mask: rasterio.io.DatasetReader) -> float:
    """Share of valid pixels that are 1, read block by block."""
    ones = valid = 0
    for _, window in mask.block_windows(1):
        values = mask.read(1, window=window)
        ones += int((values == 1).sum())
        valid += int((values != MASK_NODATA).sum())
    return ones / valid if valid else 0.0


if __name__ == "__main__":
    threshold_block.run()
