"""The process engine: each step a subprocess, isolated by bubblewrap at the contract paths where available."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable, Mapping

from blockkit.contract.errors import TIMEOUT_EXIT_CODE, BlockkitError, EngineError, ExitCode
from blockkit.runner._blockenv import interpreter_home
from blockkit.runner._engine import Engine, LogSink, StepResult, StepSpec
from blockkit.runner._isolation import (
    BLOCK_DIR,
    INPUT_DIR,
    OUTPUT_DIR,
    QUICKLOOK_DIR,
    Watchdog,
    bwrap_command,
    bwrap_problem,
    host_environment,
    isolation_available,
    kill_group,
)
from blockkit.runner._logfilter import ErrorLineTracker, LineSplitter, LogFilter, StepLog


def _own_environment(program: str) -> Path | None:
    """The virtual environment a block's own interpreter lives in (a block venv), or None."""
    path = Path(program)
    if not path.is_absolute():
        return None
    root = path.parent.parent
    return root if (root / "pyvenv.cfg").is_file() else None


def _with_own_environment(env: dict[str, str], venv: Path | None) -> tuple[Path, ...]:
    """Point a step's environment at its block venv; return the folders it needs read-only.

    `python`/`pip` on PATH are the venv's (a shell script or subprocess of the block finds the
    same interpreter as its entry), and blockkit's PYTHONPATH/PYTHONHOME stay out (another
    Python's packages would shadow or break the block's). Isolated, the venv and the
    installation of the Python it was made from (e.g. a pyenv version under /root/.pyenv) are
    bound read-only: the block can neither change them nor see anything else of that home.
    """
    if venv is None:
        return ()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}".rstrip(os.pathsep)
    env["VIRTUAL_ENV"] = str(venv)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(name, None)
    home = interpreter_home(venv)
    return (venv,) if home is None else (venv, home)


def block_command(block_dir: Path, override: list[str] | None = None, *, block_root: str | None = None) -> list[str]:
    """The command that runs a block folder's code with this Python.

    `block_root` is where the block folder is seen by the step (`/block` when isolated).
    """
    if override:
        return [sys.executable if part == "python" else part for part in override]
    entry = block_dir / "src" / "run.py"
    if not entry.is_file():
        raise EngineError(f"block {block_dir} has no src/run.py; add one or set blockkit.command in the manifest")
    return [sys.executable, f"{block_root}/src/run.py" if block_root else str(entry)]


