"""The scheduler: 4 independent CPU-bound steps of ~1 s, parallel (default --jobs) vs --jobs 1.

Each step is a data block that spins a fixed amount of Python work (calibrated to ~1 s on one
core here), so the ratio shows what running steps at once buys on this machine's CPUs. Runs
alternate (sequential, parallel, sequential, ...) and the medians are compared; the load
average is printed, because the machine may be shared.

Run: python benchmarks/bench_parallel.py [--engine process|docker] [--repeat 3] [--steps 4]
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

SPIN = '''
import blockkit
from blockkit import FeatureCollection

@blockkit.data_block
def spin(query, ctx):
    total = 0
    for i in range(int(ctx.params["loops"])):
        total += i * i % 7
    ctx.output_path("spin.txt").write_text(str(total))
    return FeatureCollection([ctx.new_feature(geometry=None, data_path="spin.txt", id="spin")])

if __name__ == "__main__":
    spin.run()
'''



def _block(root: Path) -> Path:
    folder = root / "spin"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "run.py").write_text(SPIN)
    (folder / "UP42Manifest.json").write_text(json.dumps({
        "_up42_specification_version": 2, "name": "spin", "type": "data",
        "parameters": {"loops": {"type": "integer"}, "tag": {"type": "string"}},
        "input_capabilities": {}, "output_capabilities": {"misc": {"up42_standard": {}}},
    }))
    return folder


def _run(workflow: Path, runs: Path, engine: str, jobs: int | None) -> float:
    from blockkit.runner._session import RunRequest, run_request

    began = time.perf_counter()
    run_request(RunRequest(target=workflow, engine=engine, runs_dir=runs, use_cache=False, jobs=jobs))
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="process", choices=("process", "docker"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    loops = loops_for(1.0)
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        root = Path(tmp)
        block = _block(root)
        workflow = root / "fan.yaml"
        workflow.write_text("name: bench-fan\nsteps:\n" + "".join(
            f"  s{i}: {{block: {block}, params: {{loops: {loops}, tag: s{i}}}, after: []}}\n"
            for i in range(args.steps)))
        _run(workflow, root / "warm", args.engine, 1)  # builds the image (docker), warms caches
        seq: list[float] = []
        par: list[float] = []
        loads = []
        for _ in range(args.repeat):
            loads.append(os.getloadavg()[0])
            seq.append(_run(workflow, root / "runs", args.engine, 1))
            par.append(_run(workflow, root / "runs", args.engine, None))
        cpus = len(os.sched_getaffinity(0))
        result = {
            "engine": args.engine, "steps": args.steps, "cpus": cpus, "loops": loops,
            "jobs_1_s": [round(x, 2) for x in seq], "parallel_s": [round(x, 2) for x in par],
            "median_jobs_1_s": round(median(seq), 2), "median_parallel_s": round(median(par), 2),
            "ratio": round(median(par) / median(seq), 2),
            "load_average": round(median(loads), 1),
        }
        print(json.dumps(result))
        print(f"{args.steps} CPU-bound steps of ~1 s, {args.engine} engine, {cpus} CPUs, load {result['load_average']}: "
              f"parallel {result['median_parallel_s']} s vs --jobs 1 {result['median_jobs_1_s']} s: "
              f"{result['ratio']}x (target <= 0.6x)", file=sys.stderr)


if __name__ == "__main__":
    main()
