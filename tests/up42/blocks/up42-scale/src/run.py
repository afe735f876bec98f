"""A processing block in UP42's style: no blockkit, the fixed /tmp paths, bbox taken from the input."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import rasterio

INPUT = Path("/tmp/input")
OUTPUT = Path("/tmp/output")


def main() -> int:
    params = json.loads(os.environ.get("UP42_TASK_PARAMETERS") or "{}")
    factor = params.get("factor")
    if factor is None:
        factor = 2  # UP42 filled the default of a required parameter
    features = json.loads((INPUT / "data.json").read_text())["features"]
    out = []
    for feature in features:
        rel = feature["properties"]["up42.data_path"]
        with rasterio.open(INPUT / rel) as src:
            profile = src.profile
            data = src.read().astype("float32") * float(factor)
        profile.update(dtype="float32")
        target = OUTPUT / (Path(rel).stem + "_scaled.tif")
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(data)
        out.append({
            "type": "Feature",
            "id": feature.get("id"),
            "bbox": feature["bbox"],  # as UP42's sharpening does: KeyError when the input has none
            "geometry": feature["geometry"],
            "properties": {"up42.data_path": target.name, "scale:factor": factor,
                           "scale:mean": float(np.mean(data))},
        })
    (OUTPUT / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    print(f"scaled {len(out)} raster(s) by {factor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
