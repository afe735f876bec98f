"""Per-block virtual environments: a UP42-style block's Python dependencies on the process engine.

A block written for UP42 brings its dependencies in `requirements.txt` (its Dockerfile runs
`pip install -r requirements.txt`) and does not use blockkit. On the process engine it must
not run with blockkit's own environment: it gets a virtual environment of its own, built
from its requirements (development tools left out, as in its image) and cached by a hash of
them and of the interpreter under `~/.cache/blockkit/venvs/<hash>` (`$BLOCKKIT_VENV_DIR`).

A venv is built in a temporary folder and renamed into place when complete, under a lock,
so a killed build or a concurrent run never leaves a half-built environment in use.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from blockkit.contract.errors import BlockEnvError

#: Bumped when the way environments are made changes.
_FORMAT = "blockkit-venv-1"


@dataclass(frozen=True)
class BlockEnv:
    """A ready environment: its folder and interpreter, whether this call made it, and warnings."""

    path: Path
    python: Path
    created: bool
    warnings: tuple[str, ...] = ()


def venv_root() -> Path:
    """Where block environments are cached: `$BLOCKKIT_VENV_DIR` or `~/.cache/blockkit/venvs`."""
    env = os.environ.get("BLOCKKIT_VENV_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "blockkit" / "venvs"


def base_python() -> str:
    """The interpreter block environments are made with: `$BLOCKKIT_BLOCK_PYTHON` or this one's base."""
    return os.environ.get("BLOCKKIT_BLOCK_PYTHON") or getattr(sys, "_base_executable", None) or sys.executable


def _interpreter_id(python: str) -> str:
    try:
        out = subprocess.run(
            [python, "-c", "import sys, platform; print(sys.version, platform.machine(), sys.base_prefix)"],
            capture_output=True, text=True, timeout=60, check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BlockEnvError(f"the block interpreter {python} does not run ({exc})") from None
    return out.stdout.strip()


def env_key(block_dir: Path, python: str | None = None) -> str:
    """The cache key of a block's environment: its (filtered) requirements and the interpreter."""
    from blockkit.runner.build import drop_dev_requirements

    python = python or base_python()
    digest = hashlib.sha256(f"{_FORMAT}\0{_interpreter_id(python)}\0".encode())
    requirements = block_dir / "requirements.txt"
    if requirements.is_file():
        with tempfile.TemporaryDirectory(prefix="blockkit-req-") as tmp:
            copy = Path(tmp) / "requirements.txt"
            shutil.copyfile(requirements, copy)
            drop_dev_requirements(copy)
            # What gets installed counts, not comments nor dev tools (left out anyway).
            lines = (line.strip() for line in copy.read_text(encoding="utf-8", errors="replace").splitlines())
            digest.update("\n".join(l for l in lines if l and not l.startswith("#")).encode())
    return digest.hexdigest()[:24]


def ensure_block_env(
    block_dir: Path,
    *,
    python: str | None = None,
    wheelhouse: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> BlockEnv:
    """The block's environment, built from its requirements.txt unless a cached one exists."""
    python = python or base_python()
    block_dir = Path(block_dir).resolve()
    key = env_key(block_dir, python)
    root = venv_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    interpreter = final / "bin" / "python"
    if interpreter.is_file():
        return BlockEnv(final, interpreter, False)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if interpreter.is_file():  # made by a concurrent run meanwhile
            return BlockEnv(final, interpreter, False)
        if say:
            say(f"making the Python environment of block {block_dir.name} in {final} (once; cached)")
        work = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
        try:
            warnings = _make(block_dir, work, python, wheelhouse)
            # Only a complete environment gets the final name (a killed build leaves a tmp folder).
            os.rename(work / "venv", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return BlockEnv(final, interpreter, True, tuple(warnings))


def _make(block_dir: Path, work: Path, python: str, wheelhouse: Path | None) -> list[str]:
    from blockkit.runner.image_names import blockkit_source_root
    from blockkit.runner.wheelhouse import PythonTarget, drop_dev_requirements, resolve_wheelhouse, resolve_wheels

    venv = work / "venv"
    _run([python, "-m", "venv", str(venv)], "creating the virtual environment")
    requirements = block_dir / "requirements.txt"
    if not requirements.is_file():
        return []
    copy = work / "requirements.txt"
    shutil.copyfile(requirements, copy)
    warnings = drop_dev_requirements(copy)
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.machine(), platform.libc_ver()[1] or '0')"],
        capture_output=True, text=True, check=True,
    )
    version, machine, glibc = probe.stdout.split()
    target = PythonTarget(python=version, machine=machine, glibc=glibc)
    wheel_dir = resolve_wheelhouse(wheelhouse, blockkit_source_root())
    subset = work / "wheels"
    warnings += resolve_wheels(["-r", str(copy)], subset, wheel_dir, target, requirements=copy)
    wheels = sorted(str(w) for w in subset.glob("*.whl"))
    if wheels:
        _run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "--no-index",
              "--no-deps", *wheels], "installing the block's requirements")
    return warnings


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
        raise BlockEnvError(f"{what} failed: {lines[-1] if lines else 'no output'}")

__all__ = ["BlockEnv", "BlockEnvError", "ensure_block_env", "env_key", "venv_root"]
