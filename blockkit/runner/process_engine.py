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

from blockkit.contract.errors import TIMEOUT_EXIT_CODE, BlockkitError
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
        ended = time.time()
        if timed_out.is_set():
            return StepResult(TIMEOUT_EXIT_CODE, started, ended, timed_out=True,
                              detail=f"killed after the {spec.timeout_s:g} s timeout")
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
