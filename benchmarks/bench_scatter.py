"""Scatter: a step over 8 features, `scatter: features` vs the same block on all 8 in one container/process.

The block spins a fixed amount of Python work per feature (calibrated to ~--seconds on one
core here) and writes one small file per feature, so the ratio shows what running the
features at once buys and what each part costs. Its machine type is `medium` (1 CPU), so
on 2 CPUs two parts run at once and the unscattered run uses one CPU, as it would. The
input is a folder of 8 features given as the workflow `input:`. Alternating, in one run:

1. whole vs scattered, the block doing --seconds of work per feature: the ratio (scattered
   runs its parts at once within the budget, the default --jobs);
2. whole vs scattered --jobs 1 with no work per feature: (scattered - whole) / 8 is the
   per-feature overhead (split, a container or process start and its Python start-up, merge).

With a per-feature overhead o, a per-run cost c and w seconds of work per feature, 2 CPUs
give scattered/whole = (4(w + o) + c) / (8w + c): the target 0.6x needs w >= 5o + c/2.
The script prints that break-even work too, and w as the engine ran it (the loops are
calibrated in this Python; an image's Python may run them faster).

Run: python benchmarks/bench_scatter.py [--engine process|docker] [--repeat 3] [--features 8] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from _spin import loops_for  # benchmarks/ is on sys.path: these run as scripts

WORK = '''
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def work(fc, ctx):
    out = []
    for feature in fc.features:
        total = 0
        for i in range(int(ctx.params["loops"])):
            total += i * i % 7
        rel = f"{feature['id']}.txt"
        ctx.output_path(rel).write_text(str(total))
        out.append(ctx.derive_feature(feature, data_path=rel, properties={"total": total}))
    return FeatureCollection(out)

if __name__ == "__main__":
    work.run()
'''



def _block(root: Path) -> Path:
    folder = root / "work"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "run.py").write_text(WORK)
    (folder / "UP42Manifest.json").write_text(json.dumps({
        "_up42_specification_version": 2, "name": "scatter-work", "type": "processing",
        "parameters": {"loops": {"type": "integer"}}, "machine": {"type": "medium"},
        "input_capabilities": {"misc": {"up42_standard": {}}}, "output_capabilities": {"misc": {"up42_standard": {}}},
    }))
    return folder


def _input(root: Path, features: int) -> Path:
    folder = root / "input"
    folder.mkdir()
    out = []
    for i in range(features):
        (folder / f"scene{i}.txt").write_text(f"scene {i}\n")
        out.append({"type": "Feature", "id": f"scene{i}", "bbox": [13.0 + i, 52.0, 13.5 + i, 52.5],
                    "geometry": {"type": "Polygon", "coordinates": [[[13.0 + i, 52.0], [13.5 + i, 52.0],
                                                                      [13.5 + i, 52.5], [13.0 + i, 52.5], [13.0 + i, 52.0]]]},
                    "properties": {"up42.data_path": f"scene{i}.txt"}})
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    return folder


def _run(workflow: Path, runs: Path, engine: str, jobs: int | None) -> float:
    from blockkit.runner._session import RunRequest, run_request

    began = time.perf_counter()
    summary = run_request(RunRequest(target=workflow, engine=engine, runs_dir=runs, use_cache=False, jobs=jobs))
    seconds = time.perf_counter() - began
    if summary.get("status") not in (None, "ok"):
        raise SystemExit(f"run failed: {summary}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="process", choices=("process", "docker"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU work per feature")
    args = parser.parse_args()
    loops = loops_for(args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-scatter-") as tmp:
        root = Path(tmp)
        block, data = _block(root), _input(root, args.features)
        flows = {}
        for name, field in (("whole", ""), ("scattered", ", scatter: features")):
            for work, count in (("work", loops), ("empty", 0)):
                flows[f"{name}-{work}"] = root / f"{name}-{work}.yaml"
                flows[f"{name}-{work}"].write_text(
                    f"name: bench-{name}-{work}\ninput: {data}\nsteps:\n"
                    f"  work: {{block: {block}, params: {{loops: {count}}}{field}}}\n")
        _run(flows["scattered-empty"], root / "warm", args.engine, None)  # builds the image (docker), warms caches
        runs = {"whole": ("whole-work", None), "scattered": ("scattered-work", None),
                "whole_empty": ("whole-empty", 1), "scattered_empty_jobs_1": ("scattered-empty", 1)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        loads = []
        for _ in range(args.repeat):
            loads.append(os.getloadavg()[0])
            for name, (flow, jobs) in runs.items():
                times[name].append(_run(flows[flow], root / "runs", args.engine, jobs))
    med = {name: median(values) for name, values in times.items()}
    n = args.features
    cpus = len(os.sched_getaffinity(0))
    overhead = (med["scattered_empty_jobs_1"] - med["whole_empty"]) / n
    # The work as the engine ran it: calibrated in this Python, it may run faster or slower in
    # an image's Python (Debian's is ~20 % faster than a self-built one).
    work = max(0.0, (med["whole"] - med["whole_empty"]) / n)
    per_run = med["whole_empty"]  # what the unscattered run costs beyond the work
    result = {
        "engine": args.engine, "features": n, "cpus": cpus, "seconds_per_feature": args.seconds,
        "measured_work_per_feature_s": round(work, 2),
        **{f"{name}_s": [round(x, 2) for x in values] for name, values in times.items()},
        **{f"median_{name}_s": round(value, 2) for name, value in med.items()},
        "ratio": round(med["scattered"] / med["whole"], 2),
        "overhead_per_feature_s": round(overhead, 3),
        "break_even_work_s": round(5 * overhead + per_run / 2, 2),
        "load_average": round(median(loads), 1),
    }
    print(json.dumps(result))
    print(f"{n} features x ~{args.seconds} s ({result['measured_work_per_feature_s']} s as run), {args.engine} engine, {cpus} CPUs, load {result['load_average']}: "
          f"scattered {result['median_scattered_s']} s vs one run {result['median_whole_s']} s: "
          f"{result['ratio']}x (target <= 0.6x); per-feature overhead {result['overhead_per_feature_s']} s "
          f"(empty block: scattered --jobs 1 {result['median_scattered_empty_jobs_1_s']} s vs one run "
          f"{result['median_whole_empty_s']} s); 0.6x needs >= {result['break_even_work_s']} s of work per feature "
          "on 2 idle CPUs", file=sys.stderr)


if __name__ == "__main__":
    main()
