"""Per-block virtual environments: a UP42-style block's Python dependencies on the process engine.

A block written for UP42 brings its dependencies in `requirements.txt` (its Dockerfile runs
`pip install -r requirements.txt`) and does not use blockkit. On the process engine it must
not run with blockkit's own environment: it gets a virtual environment of its own, built
from its requirements (development tools left out, as in its image) and cached by a hash of
them and of the interpreter under `~/.cache/blockkit/venvs/<hash>` (`$BLOCKKIT_VENV_DIR`).

**The interpreter.** `$BLOCKKIT_BLOCK_PYTHON` names it (a path, a command such as
`python3.9`, or a version such as `3.9`); it is then used as is. Unset, the choice is
automatic: the interpreter running blockkit, unless one of the block's requirements has its
newest release (or the pinned one) only for *older* Pythons (`up42-blockutils==1.2.4`:
`Requires-Python <3.10`); then the newest interpreter found on this host (`python3.N` on
PATH, pyenv's versions, /usr/bin, /usr/local/bin) that takes the newest release of at least
one of them (the smallest step back; the others are reported as resolving older). When none
does, the block is refused in one line naming what it needs.

The environment is built in its final folder under a lock and marked complete only at the
end, so a killed build or a concurrent run never leaves a half-built environment in use
(a later run removes the leftover and starts again). Wheels come from the host wheelhouse
together with pip's configured index (whatever the machine's pip configuration says; the
newest matching release wins, as in `pip install`), fetched and, where a requirement has
no wheel for that Python, compiled by the block interpreter's own pip; every wheel is kept
in the wheelhouse for the next time. pip and the build scripts of the requirements run on
the host (as `pip install` would), not isolated, with an allow-listed environment.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from blockkit.contract.errors import BlockEnvError

#: Bumped when the way environments are made changes.
_FORMAT = "blockkit-venv-2"
#: Written last into a finished environment: its absence means a build that did not finish.
COMPLETE_MARK = ".blockkit-complete"


@dataclass(frozen=True)
class BlockEnv:
    """A ready environment: its folder and interpreter, whether this call made it, and warnings."""

    path: Path
    python: Path
    created: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter on this host: its command, version ("3.9") and base installation folder."""

    command: str
    version: str
    prefix: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        """(3, 9) for "3.9"."""
        return tuple(int(part) for part in self.version.split("."))


def cache_root() -> Path:
    """blockkit's per-user cache folder: `$XDG_CACHE_HOME/blockkit`, else `~/.cache/blockkit`.

    Block environments (`venv_root`), base-image probes (`_build`) and the CWL helper block
    (`export`) live below it. An empty `$XDG_CACHE_HOME` counts as unset.
    """
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blockkit"


def venv_root() -> Path:
    """Where block environments are cached: `$BLOCKKIT_VENV_DIR` or `<cache_root()>/venvs`."""
    env = os.environ.get("BLOCKKIT_VENV_DIR")
    if env:
        return Path(env)
    return cache_root() / "venvs"


def default_python() -> str:
    """The interpreter running blockkit (its base installation, not blockkit's own venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def base_python() -> str:
    """The interpreter asked for: `$BLOCKKIT_BLOCK_PYTHON` resolved to a command, else the default one."""
    asked = os.environ.get("BLOCKKIT_BLOCK_PYTHON", "").strip()
    return resolve_python(asked) if asked else default_python()


def resolve_python(asked: str) -> str:
    """`$BLOCKKIT_BLOCK_PYTHON`'s value as a runnable command: a path, a command on PATH, or a version."""
    if re.fullmatch(r"\d+\.\d+", asked):
        for found in find_interpreters():
            if found.version == asked:
                return found.command
        raise BlockEnvError(
            f"BLOCKKIT_BLOCK_PYTHON={asked}: no Python {asked} on this host "
            f"(found: {_listing(find_interpreters())}); install one or set it to an interpreter's path"
        )
    if "/" not in asked:
        which = shutil.which(asked)
        if which is None:
            raise BlockEnvError(f"BLOCKKIT_BLOCK_PYTHON={asked}: no such command on PATH")
        return which
    return asked


