"""Reading a block's data.json within the step's memory: the runner is not the block's to exhaust.

As Python objects a data.json takes 3 to 25 times its size (`[[],[],...]` is the worst), so a
block allowed 1 GiB of data.json could make the runner need 25 GB. A data.json up to
`IN_PROCESS_BYTES` is read in the runner's own process (at most about 250 MB); a bigger one is
first read by a child process whose address space is limited to the step's memory, and is
refused when that is not enough. The scheduler reserved that memory for the step, so the
runner's own read that follows stays within what the run was given.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from blockkit.contract._datajson import DATA_JSON, FeatureCollection, load_data_json
from blockkit.contract.errors import BlockkitError, SealError, SealTimeout

#: A block's data.json up to this size is read in the runner's process without a check.
IN_PROCESS_BYTES = 8 << 20
_OUT_OF_MEMORY = 3  # the child's exit code when reading needed more than its budget


def load_output(folder: Path, memory_mb: int, deadline: float | None = None) -> FeatureCollection:
    """A block's `<folder>/data.json`, read and checked; refused if reading it needs more than `memory_mb`.

    `deadline` (time.monotonic) bounds the check: past it, SealTimeout.
    """
    try:
        size = os.lstat(folder / DATA_JSON).st_size
    except OSError:
        size = 0  # load_data_json says what is wrong
    if size > IN_PROCESS_BYTES:
        check_fits(folder, memory_mb, deadline)
    return load_data_json(folder, required=False)


def check_fits(folder: Path, memory_mb: int, deadline: float | None = None) -> None:
    """Read `<folder>/data.json` in a child limited to `memory_mb`; SealError when it does not fit."""
    timeout = None if deadline is None else max(0.1, deadline - time.monotonic())
    try:
        # From "/": `-m` puts the working folder first on the import path, and that may be a block's
        # folder (`blockkit run .`), whose own `blockkit/` must never run on the host.
        child = subprocess.run([sys.executable, "-m", __name__, str(folder.resolve()), str(memory_mb << 20)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=timeout, check=False, cwd="/")
    except subprocess.TimeoutExpired:
        raise SealTimeout("reading its data.json ran past the step's timeout") from None
    if child.returncode != 0:  # out of memory, or killed for it: an invalid file exits 0 (see _child)
        raise SealError(f"reading its data.json ({os.lstat(folder / DATA_JSON).st_size} bytes) needs more "
                        f"than the step's memory of {memory_mb} MB; data.json is metadata, large vectors "
                        f"belong in data files")


def _child(folder: str, budget: int) -> int:
    """Read data.json with the address space limited to what is mapped now plus `budget` bytes."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + budget, mapped + budget))
    try:
        load_data_json(Path(folder), required=False)
    except MemoryError:
        return _OUT_OF_MEMORY
    except BlockkitError:  # invalid, not too big: the runner's own read says why
        pass
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], int(sys.argv[2])))
