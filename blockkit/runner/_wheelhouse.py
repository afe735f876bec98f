"""The wheelhouse: wheels for a block image's Python, resolved on the host so that builds need no index.

`resolve_wheelhouse` finds the host folder (`$BLOCKKIT_WHEELHOUSE`, else `.wheelhouse`), `resolve_wheels`
fills it for a `PythonTarget` (the image's Python, machine and glibc) and copies the subset a build
needs; requirements without a wheel for the target are built from their sdists (on the host when pure
Python, else inside the base image). `WheelServer` serves a folder of wheels to a build on 127.0.0.1.
A build context links the wheelhouse's wheels; `linked_wheels` and `wheels_hash` take their sha256 from
the wheelhouse's `HashCache` record (`.digests.json`). Development tools (`DEV_TOOLS`) never reach an image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from blockkit.contract.errors import BuildError, Problem
from blockkit.runner import _image_names as image_names
from blockkit.runner._image_names import DIST_NAME, ignore_for_copy
from blockkit.runner._image_names import canonical_name as _canonical
from blockkit.runtime._propagation import LinkHook, link_tree

if TYPE_CHECKING:
    import docker

    from blockkit.runner._hashing import HashCache

_WHEEL_GLOB = "blockkit_eo-*.whl"
#: Top-level requirements that are development tools: never installed into an image.
DEV_TOOLS = frozenset({
    "pytest", "pytest-cov", "pytest-mypy", "pytest-pylint", "pytest-mock", "pytest-xdist", "pytest-timeout",
    "mypy", "mypy-extensions", "black", "pylint", "flake8", "isort", "ruff", "coverage", "coverage-badge",
    "requests-mock", "tox", "pre-commit", "ipython", "jupyter", "types-requests",
})
#: The wheelhouse's record of its wheels' sha256: a `HashCache` file (keyed by device and inode).
DIGESTS = ".digests.json"
# Fixed timestamp for the blockkit wheel, so rebuilding unchanged sources gives identical bytes.
_SOURCE_DATE_EPOCH = "315532800"


@dataclass(frozen=True)
class PythonTarget:
    """The Python inside the base image, which the wheels must fit."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str  # "2.36"


def resolve_wheelhouse(wheelhouse: Path | str | None, source_root: Path | None) -> Path:
    """The host wheelhouse: the argument, else $BLOCKKIT_WHEELHOUSE, else `<repo or cwd>/.wheelhouse`."""
    if wheelhouse is None:
        env = os.environ.get("BLOCKKIT_WHEELHOUSE")
        wheelhouse = Path(env) if env else (source_root or Path.cwd()) / ".wheelhouse"
    path = Path(wheelhouse).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def host_matches(target: PythonTarget) -> bool:
    import platform

    return f"{sys.version_info[0]}.{sys.version_info[1]}" == target.python and platform.machine() == target.machine


def pip_platform_options(target: PythonTarget) -> list[str]:
    """pip options selecting wheels for the image's Python, not the host's."""
    if host_matches(target):
        return []
    major, minor = target.python.split(".")
    # pip does not expand a manylinux_2_N platform to the older glibc versions it covers: list them.
    glibc_major, _, glibc_minor = target.glibc.partition(".")
    platforms = [f"manylinux_{glibc_major}_{n}_{target.machine}" for n in range(int(glibc_minor or 0), 4, -1)]
    platforms += [f"manylinux{legacy}_{target.machine}" for legacy in ("2014", "2010", "1")]
    # Wheels compiled in the base image itself (`_compile_in_image`) carry the plain linux tag.
    platforms.append(f"linux_{target.machine}")
    args = ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp", "--abi", f"cp{major}{minor}"]
    for platform_tag in platforms:
        args += ["--platform", platform_tag]
    return args


def run_pip(args: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run pip with this Python; return its output, or raise BuildError with pip's last error line."""
    cmd = [sys.executable, "-I", "-m", "pip", "--disable-pip-version-check", *args]  # -I: never a `pip/` of the working folder
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip() and not l.startswith("WARNING: Location")]
        tail = lines[-12:]
        last = next((l for l in reversed(tail) if "ERROR" in l), tail[-1] if tail else "no output")
        raise BuildError(
            f"{what} failed: {last.strip()}",
            problems=[Problem("pip", l) for l in tail],
        )
    return proc.stdout + proc.stderr


def drop_dev_requirements(requirements: Path) -> list[str]:
    """Comment out development tools (DEV_TOOLS) in a copied requirements.txt; say which."""
    if not requirements.is_file():
        return []
    kept: list[str] = []
    dropped: list[str] = []
    for line in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
        name = re.split(r"[\s\[<>=!~;@]", line.strip(), maxsplit=1)[0]
        if name and not name.startswith(("-", "#")) and _canonical(name) in DEV_TOOLS:
            dropped.append(name)
            kept.append(f"# left out of the image by blockkit build (a development tool): {line}")
        else:
            kept.append(line)
    if not dropped:
        return []
    requirements.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return [f"requirements.txt: development tools left out: {', '.join(dropped)}"]


# pip -vv names every link it skips, with the release's Requires-Python.
_SKIPPED = re.compile(r"(\S+\.(?:whl|tar\.gz|zip))(?:#\S*)? \(from [^)]*\) \(requires-python:([^)]*)\)")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