def probe(python: str) -> Interpreter:
    """Ask an interpreter its version and installation folder (BlockEnvError when it does not run)."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.base_prefix)"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        version, prefix = out.stdout.split("\n")[:2]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise BlockEnvError(f"the block interpreter {python} does not run ({exc})") from None
    return Interpreter(python, version.strip(), prefix.strip())


def _candidate_paths() -> list[str]:
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    paths = []
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/local/bin", "/usr/bin"]:
        if folder and "shims" not in folder:  # pyenv's shims only forward to its versions (listed below)
            paths += glob.glob(os.path.join(folder, "python3.[0-9]*"))
    paths += glob.glob(os.path.join(pyenv, "versions", "*", "bin", "python3.[0-9]*"))
    return [p for p in paths if re.search(r"python3\.\d+$", p) and os.access(p, os.X_OK)]


def find_interpreters() -> list[Interpreter]:
    """Python 3 interpreters on this host with a working `venv`, newest first (one per version)."""
    seen: dict[str, Interpreter] = {}
    for path in sorted(set(_candidate_paths())):
        real = os.path.realpath(path)
        try:
            found = probe(path)
        except BlockEnvError:
            continue
        if found.version not in seen and found.version_tuple >= (3, 6):
            seen[found.version] = Interpreter(real, found.version, found.prefix)
    return sorted(seen.values(), key=lambda i: i.version_tuple, reverse=True)


def _listing(found: Iterable[Interpreter]) -> str:
    names = [f"Python {i.version}" for i in found]
    return ", ".join(names) if names else "none"


def _interpreter_id(python: str) -> str:
    try:
        out = subprocess.run(
            [python, "-I", "-c", "import sys, platform; print(sys.version, platform.machine(), sys.base_prefix)"],
            capture_output=True, text=True, timeout=60, check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BlockEnvError(f"the block interpreter {python} does not run ({exc})") from None
    return out.stdout.strip()


def _requirements_text(block_dir: Path) -> str:
    from blockkit.runner._wheelhouse import drop_dev_requirements

    requirements = block_dir / "requirements.txt"
    if not requirements.is_file():
        return ""
    with tempfile.TemporaryDirectory(prefix="blockkit-req-") as tmp:
        copy = Path(tmp) / "requirements.txt"
        shutil.copyfile(requirements, copy)
        drop_dev_requirements(copy)
        # What gets installed counts, not comments nor dev tools (left out anyway).
        lines = (line.strip() for line in copy.read_text(encoding="utf-8", errors="replace").splitlines())
        return "\n".join(l for l in lines if l and not l.startswith("#"))


def env_key(block_dir: Path, python: str | None = None) -> str:
    """The cache key of a block's environment: its (filtered) requirements and the interpreter.

    Without an interpreter asked for (argument or `$BLOCKKIT_BLOCK_PYTHON`) the key is that of
    the automatic choice made from the default interpreter.
    """
    asked = python or (base_python() if os.environ.get("BLOCKKIT_BLOCK_PYTHON", "").strip() else None)
    mode = f"asked:{_interpreter_id(asked)}" if asked else f"auto:{_interpreter_id(default_python())}"
    digest = hashlib.sha256(f"{_FORMAT}\0{mode}\0".encode())
    digest.update(_requirements_text(Path(block_dir)).encode())
    return digest.hexdigest()[:24]


def ensure_block_env(
    block_dir: Path,
    *,
    python: str | None = None,
    wheelhouse: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> BlockEnv:
    """The block's environment, built from its requirements.txt unless a cached one exists."""
    block_dir = Path(block_dir).resolve()
    asked = python or (base_python() if os.environ.get("BLOCKKIT_BLOCK_PYTHON", "").strip() else None)
    key = env_key(block_dir, asked)
    root = venv_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    interpreter = final / "bin" / "python"
    if (final / COMPLETE_MARK).is_file():
        return BlockEnv(final, interpreter, False)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / COMPLETE_MARK).is_file():  # made by a concurrent run meanwhile
            return BlockEnv(final, interpreter, False)
        if final.exists():  # a build that was killed half-way
            shutil.rmtree(final)
        if say:
            say(f"making the Python environment of block {block_dir.name} in {final} (once; cached)")
        try:
            warnings = _make(block_dir, final, asked, wheelhouse, say)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        (final / COMPLETE_MARK).write_text(json.dumps({"block": str(block_dir)}) + "\n", encoding="utf-8")
    return BlockEnv(final, interpreter, True, tuple(warnings))


