"""The process engine: each step a subprocess with the `BLOCKKIT_*` folders (the embedded default)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from blockkit.contract.errors import TIMEOUT_EXIT_CODE, BlockkitError, ExitCode
from blockkit.runner.engine import LogSink, StepResult, StepSpec


class EngineError(BlockkitError):
    """An engine could not start a step at all (not a block failure)."""


def block_command(block_dir: Path, override: list[str] | None = None) -> list[str]:
    """The command that runs a block folder's code with this Python."""
    if override:
        return [sys.executable if part == "python" else part for part in override]
    entry = block_dir / "src" / "run.py"
    if not entry.is_file():
        raise EngineError(f"block {block_dir} has no src/run.py; add one or set blockkit.command in the manifest")
    return [sys.executable, str(entry)]


def step_environment(spec: StepSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a step runs with (contract variables over the inherited ones)."""
    env = dict(os.environ if base is None else base)
    for name in ("UP42_TASK_PARAMETERS", "BLOCKKIT_MANIFEST", "S3_ENDPOINT"):
        env.pop(name, None)
    env.update(
        {
            "BLOCKKIT_INPUT_DIR": str(spec.input_dir),
            "BLOCKKIT_OUTPUT_DIR": str(spec.output_dir),
            "BLOCKKIT_QUICKLOOK_DIR": str(spec.quicklook_dir),
            "UP42_TASK_PARAMETERS": json.dumps(dict(spec.params)),
            "UP42_JOB_MODE": spec.mode,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(spec.env)
    return env


def session_memory(session_id: int) -> int:
    """Bytes of memory used by every process of a session (proportional set size where the kernel has it).

    PSS shares copy-on-write pages among the processes that map them, so forked workers
    (e.g. `map_windows`) are not counted twice; RSS is the fallback.
    """
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) != session_id:  # state, ppid, pgrp, session, ...
                continue
            total += _process_memory(entry.name)
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return total


def _process_memory(pid: str) -> int:
    for path, key in ((f"/proc/{pid}/smaps_rollup", b"Pss:"), (f"/proc/{pid}/status", b"VmRSS:")):
        try:
            with open(path, "rb") as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            continue
    return 0


class _MemoryWatch(threading.Thread):
    """Kills a step's process group when its memory passes the limit (sampled twice a second)."""

    INTERVAL_S = 0.5

    def __init__(self, proc: subprocess.Popen[str], limit_bytes: int) -> None:
        super().__init__(name=f"memory-{proc.pid}", daemon=True)
        self.proc = proc
        self.limit = limit_bytes
        self.exceeded = False
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.INTERVAL_S):
            used = session_memory(self.proc.pid)
            self.peak = max(self.peak, used)
            if used > self.limit:
                self.exceeded = True
                ProcessEngine._kill(self.proc, None)
                return

    def stop(self) -> None:
        self._done.set()


class ProcessEngine:
    """Runs each step as a child process of this one."""

    name = "process"

    def run_step(self, spec: StepSpec, on_log_line: LogSink | None = None) -> StepResult:
        """Run the block's command to completion or timeout, streaming its log."""
        if spec.block_dir is None:
            raise EngineError(f"step {spec.name!r} names an image; the process engine needs a block folder")
        command = block_command(spec.block_dir, spec.command)
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        spec.quicklook_dir.mkdir(parents=True, exist_ok=True)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with open(spec.log_path, "a", encoding="utf-8") as log:
            try:
                proc = subprocess.Popen(
                    command,
                    cwd=spec.block_dir,
                    env=step_environment(spec),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # so a timeout or Ctrl-C can end the whole process group
                    text=True,
                    errors="replace",
                )
            except OSError as exc:
                raise EngineError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from None
            timed_out = threading.Event()
            timer = None
            if spec.timeout_s:
                timer = threading.Timer(spec.timeout_s, self._kill, (proc, timed_out))
                timer.start()
            watch = None
            if spec.resources is not None and Path("/proc/self/stat").exists():
                # No cgroup here: the machine type's memory is enforced by sampling the process group.
                watch = _MemoryWatch(proc, int(spec.resources.memory_mb) << 20)
                watch.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if on_log_line:
                        on_log_line(spec.name, line.rstrip("\n"))
                code = proc.wait()
            except KeyboardInterrupt:
                self._kill(proc, None)
                raise
            finally:
                if timer:
                    timer.cancel()
                if watch:
                    watch.stop()
        ended = time.time()
        if timed_out.is_set():
            return StepResult(TIMEOUT_EXIT_CODE, started, ended, timed_out=True,
                              detail=f"killed after the {spec.timeout_s:g} s timeout")
        if watch is not None and watch.exceeded:
            return StepResult(int(ExitCode.OUT_OF_MEMORY), started, ended, oom_killed=True,
                              detail=f"OUT_OF_MEMORY: the block used {watch.peak >> 20} MB, more than its limit "
                                     f"of {watch.limit >> 20} MB, and was killed")
        oom = code == -signal.SIGKILL
        if code < 0:
            detail = f"killed by signal {-code}" + (" (likely out of memory)" if oom else "")
            return StepResult(137 if oom else 128 - code, started, ended, oom_killed=oom, detail=detail)
        return StepResult(code, started, ended)

    @staticmethod
    def _kill(proc: subprocess.Popen[str], flag: threading.Event | None) -> None:
        if flag is not None:
            flag.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
