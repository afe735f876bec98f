"""Process engine: the per-step cost of bubblewrap isolation (same block, isolated vs not).

Runs one trivial UP42-style step (plain Python: read the parameters, write data.json) through
`ProcessEngine.run_step`, alternating isolated and unisolated runs, and prints the medians and
the difference: what bubblewrap adds to every step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from statistics import median

BLOCK = """\
import json, os
out = os.environ["BLOCKKIT_OUTPUT_DIR"]
json.dump({"type": "FeatureCollection", "features": []}, open(os.path.join(out, "data.json"), "w"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="runs of each side")
    args = parser.parse_args()
    from blockkit.runner._engine import Resources, StepSpec
    from blockkit.runner._isolation import bwrap_problem
    from blockkit.runner._process_engine import ProcessEngine

    if bwrap_problem() is not None:
        print(f"bubblewrap unavailable ({bwrap_problem()}): isolation benchmark skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        block = root / "block"
        (block / "src").mkdir(parents=True)
        (block / "src" / "run.py").write_text(BLOCK)
        (block / "UP42Manifest.json").write_text(json.dumps({"name": "b"}))
        (root / "in").mkdir()
        times: dict[bool, list[float]] = {True: [], False: []}
        engines = {True: ProcessEngine(), False: ProcessEngine(isolate=False)}
        for i in range(args.repeat + 1):
            for isolated in (True, False):
                out = root / f"out-{isolated}-{i}"
                spec = StepSpec(name="s", block_dir=block, image=None, input_dir=root / "in", output_dir=out,
                                quicklook_dir=root / f"ql-{isolated}-{i}", log_path=root / f"log-{isolated}-{i}",
                                resources=Resources(cpus=0.5, memory_mb=2048))
                start = time.perf_counter()
                result = engines[isolated].run_step(spec)
                elapsed = time.perf_counter() - start
                assert result.exit_code == 0 and (out / "data.json").is_file()
                if i:  # the first round warms the page cache
                    times[isolated].append(elapsed)
        iso, plain = median(times[True]), median(times[False])
        print(f"process step ({args.repeat} runs each): isolated median {iso * 1000:.0f} ms, "
              f"unisolated {plain * 1000:.0f} ms, bubblewrap adds {(iso - plain) * 1000:.0f} ms per step "
              f"({iso / plain:.2f}x)")


if __name__ == "__main__":
    main()