def _make(block_dir: Path, venv: Path, asked: str | None, wheelhouse: Path | None,
          say: Callable[[str], None] | None) -> list[str]:
    from blockkit.runner._image_names import blockkit_source_root
    from blockkit.runner._wheelhouse import (
        drop_dev_requirements,
        python_capped_pins,
        resolve_wheelhouse,
        write_constraints,
    )

    requirements = block_dir / "requirements.txt"
    copy = None
    warnings: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="blockkit-venv-"))
    try:
        if requirements.is_file():
            copy = work / "requirements.txt"
            shutil.copyfile(requirements, copy)
            warnings = drop_dev_requirements(copy)
        python = asked or default_python()
        _create(python, venv)
        if copy is None:
            return warnings
        wheel_dir = resolve_wheelhouse(wheelhouse, blockkit_source_root())
        subset = work / "wheels"
        output, failed = _fetch(venv, copy, subset, wheel_dir)
        version = probe(str(venv / "bin" / "python")).version
        too_new = _too_new_for(output, copy, version)
        if too_new and asked is None:
            chosen = _older_interpreter(too_new, version, block_dir.name)
            if say:
                say(f"block {block_dir.name}: {_needs(too_new)}; using Python {chosen.version} ({chosen.command})")
            shutil.rmtree(venv)
            shutil.rmtree(subset, ignore_errors=True)
            _create(chosen.command, venv)
            # The release that made the switch is the one installed: left to itself, pip's
            # resolver may backtrack to an older one that conflicts less with unpinned siblings.
            # (the rule the image build follows too: `python_capped_pins`).
            pins = write_constraints(python_capped_pins(output, copy, chosen.version), work / "constraints.txt")
            output, failed = _fetch(venv, copy, subset, wheel_dir, constraints=pins)
            version = chosen.version
        if failed is not None:
            why = f" ({_needs(too_new)})" if too_new else ""
            raise BlockEnvError(f"installing the requirements of block {block_dir.name} "
                                f"(Python {version}) failed: {failed}{why}")
        warnings += _older_warnings(output, copy, subset, version)
        wheels = sorted(str(w) for w in subset.glob("*.whl"))
        if wheels:
            _run([str(venv / "bin" / "python"), "-I", "-m", "pip", "--disable-pip-version-check", "install",
                  "--no-index", "--no-deps", "--no-compile", *wheels],
                 f"installing the requirements of block {block_dir.name}")
        _run([str(venv / "bin" / "python"), "-I", "-m", "compileall", "-q", str(venv / "lib")],
             "compiling the environment")
        return warnings
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _create(python: str, venv: Path) -> None:
    _run([python, "-I", "-m", "venv", str(venv)], f"creating a virtual environment with {python}")


