"""Runtime benchmarks: `import blockkit` time, and data.json validation vs plain json.

Run: python benchmarks/bench_runtime.py [--features N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def import_time(repeats: int = 5) -> tuple[float, list[str]]:
    """Best-of-N wall time of `import blockkit` in a fresh interpreter, and heavy modules it pulled in."""
    code = (
        "import sys, time; t = time.perf_counter(); import blockkit; d = time.perf_counter() - t; "
        "print(d); print(','.join(m for m in ('rasterio', 'shapely', 'numpy') if m in sys.modules))"
    )
    best, heavy = float("inf"), []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
        best = min(best, float(out[0]))
        heavy = [m for m in out[1].split(",") if m]
    return best, heavy


def datajson(n: int) -> tuple[float, float]:
    """Seconds for json.load+dump vs blockkit load (schema, geometry, data_path checks)+atomic write."""
    from blockkit.contract._datajson import load_data_json, write_data_json

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in" / "files").mkdir(parents=True)
        features = []
        for i in range(n):
            (root / "in" / "files" / f"{i}.tif").touch()
            x, y = i % 360 - 180, i % 170 - 85
            features.append({
                "type": "Feature", "id": str(i),
                "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 0.5, y], [x + 0.5, y + 0.5], [x, y + 0.5], [x, y]]]},
                "properties": {"up42.data_path": f"files/{i}.tif", "cloud_cover": i % 100, "sensor": "S2A"},
            })
        (root / "in" / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        del features
        (root / "plain").mkdir()
        start = time.perf_counter()
        with open(root / "in" / "data.json") as fh:
            data = json.load(fh)
        with open(root / "plain" / "data.json", "w") as fh:
            json.dump(data, fh)
        plain = time.perf_counter() - start
        del data
        start = time.perf_counter()
        fc = load_data_json(root / "in")
        write_data_json(root / "out", fc)
        ours = time.perf_counter() - start
        return plain, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", type=int, default=100_000)
    args = parser.parse_args()
    seconds, heavy = import_time()
    print(f"import blockkit: {seconds * 1000:.0f} ms (target < 150 ms); heavy modules imported: {heavy or 'none'}")
    plain, ours = datajson(args.features)
    print(f"data.json {args.features} features: json.load+dump {plain:.2f} s, blockkit validate+write {ours:.2f} s, "
          f"ratio {ours / plain:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