def _python_limited(output: str, requirements: Path | None, python: str) -> dict[str, tuple[str, str]]:
    """{project: (newest release skipped for its Requires-Python, that spec)} for top-level requirements (pip -vv)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename
    from packaging.version import Version

    top = _top_level(requirements)
    newest: dict[str, tuple[Version, str]] = {}
    for match in _SKIPPED.finditer(output):
        try:
            if SpecifierSet(match.group(2)).contains(python, prereleases=True):
                continue  # skipped for another reason (platform tags)
        except InvalidSpecifier:
            continue
        filename = match.group(1).rsplit("/", 1)[-1]
        try:
            if filename.endswith(".whl"):
                name, version, *_ = parse_wheel_filename(filename)
            else:
                name, version = parse_sdist_filename(filename)
        except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
            continue
        if version.is_prerelease or version.is_devrelease:
            continue  # pip would not pick it anyway: no reason for the warning
        if name in top and (name not in newest or version > newest[name][0]):
            newest[name] = (version, match.group(2))
    return {name: (str(version), spec) for name, (version, spec) in newest.items()}


def _top_level(requirements: Path | None) -> set[str]:
    """The project names a requirements file asks for (canonical), without comments and options."""
    top = set()
    if requirements is not None and requirements.is_file():
        for line in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
            name = re.split(r"[\s\[<>=!~;@]", line.strip(), maxsplit=1)[0]
            if name and not name.startswith(("-", "#")):
                top.add(_canonical(name))
    return top


def _limit_warnings(
    limited: dict[str, tuple[str, str]], subset: Path, python: str, requirements: Path | None
) -> list[str]:
    """A line per requirement resolved to an older release than the newest because of Requires-Python."""
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    asked = _top_level(requirements)
    limited = {name: value for name, value in limited.items() if name in asked}

    resolved: dict[str, Any] = {}
    for wheel in subset.glob("*.whl"):
        wheel_name, version, *_ = parse_wheel_filename(wheel.name)
        resolved[str(wheel_name)] = version
    lines = []
    for name, (newest, spec) in sorted(limited.items()):
        got = resolved.get(name)
        if got is not None and got < Version(newest):
            lines.append(
                f"{name} resolves to {got}, not {newest}: newer releases need Python {spec} "
                f"and the target is Python {python} (pin the release you mean, or use a base image or interpreter with that Python)"
            )
    return lines


_FOUND = re.compile(r"Found link (\S+?)(?:#\S*)?(?: \(from [^)]*\))?(?: \(requires-python:([^)]*)\))?, version: (\S+)")
#: Pythons a Requires-Python is checked against to tell whether it caps Python from above.
_LATER_PYTHONS = range(0, 30)


def python_capped_pins(output: str, requirements: Path | None, python: str) -> dict[str, str]:
    """Releases to pin so that pip cannot backtrack from a release made for older Pythons.

    For each top-level requirement: the newest final release pip saw (its `-vv` output, links
    found or skipped for their Requires-Python) that Python `python` takes and the requirement
    line allows. It is returned when its Requires-Python caps Python from above
    (`up42-blockutils` 1.2.4: `>=3.7, <3.10`): such a release pins old versions of everything,
    and left to itself pip's resolver goes back to a far older release (0.0.3) that conflicts
    less with unpinned siblings or needs no sdist. Used by the image build (`resolve_wheels`)
    and by the block environments of the process engine (`_blockenv`), written with
    `write_constraints`.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    allowed: dict[str, SpecifierSet] = {}
    if requirements is not None and requirements.is_file():
        for line in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith(("-", "#")):
                continue
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            allowed[_canonical(req.name)] = req.specifier
    target = Version(python)
    newest: dict[str, tuple[Version, str]] = {}
    links = [(m.group(1), m.group(2)) for m in _SKIPPED.finditer(output)]
    links += [(m.group(1), m.group(2)) for m in _FOUND.finditer(output)]
    for url, spec in links:
        filename = url.rsplit("/", 1)[-1]
        try:
            if filename.endswith(".whl"):
                name, version, *_ = parse_wheel_filename(filename)
            else:
                name, version = parse_sdist_filename(filename)
            specs = SpecifierSet(spec or "")
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidSpecifier, InvalidVersion, ValueError):
            continue
        if name not in allowed or version.is_prerelease or not specs.contains(target, prereleases=True):
            continue
        if not allowed[name].contains(version, prereleases=True):
            continue
        if name not in newest or version > newest[name][0]:
            newest[name] = (version, spec or "")
    pins: dict[str, str] = {}
    for project, (version, spec) in newest.items():
        specs = SpecifierSet(spec)
        later = [Version(f"{target.major}.{minor}") for minor in _LATER_PYTHONS if minor > target.minor]
        if any(v not in specs for v in later):
            pins[str(project)] = str(version)
    return pins


def write_constraints(pins: dict[str, str], path: Path) -> Path | None:
    """A pip constraints file pinning `pins` ({project: release}), or None when there is nothing to pin."""
    if not pins:
        return None
    path.write_text("".join(f"{name}=={release}\n" for name, release in sorted(pins.items())), encoding="utf-8")
    return path


