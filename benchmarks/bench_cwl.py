"""CWL export benchmark: a scattered workflow under blockkit vs cwltool (needs Docker and the base image).

The workflow: synthetic-scene makes N scenes, ndvi runs once per scene (`scatter: features`).
It is exported once (the images `blockkit build` made) and run, alternating, --repeat times:

1. `blockkit run --engine docker --no-cache` (the CLI, as a user runs it);
2. `cwltool --parallel` on the exported CWL: split, the N ndvi containers at once, merge.

The ratio is cwltool's median wall time over blockkit's (target: blockkit >= 2x faster).
With --all, also (once each) cwltool sequential and cwltool --parallel on the same workflow
without scatter, which gives the per-feature overhead of scattering under cwltool.

Run: python benchmarks/bench_cwl.py [--features 8] [--size 256] [--repeat 2] [--all]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def export(workflow: Path, out: Path) -> Path:
    result = subprocess.run([str(BIN / "blockkit"), "export", "cwl", str(workflow), "-o", str(out)],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"export failed: {result.stderr}")
    return out


def cwltool(app: Path, work: Path, *extra: str) -> float:
    started = time.monotonic()
    result = subprocess.run([str(BIN / "cwltool"), *extra, "--outdir", str(work / "out"),
                             "--tmpdir-prefix", f"{work}/tmp/", "--tmp-outdir-prefix", f"{work}/tmpout/", str(app)],
                            capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"cwltool failed: {result.stderr[-3000:]}")
    return seconds


def blockkit_run(workflow: Path, work: Path) -> float:
    started = time.monotonic()
    result = subprocess.run([str(BIN / "blockkit"), "run", str(workflow), "--engine", "docker", "--no-cache",
                             "--runs-dir", str(work / "runs")], capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"blockkit run failed: {result.stderr[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--all", action="store_true", help="also cwltool sequential and without scatter")
    args = parser.parse_args()
    blocks = REPO / "examples" / "blocks"
    with tempfile.TemporaryDirectory(prefix="bench-cwl-") as tmp:
        root = Path(tmp)
        apps = {}
        for name, field in (("scattered", ", scatter: features"), ("whole", "")):
            workflow = root / f"{name}.yaml"
            workflow.write_text(f"""
name: bench-{name}
steps:
  scenes: {{block: {blocks / 'synthetic-scene'}, params: {{size: {args.size}, seed: 3, limit: {args.features}}}}}
  ndvi:   {{block: {blocks / 'ndvi'}{field}}}
""")
            apps[name] = export(workflow, root / f"{name}.cwl")  # builds (or reuses) the images first
        ours: list[float] = []
        theirs: list[float] = []
        loads: list[str] = []
        for i in range(args.repeat):
            loads.append(Path("/proc/loadavg").read_text().split()[0])
            ours.append(blockkit_run(root / "scattered.yaml", root / f"bk{i}"))
            theirs.append(cwltool(apps["scattered"], root / f"par{i}", "--parallel"))
        if args.all:
            sequential = cwltool(apps["scattered"], root / "seq")
            whole = cwltool(apps["whole"], root / "whole", "--parallel")
    n = args.features
    print(f"load average before each pair: {', '.join(loads)} (on {__import__('os').cpu_count()} CPUs)")
    print(f"scattered ndvi over {n} features ({args.size} px): blockkit run --engine docker "
          f"{', '.join(f'{x:.1f}' for x in ours)} s, cwltool --parallel {', '.join(f'{x:.1f}' for x in theirs)} s: "
          f"blockkit {median(theirs) / median(ours):.2f}x faster (medians; target >= 2x)")
    if args.all:
        parallel = median(theirs)
        print(f"cwltool sequential {sequential:.1f} s, --parallel {parallel:.1f} s: "
              f"{parallel / sequential:.2f}x the sequential time")
        print(f"same workflow without scatter (one ndvi container), cwltool --parallel: {whole:.1f} s; "
              f"scatter costs {(parallel - whole) / n:.2f} s per feature on top")
    return 0


if __name__ == "__main__":
    sys.exit(main())
