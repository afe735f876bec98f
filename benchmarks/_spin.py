"""CPU work of a known length for the runner benchmarks (bench_parallel, bench_scatter, bench_datum).

Their test blocks spin `for i in range(loops): total += i * i % 7`; `loops_for` calibrates
that loop in this Python on one core.
"""

from __future__ import annotations

import time


def loops_for(seconds: float) -> int:
    """How many loop turns take `seconds` in this Python on one core (the block runs the same loop)."""
    loops = 2_000_000
    began = time.perf_counter()
    total = 0
    for i in range(loops):
        total += i * i % 7
    return int(seconds * loops / (time.perf_counter() - began))
