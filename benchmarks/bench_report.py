"""Run report benchmark: how fast a large run's report.html opens in headless Chromium.

Builds synthetic run folders in the layout the runner writes (run.json, provenance.json,
steps/<step>/output/data.json, quicklooks, logs): a baseline with one step and no features,
and large ones (1,000 features in one step; 50 steps of 1,000 features each; 50 steps of
20). Each report is written with `write_report`, then opened in a fresh headless Chromium
(tests/report/chromium.py, DevTools protocol over a pipe). The load time is the page's own
timing: from navigation start until the report script marked the page ready (graph,
timeline, the selected step's map, tables) and the next frame was painted. Each load is in
a fresh browser that first opened the baseline report once, so Chromium's own start-up
(hundreds of ms, very noisy on a busy machine) is not counted; medians of --repeats loads.

Run: python benchmarks/bench_report.py [--features N] [--steps N] [--repeats N]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.report.chromium import Chromium, find_chromium  # noqa: E402

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
LOADED = """new Promise(done => {
  const check = () => document.getElementById("app") && document.getElementById("app").dataset.ready === "1"
    ? requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now()))) : setTimeout(check, 5);
  check(); })"""


def make_run(root: Path, steps: int, features: int, seed: int = 1) -> Path:
    """A run folder with `steps` chained steps of `features` footprint features each (with quicklooks)."""
    rng = random.Random(seed)
    run = root / f"bench-{steps}x{features}"
    t0 = time.time() - 600
    records = {}
    for s in range(steps):
        name = f"step{s:02d}"
        out = run / "steps" / name / "output"
        ql = run / "steps" / name / "quicklooks"
        out.mkdir(parents=True)
        ql.mkdir(parents=True)
        feats = []
        for i in range(features):
            lon, lat = 5 + rng.random() * 10, 45 + rng.random() * 8
            d = 0.02 + rng.random() * 0.05
            ring = [[lon + d * math.cos(a / 8 * 2 * math.pi), lat + d * math.sin(a / 8 * 2 * math.pi)] for a in range(9)]
            fid = f"{name}-scene-{i:04d}"
            feats.append({"type": "Feature", "id": fid, "geometry": {"type": "Polygon", "coordinates": [ring]},
                          "properties": {"up42.data_path": f"{fid}.tif", "cloud_cover": round(rng.random() * 100, 1),
                                         "datetime": "2024-06-15T10:30:00Z", "constellation": "synthetic"}})
            if i < 20:  # a few quicklooks per step, as a real run has
                (ql / f"{fid}.png").write_bytes(PNG)
        (out / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        logs = run / "logs"
        logs.mkdir(exist_ok=True)
        (logs / f"{name}.log").write_text("".join(f"INFO line {j} of {name}\n" for j in range(300)))
        records[name] = {
            "name": name, "status": "ok", "exit_code": 0, "exit_name": "OK", "started": t0 + s * 10,
            "ended": t0 + s * 10 + 9, "cache_key": "ab" * 32, "cached_from": None,
            "block": {"name": "bench", "version": "1", "source_sha256": "cd" * 32}, "engine": "process",
            "image": None, "image_id": None, "params": {"threshold": 0.3}, "upstream": [f"step{s - 1:02d}"] if s else [],
            "inputs": {}, "outputs": {f"{f['id']}.tif": "ef" * 32 for f in feats}, "features_out": features, "detail": "",
        }
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "workflow": "bench", "engine": "process",
                                              "status": "ok", "started": t0, "updated": t0 + steps * 10, "steps": records}))
    return run


def load_ms(chrome: Chromium, report: Path) -> float:
    """Milliseconds from navigation start to the report ready and painted (the page's own clock)."""
    chrome.open(report.as_uri(), timeout=60)
    value = chrome.evaluate(LOADED, timeout=60)
    errors = chrome.record.errors()
    if errors:
        raise SystemExit(f"{report}: console errors {errors[:3]}")
    return float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        print("Chromium not found (Debian: apt-get install chromium); skipped")
        return 0
    from blockkit.report import write_report

    cases = [("baseline: 1 step, 0 features", 1, 0), (f"1 step, {args.features} features", 1, args.features),
             (f"{args.steps} steps, 20 features each", args.steps, 20),
             (f"{args.steps} steps, {args.features} features each", args.steps, args.features)]
    results = {}
    warmup: Path | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, steps, features in cases:
            run = make_run(Path(tmp), steps, features)
            start = time.perf_counter()
            report = write_report(run)
            written = time.perf_counter() - start
            if warmup is None:
                warmup = report  # the baseline report doubles as the warm-up page
            times = []
            for _ in range(args.repeats):
                with Chromium(executable) as chrome:  # a fresh browser: nothing cached between reports
                    load_ms(chrome, warmup)  # the browser's own start-up is not the report's cost
                    times.append(load_ms(chrome, report))
            results[label] = statistics.median(times)
            print(f"{label:<40} report {report.stat().st_size / 1e6:6.2f} MB, written in {written:5.2f} s, "
                  f"opens in {results[label]:6.0f} ms (median of {args.repeats}: {', '.join(f'{t:.0f}' for t in times)})",
                  flush=True)
    base = results[cases[0][0]]
    worst = max(results.values())
    for label, _, _ in cases[1:]:
        print(f"{label:<40} {results[label] / base:5.2f}x the baseline")
    print(f"slowest: {worst:.0f} ms; target < 2000 ms: {'met' if worst < 2000 else 'MISSED'}")
    return 0 if worst < 2000 else 1


if __name__ == "__main__":
    sys.exit(main())
