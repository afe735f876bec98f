"""Run every benchmark (benchmarks/bench_*.py), each printing ratios measured in the same run.

Usage: python benchmarks/run.py [NAME ...]   e.g. `python benchmarks/run.py runtime raster`
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    wanted = set(argv)
    scripts = sorted(p for p in here.glob("bench_*.py") if not wanted or p.stem.removeprefix("bench_") in wanted)
    failed = 0
    for script in scripts:
        print(f"== {script.stem.removeprefix('bench_')}", flush=True)
        start = time.time()
        code = subprocess.call([sys.executable, str(script)])
        print(f"   ({time.time() - start:.0f} s, exit {code})", flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
