"""What runs inside a block: the block decorators and context, feature propagation, STAC inputs, and the
raster, geometry and band helpers for block authors.

`blockkit.runtime.raster`, `.geometry` and `.bands` are public modules (they import rasterio, numpy or
shapely, so they load only when used); `blockkit.runtime.scatter` is the `python -m` entry point of a
scattered CWL step. Every other module here is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blockkit._lazy import lazy_exports

if TYPE_CHECKING:
    from blockkit.runtime._block import DataBlock, ProcessingBlock, data_block, processing_block, read_input
    from blockkit.runtime._context import BlockContext, get_logger
    from blockkit.runtime._query import Query
    from blockkit.runtime._progress import ProgressReporter
    from blockkit.runtime._propagation import (
        derive_feature,
        fan_in_feature,
        forward_all,
        forward_feature,
        local_assets,
        make_feature,
    )
    from blockkit.runtime._stac import features_from_catalog, write_catalog
    from blockkit.runtime.bands import BandRef, band_index, band_stack, has_bands, locate_bands, stack_vrt
    from blockkit.runtime.geometry import (
        aoi_area_km2,
        bbox_of,
        bbox_to_polygon,
        check_aoi_size,
        clip_to_aoi,
        utm_epsg,
        utm_zone,
        with_bbox,
    )
    from blockkit.runtime.raster import (
        iter_windows,
        map_windows,
        write_cog,
        write_quicklook,
        write_vector_quicklook,
    )

# Each public name and the module that defines it (imported on first access).
_EXPORTS = {
    "DataBlock": "blockkit.runtime._block",
    "ProcessingBlock": "blockkit.runtime._block",
    "data_block": "blockkit.runtime._block",
    "processing_block": "blockkit.runtime._block",
    "read_input": "blockkit.runtime._block",
    "BlockContext": "blockkit.runtime._context",
    "get_logger": "blockkit.runtime._context",
    "Query": "blockkit.runtime._query",
    "ProgressReporter": "blockkit.runtime._progress",
    "derive_feature": "blockkit.runtime._propagation",
    "fan_in_feature": "blockkit.runtime._propagation",
    "forward_all": "blockkit.runtime._propagation",
    "forward_feature": "blockkit.runtime._propagation",
    "local_assets": "blockkit.runtime._propagation",
    "make_feature": "blockkit.runtime._propagation",
    "features_from_catalog": "blockkit.runtime._stac",
    "write_catalog": "blockkit.runtime._stac",
    "BandRef": "blockkit.runtime.bands",
    "band_index": "blockkit.runtime.bands",
    "band_stack": "blockkit.runtime.bands",
    "has_bands": "blockkit.runtime.bands",
    "locate_bands": "blockkit.runtime.bands",
    "stack_vrt": "blockkit.runtime.bands",
    "aoi_area_km2": "blockkit.runtime.geometry",
    "bbox_of": "blockkit.runtime.geometry",
    "bbox_to_polygon": "blockkit.runtime.geometry",
    "check_aoi_size": "blockkit.runtime.geometry",
    "clip_to_aoi": "blockkit.runtime.geometry",
    "utm_epsg": "blockkit.runtime.geometry",
    "utm_zone": "blockkit.runtime.geometry",
    "with_bbox": "blockkit.runtime.geometry",
    "iter_windows": "blockkit.runtime.raster",
    "map_windows": "blockkit.runtime.raster",
    "write_cog": "blockkit.runtime.raster",
    "write_quicklook": "blockkit.runtime.raster",
    "write_vector_quicklook": "blockkit.runtime.raster",
}

__all__ = [
    "BandRef",
    "BlockContext",
    "DataBlock",
    "ProcessingBlock",
    "ProgressReporter",
    "Query",
    "aoi_area_km2",
    "band_index",
    "band_stack",
    "bbox_of",
    "bbox_to_polygon",
    "check_aoi_size",
    "clip_to_aoi",
    "data_block",
    "derive_feature",
    "fan_in_feature",
    "features_from_catalog",
    "forward_all",
    "forward_feature",
    "get_logger",
    "has_bands",
    "iter_windows",
    "local_assets",
    "locate_bands",
    "make_feature",
    "map_windows",
    "processing_block",
    "read_input",
    "stack_vrt",
    "utm_epsg",
    "utm_zone",
    "with_bbox",
    "write_catalog",
    "write_cog",
    "write_quicklook",
    "write_vector_quicklook",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
