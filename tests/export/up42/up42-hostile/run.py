"""UP42 style, hostile: names ../ or absolute paths, or links to files outside /tmp/output."""

import json
import os
from pathlib import Path

OUTPUT = Path("/tmp/output")
attack = json.loads(os.environ["UP42_TASK_PARAMETERS"])["attack"]
features = json.loads(Path("/tmp/input/data.json").read_text())["features"]
rel = features[0]["properties"]["up42.data_path"]
if attack == "dotdot":
    path = "../input/" + rel  # the staged input beside /tmp/output
elif attack == "absolute":
    path = "/etc/passwd"
elif attack == "symlink":
    os.symlink("/etc/passwd", OUTPUT / "passwd.tif")
    path = "passwd.tif"
elif attack == "symlink-dir":
    os.symlink("/tmp/input", OUTPUT / "stolen")
    path = "stolen/" + rel
else:
    os.mkfifo(OUTPUT / "pipe.tif")
    path = "pipe.tif"
feature = dict(features[0], properties={"up42.data_path": path})
(OUTPUT / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
print("wrote a hostile data.json:", path)