def resolve_wheels(
    wanted: list[str],
    subset: Path,
    wheel_dir: Path,
    target: PythonTarget,
    *,
    requirements: Path | None = None,
    build_in_image: str | None = None,
    client: "docker.DockerClient | None" = None,
    constraints: Path | None = None,
) -> list[str]:
    """Resolve `wanted` (pip arguments) for the target Python into `subset`, filling the wheelhouse.

    The wheelhouse is searched together with pip's configured index, so the newest release
    that fits the target Python wins (as in the image's own `pip install`), not a stale one
    left in the wheelhouse. A top-level requirement whose newest fitting release caps Python
    from above is pinned through a constraints file (`python_capped_pins`), so pip cannot
    backtrack to a far older release. When the index cannot be reached, the wheelhouse alone
    is used and a warning says so. A requirement that has no wheel for the target is built from
    its sdist: on the host when it is pure Python, else inside `build_in_image`.

    Args:
        wanted: pip arguments naming what to resolve (wheel paths, `-r requirements.txt`).
        subset: the folder that receives exactly the wheels resolved (made when missing).
        wheel_dir: the host wheelhouse, filled with whatever had to be fetched or built.
        target: the image's Python, machine and glibc the wheels must fit.
        requirements: the block's requirements file, to name the ones resolved far older than asked.
        build_in_image: the image to compile sdists in (the base image, which then needs a compiler).
        client: the Docker client for `build_in_image`.
        constraints: where to write the constraints file of the pins (kept for `complete_in_image`);
            default: a file next to `subset`.

    Returns warning lines (requirements resolved far older than asked because of Requires-Python,
    resolution from the wheelhouse only).
    """
    if constraints is None:
        with tempfile.TemporaryDirectory(prefix="blockkit-pins-") as tmp:
            return resolve_wheels(wanted, subset, wheel_dir, target, requirements=requirements,
                                  build_in_image=build_in_image, client=client,
                                  constraints=Path(tmp) / "constraints.txt")
    platform_args = pip_platform_options(target)
    subset.mkdir(parents=True, exist_ok=True)
    pins_file = constraints
    pins_file.unlink(missing_ok=True)
    warnings: list[str] = []
    limited: dict[str, tuple[str, str]] = {}
    with _locked(wheel_dir):
        record = wheel_dir / f".requires-python-{target.python}.json"
        try:
            limited = json.loads(record.read_text()) if record.is_file() else {}
        except ValueError:
            limited = {}
        pin_args: list[str] = []
        pins: dict[str, str] = {}
        try:
            output = _fill(wanted, wheel_dir, target, platform_args, build_in_image, client, [])
            pins = python_capped_pins(output, requirements, target.python)
            if write_constraints(pins, pins_file) is not None:
                pin_args = ["-c", str(pins_file)]
                try:
                    output += _fill(wanted, wheel_dir, target, platform_args, build_in_image, client, pin_args)
                except BuildError as err:
                    if not platform_args or _unreachable(err):
                        raise
                    # The host's pip evaluates markers for its own Python: the whole set may not
                    # resolve here. The pinned releases with their dependencies go into the
                    # wheelhouse; the image's pip (`complete_in_image`) resolves the whole set.
                    pinned = [f"{name}=={release}" for name, release in sorted(pins.items())]
                    output += _fill(pinned, wheel_dir, target, platform_args, build_in_image, client, [])
            limited.update(_python_limited(output, requirements, target.python))
            record.write_text(json.dumps(limited, indent=1))
            if _unreachable_text(output):
                # pip goes on with the wheelhouse when the index does not answer.
                warnings.append(f"the package index could not be reached: requirements resolved from the wheelhouse "
                                f"{wheel_dir} only, newer releases that fit Python {target.python} may exist")
        except BuildError as err:
            if not _unreachable(err):
                raise
            warnings.append(
                f"the package index could not be reached ({err.message}): requirements resolved from the "
                f"wheelhouse {wheel_dir} only, newer releases that fit Python {target.python} may exist"
            )
            fill_offline = ["download", "--no-index", "--find-links", str(wheel_dir), "-d", str(subset),
                            *platform_args, *wanted]
            run_pip(["--quiet", *fill_offline], "resolving wheels from the wheelhouse (offline)")
            write_constraints(chosen_pins(subset, requirements), pins_file)
            return warnings + _limit_warnings(limited, subset, target.python, requirements)
        offline = ["download", "--no-index", "--find-links", str(wheel_dir), "-d", str(subset), *platform_args]
        try:
            run_pip(["--quiet", *offline, *pin_args, *wanted], "resolving wheels from the wheelhouse")
        except BuildError:
            if not (platform_args and pin_args):
                raise
            # As above: the image's pip settles the pinned set (`complete_in_image`); the host's
            # unpinned choice of the other requirements may conflict with the pins: not pinned.
            run_pip(["--quiet", *offline, *wanted], "resolving wheels from the wheelhouse")
        else:
            # What the host chose for the block's requirements holds in the image too.
            write_constraints({**chosen_pins(subset, requirements), **pins}, pins_file)
    return warnings + _limit_warnings(limited, subset, target.python, requirements)


def chosen_pins(subset: Path, requirements: Path | None) -> dict[str, str]:
    """{project: release} of the wheels in `subset` that the requirements file asks for by name.

    These become constraints for the image's own pip (`complete_in_image`): without them, a
    dependency the host's pip left out (a `python_version < "3.10"` marker it evaluated for its own
    Python, as `importlib-metadata` of rasterio 1.4.3) makes the image's pip backtrack silently to
    an older release lying in the wheelhouse (rasterio 1.2.2, built against numpy 1.x, beside
    numpy 2.0.2) instead of failing; pinned, it fails and the missing wheel is fetched.
    """
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    asked = _top_level(requirements)
    pins: dict[str, str] = {}
    for wheel in subset.glob("*.whl"):
        try:
            name, version, *_ = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            continue
        if str(name) in asked:
            pins[str(name)] = str(version)
    return pins


_UNREACHABLE = ("Could not fetch URL", "NewConnectionError", "Temporary failure in name resolution",
                "Network is unreachable", "Max retries exceeded", "ConnectTimeoutError", "ProxyError")


def _unreachable(err: BuildError) -> bool:
    """Whether a failed pip run failed because the index could not be reached."""
    return _unreachable_text("\n".join([err.message, *(p.message for p in err.problems)]))