def step_environment(spec: StepSpec, base: dict[str, str] | None = None, *, isolated: bool = False,
                     scratch: Path | None = None) -> dict[str, str]:
    """The environment a step runs with: contract variables over the inherited ones.

    `base` is what is inherited (the engine passes the allow-listed part of its own
    environment, see `isolation.host_environment`; by default the whole environment).
    Isolated steps see the contract paths; others the host folders. HOME and TMPDIR point at
    the step's scratch folder (the namespace's private /tmp when isolated).
    """
    env = dict(os.environ if base is None else base)
    for name in ("UP42_TASK_PARAMETERS", "BLOCKKIT_MANIFEST", "S3_ENDPOINT"):
        env.pop(name, None)
    if isolated:
        dirs = {"BLOCKKIT_INPUT_DIR": INPUT_DIR, "BLOCKKIT_OUTPUT_DIR": OUTPUT_DIR,
                "BLOCKKIT_QUICKLOOK_DIR": QUICKLOOK_DIR}
    else:
        dirs = {"BLOCKKIT_INPUT_DIR": str(spec.input_dir), "BLOCKKIT_OUTPUT_DIR": str(spec.output_dir),
                "BLOCKKIT_QUICKLOOK_DIR": str(spec.quicklook_dir)}
    env.update(dirs)
    env.update(
        {
            "UP42_TASK_PARAMETERS": json.dumps(dict(spec.params)),
            "UP42_JOB_MODE": spec.mode,
            "BLOCKKIT_STEP": spec.name,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if isolated:
        env.update({"HOME": "/tmp", "TMPDIR": "/tmp"})
    elif scratch is not None:
        env.update({"HOME": str(scratch), "TMPDIR": str(scratch)})
    env.update(spec.env)
    return env


def uses_loopback_service(env: dict[str, str] | Mapping[str, str]) -> bool:
    """Whether the step's environment points it at a service on the host's loopback (the S3 gateway)."""
    return any(
        ("127.0.0.1" in value or "localhost" in value) and "://" in value
        for name, value in env.items()
        if name.endswith(("ENDPOINT", "ENDPOINT_URL", "_URL")) and isinstance(value, str)
    )


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

    def __init__(self, proc: subprocess.Popen[bytes], limit_bytes: int) -> None:
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


class ProcessEngine(Engine):
    """Runs each step as a child process of this one, isolated by bubblewrap where it works."""

    name = "process"

    def __init__(self, *, isolate: bool | None = None, redact: Callable[[str], str] | None = None) -> None:
        # None: isolate when bubblewrap works here; False: never (today's behaviour).
        self._isolate = isolate
        #: Masks secret values in every log line before the log file and the console see it.
        self.redact = redact

    @property
    def isolates_paths(self) -> bool:
        """Whether steps see their folders at the contract paths (/tmp/input, ...) in a private namespace.

        Blocks that hard-code the UP42 paths can run only when this is true.
        """
        if self._isolate is False:
            return False
        return isolation_available()

    @property
    def isolation_note(self) -> str:
        """One sentence on how steps are isolated (said once, by `select_engine`)."""
        if self._isolate is False:
            return "steps are not isolated (asked for)"
        problem = bwrap_problem()
        if problem is None:
            return "each step isolated by bubblewrap"
        return (f"steps are NOT isolated: {problem}; blocks see host paths and the host /tmp, "
                "and blocks with fixed /tmp/input paths cannot run")

    def run_step(self, spec: StepSpec, on_log_line: LogSink | None = None) -> StepResult:
        """Run the block's command to completion or timeout, streaming its log."""
        if spec.block_dir is None:
            raise EngineError(f"step {spec.name!r} names an image; the process engine needs a block folder")
        isolated = self.isolates_paths
        command = block_command(spec.block_dir, spec.command, block_root=BLOCK_DIR if isolated else None)
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        spec.quicklook_dir.mkdir(parents=True, exist_ok=True)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        network = spec.network or uses_loopback_service(spec.env)
        scratch = None if isolated else Path(tempfile.mkdtemp(prefix=f"blockkit-{spec.name[:20]}-"))
        env = step_environment(spec, host_environment(network), isolated=isolated, scratch=scratch)
        own = _with_own_environment(env, spec.venv or _own_environment(command[0]))
        if isolated:
            _check_executable(command[0], spec.block_dir, env.get("PATH", ""))
            command = bwrap_command(
                command, input_dir=spec.input_dir, output_dir=spec.output_dir,
                quicklook_dir=spec.quicklook_dir, block_dir=spec.block_dir,
                upstream_dirs=spec.upstream_dirs, network=network,
                readonly=own,
            )
        clean = LogFilter(self.redact)
        started = time.time()
        try:
            log = StepLog(spec.log_path)
            try:
                return self._run(spec, command, env, isolated, log, clean, on_log_line, started)
            finally:
                log.close()
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def _run(self, spec: StepSpec, command: list[str], env: dict[str, str], isolated: bool, log: StepLog,
             clean: LogFilter, on_log_line: LogSink | None, started: float) -> StepResult:
        errors = ErrorLineTracker()  # seen as lines come: the log file may have lost them (a full disk)

        def emit(line: str, dropped: int) -> None:
            text = clean(line, dropped)
            log.write_line(text)
            errors.see(text)
            if on_log_line:
                try:
                    on_log_line(spec.name, text)
                except Exception:  # noqa: BLE001 - a faulty display must not stop log capture
                    pass

        setpriv = None if isolated else shutil.which("setpriv")
        if setpriv:
            # Without bubblewrap's --die-with-parent the block gets SIGKILL when the runner dies:
            # set by util-linux setpriv before it execs the block, never by a preexec_fn (unsafe
            # in a threaded runner); without setpriv the watchdog alone ends the group.
            _check_executable(command[0], spec.block_dir or Path.cwd(), env.get("PATH", ""))
            command = [setpriv, "--pdeathsig", "KILL", "--", *command]
        try:
            proc = subprocess.Popen(
                command,
                cwd=spec.block_dir,  # bubblewrap changes to /block inside
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: the whole group ends with the step
            )
        except OSError as exc:
            raise EngineError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from None
        # Grandchildren have no parent-death signal: a watchdog ends the group if the runner dies.
        watchdog = None if isolated else Watchdog.for_group(proc.pid)
        assert proc.stdout is not None
        reader = threading.Thread(target=_pump, args=(proc.stdout, LineSplitter(emit)),
                                  name=f"logs-{spec.name}", daemon=True)
        reader.start()
        timed_out = threading.Event()
        timer = None
        if spec.timeout_s:
            timer = threading.Timer(spec.timeout_s, self._kill, (proc, timed_out))
            timer.daemon = True
            timer.start()
        watch = None
        if spec.resources is not None and Path("/proc/self/stat").exists():
            # No cgroup here: the machine type's memory is enforced by sampling the process group.
            watch = _MemoryWatch(proc, int(spec.resources.memory_mb) << 20)
            watch.start()
        try:
            with self.watch_cancel(spec, lambda: kill_group(proc.pid)):
                code = proc.wait()
        finally:
            # The step is over (or Ctrl-C / SIGTERM): nothing of its process group may stay,
            # not even a background child that closed its stdout.
            kill_group(proc.pid)
            if timer:
                timer.cancel()
            if watch:
                watch.stop()
            reader.join(timeout=5.0)
            if reader.is_alive():
                # A process that left the group (setsid) still holds the pipe: stop reading.
                proc.stdout.close()
                reader.join(timeout=1.0)
            if watchdog is not None:
                watchdog.release()
        result = self._ended(spec, code, isolated, started, timed_out.is_set(), watch)
        if result.exit_code != 0:  # the failure's words and the log's last line, as every engine gives them
            result.detail, closing = errors.ending(result.exit_code, result.detail)
            emit(closing, 0)
        return result

    @staticmethod
    def _ended(spec: StepSpec, code: int, isolated: bool, started: float, timed_out: bool,
               watch: _MemoryWatch | None) -> StepResult:
        """The step's result from the block's exit status and how the runner ended it."""
        ended = time.time()
        if timed_out:
            return StepResult(TIMEOUT_EXIT_CODE, started, ended, timed_out=True,
                              detail=f"killed after the {spec.timeout_s:g} s timeout")
        if watch is not None and watch.exceeded:
            return StepResult(int(ExitCode.OUT_OF_MEMORY), started, ended, oom_killed=True,
                              detail=f"OUT_OF_MEMORY: the block used {watch.peak >> 20} MB, more than its limit "
                                     f"of {watch.limit >> 20} MB, and was killed")
        if isolated and code > 128 and code - 128 in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV,
                                                       signal.SIGABRT, signal.SIGINT, signal.SIGBUS):
            code = -(code - 128)  # bubblewrap's init reports the block's signal as 128+n
        oom = code == -signal.SIGKILL
        if code < 0:
            detail = f"killed by signal {-code}" + (" (likely out of memory)" if oom else "")
            return StepResult(137 if oom else 128 - code, started, ended, oom_killed=oom, detail=detail)
        return StepResult(code, started, ended)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], flag: threading.Event | None) -> None:
        if flag is not None:
            flag.set()
        kill_group(proc.pid)


def _check_executable(program: str, block_dir: Path, path: str) -> None:
    """Fail like a failed exec when the step's program cannot exist inside the namespace."""
    if "/" in program:
        if program.startswith(BLOCK_DIR + "/"):
            where = block_dir / program[len(BLOCK_DIR) + 1:]
        else:
            where = Path(program) if program.startswith("/") else block_dir / program
        found = where.is_file() and os.access(where, os.X_OK)
    else:
        found = shutil.which(program, path=path) is not None
    if not found:
        raise EngineError(f"cannot start {program!r}: No such file or directory")


def _pump(stream: IO[bytes], splitter: LineSplitter) -> None:
    """Copy a step's output pipe into the splitter in chunks until end-of-file."""
    fd = stream.fileno()
    try:
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            splitter.feed(chunk)
    except (OSError, ValueError):
        pass  # the pipe was closed by the engine (a process outside the group kept it open)
    finally:
        splitter.close()
