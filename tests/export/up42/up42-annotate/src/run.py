"""UP42 style: no blockkit; reads /tmp/input, writes /tmp/output and /tmp/quicklooks."""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

INPUT, OUTPUT, QUICKLOOKS = Path("/tmp/input"), Path("/tmp/output"), Path("/tmp/quicklooks")


def main() -> int:
    params = json.loads(os.environ["UP42_TASK_PARAMETERS"])
    assert Path.cwd() == Path("/block"), Path.cwd()  # started in the image's WORKDIR
    # A scratch file in HOME must not end up in the output (cwltool sets HOME to its output folder).
    Path(os.environ["HOME"], "scratch.txt").write_text("scratch")
    QUICKLOOKS.mkdir(parents=True, exist_ok=True)
    features = json.loads((INPUT / "data.json").read_text())["features"]
    if not features:
        print("no input features", file=sys.stderr)
        return 3
    out = []
    for feature in features:
        rel = feature["properties"]["up42.data_path"]
        ident = str(feature["id"]).replace(":", "_")
        target = OUTPUT / ident / Path(rel).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(INPUT / rel, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        (QUICKLOOKS / f"{ident}.png").write_bytes(b"\x89PNG quicklook " + digest.encode())
        props = dict(feature["properties"])
        props.update({"up42.data_path": f"{ident}/{target.name}", "annotate:label": params["label"],
                      "annotate:weight": params["weight"], "annotate:sha256": digest,
                      "annotate:mode": os.environ.get("UP42_JOB_MODE")})
        out.append({"type": "Feature", "id": feature["id"], "bbox": feature["bbox"],
                    "geometry": feature["geometry"], "properties": props})
    (OUTPUT / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": out}, indent=1))
    print(f"annotated {len(out)} feature(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