def _unreachable_text(text: str) -> bool:
    return any(marker in text for marker in _UNREACHABLE)


def _fill(
    wanted: list[str], wheel_dir: Path, target: PythonTarget, platform_args: list[str],
    build_in_image: str | None, client: "docker.DockerClient | None", pin_args: list[str],
) -> str:
    """Fetch (or build) the wheels of `wanted` into the wheelhouse from it and the index; pip's -vv output."""
    built_from_source: set[str] = set()
    while True:
        if platform_args:
            fill = ["download", "-vv", "--find-links", str(wheel_dir), "-d", str(wheel_dir), *platform_args,
                    *pin_args, *wanted]
        else:
            # Same Python as the image: pip wheel can also build wheels from sdists.
            fill = ["wheel", "-vv", "--find-links", str(wheel_dir), "-w", str(wheel_dir), *pin_args, *wanted]
        try:
            return run_pip(fill, f"fetching wheels into {wheel_dir}")
        except BuildError as err:
            missing = next((m.group(1) for p in err.problems for m in [_NO_MATCH.search(p.message)] if m), None)
            if not platform_args or missing is None or missing in built_from_source:
                raise
            built_from_source.add(missing)
            _wheel_from_sdist(missing, wheel_dir, target, build_in_image, client)


def _wheel_from_sdist(
    requirement: str, wheel_dir: Path, target: PythonTarget, image: str | None, client: "docker.DockerClient | None"
) -> None:
    """Build a wheel for the target Python from a requirement's sdist into the wheelhouse."""
    with tempfile.TemporaryDirectory(prefix="blockkit-sdist-") as tmp:
        work = Path(tmp)
        run_pip(["--quiet", "download", "--no-deps", "--no-binary=:all:", "-d", str(work / "src"), requirement],
             f"fetching the source of {requirement}")
        sdist = next((work / "src").iterdir())
        try:
            run_pip(["--quiet", "wheel", "--no-deps", "-w", str(work / "out"), str(sdist)], f"building {sdist.name}")
            wheel = next((work / "out").glob("*.whl"))
        except (BuildError, StopIteration):
            wheel = None
        if wheel is not None and wheel.name.endswith("-none-any.whl"):
            shutil.move(str(wheel), wheel_dir / wheel.name)
            return
        if image is None or client is None:
            raise BuildError(
                f"{requirement} has no wheel for Python {target.python} and needs compiling: "
                f"put a wheel for it into {wheel_dir}"
            )
        _compile_in_image(sdist, wheel_dir, image, client, requirement, target)


def _compile_in_image(
    sdist: Path, wheel_dir: Path, image: str, client: "docker.DockerClient", requirement: str, target: PythonTarget
) -> None:
    """Compile an sdist into a wheel inside the base image (offline; it must have a compiler)."""
    from docker.types import Mount

    out = Path(tempfile.mkdtemp(prefix="blockkit-wheel-"))
    try:
        script = (
            f"set -e; cp /src/{sdist.name} /tmp/ && cd /tmp && "
            f"python3 -m pip wheel --no-deps --no-build-isolation --no-index -w /tmp/out /tmp/{sdist.name} >/tmp/log 2>&1 "
            "|| { tail -n 5 /tmp/log; exit 1; }; cp /tmp/out/*.whl /out/ && chmod a+rw /out/*.whl"
        )
        container = client.containers.run(
            image, ["sh", "-c", script], detach=True, network_mode="none", user="0:0",
            mounts=[Mount(f"/src/{sdist.name}", str(sdist), type="bind", read_only=True),
                    Mount("/out", str(out), type="bind", read_only=False)],
        )
        try:
            status = container.wait(timeout=900)
            log = container.logs().decode(errors="replace").strip().splitlines()
        finally:
            container.remove(force=True)
        wheels = list(out.glob("*.whl"))
        if status.get("StatusCode") != 0 or not wheels:
            raise BuildError(
                f"{requirement} has no wheel for Python {target.python}, and compiling it in {image} failed"
                f"{': ' + log[-1] if log else ''} (does the image have a compiler?); put a wheel into {wheel_dir}",
                problems=[Problem("compile", line) for line in log[-5:]],
            )
        for wheel in image_outputs(out, image, wheels):
            shutil.move(str(wheel), wheel_dir / wheel.name)
    finally:
        shutil.rmtree(out, ignore_errors=True)


#: Bumped when the way requirements are resolved changes (old cached resolutions no longer apply).
_RESOLUTION_FORMAT = "blockkit-resolution-2"
_OFFLINE_MARK = "package index could not be reached"


