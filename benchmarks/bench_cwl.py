"""CWL export benchmark: a scattered step on cwltool, `--parallel` vs sequential (needs Docker and the base image).

The workflow: synthetic-scene makes N scenes, ndvi runs once per scene (`scatter: features`).
It is exported once and run three ways, each in the same run of this script:

1. cwltool, sequential (the default): split, N block containers one after another, merge;
2. cwltool --parallel: the N block containers at the same time (2 cores here);
3. cwltool --parallel, the same workflow without scatter (one ndvi container for all N scenes),
   which gives the per-feature overhead of scattering under cwltool.

Run: python benchmarks/bench_cwl.py [--features 8] [--size 256]   (about 2 minutes on 2 idle cores)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
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
        sequential = cwltool(apps["scattered"], root / "seq")
        parallel = cwltool(apps["scattered"], root / "par", "--parallel")
        whole = cwltool(apps["whole"], root / "whole", "--parallel")
    n = args.features
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"load average at the end: {load} (on {__import__('os').cpu_count()} CPUs)")
    print(f"scattered ndvi over {n} features ({args.size} px), cwltool: sequential {sequential:.1f} s, "
          f"--parallel {parallel:.1f} s: {parallel / sequential:.2f}x the sequential time")
    print(f"same workflow without scatter (one ndvi container), --parallel: {whole:.1f} s; "
          f"scatter costs {(parallel - whole) / n:.2f} s per feature on top")
    return 0


if __name__ == "__main__":
    sys.exit(main())