def tool_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment pip runs with while making a block's environment.

    Build scripts of the block's requirements run in it, so it is the steps' allow-list
    (with proxies) plus pip's own settings (`PIP_*`, its config and cache folders): the
    runner's secrets (`BLOCKKIT_KEYSTORE_PASSPHRASE`, cloud credentials) stay out.
    """
    from blockkit.runner._isolation import host_environment

    source = dict(os.environ if environ is None else environ)
    env = host_environment(True, source)
    env.pop("PYTHONPATH", None)
    for name, value in source.items():
        if name.startswith("PIP_") or name in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
            env[name] = value
    env["PIP_NO_INPUT"] = "1"
    return env


def _fetch(venv: Path, requirements: Path, subset: Path, wheel_dir: Path, *,
           constraints: Path | None = None) -> tuple[str, str | None]:
    """Resolve the requirements into wheels for the venv's Python with its own pip.

    The wheelhouse is searched together with pip's configured index (the newest matching
    release wins, as in `pip install`); sdists are built by this interpreter. Returns pip's
    verbose output and, when it failed, its last error line.
    """
    subset.mkdir(parents=True, exist_ok=True)
    cmd = [str(venv / "bin" / "python"), "-I", "-m", "pip", "--disable-pip-version-check", "wheel", "-vv", "--use-pep517",
           "--find-links", str(wheel_dir), "-w", str(subset), "-r", str(requirements)]
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=tool_environment())
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        lines = [l.strip() for l in output.splitlines() if l.strip() and not l.startswith("WARNING: Location")]
        errors = [l for l in lines if l.startswith("ERROR")]
        # "Failed to build one or more wheels" says less than the line naming the project.
        last = next((l for l in errors if "Failed building wheel for" in l or "No matching distribution" in l),
                    errors[-1] if errors else lines[-1] if lines else "no output")
        return output, last[:300]
    for wheel in subset.glob("*.whl"):  # kept for the next environment (and offline use)
        target = wheel_dir / wheel.name
        if not target.exists():
            shutil.copyfile(wheel, target)
    return output, None


def _too_new_for(output: str, requirements: Path, version: str) -> dict[str, tuple[str, str]]:
    """Requirements whose newest (or pinned) release needs an *older* Python than `version`."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from blockkit.runner._wheelhouse import _python_limited

    older = {}
    for name, (release, spec) in _python_limited(output, requirements, version).items():
        specs = SpecifierSet(spec)
        # Too new (not too old): some older Python 3 would take that release.
        if any(Version(f"3.{minor}") in specs for minor in range(6, int(version.split(".")[1]))):
            older[name] = (release, spec)
    return older


def _needs(too_new: dict[str, tuple[str, str]]) -> str:
    return ", ".join(f"{name} {release} needs Python {spec}" for name, (release, spec) in sorted(too_new.items()))


def _older_interpreter(too_new: dict[str, tuple[str, str]], version: str, block: str) -> Interpreter:
    """The newest older interpreter on this host that a too-new requirement accepts, or BlockEnvError."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    found = find_interpreters()
    # The smallest step back: the newest interpreter that takes the newest release of at least
    # one of them (the others, e.g. a test helper that needs a still older Python, are reported).
    for candidate in found:
        if candidate.version_tuple < Version(version).release[:2] and any(
            Version(candidate.version) in SpecifierSet(spec) for _, spec in too_new.values()
        ):
            return candidate
    raise BlockEnvError(
        f"block {block}: {_needs(too_new)} and blockkit runs Python {version}; no suitable interpreter on this host "
        f"(found: {_listing(found)}): install one (e.g. with pyenv) or set BLOCKKIT_BLOCK_PYTHON"
    )


def _older_warnings(output: str, requirements: Path, subset: Path, version: str) -> list[str]:
    from blockkit.runner._wheelhouse import _limit_warnings, _python_limited

    return _limit_warnings(_python_limited(output, requirements, version), subset, version, requirements)


def interpreter_home(venv: Path) -> Path | None:
    """The installation folder of the Python a venv was made from (read from its pyvenv.cfg)."""
    try:
        text = (venv / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"^home\s*=\s*(.+)$", text, re.MULTILINE)
    if not match:
        return None
    home = Path(match.group(1).strip())
    # A venv's bin/python links to <prefix>/bin/pythonX.Y: the prefix holds its stdlib.
    real = Path(os.path.realpath(home / "python3")) if (home / "python3").exists() else home
    prefix = real.parent.parent if real.name.startswith("python") else home.parent
    return prefix if prefix.is_dir() and str(prefix) != "/" else None


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=tool_environment())
    if proc.returncode != 0:
        lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
        raise BlockEnvError(f"{what} failed: {lines[-1].strip()[:300] if lines else 'no output'}")


__all__ = [
    "BlockEnv", "BlockEnvError", "Interpreter", "ensure_block_env", "env_key", "find_interpreters",
    "interpreter_home", "tool_environment", "venv_root",
]