def _resolution_key(parts: list[str], wheel_dir: Path, target: PythonTarget) -> str:
    """What a resolution depends on: the inputs, the target, the wheelhouse listing, blockkit's version."""
    import hashlib

    from blockkit import __version__

    digest = hashlib.sha256()
    listing = sorted(p.name for p in wheel_dir.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip")))
    marker = wheel_dir / ".blockkit-source-hash"
    source = marker.read_text().strip() if marker.is_file() else ""
    for part in [_RESOLUTION_FORMAT, __version__, source, repr(target), *parts, "\0listing", *listing]:
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def cached_resolution(
    parts: list[str],
    subset: Path,
    wheel_dir: Path,
    target: PythonTarget,
    resolve: Callable[[], list[str]],
    *,
    constraints: Path | None = None,
    use_cache: bool = True,
    on_link: LinkHook | None = None,
) -> list[str]:
    """`resolve()` (which fills `subset`) unless the same resolution is on record; then no pip runs.

    The record (`<wheelhouse>/.resolved/<key>.json`) names the wheels and warnings of an earlier
    resolution. Its key covers `parts` (the requirements' text and whatever else was resolved),
    the target Python, the wheelhouse's listing and blockkit's version: a changed requirement,
    another base image or a wheel added to or removed from the wheelhouse resolves again. A new
    release on the index alone does not (`blockkit build --force` resolves again). Resolutions
    made without the index (offline) are not recorded. A recorded resolution links the wheelhouse's
    wheels into `subset` (`link_or_copy` with `on_link`).
    """
    folder = wheel_dir / ".resolved"
    entry = folder / f"{_resolution_key(parts, wheel_dir, target)}.json"
    recorded = _recorded_resolution(entry, wheel_dir) if use_cache and entry.is_file() else None
    if recorded is not None:
        names, warnings, pins = recorded
        subset.mkdir(parents=True, exist_ok=True)
        for name in names:
            link_or_copy(wheel_dir / name, subset / name, on_link)
        if constraints is not None and pins:
            constraints.write_text(pins, encoding="utf-8")
        return warnings
    warnings = resolve()
    names = sorted(w.name for w in subset.glob("*.whl"))
    if any(_OFFLINE_MARK in w for w in warnings) or not all((wheel_dir / n).is_file() for n in names):
        return warnings
    record = {"wheels": names, "warnings": warnings,
              "constraints": constraints.read_text(encoding="utf-8") if constraints and constraints.is_file() else ""}
    folder.mkdir(exist_ok=True)
    # Keyed by the listing after the resolution (which may have added wheels): what the next run sees.
    entry = folder / f"{_resolution_key(parts, wheel_dir, target)}.json"
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(entry)
    return warnings


def _recorded_resolution(entry: Path, wheel_dir: Path) -> tuple[list[str], list[str], str] | None:
    """A resolution record's wheels, warnings and constraints; None for a malformed record or one
    naming anything but wheels the wheelhouse holds (plain names)."""
    try:
        record = json.loads(entry.read_text(encoding="utf-8"))
        names = [str(n) for n in record["wheels"]]
        warnings = [str(w) for w in record["warnings"]]
        pins = str(record.get("constraints", ""))
    except (ValueError, KeyError, TypeError):
        return None
    if not all("/" not in n and (wheel_dir / n).is_file() for n in names):
        return None
    return names, warnings, pins


def _block_resolution(wheel_dir: Path, block_dir: Path, source_root: Path | None,
                      source_hash: str | None) -> tuple[Path, Path, list[str]]:
    """blockkit's wheel for these sources, the block's requirements file, and what their resolution is keyed by."""
    with _locked(wheel_dir):
        blockkit_wheel = _blockkit_wheel(wheel_dir, source_root, source_hash)
    requirements = block_dir / "requirements.txt"
    text = requirements.read_text(encoding="utf-8", errors="replace") if requirements.is_file() else ""
    return blockkit_wheel, requirements, ["base", blockkit_wheel.name, text]


def _context_folder(wheel: str) -> str:
    """Where a build context keeps a wheel: `blockkit` for blockkit's own, `deps` for the others."""
    return "blockkit" if wheel.startswith(_WHEEL_GLOB.split("*")[0]) else "deps"


def fill_wheels(dest: Path, wheel_dir: Path, block_dir: Path, source_root: Path | None, target: PythonTarget,
                *, use_cache: bool = True, on_link: LinkHook | None = None,
                source_hash: str | None = None) -> list[str]:
    """Put every wheel the image needs under dest/deps and dest/blockkit, from the host wheelhouse.

    Args:
        dest: the build context's wheel folder (made here).
        wheel_dir: the host wheelhouse.
        block_dir: the block folder (its requirements.txt is resolved).
        source_root: blockkit's source tree (its wheel is built) or None (the installed version's wheel).
        target: the image's Python the wheels must fit.
        use_cache: reuse an earlier resolution of the same inputs (`cached_resolution`).
        on_link: `on_link(before, after)` for each wheelhouse file linked into dest (`HashCache.moved`
            of the wheelhouse's record, `linked_wheels`).
        source_hash: `blockkit_source_hash(source_root)`, when the caller has it already.

    Returns warning lines, as `resolve_wheels`.
    """
    blockkit_wheel, requirements, parts = _block_resolution(wheel_dir, block_dir, source_root, source_hash)
    wanted = [str(blockkit_wheel)]
    if requirements.is_file():
        wanted += ["-r", str(requirements)]
    subset = dest / "all"
    warnings = cached_resolution(
        parts, subset, wheel_dir, target,
        lambda: resolve_wheels(wanted, subset, wheel_dir, target, requirements=requirements), use_cache=use_cache,
        on_link=on_link,
    )
    (dest / "deps").mkdir()
    (dest / "blockkit").mkdir()
    for wheel in subset.iterdir():
        moved = dest / _context_folder(wheel.name) / wheel.name
        before = os.stat(wheel, follow_symlinks=False)
        wheel.rename(moved)  # a rename moves the file's ctime too
        if on_link is not None:
            on_link(before, os.stat(moved, follow_symlinks=False))
    subset.rmdir()
    return warnings


def recorded_wheels(wheel_dir: Path, block_dir: Path, source_root: Path | None, target: PythonTarget,
                    *, source_hash: str | None = None) -> tuple[list[str], list[str]] | None:
    """The wheels (names) and warnings `fill_wheels` would give this block from a recorded resolution; None without one.

    Nothing is linked: checking whether an image is up to date needs only the wheels' names
    and hashes (`named_wheels_hash`), and linking them moved every wheel's ctime, which the
    wheelhouse's digest record then had to follow and be written again. Any doubt (no record,
    a broken one, a wheel missing) is None: `fill_wheels` then links (and resolves) as before.
    """
    _, _, parts = _block_resolution(wheel_dir, block_dir, source_root, source_hash)
    entry = wheel_dir / ".resolved" / f"{_resolution_key(parts, wheel_dir, target)}.json"
    try:
        recorded = _recorded_resolution(entry, wheel_dir)
    except OSError:
        return None
    if recorded is None or len(set(recorded[0])) != len(recorded[0]):
        return None
    names, warnings, _ = recorded
    return names, warnings


def named_wheels_hash(names: list[str], wheel_dir: Path, hashes: HashCache) -> str:
    """`wheels_hash` of the build context `fill_wheels` makes of these wheelhouse wheels, without making it.

    The context holds `blockkit/<name>` for blockkit's wheel and `deps/<name>` for the others,
    each the wheelhouse's file; their sha256 come from the wheelhouse's record (`hashes`), as
    `wheels_hash` takes them, so the two values are equal.
    """
    import hashlib

    digest = hashlib.sha256()
    for folder, name in sorted((_context_folder(n), n) for n in names):
        digest.update(f"F\0{folder}/{name}\0{hashes.file_sha256(wheel_dir / name)}\0".encode())
    return digest.hexdigest()


def _blockkit_wheel(wheel_dir: Path, source_root: Path | None, source_hash: str | None = None) -> Path:
    """The blockkit wheel for the current sources, built into the wheelhouse when they changed."""
    existing = sorted(wheel_dir.glob(_WHEEL_GLOB))
    if source_root is None:
        # An installed blockkit: the wheel of the same version, from the wheelhouse or the index.
        from importlib.metadata import version

        wanted = _WHEEL_GLOB.replace("*.whl", "") + version(DIST_NAME) + "-"
        matching = [w for w in existing if w.name.startswith(wanted)]
        if not matching:
            run_pip(
                ["--quiet", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheel_dir),
                 f"{DIST_NAME}=={version(DIST_NAME)}"],
                f"fetching the blockkit wheel into {wheel_dir} (or put one there)",
            )
            matching = sorted(wheel_dir.glob(f"{wanted}*.whl"))
        if matching:
            return matching[-1]
        raise BuildError(f"no {wanted}*.whl in {wheel_dir}: put the blockkit wheel there")
    marker = wheel_dir / ".blockkit-source-hash"
    source_hash = source_hash or image_names.blockkit_source_hash(source_root)
    if existing and marker.is_file() and marker.read_text().strip() == source_hash:
        return existing[-1]
    for old in existing:
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="blockkit-src-") as tmp:
        # A clean copy: setuptools' in-tree build/ folder would keep deleted modules in the wheel.
        src = Path(tmp)
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (source_root / name).is_file():
                shutil.copy2(source_root / name, src / name)
        shutil.copytree(source_root / "blockkit", src / "blockkit", ignore=ignore_for_copy)
        build = ["--quiet", "wheel", "--no-deps", "-w", str(wheel_dir), str(src)]
        env = {"SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH}
        try:
            # Without build isolation first: it works offline when the host has a recent setuptools.
            run_pip([*build, "--no-build-isolation"], "building the blockkit wheel", env=env)
        except BuildError:
            # An isolated build fetches setuptools itself (needs the package index).
            run_pip(build, "building the blockkit wheel", env=env)
    built = sorted(wheel_dir.glob(_WHEEL_GLOB))
    if not built:
        raise BuildError(f"building the blockkit wheel left no {_WHEEL_GLOB} in {wheel_dir}")
    marker.write_text(source_hash + "\n")
    return built[-1]


class _locked:
    """An exclusive lock on the wheelhouse, so parallel builds do not race on it.

    The lock file is opened without following a symlink and never truncated: a wheelhouse
    comes with a cloned repository, and `.lock -> ~/.bashrc` must not empty the target.
    """

    def __init__(self, folder: Path) -> None:
        from blockkit.runner._lock import FileLock

        self._lock = FileLock(folder / ".lock")

    def __enter__(self) -> None:
        try:
            self._lock.__enter__()
        except OSError as exc:
            raise BuildError(f"cannot lock the wheelhouse: {self._lock.path}: {exc.strerror or exc} "
                             "(a symlink there is refused; remove it)") from None

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(None, None, None)


def image_outputs(out: Path, image: str, names: list[Path] | None = None) -> list[Path]:
    """What a base image's container left in its output mount (`names`, else all of it): regular files only.

    The container ran as root in that mount: it can leave a symlink to any host file
    (`~/.ssh/id_rsa`), which a build context or the wheelhouse would then serve to a build.
    Anything that is not a regular file is refused with one error line, before anything is read
    or moved.
    """
    entries = sorted(out.iterdir()) if names is None else names
    for entry in entries:
        if not stat.S_ISREG(os.lstat(entry).st_mode):
            raise BuildError(f"{image} left {entry.name!r} in its output, which is not a regular file "
                             "(a symlink, folder or device): refused")
    return entries


def complete_in_image(
    requirements: Path, subset: Path, wheel_dir: Path, target: PythonTarget, image: str, client: "docker.DockerClient",
    constraints: Path | None = None,
) -> None:
    """Let the image's own pip pick the wheels, fetching what the host's pip missed.

    The host's pip evaluates environment markers (`python_version < "3.10"`) for the host's
    Python even when asked for another one, so a resolution for the image can lack a wheel.
    The image's pip resolves against the wheelhouse (served on 127.0.0.1) with the releases
    the host chose for the block's requirements as constraints (`chosen_pins`); each
    requirement it cannot find is fetched for the image's Python into the wheelhouse, until it
    resolves. Pinned, a missing dependency fails the image's pip (and is fetched) instead of
    letting it backtrack to an older release of a requirement that the wheelhouse also holds.

    Args:
        requirements: the block's requirements file (mounted read-only into the container).
        subset: the folder of wheels for the build; replaced by what the image's pip chose.
        wheel_dir: the host wheelhouse, filled with what had to be fetched.
        target: the image's Python.
        image: the image whose pip resolves.
        client: the Docker client.
        constraints: the pins `resolve_wheels` wrote (`chosen_pins`, `python_capped_pins`), applied here too.

    Raises BuildError when the image's pip does not settle, or settles on another release than a pin.
    """
    from docker.types import Mount

    fetched: set[str] = set()
    pinned = constraints is not None and constraints.is_file()
    pin = "-c /req/constraints.txt" if pinned else ""
    for _attempt in range(_ROUNDS):
        out = Path(tempfile.mkdtemp(prefix="blockkit-resolve-"))
        try:
            with WheelServer(wheel_dir) as url:
                script = (
                    f"python3 -m pip download --disable-pip-version-check --no-index --find-links {url} "
                    f"-d /tmp/w -r /req/requirements.txt {pin} >/tmp/log 2>&1; code=$?; "
                    "cat /tmp/log; cp /tmp/w/* /out/ 2>/dev/null; chmod -R a+rw /out; exit $code"
                )
                container = client.containers.run(
                    image, ["sh", "-c", script], detach=True, network_mode="host", user="0:0",
                    mounts=[Mount("/req/requirements.txt", str(requirements), type="bind", read_only=True),
                            Mount("/out", str(out), type="bind", read_only=False),
                            *([Mount("/req/constraints.txt", str(constraints), type="bind", read_only=True)]
                              if pinned else [])],
                )
                try:
                    status = container.wait(timeout=900)
                    log = container.logs().decode(errors="replace")
                finally:
                    container.remove(force=True)
            if status.get("StatusCode") == 0:
                wheels = image_outputs(out, image)
                _check_pinned(out, constraints if pinned else None, image)
                for old in subset.iterdir():
                    old.unlink()
                for wheel in wheels:
                    shutil.move(str(wheel), subset / wheel.name)
                return
        finally:
            shutil.rmtree(out, ignore_errors=True)
        match = _NO_MATCH.search(log)
        lines = [l for l in log.splitlines() if l.strip()]
        # What pip could not find (a dependency the host left out is fetched below), else its error lines.
        named = [re.split(r"[\s\[<>=!~;@(]", log[match.start(1):], maxsplit=1)[0]] if match else [
            l for l in lines[-8:] if "ERROR" in l]
        refused = _refused_pins(named, wheel_dir, constraints if pinned else None)
        if refused:
            # The wheelhouse holds the host's choice and the image's pip will not take it: fetching cannot help.
            raise BuildError(
                f"the pip of {image} (Python {target.python}) does not take the release{'s' if len(refused) > 1 else ''} "
                f"the host resolved, {', '.join(refused)}: {lines[-1]}",
                problems=[Problem("pip", line) for line in lines[-8:]],
            )
        if match is None:
            raise BuildError(
                f"resolving requirements.txt inside {image} failed: {lines[-1] if lines else 'no output'}",
                problems=[Problem("pip", line) for line in lines[-8:]],
            )
        wanted = log[match.start(1):].splitlines()[0].split(";")[0].strip()
        if wanted in fetched:
            raise BuildError(f"{wanted} is needed in {image} (Python {target.python}) and cannot be fetched for it")
        fetched.add(wanted)
        with _locked(wheel_dir):
            try:
                run_pip(["--quiet", "download", "--find-links", str(wheel_dir), "-d", str(wheel_dir),
                      *pip_platform_options(target), wanted], f"fetching {wanted} for Python {target.python}")
            except BuildError as err:
                if not any(_NO_MATCH.search(p.message) for p in err.problems):
                    raise
                _wheel_from_sdist(wanted, wheel_dir, target, image, client)
    raise BuildError(f"resolving requirements.txt inside {image} did not settle after {_ROUNDS} rounds")


#: At most this many requirements fetched one by one for the image's pip.
_ROUNDS = 80


def _pins(constraints: Path | None) -> dict[Any, Any]:
    """{canonical project: Version} of a constraints file's `name==release` lines."""
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    pins: dict[Any, Any] = {}
    if constraints is None or not constraints.is_file():
        return pins
    for line in constraints.read_text(encoding="utf-8").splitlines():
        name, sep, release = line.partition("==")
        try:
            if sep:
                pins[canonicalize_name(name.strip())] = Version(release.strip())
        except InvalidVersion:
            continue
    return pins


def _refused_pins(lines: list[str], wheel_dir: Path, constraints: Path | None) -> list[str]:
    """The pinned releases ("name release") that `lines` name and the wheelhouse holds."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    pins = _pins(constraints)
    named = {canonicalize_name(word) for line in lines for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)}
    held = set()
    for wheel in wheel_dir.glob("*.whl"):
        try:
            name, version, *_ = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            continue
        if name in named and pins.get(name) == version:
            held.add(f"{name} {version}")
    return sorted(held)


def _check_pinned(chosen: Path, constraints: Path | None, image: str) -> None:
    """Raise BuildError when the image's pip chose another release than a constraint pins."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    pins = _pins(constraints)
    wrong = []
    for wheel in sorted(chosen.glob("*.whl")):
        try:
            name, version, *_ = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            continue
        if name in pins and version != pins[name]:
            wrong.append(f"{name} {version} instead of {pins[name]}")
    if wrong:
        raise BuildError(
            f"the pip of {image} did not keep the releases the host resolved: {', '.join(wrong)}",
            problems=[Problem("pip", line) for line in wrong],
        )


class WheelServer:
    """Serves a folder of wheels on 127.0.0.1 for one build (pip's --find-links reads the listing)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: Any = None
        self._thread: Any = None

    def __enter__(self) -> str:
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        root = os.path.realpath(self.folder)

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def translate_path(self, path: str) -> str:
                # Never through a symlink: a build (the block's own Dockerfile) may ask for any name.
                local = super().translate_path(path)
                rel = os.path.relpath(local, root)
                here = root
                for part in [] if rel == "." else rel.split(os.sep):
                    here = os.path.join(here, part)
                    if part == ".." or os.path.islink(here):
                        return os.path.join(root, ".refused", "symlink")  # no such file: 404
                return local

        handler = functools.partial(Quiet, directory=str(self.folder))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="blockkit-wheels", daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def link_or_copy(source: Path, target: Path, on_link: LinkHook | None = None) -> None:
    """A hard link of a wheelhouse file into a build context (a copy across file systems).

    Nothing writes to a build context's wheels: docker reads them. A link moves the file's
    ctime, which a `HashCache` entry checks: `on_link(before, after)` (`HashCache.moved`)
    sees the file's stat before and after the link, so its recorded sha256 stays valid.
    A copy is another file: `on_link` is not called. A source that is not a regular file (a
    symlink planted in the wheelhouse, pointing anywhere) is refused: linking or copying it
    would put its target into the build context, where the wheel server hands it out. The
    link or copy is `link_tree`'s (never through a symlink, O_EXCL), as for run folders.
    """
    if not stat.S_ISREG(os.lstat(source).st_mode):
        raise BuildError(f"{source} is not a regular file (a symlink?): a wheelhouse holds wheels as files; "
                         "replace it by the file it points to")
    link_tree(source, target, on_link=on_link)


def unlink_wheels(folder: Path, wheel_dir: Path, on_unlink: LinkHook | None = None) -> None:
    """Remove the files of a build context's wheel folder; `on_unlink(before, after)` sees each wheelhouse file's stat.

    Removing a link moves the ctime of the wheelhouse file it shares an inode with, as making it
    did: without `on_unlink` (`HashCache.moved`) every build would leave every recorded wheel
    stale. Nothing is followed: a symlink is removed as such.
    """
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            continue
        before = os.stat(path, follow_symlinks=False)
        path.unlink()
        if on_unlink is None:
            continue
        try:
            after = os.stat(wheel_dir / path.name, follow_symlinks=False)
        except OSError:
            continue
        if (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino):
            on_unlink(before, after)


def wheel_hashes(wheel_dir: Path) -> HashCache:
    """The wheelhouse's digest record (`<wheelhouse>/.digests.json`), as a `HashCache`."""
    from blockkit.runner._hashing import HashCache

    return HashCache(wheel_dir / DIGESTS)


def save_wheel_hashes(hashes: HashCache) -> None:
    """Merge new digests into the wheelhouse's record (`HashCache.save`); a wheelhouse that cannot take it keeps none.

    A read-only wheelhouse, or a symlink planted at the record's lock, only costs hashing again
    next time; the record itself is replaced by a rename, so a symlink there is never written through.
    """
    try:
        hashes.save()
    except OSError:
        pass


@contextmanager
def linked_wheels(wheel_dir: Path, folder: Path) -> Iterator[HashCache]:
    """The wheelhouse's digest record while a build context's wheel folder links the wheelhouse's wheels.

    Link the wheels with `on_link=hashes.moved` (`fill_wheels`) and hash them with
    `wheels_hash(folder, wheel_dir, hashes)`. On leaving, the folder's files are removed
    (`unlink_wheels`, so the ctimes the links moved are followed) and the record is saved.
    Checking an up-to-date image then hashes no unchanged wheel (70 files, 0.08 s a block).
    """
    hashes = wheel_hashes(wheel_dir)
    try:
        yield hashes
    finally:
        try:
            if folder.is_dir():
                unlink_wheels(folder, wheel_dir, hashes.moved)
        except OSError:
            pass  # the temporary build context goes anyway; only the record's freshness is lost
        save_wheel_hashes(hashes)


def wheels_hash(folder: Path, wheel_dir: Path, hashes: HashCache | None = None) -> str:
    """sha256 over the names and bytes of a build context's wheels (symlinks by their target).

    A file that is the wheelhouse's file of its name (a link, same inode) takes its sha256 from
    `hashes` (the wheelhouse's record, `HashCache.file_sha256`: valid while size, inode, mtime
    and ctime match, so a wheel replaced under its name is hashed again). Any other file is
    hashed and not recorded. The value does not depend on the record: a full hash of every byte
    gives the same.
    """
    import hashlib

    from blockkit.runner._hashing import HashCache

    record = hashes if hashes is not None else wheel_hashes(wheel_dir)
    loose = HashCache()
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            digest.update(f"L\0{rel}\0{os.readlink(path)}\0".encode())
            continue
        digest.update(f"F\0{rel}\0{(record if _is_own(path, wheel_dir) else loose).file_sha256(path)}\0".encode())
    if hashes is None:
        save_wheel_hashes(record)
    return digest.hexdigest()


def _is_own(path: Path, wheel_dir: Path) -> bool:
    """Whether `path` is the wheelhouse's file of its name (the same inode), not a copy or another file."""
    try:
        return os.path.samefile(path, wheel_dir / path.name)
    except OSError:
        return False
