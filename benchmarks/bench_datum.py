"""The datum cache: re-run time after changing 1 of 8 features vs the full run of the same step.

A workflow whose input folder holds 8 features and one scattered step (`scatter: features`)
whose block spends a fixed amount of CPU per feature (calibrated to `--seconds` on one core
here). Each round: a full run (`--no-cache`: every feature runs, as before the datum cache),
then one feature's file is changed and the workflow runs again with the cache: only that
feature's block runs (checked from run.json), the other 7 are verified against their hashes
and hard-linked in. Rounds alternate and the medians are compared; the load average is
printed, because the machine may be shared.

The ratio has a floor that is not overhead: with p features running at once, the full run
takes about ceil(8/p) feature times and the re-run one, so p/8 (0.25 with 2 at once, 0.125
with `--jobs 1`). The docker engine runs every feature capped at its machine type (`small`:
0.5 CPU), so four run at once on 2 CPUs and the floor is 0.5 — unless the block asks for a
whole CPU (`--machine medium`, the default here for docker).

Run: python benchmarks/bench_datum.py [--engine process|docker] [--repeat 3] [--features 8]
     [--seconds 1.0] [--jobs N] [--machine TYPE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from _spin import loops_for  # benchmarks/ is on sys.path: these run as scripts

SPIN = '''
import blockkit
from blockkit import FeatureCollection

@blockkit.processing_block
def spin(fc, ctx):
    out = []
    for f in fc:
        text = ctx.input_path(f).read_text()
        total = 0
        for i in range(int(ctx.params["loops"])):
            total += i * i % 7
        ctx.output_path("spun.txt").write_text(f"{text} {total}")
        out.append(ctx.derive_feature(f, data_path="spun.txt", properties={"spun": True}))
    return FeatureCollection(out)

if __name__ == "__main__":
    spin.run()
'''



def _block(root: Path, machine: str | None) -> Path:
    folder = root / "spin"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "run.py").write_text(SPIN)
    manifest: dict = {
        "_up42_specification_version": 2, "name": "spin", "type": "processing",
        "parameters": {"loops": {"type": "integer"}},
        "input_capabilities": {"misc": {"up42_standard": {}}}, "output_capabilities": {"misc": {"up42_standard": {}}},
    }
    if machine:
        manifest["machine"] = {"type": machine}
    (folder / "UP42Manifest.json").write_text(json.dumps(manifest))
    return folder


def _write_input(folder: Path, texts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    features = []
    for n, text in enumerate(texts):
        rel = f"scene{n}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.txt"
        (folder / rel).write_text(text)
        features.append({"type": "Feature", "id": f"scene{n}", "geometry": None, "properties": {"up42.data_path": rel}})
    (folder / "data.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def _run(workflow: Path, runs: Path, engine: str, jobs: int | None, use_cache: bool) -> tuple[float, int]:
    """Wall time of one run and how many features' blocks ran."""
    from blockkit.runner._session import RunRequest, run_request

    began = time.perf_counter()
    summary = run_request(RunRequest(target=workflow, engine=engine, runs_dir=runs, use_cache=use_cache, jobs=jobs))
    took = time.perf_counter() - began
    run = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    return took, sum(p["status"] == "ran" for p in run["steps"]["spin"]["parts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="process", choices=("process", "docker"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU time of one feature's block")
    parser.add_argument("--jobs", type=int, default=None, help="--jobs (default: the scheduler's)")
    parser.add_argument("--machine", default=None, help="the block's machine type (default: docker medium, process small)")
    args = parser.parse_args()
    machine = args.machine or ("medium" if args.engine == "docker" else None)
    loops = loops_for(args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-datum-") as tmp:
        root = Path(tmp)
        block = _block(root, machine)
        inp = root / "input"
        workflow = root / "datum.yaml"
        workflow.write_text(f"name: bench-datum\ninput: {inp}\nsteps:\n"
                            f"  spin: {{block: {block}, params: {{loops: {loops}}}, scatter: features}}\n")
        texts = [f"scene {n}" for n in range(args.features)]
        _write_input(inp, texts)
        _run(workflow, root / "warm", args.engine, args.jobs, False)  # builds the image (docker), warms caches
        full: list[float] = []
        again: list[float] = []
        loads = []
        for r in range(args.repeat):
            changed = r % args.features
            texts[changed] = f"scene {changed}, version {r}"
            _write_input(inp, texts)
            loads.append(os.getloadavg()[0])
            took, ran = _run(workflow, root / "runs", args.engine, args.jobs, False)
            assert ran == args.features, ran
            full.append(took)
            texts[changed] = f"scene {changed}, version {r} changed"
            _write_input(inp, texts)
            took, ran = _run(workflow, root / "runs", args.engine, args.jobs, True)
            assert ran == 1, f"{ran} features ran, expected 1"
            again.append(took)
        cpus = len(os.sched_getaffinity(0))
        result = {
            "engine": args.engine, "features": args.features, "cpus": cpus, "jobs": args.jobs, "machine": machine,
            "seconds_per_feature": args.seconds, "full_s": [round(x, 2) for x in full],
            "rerun_s": [round(x, 2) for x in again], "median_full_s": round(median(full), 2),
            "median_rerun_s": round(median(again), 2), "ratio": round(median(again) / median(full), 3),
            "load_average": round(median(loads), 1),
        }
        print(json.dumps(result))
        print(f"1 of {args.features} features changed, {args.engine} engine, {cpus} CPUs, jobs {args.jobs or 'default'}, "
              f"load {result['load_average']}: re-run {result['median_rerun_s']} s vs full run "
              f"{result['median_full_s']} s: {result['ratio']}x (target <= 0.25x)", file=sys.stderr)


if __name__ == "__main__":
    main()
