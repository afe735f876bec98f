"""A block written against up42-blockutils (its helpers for parameters, metadata and exit codes)."""

from pathlib import Path

import rasterio
from geojson import Feature, FeatureCollection

from blockutils.common import load_metadata, load_params, save_metadata
from blockutils.exceptions import SupportedErrors, UP42Error, catch_exceptions
from blockutils.logging import get_logger

logger = get_logger(__name__)


@catch_exceptions(logger)
def main() -> None:
    band = load_params().get("band") or 1
    features = []
    for feature in load_metadata().features:
        rel = feature["properties"]["up42.data_path"]
        with rasterio.open(Path("/tmp/input") / rel) as src:
            if band > src.count:
                raise UP42Error(SupportedErrors.WRONG_INPUT_ERROR, f"band {band} of {src.count}")
            mean = float(src.read(band).mean())
        target = Path("/tmp/output") / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((Path("/tmp/input") / rel).read_bytes())
        properties = dict(feature["properties"], **{"stats:band": band, "stats:mean": mean})
        features.append(Feature(id=feature["id"], geometry=feature["geometry"], bbox=feature["bbox"], properties=properties))
    save_metadata(FeatureCollection(features))
    logger.info("wrote %d feature(s)", len(features))


if __name__ == "__main__":
    main()
