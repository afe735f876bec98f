"""{{display_name}}: a blockkit processing block (edit `process` to do your work)."""

from __future__ import annotations

import blockkit
from blockkit import BlockContext, FeatureCollection


@blockkit.processing_block
def process(fc: FeatureCollection, ctx: BlockContext) -> FeatureCollection:
    """Scale every input raster by the `factor` parameter, window by window."""
    import rasterio

    from blockkit.runtime.raster import map_windows

    factor = ctx.params["factor"]
    out = []
    for feature in fc:
        src = ctx.input_path(feature)
        with rasterio.open(src) as dataset:
            bands = dataset.count  # every band is scaled, so the output has as many
        rel = f"{feature['id']}_scaled.tif"
        map_windows(src, ctx.output_path(rel), lambda block: block * factor, dtype="float32", count=bands)
        out.append(ctx.derive_feature(feature, data_path=rel, properties={"{{name}}:factor": factor}))
    ctx.logger.info("scaled %d raster(s) by %s", len(out), factor)
    return FeatureCollection(out)


if __name__ == "__main__":
    process.run()
